"""Deploy speed, serving speed, and where a cold deploy spends its time, measured in
one run on throwaway hosts.

    .venv/bin/python -m bench.performance [--hosts 4] [--duration 10] [--connections 32] [--rounds 3]
                                          [--serving-rounds 3]

1. Deploy speed. A cold first deploy of the example app on 1 bare host and on N bare
   hosts at once; then, ROUNDS times on each, a code-only redeploy (a new greeting), a
   no-op re-run, and pyinfra's floor: bench/floor.py, one operation that reads one fact
   and changes nothing, with the same inventory. Medians are reported, with
   no-op / floor and N hosts / 1 host.
2. Serving, on the 1-host deploy with the deploy's defaults: wrk (on this machine,
   against the host's ports published on 127.0.0.1) through nginx -> uWSGI; the same
   app behind the same nginx on Flask's built-in server (threaded) and on gunicorn
   (gthread workers, as many processes and threads as the deploy's uWSGI); and nginx
   answering `return 200` itself (the ceiling). Same wrk settings for the four, one
   after the other, in SERVING_ROUNDS interleaved rounds (medians); requests/s,
   p50/p99 latency and every error (non-2xx/3xx, socket errors) of every round.
3. Where the cold deploys spent their time: pyinfra's output is read line by line as
   it streams; the time between consecutive steps (`--> Starting operation: ...`)
   is summed by group (packages, uWSGI compile, app venv, ...).

Prints one table with the goals met or not, and writes bench/results/performance.csv,
bench/results/performance.png and the output of the cold and median no-op runs
with a time on each step (bench/results/cold-*.log, noop-*.log).
Every container it starts carries the label io.pyinfra-flask.bench and is removed at
the end, failed or not. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from bench.deploy_speed import Run, app_copy, pyinfra, start_host
from bench.report import report
from bench.serving import CEILING_PORT, FLASK_PORT, GUNICORN_PORT, measure_serving, set_up_serving
from dev import throwaway


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, default=4, help="N, the number of hosts deployed at once (default 4)")
    parser.add_argument("--duration", type=int, default=10, help="seconds of wrk load per target (default 10)")
    parser.add_argument("--connections", type=int, default=32, help="wrk's open connections (default 32)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="no-op, code-only and floor runs per host count; medians are reported (default 3)")
    parser.add_argument("--serving-rounds", type=int, default=3,
                        help="wrk rounds over the four targets, interleaved; medians are reported (default 3)")
    parser.add_argument("--release", default="bookworm", choices=throwaway.RELEASES)
    args = parser.parse_args()
    if args.hosts < 2:
        parser.error("--hosts must be at least 2 (it is compared with 1 host)")
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: `apt-get install -y wrk`.")

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # still remove the hosts below
    image = throwaway.ensure_image(args.release)
    started: list[throwaway.Host] = []
    sizes = [1, args.hosts]
    deploys: dict[int, dict[str, list[float]]] = {size: {} for size in sizes}
    cold: dict[int, Run] = {}
    noop_runs: dict[int, list[Run]] = {size: [] for size in sizes}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-performance-") as tmp:
            work = Path(tmp)
            # The 1-host deploy also serves the load test, so it publishes the scaffolding's ports.
            single = start_host(image, ports=(22, 80, FLASK_PORT, GUNICORN_PORT, CEILING_PORT))
            started.append(single)
            inventories = {1: throwaway.write_group_inventory(work / "inventory_1.py", {"app_servers": [(single, {})]})}
            step("cold first deploy, 1 host")
            cold[1] = pyinfra(inventories[1])
            many = []
            for _ in range(args.hosts):
                many.append(start_host(image))
                started.append(many[-1])
            inventories[args.hosts] = throwaway.write_group_inventory(
                work / f"inventory_{args.hosts}.py", {"app_servers": [(h, {}) for h in many]})
            step(f"cold first deploy, {args.hosts} hosts at once")
            cold[args.hosts] = pyinfra(inventories[args.hosts])

            for round_number in range(args.rounds):
                for size in sizes:
                    inventory, times = inventories[size], deploys[size]
                    step(f"round {round_number + 1}/{args.rounds}, {size} host(s): code-only redeploy, no-op, floor")
                    data = {"app_source": str(app_copy(work, f"{size}-{round_number}"))}
                    times.setdefault("code-only redeploy", []).append(pyinfra(inventory, data=data).seconds)
                    noop = pyinfra(inventory, data=data)
                    if noop.changed_operations():
                        raise SystemExit(f"the no-op run on {size} host(s) changed {noop.changed_operations()}")
                    times.setdefault("no-op re-run", []).append(noop.seconds)
                    noop_runs[size].append(noop)
                    times.setdefault("pyinfra floor", []).append(pyinfra(inventory, deploy="bench/floor.py").seconds)
            for host in many:
                host.remove()

            step("serving: back to the example app with the deploy's defaults, then wrk")
            pyinfra(inventories[1])
            urls = set_up_serving(single)
            loads = measure_serving(urls, args.duration, args.connections, args.serving_rounds)
    finally:
        for host in started:
            host.remove()

    # The no-op run of median wall time, for its breakdown.
    noops = {size: sorted(runs, key=lambda run: run.seconds)[(len(runs) - 1) // 2] for size, runs in noop_runs.items()}
    report(args, cold, noops, deploys, loads)


def step(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


if __name__ == "__main__":
    main()

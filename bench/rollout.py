"""Deploy time against the number of hosts: a no-op run and a code-only rollout on
1, 4 and 8 throwaway hosts, measured in one run.

    .venv/bin/python -m bench.rollout [--sizes 1 4 8] [--rounds 3]

One host is deployed cold and snapshotted; every size then boots that many copies
and times, on all of them at once: a no-op `pyinfra ... deploy.py` run (pyinfra's own
parallelism), first as the very first run from this machine to those hosts (no list
of their facts yet, see tasks/prefetch.py), then ROUNDS more (median reported: a
re-run as users run it); and a code-only `rollout.py --batch 100%` (its preflight
included). Goal: 8 hosts no-op at most 1.5x 1 host. Not a test: nothing is asserted.
"""

import argparse
import shutil
import signal
import statistics
import sys
import tempfile
from pathlib import Path

from tests import throwaway


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--rounds", type=int, default=3, help="no-op re-runs per size; the median is reported")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # still remove the hosts below
    labels = {"io.pyinfra-flask.bench": "1"}
    started: list[throwaway.Host] = []
    image = None
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-rollout-") as tmp:
            work = Path(tmp)
            seed = throwaway.start_host(throwaway.ensure_image("bookworm"), labels=labels)
            started.append(seed)
            check(throwaway.run_pyinfra(seed, work))
            image = seed.snapshot("bench")
            seed.remove()
            for size in args.sizes:
                hosts = [throwaway.start_host(image, labels=labels) for _ in range(size)]
                started += hosts
                inventory = throwaway.write_group_inventory(
                    work / f"inventory_{size}.py", {"app_servers": [(h, {}) for h in hosts]})
                noops = [check(throwaway.run_pyinfra(inventory, work)) for _ in range(1 + args.rounds)]
                for noop in noops:
                    if noop.changed_operations():
                        raise SystemExit(f"no-op run changed: {noop.changed_operations()}")
                app = work / f"app{size}"
                shutil.copytree(throwaway.REPO_ROOT / "files/greeting", app)
                (app / "greeting.py").write_text((app / "greeting.py").read_text().replace(
                    "Hello from greeting", f"Hello from {size} hosts"))
                code_only = check(throwaway.run_command(
                    [sys.executable, "rollout.py", str(inventory), "--batch", "100%", "--data", f"app_source={app}"]))
                rows.append((size, noops[0].seconds, statistics.median(n.seconds for n in noops[1:]),
                             code_only.seconds))
                for host in hosts:
                    host.remove()
    finally:
        for host in started:
            host.remove()
        if image:
            throwaway.docker_client().images.remove(image, force=True)

    _, base_first, base_noop, base_code = rows[0]
    print(f"\n{'hosts':>5}  {'no-op re-run':>12}  {'x 1 host':>8}  {'first no-op':>11}  {'x 1 host':>8}  "
          f"{'code-only rollout':>17}  {'x 1 host':>8}")
    for size, first, noop, code in rows:
        print(f"{size:>5}  {noop:>11.2f}s  {noop / base_noop:>7.2f}x  {first:>10.2f}s  {first / base_first:>7.2f}x  "
              f"{code:>16.1f}s  {code / base_code:>7.2f}x")
    print(f"(no-op re-run: median of {args.rounds}; first no-op: the first run to those hosts from this machine)")
    if args.sizes[0] == 1 and len(rows) > 1:
        size, _, noop, _ = rows[-1]
        ratio = noop / base_noop
        print(f"Goal, {size} hosts no-op <= 1.5x 1 host: {'met' if ratio <= 1.5 else 'NOT MET'} ({ratio:.2f}x)")


def check(run: throwaway.DeployRun) -> throwaway.DeployRun:
    if run.returncode != 0:
        raise SystemExit(f"failed:\n{run.output[-4000:]}")
    return run


if __name__ == "__main__":
    main()

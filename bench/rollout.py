"""Deploy time against the number of hosts: a no-op run and a code-only rollout on
1, 4 and 8 throwaway hosts, measured in one run.

    .venv/bin/python -m bench.rollout [--sizes 1 4 8] [--rounds 5]

One host is deployed cold and snapshotted; every size then boots that many copies
and times, on all of them at once: a no-op `pyinfra ... deploy.py` run (pyinfra's own
parallelism), first as the very first run from this machine to those hosts (no list
of their facts yet, see tasks/run/prefetch.py), then ROUNDS more (median reported: a
re-run as users run it; the rounds alternate between sizes); and a code-only
`rollout.py --batch 100%` (its preflight included). Goal: 8 hosts no-op at most 1.5x
1 host. Not a test: nothing is asserted.
"""

import argparse
import os
import resource
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from dev import throwaway


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--rounds", type=int, default=5, help="no-op re-runs per size; the median is reported")
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
            # Every size's hosts up at once (idle hosts cost no CPU), so that the
            # rounds can alternate between sizes: a slower or faster moment of the
            # machine then falls on every size alike.
            inventories, first = {}, {}
            for size in args.sizes:
                hosts = [throwaway.start_host(image, labels=labels) for _ in range(size)]
                started += hosts
                inventories[size] = throwaway.write_group_inventory(
                    work / f"inventory_{size}.py", {"app_servers": [(h, {}) for h in hosts]})
                first[size] = no_op(inventories[size], work)[0]
            runs: dict[int, list] = {size: [] for size in args.sizes}
            for _ in range(args.rounds):
                for size in args.sizes:
                    runs[size].append(no_op(inventories[size], work))
            for size in args.sizes:
                app = work / f"app{size}"
                shutil.copytree(throwaway.REPO_ROOT / "files/greeting", app)
                (app / "greeting.py").write_text((app / "greeting.py").read_text().replace(
                    "Hello from greeting", f"Hello from {size} hosts"))
                code_only = check(throwaway.run_command(
                    [sys.executable, "rollout.py", str(inventories[size]), "--batch", "100%",
                     "--data", f"app_source={app}"]))
                median_run, cpu = sorted(runs[size], key=lambda run: run[0].seconds)[(len(runs[size]) - 1) // 2]
                rows.append((size, first[size].seconds, median_run.seconds, code_only.seconds, *cpu))
    finally:
        for host in started:
            host.remove()
        if image:
            throwaway.docker_client().images.remove(image, force=True)

    _, base_first, base_noop, base_code, *_ = rows[0]
    print(f"\n{'hosts':>5}  {'no-op re-run':>12}  {'x 1 host':>8}  {'CPU: pyinfra':>12}  {'others':>6}  "
          f"{'first no-op':>11}  {'x 1 host':>8}  {'code-only rollout':>17}  {'x 1 host':>8}")
    for size, first, noop, code, local_cpu, hosts_cpu in rows:
        print(f"{size:>5}  {noop:>11.2f}s  {noop / base_noop:>7.2f}x  {local_cpu:>11.2f}s  {hosts_cpu:>5.2f}s  "
              f"{first:>10.2f}s  {first / base_first:>7.2f}x  {code:>16.1f}s  {code / base_code:>7.2f}x")
    print(f"(no-op re-run: median of {args.rounds}, with the CPU time it took in pyinfra's process and in "
          "everything else on this machine, i.e. the hosts; first no-op: the first run to those hosts from here)")
    if args.sizes[0] == 1 and len(rows) > 1:
        size, _, noop, *_ = rows[-1]
        ratio = noop / base_noop
        print(f"Goal, {size} hosts no-op <= 1.5x 1 host: {'met' if ratio <= 1.5 else 'NOT MET'} ({ratio:.2f}x)")


def no_op(inventory: Path, work: Path) -> tuple[throwaway.DeployRun, tuple[float, float]]:
    """A run that must change nothing, and the CPU it took: (pyinfra, everything else)."""
    (local_before, machine_before) = cpu_seconds()
    run = check(throwaway.run_pyinfra(inventory, work))
    (local_after, machine_after) = cpu_seconds()
    if run.changed_operations():
        raise SystemExit(f"no-op run changed: {run.changed_operations()}")
    local = local_after - local_before
    return run, (local, machine_after - machine_before - local)


def cpu_seconds() -> tuple[float, float]:
    """CPU seconds used so far by this process's finished children (the pyinfra runs)
    and by the whole machine, whose only other work during a run is the hosts'."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    fields = [int(n) for n in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    busy = sum(fields) - fields[3] - fields[4]  # all but idle and iowait
    return children.ru_utime + children.ru_stime, busy / os.sysconf("SC_CLK_TCK")


def check(run: throwaway.DeployRun) -> throwaway.DeployRun:
    if run.returncode != 0:
        raise SystemExit(f"failed:\n{run.output[-4000:]}")
    return run


if __name__ == "__main__":
    main()

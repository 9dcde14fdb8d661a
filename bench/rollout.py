"""Deploy time against the number of hosts: a no-op run and a code-only rollout on
1, 4 and 8 throwaway hosts, measured in one run.

    .venv/bin/python -m bench.rollout [--sizes 1 4 8]

One host is deployed cold and snapshotted; every size then boots that many copies
and times, on all of them at once: a no-op `pyinfra ... deploy.py` run (pyinfra's own
parallelism) and a code-only `rollout.py --batch 100%` (its preflight included).
Goal: 8 hosts no-op at most 1.5x 1 host. Not a test: nothing is asserted.
"""

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from tests import throwaway


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 8])
    args = parser.parse_args()
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
                noop = check(throwaway.run_pyinfra(inventory, work))
                if noop.changed_operations():
                    raise SystemExit(f"no-op run changed: {noop.changed_operations()}")
                app = work / f"app{size}"
                shutil.copytree(throwaway.REPO_ROOT / "files/greeting", app)
                (app / "greeting.py").write_text((app / "greeting.py").read_text().replace(
                    "Hello from greeting", f"Hello from {size} hosts"))
                code_only = check(throwaway.run_command(
                    [sys.executable, "rollout.py", str(inventory), "--batch", "100%", "--data", f"app_source={app}"]))
                rows.append((size, noop.seconds, code_only.seconds))
                for host in hosts:
                    host.remove()
    finally:
        for host in started:
            host.remove()
        if image:
            throwaway.docker_client().images.remove(image, force=True)

    base_noop, base_code = rows[0][1], rows[0][2]
    print(f"\n{'hosts':>5}  {'no-op run':>10}  {'x 1 host':>8}  {'code-only rollout':>17}  {'x 1 host':>8}")
    for size, noop, code in rows:
        print(f"{size:>5}  {noop:>9.1f}s  {noop / base_noop:>7.2f}x  {code:>16.1f}s  {code / base_code:>7.2f}x")


def check(run: throwaway.DeployRun) -> throwaway.DeployRun:
    if run.returncode != 0:
        raise SystemExit(f"failed:\n{run.output[-4000:]}")
    return run


if __name__ == "__main__":
    main()

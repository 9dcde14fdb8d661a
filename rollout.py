"""Roll a deploy out across many app servers in batches, from your laptop:

    .venv/bin/python rollout.py inventories/prod.py                  # one host at a time
    .venv/bin/python rollout.py inventories/prod.py --batch 25%      # a quarter at a time
    .venv/bin/python rollout.py inventories/prod.py --batch 2 --data uwsgi_processes=8

1. Preflight: `pyinfra --dry` over every host validates every host's settings and
   connects to each; an unreachable host or a bad setting stops the rollout here,
   before any host is changed.
2. The app servers (the `app_servers` group, or every host outside
   `load_balancers`), batch by batch, each batch with pyinfra's own parallelism
   (`--limit`). Every host switches to its new release with uWSGI's chain reload
   (no request dropped) and health-gates it, rolling itself back on failure. The
   rollout stops after the first batch with a failed host: later hosts are
   untouched.
3. The load balancers last, so their upstream lists the app servers as deployed.

It ends with a summary of the hosts done, failed and untouched, and exits 0 only
when every host is done. Each batch's success is read from pyinfra's exit code and
its per-host error lines, never assumed.
"""

from __future__ import annotations

import argparse
import math
import re
import runpy
import subprocess
import sys
from pathlib import Path

from tasks.topology import APP_GROUP, LB_GROUP

REPO_ROOT = Path(__file__).resolve().parent
PYINFRA = str(Path(sys.executable).parent / "pyinfra")
HOST_FAILURE = re.compile(r"^\s*\[(?P<host>[^\]]+)\]\s+(Error|Could not connect)")


def _members(group) -> list[str]:
    """Host names of one inventory group, in the forms pyinfra's inventory files take:
    a list of hosts, or (list, group data); a host is a name or (name, host data)."""
    if isinstance(group, tuple) and len(group) == 2 and isinstance(group[1], dict):
        group = group[0]
    if not isinstance(group, (list, tuple)):
        return []
    names = []
    for entry in group:
        name = entry[0] if isinstance(entry, tuple) and entry and isinstance(entry[0], str) else entry
        if isinstance(name, str):
            names.append(name)
    return names


def load_inventory(path: str) -> tuple[list[str], list[str]]:
    """(app servers, load balancers) by name, in inventory order, read from the
    inventory file itself (a Python module whose lists are the groups)."""
    groups = {name: _members(value) for name, value in runpy.run_path(path).items()
              if not name.startswith("_")}
    groups = {name: members for name, members in groups.items() if members}
    balancers = groups.get(LB_GROUP, [])
    if APP_GROUP in groups:
        return groups[APP_GROUP], balancers
    everyone = list(dict.fromkeys(name for members in groups.values() for name in members))
    return [name for name in everyone if name not in balancers], balancers


def batches(hosts: list[str], size: str) -> list[list[str]]:
    if size.endswith("%"):
        count = max(1, math.floor(len(hosts) * float(size[:-1]) / 100))
    else:
        count = int(size)
    if count < 1:
        raise SystemExit(f"--batch must be at least 1 host or 1%, not {size!r}")
    return [hosts[i:i + count] for i in range(0, len(hosts), count)]


def pyinfra(inventory: str, limit: list[str] | None, extra: list[str], label: str) -> tuple[int, set[str]]:
    """Run pyinfra, echoing its output; return its exit code and the hosts it
    reported an error or a connection failure for."""
    command = [PYINFRA, inventory, "deploy.py", *extra]
    for name in limit or []:
        command += ["--limit", name]
    print(f"\n=== {label}: {' '.join(command[1:])}", flush=True)
    failed: set[str] = set()
    with subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL, text=True) as proc:
        for line in proc.stdout:
            sys.stdout.write(line)
            match = HOST_FAILURE.match(line)
            if match:
                failed.add(match.group("host"))
    return proc.returncode, failed


def summary(done: list[str], failed: list[str], untouched: list[str]) -> None:
    print("\n=== Rollout summary")
    for label, names in (("done", done), ("failed", failed), ("untouched", untouched)):
        print(f"  {label:<10}{len(names):>3}  {', '.join(names) or '-'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inventory")
    parser.add_argument("--batch", default="1", help="hosts per batch: a count or a percentage (default 1)")
    parser.add_argument("--data", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting for this rollout (as pyinfra's --data)")
    args = parser.parse_args()

    data = [part for item in args.data for part in ("--data", item)]
    app_servers, balancers = load_inventory(args.inventory)
    everyone = app_servers + balancers
    plan = batches(app_servers, args.batch)
    print(f"Rolling out to {len(app_servers)} app server(s) in {len(plan)} batch(es)"
          f"{f', then {len(balancers)} load balancer(s)' if balancers else ''}.")

    # -y: no prompt (there is nothing to confirm in a dry run, and no one to answer).
    code, failed = pyinfra(args.inventory, None, ["--dry", "-y", *data], "Preflight (changes nothing)")
    if code != 0 or failed:
        print(f"\nPreflight failed{': cannot reach or prepare ' + ', '.join(sorted(failed)) if failed else ''}."
              " No host was changed.", file=sys.stderr)
        summary([], sorted(failed), [h for h in everyone if h not in failed])
        return 2

    done: list[str] = []
    stages = [(f"Batch {number} of {len(plan)}", batch) for number, batch in enumerate(plan, 1)]
    if balancers:
        stages.append(("Load balancers", balancers))
    for label, hosts in stages:
        code, failed = pyinfra(args.inventory, hosts, ["-y", *data], label)
        if code != 0:
            # A failing pyinfra run with no host named failed them all.
            failed_here = [h for h in hosts if h in failed] or hosts
            done += [h for h in hosts if h not in failed_here]
            untouched = [h for h in everyone if h not in done and h not in failed_here]
            print(f"\n{label} failed on {', '.join(failed_here)}: stopping the rollout.", file=sys.stderr)
            summary(done, failed_here, untouched)
            return 1
        done += hosts
    summary(done, [], [])
    return 0


if __name__ == "__main__":
    sys.exit(main())

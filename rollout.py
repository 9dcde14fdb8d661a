"""Roll a deploy out across many app servers in batches, from your laptop:

    .venv/bin/python rollout.py inventories/prod.py                  # one host at a time
    .venv/bin/python rollout.py inventories/prod.py --batch 25%      # a quarter at a time
    .venv/bin/python rollout.py inventories/prod.py --batch 2 --data uwsgi_processes=8

1. Preflight: `pyinfra --dry` over every host validates every host's settings and
   connects to each; an unreachable host or a bad setting stops the rollout here,
   before any host is changed.
2. The app servers (the `app_servers` group, or every host outside
   `load_balancers` and `db_servers`), batch by batch, each batch with pyinfra's own parallelism
   (`--limit`). Every host switches to its new release with uWSGI's chain reload
   (no request dropped) and health-gates it, rolling itself back on failure. The
   rollout stops after the first batch with a failed host: later hosts are
   untouched.
3. The load balancers last, so their upstream lists the app servers as deployed.

One release id for the whole rollout (`release_id`, made before the preflight:
time and a rollout id; the commit stays in each release's metadata): after it,
every app server's new release has the same name, so
`rollback.py --data rollback_to=<id>` names it on all of them (a host whose code
did not change keeps its live release). `--data release_id=...` names it yourself.

It ends with a summary of the hosts done, failed and untouched, and exits 0 only
when every host is done.

How a run's outcome is read. Each stage is one `pyinfra INVENTORY
tasks/run/record_outcomes.py deploy.py` process, and each host's outcome is what that
run itself wrote through pyinfra's public state API (tasks/run/outcomes.py: a state
callback recording, as pyinfra disconnects, the stage reached and
`state.failed_hosts`), never a match on pyinfra's printed output. A host with no
outcome saying done counts as failed. Not in-process (pyinfra.api's State,
connect_all, run_ops on this side): deploy.py is a CLI deploy file, and pyinfra's
public API has no loader for one. `add_op`/`add_deploy` put pyinfra in API mode,
where operations are matched across hosts by their position instead of deploy.py's
lines (which tasks/config/topology.py's barrier and the fact batch rely on); CLI mode
(`pyinfra.is_cli`) is set only by pyinfra's CLI, and loading deploy files is
code of pyinfra's command-line package. A process per stage also keeps each run what a plain `pyinfra`
run is (its lock, run id, caches, output), so a rollout deploys exactly what
`pyinfra INVENTORY deploy.py` does. The inventory's groups are read by
tasks/config/inventory.py, the reader ops.py uses too (pyinfra's inventory-file
loader is in that command-line package).
"""

from __future__ import annotations

import argparse
import math
import os
import secrets
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tasks.run import outcomes
from tasks.steps.bundle import new_release_id
from tasks.config import topology
from tasks.config.inventory import InventoryError, read_inventory

REPO_ROOT = Path(__file__).resolve().parent
PYINFRA = str(Path(sys.executable).parent / "pyinfra")
RECORDER = "tasks/run/record_outcomes.py"
DEPLOY = "deploy.py"


def load_inventory(path: str) -> tuple[list[str], list[str]]:
    """(app servers, load balancers) by name, in inventory order, from the inventory
    file read as ops.py and pyinfra read it (tasks/config/inventory.py) and placed
    as the deploy places them (tasks/config/topology.py): the `app_servers` group,
    else every host that is neither a balancer nor the database server."""
    try:
        hosts = list(read_inventory(path))
    except InventoryError as exc:
        raise SystemExit(str(exc)) from None
    if not hosts:
        return [], []
    return ([h.name for h in topology.app_servers(hosts[0])],
            [h.name for h in topology.members(hosts[0], topology.LB_GROUP)])


def batches(hosts: list[str], size: str) -> list[list[str]]:
    if size.endswith("%"):
        count = max(1, math.floor(len(hosts) * float(size[:-1]) / 100))
    else:
        count = int(size)
    if count < 1:
        raise SystemExit(f"--batch must be at least 1 host or 1%, not {size!r}")
    return [hosts[i:i + count] for i in range(0, len(hosts), count)]


@dataclass
class Stage:
    """One pyinfra run of the rollout: its exit code and each host's outcome."""
    hosts: list[str]
    code: int
    found: dict[str, outcomes.Outcome]
    dry: bool = False

    @property
    def done(self) -> list[str]:
        """The hosts whose run says they are done; with a failed exit code and a dry
        run (a failure there stops the whole run), none."""
        if self.dry and self.code != 0:
            return []
        return [h for h in self.hosts if h in self.found and self.found[h].done(self.dry)]

    @property
    def failed(self) -> list[str]:
        """Hosts that did not finish; for a dry run (over the whole inventory), those
        the run itself failed (the others were not reached by a run that stopped as a whole)."""
        if self.dry:
            return [name for name, outcome in self.found.items() if outcome.failed]
        return [h for h in self.hosts if h not in self.done]

    @property
    def ok(self) -> bool:
        return self.code == 0 and self.done == self.hosts


def pyinfra(inventory: str, hosts: list[str], extra: list[str], label: str, workdir: Path,
            dry: bool = False) -> Stage:
    """Run pyinfra on `hosts` (a dry run: on the whole inventory), its output straight
    to ours, and read how it ended on each of `hosts`."""
    command = [PYINFRA, inventory, RECORDER, DEPLOY, *(["--dry"] if dry else []), *extra]
    for name in [] if dry else hosts:
        command += ["--limit", name]
    print(f"\n=== {label}: {' '.join(command[1:])}", flush=True)
    record = workdir / f"outcomes-{len(list(workdir.iterdir()))}.jsonl"
    env = {**os.environ, outcomes.OUTCOMES_ENV: str(record)}
    code = subprocess.run(command, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, env=env, check=False).returncode
    return Stage(hosts, code, outcomes.read(record), dry)


def fleet_release_id(data: list[str]) -> str:
    """The release id of the whole rollout: the one `--data release_id=...` names, or a new one."""
    named = [item.partition("=")[2] for item in data if item.partition("=")[0].strip() == "release_id"]
    return named[-1] if named else new_release_id(secrets.token_hex(3))


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

    release_id = fleet_release_id(args.data)
    settings = [item for item in args.data if item.partition("=")[0].strip() != "release_id"]
    data = [part for item in [*settings, f"release_id={release_id}"] for part in ("--data", item)]
    app_servers, balancers = load_inventory(args.inventory)
    everyone = app_servers + balancers
    plan = batches(app_servers, args.batch)
    print(f"Rolling out release {release_id} to {len(app_servers)} app server(s) in {len(plan)} batch(es)"
          f"{f', then {len(balancers)} load balancer(s)' if balancers else ''}.")

    with tempfile.TemporaryDirectory(prefix="rollout-") as tmp:
        workdir = Path(tmp)
        # -y: no prompt (there is nothing to confirm in a dry run, and no one to answer).
        preflight = pyinfra(args.inventory, everyone, ["-y", *data], "Preflight (changes nothing)", workdir,
                            dry=True)
        if not preflight.ok:
            failed = preflight.failed
            print(f"\nPreflight failed{': cannot reach or prepare ' + ', '.join(sorted(failed)) if failed else ''}."
                  " No host was changed.", file=sys.stderr)
            summary([], sorted(failed), [h for h in everyone if h not in failed])
            return 2

        done: list[str] = []
        stages = [(f"Batch {number} of {len(plan)}", batch) for number, batch in enumerate(plan, 1)]
        if balancers:
            stages.append(("Load balancers", balancers))
        for label, hosts in stages:
            stage = pyinfra(args.inventory, hosts, ["-y", *data], label, workdir)
            done += stage.done
            if not stage.ok:
                failed_here = stage.failed or hosts
                untouched = [h for h in everyone if h not in done and h not in failed_here]
                print(f"\n{label} failed on {', '.join(failed_here)}: stopping the rollout.", file=sys.stderr)
                summary(done, failed_here, untouched)
                return 1
    print(f"\nThe rollout's release id: {release_id}, on every app server that got a new release "
          f"(rollback.py --data rollback_to={release_id} names it).")
    summary(done, [], [])
    return 0


if __name__ == "__main__":
    sys.exit(main())

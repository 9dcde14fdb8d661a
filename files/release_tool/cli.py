"""Release choreography on the host, installed by the pyinfra deploy as
<app_root>/bin/release-tool and driven by it (and usable by hand, as root):

    release-tool list                  releases, the live one marked
    release-tool build-venv ID         build the release's venv as the app user
    release-tool check ID              import the release's app as the app user
    release-tool run ID -- COMMAND     run a command in the release as the app user
    release-tool canary ID             call the release's app once for its health path
    release-tool ship ID --upload F --sha256 H [--before C]... [--canary]
                 [--activate MODE] [--prune]
                                       a new release from its uploaded tarball: the hash
                                       checked, unpacked, then the steps above in one go
    release-tool activate [ID]         switch to ID (default: the live one), reload
                                       uWSGI without dropping requests, check health
                                       through nginx, and switch back if it fails
    release-tool rollback [ID]         activate the previous (or the named) release
    release-tool prune                 keep the newest N releases and their venvs
    release-tool assets                rebuild the static files nginx serves: the live
                                       release's, then the other kept releases'
    release-tool health                check the app through nginx
    release-tool history               what went live when (host clock), and how it went
    release-tool lock show|take|release|break   the per-app deploy lock
    release-tool status [--json]       the live release, units, uWSGI, nginx, health, disk
    release-tool exec [--tty] -- CMD   run a command in the live release as the app user
    release-tool maintenance on|off|status      nginx answers 503 with the maintenance page
    release-tool migrate ID --hold S --command C...   run C with requests held (at most S
                                       seconds each), then activate ID (hold.py)
    release-tool hold status|off       the hold of an exclusive migration
    release-tool split ID              a canary by share of traffic: ID beside the live release
                                       for a share of new clients, then promoted or rolled back
    release-tool canary-start ID | canary-verdict ID --numbers J | canary-finish ID --numbers J
                                       the same behind load balancers, on an app server, in
                                       steps: ID's canary instance; promoted if the balancers'
                                       counts J say so; the instance ended, ID removed if not live
    release-tool canary-watch ID | canary-close   ... on a balancer: its split for the window
                                       and its counts; then every client to the live release
    release-tool audit [--json] [-n N]          who deployed, rolled back, switched what, when

Everything that runs app code or its dependencies' build steps (build-venv, check,
run, canary) runs as the app user in a transient systemd unit with the service's
own sandbox (`sandbox` in the settings), so no process outlives it.

The host keeps its own record of activations in <app_root>/history.jsonl (root-only,
one JSON object a line, appended): rollback targets and pruning follow that record
in the order its lines were written, never release names (which come from the
deploying machine's clock).

Every deploy, rollback, maintenance switch and lock break also appends one line to
<app_root>/audit.jsonl (root's): who (the laptop's user and machine, `--by`), what,
when, and how it ended.

Settings come from release-tool.json next to the bin/ directory. Standard library
only: this runs on the host's own python3.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import socket
import sys
from pathlib import Path

from . import audit, base, lock

# Each command's module, imported only when that command runs: the tool is a zipapp,
# so every run compiles what it imports from source (all modules: ~75 ms of the host's
# CPU before anything is done; the deploy lock, taken in every deploy's first round
# trip, needs only the three above and this one).
COMMANDS = {
    "lock": ("cli", "cmd_lock"),
    "list": ("status", "cmd_list"), "history": ("status", "cmd_history"), "status": ("status", "cmd_status"),
    "build-venv": ("steps", "cmd_build_venv"), "check": ("steps", "cmd_check"), "canary": ("steps", "cmd_canary"),
    "run": ("steps", "cmd_run"), "ship": ("ship", "cmd_ship"),
    "activate": ("activation", "cmd_activate"), "rollback": ("activation", "cmd_rollback"),
    "prune": ("activation", "cmd_prune"), "assets": ("activation", "cmd_assets"),
    "health": ("health", "cmd_health"), "exec": ("execute", "cmd_exec"),
    "maintenance": ("maintenance", "cmd_maintenance"), "audit": ("audit", "cmd_audit"),
    "migrate": ("hold", "cmd_migrate"), "hold": ("hold", "cmd_hold"),
    "split": ("split", "cmd_split"), "canary-start": ("split", "cmd_canary_start"),
    "canary-verdict": ("split", "cmd_canary_verdict"), "canary-finish": ("split", "cmd_canary_finish"),
    "canary-watch": ("split", "cmd_canary_watch"), "canary-close": ("split", "cmd_canary_close"),
}


def _module(name: str):
    return importlib.import_module(f".{name}", __package__)


def cmd_lock(args) -> None:
    """Machine-readable answers (one `LOCK ...` line each) for tasks/lock.py."""
    if args.lock_action == "show":
        holder = lock.lock_holder()
        print("LOCK free" if holder is None else f"LOCK held {json.dumps(holder)}", flush=True)
    elif args.lock_action == "take":
        holder = json.loads(args.holder)
        connection = lock.ssh_connection()
        if connection:
            holder["connection"] = connection
        taken, current, broken = lock.lock_take(args.run, holder, args.wait, args.break_run, args.force)
        if broken:
            print(f"LOCK broke {json.dumps(broken)}", flush=True)
            audit.audit("lock-break", "ok", run=args.run, holder=lock.describe_holder(broken),
                        why="its process is gone" if args.break_run and broken.get("run") == args.break_run
                        else "deploy_lock_break")
        if not taken:
            print(f"LOCK held {json.dumps(current)}", flush=True)
            sys.exit(3)
        # "ssh": freed when this SSH connection ends, no release needed.
        print("LOCK taken ssh" if connection else "LOCK taken", flush=True)
    elif args.lock_action == "release":
        print("LOCK released" if lock.lock_release(args.run) else "LOCK not-ours", flush=True)
    else:  # break
        with lock.guard():
            holder = lock.lock_holder()
            base.LOCK.unlink(missing_ok=True)
        base.log(f"broke the deploy lock held by {lock.describe_holder(holder)}" if holder
                 else "the deploy lock is free")
        if holder:
            audit.audit("lock-break", "ok", holder=lock.describe_holder(holder), why="release-tool lock break")


def argument_parser(root: Path | None = None) -> argparse.ArgumentParser:
    """The command line (tasks/tool.py builds every command line the deploy runs to it)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host-name", default=socket.gethostname(), help="name used in messages")
    parser.add_argument("--run", default="", help="the deploy run's id, recorded in the history")
    parser.add_argument("--by", default="", help="USER@MACHINE running the deploy, for the audit log")
    parser.add_argument("--root", type=Path, default=root, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("list").add_argument("--json", action="store_true")
    sub.add_parser("history").add_argument("--last", type=int, default=50)
    for name in ("build-venv", "check", "canary"):
        sub.add_parser(name).add_argument("release")
    run = sub.add_parser("run")
    run.add_argument("release")
    run.add_argument("cmd", nargs=argparse.REMAINDER, help="-- then the command")
    ship_parser = sub.add_parser("ship", help="a new release from its uploaded tarball, checked, maybe live")
    ship_parser.add_argument("release")
    ship_parser.add_argument("--upload", required=True, help="the uploaded tarball (removed once read)")
    ship_parser.add_argument("--sha256", required=True, help="the tarball's sha256, checked before unpacking")
    ship_parser.add_argument("--before", action="append", default=[],
                             help="a before-switch command, as the app user (repeatable, in order)")
    ship_parser.add_argument("--canary", action="store_true", help="then the canary (see canary)")
    ship_parser.add_argument("--activate", choices=["auto", "chain", "graceful", "restart"],
                             help="then switch to it and reload uWSGI in this mode (see activate)")
    ship_parser.add_argument("--prune", action="store_true", help="then keep the newest N releases (see prune)")
    activate_parser = sub.add_parser("activate")
    activate_parser.add_argument("release", nargs="?")
    activate_parser.add_argument("--mode", choices=["auto", "chain", "graceful", "restart"], default="auto")
    sub.add_parser("rollback").add_argument("release", nargs="?")
    sub.add_parser("prune")
    sub.add_parser("assets")
    health_parser = sub.add_parser("health")
    health_parser.add_argument("--attempts", type=int, help="default: the configured retries")
    health_parser.add_argument("--quiet", action="store_true", help="no logs on failure")
    lock_parser = sub.add_parser("lock").add_subparsers(dest="lock_action", required=True)
    lock_parser.add_parser("show")
    take = lock_parser.add_parser("take")
    take.add_argument("--holder", default="{}", help="JSON: user, machine, pid of the deploying run")
    take.add_argument("--wait", type=float, default=0, help="seconds to wait for a holder to release it")
    take.add_argument("--break-run", help="break the lock if this run (known to be gone) holds it")
    take.add_argument("--force", action="store_true", help="break the lock whoever holds it")
    lock_parser.add_parser("release")
    lock_parser.add_parser("break")
    status_parser = sub.add_parser("status", help="what ops.py status judges")
    status_parser.add_argument("--json", action="store_true")
    status_parser.add_argument("--nginx", action="store_true", help="nginx runs the app's site on this host")
    status_parser.add_argument("--watch", help="the watch's state file (files/watch.py): when it last ran")
    for option in ("worker", "job", "timer", "certificate"):
        status_parser.add_argument(f"--{option}", action="append", default=[],
                                   help=f"a {option} of the app (repeatable)")
    exec_parser = sub.add_parser("exec", help="a command in the live release as the app user")
    exec_parser.add_argument("--tty", action="store_true", help="on a terminal (systemd-run --pty)")
    exec_parser.add_argument("cmd", nargs=argparse.REMAINDER, help="-- then the command")
    sub.add_parser("maintenance").add_argument("state", choices=["on", "off", "status"])
    migrate = sub.add_parser("migrate", help="an exclusive migration: requests held, then the switch")
    migrate.add_argument("release")
    migrate.add_argument("--hold", type=int, required=True, help="seconds a request waits at most")
    migrate.add_argument("--retry-after", type=int, required=True, help="the 503's Retry-After, in seconds")
    migrate.add_argument("--command", action="append", required=True, help="a migrate command (repeatable)")
    sub.add_parser("hold").add_argument("state", choices=["status", "off"])
    sub.add_parser("split", help="a canary by share of traffic: the release beside the live one, then promoted "
                   "or rolled back (split.py)").add_argument("release")
    sub.add_parser("canary-start", help="behind balancers: the release's canary instance").add_argument("release")
    for name in ("canary-verdict", "canary-finish"):
        step = sub.add_parser(name, help="behind balancers: by the balancers' counts (JSON)")
        step.add_argument("release")
        step.add_argument("--numbers", required=True)
    sub.add_parser("canary-watch", help="on a balancer: its split for the canary's window").add_argument("release")
    sub.add_parser("canary-close", help="on a balancer: every client to the live release again")
    audit_parser = sub.add_parser("audit")
    audit_parser.add_argument("--json", action="store_true", help="the log's JSON lines as they are")
    audit_parser.add_argument("-n", type=int, default=0, help="only the last N entries")
    return parser


def main(argv: list[str] | None = None, root: Path | None = None) -> int:
    """Run one command; `root` is the app root (the zipapp passes the one it is installed in)."""
    args = argument_parser(root).parse_args(argv)
    base.BY, base.RUN = args.by, args.run
    try:
        base.configure(args.root)
        with lock._working() if args.action in lock.CHANGING else contextlib.nullcontext():
            module, function = COMMANDS[args.action]
            code = getattr(_module(module), function)(args)
    except base.RolledBack as failure:  # audited by activate()
        print(f"ERROR: {failure}", file=sys.stderr, flush=True)
        return 1
    except base.Failure as failure:
        if args.action in ("build-venv", "check", "run", "canary"):
            # A new release that never went live: the deploy failed before its switch.
            audit.audit("deploy", "failed", run=args.run, stage=args.action, to=args.release, reason=str(failure))
        elif args.action == "ship" and not base.AUDITED and (stage := _module("ship").STAGE) != "prune":
            # Before its switch (its activation audits itself; a prune after it changes nothing live).
            audit.audit("deploy", "failed", run=args.run, stage=stage, to=args.release, reason=str(failure))
        elif args.action in ("migrate", "split", "canary-start", "canary-verdict") and not base.AUDITED:
            # An exclusive migration or a canary that failed before its switch (its activation audits itself).
            audit.audit("deploy", "failed", run=args.run, stage=args.action, to=args.release, reason=str(failure))
        elif args.action == "rollback" and not base.AUDITED:
            audit.audit("rollback", "failed", run=args.run, to=args.release, reason=str(failure))
        print(f"ERROR: {failure}", file=sys.stderr, flush=True)
        return 1
    return code or 0

"""Activation: switch, reload, health gate, rollback on failure; `rollback` and `prune`."""

from __future__ import annotations

import os
import shutil
import subprocess

from . import assets, audit, base, health, history, releases, uwsgi


# Activation -------------------------------------------------------------------

def activate(target: str, mode: str, host_name: str, kind: str = "deploy", run: str = "",
             after_switch=None, details: dict | None = None) -> None:
    """Switch to `target` (see _activate), and say how it went in the audit log (with
    `details`, e.g. a canary's numbers). `after_switch` is called once `current` points
    to it, before uWSGI reloads."""
    previous = releases.live()
    event = "rollback" if kind.startswith("rollback") else "deploy"
    details = {"kind": kind, **(details or {})}
    try:
        _activate(target, mode, host_name, kind, run, after_switch)
    except base.RolledBack as failure:
        audit.audit(event, "rolled-back", run=run, to=target, reason=str(failure), **{"from": previous}, **details)
        raise
    except base.Failure as failure:
        audit.audit(event, "failed", run=run, to=target, reason=str(failure), **{"from": previous}, **details)
        raise
    audit.audit(event, "ok", run=run, to=target, **{"from": previous}, **details)


def _activate(target: str, mode: str, host_name: str, kind: str = "deploy", run: str = "",
              after_switch=None) -> None:
    releases.release_dir(target)
    previous = releases.live()
    present = set(releases.releases())
    # What uWSGI last ran well: the live release, unless an activation of it was
    # interrupted (then the one before).
    running = history.confirmed() if history.confirmed() in present else previous
    fallback = previous if previous != target else running
    if fallback == target or fallback not in present:
        fallback = None
    if mode == "auto":
        same_venv = running and running in present and releases.venv_of(running) == releases.venv_of(target)
        mode = "chain" if same_venv else "graceful"
    fifo = None
    if uwsgi.service_active():
        # Opened (and checked) before anything changes: refused, nothing is switched.
        try:
            uwsgi.stats()
            if mode == "chain":
                fifo = uwsgi.open_master_fifo()
        except base.Failure as failure:
            raise base.Failure(f"release {target} was not activated on host {host_name}: {failure}; "
                          f"the live release {previous} was left alone") from None
    try:
        # Its static files first (with the older releases' behind them), then the code.
        assets.rebuild(target)
        if previous != target:
            releases.switch(target)
        history.record("switched", target, **{"from": previous, "run": run, "kind": kind})
        if after_switch is not None:
            after_switch()
        try:
            uwsgi.reload(mode, fifo)
            health.health()
        except base.Failure as failure:
            history.record("failed", target, run=run, reason=str(failure).splitlines()[0][:300])
            if fallback is None:
                raise base.Failure(f"release {target} FAILED on host {host_name}: {failure}") from None
            base.log(f"release {target} failed ({failure}); switching back to {fallback}")
            assets.rebuild(fallback)
            releases.switch(fallback)
            try:
                same_venv = releases.venv_of(fallback) == releases.venv_of(target)
                back = "chain" if same_venv and mode == "chain" else "graceful"
                uwsgi.reload(back, fifo if back == "chain" else None)
                health.health()
                history.record("live", fallback, kind="restored", run=run)
            except base.Failure as again:
                raise base.Failure(f"release {target} FAILED on host {host_name}: {failure}. Rolled back to "
                              f"{fallback}, but it is not healthy either: {again}") from None
            raise base.RolledBack(f"release {target} FAILED on host {host_name}: {failure}. Rolled back: "
                             f"{fallback} is live and healthy again.") from None
    finally:
        if fifo is not None:
            os.close(fifo)
    history.record("live", target, kind=kind, run=run, mode=mode, **{"from": previous})
    base.log(f"release {target} is live and healthy on host {host_name}")
    restart_workers(target, host_name)


def restart_workers(target: str, host_name: str) -> None:
    """The workers onto the live release, only once it passed the health gate (a
    release that fails it never runs them)."""
    units = base.CONFIG.get("workers") or []
    if not units:
        return
    result = subprocess.run(["systemctl", "restart", *units], capture_output=True, text=True)
    if result.returncode != 0:
        raise base.Failure(f"release {target} is live on host {host_name}, but its workers did not restart: "
                      f"{result.stderr.strip()} (see: journalctl -u '{base.CONFIG['app']}-*')")
    base.log(f"workers restarted on release {target}: {' '.join(units)}")


def cmd_activate(args) -> None:
    target = args.release or releases.live()
    if target is None:
        raise base.Failure("there is no release to activate yet")
    kind = "recheck" if target == releases.live() and history.confirmed() != target else "deploy"
    activate(target, args.mode, args.host_name, kind=kind, run=args.run)


def cmd_rollback(args) -> None:
    current = releases.live()
    entries = history.read_history()
    if args.release:
        target = args.release
        releases.release_dir(target)
        failed = history.failed_releases(entries).get(target)
        if failed:
            raise base.Failure(f"release {target} failed after its switch ({failed.get('at')}: "
                          f"{failed.get('reason', '?')}): not a rollback target")
        kind = "rollback-to"
    else:
        target = history.rollback_target(entries, current, set(releases.releases()))
        if target is None:
            raise base.Failure(f"no release was live before {current} (by this host's record, {base.HISTORY}) "
                          "to roll back to")
        kind = "rollback"
    if target == current:
        base.log(f"release {target} is already live")
        return
    activate(target, "auto", args.host_name, kind=kind, run=args.run)


def cmd_assets(args) -> None:
    """Rebuild the static files nginx serves (the deploy runs it when their settings change)."""
    assets.rebuild(releases.live())


def cmd_prune(args) -> None:
    current = releases.live()
    names = releases.releases()
    pruned = history.prune_choice(names, history.read_history(), current, base.CONFIG["keep_releases"])
    for name in pruned:
        releases.discard(name)
    if pruned:
        # Their static files are served no more.
        assets.rebuild(current)
    kept = set(releases.releases())
    # Leftovers of interrupted deploys: half-unpacked releases and uploads.
    for path in base.RELEASES.iterdir():
        if path.name != current and (path.name.startswith(".upload-") or
                                     (path.is_dir() and not path.is_symlink() and not (path / base.META).is_file())):
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
            base.log(f"removed the leftover {path.name} of an interrupted deploy")
    used = {releases.venv_of(name) for name in kept}
    for venv in sorted(base.VENVS.iterdir()) if base.VENVS.is_dir() else []:
        if os.path.realpath(venv) not in used:
            shutil.rmtree(venv, ignore_errors=True) if not venv.is_symlink() else venv.unlink()
            base.log(f"removed unused venv {venv.name}")

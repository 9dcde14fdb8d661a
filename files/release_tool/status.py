"""What the host holds: `list`, `history`, and `status` (what ops.py status judges)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from . import audit, base, health, history, lock, releases, uwsgi


def cmd_list(args) -> None:
    current = releases.live()
    rows = releases.releases()
    if args.json:
        print(json.dumps({"live": current, "confirmed": history.confirmed(), "releases": rows}))
        return
    if not rows:
        base.log("no releases yet")
    failed = history.failed_releases(history.read_history())
    deployed = audit.deployers(audit.read_audit())
    for name in rows:
        meta = json.loads((base.RELEASES / name / base.META).read_text())
        marker = "* live" if name == current else ("(failed after its switch)" if name in failed else "")
        by = deployed.get(name, {}).get("by") or {}
        deployer = f"  deployed by {by.get('user', '?')}@{by.get('machine', '?')}" if by else ""
        venv = Path(releases.venv_of(name)).name
        base.log(f"{name}  commit={meta.get('commit') or '-'}  venv={venv}  {marker}".rstrip() + deployer)


def cmd_history(args) -> None:
    for entry in history.read_history()[-args.last:]:
        extra = " ".join(f"{key}={value}" for key, value in entry.items()
                         if key not in ("at", "time", "event", "release"))
        base.log(f"{entry.get('at', '?')}  {entry['event']:<8} {entry['release']}  {extra}".rstrip())


# Day-two: status and exec (ops.py on the laptop) ----------------------------------

UNIT_PROPERTIES = ("LoadState", "ActiveState", "SubState", "Result")


def unit_states(units: list[str]) -> dict[str, dict]:
    """systemctl's state of each unit, in one call (a unit it does not know is
    LoadState=not-found)."""
    if not units:
        return {}
    out = subprocess.run(["systemctl", "show", "--no-pager", f"--property={','.join(UNIT_PROPERTIES)}",
                          "--", *units], capture_output=True, text=True).stdout
    blocks, block = [], {}
    for line in [*out.splitlines(), ""]:
        if line.strip():
            key, _, value = line.partition("=")
            block[key] = value
        elif block:
            blocks.append(block)
            block = {}
    return dict(zip(units, blocks))


def certificate_lines(path: str) -> list[str] | None:
    """openssl's expiry, serial and names of a certificate of root's, None when missing
    (read on the laptop by tasks/acme.py LiveCertificate, the deploy's own reader)."""
    if not os.path.isfile(path):
        return None
    return subprocess.run(["openssl", "x509", "-in", path, "-noout", "-enddate", "-serial",
                           "-ext", "subjectAltName"], capture_output=True, text=True).stdout.splitlines()


def uwsgi_summary() -> dict:
    """Workers busy and idle and requests served, from the stats socket (safely), as
    uWSGI reports them: for display only (see `stats`)."""
    try:
        data = uwsgi.stats()
    except base.Failure as refused:
        return {"error": str(refused)}
    if data is None:
        return {"error": f"the stats socket {base.CONFIG['stats_socket']} is not answering"}
    workers = uwsgi.stats_workers(data)

    def total(key: str) -> int:
        values = [w.get(key) for w in workers]
        return sum(n for n in values if isinstance(n, int) and not isinstance(n, bool) and n >= 0)

    # Microseconds, averaged by uWSGI over each worker's recent requests (Prometheus's metrics).
    times = [w.get("avg_rt") for w in workers if isinstance(w.get("avg_rt"), int) and w.get("requests")]
    return {"workers": len(workers), "busy": sum(w.get("status") == "busy" for w in workers),
            "idle": sum(w.get("status") == "idle" for w in workers), "requests": total("requests"),
            "exceptions": total("exceptions"), "harakiri": total("harakiri_count"),
            "avg_rt": max((t for t in times if t >= 0), default=0)}


WATCH_UNITS = ("pyinfra-flask-watch.timer", "pyinfra-flask-watch.service")


def watch_report(state_path: str) -> dict:
    """The host's watch (files/watch.py): its units, and from its state file (root's, never
    through a link) how long ago it last ran, what fails and what was not delivered."""
    report = {"units": unit_states(list(WATCH_UNITS)), "age": None, "interval": None, "failing": [],
              "undelivered": {}}
    try:
        fd = base.own_file(Path(state_path), os.O_RDONLY)
    except FileNotFoundError:
        return report
    except (OSError, base.Failure) as refused:
        return {**report, "error": str(refused)}
    with os.fdopen(fd, encoding="utf-8") as handle:
        try:
            state = json.loads(handle.read())
        except ValueError:
            return {**report, "error": f"{state_path} is not JSON"}
    last = state.get("last_run")
    return {**report, "age": time.time() - last if isinstance(last, (int, float)) else None,
            "interval": state.get("interval"), "failing": state.get("failing", []),
            "undelivered": state.get("undelivered", {}), "waiting": len(state.get("outbox", []))}


def status_report(workers: list[str], jobs: list[str], timers: list[str], nginx: bool,
                  certificates: list[str], watch: str | None = None) -> dict:
    """Everything `ops.py status` judges, read in one go; the judging is the laptop's
    (tasks/ops_status.py)."""
    current = releases.live()
    meta, entry = None, None
    if current is not None:
        try:
            found = json.loads((releases.release_dir(current) / base.META).read_text())
            meta = {key: value for key, value in found.items() if key != "files"}
        except (base.Failure, OSError, ValueError):
            meta = None
        for event in ("live", "switched"):
            entry = next((e for e in reversed(history.read_history())
                          if e["release"] == current and e["event"] == event), None)
            if entry:
                break
        deployer = audit.deployers(audit.read_audit()).get(current)
        if deployer:  # who made it live, from the audit log
            entry = {**(entry or {}), "by": deployer["by"]}
    units = unit_states([base.CONFIG["service"], *workers, *jobs, *timers, *(["nginx.service"] if nginx else [])])
    try:
        health.health(1)
        healthy = None
    except base.Failure as failure:
        healthy = str(failure)
    disk = os.statvfs(base.ROOT)
    return {
        "app": base.CONFIG["app"], "live": current, "confirmed": history.confirmed() == current, "meta": meta,
        "entry": entry, "service": base.CONFIG["service"], "units": units,
        "workers": workers, "jobs": jobs, "timers": timers, "nginx": nginx,
        "uwsgi": uwsgi_summary() if units[base.CONFIG["service"]].get("ActiveState") == "active" else None,
        "health": {"check": health.healthcheck().describe(base.CONFIG["health"]), "failure": healthy},
        "certificates": {path: certificate_lines(path) for path in certificates},
        "disk": {"path": str(base.ROOT), "free": disk.f_bavail * disk.f_frsize, "total": disk.f_blocks * disk.f_frsize},
        "lock": lock.lock_holder(),
        **({"watch": watch_report(watch)} if watch else {}),
    }


def cmd_status(args) -> None:
    report = status_report(args.worker, args.job, args.timer, args.nginx, args.certificate, args.watch)
    if args.json:
        print(json.dumps(report), flush=True)
        return
    for key, value in report.items():
        base.log(f"{key}: {json.dumps(value)}")

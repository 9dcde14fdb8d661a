"""`ops.py status`: how each app is doing on each host, judged on the laptop.

Each host is read in ONE remote command: the release tool's `status --json` of
every app of the host (files/release_tool/status.py `status_report`), which reads the
live release and the host's record of it, the units (one `systemctl show`), uWSGI's
stats socket (opened the safe way, never through a link), nginx, the health check
(files/healthcheck.py, one attempt), the certificate (openssl) and the free disk
under the app root. What counts as unhealthy is decided here (`problems`), from
the same settings the deploy uses.
"""

from __future__ import annotations

import json
import shlex
from datetime import datetime, timezone
from typing import NamedTuple

from tasks import tool as host_tool
from tasks.config import topology
from tasks.steps import acme, healthcheck, pgbackrest, restic, watch
from tasks.config.app import App


# Written by Debian's packages when an update needs a reboot (harden reboots only at
# harden_reboot_time, when set).
REBOOT_FLAG = "/run/reboot-required"
REBOOT_MARK = "REBOOT-REQUIRED"


def tool(app: App) -> str:
    return host_tool.path(app.app_root)


def app_command(app: App, certificate: str | None) -> str:
    return watch.status_command(app, certificate, watch=True)


def balancer_command(app: App, certificate: str | None) -> str:
    """A balancer has no release tool: nginx's unit, the deploy's health check
    (files/healthcheck.py, one attempt) and the certificate, each after a marker line
    (`balancer_report` reads them)."""
    name = shlex.quote(app.app_name)
    check = healthcheck.command(healthcheck.spec(app), "--attempts", "1", "--role", "balancer")
    parts = [f"echo BALANCER {name}",
             "systemctl show --no-pager --property=LoadState,ActiveState,SubState,Result nginx.service",
             f'if said=$({check} 2>&1); then echo HEALTH; else echo "HEALTH $(printf %s "$said" | head -n 1)"; fi']
    if certificate:
        path = shlex.quote(certificate)
        parts.append(f"if [ -f {path} ]; then echo CERT; openssl x509 -in {path} -noout -enddate -serial "
                     f"-ext subjectAltName 2>/dev/null; else echo CERT missing; fi")
    return " ; ".join(parts)


def host_command(host, apps: list[App]) -> str:
    """One command for all the host's apps: the release tool's JSON line for each
    on an app server, marked sections on a balancer."""
    paths = watch.certificates(apps)
    make = balancer_command if topology.is_balancer(host) else app_command
    return " ; ".join(make(app, paths.get(app.app_name)) for app in apps)


def with_reboot_flag(command: str) -> str:
    """`command` after a line saying whether an update needs a reboot (Debian's flag;
    `parse` reads it), ahead of any app's section."""
    return f"if [ -e {REBOOT_FLAG} ]; then echo {REBOOT_MARK}; fi ; {command}"


def balancer_reports(apps: list[App], stdout: list[str]) -> dict[str, dict]:
    """The reports of a balancer's apps, from `balancer_command`'s output."""
    paths = watch.certificates(apps)
    reports: dict[str, dict] = {}
    report: dict = {}
    section = ""
    for line in stdout:
        if line.startswith("BALANCER "):
            name = line[len("BALANCER "):]
            report = reports[name] = {"app": name, "balancer": True, "nginx": True, "units": {"nginx.service": {}},
                                      "certificates": {}, "health": {"failure": None}}
            section = "units"
        elif not report:
            continue
        elif line.startswith("HEALTH"):
            report["health"]["failure"] = line[len("HEALTH "):].strip() or None
            section = ""
        elif line.startswith("CERT"):
            path = paths.get(report["app"], "?")
            report["certificates"][path] = None if line.strip() == "CERT missing" else []
            section = "cert"
        elif section == "units" and "=" in line:
            key, _, value = line.partition("=")
            report["units"]["nginx.service"][key] = value
        elif section == "cert":
            report["certificates"][paths.get(report["app"], "?")].append(line)
    return reports


def parse(host, apps: list[App], stdout: list[str], stderr: list[str]) -> dict[str, dict]:
    """Each app's report; `{"error": ...}` for an app whose release tool did not answer."""
    reports: dict[str, dict] = balancer_reports(apps, stdout) if topology.is_balancer(host) else {}
    for line in [] if topology.is_balancer(host) else stdout:
        try:
            report = json.loads(line)
        except ValueError:
            continue
        if isinstance(report, dict) and isinstance(report.get("app"), str):
            reports[report["app"]] = report
    said = next((line.strip() for line in reversed(stderr) if line.strip()), "no output")
    balancer = topology.is_balancer(host)
    reboot = {"reboot_required": True} if REBOOT_MARK in stdout else {}
    return {app.app_name: {**(reports.get(app.app_name) or {
        "error": f"{'the balancer' if balancer else f'its release tool ({tool(app)})'} did not answer ({said}): "
                 "not deployed here yet?"}), **reboot} for app in apps}


def who(entry: dict | None, meta: dict | None = None) -> str:
    """Who made the live release live, as far as the host's record says: a `by`
    (text, or a dict with user and machine) or `user`/`machine` in its history entry,
    else in the release's metadata; "-" when neither says."""
    for source in (entry or {}, meta or {}):
        by = source.get("by")
        if isinstance(by, str) and by:
            return by
        if isinstance(by, dict) and by.get("user"):
            return f"{by['user']}@{by.get('machine', '?')}"
        if source.get("user"):
            return f"{source['user']}@{source.get('machine', '?')}"
    return "-"


def _state(units: dict, unit: str) -> str:
    state = units.get(unit) or {}
    if state.get("LoadState") == "not-found":
        return "not-found"
    return state.get("ActiveState") or "unknown"


def certificate_days(lines: list[str] | None, now: datetime | None = None) -> float | None:
    """Days until the certificate expires (negative: expired), by the deploy's own
    reading of openssl's output (tasks/steps/acme.py); None when missing or unreadable."""
    if lines is None:
        return None
    info = acme.LiveCertificate().process(lines)
    return None if info is None else info.days_left(now)


def watch_problems(report: dict | None) -> list[str]:
    """The host's watch (files/watch.py) failing: its timer stopped, its last run failed
    or too long ago, alerts it could not deliver."""
    if report is None:
        return []
    if report.get("error"):
        return [f"the watch's state: {report['error']}"]
    found = []
    timer, service = (_state(report.get("units", {}), f"{watch.UNIT}.{kind}") for kind in ("timer", "service"))
    if timer != "active":
        found.append(f"the watch's timer {watch.UNIT}.timer is {timer}: nothing is checked or alerted")
    if service == "failed":
        found.append(f"the watch's last run failed (journalctl -u {watch.UNIT}.service)")
    age, interval = report.get("age"), report.get("interval") or 60
    if age is None:
        found.append(f"the watch has never run (systemctl status {watch.UNIT}.timer)")
    elif age > 3 * interval + 60:
        found.append(f"the watch last ran {age / 60:.0f} minutes ago, though due every {interval} s "
                     f"(journalctl -u {watch.UNIT}.service)")
    for target, why in sorted((report.get("undelivered") or {}).items()):
        found.append(f"the watch could not deliver alerts to the {target} target ({why}); "
                     f"{report.get('waiting', 0)} waiting, tried again every run")
    return found


def problems(app: App, report: dict, now: datetime | None = None) -> list[str]:
    """What is wrong with the app on this host, one line each; [] when healthy."""
    if "error" in report:
        return [report["error"]]
    found = []
    units = report.get("units", {})
    service = report.get("service", app.service)
    if report.get("balancer"):
        pass  # nginx only: no release, no uWSGI
    elif report.get("live") is None:
        found.append("no live release")
    elif not report.get("confirmed"):
        found.append(f"the activation of {report['live']} never ended healthy (the next deploy re-checks it)")
    if not report.get("balancer") and _state(units, service) != "active":
        found.append(f"{service} is {_state(units, service)}")
    for unit in report.get("workers", []):
        if _state(units, unit) != "active":
            found.append(f"worker {unit} is {_state(units, unit)}")
    for unit in report.get("jobs", []):
        if _state(units, unit) in ("failed", "not-found"):
            found.append(f"job {unit} is {_state(units, unit)} (journalctl -u {unit})")
    for unit in report.get("timers", []):
        if _state(units, unit) != "active":
            found.append(f"timer {unit} is {_state(units, unit)}")
    if report.get("nginx") and _state(units, "nginx.service") != "active":
        found.append(f"nginx is {_state(units, 'nginx.service')}")
    uwsgi = report.get("uwsgi")
    if isinstance(uwsgi, dict) and uwsgi.get("error"):
        found.append(f"uWSGI: {uwsgi['error']}")
    failure = (report.get("health") or {}).get("failure")
    if failure:
        found.append(failure.splitlines()[0])
    found += watch_problems(report.get("watch"))
    for path, lines in (report.get("certificates") or {}).items():
        days = certificate_days(lines, now)
        if lines is None:
            found.append(f"certificate {path} is missing")
        elif days is None:
            found.append(f"certificate {path} cannot be read")
        elif days < 0:
            found.append(f"certificate {path} expired {-days:.0f} days ago")
        elif days < app.acme_min_valid_days:
            found.append(f"certificate {path} expires in {days:.1f} days (acme_min_valid_days: "
                         f"{app.acme_min_valid_days})")
    return found


def _size(count: int) -> str:
    for unit in ("B", "K", "M", "G", "T"):
        if count < 1024 or unit == "T":
            return f"{count:.0f}{unit}" if unit == "B" else f"{count:.1f}{unit}"
        count /= 1024
    return ""


def summary(host: str, app: App, report: dict, now: datetime | None = None) -> dict:
    """One row of the table (and of --json): what is there, and what is wrong."""
    found = problems(app, report, now)
    row = {"host": host, "app": app.app_name, "healthy": not found, "problems": found,
           "reboot_required": bool(report.get("reboot_required"))}
    if "error" in report:
        return row
    meta, entry, units = report.get("meta") or {}, report.get("entry") or {}, report.get("units", {})
    workers = report.get("workers", [])
    uwsgi = report.get("uwsgi") or {}
    certs = report.get("certificates") or {}
    days = [certificate_days(lines, now) for lines in certs.values()]
    disk = report.get("disk") or {}
    row.update({
        "release": report.get("live"), "commit": meta.get("commit"), "since": entry.get("at"),
        "by": who(entry, meta),
        "web": None if report.get("balancer") else _state(units, report.get("service", app.service)),
        "workers": {unit: _state(units, unit) for unit in workers},
        "jobs": {unit: _state(units, unit) for unit in report.get("jobs", []) + report.get("timers", [])},
        "uwsgi": {key: uwsgi[key] for key in ("workers", "busy", "idle", "requests") if key in uwsgi} or None,
        "nginx": _state(units, "nginx.service") if report.get("nginx") else None,
        "certificate_days": round(min(days), 1) if days and None not in days else None,
        "disk_free": disk.get("free"), "disk_total": disk.get("total"),
        "deploying": report.get("lock"),
    })
    return row


VERIFY_MARK = "VERIFY-LAST"


class Drill(NamedTuple):
    """One of the backup host's drills: its name in the table, unit, state directory, setting."""

    label: str
    unit: str
    state: str
    setting: str


DRILLS = (Drill("restore drill", pgbackrest.VERIFY_UNIT, pgbackrest.VERIFY_STATE, "pgbackrest_verify_schedule"),
          Drill("files drill", restic.VERIFY_UNIT, restic.VERIFY_STATE, "files_verify_schedule"))


def verify_command(drill: Drill = DRILLS[0]) -> str:
    """A drill of the backup host (tasks/steps/pgbackrest.py, tasks/steps/restic.py): its
    service's and timer's states (one `systemctl show` each), then the drill's own last line."""
    show = "systemctl show --no-pager --property=LoadState,ActiveState,Result"
    return (f"{show},ExecMainExitTimestamp {drill.unit}.service ; echo TIMER ; {show} {drill.unit}.timer ; "
            f"echo {VERIFY_MARK} ; cat {drill.state}/last 2>/dev/null ; true")


def verify_row(host: str, stdout: list[str], schedule: str | None, drill: Drill = DRILLS[0]) -> dict:
    """The drill's row: when it last ended, ok or failed, and why; unhealthy when its unit
    failed or its timer is not running though scheduled."""
    service: dict[str, str] = {}
    timer: dict[str, str] = {}
    last = ""
    section = service
    for line in stdout:
        if line == "TIMER":
            section = timer
        elif line == VERIFY_MARK:
            section = None
        elif section is None:
            last = last or line.strip()
        elif "=" in line:
            key, _, value = line.partition("=")
            section[key] = value
    state, since, why = (last.split(" ", 2) + ["", ""])[:3] if last else ("", "", "")
    unit, label = drill.unit, drill.label
    row = {"host": host, "app": f"({label})", "restore_drill": {
        "drill": label, "setting": drill.setting, "schedule": schedule, "state": state or None, "at": since or None,
        "why": why or None, "unit": service.get("ActiveState") or "unknown"}, "problems": []}
    found = row["problems"]
    if service.get("LoadState") == "not-found" or not service:
        if schedule:
            found.append(f"the {label} is not installed ({unit}.service): deploy the backup host")
    elif service.get("ActiveState") == "failed" or state == "failed":
        found.append(f"the last {label} failed{f' at {since}' if since else ''}: "
                     f"{why or 'see journalctl -u ' + unit + '.service'}")
    if schedule and service.get("LoadState") == "loaded" and timer.get("ActiveState") != "active":
        found.append(f"the {label}'s timer {unit}.timer is {timer.get('ActiveState') or 'unknown'}")
    row["healthy"] = not found
    return row


def verify_line(row: dict) -> str:
    """The drill's line in the table: `[host] restore drill: ok|FAILED|never run|off ...`."""
    drill = row["restore_drill"]
    if not drill["schedule"] and drill["state"] is None:
        said = f"off ({drill['setting']} = null)"
    elif drill["unit"] == "activating":
        said = f"running now (last: {drill['state'] or 'none'} {drill['at'] or ''})".rstrip()
    elif drill["state"] is None:
        said = "never run yet" if row["healthy"] else "FAILED"
    else:
        said = f"{'ok' if drill['state'] == 'ok' and row['healthy'] else 'FAILED'} at {drill['at']}: {drill['why']}"
    return f"[{row['host']}] {drill['drill']}: {said}"


COLUMNS = ("HOST", "APP", "RELEASE", "COMMIT", "SINCE", "BY", "WEB", "WORKERS", "UWSGI busy/idle req",
           "NGINX", "CERT", "DISK FREE", "STATUS")


def cells(row: dict) -> list[str]:
    if "release" not in row:
        return [row["host"], row["app"], *["?"] * (len(COLUMNS) - 3), "UNHEALTHY"]
    workers = row["workers"]
    uwsgi = row["uwsgi"]
    free, total = row["disk_free"], row["disk_total"]
    return [
        row["host"], row["app"], row["release"] or "-", (row["commit"] or "-")[:10], row["since"] or "-", row["by"],
        row["web"] or "-",
        f"{sum(state == 'active' for state in workers.values())}/{len(workers)} active" if workers else "-",
        f"{uwsgi.get('busy', '?')}/{uwsgi.get('idle', '?')} {uwsgi.get('requests', '?')}" if uwsgi else "-",
        row["nginx"] or "-",
        "-" if row["certificate_days"] is None else f"{row['certificate_days']:.0f}d",
        f"{_size(free)} ({100 * free / total:.0f}%)" if free is not None and total else "-",
        "ok" if row["healthy"] else "UNHEALTHY",
    ]


def table(rows: list[dict]) -> list[str]:
    """The rows as aligned text, then one line per problem."""
    drills = [row for row in rows if "restore_drill" in row]
    rows = [row for row in rows if "restore_drill" not in row]
    body = [list(COLUMNS)] + [cells(row) for row in rows]
    widths = [max(len(line[index]) for line in body) for index in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in body]
    for row in rows:
        lines += [f"[{row['host']}] {row['app']}: {problem}" for problem in row["problems"]]
        if row.get("reboot_required") and row is next(r for r in rows if r["host"] == row["host"]):
            lines.append(f"[{row['host']}] reboot required: an update needs it ({REBOOT_FLAG})")
        if row.get("deploying"):
            holder = row["deploying"]
            lines.append(f"[{row['host']}] {row['app']}: a deploy is running ({holder.get('user', '?')}@"
                         f"{holder.get('machine', '?')}, run {holder.get('run', '?')})")
    for row in drills:
        label = row["restore_drill"]["drill"]
        lines.append(verify_line(row))
        lines += [f"[{row['host']}] {label}: {problem}" for problem in row["problems"]
                  if row["restore_drill"]["state"] is None or not problem.startswith(f"the last {label} failed")]
    return lines


def now() -> datetime:
    return datetime.now(timezone.utc)

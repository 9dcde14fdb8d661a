#!/usr/bin/env python3
"""The watch on every app server (and the backup host), installed by the deploy as
/usr/local/lib/pyinfra-flask/watch.py (tasks/steps/watch.py) and run as root by
`pyinfra-flask-watch.service`, which its timer starts every `watch_interval` seconds:

    python3 -I -S watch.py --config /etc/pyinfra-flask/watch/watch.json

Each run checks what `ops.py status` checks, from the same report: every app's
`release-tool status --json` (the live release, its units, workers and jobs, nginx,
the one health check over HTTP, its certificates, the free disk), and beside it the
host's own units (the certificate renewal's timer and service; on the backup host, which
runs no app, its backups', sweeps' and drills' units, asked of systemd), each certificate's
days left (`openssl x509 -checkend`) and the age of each app's newest backup. Every
check has a key; the state of each is kept in a root-only file, and an alert is
sent only when a check starts failing and when it recovers, never again while it
stays as it was (a first run alerts only for what already fails).

Alerts go to the targets of a root-only file (the webhook, ntfy, SMTP email of the
`alert_*` settings), with the standard library only. One that cannot be delivered
stays in the state file's outbox and is tried again on the next run (logged each
time, its target named, never its URL or password): a state change is never lost.

Root never follows a link here: the files it reads are root's own (config, targets,
state, backup directories: opened without following links, their owner and type
checked); the app is reached over HTTP by the health check and its runtime
directory only by the release tool, which opens it the safe way.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import smtplib
import socket
import ssl
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

# Alerts waiting for delivery are kept up to this many (the oldest dropped, and said so).
OUTBOX_MAX = 500
TIMEOUT = 20  # seconds for one delivery or one app's status


class Refused(Exception):
    """A file root will not read, said in one line."""


# Root's own files -------------------------------------------------------------------

def read_own(path: str) -> str | None:
    """A regular file of root's, closed to others, never through a link; None if missing."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise Refused(f"refusing {path}: {exc.strerror} (a link?)") from None
    with os.fdopen(fd, encoding="utf-8") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o022:
            raise Refused(f"refusing {path}: not a regular file of root's that only root can write")
        return handle.read()


def write_own(path: str, text: str) -> None:
    """Replace a file of root's atomically, mode 600 (a new file renamed over it)."""
    tmp = f"{path}.{os.getpid()}.new"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def log(message: str) -> None:  # to the journal
    print(message, file=sys.stderr, flush=True)


# The checks ---------------------------------------------------------------------------
# Each returns {key: None (fine) or what is wrong}.

def judge_units(states: dict[str, str], wanted: dict[str, str], what: dict[str, str]) -> dict:
    """`wanted` per unit: "active" (it must run) or "not-failed" (a oneshot: it must not have failed)."""
    found = {}
    for unit, want in wanted.items():
        state = states.get(unit, "unknown")
        bad = state != "active" if want == "active" else state in ("failed", "not-found")
        found[f"unit:{unit}"] = f"{what.get(unit, unit)} is {state}" if bad else None
    return found


def certificate_expires(path: str, days: int) -> bool:
    """Whether the certificate ends within `days` days (openssl's own reading)."""
    done = subprocess.run(["openssl", "x509", "-in", path, "-noout", "-checkend", str(days * 86400)],
                          capture_output=True, text=True, timeout=TIMEOUT)
    return done.returncode != 0


def judge_report(app: dict, report: dict, names: dict[str, str]) -> dict:
    """The release tool's status report of one app, judged as ops.py status does (the
    host's own units, asked of its first app's tool as jobs and timers, by their `names`)."""
    name = app["app"]
    found = {f"{name}:release": None if report.get("live") else f"{name} has no live release",
             f"{name}:health": None}
    failure = (report.get("health") or {}).get("failure")
    if failure:
        found[f"{name}:health"] = f"{name}'s health check failed: {failure.splitlines()[0]}"
    states = {unit: ("not-found" if s.get("LoadState") == "not-found" else s.get("ActiveState") or "unknown")
              for unit, s in (report.get("units") or {}).items()}
    wanted = {report.get("service", ""): "active", **{unit: "active" for unit in report.get("workers", [])},
              **{unit: "not-failed" for unit in report.get("jobs", [])},
              **{unit: "active" for unit in report.get("timers", [])},
              **({"nginx.service": "active"} if report.get("nginx") else {})}
    what = {report.get("service", ""): f"{name}'s web service {report.get('service')}",
            **{unit: f"{name}'s worker {unit}" for unit in report.get("workers", [])},
            **{unit: f"{name}'s job {unit}" for unit in [*report.get("jobs", []), *report.get("timers", [])]},
            "nginx.service": "nginx", **names}
    found.update(judge_units(states, wanted, what))
    for path, lines in (report.get("certificates") or {}).items():
        key = f"certificate:{path}"
        if lines is None:
            found[key] = f"the certificate {path} is missing"
        elif certificate_expires(path, app["certificate_days"]):
            end = next((line.split("=", 1)[1] for line in lines if line.startswith("notAfter=")), "?")
            found[key] = (f"the certificate {path} ends within {app['certificate_days']} days ({end}): is its "
                          "renewal failing?")
        else:
            found[key] = None
    disk = report.get("disk") or {}
    if disk.get("total"):
        free = 100 * disk["free"] / disk["total"]
        found[f"disk:{disk['path']}"] = (f"the disk holding {disk['path']} is {100 - free:.0f}% full "
                                         f"({free:.1f}% free, alert below {app['disk_free']}%)"
                                         if free < app["disk_free"] else None)
    return found


def newest_backup_age(backup: dict, now: float) -> tuple[float, bool] | None:
    """(seconds since the newest backup of a root-only directory was made (by its
    mtime; a file of the backup's name pattern, never through a link), True); with
    none yet, (seconds since the directory was made, False); None when there is no
    directory."""
    try:
        fd = os.open(backup["directory"], os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise Refused(f"refusing {backup['directory']}: {exc.strerror} (a link?)") from None
    try:
        info = os.fstat(fd)
        if info.st_uid != os.geteuid() or info.st_mode & 0o022:
            raise Refused(f"refusing {backup['directory']}: not root's, or others can write it")
        pattern = re.compile(backup["pattern"])
        times = [info.st_ctime]
        for entry in os.listdir(fd):
            if pattern.match(entry):
                found = os.stat(entry, dir_fd=fd, follow_symlinks=False)
                if stat.S_ISREG(found.st_mode):
                    times.append(found.st_mtime)
        newest = max(times[1:]) if len(times) > 1 else times[0]
    finally:
        os.close(fd)
    return now - newest, len(times) > 1


def judge_backups(app: dict, now: float) -> dict:
    found = {}
    for backup in app.get("backups", []):
        key = f"backup:{app['app']}:{backup['kind']}"
        try:
            newest = newest_backup_age(backup, now)
        except Refused as refused:
            found[key] = str(refused)
            continue
        if newest is None or newest[0] <= backup["max_age_hours"] * 3600:
            found[key] = None
            continue
        age, made = newest[0] / 3600, newest[1]
        said = (f"{app['app']}'s newest {backup['what']} is {age:.1f} hours old" if made else
                f"{app['app']} has no {backup['what']} yet, {age:.1f} hours after its directory was made")
        found[key] = f"{said} (alert after {backup['max_age_hours']}; see {backup['hint']})"
    return found


def app_status(app: dict) -> dict:
    """The release tool's report (its `status --json`), or {"error": ...}."""
    try:
        done = subprocess.run(app["status"], capture_output=True, text=True, timeout=TIMEOUT * 3)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"error": f"its release tool did not answer ({exc})"}
    for line in done.stdout.splitlines():
        try:
            report = json.loads(line)
        except ValueError:
            continue
        if isinstance(report, dict) and report.get("app") == app["app"]:
            return report
    said = (done.stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": f"its release tool did not answer ({said})"}


def systemd_states(units: list[str]) -> dict[str, str]:
    """Each unit's ActiveState ("not-found" when systemd has no such unit), from one `systemctl show`."""
    done = subprocess.run(["systemctl", "show", "--no-pager", "--property=Id,LoadState,ActiveState", "--", *units],
                          capture_output=True, text=True, timeout=TIMEOUT)
    states, found = {}, {}
    for block in done.stdout.strip().split("\n\n"):
        fields = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        found[len(found)] = fields
    for index, unit in enumerate(units):  # systemctl answers in the order asked
        fields = found.get(index, {})
        states[unit] = "not-found" if fields.get("LoadState") == "not-found" else fields.get("ActiveState", "unknown")
    return states


def check_units(units: dict[str, str]) -> dict:
    """A host's own units, asked of systemd (a host without apps: the backup host): a timer
    must run, a service must not have failed."""
    if not units:
        return {}
    wanted = {unit: "active" if unit.endswith(".timer") else "not-failed" for unit in units}
    return judge_units(systemd_states(list(units)), wanted, units)


def check_all(config: dict, now: float) -> dict:
    """Every check of the host: {key: None or what is wrong}."""
    found = check_units(config.get("systemd_units", {}))
    for app in config["apps"]:
        report = app_status(app)
        if "error" in report:
            found[f"{app['app']}:status"] = f"{app['app']}: {report['error']}"
        else:
            found[f"{app['app']}:status"] = None
            found.update(judge_report(app, report, config.get("units", {})))
        found.update(judge_backups(app, now))
    return found


# State and alerts -------------------------------------------------------------------------

def changes(state: dict, found: dict, now: float) -> tuple[list[dict], list[dict]]:
    """(newly failing, recovered), and the state's checks brought up to date. A check
    seen for the first time alerts only when it fails; one no longer checked (an app
    removed) is forgotten without a word."""
    checks = state.setdefault("checks", {})
    failing, recovered = [], []
    for key, problem in sorted(found.items()):
        before = checks.get(key)
        if problem is not None and (before is None or not before.get("failing")):
            checks[key] = {"failing": True, "message": problem, "since": now}
            failing.append({"check": key, "message": problem})
        elif problem is not None:
            before["message"] = problem
        elif before is not None and before.get("failing"):
            recovered.append({"check": key, "message": before.get("message", ""),
                              "down_seconds": round(now - before.get("since", now))})
            checks[key] = {"failing": False, "since": now}
        elif before is None:
            checks[key] = {"failing": False, "since": now}
    for key in [key for key in checks if key not in found]:
        del checks[key]
    return failing, recovered


def duration(seconds: float) -> str:
    minutes = int(seconds // 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m{int(seconds % 60):02d}s"


def alert(host: str, failing: list[dict], recovered: list[dict], now: float) -> dict:
    """One alert: what started failing and what recovered in one run."""
    lines = [f"FAILING: {item['message']}" for item in failing]
    lines += [f"RECOVERED: {item['message']} (after {duration(item['down_seconds'])})" for item in recovered]
    state = "failing" if failing else "recovered"
    title = (f"{host}: {len(failing)} check{'s' if len(failing) > 1 else ''} failing" if failing
             else f"{host}: recovered")
    return {"host": host, "state": state, "title": title, "text": f"[{host}] " + "\n".join(lines),
            "failing": failing, "recovered": recovered, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))}


def webhook_request(url: str, item: dict) -> urllib.request.Request:
    """JSON with `text` (what Slack's and Mattermost's incoming webhooks show), the details under `alert`."""
    body = json.dumps({"text": item["text"], "alert": {k: v for k, v in item.items() if k != "text"}}).encode()
    return urllib.request.Request(url, data=body, method="POST",
                                  headers={"Content-Type": "application/json", "User-Agent": "pyinfra-flask-watch"})


def header(text: str) -> str:
    """A value for an HTTP header: one line of printable ASCII."""
    return "".join(c if 32 <= ord(c) < 127 else "?" for c in text)[:250]


def ntfy_request(url: str, token: str | None, item: dict) -> urllib.request.Request:
    """ntfy's publish: the message as the body, its title, priority and tags as headers."""
    headers = {"Title": header(item["title"]), "Priority": "high" if item["state"] == "failing" else "default",
               "Tags": "rotating_light" if item["state"] == "failing" else "white_check_mark",
               "User-Agent": "pyinfra-flask-watch"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return urllib.request.Request(url, data=item["text"].encode(), method="POST", headers=headers)


def email_message(email: dict, item: dict) -> EmailMessage:
    message = EmailMessage()
    message["Subject"] = f"[pyinfra-flask] {item['title']}"
    message["From"] = email["from"]
    message["To"] = ", ".join(email["to"])
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = make_msgid(domain=item["host"] if "." in item["host"] else None)
    message.set_content(item["text"] + "\n")
    return message


def send_email(email: dict, item: dict) -> None:
    context = ssl.create_default_context()
    if email["security"] == "tls":
        server = smtplib.SMTP_SSL(email["host"], email["port"], timeout=TIMEOUT, context=context)
    else:
        server = smtplib.SMTP(email["host"], email["port"], timeout=TIMEOUT)
    with server:
        if email["security"] == "starttls":
            server.starttls(context=context)
        if email.get("user"):
            server.login(email["user"], email["password"])
        server.send_message(email_message(email, item))


def deliver(target: str, targets: dict, item: dict) -> None:
    """Send one alert to one target; raises on failure."""
    if target == "webhook":
        urllib.request.urlopen(webhook_request(targets["webhook"], item), timeout=TIMEOUT).close()
    elif target == "ntfy":
        urllib.request.urlopen(ntfy_request(targets["ntfy"], targets.get("ntfy_token"), item),
                               timeout=TIMEOUT).close()
    elif target == "email":
        send_email(targets["email"], item)


def reason(exc: Exception) -> str:
    """Why a delivery failed, without the URL (it may hold a token)."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code}"
    if isinstance(exc, urllib.error.URLError):
        return f"{type(exc.reason).__name__}: {exc.reason}" if not isinstance(exc.reason, str) else exc.reason
    return f"{type(exc).__name__}: {exc}"


def flush(state: dict, targets: dict) -> None:
    """Deliver every alert waiting, oldest first; a failure leaves it waiting for that target."""
    errors = {}
    for item in state.get("outbox", []):
        for target in list(item["pending"]):
            if target not in targets:
                item["pending"].remove(target)  # a target no longer configured
                continue
            if target in errors:  # failed already this run: keep the order, try next run
                continue
            try:
                deliver(target, targets, item["alert"])
            except Exception as exc:  # noqa: BLE001 (any failure: tried again next run)
                errors[target] = reason(exc)
                log(f"could not deliver an alert to the {target} target ({errors[target]}); trying again next run")
            else:
                item["pending"].remove(target)
    state["outbox"] = [item for item in state.get("outbox", []) if item["pending"]]
    state["undelivered"] = errors


def run(config: dict, targets: dict, state: dict, now: float) -> dict:
    """One run of the watch: check, note changes, queue and deliver alerts; returns the new state."""
    found = check_all(config, now)
    failing, recovered = changes(state, found, now)
    for item in failing:
        log(f"FAILING {item['check']}: {item['message']}")
    for item in recovered:
        log(f"RECOVERED {item['check']}")
    if failing or recovered:
        wanted = [name for name in ("webhook", "ntfy", "email") if name in targets]
        state.setdefault("outbox", []).append({"alert": alert(config["host"], failing, recovered, now),
                                               "pending": wanted})
        dropped = len(state["outbox"]) - OUTBOX_MAX
        if dropped > 0:
            log(f"dropping the {dropped} oldest undelivered alerts (over {OUTBOX_MAX} waiting)")
            state["outbox"] = state["outbox"][dropped:]
    flush(state, targets)
    state["last_run"] = now
    state["interval"] = config["interval"]
    state["failing"] = sorted(key for key, check in state["checks"].items() if check.get("failing"))
    return state


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check this host's apps; alert on changes.")
    parser.add_argument("--config", required=True, help="the watch's settings (JSON, root's)")
    args = parser.parse_args(argv)
    try:
        config = json.loads(read_own(args.config) or "null")
        if not isinstance(config, dict):
            raise Refused(f"{args.config} is missing")
        targets = json.loads(read_own(config["targets"]) or "{}")
        saved = read_own(config["state"])
        state = json.loads(saved) if saved else {}
    except (Refused, ValueError, KeyError) as exc:
        log(f"ERROR: {exc}")
        return 1
    state = run(config, targets, state, time.time())
    write_own(config["state"], json.dumps(state, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    socket.setdefaulttimeout(TIMEOUT)
    sys.exit(main())

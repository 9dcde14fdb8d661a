#!/usr/bin/env python3
"""The apps' figures for Prometheus, installed by the deploy as
/usr/local/lib/pyinfra-flask/metrics.py (tasks/steps/metrics.py) on every app server
of an inventory with a `monitoring_servers` host, and run as root by
`pyinfra-flask-metrics.service`, which its timer starts every `monitoring_interval`
seconds:

    python3 -I -S metrics.py --config /etc/pyinfra-flask/watch/watch.json --out DIR/pyinfra_flask.prom

Debian packages no uWSGI exporter, so node exporter's textfile collector serves
these lines. They come from what the watch reads (its settings file, watch.json: the
same apps, status commands, certificates and backups), through the watch's own
readers (files/watch.py, beside this file): each app's `release-tool status --json`
(its units, the one health check, uWSGI's stats socket read the safe way by the
release tool, its certificates) and the age of its newest backup. Nothing is
alerted here: Prometheus's rules judge (templates/prometheus-rules.yml.j2).

uWSGI's figures are the app's own word (its workers write them in memory they share
with the master): they are only turned into numbers here, each checked to be one.
The file is written in root's own directory and renamed into place, never through
a link.
"""

from __future__ import annotations

import argparse
import calendar
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

# The watch's own readers and delivery, from watch.py beside this file (root's folder):
# `python3 -I` leaves the script's folder off sys.path.
sys.path.insert(0, HERE)
import watch  # noqa: E402


def number(value) -> float | None:
    """A figure of the report, if it is one (bools and strings are not)."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def label(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Lines:
    """Prometheus's text format, each metric's HELP and TYPE once before its samples."""

    def __init__(self):
        self.samples: dict[str, list[str]] = {}
        self.heads: dict[str, str] = {}

    def add(self, name: str, metric_type: str, helptext: str, value, /, **labels) -> None:
        value = number(value)
        if value is None:
            return
        self.heads.setdefault(name, f"# HELP {name} {helptext}\n# TYPE {name} {metric_type}\n")
        tags = ",".join(f'{key}="{label(item)}"' for key, item in sorted(labels.items()))
        # repr: every digit (a timestamp in %g would lose its seconds).
        text = str(int(value)) if value.is_integer() else repr(value)
        self.samples.setdefault(name, []).append(f"{name}{{{tags}}} {text}\n" if tags else f"{name} {text}\n")

    def text(self) -> str:
        return "".join(self.heads[name] + "".join(self.samples[name]) for name in sorted(self.samples))


def not_after(lines: list[str] | None) -> float | None:
    """The expiry of openssl's `-enddate` line, in seconds since the epoch."""
    for line in lines or []:
        if line.startswith("notAfter="):
            try:
                return calendar.timegm(time.strptime(line.split("=", 1)[1].strip(), "%b %d %H:%M:%S %Y %Z"))
            except ValueError:
                return None
    return None


def app_metrics(out: Lines, app: dict, report: dict, now: float) -> None:
    name = app["app"]
    health = report.get("health") if isinstance(report.get("health"), dict) else None
    out.add("pyinfra_flask_app_healthy", "gauge", "1 when the app's health check passes.",
            int(health is not None and health.get("failure") is None and "error" not in report), app=name)
    uwsgi = report.get("uwsgi") if isinstance(report.get("uwsgi"), dict) else {}
    out.add("pyinfra_flask_uwsgi_up", "gauge", "1 when the app's uWSGI stats socket answers.",
            int(bool(uwsgi) and "error" not in uwsgi), app=name)
    for key, metric, kind, helptext in (
            ("requests", "pyinfra_flask_uwsgi_requests_total", "counter", "Requests served by the app's workers."),
            ("exceptions", "pyinfra_flask_uwsgi_exceptions_total", "counter",
             "Exceptions that reached uWSGI in the app's workers."),
            ("harakiri", "pyinfra_flask_uwsgi_harakiri_total", "counter", "Workers killed by uWSGI's harakiri."),
            ("workers", "pyinfra_flask_uwsgi_workers", "gauge", "The app's uWSGI workers."),
            ("busy", "pyinfra_flask_uwsgi_busy_workers", "gauge", "The app's uWSGI workers busy with a request.")):
        out.add(metric, kind, helptext, uwsgi.get(key), app=name)
    if number(uwsgi.get("avg_rt")) is not None:
        out.add("pyinfra_flask_uwsgi_response_seconds", "gauge",
                "The slowest worker's average response time, as uWSGI reckons it.", uwsgi["avg_rt"] / 1e6, app=name)
    units = report.get("units") if isinstance(report.get("units"), dict) else {}
    for unit, state in units.items():
        if isinstance(state, dict) and state.get("LoadState") == "loaded":
            out.add("pyinfra_flask_unit_failed", "gauge", "1 when systemd says the unit failed.",
                    int(state.get("ActiveState") == "failed"), app=name, unit=unit)
    certificates = report.get("certificates") if isinstance(report.get("certificates"), dict) else {}
    for path, lines in certificates.items():
        expires = not_after(lines if isinstance(lines, list) else None)
        if expires is not None:
            out.add("pyinfra_flask_certificate_days_left", "gauge", "Days until the certificate expires.",
                    (expires - now) / 86400, app=name, path=path)
            out.add("pyinfra_flask_certificate_alert_days", "gauge",
                    "Alert when fewer days are left (acme_min_valid_days).", app.get("certificate_days"),
                    app=name, path=path)
    for backup in app.get("backups", []):
        try:
            newest = watch.newest_backup_age(backup, now)
        except watch.Refused as refused:
            watch.log(f"ERROR: {refused}")
            continue
        if newest is not None:
            out.add("pyinfra_flask_backup_age_seconds", "gauge",
                    "Seconds since the newest backup (or since its directory was made, with none yet).",
                    newest[0], app=name, kind=backup["kind"])
            out.add("pyinfra_flask_backup_max_age_seconds", "gauge", "Alert when the newest backup is older.",
                    backup["max_age_hours"] * 3600, app=name, kind=backup["kind"])


def write(path: str, text: str) -> None:
    """Replace the file in root's directory: a new file (never through a link) renamed over it."""
    directory = os.path.dirname(path)
    info = os.lstat(directory)
    if not os.path.isdir(directory) or os.path.islink(directory) or info.st_uid != 0 or info.st_mode & 0o022:
        raise watch.Refused(f"refusing {directory}: not a directory only root can write")
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write this host's apps' figures for node exporter.")
    parser.add_argument("--config", required=True, help="the watch's settings (JSON, root's)")
    parser.add_argument("--out", required=True, help="the .prom file in node exporter's textfile directory")
    args = parser.parse_args(argv)
    try:
        config = json.loads(watch.read_own(args.config) or "null")
        if not isinstance(config, dict):
            raise watch.Refused(f"{args.config} is missing")
        now = time.time()
        out = Lines()
        for app in config["apps"]:
            app_metrics(out, app, watch.app_status(app), now)
        out.add("pyinfra_flask_metrics_timestamp_seconds", "gauge", "When these figures were read.", now)
        write(args.out, out.text())
    except (watch.Refused, ValueError, KeyError, OSError) as exc:
        watch.log(f"ERROR: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Alertmanager's alerts to the pyinfra-flask alert targets, installed by the deploy
as /usr/local/lib/pyinfra-flask/alert-relay.py on the `monitoring_servers` host
(tasks/steps/monitoring.py) and run by `pyinfra-flask-alert-relay.service` as a user
of its own, on 127.0.0.1:

    python3 -I -S alert-relay.py --host NAME --listen 127.0.0.1:9095 < targets.json

Alertmanager's webhook posts each notification here (its JSON, `send_resolved`); it
is turned into the watch's alert (FAILING / RECOVERED lines, a title) and sent to
every target with the watch's own delivery (files/watch.py, beside this file): the
webhook gets JSON with a `text` field, ntfy a titled message, email a mail. When a
target fails the answer is 502 and Alertmanager tries the notification again; the
reason is logged, never a URL or a password.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, HTTPServer

HERE = os.path.dirname(os.path.abspath(__file__))
BODY_LIMIT = 1 << 20  # bytes: Alertmanager's notifications of a few hundred alerts fit

# The watch's own readers and delivery, from watch.py beside this file (root's folder):
# `python3 -I` leaves the script's folder off sys.path.
sys.path.insert(0, HERE)
import watch  # noqa: E402


def seconds(stamp) -> float | None:
    """An RFC 3339 time of Alertmanager's, in seconds since the epoch."""
    if not isinstance(stamp, str) or stamp.startswith("0001-"):
        return None
    try:
        return datetime.fromisoformat(stamp[:26].rstrip("Z") + "+00:00" if "." in stamp
                                      else stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def item(host: str, payload: dict, now: float) -> dict | None:
    """The watch's alert for one notification, or None when it holds no alert."""
    failing, recovered = [], []
    for alert in payload.get("alerts") or []:
        if not isinstance(alert, dict):
            continue
        labels = alert.get("labels") if isinstance(alert.get("labels"), dict) else {}
        annotations = alert.get("annotations") if isinstance(alert.get("annotations"), dict) else {}
        name = str(labels.get("alertname", "alert"))
        key = ":".join(str(labels[k]) for k in ("alertname", "instance", "app", "unit", "path", "mountpoint")
                       if k in labels)
        message = f"{name}: {annotations.get('summary') or ', '.join(f'{k}={v}' for k, v in sorted(labels.items()))}"
        if alert.get("status") == "resolved":
            started, ended = seconds(alert.get("startsAt")), seconds(alert.get("endsAt"))
            down = (ended or now) - started if started else 0.0
            recovered.append({"check": key, "message": message, "down_seconds": max(down, 0.0)})
        else:
            failing.append({"check": key, "message": message})
    if not failing and not recovered:
        return None
    return watch.alert(host, failing, recovered, now)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Relay Alertmanager's webhook to the alert targets.")
    parser.add_argument("--host", required=True, help="this monitoring host's name, in alerts")
    parser.add_argument("--listen", required=True, help="127.0.0.1:PORT")
    args = parser.parse_args(argv)
    # Where alerts go (the watch's targets.json), on standard input: systemd opens the
    # root-only file for this unprivileged process.
    targets = json.load(sys.stdin)
    address, _, port = args.listen.rpartition(":")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            length = int(self.headers.get("Content-Length") or 0)
            if length > BODY_LIMIT:
                self.send_response(413)
                self.end_headers()
                return
            try:
                payload = json.loads(self.rfile.read(length))
                alert = item(args.host, payload if isinstance(payload, dict) else {}, time.time())
            except ValueError:
                self.send_response(400)
                self.end_headers()
                return
            failed = []
            for target in sorted(targets) if alert else []:
                if target == "ntfy_token":
                    continue
                try:
                    watch.deliver(target, targets, alert)
                except Exception as exc:  # noqa: BLE001 (every failure is logged and retried)
                    watch.log(f"could not deliver to {target}: {watch.reason(exc)}")
                    failed.append(target)
            self.send_response(502 if failed else 200)
            self.end_headers()

        def log_message(self, *args):
            pass

    socket.setdefaulttimeout(watch.TIMEOUT)
    HTTPServer((address, int(port)), Handler).serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The watch on every app server and its alerts without a host (tasks/steps/watch.py,
files/watch.py, docs/watch.md); on a real host: tests/hosts/test_watch.py.

The settings refused naming the key (secrets never shown), the units
and files the deploy writes (the default period, the targets only in a root-only
upload), the watch's state machine (one alert per change, recoveries, nothing on a
first run for what is fine, a failed delivery kept and sent on the next run), the
webhook's, ntfy's and email's formats against receivers in the test process, and how
`ops.py status` shows a failing watch.
"""

from __future__ import annotations

import importlib.util
import json
import socketserver
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from pyinfra.api.exceptions import DeployError

from tasks.ops import status as ops_status
from tasks.steps import watch as watch_step
from tests.conftest import REPO_ROOT
from tests.ops.test_ops import report as status_report
from tests.roles.test_distros import deploy, host_facts


def load_watch():
    spec = importlib.util.spec_from_file_location("pyinfra_flask_watch", REPO_ROOT / "files/watch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


watch = load_watch()
TOKEN = "hooks/T0KEN-a1b2c3"
PASSWORD = "smtp-pa55-word"


def one(**data):
    return deploy({"web": host_facts("debian12")}, **data)["web"]


def refused(**data) -> str:
    with pytest.raises(DeployError) as info:
        one(**data)
    return str(info.value)


# The settings ----------------------------------------------------------------------------

@pytest.mark.parametrize(("data", "line"), [
    ({"alert_webhook_url": f"ftp://example.com/{TOKEN}"}, "alert_webhook_url: must be an http:// or https:// URL"),
    ({"alert_webhook_url": f"https://example.com:99999/{TOKEN}"}, "alert_webhook_url: must be an http://"),
    ({"alert_ntfy_url": f"https://ntfy.sh/{TOKEN} x"}, "alert_ntfy_url: must be an http:// or https:// URL"),
    ({"alert_ntfy_url": "https://ntfy.sh/t", "alert_ntfy_token": f"{TOKEN} x"}, "alert_ntfy_token: must be printable"),
    ({"alert_email_to": ["ops"]}, "alert_email_to[0] = 'ops': must be an email address"),
    ({"alert_email_to": ["ops@example.com"]}, "alert_smtp_host: required with alert_email_to"),
    ({"alert_email_to": ["ops@example.com"], "alert_smtp_host": "smtp.example.com"},
     "alert_email_from: required with alert_email_to"),
    ({"alert_email_from": "me@"}, "alert_email_from = 'me@': must be an email address"),
    ({"alert_smtp_host": "smtp example.com"}, "alert_smtp_host = 'smtp example.com'"),
    ({"alert_smtp_port": 0}, "alert_smtp_port = 0: Input should be greater than or equal to 1"),
    ({"alert_smtp_port": 65536}, "alert_smtp_port = 65536: Input should be less than or equal to 65535"),
    ({"alert_smtp_security": "ssl"}, "alert_smtp_security = 'ssl': Input should be 'starttls', 'tls' or 'none'"),
    ({"alert_smtp_user": "me"}, "alert_smtp_user: the SMTP login needs both"),
    ({"alert_smtp_password": PASSWORD}, "alert_smtp_user: the SMTP login needs both"),
    ({"alert_smtp_password": 12345}, "alert_smtp_password: Input should be a valid string (its value is not shown)"),
    ({"alert_smtp_user": "me", "alert_smtp_password": PASSWORD, "alert_smtp_security": "none"},
     "alert_smtp_security: 'none' sends the password in plain text"),
    ({"alert_smtp_user": "me", "alert_smtp_password": PASSWORD, "alert_smtp_password_from": "P"},
     "alert_smtp_password_from: set it or alert_smtp_password, not both"),
    ({"alert_smtp_user": "me", "alert_smtp_password_from": "PYINFRA_FLASK_TEST_UNSET"},
     "alert_smtp_password_from: PYINFRA_FLASK_TEST_UNSET is not set in the shell running pyinfra"),
    ({"watch_interval": 5}, "watch_interval = 5: Input should be greater than or equal to 10"),
    ({"alert_disk_free": 0}, "alert_disk_free = 0"),
    ({"alert_backup_max_age": 0}, "alert_backup_max_age = 0"),
])
def test_bad_alert_settings_are_refused_naming_the_key_and_never_showing_a_secret(data, line):
    message = refused(**data)
    assert line in message and "nothing was changed" in message
    assert TOKEN not in message and PASSWORD not in message and "12345" not in message


def test_the_watch_runs_every_minute_by_default_and_its_targets_go_only_into_a_root_only_file(monkeypatch):
    monkeypatch.setenv("SMTP_PASSWORD", PASSWORD)
    run = one(alert_webhook_url=f"https://hooks.example.com/{TOKEN}", alert_ntfy_url="https://ntfy.sh/pf-alerts",
              alert_email_to=["ops@example.com"], alert_smtp_host="smtp.example.com", alert_smtp_user="bot@example.com",
              alert_smtp_password_from="SMTP_PASSWORD")
    timer = run.uploads["/etc/systemd/system/pyinfra-flask-watch.timer"]
    assert "OnUnitActiveSec=60s" in timer and "AccuracySec=1s" in timer
    service = run.uploads["/etc/systemd/system/pyinfra-flask-watch.service"]
    assert "ExecStart=/usr/bin/python3 -I -S /usr/local/lib/pyinfra-flask/watch.py --config " \
           "/etc/pyinfra-flask/watch/watch.json" in service
    targets = json.loads(run.uploads[watch_step.TARGETS])
    assert targets == {"webhook": f"https://hooks.example.com/{TOKEN}", "ntfy": "https://ntfy.sh/pf-alerts",
                       "email": {"to": ["ops@example.com"], "from": "bot@example.com", "host": "smtp.example.com",
                                 "port": 587, "security": "starttls", "user": "bot@example.com", "password": PASSWORD}}
    shown = json.dumps(run.changed)  # every changed operation's name and commands
    assert TOKEN not in shown and PASSWORD not in shown
    assert f"chmod 600 {watch_step.TARGETS}" in run.changed[f"Watch | Write where alerts go ({watch_step.TARGETS}, "
                                                           "root-only)"]
    config = json.loads(run.uploads[watch_step.CONFIG])
    assert TOKEN not in json.dumps(config) and config["interval"] == 60
    [app] = config["apps"]
    assert app["status"] == ["/srv/greeting/bin/release-tool", "status", "--json", "--nginx"]
    assert app["certificate_days"] == 14 and app["disk_free"] == 10 and app["backups"] == []


@pytest.mark.parametrize("system", ["debian12", "debian13"])
def test_the_watch_checks_backups_renewal_and_workers_where_there_are_some(system):
    run = deploy({"web": host_facts(system)}, watch_interval=10, database="postgresql", tls_acme=True, acme_email="ops@example.com",
              nginx_server_names=["shop.example.com"], workers={"mailer": {"command": "python m.py"}})["web"]
    assert "OnUnitActiveSec=10s" in run.uploads["/etc/systemd/system/pyinfra-flask-watch.timer"]
    config = json.loads(run.uploads[watch_step.CONFIG])
    [app] = config["apps"]
    assert "--worker" in app["status"] and "greeting-mailer@1.service" in app["status"]
    assert app["status"][-2:] == ["--certificate", "/etc/letsencrypt/live/greeting/fullchain.pem"]
    # The host's own units, asked of the app's release tool: a timer must run, a service must not fail.
    assert " ".join(app["status"][app["status"].index("--job"):-2]) == (
        "--job pyinfra-flask-certbot-renew.service --job pyinfra-flask-db-backup@greeting.service "
        "--timer pyinfra-flask-certbot-renew.timer")
    [backup] = app["backups"]
    assert backup["directory"] == "/var/backups/pyinfra-flask/greeting" and backup["max_age_hours"] == 26
    assert config["units"] == {"pyinfra-flask-certbot-renew.timer": "the certificate renewal timer",
                               "pyinfra-flask-certbot-renew.service": "the last certificate renewal",
                               "pyinfra-flask-db-backup@greeting.service": "the last database backup of greeting"}


# The watch's state: one alert per change ---------------------------------------------

def fake_checks(monkeypatch, results: list[dict]):
    """Each run of the watch finds the next of `results`."""
    found = iter(results)
    monkeypatch.setattr(watch, "check_all", lambda config, now: next(found))


def test_one_alert_when_a_check_fails_none_while_it_stays_down_one_when_it_recovers(monkeypatch):
    sent = []
    monkeypatch.setattr(watch, "deliver", lambda target, targets, item: sent.append((target, item)))
    down = {"greeting:health": "greeting's health check failed: answered 502", "disk:/srv/greeting": None}
    up = {"greeting:health": None, "disk:/srv/greeting": None}
    fake_checks(monkeypatch, [up, down, down, down, up, up])
    state, config = {}, {"host": "web1", "interval": 60}
    for minute in range(6):
        state = watch.run(config, {"webhook": "https://x"}, state, 1000.0 + 60 * minute)
        assert state["last_run"] == 1000.0 + 60 * minute
    assert [item["state"] for _, item in sent] == ["failing", "recovered"]
    assert sent[0][1]["text"] == "[web1] FAILING: greeting's health check failed: answered 502"
    assert sent[1][1]["text"] == "[web1] RECOVERED: greeting's health check failed: answered 502 (after 3m00s)"
    assert state["outbox"] == [] and state["failing"] == []


def test_a_first_run_alerts_only_for_what_already_fails_and_a_removed_check_is_forgotten(monkeypatch):
    sent = []
    monkeypatch.setattr(watch, "deliver", lambda target, targets, item: sent.append(item))
    fake_checks(monkeypatch, [{"a:health": None, "unit:nginx.service": "nginx is failed"}, {"a:health": None}])
    state = watch.run({"host": "h", "interval": 60}, {"ntfy": "https://n"}, {}, 0.0)
    assert [item["failing"] for item in sent] == [[{"check": "unit:nginx.service", "message": "nginx is failed"}]]
    state = watch.run({"host": "h", "interval": 60}, {"ntfy": "https://n"}, state, 60.0)
    assert len(sent) == 1 and set(state["checks"]) == {"a:health"}


def test_an_alert_not_delivered_waits_for_the_next_run_in_order_and_the_log_never_names_the_url(monkeypatch, capsys):
    attempts = []
    broken = {"on": True}

    def deliver(target, targets, item):
        attempts.append((target, item["state"]))
        if broken["on"] and target == "webhook":
            raise watch.urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))

    monkeypatch.setattr(watch, "deliver", deliver)
    fake_checks(monkeypatch, [{"x": "x is down"}, {"x": None}, {"x": None}])
    targets = {"webhook": f"https://hooks.example.com/{TOKEN}", "ntfy": "https://n"}
    state = watch.run({"host": "h", "interval": 60}, targets, {}, 0.0)
    state = watch.run({"host": "h", "interval": 60}, targets, state, 60.0)
    # The failing alert is still waiting for the webhook; the recovery queued behind it (not sent before it).
    assert [item["pending"] for item in state["outbox"]] == [["webhook"], ["webhook"]]
    assert state["undelivered"] == {"webhook": "ConnectionRefusedError: [Errno 111] Connection refused"}
    assert attempts == [("webhook", "failing"), ("ntfy", "failing"), ("webhook", "failing"), ("ntfy", "recovered")]
    broken["on"] = False
    state = watch.run({"host": "h", "interval": 60}, targets, state, 120.0)
    assert attempts[-2:] == [("webhook", "failing"), ("webhook", "recovered")]
    assert state["outbox"] == [] and state["undelivered"] == {}
    logged = capsys.readouterr().err
    assert "could not deliver an alert to the webhook target" in logged and TOKEN not in logged


def test_the_report_is_judged_as_ops_status_judges_it(monkeypatch):
    monkeypatch.setattr(watch, "certificate_expires", lambda path, days: path == "/old.pem")
    app = {"app": "greeting", "certificate_days": 14, "disk_free": 10}
    healthy = watch.judge_report(app, status_report(certificates={"/new.pem": ["notAfter=Feb 28 00:00:00 2027 GMT"]}),
                                 {})
    assert {key: value for key, value in healthy.items() if value} == {}
    assert "unit:greeting-mailer@2.service" in healthy and "unit:nginx.service" in healthy
    broken = watch.judge_report(app, status_report(
        unit={"greeting-mailer@2.service": "failed", "nginx.service": "inactive", "greeting-report.timer": "inactive"},
        health={"failure": "answered 502, expected 200\nmore"},
        certificates={"/old.pem": ["notAfter=Dec 10 00:00:00 2026 GMT"], "/gone.pem": None},
        disk={"path": "/srv/greeting", "free": 2**30, "total": 20 * 2**30}),
        {"greeting-report.timer": "the report timer"})
    assert {key: value for key, value in broken.items() if value} == {
        "unit:greeting-mailer@2.service": "greeting's worker greeting-mailer@2.service is failed",
        "unit:nginx.service": "nginx is inactive",
        "unit:greeting-report.timer": "the report timer is inactive",
        "greeting:health": "greeting's health check failed: answered 502, expected 200",
        "certificate:/old.pem": "the certificate /old.pem ends within 14 days (Dec 10 00:00:00 2026 GMT): is its "
                                "renewal failing?",
        "certificate:/gone.pem": "the certificate /gone.pem is missing",
        "disk:/srv/greeting": "the disk holding /srv/greeting is 95% full (5.0% free, alert below 10%)",
    }


def test_the_newest_backups_age_never_through_a_link(tmp_path):
    import os

    directory = tmp_path / "greeting"
    directory.mkdir(mode=0o700)
    backup = {"kind": "database", "what": "database backup", "directory": str(directory), "max_age_hours": 26,
              "pattern": r"^greeting-\d{8}T\d{6}Z(-\d+)?\.dump$", "hint": "journalctl"}
    app = {"app": "greeting", "backups": [backup]}
    made = directory.stat().st_ctime
    assert watch.judge_backups(app, made + 3600) == {"backup:greeting:database": None}
    assert watch.judge_backups(app, made + 27 * 3600)["backup:greeting:database"] == (
        "greeting has no database backup yet, 27.0 hours after its directory was made (alert after 26; see "
        "journalctl)")
    assert watch.judge_backups({**app, "backups": [{**backup, "directory": str(tmp_path / "none")}]},
                               made + 99 * 3600) == {"backup:greeting:database": None}
    old = directory / "greeting-20261201T030000Z.dump"
    old.write_bytes(b"x")
    os.utime(old, (made - 40 * 3600, made - 40 * 3600))
    (directory / "greeting-20261202T030000Z.dump").symlink_to(old)  # a link is no backup
    assert watch.judge_backups(app, made)["backup:greeting:database"].startswith(
        "greeting's newest database backup is 40.0 hours old (alert after 26")
    link = tmp_path / "link"
    link.symlink_to(directory)
    assert "refusing" in watch.judge_backups({"app": "greeting", "backups": [{**backup, "directory": str(link)}]},
                                             made)["backup:greeting:database"]


# Delivery formats, against receivers in the test process ---------------------------------

class Receiver(ThreadingHTTPServer):
    """An HTTP server noting each request's path, headers and body."""

    def __init__(self, address=("127.0.0.1", 0)):
        self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(handler):  # noqa: N805
                body = handler.rfile.read(int(handler.headers.get("Content-Length", 0)))
                self.received.append((handler.path, dict(handler.headers), body))
                handler.send_response(200)
                handler.end_headers()

            def log_message(handler, *args):  # noqa: N805
                pass

        super().__init__(address, Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://{self.server_address[0]}:{self.server_address[1]}"


ALERT = watch.alert("web1", [{"check": "greeting:health", "message": "greeting's health check failed: answered 502"}],
                    [], 0.0)


def test_the_webhook_gets_json_with_a_text_field_and_ntfy_a_titled_message():
    receiver = Receiver()
    try:
        watch.deliver("webhook", {"webhook": f"{receiver.url}/{TOKEN}"}, ALERT)
        watch.deliver("ntfy", {"ntfy": f"{receiver.url}/pf-alerts", "ntfy_token": "tk_1"}, ALERT)
    finally:
        receiver.shutdown()
    (hook_path, hook_headers, hook_body), (ntfy_path, ntfy_headers, ntfy_body) = receiver.received
    assert hook_path == f"/{TOKEN}" and hook_headers["Content-Type"] == "application/json"
    payload = json.loads(hook_body)
    assert payload["text"] == "[web1] FAILING: greeting's health check failed: answered 502"
    assert payload["alert"]["host"] == "web1" and payload["alert"]["state"] == "failing"
    assert ntfy_path == "/pf-alerts" and ntfy_body.decode() == payload["text"]
    assert ntfy_headers["Title"] == "web1: 1 check failing" and ntfy_headers["Priority"] == "high"
    assert ntfy_headers["Authorization"] == "Bearer tk_1"


class SmtpStub(socketserver.ThreadingTCPServer):
    """Just enough SMTP for one plain-text message (no TLS, no login)."""

    allow_reuse_address = True

    def __init__(self):
        self.messages = []

        class Handler(socketserver.StreamRequestHandler):
            def handle(handler):  # noqa: N805
                def say(line):
                    handler.wfile.write(line.encode() + b"\r\n")

                say("220 stub")
                envelope = {"to": []}
                while line := handler.rfile.readline().decode():
                    verb = line[:4].upper()
                    if verb in ("EHLO", "HELO"):
                        say("250 stub")
                    elif verb == "MAIL":
                        envelope["from"] = line.split(":", 1)[1].strip()
                        say("250 ok")
                    elif verb == "RCPT":
                        envelope["to"].append(line.split(":", 1)[1].strip())
                        say("250 ok")
                    elif verb == "DATA":
                        say("354 go on")
                        data = []
                        while (part := handler.rfile.readline().decode()) != ".\r\n":
                            data.append(part)
                        self.messages.append((envelope, "".join(data)))
                        say("250 queued")
                    elif verb == "QUIT":
                        say("221 bye")
                        return
                    else:
                        say("502 no")

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


def test_an_email_alert_through_smtp_and_the_secure_modes(monkeypatch):
    stub = SmtpStub()
    email = {"to": ["ops@example.com", "dev@example.com"], "from": "watch@example.com", "host": "127.0.0.1",
             "port": stub.server_address[1], "security": "none", "user": None, "password": None}
    try:
        watch.deliver("email", {"email": email}, ALERT)
    finally:
        stub.shutdown()
    [(envelope, data)] = stub.messages
    assert envelope == {"from": "<watch@example.com>", "to": ["<ops@example.com>", "<dev@example.com>"]}
    assert "Subject: [pyinfra-flask] web1: 1 check failing" in data and "To: ops@example.com, dev@example.com" in data
    assert "FAILING: greeting's health check failed: answered 502" in data and "Message-ID:" in data

    calls = []

    class FakeSmtp:
        def __init__(self, host, port, timeout, **kwargs):
            calls.append(("connect", host, port, sorted(kwargs)))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

        def starttls(self, context):
            calls.append(("starttls", context.verify_mode == watch.ssl.CERT_REQUIRED and context.check_hostname))

        def login(self, user, password):
            calls.append(("login", user, password))

        def send_message(self, message):
            calls.append(("send", message["To"]))

    monkeypatch.setattr(watch.smtplib, "SMTP", FakeSmtp)
    monkeypatch.setattr(watch.smtplib, "SMTP_SSL", FakeSmtp)
    for security, port in (("starttls", 587), ("tls", 465)):
        watch.deliver("email", {"email": {**email, "security": security, "port": port, "user": "bot",
                                          "password": PASSWORD}}, ALERT)
    assert calls == [("connect", "127.0.0.1", 587, []), ("starttls", True), ("login", "bot", PASSWORD),
                     ("send", "ops@example.com, dev@example.com"),
                     ("connect", "127.0.0.1", 465, ["context"]), ("login", "bot", PASSWORD),
                     ("send", "ops@example.com, dev@example.com")]


# A failing watch in ops.py status ------------------------------------------------------------

def watch_report(timer="active", service="inactive", **changes) -> dict:
    units = {f"pyinfra-flask-watch.{kind}": {"LoadState": "loaded", "ActiveState": state}
             for kind, state in (("timer", timer), ("service", service))}
    return {"units": units, "age": 30.0, "interval": 60, "failing": [], "undelivered": {}, "waiting": 0, **changes}


def test_ops_status_shows_a_watch_that_stopped_failed_fell_behind_or_cannot_deliver():
    assert ops_status.watch_problems(watch_report()) == []
    assert ops_status.watch_problems(watch_report(timer="inactive", service="failed", age=None)) == [
        "the watch's timer pyinfra-flask-watch.timer is inactive: nothing is checked or alerted",
        "the watch's last run failed (journalctl -u pyinfra-flask-watch.service)",
        "the watch has never run (systemctl status pyinfra-flask-watch.timer)"]
    assert ops_status.watch_problems(watch_report(age=600.0)) == [
        "the watch last ran 10 minutes ago, though due every 60 s (journalctl -u pyinfra-flask-watch.service)"]
    assert ops_status.watch_problems(watch_report(undelivered={"email": "SMTPAuthenticationError"}, waiting=2)) == [
        "the watch could not deliver alerts to the email target (SMTPAuthenticationError); 2 waiting, tried again "
        "every run"]


def test_a_host_without_apps_watches_its_own_units_asked_of_systemd(monkeypatch):
    """The backup host: a failed drill or a stopped timer is a failing check, said by what it is."""
    asked = []

    def systemctl(command, **kwargs):
        asked.append(command)
        blocks = ["Id=pyinfra-flask-restic-verify.service\nLoadState=loaded\nActiveState=failed",
                  "Id=pyinfra-flask-restic-verify.timer\nLoadState=loaded\nActiveState=inactive",
                  "Id=pyinfra-flask-restic-prune.service\nLoadState=loaded\nActiveState=inactive"]
        return type("Done", (), {"stdout": "\n\n".join(blocks) + "\n", "returncode": 0})()

    monkeypatch.setattr(watch.subprocess, "run", systemctl)
    units = {"pyinfra-flask-restic-verify.service": "the last files drill",
             "pyinfra-flask-restic-verify.timer": "the files drill's timer",
             "pyinfra-flask-restic-prune.service": "the last prune"}
    found = watch.check_all({"apps": [], "systemd_units": units}, 0.0)
    assert found == {"unit:pyinfra-flask-restic-verify.service": "the last files drill is failed",
                     "unit:pyinfra-flask-restic-verify.timer": "the files drill's timer is inactive",
                     "unit:pyinfra-flask-restic-prune.service": None}
    assert asked[0][:4] == ["systemctl", "show", "--no-pager", "--property=Id,LoadState,ActiveState"]


def test_the_backup_host_gets_a_watch_of_its_backups_and_drills():
    from tests.steps.test_pgbackrest import cluster

    config = json.loads(cluster()["bk1"].uploads[watch_step.CONFIG])
    assert config["apps"] == []
    units = config["systemd_units"]
    for unit in ("pyinfra-flask-pgbackrest-full.timer", "pyinfra-flask-pgbackrest@full.service",
                 "pyinfra-flask-pgbackrest-verify.service", "pyinfra-flask-pgbackrest-sweep.timer",
                 "pyinfra-flask-restic-verify.service", "pyinfra-flask-restic-prune.timer"):
        assert unit in units, unit
    assert units["pyinfra-flask-pgbackrest-verify.service"] == "the last restore drill"

"""Maintenance mode, the audit log, hooks and the webhook, without a host: the nginx
config as rendered, the settings refused, the release tool's audit and maintenance
switch against a temporary root, and hooks and the webhook around real pyinfra
runs at @local (a deploy file whose only operation writes a line on this machine).
The real-host proof is tests/hosts/test_maintenance.py."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from jinja2 import Environment, FileSystemLoader

from tasks import JINJA, TEMPLATES
from tasks.ops import audit
from tasks.run import hooks
from tasks.steps import acme, maintenance
from tasks.config.app import MAINTENANCE_ROOT
from tasks.config.checks import validate
from tasks.roles.balancer import Upstream
from tasks.steps.nginx import Site
from tasks.config.settings import SettingsError
from tests.conftest import REPO_ROOT
from tests.tool.test_release_tool import tool  # noqa: F401 (the fixture)

PYINFRA = str(Path(sys.executable).with_name("pyinfra"))


def render(template: str, apps, **context) -> str:
    env = Environment(**{**JINJA, "loader": FileSystemLoader(str(TEMPLATES))})
    return env.get_template(template).render(site=Site(apps[0].app_name, apps), https=True, s=apps[0],
                                             acme_webroot=acme.WEBROOT, acme_challenge=acme.CHALLENGE_PATH,
                                             **context)


def blocks(config: str) -> dict[str, str]:
    """location -> its body (one level of braces inside, as our templates write them)."""
    found = {}
    for match in re.finditer(r"location ([^{]+)\{((?:[^{}]|\{[^{}]*\})*)\}", config):
        found[match.group(1).strip()] = match.group(2)
    return found


# The nginx config ----------------------------------------------------------------

def test_every_app_location_checks_the_flag_but_acme_challenges_do_not():
    shop = validate({"app_name": "shop", "maintenance_allow": ["10.0.0.0/8", "203.0.113.7"],
                     "maintenance_retry_after": 120, "tls_acme": True, "acme_email": "ops@example.com",
                     "nginx_server_names": ["example.com"]})
    blog = validate({"app_name": "blog", "url_prefix": "/blog", "app_static_dir": "", "tls_acme": True,
                     "acme_email": "ops@example.com", "nginx_server_names": ["example.com"]})
    config = render("nginx-site.conf.j2", [shop, blog])
    found = blocks(config)
    flag = re.compile(r"if \(-f \$pyinfra_flask_(\w+)_maintenance\) \{\s*return 503;\s*\}")
    checked = {where: flag.search(body).group(1) for where, body in found.items() if flag.search(body)}
    # Both server blocks (the HTTP one redirects, so only the HTTPS one has the apps).
    assert checked == {"/static/": "shop", "/": "shop", "/blog/": "blog"}
    assert "if (-f" not in found[f"^~ {acme.CHALLENGE_PATH}"]
    for where, app in checked.items():
        assert f"error_page 503 @pyinfra_flask_{app}_maintenance;" in found[where]
    page = found["@pyinfra_flask_shop_maintenance"]
    assert f"root {MAINTENANCE_ROOT}/shop;" in page and "rewrite ^ /page.html break;" in page
    assert "add_header Retry-After 120 always;" in page
    assert "add_header Retry-After 300 always;" in found["@pyinfra_flask_blog_maintenance"]
    # Clients of the allow-list and the health check (host name and path) test the
    # directory, which is never a file: no 503 for them.
    geo = re.search(r"geo \$pyinfra_flask_shop_maintenance_client \{(.*?)\}", config, re.S).group(1)
    assert f"default {MAINTENANCE_ROOT}/shop/on;" in geo
    assert f"10.0.0.0/8 {MAINTENANCE_ROOT}/shop;" in geo and f"203.0.113.7/32 {MAINTENANCE_ROOT}/shop;" in geo
    health = re.search(r'map "\$host\$request_uri" \$pyinfra_flask_blog_maintenance \{(.*?)\}', config, re.S)
    assert f'"blog.pyinfra-flask.invalid/blog/" {MAINTENANCE_ROOT}/blog;' in health.group(1)
    assert "default $pyinfra_flask_blog_maintenance_client;" in health.group(1)


def test_the_balancer_checks_the_flag_for_its_app_servers():
    s = validate({"maintenance_allow": ["192.0.2.0/24"]})
    config = render("nginx-balancer.conf.j2", [s], upstreams=[Upstream("web1", "10.0.0.11:3031")])
    found = blocks(config)
    assert "return 503;" in found["/"] and "uwsgi_pass greeting_app_servers;" in found["/"]
    assert "add_header Retry-After 300 always;" in found["@pyinfra_flask_greeting_maintenance"]
    assert f"192.0.2.0/24 {MAINTENANCE_ROOT}/greeting;" in config


def test_switching_is_left_to_the_balancers_when_there_are_some():
    class Host:
        groups = ["app_servers"]

    behind = validate({})
    object.__setattr__(behind, "behind_balancer", True)
    assert maintenance.targets(Host, [behind]) == []
    Host.groups = ["load_balancers"]
    assert maintenance.targets(Host, [behind]) == [(behind, "/var/lib/pyinfra-flask/greeting/bin/release-tool")]
    Host.groups = []
    alone = validate({"app_root": "/srv/shop", "app_name": "shop"})
    assert maintenance.targets(Host, [alone]) == [(alone, "/srv/shop/bin/release-tool")]
    assert maintenance.switch_command("/srv/shop/bin/release-tool", "on", "ana@laptop") == (
        "/srv/shop/bin/release-tool --by ana@laptop maintenance on")
    assert audit.command("/srv/shop/bin/release-tool", True, 5).endswith("audit --json -n 5; fi")


# Settings ------------------------------------------------------------------------

@pytest.mark.parametrize(("data", "line"), [
    ({"maintenance_allow": ["10.0.0.300"]}, "maintenance_allow[0] = '10.0.0.300': must be an IPv4 or IPv6 address"),
    ({"maintenance_retry_after": 0}, "maintenance_retry_after = 0: Input should be greater than or equal to 1"),
    ({"maintenance_page": "nowhere/page.html"}, "maintenance_page: 'nowhere/page.html' is not a file"),
    ({"before_deploy_hooks": ["README.md"]}, "before_deploy_hooks: 'README.md' is not an executable file"),
    ({"after_deploy_hooks": ["no-such-hook"]}, "after_deploy_hooks: 'no-such-hook' is not an executable file"),
    ({"webhook_url": "ftp://hooks.example.com/T0KEN"}, "webhook_url: must be an http:// or https:// URL"),
    ({"webhook_url": "https:///T0KEN"}, "webhook_url: must be an http:// or https:// URL"),
])
def test_bad_values_are_refused_in_one_line_naming_the_key(data, line):
    with pytest.raises(SettingsError) as refused:
        validate(data)
    message = str(refused.value)
    assert line in message and "nothing was changed" in message
    assert "T0KEN" not in message  # a webhook URL may hold a token: never shown


def test_a_big_maintenance_page_is_refused(tmp_path):
    page = tmp_path / "page.html"
    page.write_bytes(b"x" * (300 * 1024))
    with pytest.raises(SettingsError, match="maintenance_page: .* is over 256 KiB"):
        validate({"maintenance_page": str(page)})
    page.write_text("<p>Back soon</p>")
    assert maintenance.page_source(validate({"maintenance_page": str(page)})) == str(page)
    assert maintenance.page_source(validate({})) == str(REPO_ROOT / "files/maintenance.html")


# The release tool: audit log and maintenance switch -------------------------------

@pytest.fixture
def release_tool(tool, tmp_path):
    """test_release_tool's tool on its temporary root, with a maintenance directory
    and the deploying user@machine."""
    switch_dir = tmp_path / "maintenance"
    switch_dir.mkdir(mode=0o755)
    switch_dir.chmod(0o755)
    tool.CONFIG["maintenance_dir"] = str(switch_dir)
    tool.BY = "ana@laptop"
    return tool


class Args:
    json = False
    n = 0
    run = "r1"


def test_maintenance_on_and_off_write_the_flag_and_the_audit_log(release_tool, capsys):
    flag = Path(release_tool.CONFIG["maintenance_dir"]) / "on"

    class On:
        state = "on"

    class Off:
        state = "off"

    release_tool.cmd_maintenance(On)
    assert flag.is_file() and stat.S_IMODE(flag.stat().st_mode) == 0o644
    assert json.loads(flag.read_text())["by"] == {"user": "ana", "machine": "laptop"}
    release_tool.cmd_maintenance(On)  # again: stays on, said so
    release_tool.cmd_maintenance(Off)
    assert not flag.exists()
    out = capsys.readouterr().out
    assert "maintenance is on for greeting\n" in out and "(it already was)" in out and "is off for greeting" in out
    entries = release_tool.read_audit()
    assert [(e["event"], e["state"], e["changed"], e["by"]["user"]) for e in entries] == [
        ("maintenance", "on", True, "ana"), ("maintenance", "on", False, "ana"), ("maintenance", "off", True, "ana")]
    assert stat.S_IMODE(release_tool.AUDIT.stat().st_mode) == 0o640


def test_maintenance_refuses_a_directory_others_can_write_or_a_link(release_tool, tmp_path):
    class On:
        state = "on"

    folder = Path(release_tool.CONFIG["maintenance_dir"])
    folder.chmod(0o777)
    with pytest.raises(release_tool.Failure, match="only it can write"):
        release_tool.cmd_maintenance(On)
    folder.chmod(0o755)
    folder.rename(tmp_path / "elsewhere")
    folder.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(release_tool.Failure, match="a link"):
        release_tool.cmd_maintenance(On)
    assert not (tmp_path / "elsewhere" / "on").exists()


def test_activations_are_audited_with_their_outcome(release_tool, monkeypatch):
    outcomes = iter([None, release_tool.RolledBack("gate failed; rolled back"), release_tool.Failure("gate failed, no fallback")])

    def fake(target, mode, host_name, kind, run, after_switch=None):
        outcome = next(outcomes)
        if outcome:
            raise outcome

    monkeypatch.setattr(release_tool, "_activate", fake)
    monkeypatch.setattr(release_tool, "live", lambda: "R1")
    release_tool.activate("R2", "auto", "web1", kind="deploy", run="r1")
    with pytest.raises(release_tool.RolledBack):
        release_tool.activate("R3", "auto", "web1", kind="deploy", run="r2")
    with pytest.raises(release_tool.Failure):
        release_tool.activate("R0", "auto", "web1", kind="rollback", run="r3")
    entries = release_tool.read_audit()
    assert [(e["event"], e["result"], e["from"], e["to"], e["run"]) for e in entries] == [
        ("deploy", "ok", "R1", "R2", "r1"), ("deploy", "rolled-back", "R1", "R3", "r2"),
        ("rollback", "failed", "R1", "R0", "r3")]
    assert release_tool.deployers(entries)["R2"]["by"] == {"user": "ana", "machine": "laptop"}
    assert "R3" not in release_tool.deployers(entries)


def test_who_is_the_lock_holder_of_the_run_without_by(release_tool):
    release_tool.BY = ""
    release_tool.RUN = "r9"
    taken, _, _ = release_tool.lock_take("r9", {"user": "bo", "machine": "ci-7"}, 0)
    assert taken and release_tool.who() == {"user": "bo", "machine": "ci-7"}
    release_tool.RUN = "other"
    assert release_tool.who()["on_host"] is True


def test_a_broken_lock_is_audited_and_the_log_prints_as_asked(release_tool, capsys):
    release_tool.lock_take("old", {"user": "bo", "machine": "ci-7"}, 0)

    class Take:
        lock_action = "take"
        holder = json.dumps({"user": "ana", "machine": "laptop"})
        wait, break_run, force, run = 0, None, True, "new"

    release_tool.BY = ""
    release_tool.RUN = "new"
    release_tool.cmd_lock(Take)
    (entry,) = release_tool.read_audit()
    assert entry["event"] == "lock-break" and entry["by"] == {"user": "ana", "machine": "laptop"}
    assert entry["holder"].startswith("bo@ci-7") and entry["why"] == "deploy_lock_break"
    capsys.readouterr()

    class Show(Args):
        json, n = True, 1

    release_tool.cmd_audit(Show)
    assert json.loads(capsys.readouterr().out)["event"] == "lock-break"
    release_tool.cmd_audit(Args)
    assert re.match(r"\S+Z  lock-break  ok +ana@laptop  bo@ci-7", capsys.readouterr().out)


def test_the_listing_says_who_deployed_each_release(release_tool, capsys):
    for name in ("R1", "R2"):
        (release_tool.RELEASES / name).mkdir()
        (release_tool.RELEASES / name / release_tool.META).write_text(json.dumps({"id": name, "venv": "v1"}))
    release_tool.CURRENT.symlink_to("releases/R2")
    release_tool.audit("deploy", "ok", run="r1", to="R2", **{"from": "R1"})

    class List:
        json = False

    release_tool.cmd_list(List)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("venv=.venv") and lines[1].endswith("* live  deployed by ana@laptop")


# Hooks and the webhook around real pyinfra runs (at @local) ------------------------

class Receiver:
    """A local HTTP server collecting the JSON bodies POSTed to it."""

    def __init__(self, status: int = 200):
        self.bodies: list[dict] = []
        self.paths: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers["Content-Length"])
                receiver.bodies.append(json.loads(self.rfile.read(length)))
                receiver.paths.append(self.path)
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def local_run(tmp_path, settings: dict, command: str = "true", event: str = "deploy", dry: bool = False):
    """`pyinfra -y @local` with a deploy file whose only operation appends to the log
    (and runs `command`): what the hooks saw, in order, and the run's output."""
    log = tmp_path / "log"
    log.write_text("")
    deploy = tmp_path / "run.py"
    deploy.write_text(textwrap.dedent(f"""
        from pyinfra import host
        from pyinfra.operations import server
        from tasks.run import hooks
        from tasks.config.checks import validate
        hooks.register(host, [validate({settings!r})], {event!r})
        server.shell(name="The first change", commands=["echo operation >> {log}", {command!r}])
    """))
    done = subprocess.run([PYINFRA, "@local", str(deploy), *(["--dry"] if dry else ["-y"])], cwd=REPO_ROOT,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120,
                          env={**os.environ, "PYINFRA_PROGRESS": "off", "HOOK_LOG": str(log)})
    return done, log.read_text().splitlines()


def hook(tmp_path, name: str, code: int = 0) -> str:
    path = tmp_path / name
    path.write_text(f'#!/bin/sh\necho "{name} $PYINFRA_FLASK_PHASE $PYINFRA_FLASK_EVENT $PYINFRA_FLASK_HOSTS '
                    f'$PYINFRA_FLASK_OUTCOME $PYINFRA_FLASK_USER" >> "$HOOK_LOG"\nexit {code}\n')
    path.chmod(0o755)
    return str(path)


def test_hooks_run_before_the_first_operation_and_after_the_run_once(tmp_path):
    receiver = Receiver()
    try:
        settings = {"before_deploy_hooks": [hook(tmp_path, "b1"), hook(tmp_path, "b2")],
                    "after_deploy_hooks": [hook(tmp_path, "a1", code=1)],
                    "webhook_url": receiver.url + "/T0KEN-path?key=T0KEN"}
        done, seen = local_run(tmp_path, settings)
        assert done.returncode == 0, done.stdout + done.stderr
        user = hooks.identity.BY.rpartition("@")[0]
        assert seen == ["b1 before deploy @local  " + user, "b2 before deploy @local  " + user, "operation",
                        "a1 after deploy @local success " + user]
        output = done.stdout + done.stderr
        assert "after_deploy_hooks: " in output and "failed (exit 1)" in output  # only a warning
        (body,) = receiver.bodies
        assert receiver.paths == ["/T0KEN-path?key=T0KEN"]
        assert body["event"] == "deploy" and body["outcome"] == "success" and body["user"] == user
        assert body["hosts"]["@local"]["outcome"] == "success" and body["failed_hosts"] == []
        assert "T0KEN" not in output
        # A dry run runs no hook and sends nothing.
        done, seen = local_run(tmp_path, settings, dry=True)
        assert done.returncode == 0 and seen == [] and len(receiver.bodies) == 1
    finally:
        receiver.close()


def test_a_failing_before_hook_stops_the_run_before_any_operation(tmp_path):
    receiver = Receiver()
    try:
        settings = {"before_deploy_hooks": [hook(tmp_path, "b1", code=3), hook(tmp_path, "b2")],
                    "after_deploy_hooks": [hook(tmp_path, "a1")], "webhook_url": receiver.url}
        done, seen = local_run(tmp_path, settings, event="rollback")
        assert done.returncode != 0
        assert [line.split()[0] for line in seen] == ["b1"]  # no operation, no other hook
        assert re.search(r"before_deploy_hooks: \S+/b1 failed \(exit 3\); the rollback stopped before any "
                         r"operation, nothing was changed", done.stdout + done.stderr)
        assert receiver.bodies == []
    finally:
        receiver.close()


def test_a_failed_run_is_reported_as_failure_and_a_lost_webhook_only_warns(tmp_path):
    receiver = Receiver(status=500)
    try:
        done, seen = local_run(tmp_path, {"after_deploy_hooks": [hook(tmp_path, "a1")],
                                          "webhook_url": receiver.url + "/T0KEN"}, command="false")
        assert done.returncode != 0 and seen[-1].startswith("a1 after deploy @local failure")
        assert receiver.bodies[0]["outcome"] == "failure" and receiver.bodies[0]["failed_hosts"] == ["@local"]
        output = done.stdout + done.stderr
        assert "webhook to http://127.0.0.1: answered 500" in output and "T0KEN" not in output
    finally:
        receiver.close()
    closed = Receiver()
    closed.close()  # nobody listens there any more
    done, _ = local_run(tmp_path, {"webhook_url": closed.url + "/T0KEN"})
    assert done.returncode == 0 and "webhook to http://127.0.0.1: not delivered" in done.stdout + done.stderr
    assert "T0KEN" not in done.stdout + done.stderr


def test_an_automatic_rollback_is_the_outcome_the_webhook_reports():
    """How the hosts' audit entries of the run become the payload (read at their disconnect)."""
    run = hooks.Hooks("deploy")
    s = validate({})
    run.hosts = {"web1": hooks.HostRun([s], {"greeting": {"from": "R1", "to": "R2", "result": "ok"}}),
                 "web2": hooks.HostRun([s], {"greeting": {"from": "R1", "to": "R2", "result": "rolled-back"}}),
                 "web3": hooks.HostRun([s])}
    run.started_at = 0
    body = run.payload({"web2"})
    assert body["outcome"] == "rolled-back" and body["release"] == "R2" and body["failed_hosts"] == ["web2"]
    assert {name: host["outcome"] for name, host in body["hosts"].items()} == {
        "web1": "success", "web2": "rolled-back", "web3": "success"}
    assert body["hosts"]["web1"]["apps"]["greeting"] == {"from": "R1", "to": "R2", "result": "ok"}
    env = run.environment("after", {"web2"})
    assert env["PYINFRA_FLASK_OUTCOME"] == "rolled-back" and env["PYINFRA_FLASK_RELEASE"] == "R2"
    assert env["PYINFRA_FLASK_HOSTS"] == "web1 web2 web3" and env["PYINFRA_FLASK_FAILED_HOSTS"] == "web2"
    assert json.loads(env["PYINFRA_FLASK_DETAILS"])["web2"]["outcome"] == "rolled-back"
    assert run.payload({"web3"}, ["web3"])["outcome"] == "failure"


# The deploy's part, against mocked facts ---------------------------------------------

def test_the_deploy_puts_the_page_and_on_balancers_the_switch_but_never_touches_the_flag(tmp_path):
    from tests.roles.test_distros import LB_DATA, LB_GROUPS, deploy, host_facts

    page = tmp_path / "page.html"
    page.write_text("<p>Back soon</p>\n")
    single = deploy({"debian12": host_facts("debian12")}, maintenance_page=str(page))["debian12"]
    steps = single.named("nginx sites | Maintenance pages")
    assert "nginx sites | Maintenance pages | Upload greeting's maintenance page" in steps
    assert any(f"{MAINTENANCE_ROOT}/greeting" in name for name in steps)
    everything = [command for commands in single.changed.values() for command in commands]
    assert not any(f"{MAINTENANCE_ROOT}/greeting/on" in command for command in everything)

    facts = {name: host_facts("debian12") for name in ("web1", "web2", "lb1")}
    runs = deploy(facts, groups=LB_GROUPS, host_data=LB_DATA)
    settings = runs["lb1"].uploads["/var/lib/pyinfra-flask/greeting/release-tool.json"]
    assert json.loads(settings) == {"app": "greeting", "maintenance_dir": f"{MAINTENANCE_ROOT}/greeting"}
    assert "Load balancer | nginx sites | Maintenance pages | Install the release tool (maintenance switch, " \
           "audit log)" in runs["lb1"].changed
    # The parent stays readable: the ACME webroot (nginx reads it) is beside the tool.
    lb_commands = " ".join(command for commands in runs["lb1"].changed.values() for command in commands)
    assert "chmod 755 /var/lib/pyinfra-flask " in lb_commands + " "
    assert "chmod 700 /var/lib/pyinfra-flask " not in lb_commands + " "
    for web in ("web1", "web2"):  # no nginx there: nothing to switch
        assert not runs[web].named("nginx sites | Maintenance pages")

"""A canary by share of traffic, without a host: its settings refused one line each, the
nginx split and the canary instance's ini as rendered, and the release tool's count and
verdict of a canary log. On a real host: tests/hosts/test_canary.py."""

from __future__ import annotations

import argparse
import json
import os
import subprocess

import pytest
from jinja2 import Environment, FileSystemLoader

from tasks import JINJA, TEMPLATES
from tasks import tool as host_tool
from tasks.config.checks import validate
from tasks.config.settings import SettingsError
from tasks.roles.balancer import Upstream
from tasks.run import hooks
from tests.ops.test_maintenance_audit import render
from tests.steps.test_socketio import SOCKETIO
from tests.tool.test_release_tool import tool  # noqa: F401 (the fixture)


@pytest.mark.parametrize("data, line", [
    ({"canary_share": 60}, "canary_share = 60: Input should be less than or equal to 50"),
    ({"canary_share": 10, "migrate_exclusive": True, "migrate_commands": ["true"]},
     "canary_share: 10 % does not go with migrate_exclusive"),
    ({"canary_share": 10, "uwsgi_socket": "127.0.0.1:65000"}, "canary_share: the canary instance listens 1000 above"),
    ({"canary_window": 1}, "canary_window = 1: Input should be greater than or equal to 2"),
    ({"canary_max_error_rate": -1}, "canary_max_error_rate = -1: Input should be greater than or equal to 0"),
])
def test_bad_canary_settings_are_refused_naming_the_key(data, line):
    with pytest.raises(SettingsError) as refused:
        validate(data)
    assert line in str(refused.value)


def test_nginx_splits_new_clients_by_a_cookie_id_only_while_the_flag_exists():
    app = validate({"canary_share": 15, "canary_window": 300})
    config = render("nginx-site.conf.j2", [app])
    assert 'split_clients "$request_id" $pyinfra_flask_greeting_draw {' in config
    assert "15% canary;" in config
    assert ('"on:"   "pyinfra_flask_greeting_client=$pyinfra_flask_greeting_version.$request_id; Path=/; '
            'Max-Age=900; HttpOnly; SameSite=Lax";') in config
    assert "~^on:canary\\.  canary;" in config and '"on:"          $pyinfra_flask_greeting_draw;' in config
    assert "server unix:/run/greeting-canary/uwsgi.sock max_fails=0;" in config
    assert "server unix:/run/greeting/uwsgi.sock backup;" in config
    assert "if (-f /etc/pyinfra-flask/canary/greeting/on) {" in config
    assert "uwsgi_pass $pyinfra_flask_greeting_pass;" in config
    assert "access_log /var/log/nginx/greeting.canary.log pyinfra_flask_greeting_canary " \
           "if=$pyinfra_flask_greeting_flag;" in config
    # Off: no trace of it.
    plain = render("nginx-site.conf.j2", [validate({})])
    assert "split_clients" not in plain and "uwsgi_pass unix:/run/greeting/uwsgi.sock;" in plain


def test_the_canary_instance_runs_the_release_on_trial_on_sockets_of_its_own():
    app = validate({"canary_share": 10, "uwsgi_log": "/var/log/greeting/uwsgi.log"})
    env = Environment(**{**JINJA, "loader": FileSystemLoader(str(TEMPLATES))})
    ini = env.get_template("uwsgi.ini.j2").render(s=app, processes=2, sockets=[], canary=True)
    for line in ("wsgi-file = /srv/greeting/canary/.deploy-loader.py", "virtualenv = /srv/greeting/canary/.venv",
                 "socket = /run/greeting-canary/uwsgi.sock", "master-fifo = /run/greeting-canary/master.fifo",
                 "stats = /run/greeting-canary/stats.sock"):
        assert line in ini.splitlines(), line
    assert "logto" not in ini and "/run/greeting/" not in ini
    main = env.get_template("uwsgi.ini.j2").render(s=app, processes=2, sockets=[], canary=False)
    assert "socket = /run/greeting/uwsgi.sock" in main.splitlines() and "canary" not in main


def test_the_tool_counts_each_instance_and_judges_by_the_5xx_rate(tool, tmp_path):  # noqa: F811
    log = tmp_path / "canary.log"
    canary = {"share": 10, "window": 60, "min_requests": 4, "max_error_rate": 1.0, "log": str(log),
              "sockets": {"unix:/run/app-canary/uwsgi.sock": "canary", "unix:/run/app/uwsgi.sock": "live"}}
    tool.CONFIG = {**tool.CONFIG, "canary": canary}
    log.write_text("1.0 200 unix:/run/app/uwsgi.sock\n")
    offset = log.stat().st_size
    with log.open("a") as out:
        out.write("2.0 200 unix:/run/app-canary/uwsgi.sock\n" * 3 + "2.1 500 unix:/run/app-canary/uwsgi.sock\n"
                  "2.2 200 unix:/run/app-canary/uwsgi.sock, unix:/run/app/uwsgi.sock\n"
                  "2.3 503 -\n" "2.4 404 unix:/run/app/uwsgi.sock\n" "garbage\n")
    numbers = tool.count(offset)
    assert numbers == {"canary": {"requests": 4, "5xx": 1}, "live": {"requests": 2, "5xx": 0}}
    promote, why = tool.verdict(numbers)
    assert not promote and why.startswith("5xx rate over the live release's + 1 points (canary 1 5xx of 4 (25.0 %)")
    canary["max_error_rate"] = 30.0
    assert tool.verdict(numbers)[0]
    canary["min_requests"] = 5
    promote, why = tool.verdict(numbers)
    assert not promote and why.startswith("too few requests to judge")


def test_hooks_and_the_webhook_get_the_canary_verdict_and_numbers():
    canary = {"verdict": "rolled-back", "why": "5xx rate over ...", "canary": {"requests": 9, "5xx": 3}}
    entry = {"from": "a", "to": "b", "result": "rolled-back", "kind": "canary", "canary": canary}
    assert hooks._app_outcome(entry) == {"from": "a", "to": "b", "result": "rolled-back", "canary": canary}
    assert hooks._app_outcome({"from": "a", "to": "b", "result": "ok"}) == {"from": "a", "to": "b", "result": "ok"}


def _canary(tmp_path, **extra) -> dict:
    return {"share": 10, "window": 0, "min_requests": 4, "max_error_rate": 1.0, "log": str(tmp_path / "canary.log"),
            "flag": str(tmp_path / "on"), "socket_dir": str(tmp_path / "run-canary"), "link": str(tmp_path / "canary"),
            "unit": "greeting-canary.service", "ini": str(tmp_path / "uwsgi-canary.ini"),
            "sockets": {"10.0.0.11:4031": "canary", "10.0.0.11:3031": "live"}, **extra}


def test_a_balancer_splits_for_the_window_answers_its_counts_and_closes(tool, tmp_path, capsys,  # noqa: F811
                                                                        monkeypatch):
    tool.CONFIG = {"app": "greeting", "maintenance_dir": str(tmp_path), "canary": _canary(tmp_path, window=0.3)}
    log = tmp_path / "canary.log"
    log.write_text("1.0 200 10.0.0.11:3031\n")  # before the window: not counted
    real_watch = tool.watch

    def nginx_meanwhile():
        # The flag is up while the window runs; nginx writes its lines meanwhile.
        assert (tmp_path / "on").read_text() == "r2\n"
        if log.read_text().count("\n") == 1:
            with log.open("a") as out:
                out.write("2.0 500 10.0.0.11:4031\n2.1 200 10.0.0.11:4031, 10.0.0.11:3031\n2.2 200 10.0.0.11:3031\n")

    monkeypatch.setattr(tool, "watch", lambda release: real_watch(release, still=nginx_meanwhile))

    tool.cmd_canary_watch(argparse.Namespace(release="r2"))
    numbers = host_tool.canary_numbers(capsys.readouterr().out.splitlines())
    assert numbers["canary"] == {"requests": 1, "5xx": 1} and numbers["live"] == {"requests": 2, "5xx": 0}
    assert numbers["opened"] <= numbers["closed"]
    assert (tmp_path / "on").exists(), "the flag stays until the app servers have their verdict"
    tool.cmd_canary_close(argparse.Namespace())
    assert not (tmp_path / "on").exists()
    # A window that fails takes its flag down with it.
    monkeypatch.setattr(tool, "watch", real_watch)
    log.unlink()
    log.mkdir()
    with pytest.raises(tool.Failure, match="not a regular file"):
        tool.cmd_canary_watch(argparse.Namespace(release="r3"))
    assert not (tmp_path / "on").exists()


def test_an_app_server_removes_a_release_its_balancers_counts_do_not_promote(tool, tmp_path, monkeypatch):  # noqa: F811
    tool.CONFIG = {**tool.CONFIG, "canary": _canary(tmp_path), "static_dir": ""}
    for name in ("r1", "r2"):
        (tool.RELEASES / name).mkdir()
        (tool.RELEASES / name / tool.META).write_text(json.dumps({"id": name, "venv": "v1"}))
    (tmp_path / "current").symlink_to("releases/r1")
    monkeypatch.setattr(subprocess, "run", lambda argv, **kwargs: subprocess.CompletedProcess(argv, 3, "", ""))
    numbers = json.dumps({"canary": {"requests": 3, "5xx": 0}, "live": {"requests": 90, "5xx": 0},
                          "opened": 1.0, "closed": 9.0, "balancers": ["lb1", "lb2"]})
    args = argparse.Namespace(release="r2", numbers=numbers, host_name="web1", run="run-1")
    tool.cmd_canary_verdict(args)  # too few requests: nothing switched
    assert os.readlink(tmp_path / "current") == "releases/r1"
    with pytest.raises(tool.RolledBack, match="release r2 ROLLED BACK by its canary on host web1: too few requests"):
        tool.cmd_canary_finish(args)
    assert sorted(p.name for p in tool.RELEASES.iterdir()) == ["r1"]
    entry = json.loads((tmp_path / "audit.jsonl").read_text().splitlines()[-1])
    assert entry["result"] == "rolled-back" and entry["canary"]["balancers"] == ["lb1", "lb2"]
    assert entry["canary"]["verdict"] == "rolled-back" and entry["from"] == "r1" and entry["to"] == "r2"


def test_a_canary_instance_ends_by_itself_when_the_deploy_never_comes_back(tool, tmp_path, monkeypatch):  # noqa: F811
    tool.CONFIG = {**tool.CONFIG, "canary": _canary(tmp_path, window=300), "reload_timeout": 60, "sandbox": [],
                   "writable": [], "environment_files": [], "uwsgi": "/srv/venvs/uwsgi/bin/uwsgi"}
    started = []

    def run(argv, **kwargs):
        started.append(argv)
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(subprocess, "run", run)
    tool.start("r2")
    [unit] = [argv for argv in started if argv[0] == "systemd-run"]
    assert f"RuntimeMaxSec={300 + 60 + tool.LEFT_OVER_SECONDS}" in unit
    assert os.readlink(tmp_path / "canary") == "releases/r2"


@pytest.mark.parametrize("data", [{"canary_share": 10}, SOCKETIO])
def test_locations_with_headers_of_their_own_keep_hsts(data):
    # nginx gives a location with an add_header of its own none of the server's: the
    # canary's cookie and Socket.IO's route would drop HSTS from the app's pages.
    app = validate({**data, "tls_certificate": "README.md", "tls_certificate_key": "README.md",
                    "tls_hsts_max_age": 3600})
    config = render("nginx-site.conf.j2", [app], sockets=lambda app: ["/run/greeting/uwsgi-1.sock"])
    tls_server = config[config.index("ssl_certificate "):]
    location = tls_server[tls_server.index("    location / {"):]
    location = location[:location.index("\n    }\n")]
    assert 'add_header Strict-Transport-Security "max-age=3600" always;' in location
    behind = validate({**data, "tls_certificate": "README.md", "tls_certificate_key": "README.md",
                       "tls_hsts_max_age": 3600, "private_address": "10.0.0.2"})
    balancer = render("nginx-balancer.conf.j2", [behind], upstreams=[Upstream("web1", "10.0.0.11:3031",
                                                                              "10.0.0.11:4031")])
    tls_server = balancer[balancer.index("ssl_certificate "):]
    location = tls_server[tls_server.index("    location / {"):]
    assert 'add_header Strict-Transport-Security "max-age=3600" always;' in location[:location.index("\n    }\n")]


def test_an_app_server_prunes_once_its_promoted_release_is_live(tool, tmp_path, monkeypatch):  # noqa: F811
    # Behind balancers the deploy's prune waits for the verdict (it would count the release on
    # trial, not yet in the host's record, as the oldest): the last step does it.
    tool.CONFIG = {**tool.CONFIG, "canary": _canary(tmp_path), "static_dir": ""}
    for name in ("r0", "r1", "r2"):
        (tool.RELEASES / name).mkdir()
        (tool.RELEASES / name / tool.META).write_text(json.dumps({"id": name, "venv": "v1"}))
    (tmp_path / "current").symlink_to("releases/r2")
    monkeypatch.setattr(subprocess, "run", lambda argv, **kwargs: subprocess.CompletedProcess(argv, 3, "", ""))
    numbers = json.dumps({"canary": {"requests": 90, "5xx": 0}, "live": {"requests": 900, "5xx": 0},
                          "opened": 1.0, "closed": 9.0, "balancers": ["lb1"]})
    tool.cmd_canary_finish(argparse.Namespace(release="r2", numbers=numbers, host_name="web1", run="run-1"))
    assert sorted(p.name for p in tool.RELEASES.iterdir()) == ["r1", "r2"]  # keep_releases = 2

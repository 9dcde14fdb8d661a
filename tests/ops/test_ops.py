"""ops.py's command line and tasks/ops/fleet.py's reading of inventories (no hosts)."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import textwrap
import threading

import pytest

from tasks import tool as host_tool
from tasks.ops.fleet import Fleet, FleetError, parse_data, read_inventory
from tests.conftest import REPO_ROOT


def inventory(tmp_path, text: str, group_data: dict[str, str] | None = None):
    path = tmp_path / "inventories" / "prod.py"
    path.parent.mkdir()
    path.write_text(textwrap.dedent(text))
    for name, body in (group_data or {}).items():
        (path.parent / "group_data").mkdir(exist_ok=True)
        (path.parent / "group_data" / f"{name}.py").write_text(textwrap.dedent(body))
    return path


def test_groups_host_data_group_data_and_overrides_are_read_as_pyinfra_reads_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = inventory(tmp_path, """
        _ssh = {"ssh_user": "deploy"}
        app_servers = ([("web1", {"private_address": "10.0.0.11"}), "web2"], {**_ssh, "uwsgi_processes": 4})
        load_balancers = ["lb1"]
    """, {"all": "import os\nkeep_releases = 3\n", "load_balancers": "lb_method = 'least_conn'\n"})
    found = read_inventory(str(path), {"uwsgi_threads": 8})
    hosts = {host.name: host for host in found}
    assert list(hosts) == ["web1", "web2", "lb1"]
    assert hosts["web1"].data.private_address == "10.0.0.11" and hosts["web2"].data.uwsgi_processes == 4
    assert hosts["lb1"].data.lb_method == "least_conn" and hosts["lb1"].data.keep_releases == 3
    assert all(host.data.uwsgi_threads == 8 for host in found)
    assert "os" not in hosts["web1"].data.dict()
    assert {host.name for host in found.get_group("prod")} == {"web1", "web2", "lb1"}


def test_data_values_are_parsed_like_pyinfras():
    assert parse_data(["a=true", "b=8", 'c=["x"]', "d=text", "e="]) == {
        "a": True, "b": 8, "c": ["x"], "d": "text", "e": ""}
    with pytest.raises(FleetError, match="--data 'nokey': must be KEY=VALUE"):
        parse_data(["nokey"])


def test_limit_and_settings_are_checked_before_any_host_is_connected_to(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # Unreachable names: any attempt to connect would fail differently.
    path = inventory(tmp_path, 'hosts = [("web1.invalid", {"app_root": "/"}), "web2.invalid"]\n')
    with pytest.raises(FleetError, match="--limit db\\*: matches no host"):
        Fleet.connect(str(path), ("db*",))
    with pytest.raises(Exception, match="app_root = '/'"):
        Fleet.connect(str(path), ("web1.invalid",))
    with pytest.raises(FleetError, match="--app shop: no host of .* runs such an app"):
        Fleet.connect(str(path), ("web2.invalid",), app_name="shop")


def test_the_command_line_says_what_is_wrong_in_one_line(tmp_path):
    path = inventory(tmp_path, 'hosts = [("web1.invalid", {"app_root": "/"})]\n')
    for args, line in ([["releases"], "app_root = '/'"],
                       [["--limit", "x", "releases"], "--limit x: matches no host"],
                       [["releases", "--limit=x"], "--limit x: matches no host"]):
        done = subprocess.run([sys.executable, "ops.py", str(path), *args], cwd=REPO_ROOT, capture_output=True,
                              text=True, stdin=subprocess.DEVNULL, timeout=60)
        assert done.returncode == 2 and line in done.stderr and "Traceback" not in done.stderr, done.stderr


# status: what is judged unhealthy (tasks/ops/status.py), from the release tool's report ---------

from datetime import datetime, timezone  # noqa: E402

from tasks.ops import exec as ops_exec, logs as ops_logs, status as ops_status  # noqa: E402
from tasks.config.checks import validate  # noqa: E402

NOW = datetime(2026, 12, 2, tzinfo=timezone.utc)
WORKERS = {"mailer": {"command": "python mailer.py", "processes": 2}}
JOBS = {"report": {"command": "python report.py", "schedule": "daily"}}


def report(**changes) -> dict:
    """A healthy app's report, as `release-tool status --json` prints it."""
    found = {
        "app": "greeting", "live": "20261201T100000Z-abc-1", "confirmed": True,
        "meta": {"id": "20261201T100000Z-abc-1", "commit": "abc1234def"},
        "entry": {"at": "2026-12-01T10:00:05Z", "event": "live", "release": "20261201T100000Z-abc-1"},
        "service": "greeting.service", "nginx": True,
        "workers": ["greeting-mailer@1.service", "greeting-mailer@2.service"],
        "jobs": ["greeting-report.service"], "timers": ["greeting-report.timer"],
        "units": {unit: {"LoadState": "loaded", "ActiveState": "active", "SubState": "running", "Result": "success"}
                  for unit in ("greeting.service", "greeting-mailer@1.service", "greeting-mailer@2.service",
                               "greeting-report.timer", "nginx.service")},
        "uwsgi": {"workers": 2, "busy": 1, "idle": 1, "requests": 42},
        "health": {"check": "GET /", "failure": None},
        "certificates": {"/etc/letsencrypt/live/greeting/fullchain.pem": ["notAfter=Feb 28 00:00:00 2027 GMT"]},
        "disk": {"path": "/srv/greeting", "free": 3 * 2**30, "total": 10 * 2**30}, "lock": None,
    }
    found["units"]["greeting-report.service"] = {"LoadState": "loaded", "ActiveState": "inactive",
                                                 "SubState": "dead", "Result": "success"}
    for key, value in changes.items():
        if key == "unit":
            for unit, state in value.items():
                found["units"][unit] = {**found["units"][unit], "ActiveState": state}
        else:
            found[key] = value
    return found


APP = validate({"app_source": "files/greeting", "workers": WORKERS, "jobs": JOBS})


class FakeHost:
    def __init__(self, name="web1", groups=(), data=None):
        self.name, self.groups = name, list(groups)
        self.data = _Data(data or {})


class _Data(dict):
    def get(self, key, default=None):
        return super().get(key, default)


def test_a_healthy_report_has_no_problems_and_its_row_says_what_is_live():
    assert ops_status.problems(APP, report(), NOW) == []
    row = ops_status.summary("web1", APP, report(), NOW)
    assert row["healthy"] and row["commit"] == "abc1234def" and row["since"] == "2026-12-01T10:00:05Z"
    assert row["uwsgi"] == {"workers": 2, "busy": 1, "idle": 1, "requests": 42}
    assert row["certificate_days"] == 88.0 and row["by"] == "-"
    lines = ops_status.table([row])
    assert lines[0].split()[:3] == ["HOST", "APP", "RELEASE"]
    assert lines[1].split() == ["web1", "greeting", "20261201T100000Z-abc-1", "abc1234def", "2026-12-01T10:00:05Z",
                                "-", "active", "2/2", "active", "1/1", "42", "active", "88d", "3.0G", "(30%)", "ok"]
    assert len(lines) == 2


@pytest.mark.parametrize("changes, problem", [
    ({"unit": {"greeting-mailer@2.service": "inactive"}}, "worker greeting-mailer@2.service is inactive"),
    ({"unit": {"greeting.service": "failed"}}, "greeting.service is failed"),
    ({"unit": {"greeting-report.service": "failed"}}, "job greeting-report.service is failed"),
    ({"unit": {"greeting-report.timer": "inactive"}}, "timer greeting-report.timer is inactive"),
    ({"unit": {"nginx.service": "inactive"}}, "nginx is inactive"),
    ({"health": {"check": "GET /", "failure": "health check GET / answered 502\nmore"}},
     "health check GET / answered 502"),
    ({"certificates": {"/c.pem": ["notAfter=Dec 10 00:00:00 2026 GMT"]}},
     "certificate /c.pem expires in 8.0 days (acme_min_valid_days: 14)"),
    ({"certificates": {"/c.pem": ["notAfter=Nov 30 00:00:00 2026 GMT"]}}, "certificate /c.pem expired 2 days ago"),
    ({"certificates": {"/c.pem": None}}, "certificate /c.pem is missing"),
    ({"uwsgi": {"error": "refusing uWSGI's stats socket /run/greeting/stats.sock: it is a symbolic link"}},
     "uWSGI: refusing uWSGI's stats socket"),
    ({"confirmed": False}, "the activation of 20261201T100000Z-abc-1 never ended healthy"),
    ({"live": None}, "no live release"),
])
def test_each_unhealthy_thing_is_a_problem_naming_it(changes, problem):
    found = ops_status.problems(APP, report(**changes), NOW)
    assert len(found) == 1 and found[0].startswith(problem), found
    row = ops_status.summary("web1", APP, report(**changes), NOW)
    assert not row["healthy"]
    assert ops_status.table([row])[1].endswith("UNHEALTHY") and f"[web1] greeting: {found[0]}" in ops_status.table([row])


def test_a_job_between_runs_is_healthy_and_a_host_whose_tool_did_not_answer_is_not():
    assert ops_status.problems(APP, report(unit={"greeting-report.service": "activating"}), NOW) == []
    reports = ops_status.parse(FakeHost(), [APP], ["not json", '{"app": "other"}'], ["sh: 1: release-tool: not found"])
    assert ops_status.problems(APP, reports["greeting"]) == [
        "its release tool (/srv/greeting/bin/release-tool) did not answer (sh: 1: release-tool: not found): "
        "not deployed here yet?"]


def test_who_reads_the_record_then_the_metadata():
    assert ops_status.who({"by": "ana@laptop"}) == "ana@laptop"
    assert ops_status.who({"by": {"user": "ana", "machine": "laptop"}}) == "ana@laptop"
    assert ops_status.who({"event": "live"}, {"user": "bo", "machine": "ci"}) == "bo@ci"
    assert ops_status.who(None, None) == "-"


def test_the_status_command_names_the_apps_units_and_certificate():
    acme = validate({"app_source": "files/greeting", "workers": WORKERS, "jobs": JOBS, "tls_acme": True,
                     "acme_email": "ops@example.com", "nginx_server_names": ["shop.example.com"]})
    command = ops_status.host_command(FakeHost(), [acme])
    assert command == ("/srv/greeting/bin/release-tool status --json --nginx --watch "
                       "/var/lib/pyinfra-flask/watch/state.json --worker greeting-mailer@1.service "
                       "--worker greeting-mailer@2.service --job greeting-report.service "
                       "--timer greeting-report.timer --certificate /etc/letsencrypt/live/greeting/fullchain.pem")
    from dataclasses import replace
    behind = replace(acme, behind_balancer=True, runs_jobs=False)
    assert ops_status.host_command(FakeHost(), [behind]) == (
        "/srv/greeting/bin/release-tool status --json --watch /var/lib/pyinfra-flask/watch/state.json "
        "--worker greeting-mailer@1.service --worker greeting-mailer@2.service --job greeting-report.service")


def test_a_balancer_is_read_without_a_release_tool_nginx_health_and_certificate():
    acme = validate({"app_source": "files/greeting", "tls_acme": True, "acme_email": "ops@example.com",
                     "nginx_server_names": ["shop.example.com"]})
    balancer = FakeHost("lb1", groups=["load_balancers"])
    command = ops_status.host_command(balancer, [acme])
    assert command.startswith("echo BALANCER greeting ; systemctl show") and "healthcheck.py --check" in command
    assert "/etc/letsencrypt/live/greeting/fullchain.pem" in command and "release-tool" not in command
    assert subprocess.run(["sh", "-n", "-c", command]).returncode == 0
    cert = "/etc/letsencrypt/live/greeting/fullchain.pem"
    output = ["BALANCER greeting", "LoadState=loaded", "ActiveState=active", "SubState=running", "Result=success",
              "HEALTH", "CERT", "notAfter=Feb 28 00:00:00 2027 GMT", "serial=01"]
    reports = ops_status.parse(balancer, [acme], output, [])
    assert reports["greeting"]["certificates"] == {cert: ["notAfter=Feb 28 00:00:00 2027 GMT", "serial=01"]}
    assert ops_status.problems(acme, reports["greeting"], NOW) == []
    row = ops_status.summary("lb1", acme, reports["greeting"], NOW)
    assert row["healthy"] and row["web"] is None and row["nginx"] == "active" and row["certificate_days"] == 88.0
    output[2], output[5], output[6:] = "ActiveState=failed", "HEALTH HEALTH CHECK FAILED on balancer lb1: 502", \
        ["CERT missing"]
    assert ops_status.problems(acme, ops_status.parse(balancer, [acme], output, [])["greeting"], NOW) == [
        "nginx is failed", "HEALTH CHECK FAILED on balancer lb1: 502", f"certificate {cert} is missing"]
    assert ops_status.problems(acme, ops_status.parse(balancer, [acme], [], ["ssh: gone"])["greeting"]) == [
        "the balancer did not answer (ssh: gone): not deployed here yet?"]


# logs -----------------------------------------------------------------------------------------

def test_logs_read_the_web_unit_and_with_flags_workers_jobs_and_nginx():
    host = FakeHost()
    plain = ops_logs.host_command(host, [APP], lines=5, since=None, follow=False, nginx=False, workers=False)
    assert plain == "journalctl --no-pager --quiet -o short-iso -n 5 -u greeting.service"
    everything = ops_logs.host_command(host, [APP], lines=5, since="1 hour ago", follow=True, nginx=True, workers=True)
    journal, tail, wait = everything.split(" & ")
    assert journal == ("SYSTEMD_COLORS=0 journalctl --no-pager --quiet -o short-iso -n 5 --since '1 hour ago' --follow "
                       "-u greeting.service -u 'greeting-mailer@*.service' -u greeting-report.service "
                       "-u nginx.service")
    assert tail.endswith(" 5 follow /var/log/nginx/greeting.access.log /var/log/nginx/greeting.error.log")
    assert wait == "wait"


def test_the_safe_tail_refuses_links_and_follows_a_file(tmp_path):
    log = tmp_path / "site.access.log"
    log.write_text("".join(f"line {n}\n" for n in range(100)))
    (tmp_path / "link.log").symlink_to("/etc/passwd")
    done = subprocess.run([sys.executable, "-I", "-S", "-c", ops_logs.SAFE_TAIL, "3", "once", str(log),
                           str(tmp_path / "link.log"), str(tmp_path)], capture_output=True, text=True, timeout=10)
    assert done.stdout.splitlines() == ["site.access.log: line 97", "site.access.log: line 98",
                                        "site.access.log: line 99"]
    assert "link.log: not read: a symbolic link, refused" in done.stderr and "root" not in done.stdout
    assert f"{tmp_path}: not read: not a regular file" in done.stderr
    follower = subprocess.Popen([sys.executable, "-I", "-S", "-c", ops_logs.SAFE_TAIL, "1", "follow", str(log)],
                                stdout=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in follower.stdout], daemon=True).start()

    def next_line():
        try:
            return lines.get(timeout=10)
        except queue.Empty:
            return None

    try:
        assert next_line() == "site.access.log: line 99\n"
        with log.open("a") as handle:
            handle.write("appended\n")
        assert next_line() == "site.access.log: appended\n"
        log.rename(tmp_path / "site.access.log.1")  # rotated: the new file is followed
        log.write_text("after rotation\n")
        assert next_line() == "site.access.log: after rotation\n"
    finally:
        follower.kill()
        follower.wait()


# run ------------------------------------------------------------------------------------------

def test_run_passes_the_command_to_the_release_tool_and_its_exit_status_back():
    assert ops_exec.exec_command(APP, ["flask", "db", "upgrade"]) == (
        "/srv/greeting/bin/release-tool exec -- 'flask db upgrade'")
    assert ops_exec.exec_command(APP, ["echo $SECRET"], tty=True) == (
        "/srv/greeting/bin/release-tool exec --tty -- 'echo $SECRET'")
    assert ops_exec.exit_status(True, []) == 0
    assert ops_exec.exit_status(False, ["output", "exit status 3"]) == 3
    assert ops_exec.exit_status(False, ["ERROR: there is no live release yet"]) == 1


def test_the_tty_session_is_ssh_as_pyinfra_connects():
    host = FakeHost("web1.example.com", data={"ssh_hostname": "10.0.0.5", "ssh_port": 2222, "ssh_user": "deploy",
                                              "ssh_key": "~/.ssh/deploy", "ssh_known_hosts_file": "/dev/null",
                                              "ssh_strict_host_key_checking": "no", "_sudo": True})
    remote = ops_exec.exec_command(APP, ["flask", "shell"], tty=True)
    assert ops_exec.ssh_argv(host, remote) == [
        "ssh", "-t", "-p", "2222", "-i", "~/.ssh/deploy", "-l", "deploy", "-o", "UserKnownHostsFile=/dev/null",
        "-o", "StrictHostKeyChecking=no", "--", "10.0.0.5",
        "sudo -H -- sh -c '/srv/greeting/bin/release-tool exec --tty -- '\"'\"'flask shell'\"'\"''"]
    assert ops_exec.ssh_argv(FakeHost("@ssh/web2"), "x") == ["ssh", "-t", "--", "web2", "x"]
    with pytest.raises(FleetError, match="--tty: @docker/x is not reached over SSH"):
        ops_exec.ssh_argv(FakeHost("@docker/x"), "x")


def test_commands_on_a_host_without_the_deploy_say_so_with_their_exit_status(tmp_path):
    """Through the whole command line, on @local (no SSH): nothing was deployed there."""
    path = inventory(tmp_path, 'hosts = [("@local", {"app_root": "/nonexistent/greeting"})]\n')

    def ops(*args):
        return subprocess.run([sys.executable, "ops.py", str(path), *args], cwd=REPO_ROOT, capture_output=True,
                              text=True, stdin=subprocess.DEVNULL, timeout=60)

    status = ops("status", "--json")
    assert status.returncode == 1, status.stderr
    [row] = json.loads(status.stdout)
    assert row["host"] == "@local" and not row["healthy"]
    assert "its release tool (/nonexistent/greeting/bin/release-tool) did not answer" in row["problems"][0]
    run = ops("run", "--", "true")
    assert run.returncode == 1 and "[@local] sh: 1: /nonexistent/greeting/bin/release-tool: not found" in run.stdout
    tty = ops("run", "--tty", "--", "flask", "shell")
    assert tty.returncode == 2 and "--tty: @local is not reached over SSH" in tty.stderr


# The release tool's side: `status` and `exec` (files/release_tool/) ------------------------

@pytest.fixture
def tool(tmp_path):
    module = host_tool.load()
    (tmp_path / "releases" / "r1").mkdir(parents=True)
    (tmp_path / "releases" / "r1" / module.META).write_text(json.dumps({"id": "r1", "commit": "abc", "files": {}}))
    (tmp_path / "current").symlink_to("releases/r1")
    config = {"app": "greeting", "service": "greeting.service", "user": "greeting", "writable": [],
              "sandbox": [], "environment_files": [], "stats_socket": str(tmp_path / "stats.sock")}
    (tmp_path / "release-tool.json").write_text(json.dumps(config))
    module.configure(tmp_path)
    return module


def test_exec_runs_in_the_live_release_and_passes_its_exit_status_on(tool, tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(tool, "in_release", lambda release, command, tty=False: calls.append(
        (release, command, tty)) or 3)
    assert tool.main(["--root", str(tmp_path), "exec", "--", "flask db upgrade"]) == 3
    assert calls == [("r1", ["/bin/sh", "-c", "flask db upgrade"], False)]
    assert capsys.readouterr().err == "exit status 3\n"
    assert (tmp_path / "releases" / "r1").is_dir()  # unlike a failed release step, nothing is removed
    monkeypatch.setattr(tool, "in_release", lambda release, command, tty=False: calls.append(
        (release, command, tty)) or 0)
    assert tool.main(["--root", str(tmp_path), "exec", "--tty", "--", "flask", "shell"]) == 0
    release, command, tty = calls[-1]
    assert release == "r1" and tty and command[-1] == "flask shell" and "time.sleep(0.5)" in command[-2]
    # The wrapper passes the command's exit status on, and its output.
    done = subprocess.run([sys.executable, *command[1:-1], "echo said; exit 5"], capture_output=True, text=True)
    assert (done.returncode, done.stdout) == (5, "said\n")


def test_a_tty_step_runs_on_a_pty_of_its_own(tool, monkeypatch):
    argvs = []
    monkeypatch.setattr(tool.subprocess, "run", lambda argv, stdin=None: argvs.append((argv, stdin)) or
                        subprocess.CompletedProcess(argv, 0))
    tool.sandboxed("r1", ["flask", "shell"], [], "/v", tty=True)
    tool.sandboxed("r1", ["true"], [], "/v")
    (tty, tty_stdin), (pipe, pipe_stdin) = argvs
    assert "--pty" in tty and "--pipe" not in tty and tty_stdin is None and any(
        arg.startswith("--setenv=TERM=") for arg in tty)
    assert "--pipe" in pipe and "--pty" not in pipe and pipe_stdin == subprocess.DEVNULL


def test_status_reads_units_in_one_call_and_never_follows_a_link_to_the_stats_socket(tool, tmp_path, monkeypatch):
    shown = ("LoadState=loaded\nActiveState=active\nSubState=running\nResult=success\n\n"
             "LoadState=loaded\nActiveState=inactive\nSubState=dead\nResult=success\n\n"
             "LoadState=not-found\nActiveState=inactive\nSubState=dead\nResult=success\n")
    calls = []
    monkeypatch.setattr(tool.subprocess, "run", lambda argv, **kw: calls.append(argv) or
                        subprocess.CompletedProcess(argv, 0, stdout=shown))
    states = tool.unit_states(["greeting.service", "greeting-w@1.service", "nginx.service"])
    assert len(calls) == 1 and calls[0][-4:] == ["--", "greeting.service", "greeting-w@1.service", "nginx.service"]
    assert states["greeting-w@1.service"]["ActiveState"] == "inactive"
    assert states["nginx.service"]["LoadState"] == "not-found"
    (tmp_path / "stats.sock").symlink_to("/run/somewhere-else.sock")
    assert "it is a symbolic link" in tool.uwsgi_summary()["error"]


# A hostile app's text reaches the operator's terminal only as printable text (issue 24) ------

FORGED = "\x1b[2K\rdeploy ok by admin\x1b]0;owned\x07\b\u202eevil"


def test_text_from_a_host_is_printed_with_every_control_and_format_character_escaped():
    from tasks.ops.fleet import printable

    assert printable(FORGED) == "\\x1b[2K\\rdeploy ok by admin\\x1b]0;owned\\x07\\x08\\u202eevil"
    assert printable("plain\ttext, été, 日本 \u2713") == "plain\ttext, été, 日本 \u2713"
    assert printable("a pty's line\r") == "a pty's line"  # its line end, not the app's
    assert printable("zero\u200bwidth\x00nul\x7fdel\u0085") == "zero\\u200bwidth\\x00nul\\x7fdel\\x85"


def test_streamed_lines_are_escaped_and_only_run_prints_them_raw(capsys):
    from pyinfra.api.output import echo

    from tasks.ops.fleet import show_output

    show_output()
    echo(f"[web1] {FORGED}", err=True)
    assert capsys.readouterr().out == "[web1] \\x1b[2K\\rdeploy ok by admin\\x1b]0;owned\\x07\\x08\\u202eevil\n"
    show_output(raw=True)
    echo("[web1] 10%\r20%\b")
    assert capsys.readouterr().out == "[web1] 10%\r20%\b\n"
    show_output()


@pytest.fixture
def work_dir():
    """A directory settings accept as app_root: in the checkout, unless the checkout
    itself lies where an app_root may not (a clone under /tmp), then in the first of
    the user's home, /srv and /var/lib that is accepted and writable."""
    import shutil
    import tempfile
    from pathlib import Path

    from tasks.config.reserved import app_directory

    def accepted(parent: Path) -> bool:
        try:
            app_directory(str(parent / ".test-ops-x" / "greeting"))
        except ValueError:
            return False
        return os.access(parent, os.W_OK)

    parent = next((p for p in (REPO_ROOT, Path.home(), Path("/srv"), Path("/var/lib")) if accepted(p)), None)
    if parent is None:
        pytest.skip("no writable directory here is accepted as an app_root")
    path = Path(tempfile.mkdtemp(prefix=".test-ops-", dir=parent))
    yield path
    shutil.rmtree(path)


def test_logs_status_and_audit_print_what_the_app_wrote_escaped(tmp_path, work_dir):
    """Through the whole command line, on @local: a release tool that answers with the
    app's escapes in a health failure and an audit entry, and a uWSGI log file with them."""
    root = work_dir / "greeting"
    (root / "bin").mkdir(parents=True)
    report = {"app": "greeting", "live": "r1", "confirmed": True, "service": "greeting.service",
              "units": {"greeting.service": {"LoadState": "loaded", "ActiveState": "active"}},
              "workers": [], "jobs": [], "timers": [], "nginx": False,
              "uwsgi": {"workers": 1, "busy": 0, "idle": 1, "requests": 5},
              "health": {"check": "GET /", "failure": f"health check GET / answered 500: {FORGED}"},
              "certificates": {}, "disk": {"free": 1, "total": 2}}
    (root / "bin" / "release-tool").write_text(textwrap.dedent(f"""\
        #!/bin/sh
        case "$1" in
          status) printf '%s\\n' {json.dumps(json.dumps(report))} ;;
          audit) printf '2026-12-01T10:00:00Z  deploy ok {FORGED}\\n' ;;
        esac
        """))
    (root / "bin" / "release-tool").chmod(0o755)
    log = work_dir / "log" / "uwsgi.log"
    log.parent.mkdir()
    log.write_text(f"{FORGED}\n")
    path = inventory(tmp_path, f'hosts = [("@local", {{"app_root": "{root}", "uwsgi_log": "{log}"}})]\n')

    def ops(*args):
        return subprocess.run([sys.executable, "ops.py", str(path), *args], cwd=REPO_ROOT, capture_output=True,
                              text=True, stdin=subprocess.DEVNULL, timeout=60)

    escaped = "\\x1b[2K\\rdeploy ok by admin\\x1b]0;owned\\x07\\x08\\u202eevil"
    for args, shown in ((["status"], "answered 500: \\x1b[2K\n"), (["audit"], escaped), (["logs"], escaped)):
        done = ops(*args)
        assert "\x1b" not in done.stdout + done.stderr and "\r" not in done.stdout + done.stderr, args
        assert shown in done.stdout, (args, done.stdout, done.stderr)
    as_json = ops("status", "--json").stdout
    assert "\x1b" not in as_json and json.loads(as_json)[0]["problems"] == [
        "health check GET / answered 500: \x1b[2K"]  # JSON escapes it itself


def test_the_safe_tail_refuses_a_hard_link(tmp_path):
    """A log file with a second name (the app linked another file of the host into its
    log directory; here a file of the test's own, which protected_hardlinks allows)."""
    secret = tmp_path / "secret"
    secret.write_text("root's secret\n")
    (tmp_path / "logs").mkdir()
    os.link(secret, tmp_path / "logs" / "app.log")
    done = subprocess.run([sys.executable, "-I", "-S", "-c", ops_logs.SAFE_TAIL, "3", "once",
                           str(tmp_path / "logs" / "app.log")], capture_output=True, text=True, timeout=10)
    assert done.stdout == "" and "app.log: not read: it has 2 hard links, refused" in done.stderr


def test_an_unreachable_host_is_one_error_line_and_exit_2(tmp_path):
    path = inventory(tmp_path, 'hosts = [("127.0.0.1", {"ssh_port": 1, "ssh_connect_retries": 0})]\n')
    for command in ("status", "logs", "releases"):
        done = subprocess.run([sys.executable, "ops.py", str(path), command], cwd=REPO_ROOT, capture_output=True,
                              text=True, stdin=subprocess.DEVNULL, timeout=60)
        assert done.returncode == 2, (command, done.stderr)
        assert "Error: cannot connect to 127.0.0.1" in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_read_only_commands_need_no_secrets_but_the_deploy_does(tmp_path, monkeypatch):
    from tasks.config.inventory import load_apps
    from tasks.config.settings import SettingsError

    monkeypatch.delenv("OPS_NOT_EXPORTED", raising=False)
    path = inventory(tmp_path, 'hosts = [("web1.invalid", {"app_env_from": ["OPS_NOT_EXPORTED"], '
                               '"app_env_file": "missing.env"})]\n')
    [host] = list(read_inventory(str(path)))
    with pytest.raises(SettingsError, match="app_env_file: 'missing.env' is not a file"):
        load_apps(host)
    [app] = load_apps(host, secrets=False)
    assert app.app_env_from == ["OPS_NOT_EXPORTED"]
    # ops.py: past the settings, to the connection (which fails: no such host).
    done = subprocess.run([sys.executable, "ops.py", str(path), "status"], cwd=REPO_ROOT, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert done.returncode == 2 and "Error: cannot connect to web1.invalid" in done.stderr, done.stderr


def serve(path, answer: bytes):
    """A unix socket at path answering every connection with `answer` (a stand-in for
    uWSGI's stats socket, or for the app's forgery of it)."""
    import socket

    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(8)

    def loop():
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            with client:
                try:
                    client.sendall(answer)
                except BrokenPipeError:  # the reader stopped at its size limit, as it should
                    pass

    threading.Thread(target=loop, daemon=True).start()
    return server


FORGED_STATS = json.dumps({"workers": [{"pid": 4242, "status": "idle", "accepting": 1, "requests": 123456789}]})


def test_the_stats_socket_counts_only_when_the_services_uwsgi_master_serves_it(tool, tmp_path, monkeypatch):
    server = serve(tmp_path / "stats.sock", FORGED_STATS.encode())
    try:
        monkeypatch.setattr(tool, "main_pid", lambda: os.getpid())  # this process listens: "the master"
        assert tool.stats()["workers"][0]["requests"] == 123456789
        monkeypatch.setattr(tool, "main_pid", lambda: 1)  # someone else: the app user's own listener
        with pytest.raises(tool.Failure, match=rf"served by pid {os.getpid()} .*not by the uWSGI master of "
                                               r"greeting.service \(pid 1\): the app user replaced it"):
            tool.stats()
        assert "the app user replaced it" in tool.uwsgi_summary()["error"]
    finally:
        server.close()


def test_a_stats_answer_of_the_wrong_shape_or_size_is_no_answer(tool, tmp_path, monkeypatch):
    monkeypatch.setattr(tool, "main_pid", lambda: os.getpid())
    for answer, summary in ((b'["not", "an", "object"]', None), (b" " * (tool.STATS_LIMIT + 1), None),
                            (b'{"workers": [{"status": "busy", "requests": "9"}, 7, {"status": "idle", '
                             b'"requests": 3, "exceptions": 1, "avg_rt": "x"}]}',
                             {"workers": 2, "busy": 1, "idle": 1, "requests": 3, "exceptions": 1, "harakiri": 0,
                              "avg_rt": 0})):
        (tmp_path / "stats.sock").unlink(missing_ok=True)
        server = serve(tmp_path / "stats.sock", answer)
        try:
            assert tool.uwsgi_summary() == (summary or {
                "error": f"the stats socket {tmp_path}/stats.sock is not answering"})
        finally:
            server.close()


def test_a_forged_stats_answer_cannot_end_a_reload_while_an_old_worker_is_alive(tool, monkeypatch):
    """The release tool's chain reload waits for new workers: by the kernel (the master's
    children), not by what the stats socket says."""
    tool.CONFIG["service"] = "greeting.service"
    monkeypatch.setattr(tool, "journal_tail", lambda lines=30: "")
    monkeypatch.setattr(tool.time, "sleep", lambda seconds: None)
    monkeypatch.setattr(tool, "stats", lambda: json.loads(FORGED_STATS))
    monkeypatch.setattr(tool, "worker_pids", lambda: {100, 4242})  # worker 100 is an old one
    with pytest.raises(tool.Failure, match="were not all replaced within 0s"):
        tool.wait_for_new_workers({100, 101}, 0.05)
    monkeypatch.setattr(tool, "worker_pids", lambda: {4242, 4243})
    tool.wait_for_new_workers({100, 101}, 0.05)
    # The kernel's answer: the children of the master systemd started.
    child = subprocess.Popen(["sleep", "30"])
    try:
        monkeypatch.undo()
        monkeypatch.setattr(tool, "main_pid", lambda: os.getpid())
        assert child.pid in tool.worker_pids()
        monkeypatch.setattr(tool, "main_pid", lambda: 0)
        assert tool.worker_pids() == set()
    finally:
        child.kill()
        child.wait()


def test_root_refuses_a_fifo_or_socket_with_a_second_name(tool, tmp_path):
    os.mkfifo(tmp_path / "master.fifo")
    reader = os.open(tmp_path / "master.fifo", os.O_RDONLY | os.O_NONBLOCK)  # uWSGI, reading it
    os.link(tmp_path / "master.fifo", tmp_path / "other")
    tool.CONFIG["master_fifo"] = str(tmp_path / "master.fifo")
    try:
        with pytest.raises(tool.Failure, match="it has 2 hard links"):
            tool.open_master_fifo()
    finally:
        os.close(reader)


# status of the backup host: its last restore drill (files/pgbackrest-verify.py) -----------------

def drill_output(service: str = "inactive", result: str = "success", timer: str = "active",
                 last: str | None = "ok 2026-12-06T05:00:42Z notespg: 2 tables") -> list[str]:
    return ["LoadState=loaded", f"ActiveState={service}", f"Result={result}",
            "ExecMainExitTimestamp=Sun 2026-12-06 05:00:42 UTC", "TIMER", "LoadState=loaded",
            f"ActiveState={timer}", "Result=success", ops_status.VERIFY_MARK, *([last] if last else [])]


def test_the_status_command_reads_the_restore_drills_unit_and_last_line():
    command = ops_status.verify_command()
    assert "pyinfra-flask-pgbackrest-verify.service" in command and "pyinfra-flask-pgbackrest-verify.timer" in command
    assert "cat /var/lib/pyinfra-flask-pgbackrest-verify/last" in command


def test_a_passed_drill_is_one_ok_line_and_healthy():
    row = ops_status.verify_row("bk1", drill_output(), "*-*-* 05:00:00")
    assert row["healthy"] and row["restore_drill"]["at"] == "2026-12-06T05:00:42Z"
    assert ops_status.table([row])[-1] == "[bk1] restore drill: ok at 2026-12-06T05:00:42Z: notespg: 2 tables"


def test_a_failed_drill_is_unhealthy_saying_when_and_why():
    row = ops_status.verify_row("bk1", drill_output(
        service="failed", result="exit-code",
        last="failed 2026-12-06T05:01:10Z pgbackrest_verify_query returned no rows"), "*-*-* 05:00:00")
    assert not row["healthy"]
    assert row["problems"] == ["the last restore drill failed at 2026-12-06T05:01:10Z: "
                               "pgbackrest_verify_query returned no rows"]
    assert ops_status.table([row])[-1] == (
        "[bk1] restore drill: FAILED at 2026-12-06T05:01:10Z: pgbackrest_verify_query returned no rows")
    # Killed before it could write its line: the unit's failure still shows.
    row = ops_status.verify_row("bk1", drill_output(service="failed", result="timeout", last=None), "daily")
    assert not row["healthy"] and "journalctl -u pyinfra-flask-pgbackrest-verify.service" in row["problems"][0]


def test_a_stopped_timer_or_a_missing_drill_is_unhealthy_and_off_is_said():
    row = ops_status.verify_row("bk1", drill_output(timer="inactive", last=None), "daily")
    assert row["problems"] == ["the restore drill's timer pyinfra-flask-pgbackrest-verify.timer is inactive"]
    assert ops_status.verify_row("bk1", ["LoadState=not-found"], "daily")["problems"]
    off = ops_status.verify_row("bk1", ["LoadState=not-found", "TIMER", "LoadState=not-found",
                                        ops_status.VERIFY_MARK], None)
    assert off["healthy"] and ops_status.table([off])[-1] == "[bk1] restore drill: off (pgbackrest_verify_schedule = null)"
    never = ops_status.verify_row("bk1", drill_output(last=None), "daily")
    assert never["healthy"] and ops_status.table([never])[-1] == "[bk1] restore drill: never run yet"


def test_the_files_drill_has_its_own_line_unit_and_setting():
    drill = ops_status.DRILLS[1]
    command = ops_status.verify_command(drill)
    assert "pyinfra-flask-restic-verify.service" in command and "cat /var/lib/pyinfra-flask-restic-verify/last" in command
    row = ops_status.verify_row("bk1", drill_output(last="ok 2026-12-07T05:30:12Z blog: web1 2 files (23810 bytes) "
                                                         "of 3f9a1c2e 2026-12-07T05:15:07Z"), "daily", drill)
    assert ops_status.table([row])[-1] == ("[bk1] files drill: ok at 2026-12-07T05:30:12Z: blog: web1 2 files "
                                           "(23810 bytes) of 3f9a1c2e 2026-12-07T05:15:07Z")
    failed = ops_status.verify_row("bk1", drill_output(service="failed", result="exit-code",
                                                       last="failed 2026-12-07T05:30:12Z restic check: Fatal: x"),
                                   "daily", drill)
    assert not failed["healthy"] and ops_status.table([failed])[-1] == (
        "[bk1] files drill: FAILED at 2026-12-07T05:30:12Z: restic check: Fatal: x")
    off = ops_status.verify_row("bk1", ["LoadState=not-found", "TIMER", "LoadState=not-found",
                                        ops_status.VERIFY_MARK], None, drill)
    assert ops_status.table([off])[-1] == "[bk1] files drill: off (files_verify_schedule = null)"

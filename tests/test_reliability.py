"""The worst day, made boring: least privilege, secrets, faults survived, refused input."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
import requests

from dev import throwaway
from tests.conftest import Load, app_variant, get, run_deploy
from tests.test_deploy import GREETING

pytestmark = pytest.mark.reliability

ROOT = "/srv/greeting"


def wait_until_serving(url: str, timeout: float = 30) -> float:
    """Seconds until GET url answers 200 (fails the test after `timeout`)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return time.monotonic() - started
        except requests.RequestException:
            pass
        time.sleep(0.1)
    pytest.fail(f"{url} did not answer 200 within {timeout}s")


PROBE = '''
@app.route("/probe")
def probe():
    # Runs inside the real unit's sandbox: which paths may this app write?
    seen = []
    for path in (os.path.join(os.getcwd(), "probe"), "/srv/greeting/shared/instance/probe",
                 "/etc/probe", "/opt/probe", "/tmp/probe"):
        try:
            with open(path, "w") as handle:
                handle.write("x")
            seen.append(f"writable {path}")
        except OSError:
            seen.append(f"read-only {path}")
    return "\\n".join(seen)
'''


def test_app_runs_with_least_privilege(fork, tmp_path):
    run_deploy(fork, tmp_path, data={"app_source": str(app_variant(tmp_path, greeting="probing", append=PROBE))})
    unit = fork.exec("systemctl show greeting.service -p User -p NoNewPrivileges -p ProtectSystem "
                     "-p ProtectHome -p PrivateTmp -p PrivateDevices -p CapabilityBoundingSet")
    for expected in ("User=greeting", "NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes",
                     "PrivateTmp=yes", "PrivateDevices=yes", "CapabilityBoundingSet=\n"):
        assert expected in unit + "\n", unit
    seen = get(fork.url + "/probe").text
    release = fork.exec(f"readlink -f {ROOT}/current").strip()
    # Code and system are read-only for the app; its shared data and a private /tmp are not.
    assert f"read-only {release}/probe" in seen, seen
    assert f"writable {ROOT}/shared/instance/probe" in seen, seen
    assert "read-only /etc/probe" in seen and "read-only /opt/probe" in seen
    assert "writable /tmp/probe" in seen and fork.exec("test -e /tmp/probe || echo private").strip() == "private"
    assert fork.exec("stat -c '%a' /run/greeting/uwsgi.sock").strip() == "660"
    assert fork.exec(f"stat -c '%U %a' {ROOT}/current/greeting.py").split() == ["root", "640"]
    print("\n" + fork.exec("systemd-analyze security greeting.service 2>/dev/null | tail -1").strip())


def test_secrets_reach_the_app_and_are_never_printed(fork, tmp_path):
    secret = "s3cret-" + os.urandom(8).hex()
    env_file = tmp_path / "production.env"
    env_file.write_text(f"# not in git\nAPI_TOKEN='{secret}-file'\n")
    app = app_variant(tmp_path, greeting="with secrets", append=(
        '\n@app.route("/secret-check")\ndef secret_check():\n'
        '    return f"{len(os.environ.get(\'API_TOKEN\', \'\'))} {len(os.environ.get(\'DEPLOY_SECRET\', \'\'))}"\n'))
    data = {"app_source": str(app), "app_env_file": str(env_file), "app_env_from": ["DEPLOY_SECRET"]}
    os.environ["DEPLOY_SECRET"] = secret
    try:
        dry = run_deploy(fork, tmp_path, "--dry", "--diff", data=data)
        run = run_deploy(fork, tmp_path, data=data)
    finally:
        del os.environ["DEPLOY_SECRET"]
    for output in (dry.output, run.output):
        assert secret not in output
    assert "values never shown" in dry.output
    assert get(fork.url + "/secret-check").text == f"{len(secret) + 5} {len(secret)}"
    assert fork.exec(f"stat -c '%a %U' {ROOT}/secrets/app.env").split() == ["600", "greeting"]
    assert fork.exec(f"stat -c '%a %U' {ROOT}/secrets").split() == ["700", "root"]


def test_kill_9_of_the_uwsgi_master_is_survived(fork):
    master = fork.exec("systemctl show -p MainPID --value greeting.service").strip()
    fork.exec(f"kill -9 {master}")
    recovery = wait_until_serving(fork.url + "/")
    print(f"\nuWSGI master killed: serving again after {recovery:.1f}s")
    assert recovery < 10
    assert fork.exec("systemctl show -p MainPID --value greeting.service").strip() != master


def test_worker_killed_under_load(fork):
    with Load(fork.url + "/") as load:
        time.sleep(1)
        worker = fork.exec("pgrep -u greeting -f uwsgi | sort -n | tail -1").strip()
        fork.exec(f"kill -9 {worker}")
        time.sleep(3)
    print("\n" + load.report("a uWSGI worker killed under load"))
    assert load.sent > 100
    # Only requests in that worker's hands can fail; the master respawns it at once.
    assert len(load.failures) <= 4, load.failures
    assert "Respawned uWSGI worker" in fork.exec("journalctl -u greeting.service --no-pager")


def test_nginx_killed_comes_back(fork):
    master = fork.exec("cat /run/nginx.pid").strip()
    fork.exec(f"kill -9 {master}")
    recovery = wait_until_serving(fork.url + "/")
    print(f"\nnginx master killed: serving again after {recovery:.1f}s")
    assert recovery < 15
    assert fork.exec("systemctl is-active nginx").strip() == "active"


def test_interrupted_deploy_keeps_serving_and_next_run_converges(fork, tmp_path):
    before = fork.exec(f"readlink {ROOT}/current").strip()
    new_app = app_variant(tmp_path, greeting="after the interruption")
    inventory = fork.write_inventory(tmp_path / "inventory.py")
    command = [throwaway.PYINFRA, str(inventory), "deploy.py", "-y", "--data", f"app_source={new_app}"]
    with Load(fork.url + "/") as load:
        proc = subprocess.Popen(command, cwd=throwaway.REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env={**os.environ, "PYINFRA_PROGRESS": "off"})
        for line in proc.stdout:  # kill pyinfra as soon as it starts unpacking the release
            if "Starting operation: App server | Release | Unpack release" in line:
                proc.send_signal(signal.SIGKILL)
                break
        proc.wait(timeout=60)
    print("\n" + load.report("deploy killed mid-run"))
    assert proc.returncode == -signal.SIGKILL
    assert load.failures == []
    assert fork.exec(f"readlink {ROOT}/current").strip() == before
    assert get(fork.url + "/").text.strip() == GREETING

    run_deploy(fork, tmp_path, data={"app_source": str(new_app)})
    assert get(fork.url + "/").text.strip() == "after the interruption"
    leftovers = fork.exec(f"ls -a {ROOT}/releases").split()
    assert not [name for name in leftovers if name.startswith(".upload-")], leftovers
    assert run_deploy(fork, tmp_path, data={"app_source": str(new_app)}).changed_operations() == []


def test_reboot_brings_everything_back(fork):
    started = time.monotonic()
    fork.restart()
    recovery = wait_until_serving(fork.url + "/", timeout=60)
    print(f"\nreboot: serving {time.monotonic() - started:.1f}s after the restart began")
    for unit in ("greeting.service", "nginx.service"):
        assert fork.exec(f"systemctl is-enabled {unit}").strip() == "enabled"
        assert fork.exec(f"systemctl is-active {unit}").strip() == "active"
    assert recovery < 60


@pytest.mark.parametrize(("data", "key"), [
    ({"nginx_server_names": ["a.example; return 200 hacked"]}, "nginx_server_names[0]"),
    ({"nginx_server_names": ["a.example\n}"]}, "nginx_server_names[0]"),
    ({"app_root": "/srv/x;touch /tmp/pwned"}, "app_root"),
    ({"app_root": "/srv/$(reboot)"}, "app_root"),
    ({"healthcheck_path": "/`id`"}, "healthcheck_path"),
    ({"app_entry": "wsgi:app\nprocesses = 999"}, "app_entry"),
    ({"app_name": "greeting\nUser=root"}, "app_name"),
    ({"uwsgi_log": "/var/log/x y.log"}, "uwsgi_log"),
    ({"nginx_client_max_body_size": "1m; include /etc/shadow"}, "nginx_client_max_body_size"),
    ({"url_prefix": "/blog { }"}, "url_prefix"),
    # Values that pass every pattern but would take over the system's own.
    ({"app_root": "/etc"}, "app_root"),
    ({"app_name": "ssh"}, "app_name"),
    ({"app_user": "www-data"}, "app_user"),
    ({"app_user": throwaway.DEPLOY_USER}, "app_user"),
    ({"url_prefix": "/blog/../admin"}, "url_prefix"),
])
def test_hostile_values_are_refused_before_any_host(deployed, tmp_path, data, key):
    host = deployed.host
    site_before = host.exec("sha256sum /etc/nginx/sites-available/greeting.conf /srv/greeting/uwsgi.ini")
    run = run_deploy(host, tmp_path, data=data, check=False)
    assert run.returncode != 0
    assert f"  - {key}" in run.output and "nothing was changed on any host" in run.output, run.output[-2000:]
    assert "Beginning operation run" not in run.output
    assert host.exec("sha256sum /etc/nginx/sites-available/greeting.conf /srv/greeting/uwsgi.ini") == site_before

"""The worst day, made boring: least privilege, secrets, faults survived, refused input."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
import requests

from dev import throwaway
from tests.conftest import Load, app_variant, get, run_deploy
from tests.hosts.test_deploy import GREETING

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
        for line in proc.stdout:  # kill pyinfra as soon as it starts shipping the release
            if "Starting operation: App server | Release activation | Ship release" in line:
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
    # Nor an upload of the killed run on its way (the SSH user's private directory).
    assert not fork.exec("ls -a /home/*/.pyinfra-flask-uploads", check=False).count("release-greeting-")
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
    # nginx (root) would open its log where the app user can put a link (CVE-2016-1247's pattern).
    ({"uwsgi_log": "/var/log/greeting/uwsgi.log", "nginx_access_log": "/var/log/greeting/access.log"},
     "nginx_access_log"),
])
def test_hostile_values_are_refused_before_any_host(deployed, tmp_path, data, key):
    host = deployed.host
    site_before = host.exec("sha256sum /etc/nginx/sites-available/greeting.conf /srv/greeting/uwsgi.ini")
    run = run_deploy(host, tmp_path, data=data, check=False)
    assert run.returncode != 0
    assert f"  - {key}" in run.output and "nothing was changed on any host" in run.output, run.output[-2000:]
    assert "Beginning operation run" not in run.output
    assert host.exec("sha256sum /etc/nginx/sites-available/greeting.conf /srv/greeting/uwsgi.ini") == site_before


def test_a_link_in_app_source_is_refused_before_any_host(deployed, tmp_path):
    """`static/about.txt -> ../.env`: followed on the laptop, the .env would ship and
    nginx would serve it. Refused in one line while the settings are read; the host's
    releases and site are as they were, and nothing of the .env is on it."""
    host = deployed.host
    app = app_variant(tmp_path, greeting="linked")
    (app / ".env").write_text("SECRET_KEY=do-not-ship-laptop-env\n")
    (app / "static/about.txt").symlink_to("../.env")
    state = f"ls {ROOT}/releases; readlink {ROOT}/current; sha256sum /etc/nginx/sites-available/greeting.conf"
    before = host.exec(state)
    run = run_deploy(host, tmp_path, data={"app_source": str(app)}, check=False)
    assert run.returncode != 0
    assert "  - app_source: static/about.txt is a symbolic link (to ../.env) in " in run.output, run.output[-2000:]
    assert "Beginning operation run" not in run.output and "Traceback" not in run.output
    assert host.exec(state) == before
    assert host.exec(f"grep -rl do-not-ship {ROOT}/releases || true").strip() == ""
    assert get(host.url + "/static/about.txt").status_code == 404


TOOL = f"{ROOT}/bin/release-tool"


def live_release(host) -> str:
    return host.exec(f"readlink {ROOT}/current").strip().removeprefix("releases/")


def test_root_never_follows_the_app_users_links_in_its_runtime_directory(fork, tmp_path):
    fork.exec("printf 'root only\\n' > /root/precious && chmod 600 /root/precious")
    before = live_release(fork)
    # A compromised app user swaps uWSGI's master FIFO for a link to a file of root's.
    fork.exec("runuser -u greeting -- ln -sfn /root/precious /run/greeting/master.fifo")
    with Load(fork.url + "/") as load:
        run = run_deploy(fork, tmp_path, check=False,
                         data={"app_source": str(app_variant(tmp_path, greeting="never switched to"))})
    assert run.returncode != 0
    assert "refusing uWSGI's master FIFO /run/greeting/master.fifo: it is a symbolic link" in run.output, \
        run.output[-3000:]
    assert f"the live release {before} was left alone" in run.output
    assert fork.exec("cat /root/precious") == "root only\n"
    assert load.failures == [] and load.sent > 20, load.report("refused deploy")
    assert live_release(fork) == before and get(fork.url + "/").text.strip() == GREETING

    # The stats socket: never connected to through a link either.
    fork.exec("systemctl restart greeting.service")  # a FIFO of its own again
    fork.exec("runuser -u greeting -- sh -c 'mv /run/greeting/stats.sock /run/greeting/real.sock && "
              "ln -s /run/systemd/private /run/greeting/stats.sock'")
    run = run_deploy(fork, tmp_path, check=False,
                     data={"app_source": str(app_variant(tmp_path, greeting="never switched to"))})
    assert run.returncode != 0
    assert "refusing uWSGI's stats socket /run/greeting/stats.sock: it is a symbolic link" in run.output
    assert live_release(fork) == before and get(fork.url + "/").text.strip() == GREETING


BUILD_PROBE = '''
import os
import subprocess

from setuptools import setup

# The build step of a dependency: who runs it, and does what it starts outlive it?
subprocess.Popen(["sleep", "307"], start_new_session=True, stdin=subprocess.DEVNULL,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
with open("buildprobe.py", "w") as handle:
    handle.write(f"UID = {os.getuid()}\\nEUID = {os.geteuid()}\\n")
setup(name="buildprobe", version="0.1", py_modules=["buildprobe"])
'''

SANDBOX_PROBE = (
    "for p in /srv/greeting/releases/probe /srv/greeting/venvs/probe /run/greeting/probe /etc/probe "
    "/tmp/probe instance/probe; do touch $p 2>/dev/null && echo \"writable $p\" || echo \"read-only $p\"; "
    "done > instance/sandbox; id -un >> instance/sandbox; (setsid sleep 308 &)"
)


def _sdist(target: Path, name: str, setup_py: str) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for member, text in ((f"{name}/setup.py", setup_py),
                             (f"{name}/PKG-INFO", "Metadata-Version: 2.1\nName: buildprobe\nVersion: 0.1\n")):
            info = tarfile.TarInfo(member)
            info.size = len(text.encode())
            tar.addfile(info, io.BytesIO(text.encode()))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(buffer.getvalue())


def test_release_steps_run_as_the_app_user_in_the_services_sandbox(fork, tmp_path):
    app = app_variant(tmp_path, greeting="built by the app user",
                      requirements="Flask==3.1.3\n./vendor/buildprobe-0.1.tar.gz\n")
    _sdist(app / "vendor/buildprobe-0.1.tar.gz", "buildprobe-0.1", BUILD_PROBE)
    run = run_deploy(fork, tmp_path, data={"app_source": str(app), "before_switch_commands": [SANDBOX_PROBE]})
    # One release-tool command ships it: the venv (new requirements) is built there, as the app user.
    assert "Ship release" in run.output and "venv" in run.output
    uid = fork.exec("id -u greeting").strip()
    # The dependency's setup.py ran as the app user, never as root.
    probe = fork.exec(f"{ROOT}/current/.venv/bin/python -c 'import buildprobe as b; print(b.UID, b.EUID)'")
    assert probe.split() == [uid, uid], probe
    # The venv ends root's: no file of the app user's, nothing group- or world-writable.
    venv = fork.exec(f"readlink -f {ROOT}/current/.venv").strip()
    assert fork.exec(f"find {venv} ! -user root | head -5") == ""
    assert fork.exec(f"find {venv} ! -type l -perm /022 | head -5") == ""
    assert fork.exec(f"stat -c '%U %G' {venv} {venv}/.deploy-complete").split() == ["root", "greeting"] * 2
    # No process outlived its step (the build's nor the before-switch command's).
    assert fork.exec("pgrep -a -f 'sleep 30[78]' || true").strip() == ""
    # Before-switch commands: the app user, writing only its shared data and a private /tmp.
    seen = fork.exec(f"cat {ROOT}/shared/instance/sandbox")
    for path in ("/srv/greeting/releases/probe", "/srv/greeting/venvs/probe", "/run/greeting/probe",
                 "/etc/probe"):
        assert f"read-only {path}" in seen, seen
    assert "writable /tmp/probe" in seen and "writable instance/probe" in seen and seen.endswith("greeting\n")
    assert fork.exec("test -e /tmp/probe || echo private").strip() == "private"
    assert fork.exec("test -e /run/greeting/probe || echo absent").strip() == "absent"
    assert get(fork.url + "/").text.strip() == "built by the app user"


def test_activation_cut_off_after_the_switch_is_finished_by_the_next_run(fork, tmp_path):
    original = live_release(fork)
    new_app = app_variant(tmp_path, greeting="after the cut")
    run_deploy(fork, tmp_path, data={"app_source": str(new_app)})
    new = live_release(fork)
    fork.exec(f"{TOOL} rollback")
    assert live_release(fork) == original and get(fork.url + "/").text.strip() == GREETING
    # A run cut off right after its switch: `current` is the new release, uWSGI still
    # serves the old one and nothing recorded the activation as healthy.
    fork.exec(f"ln -sfn releases/{new} {ROOT}/.current.cut && mv -T {ROOT}/.current.cut {ROOT}/current")
    assert get(fork.url + "/").text.strip() == GREETING
    run = run_deploy(fork, tmp_path, data={"app_source": str(new_app)})
    assert any(f"Activate release {new} again" in name for name in run.changed_operations()), run.output[-3000:]
    assert get(fork.url + "/").text.strip() == "after the cut"
    assert run_deploy(fork, tmp_path, data={"app_source": str(new_app)}).changed_operations() == []


def _pyinfra(inventory: Path, app: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [throwaway.PYINFRA, str(inventory), "deploy.py", "-y", "--data", f"app_source={app}"],
        cwd=throwaway.REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        stdin=subprocess.DEVNULL, env={**os.environ, "PYINFRA_PROGRESS": "off"})


def assert_lock_free(fork):
    # Given back: taken over SSH, the lock names that connection (the sshd process
    # serving it) and is free once it is gone, with no command to release it.
    entry = json.loads(fork.exec(f"cat {ROOT}/deploy.lock"))
    assert set(entry["connection"]) == {"pid", "start", "boot"}, entry
    assert fork.exec(f"{TOOL} lock show").strip() == "LOCK free"


def test_two_deploys_at_once_are_serialised_by_the_lock(fork, tmp_path):
    original = live_release(fork)
    apps = [app_variant(tmp_path, greeting=f"deploy {name}") for name in "AB"]
    inventory = fork.write_inventory(tmp_path / "inventory.py")
    with Load(fork.url + "/") as load:
        procs = [_pyinfra(inventory, app) for app in apps]
        outputs = [proc.communicate(timeout=600)[0] for proc in procs]
    print("\n" + load.report("two deploys at once"))
    for proc, output in zip(procs, outputs):
        assert proc.returncode == 0, output[-3000:]
    assert load.failures == [] and load.sent > 100
    waited = [index for index, output in enumerate(outputs) if "waiting up to 120 s for the deploy lock" in output]
    assert len(waited) == 1, [output[-2000:] for output in outputs]
    # The run that waited went second: its release is live.
    assert get(fork.url + "/").text.strip() == f"deploy {'AB'[waited[0]]}"
    releases = fork.exec(f"ls -a {ROOT}/releases").split()
    new = [name for name in releases if name not in (".", "..", original)]
    assert len(new) == 2 and len(set(new)) == 2, releases
    for name in new:  # both complete: nothing half-unpacked or half-deleted
        fork.exec(f"test -f {ROOT}/releases/{name}/.deploy-release.json && test -f {ROOT}/releases/{name}/wsgi.py")
    lives = [json.loads(line)["release"] for line in fork.exec(f"cat {ROOT}/history.jsonl").splitlines()
             if json.loads(line)["event"] == "live"]
    assert sorted(lives[-2:]) == sorted(new) and lives[-1] == live_release(fork)
    assert_lock_free(fork)


def test_deploy_lock_held_elsewhere_names_its_holder_and_can_be_broken(fork, tmp_path):
    holder = json.dumps({"user": "alice", "machine": "alices-laptop", "pid": 4242})
    fork.exec(f"{TOOL} --run 0badc0 lock take --holder '{holder}'")
    run = run_deploy(fork, tmp_path, check=False, data={"deploy_lock_timeout": 3})
    assert run.returncode != 0
    assert (f"greeting on host {fork.name}: the deploy lock is held by alice@alices-laptop (pid 4242, run 0badc0) "
            "since ") in run.output, run.output[-3000:]
    assert "waited 3 s (deploy_lock_timeout), nothing was changed. If that run is gone: " \
           "--data deploy_lock_break=true" in run.output
    assert "Beginning operation run" not in run.output
    run = run_deploy(fork, tmp_path, data={"deploy_lock_break": True})
    assert "broke the deploy lock held by alice@alices-laptop (pid 4242, run 0badc0)" in run.output
    assert_lock_free(fork)

    # Left by a run on this machine that was killed: recognised and taken over.
    gone = subprocess.Popen(["true"])
    gone.wait()
    holder = json.dumps({"user": "me", "machine": socket.gethostname(), "pid": gone.pid})
    fork.exec(f"{TOOL} --run dead00 lock take --holder '{holder}'")
    run = run_deploy(fork, tmp_path, data={"deploy_lock_timeout": 5})
    assert f"(pid {gone.pid}, run dead00)" in run.output and "its process is gone" in run.output

    # A run that fails on the host gives the lock back too.
    broken = app_variant(tmp_path, greeting="broken", append="\nimport no_such_module_anywhere\n")
    assert run_deploy(fork, tmp_path, check=False, data={"app_source": str(broken)}).returncode != 0
    assert_lock_free(fork)

"""The paths real users take, and what a compromised app user tries: uploads over a
sudo connection, links where root writes logs, names the host already uses, every
laptop Python pyinfra supports."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from dev import throwaway
from tests.conftest import REPO_ROOT, app_variant, get, run_deploy

pytestmark = pytest.mark.reliability

ROOT = "/srv/greeting"


def as_app_user(host, command: str, check: bool = True) -> str:
    """A shell command as the app's user: what a compromised app can do."""
    return host.exec(f"runuser -u greeting -- sh -c {command!r}", check=check)


def test_uploads_pass_only_through_the_ssh_users_private_directory(fork, tmp_path, monkeypatch):
    # pyinfra's own temporary name for an upload of uwsgi.ini, made first by the app user:
    # a file it can read and swap before root copies it into place.
    trap = f"/tmp/pyinfra-{hashlib.sha1(f'{ROOT}/uwsgi.ini'.encode()).hexdigest()}"
    as_app_user(fork, f"echo planted > {trap} && chmod 666 {trap}")
    monkeypatch.setenv("TRUST_TEST_SECRET", "s3cr3t-value-42")
    run_deploy(fork, tmp_path, data={"uwsgi_harakiri": 31, "app_env_from": ["TRUST_TEST_SECRET"]})

    assert "harakiri = 31" in fork.exec(f"cat {ROOT}/uwsgi.ini")
    assert fork.exec(f"cat {trap}") == "planted\n", "the upload went through a file others can reach"
    assert fork.exec(f"cat {ROOT}/secrets/app.env").strip() == 'TRUST_TEST_SECRET="s3cr3t-value-42"'
    # Nothing of the secret was left where others can read, and nothing on the way remains.
    assert fork.exec("grep -rl s3cr3t-value-42 /tmp /var/tmp /dev/shm /home 2>/dev/null || true").strip() == ""
    private = f"/home/{throwaway.DEPLOY_USER}/.pyinfra-flask-uploads"
    assert fork.exec(f"stat -c '%a %U' {private}").split() == ["700", throwaway.DEPLOY_USER]
    assert fork.exec(f"ls -A {private}").strip() == ""


def test_links_the_app_user_plants_in_log_paths_never_reach_root(fork, tmp_path):
    run_deploy(fork, tmp_path, data={"uwsgi_log": "/var/log/greeting/uwsgi.log"})
    assert fork.exec("stat -c '%U %a' /var/log/greeting").split() == ["greeting", "750"]
    fork.exec("echo precious > /etc/target && chmod 644 /etc/target")

    # nginx's logs are root's: the app user cannot put anything in their place.
    planted = as_app_user(fork, "ln -sf /etc/nginx-pwned /var/log/nginx/greeting.access.log 2>&1 || echo refused",
                          check=False)
    assert "refused" in planted
    # Its own log it may replace by a link to a root file: rotating must not touch the target.
    as_app_user(fork, "rm -f /var/log/greeting/uwsgi.log && ln -s /etc/target /var/log/greeting/uwsgi.log")
    fork.exec("logrotate -f /etc/logrotate.d/pyinfra-flask-greeting >/dev/null 2>&1 || true")
    fork.exec("systemctl reload nginx && sleep 0.5")
    run_deploy(fork, tmp_path, data={"uwsgi_log": "/var/log/greeting/uwsgi.log", "uwsgi_harakiri": 33})
    get(fork.url + "/")

    assert fork.exec("cat /etc/target") == "precious\n"
    assert fork.exec("stat -c '%U %G %a' /etc/target").split() == ["root", "root", "644"]
    assert fork.exec("ls /etc | grep -E '^(target.|nginx-pwned)' || true").strip() == ""


def test_names_the_host_already_uses_are_refused_before_anything_changes(fork, tmp_path):
    # A service and a person's account of the host's own, under names no list knows.
    fork.exec("printf '[Service]\\nExecStart=/bin/true\\n' > /etc/systemd/system/billing.service && "
              "useradd --create-home --shell /bin/bash alice")
    before = fork.exec("sha256sum /etc/systemd/system/billing.service /etc/passwd /etc/group; ls /srv")
    run = run_deploy(fork, tmp_path, check=False, data={"apps": [
        {"app_name": "billing"}, {"app_name": "shop", "app_user": "alice", "url_prefix": "/shop"}]})
    assert run.returncode != 0
    assert "app_name = 'billing': the host already has billing.service (/etc/systemd/system/billing.service)" \
        in run.output, run.output[-3000:]
    assert "app_user = 'alice': the host already has this account (home /home/alice)" in run.output
    assert "nothing was changed on any host" in run.output and "Beginning operation run" not in run.output
    assert fork.exec("sha256sum /etc/systemd/system/billing.service /etc/passwd /etc/group; ls /srv") == before


def laptop_pythons() -> list[str]:
    """The Pythons pyinfra supports besides this one, from pyenv."""
    try:
        root = subprocess.run(["pyenv", "root"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return []
    found = []
    for minor in ("3.10", "3.12", "3.13"):
        versions = sorted(Path(root, "versions").glob(f"{minor}.*"))
        if versions and (versions[-1] / "bin/python").exists():
            found.append(str(versions[-1] / "bin/python"))
    return found


def laptop_venv(python: str) -> Path:
    """A venv with only requirements.txt, as a user's laptop has; kept between runs."""
    requirements = (REPO_ROOT / "requirements.txt").read_bytes()
    version = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    venv = throwaway.CACHE_DIR / f"laptop-{version}-{hashlib.sha256(requirements).hexdigest()[:12]}"
    if not (venv / ".complete").exists():
        subprocess.run([python, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run([str(venv / "bin/pip"), "install", "-q", "--disable-pip-version-check",
                        "-r", str(REPO_ROOT / "requirements.txt")], check=True)
        (venv / ".complete").touch()
    return venv


@pytest.mark.skipif(len(laptop_pythons()) < 3, reason="pyenv has not got Python 3.10, 3.12 and 3.13")
def test_deploys_from_every_laptop_python(fork, tmp_path):
    inventory = fork.write_inventory(tmp_path / "inventory.py")
    source = app_variant(tmp_path, greeting="Deployed from the oldest laptop Python")
    for number, python in enumerate(laptop_pythons()):
        venv = laptop_venv(python)
        version = venv.name.split("-")[1]
        run = throwaway.run_command([str(venv / "bin/pyinfra"), str(inventory), "deploy.py", "-y",
                                     "--data", f"app_source={source}"])
        assert run.returncode == 0, f"Python {version}:\n{run.output[-4000:]}"
        # The oldest (3.10) makes a release: uploads, templates, the switch. The others
        # read every fact, plan every operation and find nothing to change.
        assert (run.changed_operations() != []) == (number == 0), f"Python {version}:\n{run.output[-3000:]}"
        assert get(fork.url + "/").text.strip() == "Deployed from the oldest laptop Python"

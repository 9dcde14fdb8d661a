"""ops.py status, logs and run on a real host: one fork of the shared deployed host,
deployed once with a worker and a secret, then read and acted on as a user would,
through `ops.py INVENTORY ...` over SSH as the sudo user."""

from __future__ import annotations

import getpass
import json
import shlex
import socket
import subprocess
import sys
import uuid

import pytest

from tests.conftest import REPO_ROOT, app_variant, get, run_deploy

pytestmark = pytest.mark.features

SECRET = "s3cr3t-" + uuid.uuid4().hex[:8]
# A page that makes the app write a line of its own (uWSGI hands its output to the journal).
SAY = '''

@app.route("/say/<word>")
def say(word):
    print(f"the app says {word}", flush=True)
    return "said\\n"
'''


@pytest.fixture(scope="module")
def lab(hosts, deployed_image, tmp_path_factory):
    host = hosts.start(deployed_image)
    work = tmp_path_factory.mktemp("ops")
    env = work / "app.env"
    env.write_text(f"OPS_SECRET={SECRET}\n")
    data = {"app_source": str(app_variant(work, append=SAY)), "app_env_file": str(env),
            "workers": {"sleeper": {"command": "python -c 'import time; time.sleep(10**6)'"}}}
    # The settings in the inventory itself: ops.py reads them as the deploy did.
    inventory = host.write_inventory(work / "inventory.py", data)
    run_deploy(inventory, work)
    yield host, inventory
    hosts.remove(host)


def ops(inventory, *args: str, timeout: int = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "ops.py", str(inventory), *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, timeout=timeout)


def test_status_reports_a_stopped_worker_as_unhealthy(lab):
    host, inventory = lab
    healthy = ops(inventory, "status", "--json")
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    [row] = json.loads(healthy.stdout)
    live = host.exec("readlink /srv/greeting/current").strip().rsplit("/", 1)[1]
    assert row["host"] == host.name and row["release"] == live and row["problems"] == []
    assert row["web"] == "active" and row["nginx"] == "active"
    assert row["workers"] == {"greeting-sleeper@1.service": "active"}
    assert row["uwsgi"]["workers"] >= 1 and row["disk_free"] > 0 and row["since"]
    # Who made it live: this laptop's user and machine, from the host's audit log.
    assert row["by"] == f"{getpass.getuser()}@{socket.gethostname()}"

    host.exec("systemctl stop greeting-sleeper@1.service")
    broken = ops(inventory, "status")
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert f"[{host.name}] greeting: worker greeting-sleeper@1.service is inactive" in broken.stdout
    assert broken.stdout.splitlines()[1].split()[:3] == [host.name, "greeting", live]
    assert broken.stdout.splitlines()[1].endswith("UNHEALTHY")
    host.exec("systemctl start greeting-sleeper@1.service")


def test_logs_show_a_line_the_app_just_wrote_prefixed_by_its_host(lab):
    host, inventory = lab
    word = uuid.uuid4().hex
    assert get(f"http://127.0.0.1:{host.http_port}/say/{word}").text == "said\n"
    done = ops(inventory, "logs", "--nginx", "-n", "30")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert any(line.startswith(f"[{host.name}] ") and line.endswith(f"the app says {word}") for line in lines), lines
    assert any(line.startswith(f"[{host.name}] greeting.access.log: ") and f"GET /say/{word} " in line
               for line in lines), lines


def test_run_executes_in_the_live_release_with_its_secret_and_returns_its_exit_code(lab):
    host, inventory = lab
    live = host.exec("readlink /srv/greeting/current").strip()
    done = ops(inventory, "run", "--", 'echo "secret=$OPS_SECRET user=$(id -un) in=$(pwd) python=$(command -v '
               'python)"; exit 3')
    assert done.returncode == 3, done.stdout + done.stderr
    assert (f"[{host.name}] secret={SECRET} user=greeting in=/srv/greeting/{live} "
            f"python=/srv/greeting/{live}/.venv/bin/python") in done.stdout
    assert host.exec("readlink /srv/greeting/current").strip() == live  # a failing command changes nothing
    # With a terminal, through ssh -t (script gives this test one).
    command = shlex.join([sys.executable, "ops.py", str(inventory), "run", "--tty", "--", "tty; exit 4"])
    tty = subprocess.run(["script", "-qec", command, "/dev/null"], cwd=REPO_ROOT, capture_output=True, text=True,
                         stdin=subprocess.DEVNULL, timeout=60)
    assert tty.returncode == 4 and "/dev/pts/" in tty.stdout, tty.stdout + tty.stderr

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
    host = hosts.from_spare(deployed_image)
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


# Issue 24: what the app user writes reaches the operator only escaped, and root trusts none of it.
ESCAPES = "\x1b[2K\rdeploy ok by admin\x1b]0;owned\x07"
ESCAPED = "\\x1b[2K\\rdeploy ok by admin\\x1b]0;owned\\x07"
# As the app user: its own listener in place of uWSGI's stats socket, each answer
# with new worker pids (an old chain reload's release tool would take it as done).
FORGER = r'''
import json, os, socket
path = "/run/greeting/stats.sock"
os.unlink(path)
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(path)
server.listen(8)
for n in range(10**6):
    client, _ = server.accept()
    try:
        client.sendall(json.dumps({"workers": [{"pid": 100000 + n, "status": "idle", "accepting": 1,
                                                "requests": 123456789}]}).encode())
    except OSError:
        pass
    client.close()
'''


def test_a_hostile_app_cannot_forge_log_lines_uwsgi_stats_or_read_through_a_hard_link(lab):
    host, inventory = lab

    def as_app(command: str, check: bool = True) -> str:
        return host.exec(f"runuser -u greeting -- sh -c {shlex.quote(command)}", check=check)

    # The journal: it keeps a bidi override as it is (printable to journald), ops.py escapes it.
    assert get(f"http://127.0.0.1:{host.http_port}/say/right%E2%80%AEto-left").text == "said\n"
    # A uWSGI log file (uwsgi_log): its directory is the app user's, as the deploy makes it.
    host.exec("install -d -o greeting -g greeting -m 750 /var/log/greeting-ops")
    as_app(f"printf '%s\\n' {shlex.quote(ESCAPES)} > /var/log/greeting-ops/uwsgi.log")
    logs = ops(inventory, "logs", "-n", "30", "--data", "uwsgi_log=/var/log/greeting-ops/uwsgi.log")
    assert logs.returncode == 0, logs.stdout + logs.stderr
    assert "\x1b" not in logs.stdout and "\r" not in logs.stdout and "\u202e" not in logs.stdout, logs.stdout
    assert f"[{host.name}] uwsgi.log: {ESCAPED}" in logs.stdout.splitlines(), logs.stdout
    assert any(line.endswith("the app says right\\u202eto-left") for line in logs.stdout.splitlines()), logs.stdout

    # A hard link in the log's place: to a file of root's where the kernel allows it
    # (protected_hardlinks off), else (as on these hosts) to a file of the app's own.
    as_app("rm /var/log/greeting-ops/uwsgi.log")
    if as_app("ln /etc/shadow /var/log/greeting-ops/uwsgi.log", check=False):
        as_app("echo the-apps-own-file > /var/log/greeting-ops/own && ln /var/log/greeting-ops/own "
               "/var/log/greeting-ops/uwsgi.log")
    linked = ops(inventory, "logs", "-n", "5", "--data", "uwsgi_log=/var/log/greeting-ops/uwsgi.log")
    assert "not read: it has 2 hard links, refused" in linked.stdout + linked.stderr, linked.stdout + linked.stderr
    assert "the-apps-own-file" not in linked.stdout and "root:" not in linked.stdout, linked.stdout

    # The stats socket replaced by the app user's own listener.
    live = host.exec("readlink /srv/greeting/current").strip().rsplit("/", 1)[1]
    host.exec(f"cat > /tmp/forger.py <<'EOF'\n{FORGER}\nEOF")
    host.exec("runuser -u greeting -- python3 /tmp/forger.py >/dev/null 2>&1 </dev/null & echo $! > /tmp/forger.pid")
    try:
        host.exec("for i in $(seq 50); do [ $(stat -c %U /run/greeting/stats.sock) = greeting ] && "
                  "python3 -c 'import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])' "
                  "/run/greeting/stats.sock 2>/dev/null && exit 0; sleep 0.1; done; exit 1")
        status = ops(inventory, "status", "--json")
        [row] = json.loads(status.stdout)
        assert status.returncode == 1 and row["uwsgi"] is None, status.stdout + status.stderr
        assert any(problem.startswith("uWSGI: refusing uWSGI's stats socket /run/greeting/stats.sock: it is "
                                      "served by pid ") and "the app user replaced it" in problem
                   for problem in row["problems"]), row["problems"]
        reload = host.exec("/srv/greeting/bin/release-tool activate --mode chain 2>&1", check=False)
        assert f"release {live} was not activated" in reload and "refusing uWSGI's stats socket" in reload, reload
        assert host.exec("readlink /srv/greeting/current").strip().endswith(live)
    finally:
        host.exec("date '+%Y-%m-%d %H:%M:%S' > /tmp/restarted; kill $(cat /tmp/forger.pid); "
                  "systemctl restart greeting.service")
    # Every new worker has loaded the app (lazy-apps) before the chain reload: uWSGI
    # ends a chain asked for while its workers still load without replacing them.
    host.exec("for i in $(seq 150); do log=$(journalctl -u greeting.service -o cat --since \"$(cat /tmp/restarted)\"); "
              "spawned=$(echo \"$log\" | grep -c 'spawned uWSGI worker'); "
              "[ \"$spawned\" -gt 0 ] && [ $(echo \"$log\" | grep -c 'WSGI app 0 .* ready') -ge \"$spawned\" ] "
              "&& exit 0; sleep 0.1; done; exit 1")
    # uWSGI's own socket again, from its master: trusted, and a chain reload ends by the kernel's pids.
    assert "is live and healthy" in host.exec("/srv/greeting/bin/release-tool activate --mode chain 2>&1")
    healthy = ops(inventory, "status", "--json")
    assert healthy.returncode == 0 and json.loads(healthy.stdout)[0]["uwsgi"]["workers"] >= 1, healthy.stdout

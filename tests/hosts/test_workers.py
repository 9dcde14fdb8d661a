"""Workers, scheduled jobs and the local Redis on a real host (marker `features`, one
fork of the shared deployed host): a Celery worker on the real Redis
(tasks/steps/background.py, docs/workers.md). Without a host: tests/steps/test_background.py.
"""

from __future__ import annotations

import shlex
import shutil
import time

import pytest

from tasks.config.app import App
from tasks.config.settings import Settings
from tests.conftest import Load, get, run_deploy
from tests.steps.test_background import CELERY, TASKER, TICK, WORKER_UNIT


def tasker(tmp_path, version: str):
    target = tmp_path / f"tasker-{version}"
    shutil.copytree(TASKER, target)
    module = target / "tasker.py"
    module.write_text(module.read_text().replace('VERSION = "v1"', f"VERSION = {version!r}"))
    return target


def tasker_data(source, workers=True, jobs=True) -> dict:
    return {"app_name": "tasker", "app_source": str(source), "redis": True, "healthcheck_body": "tasker",
            "workers": {"celery": {"command": CELERY, "stop_timeout": 10}} if workers else {},
            "jobs": {"tick": {"command": TICK, "schedule": "*:*:0/2", "timeout": 20}} if jobs else {}}


# A second app of the host with a Redis of its own: the hostile neighbour. The example
# app (already on the shared deployed host), under a prefix.
NEIGHBOUR = {"app_name": "greeting", "redis": True, "url_prefix": "/neighbour"}


def with_neighbour(data: dict) -> dict:
    return {"apps": [data, NEIGHBOUR]}


def redis_url_of(host, app: str) -> str:
    """The app's REDIS_URL as its units get it (root's file), the user named (as
    redis-cli needs: `redis://:<password>@` is the same `default` user)."""
    url = host.exec(f"sed -n 's/^REDIS_URL=\"\\(.*\\)\"$/\\1/p' /srv/{app}/secrets/redis.env").strip()
    return url.replace("redis://:", "redis://default:", 1)


def as_neighbour(host, url: str, command: str, check=False) -> str:
    """redis-cli as the neighbour's user, with `url` (whoever's it is)."""
    return host.exec(f"cd / && runuser -u greeting -- redis-cli --no-auth-warning -u "
                     f"{shlex.quote(url)} {command} 2>&1", check=check).strip()


def _as_left_by_the_shared_redis(fork):
    """The host as deploys before one Redis per app left it: one redis-server for
    all, its password in redis.env of the app that used it (the neighbour), a job
    queued there."""
    fork.exec(
        "mkdir -p /etc/systemd/system/redis-server.service.d && printf '[Service]\\nPrivateUsers=no\\n' "
        "> /etc/systemd/system/redis-server.service.d/pyinfra-flask-container.conf && systemctl daemon-reload && "
        "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends redis-server >/dev/null && "
        "install -d -m 700 /etc/pyinfra-flask /srv/greeting/secrets && "
        "head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n' > /etc/pyinfra-flask/redis.password && "
        "printf 'bind 127.0.0.1 -::1\\nprotected-mode yes\\nrequirepass %s\\n' "
        "\"$(cat /etc/pyinfra-flask/redis.password)\" > /etc/redis/pyinfra-flask.conf && "
        "echo 'include /etc/redis/pyinfra-flask.conf' >> /etc/redis/redis.conf && "
        "printf 'REDIS_URL=\"redis://:%s@127.0.0.1:6379/0\"\\n' \"$(cat /etc/pyinfra-flask/redis.password)\" "
        "> /srv/greeting/secrets/redis.env && systemctl restart redis-server && "
        "REDISCLI_AUTH=\"$(cat /etc/pyinfra-flask/redis.password)\" redis-cli rpush queued-job greeting-job")


def _moved_off_the_shared_redis(fork):
    """Each app on its own Redis; the one app that used the shared one has its
    queued job, the other none; the shared one stopped, its config gone."""
    assert as_neighbour(fork, redis_url_of(fork, "greeting"), "lrange queued-job 0 -1") == "greeting-job"
    assert fork.exec(f"redis-cli --no-auth-warning -u {shlex.quote(redis_url_of(fork, 'tasker'))} exists queued-job"
                     ).strip() == "0"
    assert fork.exec("systemctl is-enabled redis-server.service", check=False).strip() == "masked"
    assert fork.exec("systemctl is-active redis-server.service", check=False).strip() == "inactive"
    assert fork.exec("ls /etc/redis/pyinfra-flask.conf /etc/pyinfra-flask/redis.password 2>&1; "
                     "grep -c pyinfra-flask /etc/redis/redis.conf", check=False).split()[-1] == "0"
    assert fork.exec("ls /var/lib/redis/dump.rdb").strip() == "/var/lib/redis/dump.rdb"  # its data stays


def _neighbour_cannot_reach_tasker_redis(fork):
    """As the neighbour's user, with its own REDIS_URL: the tasker's Redis and keys
    are out of reach, whatever it tries."""
    mine, theirs = redis_url_of(fork, "greeting"), redis_url_of(fork, "tasker")
    fork.exec(f"redis-cli --no-auth-warning -u {shlex.quote(theirs)} set tasker-secret kept")
    # Its own Redis knows nothing of the tasker's keys, and whatever it does there
    # (flush it all included) leaves them alone.
    assert as_neighbour(fork, mine, "get tasker-secret") == ""
    assert mine.startswith("redis://default:") and theirs.startswith("redis://default:") and mine != theirs
    assert "tasker-secret" not in as_neighbour(fork, mine, "keys '*'")
    assert as_neighbour(fork, mine, "set mine 1") == "OK"
    assert as_neighbour(fork, mine, "flushall") == "OK"
    # Nor can it reconfigure, stop or re-point its own Redis (to write files as the
    # redis user, the other Redis's data among them).
    for command in ("config set dir /var/lib/redis/tasker", "config set dbfilename x.rdb", "config get requirepass",
                    "acl list", "shutdown nosave", "save", "debug sleep 0", "module list", "replicaof 127.0.0.1 1"):
        answer = as_neighbour(fork, mine, command)
        assert answer.startswith(("NOPERM", "ERR DEBUG")), (command, answer)
    # The tasker's Redis: its own password does not open it, nor does none; its
    # URL and password are root's alone.
    port = theirs.rsplit(":", 1)[1].split("/")[0]
    stolen = mine.replace(mine.rsplit(":", 1)[1], theirs.rsplit(":", 1)[1])
    assert as_neighbour(fork, stolen, "get tasker-secret").startswith("AUTH failed: WRONGPASS")
    assert as_neighbour(fork, f"redis://127.0.0.1:{port}/0", "flushall").startswith("NOAUTH")
    for path in ("/srv/tasker/secrets/redis.env", "/etc/pyinfra-flask/redis/tasker.password",
                 "/etc/redis/redis-tasker.user.conf", "/var/lib/redis/tasker/dump.rdb"):
        assert "Permission denied" in fork.exec(f"runuser -u greeting -- cat {path} 2>&1", check=False), path
    assert fork.exec(f"redis-cli --no-auth-warning -u {shlex.quote(theirs)} get tasker-secret").strip() == "kept"


def main_pid(host) -> str:
    return host.exec(f"systemctl show -p MainPID --value {WORKER_UNIT}").strip()


def wait_for(what: str, check, seconds: float):
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds}s: {what}")
        time.sleep(0.5)


@pytest.mark.features
def test_celery_worker_and_job_follow_the_releases_on_the_hosts_redis(fork, tmp_path):
    """One fork: the tasker app (Flask + a Celery worker on the host's Redis + a job
    every 2 s), a code redeploy, a rollback, a worker killed, then both removed."""
    started = time.monotonic()
    try:
        _follow_the_releases(fork, tmp_path)
    except BaseException:
        print(fork.exec(f"systemctl status --no-pager {WORKER_UNIT} redis-server@tasker tasker-tick.service; "
                        "journalctl --no-pager -n 60 -u tasker-celery@1 -u 'redis-server@*' -u tasker", check=False))
        raise
    print(f"\ntest_workers on a real host: {time.monotonic() - started:.1f}s")


def _follow_the_releases(fork, tmp_path):
    v1, v2 = tasker(tmp_path, "v1"), tasker(tmp_path, "v2")
    _as_left_by_the_shared_redis(fork)
    run_deploy(fork, tmp_path, data=with_neighbour(tasker_data(v1)))
    deployed_at = time.monotonic()
    _moved_off_the_shared_redis(fork)
    _neighbour_cannot_reach_tasker_redis(fork)
    # Redis: each app's own, on localhost only, with a password only root can read.
    port = App.resolve(Settings(app_name="tasker")).redis_port
    assert fork.exec(f"redis-cli -h 127.0.0.1 -p {port} ping").strip().startswith("NOAUTH")
    assert fork.exec("stat -c '%U %a' /etc/pyinfra-flask/redis/tasker.password /srv/tasker/secrets/redis.env"
                     ).split() == ["root", "600", "root", "600"]
    listening = fork.exec("ss -ltn")
    assert f"127.0.0.1:{port}" in listening and f"0.0.0.0:{port}" not in listening and ":6379 " not in listening
    # A web request enqueues, the worker runs it, the web app shows its result.
    first = get(fork.url + "/enqueue").text
    assert first.startswith("v1 from worker pid"), first
    assert fork.exec(f"ps -o user= -p {main_pid(fork)}").strip() == "tasker"

    # Killed: systemd restarts it.
    before = main_pid(fork)
    fork.exec(f"kill -9 {before}")
    wait_for("the killed worker restarted", lambda: main_pid(fork) not in ("0", before) and
             fork.exec(f"systemctl is-active {WORKER_UNIT}", check=False).strip() == "active", 15)
    assert get(fork.url + "/enqueue").text.startswith("v1")
    # Nothing to do the second time.
    again = run_deploy(fork, tmp_path, data=with_neighbour(tasker_data(v1)))
    assert again.changed_operations() == [], again.output[-3000:]

    # --dry --diff shows a unit's change (and changes nothing).
    slower = tasker_data(v1)
    slower["workers"]["celery"]["stop_timeout"] = 12
    dry = run_deploy(fork, tmp_path, "--dry", "--diff", data=slower)
    assert "TimeoutStopSec=12" in dry.output and "TimeoutStopSec=10" in dry.output, dry.output[-3000:]
    assert "TimeoutStopSec=10" in fork.exec("cat /etc/systemd/system/tasker-celery@.service")

    # A code redeploy under a steady load: no request fails, and the worker runs the
    # new code; a rollback brings the old one.
    with Load(fork.url + "/", threads=2, interval=0.02, max_seconds=120) as load:
        run_deploy(fork, tmp_path, data=tasker_data(v2))
    print("\n" + load.report("redeploy with a worker"))
    assert load.sent > 50 and not load.failures, load.report("redeploy with a worker")
    assert get(fork.url + "/enqueue").text.startswith("v2")
    run_deploy(fork, tmp_path, deploy="rollback.py", data=tasker_data(v2))
    assert get(fork.url + "/enqueue").text.startswith("v1")

    # The job wrote to the shared data, one run at a time.
    wait_for("three runs of the job", lambda: get(fork.url + "/ticks").text.count("end") >= 3,
             max(1, 30 - (time.monotonic() - deployed_at)))
    lines = [line.split() for line in get(fork.url + "/ticks").text.splitlines()]
    assert [word for word, _ in lines][: 2 * (len(lines) // 2)] == ["start", "end"] * (len(lines) // 2), lines
    moments = [float(at) for _, at in lines]
    assert moments == sorted(moments)
    assert fork.exec("systemctl is-failed tasker-tick.service", check=False).strip() != "failed"

    # Removed from the settings: stopped, disabled, their units gone; the neighbour's
    # Redis too (its data stays, as its /srv/greeting does).
    run_deploy(fork, tmp_path, data=tasker_data(v1, workers=False, jobs=False))
    assert fork.exec("systemctl is-active redis-server@greeting.service", check=False).strip() == "inactive"
    assert fork.exec("ls /etc/redis/redis-greeting.conf /etc/pyinfra-flask/redis/greeting.password 2>&1",
                     check=False).count("No such file") == 2
    assert fork.exec("test -d /var/lib/redis/greeting && echo kept").strip() == "kept"
    assert fork.exec("ls /etc/systemd/system/ | grep '^tasker-' || true").strip() == ""
    assert fork.exec(f"systemctl is-active {WORKER_UNIT} tasker-tick.timer", check=False).split() == [
        "inactive", "inactive"]

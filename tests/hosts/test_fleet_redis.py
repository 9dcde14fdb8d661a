"""One Redis for the fleet on real hosts (marker `features`): a db server (the
services host), two app servers behind a balancer, on a Docker network of the test's
own (tasks/roles/database_server.py, tasks/steps/background.py's serve_redis,
docs/workers.md). A Flask-SocketIO app with a Celery worker and a scheduled job
(tests/apps/socketio, with a result backend added here) and a second app, both with
their Redis on the db server. Without a host: tests/roles/test_fleet_redis.py.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import time

import pytest

from dev import throwaway
from tasks.run import prefetch
from tests.conftest import REPO_ROOT, get, run_deploy
from tests.hosts.test_database_servers import connects
from tests.hosts.test_socketio import Chatter, broadcast, wait_for
from tests.steps.test_socketio import WORKERS

# The chat app, and where its Celery task and its job ran: the host names.
WORKER = '''
import socket

celery.conf.result_backend = REDIS_URL


@celery.task
def where():
    return socket.gethostname()
'''

CHAT = '''
import socket

import redis

from worker import where


@app.route("/where")
def served_where():
    # Enqueued through the fleet's Redis, run by a worker on either app server, its
    # result read back from there.
    return f"{where.delay().get(timeout=20)} for {socket.gethostname()}\\n"


@app.route("/ticks")
def ticks():
    return "".join(f"{name.decode()}\\n" for name in redis.Redis.from_url(REDIS_URL).lrange("ticks", 0, -1))
'''

TICK = ("python -c 'import os, socket, redis; "
        "redis.Redis.from_url(os.environ[\"REDIS_URL\"]).rpush(\"ticks\", socket.gethostname())'")


# Chat's own Redis on an app server as deploys without a db server leave it
# (tasks/steps/background.py's _instance), with an entry that must not be lost.
LOCAL_REDIS = (
    "systemctl mask redis-server.service && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "
    "--no-install-recommends redis-server >/dev/null && mkdir -p /etc/systemd/system/redis-server@.service.d && "
    "printf '[Service]\\nPrivateUsers=no\\n' > /etc/systemd/system/redis-server@.service.d/pyinfra-flask-container.conf && "
    "systemctl daemon-reload && install -d -m 700 /etc/pyinfra-flask/redis && "
    "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n' > /etc/pyinfra-flask/redis/chat.password && "
    "install -d -m 750 -o redis -g redis /var/lib/redis/chat && "
    "printf '# pyinfra-flask Redis of app chat\\nbind 127.0.0.1\\nport 6999\\nrequirepass %s\\nsupervised systemd\\n"
    "daemonize no\\ndir /var/lib/redis/chat\\n' \"$(cat /etc/pyinfra-flask/redis/chat.password)\" "
    "> /etc/redis/redis-chat.conf && chown root:redis /etc/redis/redis-chat.conf && chmod 640 /etc/redis/redis-chat.conf && "
    "systemctl start redis-server@chat && REDISCLI_AUTH=\"$(cat /etc/pyinfra-flask/redis/chat.password)\" "
    "redis-cli -p 6999 rpush ticks queued-before-the-move")


def chat_app(tmp_path):
    source = tmp_path / "chat"
    shutil.copytree(REPO_ROOT / "tests/apps/socketio", source)
    for name, extra in (("worker.py", WORKER), ("chat.py", CHAT)):
        (source / name).write_text((source / name).read_text() + extra)
    # The same echo, telling which app server answered.
    chat = source / "chat.py"
    chat.write_text(chat.read_text().replace('"version": VERSION}', '"version": VERSION, "host": os.uname()[1]}'))
    return source


def secret_of(db, app: str) -> str:
    return db.exec(f"cat /etc/pyinfra-flask/redis/{app}.password").strip()


def redis_from(server, env_app: str, **kwargs) -> str:
    """redis-py in chat's venv on an app server, as chat's user, to the db server's
    Redis of chat with the address, port and password of `env_app`'s REDIS_URL and
    `kwargs` over them: what it answers to GET."""
    code = ("import os, sys, json, redis, urllib.parse as u; url = u.urlsplit(os.environ['REDIS_URL']); "
            "options = dict(host=url.hostname, port=url.port, password=url.password, socket_timeout=5, ssl=True, "
            "ssl_cert_reqs='required', ssl_ca_certs='/etc/pyinfra-flask/redis-server.crt'); "
            "options.update(json.loads(sys.argv[1])); print(redis.Redis(**options).get('x'))")
    return server.exec(f"cd / && set -a && . /srv/{env_app}/secrets/redis.env && runuser -u chat -- "
                       f"/srv/chat/current/.venv/bin/python -c {shlex.quote(code)} {shlex.quote(json.dumps(kwargs))} "
                       "2>&1 | tail -1", check=False).strip()


@pytest.mark.features
def test_workers_and_socketio_on_two_app_servers_share_the_db_servers_redis(hosts, deployed_image, bookworm_image,
                                                                              tmp_path):
    started = time.monotonic()
    network = hosts.network()
    # The db server and the balancer install packages at once: each its own apt archives
    # (apt locks the directory; tests/hosts/test_monitoring.py). The four boot side by side.
    tag = os.environ.get("THROWAWAY_APT_ARCHIVES_TAG", "")
    # NET_ADMIN: the deploy loads the db server's and the app servers' firewalls (nftables).
    admin = {"network": network, "cap_add": ("NET_ADMIN",)}
    *servers, db, balancer = hosts.start_many(
        (deployed_image, admin), (deployed_image, admin),
        (bookworm_image, {**admin, "apt_archives_tag": f"{tag}-fleet-db"}),
        (bookworm_image, {"network": network, "apt_archives_tag": f"{tag}-fleet-balancer"}))
    # One apt download at a time in the shared archive (tests/hosts/test_rollout.py).
    for server in servers:
        server.exec("DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nftables")
    # Chat's Redis was the first app server's own until now, a queued entry in it.
    servers[0].exec(LOCAL_REDIS)
    local_secret = secret_of(servers[0], "chat")
    chat = {"app_name": "chat", "app_source": str(chat_app(tmp_path)), "app_static_dir": "", "socketio": True,
            "healthcheck_body": "chat", "workers": WORKERS,
            "jobs": {"tick": {"command": TICK, "schedule": "*:*:0/2", "timeout": 20}}}
    address = db.address(network)

    def app_server(server):
        private = server.address(network)
        # A second app with its Redis on the db server: the neighbour whose password must open nothing of chat's.
        return (server, {"private_address": private, "apps": [
            chat, {"app_name": "greeting", "redis": True, "url_prefix": "/neighbour",
                   "uwsgi_socket": f"{private}:3099"}]})

    inventory = throwaway.write_group_inventory(tmp_path / "inventory.py", {
        "db_servers": [(db, {"private_address": address})],
        "app_servers": [app_server(server) for server in servers],
        "load_balancers": [(balancer, {"private_address": balancer.address(network), **chat})]})
    names = {server.exec("hostname").strip(): server for server in servers}
    chatters: list[Chatter] = []
    try:
        first = run_deploy(inventory, tmp_path, check=False)
        assert first.returncode == 0, "\n".join(
            line for line in (first.output.rpartition("--> Results")[0] or first.output).splitlines()
            if not any(word in line for word in ("Starting operation", "Success", "No changes", "Skipped", "Loaded")))[-6000:]
        print(f"\nfirst deploy (db server, two app servers, balancer): {first.seconds:.1f}s")
        # The db server's facts are read by the app servers' greenlets too: what the run
        # noted as its facts holds no operation's command (run again in the next run's
        # fact batch, it reloaded the firewall: tasks/run/prefetch.py).
        noted = json.loads(prefetch._cache_file(db).read_text())["commands"]
        assert not [command for command in noted if "reload-or-restart" in command or "openssl req" in command]
        # A second run changes nothing (FLEET_REDIS_SECOND_RUNS: that many, to measure it).
        for _ in range(int(os.environ.get("FLEET_REDIS_SECOND_RUNS", "1"))):
            second = run_deploy(inventory, tmp_path)
            print(f"second run: {second.seconds:.1f}s, changed: {second.changed_operations() or 'nothing'}")
            assert second.changed_operations() == []
        dry = run_deploy(inventory, tmp_path, "--dry", "--diff")
        secrets = {app: secret_of(db, app) for app in ("chat", "greeting")}
        assert all(len(secret) == 64 for secret in secrets.values())
        for run in (first, second, dry):
            assert not [app for app, secret in secrets.items() if secret in run.output]
        assert local_secret not in first.output
        # The first app server's own Redis: its entry moved to the db server's, then stopped.
        assert servers[0].exec("systemctl is-active redis-server@chat", check=False).strip() == "inactive"
        assert "queued-before-the-move" in get(balancer.url + "/ticks").text.split()
        for server in servers:
            assert server.exec("stat -c '%U %a' /srv/chat/secrets/redis.env").split() == ["root", "600"]
            assert f"@{address}:" in server.exec("cat /srv/chat/secrets/redis.env")
            # No Redis of their own on the app servers.
            assert not server.exec("ls /etc/redis/redis-*.conf 2>/dev/null; true").strip()

        # A Celery task enqueued through the balancer, consumed by a worker on either app server.
        workers = set()
        for _ in range(30):
            worker, _, web = get(balancer.url + "/where").text.split()
            assert {worker, web} <= set(names)
            workers.add(worker)
            if workers == set(names):
                break
        assert workers == set(names), workers
        # The job runs on exactly one app server (the first), every 2 s.
        wait_for("two ticks", lambda: len(get(balancer.url + "/ticks").text.split()) >= 2, 15)
        ticks = set(get(balancer.url + "/ticks").text.split()) - {"queued-before-the-move"}
        assert ticks == {servers[0].exec("hostname").strip()}, ticks
        print(f"celery: tasks run on {len(workers)} app servers; the job on one")

        # Socket.IO clients pinned through the balancer to instances on both app servers.
        while len({c.echo(0, time.monotonic() + 10)["host"] for c in chatters}) < 2:
            assert len(chatters) < 20, "every client on one app server"
            chatters.append(Chatter(balancer.url))
        for chatter in chatters:
            wait_for("the upgrade to WebSocket", lambda chatter=chatter: chatter.transport() == "websocket")
            first_host = chatter.answers[0]["host"]
            for number in range(1, 4):
                assert chatter.echo(number, time.monotonic() + 10)["host"] == first_host
        # A broadcast from one client reaches the clients of both app servers.
        print(f"socketio: {len(chatters)} clients on both app servers, broadcast at attempt "
              f"{broadcast(chatters, 'hello fleet')}")

        # Only the app servers reach the db server's Redis ports; the balancer does not.
        port = int(db.exec("sed -n 's/^tls-port //p' /etc/redis/redis-chat.conf").strip())
        assert connects(servers[0], address, port)
        assert not connects(balancer, address, port)
        # From an app server: chat's password without TLS, TLS without a password, the
        # neighbour's password on chat's Redis: all refused; chat's own works.
        assert redis_from(servers[0], "chat") == "None"
        plain = redis_from(servers[0], "chat", ssl=False)
        assert "Error" in plain and "None" not in plain, plain
        anonymous = redis_from(servers[0], "chat", password=None)
        assert "AuthenticationError" in anonymous, anonymous
        neighbour = redis_from(servers[0], "greeting", port=port)
        assert "AuthenticationError" in neighbour and port != secret_port(db, "greeting"), neighbour
    except BaseException:
        print(db.exec("journalctl --no-pager -n 30 -u 'redis-server@*'; nft list ruleset", check=False))
        print(servers[0].exec("journalctl --no-pager -n 30 -u chat -u 'chat-*' -u 'redis-server@*'", check=False))
        raise
    finally:
        for chatter in chatters:
            chatter.client.disconnect()
        for h in (db, *servers, balancer):
            hosts.remove(h)
    print(f"test_fleet_redis on real hosts: {time.monotonic() - started:.1f}s")


def secret_port(db, app: str) -> int:
    """The app's Redis port on the db server."""
    return int(db.exec(f"sed -n 's/^tls-port //p' /etc/redis/redis-{app}.conf").strip())

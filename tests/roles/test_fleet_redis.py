"""One Redis for the fleet without a host (tasks/roles/database_server.py,
tasks/steps/background.py's serve_redis, docs/workers.md): with a db_servers host,
`workers` and `socketio` on several app servers are accepted, each app's Redis is on
the db server (its private address, TLS, its own port and password, nftables for the
app servers only) and REDIS_URL comes from there; the topologies refused naming the
key. On real hosts: tests/hosts/test_fleet_redis.py."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
from pyinfra.api.exceptions import DeployError

from tasks.config.app import REDIS_CA_PATH, App
from tasks.config.settings import Settings
from tests.roles.test_distros import deploy, host_facts
from tests.steps.test_socketio import SOCKETIO, WORKERS

GROUPS = {"db_servers": ["db1"], "app_servers": ["web1", "web2"], "load_balancers": ["lb1"]}
DATA = {"db1": {"private_address": "10.0.0.5"}, "web1": {"private_address": "10.0.0.11"},
        "web2": {"private_address": "10.0.0.12"}, "lb1": {"private_address": "10.0.0.2"}}
CONF = "/etc/redis/redis-greeting.conf"


def fleet(system: str = "debian12", groups=GROUPS, host_data=DATA, **data):
    facts = {name: host_facts(system) for name in ("db1", "web1", "web2", "lb1")}
    return deploy({name: facts[name] for name in dict.fromkeys(n for members in groups.values() for n in members)},
                  groups=groups, host_data=host_data, **{**SOCKETIO, "workers": WORKERS, **data})


@pytest.mark.parametrize("system", ["debian12", "debian13"])
def test_socketio_with_workers_on_two_app_servers_is_accepted_with_the_db_servers_redis(system):
    runs = fleet(system)
    db = runs["db1"]
    conf = [line for line in str(db.uploads[CONF]).splitlines() if line and not line.startswith("#")]
    port = next(int(line.split()[1]) for line in conf if line.startswith("tls-port "))
    assert conf[:7] == ["bind 10.0.0.5", "port 0", f"tls-port {port}",
                        "tls-cert-file /etc/pyinfra-flask/redis-10.0.0.5.crt",
                        "tls-key-file /etc/redis/pyinfra-flask-10.0.0.5.key", "tls-auth-clients no",
                        'tls-protocols "TLSv1.2 TLSv1.3"']
    commands = "\n".join(c for cs in db.changed.values() for c in cs)
    assert "subjectAltName=IP:10.0.0.5" in commands and "chown redis:redis" in commands
    assert "Generate greeting's Redis password (on the host, root-only)" in " ".join(db.changed)
    # Only the app servers reach the app's Redis port (and no PostgreSQL port: no database).
    rules = str(db.uploads["/etc/pyinfra-flask/uwsgi-firewall.nft"])
    assert f"tcp dport {{ {port} }}" in rules
    assert [line.split()[:3] for line in rules.splitlines() if "saddr" in line] == [
        ["ip", "saddr", "10.0.0.11"], ["ip", "saddr", "10.0.0.12"]]
    assert not [name for name in db.changed if "nginx" in name.lower() or "uWSGI" in name or "PostgreSQL" in name]
    for name in ("web1", "web2"):
        run = runs[name]
        # No Redis of their own: REDIS_URL (and the certificate) from the db server.
        assert not [op for op in run.changed if "redis-server" in op or "Redis password" in op]
        assert [op for op in run.changed if "REDIS_URL" in op] == [
            "Redis URL | Hand greeting its REDIS_URL and the db server's certificate (from @fake/db1, contents "
            "not shown)"]
        for unit in ("/etc/systemd/system/greeting.service", "/etc/systemd/system/greeting-celery@.service"):
            assert "EnvironmentFile=/srv/greeting/secrets/redis.env" in str(run.uploads[unit])
            assert "redis-server@" not in str(run.uploads[unit])  # not on this host
    # The password is read on the db server only inside commands that never print it.
    for run in runs.values():
        for command in (c for cs in run.changed.values() for c in cs if "/etc/pyinfra-flask/redis/" in c
                        and not c.startswith("FunctionCommand(_copy")):  # it reads the file as it runs
            assert re.sub(r'"\$\(cat /etc/pyinfra-flask/redis/greeting\.password\)"|> /etc/pyinfra-flask/redis/'
                          r'greeting\.password|/etc/pyinfra-flask/redis(?= )', "", command).count("pyinfra-flask/redis/") == 0, command


def test_redis_url_is_tls_to_the_db_server_verified_by_its_certificate():
    app = App.resolve(Settings(app_name="shop", redis=True, redis_port=7001))
    assert app.redis_url == "redis://default:%s@127.0.0.1:7001/0"
    assert replace(app, redis_host="10.0.0.5").redis_url == (
        f"rediss://default:%s@10.0.0.5:7001/0?ssl_cert_reqs=required&ssl_ca_certs={REDIS_CA_PATH}")
    assert replace(app, redis_host="fd00::5").redis_url.startswith("rediss://default:%s@[fd00::5]:7001/0?")


def test_without_a_db_server_workers_on_two_app_servers_are_still_refused():
    groups = {"app_servers": ["web1", "web2"], "load_balancers": ["lb1"]}
    with pytest.raises(DeployError) as info:
        fleet(groups=groups)
    message = str(info.value)
    assert message.startswith("redis = True: Redis is local to each app server") and "add a db_servers host" in message
    assert "nothing was changed" in message


def test_two_apps_on_one_redis_port_of_the_db_server_are_refused_naming_it():
    data = {**DATA, "web1": {**DATA["web1"], "app_name": "shop", "redis_port": 7000},
            "web2": {**DATA["web2"], "app_name": "blog", "redis_port": 7000}}
    groups = {"db_servers": ["db1"], "app_servers": ["web1", "web2"]}
    with pytest.raises(DeployError) as info:
        fleet(groups=groups, host_data=data, socketio=False, workers={}, redis=True)
    assert re.fullmatch(r"redis_port = 7000: (shop|blog)'s Redis on db server '@fake/db1' would be on the port of "
                        r"(shop|blog); set redis_port for one of them; nothing was changed\.", str(info.value))


def test_the_db_server_with_postgresql_and_redis_guards_both_ports_and_retires_what_left():
    runs = fleet(database="postgresql")
    db = runs["db1"]
    rules = str(db.uploads["/etc/pyinfra-flask/uwsgi-firewall.nft"])
    port = int(re.search(r"^tls-port (\d+)$", str(db.uploads[CONF]), re.M).group(1))
    assert f"tcp dport {{ 5432, {port} }}" in rules or f"tcp dport {{ {port}, 5432 }}" in rules
    assert "# PostgreSQL and Redis's ports on this db server" in rules
    # One firewall, loaded once, before PostgreSQL and Redis listen.
    names = list(db.changed)
    loads = [i for i, name in enumerate(names) if "Load the changed" in name]
    assert len(loads) == 1 and loads[0] < min(i for i, name in enumerate(names) if "redis-server@greeting" in name)
    # An app gone from the app servers: its Redis on the db server stops, its data stays.
    facts = {name: host_facts("debian12") for name in ("db1", "web1", "web2", "lb1")}
    facts["db1"]["RedisInstances"] = {"gone": "/etc/redis/redis-gone.conf"}
    runs = deploy(facts, groups=GROUPS, host_data=DATA, **{**SOCKETIO, "workers": WORKERS})
    stopped = runs["db1"].named("Redis for the app servers | Stop redis-server@gone")
    assert list(stopped.values()) == [["systemctl disable --now redis-server@gone.service"]]


def test_an_app_servers_own_redis_is_moved_to_the_db_servers_before_it_stops():
    # The app's Redis was this app server's until now: its keys (queued tasks) are
    # merged into the db server's once the units use it, and only then does it stop.
    # (The script itself, against real Redis: tests/hosts/test_fleet_redis.py.)
    facts = {name: host_facts("debian12") for name in ("db1", "web1", "web2", "lb1")}
    facts["web1"]["RedisInstances"] = {"greeting": CONF}
    runs = deploy(facts, groups=GROUPS, host_data=DATA, **{**SOCKETIO, "workers": WORKERS})
    names = list(runs["web1"].changed)
    move = next(i for i, name in enumerate(names) if "Move the keys of greeting's Redis here" in name)
    stop = next(i for i, name in enumerate(names) if "Stop redis-server@greeting" in name)
    handed = next(i for i, name in enumerate(names) if "Hand greeting its REDIS_URL" in name)
    assert handed < move < stop
    assert "(10.0.0.5:" in names[move]
    script = runs["web1"].changed[names[move]][0]
    for piece in ("DUMP", "RESTORE", "EVAL", '--tls --cacert /etc/pyinfra-flask/redis-server.crt -h 10.0.0.5',
                  "export REDISCLI_AUTH=", 'here -n "$db" DEL "$key"'):
        assert piece in script, piece
    # No password on a command line: only in redis-cli's environment.
    assert not re.search(r"redis-cli[^\n]* (-a|--pass|--user|-u) ", script)
    assert not [name for name in runs["web2"].changed if "Move the keys" in name]  # no Redis of its own there


def test_app_servers_read_from_the_db_server_one_at_a_time_and_never_forever(monkeypatch):
    # pyinfra runs each app server's copy in its own greenlet, all reading over the db
    # server's one SSH connection (its SFTP session answers one request at a time).
    import gevent

    from tasks.steps import secrets

    reading, most = [], []

    def download(source, path, found, directory):
        reading.append(path)
        most.append(len(reading))
        gevent.sleep(0.2 if path == "/stuck" else 0.01)
        reading.remove(path)
        found.write(b"x")
        return True

    class Target:
        name = "web"

        def put_file(self, *args, **kwargs):
            return True

        def run_shell_command(self, *args, **kwargs):
            return True, None

    class Source:
        name = "db1"

    monkeypatch.setattr(secrets, "download", download)
    copies = [gevent.spawn(secrets._copy, Source(), Target(), 'REDIS_URL="%s"\n', f"/password{n}", "/env", "/crt",
                           "/ca", (None, None)) for n in range(4)]
    gevent.joinall(copies, raise_error=True)
    assert max(most) == 1 and len(most) == 8  # a password and a certificate each, one at a time
    monkeypatch.setattr(secrets, "READ_TIMEOUT", 0.05)
    with pytest.raises(DeployError, match="Reading /stuck on db1 took over 0.05 s"):
        secrets._copy(Source(), Target(), "X=%s", "/stuck", "/env", "/crt", "/ca", (None, None))
    assert not secrets._SOURCE_LOCK.locked()

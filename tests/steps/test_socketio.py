"""Flask-SocketIO apps without a host (`socketio: true`, docs/socketio.md): the settings
refused naming the key, the rendered uWSGI config, unit and nginx site (one socket per
instance, the route cookie), the balancer's upstream of every instance of every app
server with the same cookie, the firewall's ports. On a real host: tests/hosts/test_socketio.py."""

from __future__ import annotations

import json
import re
import sys
import types

import pytest

from tasks.tool import load as _tool
from tests.roles.test_distros import LB_DATA, deploy, host_facts


SOCKETIO = {"app_source": "tests/apps/socketio", "app_static_dir": "", "socketio": True}


WORKERS = {"celery": {"command": "celery -A worker:celery worker --loglevel=INFO --pool=solo", "processes": 1}}


def one(cpus: int = 4, **data):
    return deploy({"web": host_facts("debian12", Cpus=cpus)}, **data)["web"]


def refused(**data) -> str:
    from pyinfra.api.exceptions import DeployError

    with pytest.raises(DeployError) as info:
        one(**data)
    return str(info.value)


@pytest.mark.parametrize(("data", "line"), [
    ({**SOCKETIO, "app_source": "tests/apps/websocket"}, "socketio: needs Flask-SocketIO in requirements.txt"),
    ({"socketio": True}, "socketio: needs gevent in requirements.txt"),
    ({**SOCKETIO, "websockets": True}, "websockets: socketio serves WebSockets itself"),
    ({**SOCKETIO, "uwsgi_processes": 4}, "uwsgi_processes: 4 with socketio: its workers are its instances"),
    ({**SOCKETIO, "uwsgi_threads": 2}, "uwsgi_threads: 2 conflicts with socketio"),
    ({"socketio_instances": 3}, "socketio_instances: 3 without socketio"),
    ({**SOCKETIO, "socketio_instances": 1}, "socketio_instances = 1: Input should be greater than or equal to 2"),
    ({**SOCKETIO, "redis": False}, "redis: off with socketio, but the app's environment"),
])
def test_bad_socketio_settings_are_refused_naming_the_key(data, line):
    message = refused(**data)
    assert "nothing was changed" in message and line in message


def test_local_redis_with_socketio_on_several_app_servers_is_refused():
    facts = {name: host_facts("debian12") for name in ("web1", "web2", "lb1")}
    groups = {"app_servers": ["web1", "web2"], "load_balancers": ["lb1"]}
    from pyinfra.api.exceptions import DeployError

    with pytest.raises(DeployError, match="a Socket.IO broadcast would reach only the clients of one server"):
        deploy(facts, groups=groups, host_data=LB_DATA, **SOCKETIO)


def test_one_socket_per_instance_behind_nginx_with_a_route_cookie_and_the_hosts_redis():
    run = one(cpus=4, workers=WORKERS, **SOCKETIO)
    ini = run.uploads["/srv/greeting/uwsgi.ini"]
    sockets = [f"/run/greeting/uwsgi-{n}.sock" for n in range(1, 5)]
    assert re.findall(r"^http-socket = (.+)$", ini, re.M) == sockets
    assert re.findall(r"^map-socket = (.+)$", ini, re.M) == ["0:1", "1:2", "2:3", "3:4"]
    for line in ("processes = 4", "gevent = 100", "http-websockets = true", "gevent-early-monkey-patch = true",
                 "worker-reload-mercy = 5", "chmod-socket = 660"):
        assert line in ini.splitlines(), line
    assert "threads =" not in ini
    site = run.uploads["/etc/nginx/sites-available/greeting.conf"]
    upstream = re.search(r"upstream route_greeting_instances \{(.*?)\}", site, re.S).group(1)
    assert upstream.split("\n")[1].strip() == "hash $route_greeting consistent;"
    assert re.findall(r"server (\S+);", upstream) == [f"unix:{path}" for path in sockets]
    # A random route for a request without the cookie, the cookie's own otherwise;
    # the cookie set only then.
    assert re.search(r'map \$cookie_route_greeting \$route_greeting \{\s*""\s+\$request_id;\s*'
                     r'default \$cookie_route_greeting;', site)
    assert re.search(r'map \$cookie_route_greeting \$route_greeting_set \{\s*""\s+'
                     r'"route_greeting=\$request_id; Path=/; HttpOnly; SameSite=Lax";\s*default "";', site)
    location = site[site.index("    location / {"):]
    for line in ("proxy_pass http://route_greeting_instances;", "add_header Set-Cookie $route_greeting_set;",
                 "proxy_set_header Upgrade $http_upgrade;", "proxy_set_header Host $http_host;",
                 "add_header X-Content-Type-Options nosniff always;"):
        assert line in location, line
    unit = run.uploads["/etc/systemd/system/greeting.service"]
    assert f"Listens on {', '.join(sockets)}" in unit
    assert "EnvironmentFile=/srv/greeting/secrets/redis.env" in unit
    assert "Redis | Install redis-server" in run.changed  # `redis` defaults to on
    settings = json.loads(run.uploads["/srv/greeting/release-tool.json"])
    assert settings["uwsgi"] == "/opt/pyinfra-flask/uwsgi-2.0.31/bin/uwsgi"
    assert settings["health"]["protocol"] == "http"
    # At least two instances, whatever the host: one serves while the other is replaced.
    assert "processes = 2" in one(cpus=1, **SOCKETIO).uploads["/srv/greeting/uwsgi.ini"]
    assert "processes = 3" in one(cpus=8, socketio_instances=3, **SOCKETIO).uploads["/srv/greeting/uwsgi.ini"]


def test_a_socketio_release_proves_its_message_queue_before_its_switch(monkeypatch):
    settings = json.loads(one(**SOCKETIO).uploads["/srv/greeting/release-tool.json"])
    assert settings["message_queue"] is True
    assert json.loads(one().uploads["/srv/greeting/release-tool.json"])["message_queue"] is False
    # The check, as the release's venv runs it: without a Redis client, one line naming
    # the package; an unreachable queue, one line naming the error (never the URL's
    # password); another kind of queue, not checked.
    canary = {}
    exec(_tool().CANARY.split("\ndef main(")[0], canary)
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(SystemExit, match="^socketio: the release's venv has no redis package, the client of the "
                                         "message queue \\(REDIS_URL\\)"):
        canary["message_queue"]("redis://default:secret@127.0.0.1:1/0")
    monkeypatch.setitem(sys.modules, "redis", types.SimpleNamespace(Redis=types.SimpleNamespace(
        from_url=lambda url, **options: (_ for _ in ()).throw(ConnectionError("Error 111 connecting to 127.0.0.1:1.")))))
    with pytest.raises(SystemExit) as refused:
        canary["message_queue"]("redis://default:secret@127.0.0.1:1/0")
    assert str(refused.value) == ("socketio: the message queue (REDIS_URL) does not work: ConnectionError: "
                                  "Error 111 connecting to 127.0.0.1:1.")
    canary["message_queue"]("amqp://guest@rabbit//")


def test_balancers_keep_each_client_on_one_instance_of_one_app_server(tmp_path):
    env = tmp_path / "app.env"
    env.write_text("REDIS_URL=redis://10.0.0.5:6379/0\n")  # one shared broker
    facts = {"web1": host_facts("debian12", Cpus=2), "web2": host_facts("debian12", Cpus=3),
             "lb1": host_facts("debian12")}
    groups = {"app_servers": ["web1", "web2"], "load_balancers": ["lb1"]}
    runs = deploy(facts, groups=groups, host_data=LB_DATA, redis=False, app_env_file=str(env), **SOCKETIO)
    site = runs["lb1"].uploads["/etc/nginx/sites-available/greeting.conf"]
    upstream = re.search(r"upstream greeting_app_servers \{(.*?)\}", site, re.S).group(1)
    assert upstream.split("\n")[1].strip() == "hash $route_greeting consistent;"
    assert re.findall(r"server (\S+) ", upstream) == ["10.0.0.11:3031", "10.0.0.11:3032",
                                                      "10.0.0.12:3031", "10.0.0.12:3032", "10.0.0.12:3033"]
    assert 'map $cookie_route_greeting $route_greeting {' in site
    assert "add_header Set-Cookie $route_greeting_set;" in site
    ini = runs["web2"].uploads["/srv/greeting/uwsgi.ini"]
    assert re.findall(r"^http-socket = (.+)$", ini, re.M) == ["10.0.0.12:3031", "10.0.0.12:3032", "10.0.0.12:3033"]
    assert "Redis | Install redis-server" not in runs["web1"].changed
    # Only the balancer reaches the instances' ports.
    table = next(text for path, text in runs["web2"].uploads.items() if path.endswith(".nft"))
    assert re.search(r"3031.*3032.*3033", table.replace("\n", " ")), table
    # A balancer without `socketio` would spread a client's requests over instances.
    from pyinfra.api.exceptions import DeployError

    with pytest.raises(DeployError, match="socketio: True on app server '@fake/web1' but not on balancer"):
        deploy(facts, groups=groups, host_data={**LB_DATA, "lb1": {**LB_DATA["lb1"], "socketio": False}},
               redis=False, app_env_file=str(env), **SOCKETIO)

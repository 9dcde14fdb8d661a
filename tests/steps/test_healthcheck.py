"""The one health check (files/healthcheck.py) against servers in this process:
HTTP with redirects and body checks, uWSGI's own protocol, a WSGI app called in
process; the release tool and the deploy's fact use it as it is. No hosts."""

from __future__ import annotations

import http.server
import importlib.util
import json
import socket
import subprocess
import sys
import threading

import pytest

from tasks.steps import healthcheck as deploy_healthcheck
from tasks import tool as host_tool
from tests.conftest import REPO_ROOT

MODULE = REPO_ROOT / "files/healthcheck.py"


def load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hc = load(MODULE, "healthcheck_under_test")


class Handler(http.server.BaseHTTPRequestHandler):
    routes: dict = {}
    seen: list = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.seen.append((self.path, self.headers.get("Host")))
        status, headers, body = self.routes.get(self.path, (404, {}, b"not here"))
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def web():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    Handler.routes, Handler.seen = {}, []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", Handler
    server.shutdown()
    server.server_close()


def check(url, **extra):
    return {"url": url, "host_header": "greeting.pyinfra-flask.invalid", "status": 200, "body": "",
            "timeout": 2, "retries": 3, "path": "/health", "request_path": "/health", **extra}


def test_an_expected_answer_passes_with_the_host_header(web):
    base, handler = web
    handler.routes["/health?full=1"] = (200, {}, b"ok")
    hc.wait_healthy(check(base + "/health?full=1"), attempts=1)
    assert handler.seen == [("/health?full=1", "greeting.pyinfra-flask.invalid")]


def test_a_wrong_status_or_body_fails_saying_what_came(web):
    base, handler = web
    handler.routes["/health"] = (500, {}, b"boom")
    with pytest.raises(hc.Unhealthy, match=r"through nginx answered 500, expected 200, after 2 attempts"):
        hc.wait_healthy(check(base + "/health"), attempts=2, interval=0)
    assert len(handler.seen) == 2
    handler.routes["/health"] = (200, {}, b"degraded")
    with pytest.raises(hc.Unhealthy, match=r"answered 200 without 'all good' in the body"):
        hc.wait_healthy(check(base + "/health", body="all good"), attempts=1)


def test_redirects_are_followed_and_a_loop_is_not_healthy(web):
    base, handler = web
    handler.routes["/health"] = (301, {"Location": "/health/"}, b"")
    handler.routes["/health/"] = (200, {}, b"ok")
    hc.wait_healthy(check(base + "/health"), attempts=1)
    handler.routes["/loop"] = (302, {"Location": "/loop"}, b"")
    with pytest.raises(hc.Unhealthy, match=r"no answer \(more than 5 redirects\)"):
        hc.wait_healthy(check(base + "/loop"), attempts=1)


def test_a_redirect_off_the_site_is_never_followed(web):
    """Root's check follows the app's redirects on its site only: not to another port
    of the same address (where another service listens), another host or scheme."""
    base, handler = web
    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=other.serve_forever, daemon=True)
    thread.start()
    try:
        elsewhere = f"http://127.0.0.1:{other.server_address[1]}/health"
        handler.routes["/health"] = (302, {"Location": elsewhere}, b"")
        handler.routes["/login"] = (302, {"Location": "http://login.example.com/?next=/"}, b"")
        with pytest.raises(hc.Unhealthy, match=r"answered 302, expected 200: a redirect to http://127\.0\.0\.1:\d+/"
                           r"health, off the site \(not followed; if '/health' needs a login, set "
                           r"healthcheck_path to a path that answers without one\), after 1 attempts"):
            hc.wait_healthy(check(base + "/health"), attempts=1)
        with pytest.raises(hc.Unhealthy, match=r"a redirect to http://login\.example\.com/\?next=/, off the site"):
            hc.wait_healthy(check(base + "/login"), attempts=1)
        assert [path for path, _ in handler.seen] == ["/health", "/login"], "asked once each, nothing followed"
        # A check that expects the redirect gets it, still without following it.
        hc.wait_healthy(check(base + "/health", status=302), attempts=1)
        assert len(handler.seen) == 3
    finally:
        other.shutdown()
        other.server_close()


def test_a_redirect_to_the_sites_own_name_is_followed_to_the_same_address(web):
    base, handler = web
    port = base.rsplit(":", 1)[1]
    handler.routes["/"] = (301, {"Location": f"http://greeting.pyinfra-flask.invalid:{port}/home"}, b"")
    handler.routes["/home"] = (200, {}, b"ok")
    hc.wait_healthy(check(base + "/"), attempts=1)
    assert handler.seen == [("/", "greeting.pyinfra-flask.invalid"), ("/home", "greeting.pyinfra-flask.invalid")]


@pytest.mark.parametrize(("current", "target", "followed"), [
    ("http://127.0.0.2:80/", "http://127.0.0.2:80/login", True),
    ("http://127.0.0.2/", "https://127.0.0.2/", True),  # to HTTPS, on the same host's 443
    ("http://127.0.0.2/", "https://greeting.pyinfra-flask.invalid/", True),
    ("http://127.0.0.2/", "https://127.0.0.2:8443/", False),
    ("https://127.0.0.2/", "http://127.0.0.2/", False),  # never down to plain HTTP
    ("http://127.0.0.2/", "http://127.0.0.2:8080/", False),
    ("http://127.0.0.2/", "http://127.0.0.1/", False),
    ("http://127.0.0.2/", "ftp://127.0.0.2/", False),
])
def test_what_counts_as_the_site(current, target, followed):
    assert hc.on_site(check(current), current, target) is followed


def test_a_login_redirect_that_fails_the_check_names_healthcheck_path(web):
    base, handler = web
    handler.routes["/"] = (302, {}, b"")  # no Location: the answer itself
    with pytest.raises(hc.Unhealthy, match=r"answered 302, expected 200 \(a redirect; if '/' needs a login, "
                                           r"set healthcheck_path"):
        hc.wait_healthy(check(base + "/", path="/"), attempts=1)


def test_nothing_listening_is_no_answer():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(hc.Unhealthy, match=r"no answer \(.*refused"):
        hc.wait_healthy(check(f"http://127.0.0.1:{port}/health"), attempts=1)


def test_uwsgi_protocol_request_is_what_a_balancer_sends():
    """An app server behind a balancer has no nginx: the check speaks uwsgi to it."""
    received = {}
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)

    def serve():
        conn, _ = server.accept()
        with conn:
            head = conn.recv(4)
            size = int.from_bytes(head[1:3], "little")
            data = b""
            while len(data) < size:
                data += conn.recv(size - len(data))
            while data:
                key_len = int.from_bytes(data[:2], "little")
                key, data = data[2:2 + key_len], data[2 + key_len:]
                value_len = int.from_bytes(data[:2], "little")
                received[key.decode()], data = data[2:2 + value_len].decode(), data[2 + value_len:]
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall good")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    spec = check(None, body="all good", uwsgi=f"127.0.0.1:{server.getsockname()[1]}", request_path="/blog/health?x=1")
    del spec["url"]
    try:
        hc.wait_healthy(spec, attempts=1)
    finally:
        thread.join(5)
        server.close()
    assert received["PATH_INFO"] == "/blog/health" and received["QUERY_STRING"] == "x=1"
    assert received["HTTP_HOST"] == "greeting.pyinfra-flask.invalid"
    assert hc.describe(spec).endswith(f"from uWSGI at {spec['uwsgi']}")


def test_a_wsgi_app_is_called_and_judged_like_a_served_one():
    def app(environ, start_response):
        start_response("503 Service Unavailable" if environ["PATH_INFO"] == "/down" else "200 OK", [])
        return [b"all good"]

    assert hc.wsgi_get(check(None, path="/health"), app) == (200, "all good")
    status, body = hc.wsgi_get(check(None, path="/down"), app)
    assert hc.verdict(check(None), status, body) == "answered 503, expected 200"


def test_the_command_line_exit_code_and_message(web):
    base, handler = web
    handler.routes["/health"] = (200, {}, b"ok")
    spec = check(base + "/health")
    ok = subprocess.run([sys.executable, "-I", "-S", str(MODULE), "--check", json.dumps(spec)],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.startswith("healthy: GET ")
    handler.routes["/health"] = (502, {}, b"")
    bad = subprocess.run([sys.executable, "-I", "-S", str(MODULE), "--check", json.dumps(spec), "--attempts", "1",
                          "--host-name", "lb1", "--role", "balancer", "--context", "its upstream: web1"],
                         capture_output=True, text=True)
    assert bad.returncode == 1
    assert bad.stderr.startswith("HEALTH CHECK FAILED on balancer lb1: health check GET ")
    assert "answered 502, expected 200, after 1 attempts; its upstream: web1" in bad.stderr
    quiet = subprocess.run([sys.executable, "-I", "-S", str(MODULE), "--check", json.dumps(spec), "--attempts", "1",
                            "--quiet"], capture_output=True, text=True)
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (1, "", "")


def test_the_fact_and_the_release_tool_use_this_module(web, tmp_path):
    base, handler = web
    handler.routes["/health"] = (500, {}, b"")
    spec = check(base + "/health")
    # The deploy's fact runs the installed module with the check it was given.
    fact = deploy_healthcheck.Healthy().command(json.dumps(spec, sort_keys=True))
    assert f"{deploy_healthcheck.PYTHON} {deploy_healthcheck.MODULE} --check " in fact
    script = fact.replace(deploy_healthcheck.MODULE, str(MODULE)).replace("python3 ", f"{sys.executable} ")
    assert subprocess.run(["sh", "-c", script], capture_output=True, text=True).stdout.split() == ["no"]
    handler.routes["/health"] = (200, {}, b"")
    assert subprocess.run(["sh", "-c", script], capture_output=True, text=True).stdout.split() == ["yes"]
    # The release tool loads it from where its settings say and reports its verdict.
    tool = host_tool.load()
    tool.configure(tmp_path, {"health": spec, "health_module": str(MODULE)})
    tool.health(attempts=1)
    handler.routes["/health"] = (404, {}, b"")
    with pytest.raises(tool.Failure, match="answered 404, expected 200, after 1 attempts"):
        tool.health(attempts=1)

#!/usr/bin/env python3
"""The deploy's one health check, installed on every host it manages as
/usr/local/lib/pyinfra-flask/healthcheck.py and used by every caller:

- the deploy's check after a change and its read of whether a host is healthy
  before one (tasks/healthcheck.py), on app servers and on load balancers;
- the release tool: the check after a switch that decides a rollback, and the
  canary before it, which calls the app in-process and judges its answer here.

A check is a JSON object (built by tasks/healthcheck.py `spec`): the request
(`url` through nginx, or `uwsgi` for an app server behind a balancer, which has
no nginx: the address of its uWSGI socket, spoken to in the uwsgi protocol the
balancer uses, or over HTTP when `protocol` is "http"), the `host_header`, the
expected `status` and `body` text, `timeout` and `retries`.

    python3 -I -S healthcheck.py --check JSON [--attempts N] [--quiet]
        [--host-name NAME] [--role ROLE] [--error-log PATH] [--context TEXT]

exits 0 when the app answers as expected, 1 (with what it answered) otherwise.
Standard library only, Python 3.9+ (RHEL 9's python3); started with -I -S so root
never reads the environment's or a user's site-packages.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import sys
import time
from urllib.parse import urljoin, urlsplit

REDIRECTS = (301, 302, 303, 307, 308)
MAX_REDIRECTS = 5


def login_hint(check: dict) -> str:
    """Said when the app answers the check with a redirect (often: to a login page)."""
    return (f"if {check.get('path', '/')!r} needs a login, set healthcheck_path to a path that answers "
            "without one")


class Unhealthy(Exception):
    """The app did not answer as expected; the message says what it did."""


def verdict(check: dict, status: int, body: str) -> str | None:
    """None when an answer is the expected one, else what was wrong with it."""
    if status != check["status"]:
        return f"answered {status}, expected {check['status']}"
    if check.get("body") and check["body"] not in body:
        return f"answered {status} without {check['body']!r} in the body"
    return None


class Redirected(Exception):
    """The app redirected the check off its site: not followed (see `on_site`)."""

    def __init__(self, status: int, location: str):
        super().__init__(f"{status} to {location}")
        self.status, self.location = status, location


def on_site(check: dict, current: str, target: str) -> bool:
    """Whether a redirect from `current` to `target` stays on the app's site, the only
    place root's check follows it to: the same scheme, host and port, where the host
    may be named by the check's Host header (the site's own name, which means the
    address asked); or plain HTTP to HTTPS on the same host's port 443. Anything else
    (another host, another port, another scheme) would have root send requests
    wherever the app says."""
    here, there = urlsplit(current), urlsplit(target)
    names = {here.hostname, check["host_header"].lower()}
    if there.hostname not in names:
        return False
    if (there.scheme, there.port) == (here.scheme, here.port):
        return True
    return (here.scheme, there.scheme) == ("http", "https") and there.port in (None, 443)


def http_get(check: dict, url: str | None = None) -> tuple[int, str]:
    """GET over HTTP(S), following redirects on the site only (`on_site`)."""
    url = url or check["url"]
    address = urlsplit(url).hostname
    for _ in range(MAX_REDIRECTS + 1):
        parts = urlsplit(url)
        # The site's own name (an absolute redirect to it) is the address asked.
        hostname = address if parts.hostname == check["host_header"].lower() else parts.hostname
        if parts.scheme == "https":
            import ssl

            # HTTPS to 127.0.0.2: the certificate names the site, not this address;
            # this checks the app, the certificate is nginx's business.
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            connection = http.client.HTTPSConnection(hostname, parts.port, timeout=check["timeout"],
                                                     context=context)
        else:
            connection = http.client.HTTPConnection(hostname, parts.port, timeout=check["timeout"])
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        try:
            connection.request("GET", target, headers={"Host": check["host_header"]})
            response = connection.getresponse()
            body = response.read().decode(errors="replace")
            location = response.getheader("Location")
        finally:
            connection.close()
        if response.status not in REDIRECTS or not location:
            return response.status, body
        following = urljoin(url, location)
        if not on_site(check, url, following):
            raise Redirected(response.status, location)
        url = following
    raise OSError(f"more than {MAX_REDIRECTS} redirects")


def uwsgi_get(check: dict) -> tuple[int, str]:
    """GET straight from uWSGI's TCP socket, as the load balancer's nginx does."""
    if check.get("protocol") == "http":
        return http_get(check, f"http://{check['uwsgi']}{check['request_path']}")
    address, port = check["uwsgi"].rsplit(":", 1)
    path, _, query = check["request_path"].partition("?")
    env = {
        "REQUEST_METHOD": "GET", "REQUEST_URI": check["request_path"], "PATH_INFO": path,
        "QUERY_STRING": query, "SERVER_PROTOCOL": "HTTP/1.1", "SERVER_NAME": check["host_header"],
        "SERVER_PORT": "80", "HTTP_HOST": check["host_header"], "REMOTE_ADDR": "127.0.0.1",
    }
    packet = b"".join(
        len(key).to_bytes(2, "little") + key + len(value).to_bytes(2, "little") + value
        for key, value in ((k.encode(), v.encode()) for k, v in env.items())
    )
    with socket.create_connection((address.strip("[]"), int(port)), timeout=check["timeout"]) as sock:
        sock.sendall(b"\0" + len(packet).to_bytes(2, "little") + b"\0" + packet)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    head, _, content = b"".join(chunks).partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].decode(errors="replace")
    try:
        return int(status_line.split()[1]), content.decode(errors="replace")
    except (IndexError, ValueError):
        raise OSError(f"not an HTTP answer: {status_line[:80]!r}") from None


def wsgi_get(check: dict, application) -> tuple[int, str]:
    """Call a WSGI application once for the health path, as a WSGI server would
    (the release tool's canary, before a release takes any traffic)."""
    import io

    path, _, query = check["path"].partition("?")
    environ = {
        "REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": path,
        "QUERY_STRING": query, "SERVER_NAME": check["host_header"], "SERVER_PORT": "80",
        "HTTP_HOST": check["host_header"], "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1",
        "wsgi.version": (1, 0), "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr, "wsgi.multithread": False, "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    status = []
    result = application(environ, lambda line, headers, exc_info=None: status.append(line) or (lambda data: None))
    try:
        body = b"".join(result)
    finally:
        if hasattr(result, "close"):
            result.close()
    return int(status[0].split()[0]), body.decode(errors="replace")


def describe(check: dict) -> str:
    if "uwsgi" in check:
        return f"GET {check['request_path']} (Host: {check['host_header']}) from uWSGI at {check['uwsgi']}"
    return f"GET {check['url']} (Host: {check['host_header']}) through nginx"


def wait_healthy(check: dict, attempts: int | None = None, interval: float = 1.0) -> None:
    """Request the health path until it answers as expected, or raise Unhealthy
    saying what the last attempt got."""
    attempts = attempts or check["retries"]
    get = uwsgi_get if "uwsgi" in check else http_get
    outcome = "nothing answered"
    for attempt in range(attempts):
        if attempt:
            time.sleep(interval)
        try:
            status, body = get(check)
        except Redirected as redirect:
            # Judged as the answer it is (a check may expect a redirect), never followed.
            wrong = verdict(check, redirect.status, "")
            if wrong is None:
                return
            outcome = (f"{wrong}: a redirect to {redirect.location}, off the site (not followed; "
                       f"{login_hint(check)})")
            continue
        except (OSError, http.client.HTTPException) as exc:
            outcome = f"no answer ({exc})"
            if "redirects" in str(exc):
                outcome += f"; {login_hint(check)}"
            continue
        wrong = verdict(check, status, body)
        if wrong and status in REDIRECTS:
            wrong += f" (a redirect; {login_hint(check)})"
        if wrong is None:
            return
        outcome = wrong
    raise Unhealthy(f"health check {describe(check)} {outcome}, after {attempts} attempts")


def tail(path: str, lines: int = 5) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, 2)
            handle.seek(max(0, handle.tell() - 64 * 1024))
            return b"".join(handle.read().splitlines(keepends=True)[-lines:]).decode(errors="replace")
    except OSError as exc:
        return f"({exc})\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check that the app answers its health path.")
    parser.add_argument("--check", required=True, help="the check, as JSON")
    parser.add_argument("--attempts", type=int, help="default: the check's retries")
    parser.add_argument("--quiet", action="store_true", help="say nothing, only the exit code")
    parser.add_argument("--host-name", default=socket.gethostname(), help="this host, in the failure message")
    parser.add_argument("--role", default="host", help="what this host is, in the failure message")
    parser.add_argument("--context", default="", help="appended to the failure message")
    parser.add_argument("--error-log", help="nginx's error log, whose last lines follow a failure")
    args = parser.parse_args(argv)
    check = json.loads(args.check)
    try:
        wait_healthy(check, args.attempts)
    except Unhealthy as failure:
        if not args.quiet:
            context = f"; {args.context}" if args.context else ""
            print(f"HEALTH CHECK FAILED on {args.role} {args.host_name}: {failure}{context}", file=sys.stderr)
            if args.error_log:
                print(f"--- nginx error log ({args.error_log}):\n{tail(args.error_log)}", end="", file=sys.stderr)
        return 1
    if not args.quiet:
        print(f"healthy: {describe(check)} answered {check['status']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

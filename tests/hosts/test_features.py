"""What the tutorials wanted: several apps per host, URL prefixes, WebSockets, TLS,
TCP sockets, nginx extras and Debian 13, each proven on a real throwaway host."""

from __future__ import annotations

import datetime
import json
import re
import socket
import ssl
import threading
import time
import urllib.request

import pytest
import requests
import websocket
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from dev import throwaway
from tests.conftest import get, run_deploy
from tests.hosts.test_deploy import GREETING, uwsgi_requests
from tests.hosts.test_hardening import login
from tests.hosts.test_monitoring import app_and_monitor, rules_unit_tests_on, targets_up, wait

pytestmark = pytest.mark.features

TOKEN = "T0KEN-trixie-5ecret"

APPS = [
    {"app_name": "greeting"},
    {"app_name": "blog", "app_source": "tests/apps/blog", "app_entry": "blog:app", "url_prefix": "/blog",
     "shared_paths": ["instance/", "static/uploads/"]},
    {"app_name": "chat", "app_source": "tests/apps/websocket", "app_entry": "wsgi:app", "app_static_dir": "",
     "websockets": True, "uwsgi_processes": 2, "nginx_server_names": ["chat.test"]},
]


@pytest.fixture(scope="module")
def multi(hosts, deployed_image, tmp_path_factory):
    """The deployed host, now with three apps: greeting at /, blog under /blog, and a
    WebSocket app on its own host name."""
    host = hosts.from_spare(deployed_image)
    run_deploy(host, tmp_path_factory.mktemp("multi"), data={"apps": APPS})
    return host


def test_each_app_has_its_own_user_service_socket_and_logs(multi):
    for name in ("greeting", "blog", "chat"):
        assert multi.exec(f"id -un {name}").strip() == name
        assert multi.exec(f"systemctl is-active {name}.service").strip() == "active"
        assert multi.exec(f"systemctl is-enabled {name}.service").strip() == "enabled"
        assert multi.exec(f"stat -c '%U %G %a' /run/{name}/uwsgi.sock").split() == [name, name, "660"]
        assert multi.exec("ps -o user= -C uwsgi | sort -u").split().count(name) == 1
    get(multi.url + "/blog/")
    assert "GET /blog/" in multi.exec("cat /var/log/nginx/blog.access.log")
    assert "GET /blog/" not in multi.exec("cat /var/log/nginx/greeting.access.log")


def test_app_under_a_prefix_sees_its_script_name(multi):
    assert get(multi.url + "/").text.strip() == GREETING
    for path in ("/blog", "/blog/"):
        response = get(multi.url + path)
        assert response.status_code == 200, path
        assert response.json() == {
            "app": "blog", "script_name": "/blog", "home": "/blog/",
            "post": "/blog/posts/hello", "static": "/blog/static/blog.css",
        }
    redirect = requests.get(multi.url + "/blog/latest", allow_redirects=False, timeout=10)
    assert redirect.status_code == 302 and redirect.headers["Location"].endswith("/blog/posts/hello")
    assert get(multi.url + "/blog/posts/hello").text == "post hello\n"
    served = uwsgi_requests(multi, "blog")
    static = get(multi.url + "/blog/static/blog.css")
    assert static.status_code == 200 and "blog app" in static.text
    assert uwsgi_requests(multi, "blog") == served, "served by nginx, not uWSGI"
    # The greeting app keeps its own static files and pages.
    assert get(multi.url + "/static/style.css").status_code == 200
    assert get(multi.url + "/blogger").status_code == 404  # not swallowed by the /blog prefix
    # blog's session cookie stays under /blog (greeting, on the same host name, never
    # gets it): Flask's own cookie path, read from the app uWSGI loads.
    cookie_path = multi.exec(
        "cd /srv/blog/current && runuser -u blog -- .venv/bin/python -c 'import runpy; "
        "app = runpy.run_path(\".deploy-loader.py\")[\"application\"]; "
        "print(app.session_interface.get_cookie_path(app))'")
    assert cookie_path.strip() == "/blog"


def test_nginx_serves_no_link_an_app_planted_in_its_shared_static_path(multi):
    """blog, hostile, can write its shared static/uploads/ (served by nginx, whose user
    is in every app's group): links it plants there, to greeting's data or to
    /etc/passwd, are refused; its own uploads are served."""
    multi.exec("install -o greeting -g greeting -m 640 /dev/null /srv/greeting/shared/instance/secret.txt"
               " && echo greeting-secret > /srv/greeting/shared/instance/secret.txt")
    uploads = "/srv/blog/shared/static/uploads"
    multi.exec(f"runuser -u blog -- sh -c 'cd {uploads} && echo uploaded > ok.txt"
               " && ln -s /srv/greeting/shared/instance/secret.txt leak.txt && ln -s /etc/passwd passwd.txt"
               " && ln -s /srv/greeting/shared/instance linked && mkdir sub && ln -s /etc sub/etc'")
    ok = get(multi.url + "/blog/static/uploads/ok.txt")
    assert ok.status_code == 200 and ok.text == "uploaded\n"
    assert get(multi.url + "/blog/static/blog.css").status_code == 200, "the release's own, from the merge"
    for path in ("leak.txt", "passwd.txt", "linked/secret.txt", "sub/etc/passwd"):
        response = requests.get(multi.url + "/blog/static/uploads/" + path, timeout=10)
        assert response.status_code in (403, 404), (path, response.status_code, response.text[:80])
        assert "greeting-secret" not in response.text and "root:" not in response.text
    # Hard links: greeting's files are out of blog's reach (its app root is 750), and
    # nginx's logs (www-data's) are the kernel's to refuse (fs.protected_hardlinks).
    for target in ("/srv/greeting/shared/instance/secret.txt", "/var/log/nginx/greeting.access.log"):
        refused = multi.exec(f"runuser -u blog -- ln {target} {uploads}/hard.txt 2>&1 || echo refused", check=False)
        assert refused.strip().endswith("refused"), (target, refused)
    # Maintenance still reaches these locations (nginx tests its flag under the same rule).
    multi.exec("touch /etc/pyinfra-flask/maintenance/blog/on")
    try:
        for path in ("/blog/static/blog.css", "/blog/static/uploads/ok.txt"):
            assert get(multi.url + path).status_code == 503, path
    finally:
        multi.exec("rm /etc/pyinfra-flask/maintenance/blog/on")


def test_websocket_echo_through_nginx_while_workers_serve_http(multi):
    port = multi.http_port
    sockets = [websocket.create_connection(f"ws://127.0.0.1:{port}/ws", host="chat.test", timeout=10)
               for _ in range(3)]
    try:
        pids = set()
        for number, ws in enumerate(sockets):
            ws.send(f"hello {number}")
            answer = ws.recv()
            assert re.fullmatch(rf"echo from \d+: hello {number}", answer), answer
            pids.add(int(answer.split()[2].rstrip(":")))
        # With the WebSockets open, ordinary requests are still served at once.
        results = []

        def fetch():
            results.append(requests.get(f"http://127.0.0.1:{port}/pid", headers={"Host": "chat.test"}, timeout=10))

        threads = [threading.Thread(target=fetch) for _ in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert [r.status_code for r in results] == [200] * 20
        pids |= {int(r.text) for r in results}
        workers = multi.exec("ps -o pid=,ppid= -u chat").split("\n")
        print(f"\nWebSocket app: pids seen {sorted(pids)}; uwsgi processes of chat: {len(workers)}")
        assert len([line for line in workers if line.strip()]) >= 3, "a master and two workers"
        for ws in sockets:
            ws.send("again")
            assert ws.recv().endswith(": again")
    finally:
        for ws in sockets:
            ws.close()
    site = multi.exec("cat /etc/nginx/sites-available/chat.conf")
    assert "proxy_pass http://unix:/run/chat/uwsgi.sock:;" in site
    assert not re.search(r"^\s*uwsgi_pass\s", site, re.M)
    assert "http-socket = /run/chat/uwsgi.sock" in multi.exec("cat /srv/chat/uwsgi.ini")


def test_removing_an_app_stops_it_and_removes_its_site(multi, tmp_path):
    run_deploy(multi, tmp_path, data={"apps": [APPS[0], APPS[2]]})
    assert multi.exec("systemctl is-active blog.service", check=False).strip() != "active"
    assert multi.exec("systemctl is-enabled blog.service 2>&1", check=False).strip() != "enabled"
    assert multi.exec("test -e /etc/systemd/system/blog.service || echo gone").strip() == "gone"
    assert "/blog" not in multi.exec("cat /etc/nginx/sites-available/greeting.conf")
    assert get(multi.url + "/blog/").status_code == 404
    assert multi.exec("test -d /srv/blog/shared && echo kept").strip() == "kept", "data is never deleted"
    assert get(multi.url + "/").text.strip() == GREETING
    second = run_deploy(multi, tmp_path, data={"apps": [APPS[0], APPS[2]]})
    assert second.changed_operations() == []


def _self_signed(tmp_path, name="tls.test", days: int = 30):
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_tls_with_redirect_and_hsts(hosts, deployed_image, tmp_path):
    host = hosts.start(deployed_image, ports=(22, 80, 443))
    try:
        cert, key = _self_signed(tmp_path)
        data = {"nginx_server_names": ["tls.test"], "tls_certificate": str(cert),
                "tls_certificate_key": str(key), "tls_hsts_max_age": 3600}
        run_deploy(host, tmp_path, data=data)
        https_port = host.extra_ports[443]

        context = ssl.create_default_context(cafile=str(cert))
        context.check_hostname = False  # we connect to 127.0.0.1; the chain is still verified
        request = urllib.request.Request(f"https://127.0.0.1:{https_port}/", headers={"Host": "tls.test"})
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            assert response.status == 200
            assert response.read().decode().strip() == GREETING
            assert response.headers["Strict-Transport-Security"] == "max-age=3600"
        with socket.create_connection(("127.0.0.1", https_port)) as raw:
            with context.wrap_socket(raw, server_hostname="tls.test") as tls:
                assert tls.version() in ("TLSv1.2", "TLSv1.3")
        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.check_hostname, old.verify_mode = False, ssl.CERT_NONE
        old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
        old.set_ciphers("ALL:@SECLEVEL=0")
        with pytest.raises(ssl.SSLError):
            with socket.create_connection(("127.0.0.1", https_port)) as raw:
                old.wrap_socket(raw, server_hostname="tls.test")

        redirect = requests.get(f"{host.url}/info?x=1", headers={"Host": "tls.test"}, allow_redirects=False, timeout=10)
        assert redirect.status_code == 301 and redirect.headers["Location"] == "https://tls.test/info?x=1"
        assert host.exec("stat -c '%a %U' /etc/nginx/tls/greeting.key").split() == ["600", "root"]
        assert host.exec("stat -c '%a' /etc/nginx/tls").strip() == "700"

        # A new key: --dry --diff says it would change, and never shows it.
        new_cert, new_key = _self_signed(tmp_path / "..", "tls.test")
        dry = run_deploy(host, tmp_path, "--dry", "--diff", data={**data, "tls_certificate": str(new_cert),
                                                                   "tls_certificate_key": str(new_key)})
        assert "a secret: contents not shown" in dry.output
        secret_lines = new_key.read_text().splitlines()[1:-1] + key.read_text().splitlines()[1:-1]
        assert not any(line in dry.output for line in secret_lines)
        assert "PRIVATE KEY" not in dry.output
    finally:
        hosts.remove(host)


def test_tcp_socket_with_matching_nginx(fork, tmp_path):
    run_deploy(fork, tmp_path, data={"uwsgi_socket": "127.0.0.1:8001"})
    assert get(fork.url + "/").text.strip() == GREETING
    assert "socket = 127.0.0.1:8001" in fork.exec("cat /srv/greeting/uwsgi.ini")
    assert "uwsgi_pass 127.0.0.1:8001;" in fork.exec("cat /etc/nginx/sites-available/greeting.conf")
    assert "127.0.0.1:8001" in fork.exec("ss -ltn")
    assert fork.exec("test -e /run/greeting/uwsgi.sock || echo none").strip() == "none"


def test_nginx_serving_extras(deployed):
    url = deployed.host.url
    page = get(url + "/")
    assert page.headers["Server"] == "nginx", "no version in Server"
    for header, value in (("X-Content-Type-Options", "nosniff"), ("X-Frame-Options", "SAMEORIGIN"),
                          ("Referrer-Policy", "strict-origin-when-cross-origin")):
        assert page.headers[header] == value
    static = requests.get(url + "/static/style.css", headers={"Accept-Encoding": "gzip"}, timeout=10)
    assert static.headers["Content-Encoding"] == "gzip"
    assert static.headers["Cache-Control"] == "max-age=2592000"
    assert "nosniff" in static.headers["X-Content-Type-Options"]


def test_log_files_get_rotated(fork, tmp_path):
    # uWSGI's log in the app user's own directory, nginx's in one of root's (never the
    # same one: the app user could put a link where nginx, as root, writes).
    run_deploy(fork, tmp_path, data={"uwsgi_log": "/var/log/greeting/uwsgi.log",
                                     "nginx_access_log": "/var/log/greeting-nginx/access.log"})
    get(fork.url + "/")
    assert "Starting uWSGI" in fork.exec("cat /var/log/greeting/uwsgi.log")
    assert "GET /" in fork.exec("cat /var/log/greeting-nginx/access.log")
    assert fork.exec("stat -c '%U' /var/log/greeting /var/log/greeting-nginx").split() == ["greeting", "root"]
    config = fork.exec("cat /etc/logrotate.d/pyinfra-flask-greeting")
    assert "/var/log/greeting/uwsgi.log {" in config and "/var/log/greeting-nginx/access.log {" in config
    fork.exec("logrotate -f /etc/logrotate.d/pyinfra-flask-greeting")
    assert fork.exec("ls /var/log/greeting").split().count("uwsgi.log.1") == 1
    assert fork.exec("ls /var/log/greeting-nginx").split().count("access.log.1") == 1
    get(fork.url + "/")
    assert "GET /" in fork.exec("cat /var/log/greeting-nginx/access.log"), "nginx reopened its log"


def test_debian_13_end_to_end(hosts, tmp_path):
    """A bare Debian 13 host taken to production in one cold deploy, as the sudo user, with what
    a real server adds: `harden` (docs/hardening.md), the watch alerting a webhook (docs/watch.md)
    and a monitoring host (docs/monitoring.md), a bare Debian 13 host too, deployed in the same
    run. Both with NET_ADMIN (fail2ban's bans, the exporters' firewall), on a network of their own;
    the webhook receiver runs in the test process, behind the network's gateway."""

    started = time.monotonic()
    network, gateway, receiver, host, mon, _ = app_and_monitor(hosts, throwaway.ensure_image("trixie"))
    address, mon_address = host.address(network), mon.address(network)
    inventory = throwaway.write_group_inventory(tmp_path / "inventory.py", {
        "app_servers": [(host, {"private_address": address, "harden": True, "fail2ban_ignore": [gateway],
                                "alert_webhook_url": f"http://{gateway}:{receiver.server_address[1]}/{TOKEN}"})],
        "monitoring_servers": [(mon, {"private_address": mon_address, "monitoring_interval": 2})]})
    try:
        first = run_deploy(inventory, tmp_path)
        print(f"\nDebian 13 cold deploy (hardened, watched, with a monitoring host): {first.seconds:.1f}s")
        assert get(host.url + "/").text.strip() == GREETING
        assert host.exec(". /etc/os-release; echo $VERSION_ID").strip() == "13"
        assert "libpcre2-dev" in host.exec("dpkg-query -W -f '${Package}\\n' 'libpcre2-dev'")
        assert "-DUWSGI_PCRE" in host.exec("/opt/pyinfra-flask/uwsgi-2.0.31/bin/uwsgi --cflags")
        assert "no internal routing support" not in host.exec("journalctl -u greeting --no-pager")
        assert host.exec("stat -c '%U %G %a' /run/greeting/uwsgi.sock").split() == ["greeting", "greeting", "660"]
        assert get(host.url + "/static/style.css").status_code == 200

        # Hardened (OpenSSH 10, fail2ban 1.1): keys only, no root, modern ciphers; the sshd jail
        # reading the journal; security updates passing their own dry run; the journal capped.
        effective = host.exec("sshd -T").splitlines()
        for line in ("permitrootlogin no", "passwordauthentication no", "kbdinteractiveauthentication no"):
            assert line in effective
        offered = [line for line in effective if line.startswith(("ciphers ", "macs ", "kexalgorithms "))]
        assert len(offered) == 3 and not [line for line in offered if re.search(r"cbc|sha1|ecdh-sha2-nistp", line)]
        assert login(host, "deploy", password="deploy") == (
            "BadAuthenticationType: Bad authentication type; allowed types: ['publickey']")
        assert login(host, "root", key_filename=str(host.key_path)).startswith("AuthenticationException")
        assert login(host, "deploy", key_filename=str(host.key_path)) == "ok"
        assert host.exec("systemctl is-active fail2ban").strip() == "active"
        jail = host.exec("fail2ban-client status sshd")
        assert "Currently banned:" in jail and "Journal matches:" in jail, jail
        host.exec("unattended-upgrade --dry-run")
        assert "SystemMaxUse=500M" in host.exec("systemd-analyze cat-config systemd/journald.conf")

        # The watch: its timer running, its first run (the deploy's own) succeeded.
        assert host.exec("systemctl show -p ActiveState --value pyinfra-flask-watch.timer").strip() == "active"
        assert host.exec("systemctl show -p Result -p ExecMainStatus --value pyinfra-flask-watch.service").split() == [
            "success", "0"]
        assert host.exec("stat -c '%U %a' /etc/pyinfra-flask/watch/targets.json").strip() == "root 600"

        # Debian 13's exporters, on the private address only, behind their firewall; scraped by
        # Debian 13's Prometheus, whose promtool (a package of its own there) runs the rules' tests.
        for unit in ("prometheus-node-exporter", "prometheus-nginx-exporter", "mtail", "pyinfra-flask-metrics.timer"):
            assert host.exec(f"systemctl is-active {unit}").strip() == "active", unit
        listening = host.exec("ss -Hltn '( sport = 9100 or sport = 9113 or sport = 3903 )'")
        assert sorted(line.split()[3] for line in listening.splitlines()) == [
            f"{address}:3903", f"{address}:9100", f"{address}:9113"], listening
        table = host.exec("nft list table inet pyinfra_flask_metrics")
        assert sorted(re.search(r"tcp dport \{ ([^}]*) \}", table).group(1).split(", ")) == ["3903", "9100", "9113"]
        assert f"ip saddr {mon_address} accept" in table, table
        # Sorted as targets_up sorts: by host name too (t-...-10 comes before t-...-9).
        assert targets_up(mon) == sorted([("mtail", host.name), ("nginx", host.name), ("node", host.name),
                                          ("node", mon.name)])
        assert "SUCCESS" in rules_unit_tests_on(mon, tmp_path)

        again = run_deploy(inventory, tmp_path)
        assert again.changed_operations() == [], again.output[-3000:]
        assert TOKEN not in first.output + again.output

        # The watch alerts the webhook when the app stops, and again when it is back (its runs
        # started by hand here, not waited for: the period is the default minute).
        for action, state in (("stop", "failing"), ("start", "recovered")):
            host.exec(f"systemctl {action} greeting && systemctl start pyinfra-flask-watch.service")
            said = wait(f"the watch's {state} alert", 30, lambda state=state: [
                alert for alert in (json.loads(body)["alert"] for _, _, body in receiver.received)
                if alert["state"] == state])
            assert "greeting:health" in [item["check"] for item in said[0][state]], said
        assert [path for path, _, _ in receiver.received] == [f"/{TOKEN}"] * 2
    except BaseException:
        print(mon.exec("journalctl --no-pager -n 30 -u prometheus -u pyinfra-flask-alert-relay", check=False))
        print(host.exec("journalctl --no-pager -n 30 -u prometheus-node-exporter -u prometheus-nginx-exporter "
                        "-u mtail; nft list ruleset", check=False))
        raise
    finally:
        receiver.shutdown()
        for each in (host, mon):
            hosts.remove(each)
    print(f"test_debian_13_end_to_end: {time.monotonic() - started:.1f}s")

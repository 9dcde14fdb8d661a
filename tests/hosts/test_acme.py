"""Automatic HTTPS (tls_acme) against a real ACME CA with no internet: Debian's
`pebble` (RFC 8555 test CA) in a container on a Docker network the tests create,
the hosts on it under their server names (Docker's DNS resolves them for pebble's
HTTP-01 validation). One pebble and two hosts serve every end-to-end assertion.
Without a host: tests/steps/test_acme.py."""

from __future__ import annotations

import re
import shlex
import socket
import ssl
import textwrap
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from cryptography import x509

from dev import throwaway
from tasks.steps import acme
from tests.conftest import SESSION, SESSION_LABEL, Load, run_deploy
from tests.hosts.test_deploy import GREETING
from tests.steps.test_acme import ACME, DIRECTORY, NAME, OTHER_NAME


# verify=False where the test process talks to 127.0.0.1; the chains are verified by name separately.
e2e = pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")


PEBBLE_SCRIPT = r"""
set -e
mkdir -p /var/cache/apt/archives/partial /pebble
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends pebble openssl >/dev/null
cd /pebble
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=pebble -addext subjectAltName=DNS:pebble \
    -keyout key.pem -out cert.pem 2>/dev/null
cat > config.json <<'EOF'
{"pebble": {"listenAddress": "0.0.0.0:14000", "managementListenAddress": "0.0.0.0:15000",
            "certificate": "/pebble/cert.pem", "privateKey": "/pebble/key.pem",
            "httpPort": 80, "tlsPort": 5001, "ocspResponderURL": "", "externalAccountBindingRequired": false}}
EOF
exec pebble -config config.json
"""


@dataclass
class Pebble:
    container: object
    network: str
    ca_bundle: Path  # pebble's own listener certificate: what hosts trust for HTTPS to it

    def requests_seen(self) -> int:
        """Requests pebble's web front end has handled so far (it logs each one)."""
        return self.container.logs().decode(errors="replace").count("-> calling handler()")

    def disconnect(self):
        throwaway.docker_client().networks.get(self.network).disconnect(self.container)

    def connect(self):
        throwaway.docker_client().networks.get(self.network).connect(self.container, aliases=["pebble"])


def _start_pebble(image: str, network: str, workdir: Path) -> Pebble:
    client = throwaway.docker_client()
    apt_cache = throwaway.apt_archives("bookworm")
    container = client.containers.create(
        image, ["bash", "-c", PEBBLE_SCRIPT], name=f"t-{SESSION}-pebble",
        labels={throwaway.LABEL: "pebble", SESSION_LABEL: SESSION},
        environment={"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"},
        volumes={str(apt_cache): {"bind": "/var/cache/apt/archives", "mode": "rw"}},
    )
    pebble = Pebble(container, network, workdir / "pebble-listener.pem")
    pebble.connect()
    container.start()
    deadline = time.monotonic() + 90
    while "Listening on: 0.0.0.0:14000" not in container.logs().decode(errors="replace"):
        container.reload()
        if container.status == "exited" or time.monotonic() > deadline:
            raise throwaway.ThrowawayError(f"pebble did not start:\n{container.logs().decode(errors='replace')}")
        time.sleep(0.3)
    code, cert = container.exec_run(["cat", "/pebble/cert.pem"])
    assert code == 0
    pebble.ca_bundle.write_bytes(cert)
    return pebble


def _start_on_network(hosts, image: str, network: str, *aliases: str, **kwargs) -> throwaway.Host:
    """A host on the test network under its server names, and with its HTTPS port published."""
    host = hosts.start(image, ports=(22, 80, 443), **kwargs)
    throwaway.docker_client().networks.get(network).connect(host.container, aliases=list(aliases))
    return host


@dataclass
class AcmeLab:
    pebble: Pebble
    single: throwaway.Host
    workdir: Path

    def data(self, **extra) -> dict:
        return {**ACME, "acme_directory": DIRECTORY, "acme_ca_bundle": str(self.pebble.ca_bundle), **extra}


@pytest.fixture(scope="module")
def lab(hosts, bookworm_image, deployed_image, tmp_path_factory):
    started = time.monotonic()
    workdir = tmp_path_factory.mktemp("acme")
    network = hosts.network()
    found = {}
    # pebble's package install and the host's boot overlap.
    starter = threading.Thread(target=lambda: found.update(pebble=_start_pebble(bookworm_image, network, workdir)))
    starter.start()
    try:
        # NET_ADMIN: it becomes an app server behind a balancer at the end (its firewall).
        single = _start_on_network(hosts, deployed_image, network, NAME, OTHER_NAME, cap_add=("NET_ADMIN",))
    finally:
        starter.join()
    try:
        yield AcmeLab(found["pebble"], single, workdir)
    finally:
        if "pebble" in found:
            found["pebble"].container.remove(force=True)
        print(f"\ntests/hosts/test_acme.py end to end: {time.monotonic() - started:.1f}s wall time")


def _pebble_root(host: throwaway.Host) -> str:
    """The root that signs pebble's certificates (a new one on every pebble start),
    fetched the way a host would: from its management port, trusting its listener."""
    return host.exec(f"curl -sf --cacert {acme.CA_BUNDLE} https://pebble:15000/roots/0")


def _served_certificate(port: int, root: str, name: str) -> x509.Certificate:
    """The certificate nginx serves for `name`, after Python verified its chain against `root`."""
    context = ssl.create_default_context(cadata=root)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=name) as tls:
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


def _live(host: throwaway.Host) -> acme.CertificateInfo:
    command = acme.LiveCertificate().command("greeting")
    return acme.LiveCertificate().process(host.exec(command).splitlines())


def _force_renewal(host: throwaway.Host) -> str:
    """What the timer starts, with --force-renewal (a runtime drop-in, removed after)."""
    drop_in = f"/run/systemd/system/{acme.RENEW_UNIT}.service.d"
    unit = textwrap.dedent(f"""\
        [Service]
        ExecStart=
        ExecStart={acme.RENEW_COMMAND} --force-renewal
        """)
    return host.exec(
        f"mkdir -p {drop_in} && printf %s {shlex.quote(unit)} > {drop_in}/force.conf && systemctl daemon-reload && "
        f"systemctl start {acme.RENEW_UNIT}.service; status=$?; rm -rf {drop_in}; systemctl daemon-reload; "
        f"exit $status")


@pytest.mark.features
@pytest.mark.acme
@e2e
def test_acme_on_a_single_host(lab, tmp_path):
    host, pebble = lab.single, lab.pebble
    https_port = host.extra_ports[443]

    # --dry --diff: what would be requested, and not a word to the CA.
    seen = pebble.requests_seen()
    dry = run_deploy(host, tmp_path, "--dry", "--diff", data=lab.data())
    assert f"Request an ACME certificate for {NAME} from {DIRECTORY}" in dry.output
    assert pebble.requests_seen() == seen
    assert host.exec("test -e /etc/letsencrypt/live || echo none").strip() == "none"

    # First deploy: HTTP with the challenge, the certificate, then HTTPS.
    first = run_deploy(host, tmp_path, data=lab.data())
    print(f"\nfirst ACME deploy: {first.seconds:.1f}s")
    changed = first.changed_operations()
    order = [next((i for i, op in enumerate(changed) if op.endswith(name)), None) for name in (
        "nginx sites | Write the site /etc/nginx/sites-available/greeting.conf (plain HTTP until its ACME "
        "certificate is issued)",
        "nginx sites | Reload nginx (its config or the socket group changed)",
        f"nginx sites | Request an ACME certificate for {NAME} from {DIRECTORY}",
        "nginx sites | Write the site /etc/nginx/sites-available/greeting.conf with HTTPS (its certificate is here)",
        "nginx sites | Reload nginx (its config or the socket group changed) (to serve the new ACME certificate)")]
    assert None not in order and order == sorted(order), changed
    root = _pebble_root(host)
    served = _served_certificate(https_port, root, NAME)
    assert served.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName) == [NAME]
    assert "Pebble Intermediate CA" in served.issuer.rfc4514_string()
    page = requests.get(f"https://127.0.0.1:{https_port}/", headers={"Host": NAME}, verify=False, timeout=10)
    assert page.status_code == 200 and page.text.strip() == GREETING

    # Plain HTTP redirects, except the challenge path.
    redirect = requests.get(f"{host.url}/info?x=1", headers={"Host": NAME}, allow_redirects=False, timeout=10)
    assert redirect.status_code == 301 and redirect.headers["Location"] == f"https://{NAME}/info?x=1"
    host.exec(f"mkdir -p {acme.WEBROOT}/.well-known/acme-challenge && "
              f"echo probe-token > {acme.WEBROOT}/.well-known/acme-challenge/probe")
    probe = requests.get(f"{host.url}/.well-known/acme-challenge/probe", headers={"Host": NAME},
                         allow_redirects=False, timeout=10)
    assert probe.status_code == 200 and probe.text.strip() == "probe-token"
    assert host.exec(f"stat -c '%U %a' {acme.WEBROOT}").split() == ["root", "755"]
    assert host.exec(f"systemctl is-enabled {acme.RENEW_UNIT}.timer; systemctl is-active {acme.RENEW_UNIT}.timer"
                     ).split() == ["enabled", "active"]

    # A second run: "No changes", and the CA is not asked anything.
    seen = pebble.requests_seen()
    second = run_deploy(host, tmp_path, data=lab.data())
    assert second.changed_operations() == []
    assert pebble.requests_seen() == seen

    # The expiry check: a certificate closer to its end than acme_min_valid_days fails the deploy.
    days = int(_live(host).days_left())
    expiring = run_deploy(host, tmp_path, data=lab.data(acme_min_valid_days=days + 10), check=False)
    assert expiring.returncode != 0
    assert re.search(rf"ERROR: the ACME certificate of greeting \({NAME}\) on \S+ expires in [0-9.]+ days .* "
                     rf"under acme_min_valid_days={days + 10}: its renewal is failing", expiring.output), \
        expiring.output[-3000:]

    # Renewal as the timer runs it (forced), under load: nothing dropped, a new serial served. A new
    # connection per request: a reload closes idle keep-alive connections (as every server's restart
    # does; clients retry a request sent on one, RFC 9112 9.3.1), requests' Session would not.
    before = _live(host)
    with Load(f"https://127.0.0.1:{https_port}/", verify=False, headers={"Host": NAME, "Connection": "close"}) as load:
        _force_renewal(host)
        time.sleep(1)
    after = _live(host)
    print(load.report("forced renewal"))
    assert load.failures == [] and load.ok > 20
    assert after.serial != before.serial
    assert _served_certificate(https_port, _pebble_root(host), NAME).serial_number == int(after.serial, 16)

    # A name added while the CA is unreachable: the deploy fails saying so, the site keeps serving.
    both = lab.data(nginx_server_names=[NAME, OTHER_NAME])
    pebble.disconnect()
    try:
        failed = run_deploy(host, tmp_path, data=both, check=False)
    finally:
        pebble.connect()
    assert failed.returncode != 0
    assert (f"ERROR: the ACME CA at {DIRECTORY} issued no certificate for {NAME}, {OTHER_NAME} on {host.name} "
            "(certbot's words above): nginx keeps serving the previous certificate" in failed.output), \
        failed.output[-3000:]
    assert requests.get(f"{host.url}/", headers={"Host": NAME}, allow_redirects=False, timeout=10).status_code == 301
    page = requests.get(f"https://127.0.0.1:{https_port}/", headers={"Host": NAME}, verify=False, timeout=10)
    assert page.status_code == 200 and page.text.strip() == GREETING
    assert host.exec("nginx -t 2>&1 && echo ok").strip().endswith("ok")
    # The CA back: the next deploy re-issues the certificate with both names.
    reissued = run_deploy(host, tmp_path, data=both)
    assert any(op.endswith(f"Re-issue the ACME certificate for {NAME}, {OTHER_NAME} from {DIRECTORY} (it has {NAME})")
               for op in reissued.changed_operations()), reissued.changed_operations()
    assert _live(host).names == (OTHER_NAME, NAME)
    _served_certificate(https_port, _pebble_root(host), OTHER_NAME)


@pytest.mark.features
@pytest.mark.acme
@e2e
def test_acme_on_a_load_balancer_only(lab, hosts, deployed_image, tmp_path):
    name = "lb.acme.test"
    network = lab.pebble.network
    balancer = _start_on_network(hosts, deployed_image, network, name)
    app = lab.single
    app.exec("DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nftables")
    inventory = throwaway.write_group_inventory(tmp_path / "inventory.py", {
        "app_servers": [(app, {"private_address": app.address(network)})],
        "load_balancers": [(balancer, {"private_address": balancer.address(network)})],
    })
    data = lab.data(nginx_server_names=[name])
    # The CA unreachable on the first deploy: it fails saying so, the site serves plain HTTP.
    lab.pebble.disconnect()
    try:
        failed = run_deploy(inventory, tmp_path, data=data, check=False)
    finally:
        lab.pebble.connect()
    print(f"\nbalancer ACME deploy, the CA unreachable: {failed.seconds:.1f}s")
    assert failed.returncode != 0
    assert (f"ERROR: the ACME CA at {DIRECTORY} issued no certificate for {name} on {balancer.name} (certbot's "
            "words above): the site serves plain HTTP, as before" in failed.output), failed.output[-3000:]
    plain = requests.get(f"{balancer.url}/", headers={"Host": name}, allow_redirects=False, timeout=10)
    assert plain.status_code == 200 and plain.text.strip() == GREETING
    run = run_deploy(inventory, tmp_path, data=data)
    print(f"balancer ACME deploy, the CA back: {run.seconds:.1f}s")
    served = _served_certificate(balancer.extra_ports[443], _pebble_root(balancer), name)
    assert "Pebble Intermediate CA" in served.issuer.rfc4514_string()
    page = requests.get(f"https://127.0.0.1:{balancer.extra_ports[443]}/", headers={"Host": name}, verify=False,
                        timeout=10)
    assert page.status_code == 200 and page.text.strip() == GREETING
    redirect = requests.get(f"{balancer.url}/", headers={"Host": name}, allow_redirects=False, timeout=10)
    assert redirect.status_code == 301 and redirect.headers["Location"] == f"https://{name}/"
    # The app server needs none: certificates live on the balancer only.
    assert app.exec("test -e /etc/nginx/sites-enabled/greeting.conf || echo no-site").strip() == "no-site"
    assert _live(balancer).names == (name,)
    hosts.remove(balancer)

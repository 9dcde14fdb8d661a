"""Automatic HTTPS without a host (tasks/steps/acme.py, docs/https.md): the settings
refused before any host is touched, the rendered nginx config, the live certificate
read, the renewal units, and the deploy against mocked facts (tests/roles/test_distros.py).
On real hosts with a real ACME CA: tests/hosts/test_acme.py."""

from __future__ import annotations

import pytest
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from tasks import JINJA, TEMPLATES
from tasks.steps import acme
from tasks.roles.balancer import Upstream
from tasks.steps.nginx import Site
from tasks.config.checks import validate
from tasks.config.settings import SettingsError


NAME = "www.acme.test"


OTHER_NAME = "api.acme.test"


ACME = {"tls_acme": True, "acme_email": "ops@example.com", "nginx_server_names": [NAME]}


@pytest.mark.parametrize(("data", "message"), [
    ({"nginx_server_names": ["_"]}, "nginx_server_names: '_' cannot get an ACME certificate"),
    ({"nginx_server_names": ["www.example.com", "*.example.com"]}, "nginx_server_names: '*.example.com' cannot"),
    ({"nginx_server_names": ["10.0.0.5"]}, "nginx_server_names: '10.0.0.5' cannot"),
    ({"acme_email": None}, "acme_email: required with tls_acme"),
    ({"acme_email": "ops at example"}, "acme_email: 'ops at example' is not an email address"),
    ({"tls_certificate": "README.md", "tls_certificate_key": "README.md"},
     "tls_acme: the certificate comes from the ACME CA, so tls_certificate"),
    ({"nginx_port": 8080}, "nginx_port: 8080, but the ACME CA checks the HTTP-01 challenge on port 80"),
    ({"acme_directory": "http://ca.example/dir"}, "acme_directory: 'http://ca.example/dir' must be an https:// URL"),
    ({"acme_ca_bundle": "no/such.pem"}, "acme_ca_bundle: 'no/such.pem' is not a file"),
])
def test_acme_settings_refused_before_any_host(data, message):
    with pytest.raises(SettingsError) as error:
        validate({**ACME, **data})
    assert message in str(error.value)
    assert "nothing was changed on any host" in str(error.value)


def test_acme_settings_accepted():
    s = validate({**ACME, "nginx_server_names": ["WWW.Example.com.", "example.com"]})
    assert s.tls and s.tls_acme
    assert acme.certificate_names(s) == ("www.example.com", "example.com")
    assert s.health_url.startswith("https://")
    assert s.acme_directory == "https://acme-v02.api.letsencrypt.org/directory"
    # Without tls_acme the ACME keys are inert (group data may set them for all hosts).
    assert not validate({"acme_email": "ops@example.com"}).tls


def _render(template: str, s, https: bool, **context) -> str:
    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), undefined=StrictUndefined, **JINJA)
    return env.get_template(template).render(site=Site(s.app_name, [s]), s=s, https=https,
                                             acme_webroot=acme.WEBROOT, acme_challenge=acme.CHALLENGE_PATH, **context)


def _server_blocks(config: str) -> list[str]:
    return ["server {" + block for block in config.split("\nserver {")[1:]]


@pytest.mark.parametrize("template", ["nginx-site.conf.j2", "nginx-balancer.conf.j2"])
def test_acme_site_serves_http_with_the_challenge_until_its_certificate_is_here(template):
    s = validate({**ACME, "private_address": "10.0.0.2"})
    context = {"upstreams": [Upstream("app1", "10.0.0.5:3031")]} if "balancer" in template else {}
    challenge = f"location ^~ /.well-known/acme-challenge/ {{\n        root {acme.WEBROOT};"

    first = _render(template, s, https=False, **context)
    [plain] = _server_blocks(first)
    assert "listen 80;" in plain and challenge in plain and "ssl" not in plain and "return 301" not in plain

    live = _render(template, s, https=True, **context)
    http, https = _server_blocks(live)
    # Plain HTTP: the challenge is answered there, everything else redirected.
    assert "listen 80;" in http and challenge in http and "return 301 https://$host$request_uri;" in http
    assert "listen 443 ssl;" in https and challenge not in https
    assert f"ssl_certificate /etc/letsencrypt/live/{s.app_name}/fullchain.pem;" in https
    assert f"ssl_certificate_key /etc/letsencrypt/live/{s.app_name}/privkey.pem;" in https


def test_own_certificate_sites_have_no_challenge_location():
    s = validate({"nginx_server_names": ["tls.test"], "tls_certificate": "README.md",
                  "tls_certificate_key": "README.md"})
    config = _render("nginx-site.conf.j2", s, https=True)
    assert "acme-challenge" not in config and "ssl_certificate /etc/nginx/tls/greeting.crt;" in config


def test_live_certificate_read_from_openssl():
    output = ["notAfter=Mar  2 01:02:03 2031 GMT", "serial=0A1B", "X509v3 Subject Alternative Name: ",
              "    DNS:www.example.com, DNS:example.com"]
    info = acme.LiveCertificate().process(output)
    assert info.names == ("example.com", "www.example.com") and info.serial == "0A1B"
    assert info.not_after.year == 2031 and info.not_after.day == 2
    assert acme.LiveCertificate().process([]) is None


def test_renewal_units():
    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), undefined=StrictUndefined, **JINJA)
    timer = env.get_template("certbot-renew.timer.j2").render()
    assert "OnCalendar=*-*-* 00,12:00:00" in timer and "RandomizedDelaySec=12h" in timer
    assert "Persistent=true" in timer
    service = env.get_template("certbot-renew.service.j2").render(command=acme.RENEW_COMMAND, ca_bundle=None)
    assert f"ExecStart={acme.RENEW_COMMAND}" in service and "REQUESTS_CA_BUNDLE" not in service
    hook = (TEMPLATES / "certbot-deploy-hook.sh.j2").read_text()
    assert "nginx -t -q\nsystemctl reload nginx.service" in hook


DIRECTORY = "https://pebble:14000/dir"


def test_acme_deploy_steps_on_a_new_host_and_none_on_a_converged_one():
    from tests.roles.test_distros import deploy, host_facts

    data = {**ACME, "acme_directory": DIRECTORY}
    run = deploy({"debian12": host_facts("debian12")}, **data)["debian12"]
    names = list(run.changed)
    site = "/etc/nginx/sites-available/greeting.conf"
    steps = [f"nginx sites | Write the site {site} (plain HTTP until its ACME certificate is issued)",
             "nginx sites | Check the new nginx config (nginx -t) before it is loaded",
             "nginx sites | Reload nginx (its config or the socket group changed)",
             f"nginx sites | Request an ACME certificate for {NAME} from {DIRECTORY}",
             f"nginx sites | Write the site {site} with HTTPS (its certificate is here)",
             "nginx sites | Reload nginx (its config or the socket group changed) (to serve the new ACME certificate)"]
    assert [names.index(step) for step in steps] == sorted(names.index(step) for step in steps), names
    [request] = run.changed[steps[3]]
    assert (f"{acme.CERTBOT} certonly --non-interactive --agree-tos --no-eff-email -m ops@example.com "
            f"--server {DIRECTORY} --webroot -w {acme.WEBROOT} --cert-name greeting --renew-with-new-domains "
            f"-d {NAME} 2>&1") in request
    assert "REQUESTS_CA_BUNDLE" not in request
    assert any(name.startswith("nginx sites | ACME certificates | Install certbot") for name in names)

    # The certificate there, with its names and months to go: nothing is requested, the site is written once.
    from datetime import datetime, timedelta, timezone
    live = acme.CertificateInfo((NAME,), datetime.now(timezone.utc) + timedelta(days=80), "01")
    converged = deploy({"debian12": host_facts("debian12", LiveCertificate=lambda cert_name: live)}, **data)["debian12"]
    assert not [name for name in converged.changed if "Request" in name or "Re-issue" in name or "HTTPS" in name
                or "plain HTTP" in name]
    assert f"nginx sites | Write the site {site}" in converged.changed
    # Two days left: the deploy fails on that host, saying why.
    expiring = live._replace(not_after=datetime.now(timezone.utc) + timedelta(days=2))
    failing = deploy({"debian12": host_facts("debian12", LiveCertificate=lambda cert_name: expiring)},
                     **data)["debian12"]
    [check] = [commands for name, commands in failing.changed.items() if "is valid for 14 days" in name]
    assert "expires in 2.0 days" in check[0] and "its renewal is failing" in check[0]


def test_a_failed_renewal_is_shown_by_every_run(caplog):
    from datetime import datetime, timedelta, timezone

    from tests.roles.test_distros import deploy, host_facts

    live = acme.CertificateInfo((NAME,), datetime.now(timezone.utc) + timedelta(days=40), "01")
    data = {**ACME, "acme_directory": DIRECTORY}
    for failed in (False, True):
        caplog.clear()
        facts = host_facts("debian12", LiveCertificate=lambda cert_name: live,
                           UnitFailed=lambda unit: failed and unit == f"{acme.RENEW_UNIT}.service")
        with caplog.at_level("WARNING", logger="pyinfra"):
            deploy({"debian12": facts}, **data)
        warned = [r.getMessage() for r in caplog.records if "last certificate renewal failed" in r.getMessage()]
        assert bool(warned) is failed, warned
    assert f"journalctl -u {acme.RENEW_UNIT}.service" in warned[0]


def test_acme_on_rhel_labels_certbot_and_the_webroot_and_opens_https():
    from tests.roles.test_distros import RHEL_PACKAGES, deploy, host_facts

    run = deploy({"rocky9": host_facts("rocky9")}, **ACME)["rocky9"]
    assert run.changed[f"SELinux | Label {acme.WEBROOT} httpd_sys_content_t (SELinux file context rule)"] == [
        f"semanage fcontext -a -t httpd_sys_content_t '{acme.WEBROOT}(/.*)?'"]
    assert f"SELinux | Label {acme.VENV}/bin bin_t (SELinux file context rule)" in run.changed
    [relabel] = [commands for name, commands in run.changed.items() if "by the SELinux rules (restorecon)" in name
                 and "ACME" in name]
    assert relabel == [f"if selinuxenabled 2>/dev/null; then restorecon -R -i {acme.VENV}/bin {acme.WEBROOT}; fi"]
    assert "Firewall | Open 80/tcp, 443/tcp in firewalld (permanently, then reload)" in run.changed
    # python3 -m venv is part of RHEL's python3: no package more than without ACME.
    assert f"System packages | Install {RHEL_PACKAGES.replace(' ', ', ')}" in run.changed

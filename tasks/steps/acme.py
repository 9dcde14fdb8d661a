"""Automatic HTTPS: certificates from an ACME CA (Let's Encrypt by default),
issued, renewed and loaded into nginx by the deploy (`tls_acme`; docs/https.md).

certbot lives in a venv of its own (as uWSGI does), pinned, and answers the CA's
HTTP-01 challenge from a root-owned webroot that every nginx site serves at
/.well-known/acme-challenge/ over plain HTTP (never redirected). Whether a
certificate must be requested is read from the live certificate itself (its
names and expiry, with openssl), never by asking certbot or the CA, so a run
with nothing to do contacts no CA and changes nothing. tasks/steps/nginx.py calls
`prepare` before it writes the sites and `obtain` after it has reloaded nginx
with the challenge location in place; tasks/config/checks.py's `acme` validates the
settings.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import NamedTuple

from pyinfra import host, logger
from pyinfra.api import FactBase, deploy
from pyinfra.api.exceptions import DeployError
from pyinfra.operations import files, pip, server, systemd

from tasks import JINJA, TEMPLATES
from tasks.config.checks import certificate_names

CERTBOT_VERSION = "4.2.0"
VENV = f"/opt/pyinfra-flask/certbot-{CERTBOT_VERSION}"
CERTBOT = f"{VENV}/bin/certbot"
# certbot writes each challenge answer under <webroot>/.well-known/acme-challenge/.
WEBROOT = "/var/lib/pyinfra-flask/acme"
CHALLENGE_PATH = "/.well-known/acme-challenge/"
LIVE_DIR = "/etc/letsencrypt/live"
CA_BUNDLE = "/etc/pyinfra-flask/acme-ca.pem"
RENEW_UNIT = "pyinfra-flask-certbot-renew"
# certbot runs every executable here after it renewed a certificate (only then).
DEPLOY_HOOK = "/etc/letsencrypt/renewal-hooks/deploy/pyinfra-flask-reload-nginx"
# The timer spreads renewals over the day itself, so certbot's own random sleep is off.
RENEW_COMMAND = f"{CERTBOT} renew --non-interactive --no-random-sleep-on-renew"
STAGING = "https://acme-staging-v02.api.letsencrypt.org/directory"

def selinux_labels() -> dict[str, str]:
    """SELinux types on RHEL: certbot a program systemd may start, the webroot content nginx may read."""
    return {f"{VENV}/bin": "bin_t", WEBROOT: "httpd_sys_content_t"}


def certificate_paths(cert_name: str) -> tuple[str, str]:
    """certbot's live certificate (full chain) and key for a site."""
    return f"{LIVE_DIR}/{cert_name}/fullchain.pem", f"{LIVE_DIR}/{cert_name}/privkey.pem"


class CertificateInfo(NamedTuple):
    names: tuple[str, ...]
    not_after: datetime
    serial: str

    def days_left(self, now: datetime | None = None) -> float:
        return (self.not_after - (now or datetime.now(timezone.utc))).total_seconds() / 86400


class LiveCertificate(FactBase):
    """The names, expiry and serial of certbot's live certificate for a site, read
    with openssl; None when there is none (or it cannot be read)."""

    def command(self, cert_name: str) -> str:
        path = shlex.quote(certificate_paths(cert_name)[0])
        return (f"if [ -f {path} ]; then openssl x509 -in {path} -noout -enddate -serial "
                f"-ext subjectAltName 2>/dev/null || true; fi")

    def process(self, output: list[str]) -> CertificateInfo | None:
        not_after, serial, names = None, "", []
        for line in output:
            line = line.strip()
            if line.startswith("notAfter="):
                try:
                    not_after = datetime.strptime(line[len("notAfter="):].replace("  ", " "),
                                                  "%b %d %H:%M:%S %Y %Z").replace(tzinfo=timezone.utc)
                except ValueError:
                    return None
            elif line.startswith("serial="):
                serial = line[len("serial="):]
            elif line.startswith("DNS:"):
                names += [part.strip()[len("DNS:"):] for part in line.split(",") if part.strip().startswith("DNS:")]
        if not_after is None:
            return None
        return CertificateInfo(tuple(sorted(name.lower() for name in names)), not_after, serial)


@dataclass
class Request:
    """A certificate this run must obtain for a site (none yet, or other names)."""

    site: object
    names: tuple[str, ...]
    have: CertificateInfo | None

    @property
    def first(self) -> bool:
        """No certificate at all yet: the site serves plain HTTP until it is issued."""
        return self.have is None


def _host_wide(acme_apps) -> object:
    """certbot, its CA bundle and the renewal timer are one per host: every app
    with tls_acme on a host must agree on how to reach the CA."""
    first = acme_apps[0]
    for app in acme_apps[1:]:
        for key in ("acme_directory", "acme_ca_bundle", "acme_email"):
            if getattr(app, key) != getattr(first, key):
                raise DeployError(f"{key}: {app.app_name} and {first.app_name} on host {host.name!r} differ; "
                                  "certbot is one per host, so apps with tls_acme on a host must share it; "
                                  "nothing was changed.")
    return first


@deploy("ACME certificates")
def prepare(platform, sites) -> list[Request]:
    """certbot, the challenge webroot and the renewal timer on a host with ACME
    sites; what must be requested this run. A live certificate about to expire
    fails the run (renewal is not working)."""
    acme_sites = [site for site in sites if site.apps[0].tls_acme]
    if not acme_sites:
        return []
    s = _host_wide([site.apps[0] for site in acme_sites])
    created = [
        pip.venv(name=f"Create certbot's virtualenv {VENV}", path=VENV, python="python3"),
        pip.packages(name=f"Install certbot {CERTBOT_VERSION} in its virtualenv",
                     packages=[f"certbot=={CERTBOT_VERSION}"], pip=f"{VENV}/bin/pip"),
        files.directory(name=f"Create the ACME challenge webroot {WEBROOT} (root's, nginx reads it)", path=WEBROOT,
                        user="root", group="root", mode="755"),
    ]
    if platform.family == "rhel":
        # New paths take their parent's label: relabelled by the rules tasks/steps/selinux.py set.
        paths = " ".join(selinux_labels())
        server.shell(name=f"Label {paths} by the SELinux rules (restorecon)",
                     commands=[f"if selinuxenabled 2>/dev/null; then restorecon -R -i {paths}; fi"],
                     _if=lambda: any(op.did_change() for op in created))
    if s.acme_ca_bundle:
        files.directory(name="Create /etc/pyinfra-flask", path="/etc/pyinfra-flask", user="root", group="root",
                        mode="755")
        files.put(name=f"Trust the CA bundle acme_ca_bundle for the ACME server ({CA_BUNDLE})",
                  src=str(s.local_path(s.acme_ca_bundle)), dest=CA_BUNDLE, user="root", group="root", mode="644")
    else:
        files.file(name=f"No extra CA for the ACME server ({CA_BUNDLE} absent)", path=CA_BUNDLE, present=False)
    _renewal(s)
    if host.get_fact(UnitFailed, unit=f"{RENEW_UNIT}.service"):
        # Shown by every run (a no-op one too) until a renewal succeeds; the
        # expiry check below fails the run once the certificate gets close.
        logger.warning(f"[{host.name}] WARNING: the last certificate renewal failed ({RENEW_UNIT}.service): "
                       f"see `journalctl -u {RENEW_UNIT}.service`; certbot tries again at the next timer run")
    requests = []
    for site in acme_sites:
        names = certificate_names(site.apps[0])
        have = host.get_fact(LiveCertificate, cert_name=site.name)
        if have is None or have.names != tuple(sorted(names)):
            requests.append(Request(site, names, have))
        elif have.days_left() < site.apps[0].acme_min_valid_days:
            server.shell(
                name=f"Check the certificate of {site.name} is valid for {site.apps[0].acme_min_valid_days} days",
                commands=[f"echo {shlex.quote(_expiry_message(site, have))} >&2; exit 1"],
            )
    return requests


class UnitFailed(FactBase):
    """Whether a systemd unit is in the failed state (its last run failed)."""

    def command(self, unit: str) -> str:
        return f"systemctl is-failed --quiet {shlex.quote(unit)} && echo failed || echo ok"

    def process(self, output: list[str]) -> bool:
        return output[-1:] == ["failed"]


def _expiry_message(site, have: CertificateInfo) -> str:
    return (f"ERROR: the ACME certificate of {site.name} ({', '.join(have.names)}) on {host.name} expires in "
            f"{have.days_left():.1f} days ({have.not_after:%Y-%m-%d %H:%M} UTC), under acme_min_valid_days="
            f"{site.apps[0].acme_min_valid_days}: its renewal is failing. See `systemctl status {RENEW_UNIT}.service` "
            f"and `journalctl -u {RENEW_UNIT}.service`; nothing was changed by this deploy.")


def _renewal(app) -> None:
    """Twice a day at a random time, certbot renews what is due; its deploy hook
    reloads nginx only when the config passes `nginx -t` (a reload is graceful:
    no request dropped)."""
    files.directory(name="Create certbot's deploy hook directory", path=DEPLOY_HOOK.rsplit("/", 1)[0],
                    user="root", group="root", mode="755")
    files.template(jinja_env_kwargs=JINJA, name=f"Install the renewal's deploy hook {DEPLOY_HOOK}",
                   src=str(TEMPLATES / "certbot-deploy-hook.sh.j2"), dest=DEPLOY_HOOK,
                   user="root", group="root", mode="755")
    units = [
        files.template(jinja_env_kwargs=JINJA, name=f"Write {RENEW_UNIT}.{kind}",
                       src=str(TEMPLATES / f"certbot-renew.{kind}.j2"), dest=f"/etc/systemd/system/{RENEW_UNIT}.{kind}",
                       user="root", group="root", mode="644", command=RENEW_COMMAND,
                       ca_bundle=CA_BUNDLE if app.acme_ca_bundle else None)
        for kind in ("service", "timer")
    ]
    systemd.daemon_reload(name="Reload systemd (the renewal units changed)",
                          _if=lambda: any(unit.did_change() for unit in units))
    systemd.service(name=f"Keep the renewal timer {RENEW_UNIT}.timer running and enabled",
                    service=f"{RENEW_UNIT}.timer", running=True, enabled=True)


def _certbot_script(app, request: Request) -> str:
    env = f"REQUESTS_CA_BUNDLE={shlex.quote(CA_BUNDLE)} " if app.acme_ca_bundle else ""
    domains = " ".join(f"-d {shlex.quote(name)}" for name in request.names)
    command = (f"{env}{CERTBOT} certonly --non-interactive --agree-tos --no-eff-email "
               f"-m {shlex.quote(app.acme_email)} --server {shlex.quote(app.acme_directory)} "
               f"--webroot -w {WEBROOT} --cert-name {shlex.quote(request.site.name)} "
               f"--renew-with-new-domains {domains}")
    was = ("the site serves plain HTTP, as before" if request.first
           else "nginx keeps serving the previous certificate")
    message = (f"ERROR: the ACME CA at {app.acme_directory} issued no certificate for {', '.join(request.names)} "
               f"on $(hostname) (certbot's words above): {was}; the next deploy asks again.")
    return f"""
if ! output=$({command} 2>&1); then
    echo "$output" >&2
    echo "{message}" >&2
    exit 1
fi
"""


def obtain(requests: list[Request]) -> list:
    """certbot asks the CA for each certificate (nginx already answers the
    challenge); a failure stops the run with certbot's reason and the CA's URL."""
    ops = []
    for request in requests:
        s = request.site.apps[0]
        names = ", ".join(request.names)
        ops.append(server.shell(
            name=(f"Request an ACME certificate for {names} from {s.acme_directory}" if request.first else
                  f"Re-issue the ACME certificate for {names} from {s.acme_directory} "
                  f"(it has {', '.join(request.have.names)})"),
            commands=[_certbot_script(s, request)],
        ))
    return ops

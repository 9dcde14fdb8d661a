"""nginx in front of the apps: one site per host name (and port), holding every app
mounted there; validated before nginx ever loads it."""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from jinja2 import FileSystemLoader
from pyinfra import host
from pyinfra.api import FactBase, deploy
from pyinfra.operations import files, server, systemd

from tasks import JINJA, REPO_ROOT, TEMPLATES
from tasks.steps import acme, default_server, maintenance, uwsgi
from tasks.steps.secrets import put_secret

MARKER = "(pyinfra-flask site)"
TLS_DIR = "/etc/nginx/tls"


@dataclass
class Site:
    """The apps served under the same host names and port: one nginx site file."""

    name: str
    apps: list

    @property
    def var(self) -> str:
        return self.name.replace("-", "_")

    @property
    def websockets(self) -> bool:
        return any(app.gevent for app in self.apps)

    @property
    def acme(self) -> bool:
        return self.apps[0].tls_acme

    @property
    def certificate(self) -> str:
        return acme.certificate_paths(self.name)[0] if self.acme else f"{TLS_DIR}/{self.name}.crt"

    @property
    def certificate_key(self) -> str:
        return acme.certificate_paths(self.name)[1] if self.acme else f"{TLS_DIR}/{self.name}.key"


def sites_for(apps) -> list[Site]:
    """Group apps by (port, host names); each group is named after its first app."""
    groups: dict[tuple, list] = {}
    for app in apps:
        groups.setdefault((app.nginx_port, tuple(app.nginx_server_names)), []).append(app)
    return [Site(group[0].app_name, group) for group in groups.values()]


class OurSites(FactBase):
    """Names of the site files this deploy wrote earlier (they carry its marker)."""

    @staticmethod
    def default() -> list[str]:
        return []

    def command(self, site_dir: str) -> str:
        return f"grep -l -F {shlex.quote(MARKER)} {shlex.quote(site_dir)}/*.conf 2>/dev/null || true"

    def process(self, output: list[str]) -> list[str]:
        return [line.rsplit("/", 1)[1][: -len(".conf")] for line in output if line.endswith(".conf")]


def _validate_or_restore(platform, names: list[str]) -> str:
    """`nginx -t` the new sites. On success keep copies as the last good ones; on
    failure put the last good ones back (or take new sites out), print nginx's own
    message and fail. nginx is not reloaded, so it keeps serving the previous
    config, and the next run sees the difference and tries again."""
    keep, restore = [], []
    for name in names:
        site = shlex.quote(platform.site_path(name))
        last_good = shlex.quote(f"{platform.nginx_site_dir}/.{name}.conf.last-good")
        enabled = shlex.quote(platform.enabled_path(name) or platform.site_path(name))
        keep.append(f"cp -p {site} {last_good}")
        restore.append(f"if [ -f {last_good} ]; then cp -p {last_good} {site}; else rm -f {enabled} {site}; fi")
    newline = "\n    "
    return f"""
if output=$(nginx -t 2>&1); then
    {newline.join(keep)}
else
    echo "$output" >&2
    {newline.join(restore)}
    echo "nginx rejected the new config on $(hostname) (nginx -t, above);" \\
         "the previous config keeps serving and nginx was not reloaded." >&2
    exit 1
fi
"""


def _log_dirs(apps) -> list[str]:
    paths = {path for app in apps for path in (app.nginx_access_log, app.nginx_error_log) if path.startswith("/")}
    return sorted({path.rsplit("/", 1)[0] for path in paths} - {"/var/log/nginx"})


@deploy("nginx sites")
def configure(platform, sites: list[Site], reload_triggers=(), template="nginx-site.conf.j2",
              balancer_canary: dict | None = None, **context):
    """Write every site, disable the distribution's default and sites of apps no
    longer deployed, check it all with `nginx -t`, reload once. `balancer_canary`: on a
    balancer, what its release tool needs of a canary (tasks/steps/maintenance.py)."""
    for log_dir in _log_dirs(app for site in sites for app in site.apps):
        # nginx refuses to start when a log file's directory is missing.
        files.directory(name=f"Create the log directory {log_dir}", path=log_dir, mode="755")

    # The maintenance pages the sites name (tasks/steps/maintenance.py): served from disk,
    # so they need no reload.
    maintenance.install([app for site in sites for app in site.apps], balancer_canary)
    # RHEL keeps a default server inside nginx.conf: disabled before ours, see there.
    changes = [*default_server.disable(platform)]
    if any(site.apps[0].tls and not site.acme for site in sites):
        files.directory(name=f"Create {TLS_DIR} (root only)", path=TLS_DIR, user="root", group="root", mode="700")
    # ACME sites without a certificate yet serve plain HTTP (and the challenge) until
    # it is issued, below; each step leaves a config that passes `nginx -t`.
    requests = acme.prepare(platform, sites)
    first = {request.site.name for request in requests if request.first}
    for site in sites:
        s = site.apps[0]
        if s.tls and not site.acme:
            changes.append(files.put(name=f"Upload the certificate for {site.name}", mode="644",
                                     src=str(s.local_path(s.tls_certificate)), dest=site.certificate))
            changes.append(put_secret(name=f"Upload the private key for {site.name} (mode 600, never shown)",
                                      src=str(s.local_path(s.tls_certificate_key)), dest=site.certificate_key))
        changes.append(_write_site(platform, site, template, context, https=site.name not in first))
        if platform.enabled_path(site.name):
            changes.append(files.link(name=f"Enable the site {site.name}", path=platform.enabled_path(site.name),
                                      target=platform.site_path(site.name)))
    if platform.nginx_default_site:
        changes.append(files.link(name="Disable the distribution's default site",
                                  path=platform.nginx_default_site, present=False))
    wanted = {site.name for site in sites}
    changes += _remove_sites(platform, [name for name in host.get_fact(OurSites, site_dir=platform.nginx_site_dir)
                                        if name not in wanted])

    reloads = [_check_and_reload(platform, sorted(wanted), changes, reload_triggers)]
    if requests:
        issued = acme.obtain(requests)
        https = [_write_site(platform, site, template, context, https=True, why=" with HTTPS (its certificate is here)")
                 for site in sites if site.name in first]
        reloads.append(_check_and_reload(platform, sorted(wanted), [*https, *issued], (),
                                         why=" (to serve the new ACME certificate)"))
    restart_policy = files.put(
        name="Let systemd restart nginx if it dies",
        src=str(REPO_ROOT / "files/nginx-restart.conf"),
        dest="/etc/systemd/system/nginx.service.d/pyinfra-flask.conf",
        mode="644",
    )
    systemd.daemon_reload(name="Reload systemd (nginx's restart policy changed)", _if=restart_policy.did_change)
    start = systemd.service(
        name="Keep nginx running and started at boot",
        service="nginx.service",
        running=True,
        enabled=True,
    )
    return [*reloads, start]


def _write_site(platform, site: Site, template: str, context: dict, https: bool, why: str = ""):
    """The site's file; `https=False` leaves out its HTTPS server (an ACME site
    before its first certificate)."""
    if not https:
        why = " (plain HTTP until its ACME certificate is issued)"
    # The templates include their shared parts from templates/ (pyinfra's own loader reads the cwd).
    return files.template(
        jinja_env_kwargs={**JINJA, "loader": FileSystemLoader(str(TEMPLATES))},
        name=f"Write the site {platform.site_path(site.name)}{why}",
        src=str(TEMPLATES / template), dest=platform.site_path(site.name), mode="644",
        site=site, https=https, acme_webroot=acme.WEBROOT, acme_challenge=acme.CHALLENGE_PATH,
        sockets=uwsgi.sockets, **context,
    )


def _check_and_reload(platform, names: list[str], changes, reload_triggers, why: str = ""):
    """`nginx -t` when a site changed (the last good config back if it fails), then
    one reload, also when an op in `reload_triggers` changed."""
    validated = server.shell(
        name=f"Check the new nginx config (nginx -t) before it is loaded{why}",
        commands=[_validate_or_restore(platform, names)],
        _if=lambda: any(op.did_change() for op in changes),
    )
    return server.shell(
        name=f"Reload nginx (its config or the socket group changed){why}",
        commands=["systemctl reload-or-restart nginx.service"],
        _if=lambda: validated.did_change() or any(op.did_change() for op in reload_triggers),
    )


def _remove_sites(platform, names: list[str]) -> list:
    ops = []
    for name in names:
        if platform.enabled_path(name):
            ops.append(files.link(name=f"Disable the site {name} (no longer deployed)",
                                  path=platform.enabled_path(name), present=False))
        ops.append(files.file(name=f"Remove the site {name}", path=platform.site_path(name), present=False))
        ops.append(files.file(name=f"Remove the last good copy of {name}", present=False,
                              path=f"{platform.nginx_site_dir}/.{name}.conf.last-good"))
    return ops


@deploy("nginx site removal")
def remove(platform, names: list[str]):
    """Take sites out of this host's nginx (e.g. a host that now sits behind a load
    balancer): nginx itself stays, for whatever else it serves."""
    removed = _remove_sites(platform, names)
    return [server.shell(
        name="Reload nginx without them (if it runs)",
        commands=["if systemctl is-active --quiet nginx.service; then systemctl reload nginx.service; fi"],
        _if=lambda: any(op.did_change() for op in removed),
    )]

"""The nginx site in front of uWSGI: validated before nginx ever loads it."""

import shlex

from pyinfra.api import deploy
from pyinfra.operations import files, server, systemd

from tasks import TEMPLATES, default_server


def _validate_or_restore(site: str, last_good: str, enabled: str, app: str) -> str:
    """`nginx -t` the new site. On success keep a copy as the last good one; on
    failure put the last good one back (or take the new site out), print nginx's
    own message and fail. nginx is not reloaded, so it keeps serving the previous
    config, and the next run sees the difference and tries again."""
    site, last_good, enabled = map(shlex.quote, (site, last_good, enabled))
    return f"""
if output=$(nginx -t 2>&1); then
    cp -p {site} {last_good}
else
    echo "$output" >&2
    if [ -f {last_good} ]; then cp -p {last_good} {site}; else rm -f {enabled} {site}; fi
    echo "nginx rejected the new config for {app} on $(hostname) (nginx -t, above);" \\
         "the previous config keeps serving and nginx was not reloaded." >&2
    exit 1
fi
"""


@deploy("nginx site")
def configure(platform, s, reload_triggers=(), template="nginx-site.conf.j2", **context):
    site = platform.site_path(s.app_name)
    enabled = platform.enabled_path(s.app_name)
    # Outside anything nginx includes (no .conf suffix).
    last_good = f"{platform.nginx_site_dir}/.{s.app_name}.conf.last-good"

    log_dirs = {path.rsplit("/", 1)[0] for path in (s.nginx_access_log, s.nginx_error_log)
                if path.startswith("/")}
    for log_dir in sorted(log_dirs - {"/var/log/nginx"}):
        # nginx refuses to start when a log file's directory is missing.
        files.directory(name=f"Create the log directory {log_dir}", path=log_dir, mode="755")

    changes = [
        *default_server.disable(platform),  # RHEL's, inside nginx.conf: before ours, see there
        files.template(
            name=f"Write the site {site}",
            src=str(TEMPLATES / template),
            dest=site,
            mode="644",
            s=s,
            **context,
        ),
    ]
    if enabled:
        changes.append(files.link(name=f"Enable the site ({enabled})", path=enabled, target=site))
    if platform.nginx_default_site:
        changes.append(files.link(name="Disable the distribution's default site",
                                  path=platform.nginx_default_site, present=False))
    validated = server.shell(
        name="Check the new nginx config (nginx -t) before it is loaded",
        commands=[_validate_or_restore(site, last_good, enabled or site, s.app_name)],
        _if=lambda: any(op.did_change() for op in changes),
    )
    reload = server.shell(
        name="Reload nginx (its config or the socket group changed)",
        commands=["systemctl reload-or-restart nginx.service"],
        _if=lambda: validated.did_change() or any(op.did_change() for op in reload_triggers),
    )
    start = systemd.service(
        name="Keep nginx running and started at boot",
        service="nginx.service",
        running=True,
        enabled=True,
    )
    return [reload, start]


@deploy("nginx site removal")
def remove(platform, s):
    """Take the app's site out of this host's nginx (e.g. a host that now sits behind
    a load balancer): nginx itself stays, for whatever else it serves."""
    removed = [
        files.file(name=f"Remove the site {s.app_name}", path=platform.site_path(s.app_name), present=False),
        files.file(name="Remove its last good copy", present=False,
                   path=f"{platform.nginx_site_dir}/.{s.app_name}.conf.last-good"),
    ]
    if platform.enabled_path(s.app_name):
        removed.insert(0, files.link(name=f"Disable the site {s.app_name}", present=False,
                                     path=platform.enabled_path(s.app_name)))
    return [server.shell(
        name="Reload nginx without the site (if it runs)",
        commands=["if systemctl is-active --quiet nginx.service; then systemctl reload nginx.service; fi"],
        _if=lambda: any(op.did_change() for op in removed),
    )]

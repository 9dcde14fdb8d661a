"""Converge each host to: nginx -> uWSGI (unix socket, systemd) -> the Flask app.

    pyinfra inventories/prod.py deploy.py               # apply
    pyinfra inventories/prod.py deploy.py --dry --diff  # show what would change

Settings come from host/group data (see tasks/settings.py and the README); they are
validated before any operation is added, so bad settings never touch a host.
"""

from pyinfra import host

from tasks import healthcheck, nginx, packages, platform, release, service, users, uwsgi
from tasks.settings import load_settings

s = load_settings(host)
system = platform.detect(host)

packages.install(system, s)
nginx_in_group = users.create(system, s)
uwsgi_installed = uwsgi.install(s)
new_release = release.prepare(s)
uwsgi_ini = uwsgi.configure(s)
unit = service.install(s)
nginx_ops = nginx.configure(system, s, reload_triggers=[nginx_in_group])
app_ops = release.activate(
    s, new_release,
    restart_triggers=[op for op in (unit, uwsgi_installed) if op],
    reload_triggers=[uwsgi_ini],
)
healthcheck.verify(s, new_release, service_ops=app_ops + nginx_ops)

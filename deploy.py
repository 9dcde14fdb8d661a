"""Converge each host to: nginx -> uWSGI (unix socket, systemd) -> the Flask app.

    pyinfra inventories/prod.py deploy.py               # apply
    pyinfra inventories/prod.py deploy.py --dry --diff  # show what would change

Settings come from host/group data (see tasks/settings.py and the README); they are
validated before any operation is added, so bad settings never touch a host.
"""

from pyinfra import host

from tasks import code, healthcheck, nginx, packages, platform, service, users, uwsgi, venv
from tasks.settings import load_settings

s = load_settings(host)
system = platform.detect(host)

packages.install(system, s)
nginx_in_group = users.create(system, s)
venv_ops = venv.create(s)
code_op = code.upload(s)
uwsgi_ops = uwsgi.configure(s)
app_ops = service.run(s, restart_triggers=venv_ops + uwsgi_ops, reload_triggers=[code_op])
nginx_ops = nginx.configure(system, s, reload_triggers=[nginx_in_group])
healthcheck.verify(s, service_ops=app_ops + nginx_ops)

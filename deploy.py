"""Converge each host to: nginx -> uWSGI (systemd) -> the Flask app, or, for hosts in
the `load_balancers` group, to nginx balancing over the `app_servers`.

    pyinfra inventories/prod.py deploy.py               # apply
    pyinfra inventories/prod.py deploy.py --dry --diff  # show what would change

Settings come from host/group data (see tasks/settings.py and the README); they are
validated before any operation is added, so bad settings never touch a host.
"""

from pyinfra import host

from tasks import balancer, healthcheck, nginx, packages, platform, release, service, topology, users, uwsgi
from tasks import firewall, selinux
from tasks.settings import load_settings

s = load_settings(host)
system = platform.detect(host)

if not topology.is_balancer(host):
    local_nginx = not s.behind_balancer
    packages.install(system, s, nginx=local_nginx)
    nginx_in_group = users.create(system, s)
    uwsgi_installed = uwsgi.install(s)
    new_release = release.prepare(s)
    uwsgi_ini = uwsgi.configure(s)
    unit = service.install(s)
    selinux.allow(system, s, nginx=local_nginx, relabel_after=[uwsgi_installed])
    firewall.open_ports(system, s, nginx=local_nginx)
    if local_nginx:
        nginx_ops = nginx.configure(system, s, reload_triggers=[nginx_in_group])
    else:
        nginx_ops = nginx.remove(system, s)
    app_ops = release.activate(
        s, new_release,
        restart_triggers=[op for op in (unit, uwsgi_installed) if op],
        reload_triggers=[uwsgi_ini],
    )
    healthcheck.verify(s, new_release, service_ops=app_ops + nginx_ops)

# In a run over everything, balancers start only once every app server is ready.
topology.wait_for_app_servers()

if topology.is_balancer(host):
    packages.install(system, s, app=False)
    selinux.allow(system, s, app=False)
    firewall.open_ports(system, s, app=False)
    balancer.configure(system, s, upstreams=topology.upstreams(host, load_settings))

"""Converge each host to: nginx -> uWSGI (systemd) -> the Flask app(s), or, for hosts
in the `load_balancers` group, to nginx balancing over the `app_servers`.

    pyinfra inventories/prod.py deploy.py               # apply
    pyinfra inventories/prod.py deploy.py --dry --diff  # show what would change

Settings come from host/group data (see tasks/settings.py and the README); they are
validated before any operation is added, so bad settings never touch a host.
"""

from pyinfra import host
from pyinfra.api import deploy

from tasks import (balancer, firewall, healthcheck, lock, logs, nginx, packages, platform, preflight, prefetch,
                   release, selinux, service, topology, uploads, users, uwsgi)
from tasks.settings import load_apps

apps = load_apps(host)
# Facts in one batched command per phase (see tasks/prefetch.py); in the first, before
# anything is read, the deploy lock: one run at a time per app and host (tasks/lock.py).
prefetch.start(host, enabled=apps[0].fact_batch, first=lock.first_asks(host, apps))
lock.take(host, apps)
system = platform.detect(host)
if not topology.is_balancer(host):
    preflight.check(apps)


@deploy("App server")
def app_server():
    local_nginx = not apps[0].behind_balancer
    packages.install(system, apps[0], nginx=local_nginx)
    # One uWSGI build per version, shared by the apps that use it.
    uwsgi_builds = {version: uwsgi.install(app) for version, app in {a.uwsgi_version: a for a in apps}.items()}
    prepared = {}
    for s in host.loop(apps):
        prepared[s.app_name] = (
            users.create(system, s),
            release.prepare(s),
            uwsgi.configure(s),
            service.install(s),
        )
        logs.rotate(s)
        selinux.allow(system, s, nginx=local_nginx, relabel_after=[uwsgi_builds[s.uwsgi_version]])
        firewall.open_ports(system, s, nginx=local_nginx)
    firewall.guard_uwsgi(system, apps, topology.balancers(host, load_apps))
    service.remove_stale(apps)
    if local_nginx:
        nginx_ops = nginx.configure(system, nginx.sites_for(apps),
                                    reload_triggers=[group for group, *_ in prepared.values() if group])
    else:
        nginx_ops = nginx.remove(system, [site.name for site in nginx.sites_for(apps)])
    for s in host.loop(apps):
        _, new_release, uwsgi_ini, unit = prepared[s.app_name]
        app_ops = release.activate(
            s, new_release,
            restart_triggers=[op for op in (unit, uwsgi_builds[s.uwsgi_version], new_release.environment) if op],
            reload_triggers=[uwsgi_ini],
        )
        healthcheck.verify(s, new_release, service_ops=app_ops + nginx_ops)
    firewall.remove_stale(apps)


@deploy("Load balancer")
def load_balancer():
    packages.install(system, apps[0], app=False)
    selinux.allow(system, apps[0], app=False)
    firewall.open_ports(system, apps[0], app=False)
    balancer.configure(system, apps[0], upstreams=topology.upstreams(host, apps[0].app_name, load_apps))


# Every upload passes through a directory only the SSH user can enter.
private = {"_temp_dir": uploads.private_directory()}
if not topology.is_balancer(host):
    app_server(**private)
# In a run over everything, balancers start only once every app server is ready.
topology.wait_for_app_servers()
if topology.is_balancer(host):
    load_balancer(**private)

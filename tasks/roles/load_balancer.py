"""A load balancer: nginx alone, spreading requests over the app servers' uWSGI."""

from pyinfra import host
from pyinfra.api import deploy

from tasks.config import inventory
from tasks.roles import balancer
from tasks.steps import firewall, packages, selinux


@deploy("Load balancer")
def converge(system, s):
    packages.install(system, s, app=False)
    selinux.allow(system, s, app=False)
    firewall.open_ports(system, s, app=False)
    balancer.configure(system, s, upstreams=inventory.upstreams(host, s.app_name))

"""This host as the deploy sees it: its role in the inventory and its apps.

A host runs one or more apps, but some values are the host's, not an app's: its
role, its private address, whether its facts are batched, the deploy lock's
timeout. They are set once per host (in its data, shared by every app), so the
first app holds them: `Host.settings` says so, where `apps[0]` used to.
"""

from __future__ import annotations

from dataclasses import dataclass

from tasks.config import topology
from tasks.config.app import App
from tasks.config.inventory import load_apps

APP_SERVER = "app_server"
BALANCER = "balancer"
DATABASE_SERVER = "database_server"
MONITORING_SERVER = "monitoring_server"
BACKUP_SERVER = "backup_server"


@dataclass(frozen=True)
class Host:
    name: str
    role: str  # APP_SERVER, BALANCER, DATABASE_SERVER, MONITORING_SERVER or BACKUP_SERVER
    apps: list[App]

    @property
    def settings(self) -> App:
        """The host-wide values (role, private address, fact batch, ...): every app of the
        host has the same, read from the first."""
        return self.apps[0]

    @property
    def is_app_server(self) -> bool:
        return self.role == APP_SERVER

    @property
    def is_balancer(self) -> bool:
        return self.role == BALANCER

    @property
    def is_database_server(self) -> bool:
        return self.role == DATABASE_SERVER

    @property
    def is_monitoring_server(self) -> bool:
        return self.role == MONITORING_SERVER

    @property
    def is_backup_server(self) -> bool:
        return self.role == BACKUP_SERVER


def role(host) -> str:
    """The host's role, from its groups (tasks/config/topology.py)."""
    if topology.is_balancer(host):
        return BALANCER
    if topology.is_database_server(host):
        return DATABASE_SERVER
    if topology.is_monitoring_server(host):
        return MONITORING_SERVER
    if topology.is_backup_server(host):
        return BACKUP_SERVER
    return APP_SERVER


def load(host, secrets: bool = True) -> Host:
    """A pyinfra host's role and apps, validated (tasks/config/inventory.py)."""
    return Host(host.name, role(host), load_apps(host, secrets=secrets))

"""Barriers: one operation that every host runs at the same point of deploy.py, so
that the hosts of one role wait for those of another (tasks/config/topology.py says
which host has which role)."""

from __future__ import annotations

from pyinfra.operations import server


def wait_for_database_server() -> None:
    """The same barrier (see wait_for_app_servers) after the db server's steps: an
    app server's first migration, and the copy of its DATABASE_URL, need them done."""
    server.shell(name="Wait until the database server is deployed", commands=[])


def wait_for_backup_keys() -> None:
    """The same barrier (see wait_for_app_servers) once the db server, the backup host
    and the app servers have their backups' SSH keys (pgBackRest's, restic's): each
    then reads the others'."""
    server.shell(name="Wait until the backups' SSH keys are made on every host", commands=[])


def wait_for_app_servers() -> None:
    """A barrier: one operation that every host runs at the same point of deploy.py.

    pyinfra orders operations as a graph of each host's sequence, so a balancer's
    steps would otherwise run alongside the app servers' steps of the same depth.
    An operation called from one line on every host is a single node of that graph:
    everything after it waits for everything before it, on all hosts. It runs no
    command, so it never reports a change."""
    server.shell(name="Wait until every app server is deployed", commands=[])

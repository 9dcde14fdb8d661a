"""Converge each host to: nginx -> uWSGI (systemd) -> the Flask app(s), or, for hosts
in the `load_balancers` group, to nginx balancing over the `app_servers`, or, for the
`db_servers` host, to PostgreSQL for the app servers' apps, or, for the
`backup_servers` host, to the repositories of the database and the apps' files, or, for the
`monitoring_servers` host, to Prometheus and Alertmanager scraping every host's exporters.

    pyinfra inventories/prod.py deploy.py               # apply
    pyinfra inventories/prod.py deploy.py --dry --diff  # show what would change

Settings come from host/group data (see tasks/config/settings.py and the README); they are
validated before any operation is added, so bad settings never touch a host.
"""

from pyinfra import host

from tasks.config import platform, topology
from tasks.config.host import load
from tasks.roles import app_server, backup_server, balancer, database_server, monitoring_server
from tasks.run import barriers, call_sites, hooks, lock, prefetch, preflight
from tasks.steps import fleet_canary, hardening, uploads
from tasks.steps.release_preview import warn_if_diff_is_skipped

# `--dry --diff -y` would otherwise end in pyinfra's "Skipping change detection", no diff.
warn_if_diff_is_skipped()
# pyinfra reads the call stack for each operation: this file found by name, not searched for.
call_sites.register(__file__)

this = load(host)
# Local hooks before the first operation and after the last, a webhook at the end (tasks/run/hooks.py).
hooks.register(host, this.apps, "deploy")
# Facts in one batched command per phase (see tasks/run/prefetch.py); in the first, before
# anything is read, the deploy lock: one run at a time per app and host (tasks/run/lock.py).
prefetch.start(host, enabled=this.settings.fact_batch, first=lock.first_asks(host, this.apps))
lock.take(host, this.apps)
system = platform.detect(host)
# Names the host already has for something else stop the run before any change.
if this.is_app_server:
    preflight.check(this.apps)
# Every upload passes through a directory only the SSH user can enter.
private = {"_temp_dir": uploads.private_directory()}
# `harden`: the server itself made safe before anything runs on it (tasks/steps/hardening.py).
if this.settings.harden:
    hardening.converge(system, this.settings, **private)
# With a backup host, the backups' SSH keys on it, the db server and the app servers, before any reads another's.
if topology.backup_server(host):
    backup_server.keys(this, **private)
    barriers.wait_for_backup_keys()
# The database server's steps come first: the app servers' first migrations need it.
if this.is_database_server:
    database_server.converge(system, this.settings, **private)
if topology.database_server(host):
    barriers.wait_for_database_server()
if this.is_backup_server:
    backup_server.converge(this.settings, **private)
if this.is_app_server:
    app_server.converge(system, this, **private)
# In a run over everything, balancers start only once every app server is ready.
barriers.wait_for_app_servers()
if this.is_balancer:
    balancer.converge(system, this.settings, **private)
# A canary behind the balancers: its steps on the app servers and the balancers in turn.
fleet_canary.run(this)
if this.is_monitoring_server:
    monitoring_server.converge(system, this.settings, **private)
# With a monitoring host in the inventory, every host's exporters, last: they read what the role made.
monitoring_server.exporters(this, **private)

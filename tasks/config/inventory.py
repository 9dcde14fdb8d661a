"""The inventory: its file read (`read_inventory`, the one reader), and the apps of
each host: its data validated app by app
(tasks/config/app.py), placed by the host's groups (tasks/config/topology.py) and checked
against each other (tasks/config/checks.py); and what a host must know of the others.

One app: the settings are the data's top-level keys. Several: `apps` is a list of
dicts, one per app, each over the top-level keys (shared defaults).
"""

from __future__ import annotations

import runpy
import types
from collections import defaultdict
from pathlib import Path

from pyinfra.api import Inventory

from tasks.config import checks, hardening, topology
from tasks.config.app import App
from tasks.config.checks import validate
from tasks.config.settings import SettingsError


class InventoryError(Exception):
    """An inventory file that cannot be read, said in one line."""


def load_apps(host, secrets: bool = True) -> list[App]:
    """The apps of a pyinfra host, from its inventory, group and --data data, with
    the defaults its place in the inventory implies (secrets=False: the app's
    environment unread, for ops.py, see checks.check)."""
    data = host.data.dict()
    apps = data.pop("apps", None)
    where = f"settings for host {host.name!r}"
    if apps is None:
        found = [topology.place(host, validate(data, where=where, secrets=secrets), _database_address)]
    elif not isinstance(apps, list) or not apps or not all(isinstance(app, dict) for app in apps):
        raise SettingsError.listing(where, [f"apps = {apps!r}: must be a non-empty list of dicts, one per app"])
    else:
        found, problems = [], []
        for index, app in enumerate(apps):
            try:
                found.append(topology.place(host, validate(
                    {**data, **app}, where=f"{where}, apps[{index}] ({app.get('app_name', '?')})",
                    secrets=secrets), _database_address))
            except SettingsError as exc:
                problems.append(str(exc))
        if problems:
            raise SettingsError("\n".join(problems))
    problems = checks.apps_apart(found, login=data.get("ssh_user")) + hardening.lockouts(found, data)
    if problems:
        raise SettingsError.listing(where, problems)
    return found


def _database_address(db) -> str:
    """The database server's private address: only that is read of its settings,
    its secrets are its own deploy's business."""
    return load_apps(db, secrets=False)[0].private_address


def redis_served(db) -> list[App]:
    """The apps of the app servers whose Redis is on the db_servers host `db` (one
    each, by name, in the inventory's order). Their secrets are their own deploys'."""
    found: dict[str, App] = {}
    for app_server in topology.app_servers(db):
        for app in load_apps(app_server, secrets=False):
            if app.redis and app.redis_host:
                found.setdefault(app.app_name, app)
    return list(found.values())


def balancers(host) -> list[tuple[str, str]]:
    """(balancer name, private address) of every load balancer of the inventory: the
    only hosts an app server's firewall lets reach uWSGI. Each balancer's settings are
    validated here too, so a balancer without its address stops the run even when
    `--limit` leaves the balancers out."""
    return [(balancer.name, load_apps(balancer)[0].private_address)
            for balancer in topology.members(host, topology.LB_GROUP)]


def monitoring(host) -> tuple[str, App] | None:
    """(name, settings) of the inventory's monitoring host, or None: the address every
    host's exporters let in, and the interval they are read at. Its secrets (the alert
    targets) are its own deploy's business."""
    monitor = topology.monitoring_server(host)
    return None if monitor is None else (monitor.name, load_apps(monitor, secrets=False)[0])


def backups(host) -> tuple[str, App] | None:
    """(name, settings) of the inventory's backup host, or None: its private address
    (the db server's SSH to it) and its pgBackRest settings. Its secrets are its own
    deploy's business."""
    found = topology.backup_server(host)
    return None if found is None else (found.name, load_apps(found, secrets=False)[0])


def database(host) -> tuple[str, App] | None:
    """(name, settings) of the inventory's db server, or None (for the backup host)."""
    found = topology.database_server(host)
    return None if found is None else (found.name, load_apps(found, secrets=False)[0])


def _first(value):
    return value[0] if isinstance(value, tuple) else value


def _group_data(folders: list[Path]) -> dict[str, dict]:
    found: dict[str, dict] = defaultdict(dict)
    for folder in folders:
        if not folder.is_dir():
            continue
        for file in sorted(folder.glob("*.py")):
            values = runpy.run_path(str(file))
            found[file.stem].update({key: value for key, value in values.items()
                                     if not key.startswith("_") and not callable(value)
                                     and not isinstance(value, types.ModuleType)})
    return found


def read_inventory(path: str, override_data: dict | None = None) -> Inventory:
    """A pyinfra Inventory from an inventory file, read the way `pyinfra INVENTORY ...`
    reads it: a Python file whose top-level lists (or `(hosts, data)` tuples) are the
    groups, each host a name or `(name, data)`; `group_data/<group>.py` beside it or
    in the working directory; `override_data` (`--data`) over everything. The one
    reader of inventory files: ops.py (tasks/ops/fleet.py) and rollout.py use it."""
    file = Path(path)
    if not file.is_file():
        raise InventoryError(f"inventory {path!r}: no such file")
    try:
        values = runpy.run_path(str(file))
    except SystemExit as exc:  # an inventory saying why it cannot be used (inventories/local.py)
        raise InventoryError(f"inventory {path!r}: {exc}") from None
    groups = {name: value for name, value in values.items()
              if not name.startswith("_") and isinstance(value, (list, tuple))}
    if "all" in groups:
        everyone, all_data = groups.pop("all") if isinstance(groups["all"], tuple) else (groups.pop("all"), {})
        everyone = list(everyone)
    else:
        everyone, all_data = [], {}
        for members in groups.values():
            for entry in (members[0] if isinstance(members, tuple) else members):
                name = _first(entry)
                if name not in [_first(e) for e in everyone]:
                    everyone.append(entry)
    groups.setdefault(file.stem, [_first(entry) for entry in everyone])
    folders = [Path.cwd() / "group_data"]
    if file.resolve().parent != Path.cwd().resolve():
        folders.append(file.resolve().parent / "group_data")
    extra = _group_data(folders)
    all_data = {**all_data, **extra.pop("all", {})}
    shaped = {}
    for name, members in groups.items():
        hosts, data = members if isinstance(members, tuple) else (members, {})
        shaped[name] = (list(hosts), {**data, **extra.pop(name, {})})
    for name, data in extra.items():
        shaped[name] = ([], data)
    return Inventory((everyone, all_data), override_data=override_data or {}, **shaped)

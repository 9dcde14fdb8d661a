"""Every setting of the deploy, with its default: the schema, one module per concern.

Settings are pyinfra host/group data: set them in an inventory (per host or per
group), in ``group_data/*.py``, or on the command line with ``--data key=value``.
``tasks.config.inventory.load_apps`` validates the whole lot before any operation is added,
so a typo or a bad value stops the run before any host is changed. This package is
the schema (each value on its own), one module per concern (the app, releases,
background work, the database, its off-host backups, uWSGI, nginx, day two, alerts, monitoring, hardening; what values may look like in
values.py), composed here into Settings; the checks that look at the laptop's files or
at several values together are in tasks/config/checks.py, the derived defaults and paths
in tasks/config/app.py.

The full settings table in docs/settings.md is generated from the parts, each its own
rows in order (``python -m tasks.config.settings`` rewrites it), and a test keeps the two
in step.
"""

from __future__ import annotations

import difflib
import functools
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError
from pyinfra.api.exceptions import DeployError

from tasks.config.settings.alerts import SECRET_KEYS, AlertSettings
from tasks.config.settings.application import AppSettings
from tasks.config.settings.background import BackgroundSettings
from tasks.config.settings.backups import BackupSettings
from tasks.config.settings.database import DatabaseSettings
from tasks.config.settings.day_two import DayTwoSettings
from tasks.config.settings.hardening import HardeningSettings
from tasks.config.settings.monitoring import MonitoringSettings
from tasks.config.settings.nginx import NginxSettings
from tasks.config.settings.releases import ReleaseSettings
from tasks.config.settings.uwsgi import UwsgiSettings
from tasks.config.settings.values import PATTERN_HELP, RELEASE_ID_RE  # noqa: F401 (RELEASE_ID_RE: rollout, tests)

# systemd's confinement of everything that runs as the app user: the service
# (templates/uwsgi.service.j2) and the release tool's steps in a new release (venv
# build, import check, before-switch commands, canary; rendered into
# release-tool.json). Each adds ReadWritePaths= for where it must write. No
# capabilities at all: uWSGI binds a unix socket in its own directory or a port
# above 1024, and never changes users itself. Not a setting, but kept here, where the
# unit's comment says it is (tasks/config/app.py hands it to the templates).
SANDBOX = (
    "NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes", "PrivateDevices=yes",
    "ProtectKernelTunables=yes", "ProtectKernelModules=yes", "ProtectControlGroups=yes", "ProtectKernelLogs=yes",
    "ProtectClock=yes", "ProtectHostname=yes", "RestrictSUIDSGID=yes", "RestrictRealtime=yes",
    "RestrictNamespaces=yes", "LockPersonality=yes", "SystemCallArchitectures=native", "CapabilityBoundingSet=",
    "UMask=0027",
)

# The schema's parts, one per concern, in the settings table's order.
PARTS = (AppSettings, ReleaseSettings, BackgroundSettings, DatabaseSettings, BackupSettings, UwsgiSettings,
         NginxSettings, DayTwoSettings, AlertSettings, MonitoringSettings, HardeningSettings)


# pydantic orders a model's fields from its last base to its first: the parts reversed.
class Settings(*reversed(PARTS)):
    """The deploy's settings as given: None where the default is derived (tasks/config/app.py
    fills it in). Field descriptions become the table in docs/settings.md."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class SettingsError(DeployError):
    """Bad settings: raised before any operation is added, so no host is changed."""

    @classmethod
    def listing(cls, where: str, problems: list[str]) -> SettingsError:
        lines = "\n".join(f"  - {problem}" for problem in problems)
        return cls(f"Invalid {where}; nothing was changed on any host:\n{lines}")


# Data keys pyinfra itself understands: global arguments (`_sudo`, ...) and
# connector data (`ssh_port`, `docker_identifier`, ...).
def _is_pyinfra_key(key: str) -> bool:
    return key.startswith("_") or any(key.startswith(f"{name}_") for name in _connector_names())


@functools.cache
def _connector_names() -> tuple[str, ...]:
    from pyinfra.api.connectors import get_all_connectors

    return tuple(get_all_connectors())


# Settings whose values are never shown, not even when refused.
HIDDEN = ("webhook_url", *SECRET_KEYS, "pgbackrest_s3_key_secret")

# Settings that map names to blocks of their own fields (errors name the block).
NAMED_BLOCKS = ("workers", "jobs")


def parse(data: dict[str, Any]) -> tuple[Settings | None, list[str]]:
    """A host's data as Settings (None when a value is bad), and one line per
    unknown key or bad value, naming it."""
    known = set(Settings.model_fields)
    problems = []
    for key in sorted(data):
        if key in known or _is_pyinfra_key(key):
            continue
        hint = difflib.get_close_matches(key, known, n=1)
        problems.append(
            f"{key}: unknown setting" + (f" (did you mean {hint[0]!r}?)" if hint else "")
        )
    ours = {key: value for key, value in data.items() if key in known}
    try:
        return Settings(**ours), problems
    except ValidationError as exc:
        # One line per bad key; a value failing every branch of a union (e.g.
        # `journal` or a path) gets the branches' messages joined.
        by_key: dict[str, tuple[Any, list[str]]] = {}
        for error in exc.errors():
            loc = error["loc"]
            key = "".join([str(loc[0]) if loc else ""] + [f"[{p}]" for p in loc[1:] if isinstance(p, int)])
            if loc and loc[0] in NAMED_BLOCKS and len(loc) > 1:
                # workers.celery.processes, or workers.Bad for a bad name
                key = ".".join(str(p) for p in loc if p != "[key]")
            message = error["msg"].removeprefix("Value error, ")
            if error["type"] == "string_pattern_mismatch":
                message = PATTERN_HELP.get(error["ctx"]["pattern"], message)
            by_key.setdefault(key, (error["input"], []))[1].append(message)
        for key, (value, messages) in by_key.items():
            message = ", or ".join(messages)
            if key in HIDDEN:  # may hold a token or a password: named, never shown
                problems.append(f"{key}: {message} (its value is not shown)")
            else:
                problems.append(f"{key} = {value!r}: {message}" if key else message)
        return None, problems


def markdown_rows(part: type[BaseModel]) -> list[str]:
    """One part's rows of the settings table: each field, its default, its meaning."""
    rows = []
    for name, field in part.model_fields.items():
        if field.default is not None:
            default = f"`{json.dumps(field.default)}`"
        else:  # unset: derived where the description says what from, else simply not set
            default = "(derived)" if "Default:" in (field.description or "") else "(not set)"
        rows.append(f"| `{name}` | {default} | {field.description} |")
    return rows


def markdown_table() -> str:
    """The full settings table of docs/settings.md: every part's rows, in order."""
    rows = ["| Setting | Default | Meaning |", "| --- | --- | --- |"]
    for part in PARTS:
        rows += markdown_rows(part)
    return "\n".join(rows)


# docs/settings.md: its text up to this line is written by hand, the table after it generated.
TABLE_MARKER = "<!-- Generated by `python -m tasks.config.settings`; tests/config/test_settings.py keeps it in step. -->"


def write_settings_page(path: str = "docs/settings.md") -> None:
    """Replace the generated table of docs/settings.md (run from the repository root)."""
    with open(path, encoding="utf-8") as page:
        head = page.read().split(TABLE_MARKER)[0]
    with open(path, "w", encoding="utf-8") as page:
        page.write(f"{head}{TABLE_MARKER}\n{markdown_table()}\n")

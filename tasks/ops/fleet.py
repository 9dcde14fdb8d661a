"""The hosts of an inventory, connected, for the day-two commands (ops.py).

The inventory is read by tasks/config/inventory.py's `read_inventory`, as `pyinfra
INVENTORY ...` reads it; `--data KEY=VALUE` over everything (values parsed like pyinfra's: true/false,
integers, JSON, else text); `--limit` by host or group name (glob patterns, as
pyinfra's). Then pyinfra's public API (pyinfra.api: Inventory, State, Config,
connect_all) connects to them in parallel, so every connector and SSH setting
that works for a deploy works here, and each host's apps are the deploy's own
(tasks/config/inventory.py): the same settings, validated the same way.

Commands run through `Host.run_shell_command`, on every host at once (pyinfra's
greenlets), each output line printed as it arrives with the host's prefix when
asked to.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple, TypeVar

import click
import gevent
from pyinfra.api import Config, State
from pyinfra.api.connect import connect_all
from pyinfra.api.exceptions import PyinfraError
from pyinfra.api.output import set_echo

from tasks.config.app import App
from tasks.config.inventory import InventoryError, load_apps, read_inventory

T = TypeVar("T")


class FleetError(Exception):
    """A problem with the inventory or the hosts, said in one line."""


def parse_value(text: str) -> Any:
    """A `--data` value as pyinfra's command line reads it."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_data(items: tuple[str, ...] | list[str]) -> dict[str, Any]:
    data = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise FleetError(f"--data {item!r}: must be KEY=VALUE")
        data[key.strip()] = parse_value(value)
    return data


@dataclass
class Fleet:
    """Connected hosts of an inventory and their apps."""

    state: State
    hosts: list = field(default_factory=list)
    by_host: dict[str, list[App]] = field(default_factory=dict)

    @classmethod
    def connect(cls, inventory_path: str, limit: tuple[str, ...] = (), data: dict | None = None,
                app_name: str | None = None) -> "Fleet":
        """The chosen hosts, their settings validated before any is connected to."""
        try:
            inventory = read_inventory(inventory_path, data)
        except InventoryError as exc:
            raise FleetError(str(exc)) from None
        patterns = [part.strip() for item in limit for part in item.split(",") if part.strip()]
        chosen = [host for host in inventory if not patterns or any(
            fnmatch.fnmatch(host.name, pattern) or any(
                fnmatch.fnmatch(group, pattern) for group in host.groups) for pattern in patterns)]
        if not chosen:
            raise FleetError(f"--limit {','.join(patterns)}: matches no host of {inventory_path}")
        # No command uploads the app's environment (run and restore use what the
        # deploy put on the host): none needs the secrets on this machine.
        by_host = {host.name: [app for app in load_apps(host, secrets=False) if app_name in (None, app.app_name)]
                   for host in chosen}
        if app_name and not any(by_host.values()):
            raise FleetError(f"--app {app_name}: no host of {inventory_path} runs such an app")
        show_output()
        state = State(inventory, Config(), initial_limit=chosen)
        try:
            connect_all(state)
        except PyinfraError:  # none could be connected to: said below, in one line
            pass
        unreachable = [host.name for host in chosen if not host.connected]
        fleet = cls(state, [host for host in chosen if host.connected], by_host)
        if unreachable:
            raise FleetError(f"cannot connect to {', '.join(unreachable)}")
        return fleet

    def apps(self, host) -> list[App]:
        """The host's apps (all, or the one --app names; none when it runs no such app)."""
        return self.by_host[host.name]

    def each(self, work: Callable[[Any], T]) -> dict[str, T]:
        """work(host) on every host at once; the results by host name, in inventory order."""
        jobs = {host.name: gevent.spawn(work, host) for host in self.hosts}
        gevent.joinall(list(jobs.values()))
        return {name: job.get() for name, job in jobs.items()}


def printable(text: str) -> str:
    """Text from a host as it may safely reach the operator's terminal: every character
    that is not printable (control characters, ESC, CR, backspace, bidi overrides,
    zero-width marks...) written out visibly, `\\x1b` as journald does, so an app
    cannot hide, rewrite or forge lines. A CR ending the line (a pseudo-terminal's
    line end) is dropped. The one filter for everything ops.py prints from a host."""
    text = text[:-1] if text.endswith("\r") else text
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() or char == "\t" else char.encode("unicode_escape").decode("ascii")
                   for char in text)


def echo(text: str, err: bool = False) -> None:
    """Print one line that came from a host (see `printable`)."""
    click.echo(printable(text), err=err)


_RAW = {"on": False}


def _echo(message=None, err: bool = False, **kwargs) -> None:
    """Where pyinfra prints a streamed command's lines (prefixed with the host, unstyled
    so that all of it can be filtered): standard output, so that `ops.py logs | grep
    ...` works (our own errors go to standard error)."""
    text = "" if message is None else str(message)
    click.echo(text if _RAW["on"] else printable(text), **kwargs)


def show_output(raw: bool = False) -> None:
    """Let pyinfra print (its pluggable output, pyinfra.api.output) streamed lines
    with the host's prefix, through `printable`; raw: as they are (`ops.py run`: the
    operator's own command, which may style its output)."""
    _RAW["on"] = raw
    set_echo(_echo)


class Ran(NamedTuple):
    """One command's end on one host."""
    ok: bool
    stdout: list[str]
    stderr: list[str]


class AppResult(NamedTuple):
    """What a day-two command did for one app on one host: the lines to print."""
    app: str
    ok: bool
    lines: list[str]


def run(host, command: str, *, as_user: str | None = None, stream: bool = False,
        timeout: int | None = None, pty: bool = False) -> Ran:
    """(ok, stdout lines, stderr lines) of one command on a host: as root through
    sudo when the inventory connects with sudo (as root otherwise), or as `as_user`.
    With stream, each line is printed as it arrives, prefixed with the host. With
    pty, on a pseudo-terminal (stderr joins stdout): the command gets a hangup when
    the connection ends, for commands that run until interrupted."""
    arguments: dict[str, Any] = {"_sudo": True, "_sudo_user": as_user} if as_user else (
        {"_sudo": True} if host.data.get("_sudo") else {})
    if timeout:
        arguments["_timeout"] = timeout
    if pty:
        arguments["_get_pty"] = True
    ok, output = host.run_shell_command(command, print_output=stream, **arguments)
    return Ran(ok, output.stdout_lines, output.stderr_lines)

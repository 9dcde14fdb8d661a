"""The host tool (files/release_tool/, installed as <app_root>/bin/release-tool): the
one file it ships as, the one way to load it, and every command line the deploy,
ops.py, rollout.py and rollback.py run it with.

Its command lines are built here and nowhere else; tests/tool/test_tool.py parses every
one of them with the tool's own argument parser, so a new subcommand or option is
added in two places side by side: files/release_tool/cli.py and a builder below.

It ships as a zipapp: one file, `#!/usr/bin/env python3` and a zip of the package,
built here from the source with fixed names, order, timestamps and modes, so the
same source always gives the same bytes (a second deploy uploads nothing). Python
puts the zip itself first on the import path: root's file in root's directory.
"""

from __future__ import annotations

import importlib
import importlib.util
import io
import json
import shlex
import sys
import typing
import zipfile
from collections.abc import Mapping
from functools import cache
from types import ModuleType

from tasks import REPO_ROOT

SOURCE = REPO_ROOT / "files/release_tool"
PACKAGE = "release_tool"
SHEBANG = b"#!/usr/bin/env python3\n"
# The zip's entries all carry this moment (zip's earliest) and mode: only content counts.
EPOCH = (1980, 1, 1, 0, 0, 0)
MODE = 0o644


def path(root: str) -> str:
    """Where the tool is installed under an app's root (or a balancer's app directory)."""
    return f"{root}/bin/release-tool"


# The one file ------------------------------------------------------------------

def sources() -> list[str]:
    """The package's module files, by name (what the zipapp holds under release_tool/)."""
    return sorted(p.name for p in SOURCE.glob("*.py") if p.name != "__main__.py")


@cache
def build() -> bytes:
    """The zipapp's bytes: the package under release_tool/, its entry point as the
    zip's own __main__.py. Stored (not compressed): no zlib version changes a byte."""
    buffer = io.BytesIO()
    buffer.write(SHEBANG)
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        entries = [(f"{PACKAGE}/{name}", SOURCE / name) for name in sources()]
        for name, source in [("__main__.py", SOURCE / "__main__.py"), *entries]:
            info = zipfile.ZipInfo(name, date_time=EPOCH)
            info.external_attr = (0o100000 | MODE) << 16
            info.create_system = 3  # unix, whatever the laptop
            archive.writestr(info, source.read_bytes())
    return buffer.getvalue()


def upload() -> io.BytesIO:
    """The zipapp, for files.put (a fresh reader per operation)."""
    return io.BytesIO(build())


# Loading it on the laptop (the deploy and every test) -----------------------------

MODULES = ("base", "history", "releases", "assets", "lock", "audit", "uwsgi", "health", "sandbox", "steps",
           "activation", "ship", "maintenance", "status", "execute", "hold", "split", "cli")


class Tool:
    """The tool's modules as one namespace, as the single file they once were: a
    name is read from, and set on (monkeypatch), the module that defines it, so what
    is replaced is what every module calls (they import modules, never names).
    Names no module defines are kept here (a test's own notes)."""

    def __init__(self, modules: list[ModuleType]):
        object.__setattr__(self, "_modules", modules)

    def _owner(self, name: str) -> ModuleType | None:
        """The module defining `name` (a stdlib module they import: any of them)."""
        found = None
        for module in self._modules:
            if name in vars(module):
                if not isinstance(vars(module)[name], ModuleType):
                    return module
                found = found or module
        return found

    @property
    def __dict__(self) -> Mapping:  # what monkeypatch reads a value back from, to put it back
        return _Names(self)

    def __getattr__(self, name: str):
        owner = self._owner(name)
        if owner is None:
            raise AttributeError(f"the release tool has no {name!r}")
        return getattr(owner, name)

    def __setattr__(self, name: str, value) -> None:
        owner = self._owner(name)
        if owner is None:
            object.__setattr__(self, name, value)
        else:
            setattr(owner, name, value)

    def __delattr__(self, name: str) -> None:
        owner = self._owner(name)
        if owner is None:
            object.__delattr__(self, name)
        else:
            delattr(owner, name)


class _Names(Mapping):
    """A Tool's names as they resolve (the modules' and its own)."""

    def __init__(self, tool: Tool):
        self._tool = tool

    def __getitem__(self, name: str):
        try:
            return getattr(self._tool, name)
        except AttributeError:
            raise KeyError(name) from None

    def __iter__(self):
        modules = object.__getattribute__(self._tool, "_modules")
        return iter(dict.fromkeys(name for module in modules for name in vars(module)))

    def __len__(self) -> int:
        return sum(1 for _ in self)


def load() -> Tool:
    """A fresh copy of the tool's package (importing it reads nothing: its settings
    are read by `configure`, which main() calls and tests call with a temporary root)."""
    for name in [name for name in sys.modules if name == PACKAGE or name.startswith(f"{PACKAGE}.")]:
        del sys.modules[name]
    spec = importlib.util.spec_from_file_location(PACKAGE, SOURCE / "__init__.py",
                                                  submodule_search_locations=[str(SOURCE)])
    package = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = package
    spec.loader.exec_module(package)
    return Tool([importlib.import_module(f"{PACKAGE}.{name}") for name in MODULES])


@cache
def settings_contract() -> dict[str, type]:
    """The tool's `Settings` (files/release_tool/base.py), {key: type}, for the deploy that
    writes them: base.py alone is read (standard library only, no import of the package),
    not the whole tool, which a run never needs loaded (it ships as bytes, `build`)."""
    spec = importlib.util.spec_from_file_location(f"{PACKAGE}_settings", SOURCE / "base.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return typing.get_type_hints(module.Settings)


# Its command lines -------------------------------------------------------------------
# `run` and `by` name the deploy run and its user@machine (tasks/lock.py RUN_ID, BY),
# for the host's history and audit log.

def line(tool: str, *words, host_name: str | None = None, run: str | None = None, by: str | None = None) -> str:
    """One command line: the tool, its global options, then a subcommand's words."""
    options = [*(["--host-name", host_name] if host_name else []), *(["--run", run] if run else []),
               *(["--by", by] if by else [])]
    return shlex.join([tool, *options, *(str(word) for word in words)])


def if_installed(tool: str, command: str) -> str:
    """The command only where the tool is installed (a host never deployed to has none)."""
    quoted = shlex.quote(tool)
    return f"if [ -x {quoted} ]; then {command}; fi"


def listing(tool: str) -> str:
    return line(tool, "list")


def build_venv(tool: str, release: str, run: str, by: str) -> str:
    return line(tool, "build-venv", release, run=run, by=by)


def check(tool: str, release: str, run: str, by: str) -> str:
    return line(tool, "check", release, run=run, by=by)


def run_in_release(tool: str, release: str, command: str, run: str, by: str) -> str:
    """A before-switch command, as the app user in the new release."""
    return line(tool, "run", release, "--", command, run=run, by=by)


def canary(tool: str, release: str, run: str, by: str) -> str:
    return line(tool, "canary", release, run=run, by=by)


def ship(tool: str, release: str, upload: str, sha256: str, before: list[str], canary: bool, activate: str | None,
         prune: bool, host_name: str, run: str, by: str) -> str:
    """A new release from its uploaded tarball: checked against `sha256`, unpacked, its
    venv, import check, `before` commands and (`canary`) canary, then (`activate`: a
    mode) its activation and (`prune`) the pruning, in one command (files/release_tool/ship.py)."""
    return line(tool, "ship", release, "--upload", upload, "--sha256", sha256,
                *(f"--before={command}" for command in before), *(["--canary"] if canary else []),
                *(["--activate", activate] if activate else []), *(["--prune"] if prune else []),
                host_name=host_name, run=run, by=by)


def activate(tool: str, release: str, mode: str, host_name: str, run: str, by: str) -> str:
    return line(tool, "activate", release, "--mode", mode, host_name=host_name, run=run, by=by)


def rollback(tool: str, release: str | None, host_name: str, run: str, by: str) -> str:
    return line(tool, "rollback", *([release] if release else []), host_name=host_name, run=run, by=by)


def prune(tool: str) -> str:
    return line(tool, "prune")


def assets(tool: str) -> str:
    return line(tool, "assets")


def health(tool: str, host_name: str) -> str:
    return line(tool, "health", host_name=host_name)


def lock_take(tool: str, run: str, holder: str, wait: int, break_run: str = "", force: bool = False) -> str:
    return line(tool, "lock", "take", "--holder", holder, "--wait", int(wait),
                *(["--break-run", break_run] if break_run else []), *(["--force"] if force else []), run=run)


def lock_release(tool: str, run: str) -> str:
    return line(tool, "lock", "release", run=run)


def status(tool: str, nginx: bool, workers: list[str], jobs: list[str], timers: list[str],
           certificates: list[str], watch: str | None = None) -> str:
    """`status --json`: what ops.py status (and the watch) judges; `watch`: the watch's state file."""
    options = (["--nginx"] if nginx else []) + (["--watch", watch] if watch else [])
    for option, values in (("--worker", workers), ("--job", jobs), ("--timer", timers),
                           ("--certificate", certificates)):
        for value in values:
            options += [option, value]
    return line(tool, "status", "--json", *options)


def execute(tool: str, command: str, tty: bool = False) -> str:
    """A command in the live release as the app user (ops.py run)."""
    return line(tool, "exec", *(["--tty"] if tty else []), "--", command)


def maintenance(tool: str, state: str, by: str) -> str:
    return line(tool, "maintenance", state, by=by)


def migrate(tool: str, release: str, commands: list[str], hold: int, retry_after: int, host_name: str, run: str,
            by: str) -> str:
    """An exclusive migration: the commands with requests held, then the release's activation."""
    return line(tool, "migrate", release, "--hold", int(hold), "--retry-after", int(retry_after),
                *(f"--command={command}" for command in commands), host_name=host_name, run=run, by=by)


def split(tool: str, release: str, host_name: str, run: str, by: str) -> str:
    """A canary by share of traffic: the release beside the live one, then promoted or rolled back."""
    return line(tool, "split", release, host_name=host_name, run=run, by=by)


def canary_start(tool: str, release: str, host_name: str, run: str, by: str) -> str:
    """Behind load balancers, on an app server: the release's canary instance beside the live one."""
    return line(tool, "canary-start", release, host_name=host_name, run=run, by=by)


def canary_verdict(tool: str, release: str, numbers: str, host_name: str, run: str, by: str) -> str:
    """... the balancers' counts (`numbers`, JSON) judged: promoted, or left for canary_finish."""
    return line(tool, "canary-verdict", release, "--numbers", numbers, host_name=host_name, run=run, by=by)


def canary_finish(tool: str, release: str, numbers: str, host_name: str, run: str, by: str) -> str:
    """... the canary instance ended; the release removed (and the deploy failed) unless it went live."""
    return line(tool, "canary-finish", release, "--numbers", numbers, host_name=host_name, run=run, by=by)


def canary_watch(tool: str, release: str) -> str:
    """On a balancer: the split for the canary's window, then its counts."""
    return line(tool, "canary-watch", release)


# The line of canary-watch's output with the balancer's counts (files/release_tool/split.py NUMBERS).
CANARY_NUMBERS = "canary numbers: "


def canary_numbers(lines: list[str]) -> dict | None:
    """The counts canary-watch answered with, or None."""
    for text in lines:
        if text.startswith(CANARY_NUMBERS):
            try:
                return json.loads(text[len(CANARY_NUMBERS):])
            except ValueError:
                return None
    return None


def canary_close(tool: str) -> str:
    """On a balancer: every client to the live release again."""
    return line(tool, "canary-close")


def hold(tool: str, state: str) -> str:
    return line(tool, "hold", state)


def audit(tool: str, as_json: bool, last: int) -> str:
    return line(tool, "audit", *(["--json"] if as_json else []), *(["-n", int(last)] if last else []))


# Every builder above, for the contract test (tests/tool/test_tool.py).
BUILDERS = (listing, build_venv, check, run_in_release, canary, ship, activate, rollback, prune, assets, health, lock_take,
            lock_release, status, execute, maintenance, audit, migrate, hold, split, canary_start, canary_verdict,
            canary_finish, canary_watch, canary_close)

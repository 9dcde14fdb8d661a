"""CPU costs pyinfra 3.10 pays on every operation and every fact, removed without
changing any result. They are most of the controller's work when a run changes
nothing, and they grow with the host count: every host repeats them.

1. Operation order: for every operation, pyinfra walks the call stack with
   `inspect.stack()`, which reads the source lines around every frame, and works out
   each frame's file name and line number from its code object (searching
   sys.modules for frames of files that are not modules, such as deploy.py). Those
   depend only on the code and the instruction the frame is at, which are the same
   for every host: here each is worked out once (with inspect's own function) and
   reused; no source is read.
2. Global arguments: `pop_global_arguments` (once per operation and per fact) looks
   up each of its 32 arguments in the host's data one by one, each lookup merging
   the group data again and raising an exception for every miss; and re-evaluates
   the type hints of pyinfra's argument TypedDicts, which never change. Here the
   host's data sources are read once per call and the type hints once per process;
   everything else is pyinfra's function line for line.

3. Fact commands: pyinfra builds most of them (a `stat`, a `sha1sum` per file) with
   `make_formatted_string_command`, which splits the same format string with
   `shlex.split` every time; here each string is split once (a new list each call).

Applied only to the pyinfra release they were written against (requirements.txt pins
it); with any other, pyinfra runs as shipped. tests/test_prefetch.py compares both
with pyinfra's originals.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import shlex
import sys
from copy import copy
from importlib.metadata import version
from typing import Any

from pyinfra.api.exceptions import ArgumentTypeError
from pyinfra.api.util import raise_if_bad_type
from pyinfra.context import ctx_config

FOR_PYINFRA = "3.10."


def _module(name: str):
    return importlib.import_module(f"pyinfra.api.{name}")


# Read through the module at each call: apply() replaces all_global_arguments.
_arguments = _module("arguments")

_frame_infos: dict = {}  # (code object, instruction offset) -> inspect.Traceback


def _frame_info(frame, context: int = 1):
    """inspect.getframeinfo(frame, 0), worked out once per code location."""
    key = (frame.f_code, frame.f_lasti)
    info = _frame_infos.get(key)
    if info is None:
        info = _frame_infos[key] = inspect.getframeinfo(frame, 0)
    return info


def _stack(context: int = 1):
    """The frames inspect.stack() lists for its caller, without source context."""
    frames = []
    frame = sys._getframe(1)
    while frame:
        info = _frame_info(frame)
        frames.append(inspect.FrameInfo(frame, *info, positions=info.positions))
        frame = frame.f_back
    return frames


_MISSING = object()


def _host_default(datas: list, key: str):
    """What `getattr(host.data, key, _MISSING)` returns, given the host's data
    sources already read (pyinfra's HostData.__getattr__)."""
    for data in datas:
        if type(data) is dict:  # no __missing__: `in` answers as data[key] would
            if key in data:
                return copy(data[key])
            continue
        try:
            return copy(data[key])
        except KeyError:
            pass
    return _MISSING


def _pop_global_arguments(state, host, kwargs: dict[str, Any]):
    """pyinfra 3.10's `pop_global_arguments`, reading the host's data sources once."""
    config = state.config
    if ctx_config.isset():
        config = ctx_config.get()
        assert config is not None

    meta_kwargs: dict[str, Any] = host.current_deploy_kwargs or {}
    datas = [data() if callable(data) else data for data in host.data.datas]

    arguments: dict[str, Any] = {}
    found_keys: list[str] = []
    for key, type_ in _arguments.all_global_arguments():
        argument_meta = _arguments.all_argument_meta[key]
        handler = argument_meta.handler
        default: Any = argument_meta.default(config)

        host_default = _host_default(datas, key)
        if host_default is not _MISSING:
            default = host_default

        if key in kwargs:
            found_keys.append(key)
            value = kwargs.pop(key)
        else:
            value = meta_kwargs.get(key, default)

        if handler:
            value = handler(config, value)

        if value != default:
            raise_if_bad_type(value, type_, ArgumentTypeError, f"Invalid argument `{key}`:")

        arguments[key] = value
    return arguments, found_keys


@functools.lru_cache(maxsize=1024)
def _split_once(string: str) -> tuple[str, ...]:
    return tuple(shlex.split(string))


class _ShlexSplittingOnce:
    """The `shlex` module as pyinfra.api.command sees it: `split` remembers."""

    def __getattr__(self, name: str):
        return getattr(shlex, name)

    @staticmethod
    def split(string: str, comments: bool = False, posix: bool = True) -> list[str]:
        if comments or not posix or not isinstance(string, str):
            return shlex.split(string, comments, posix)
        return list(_split_once(string))


@functools.cache  # deploy.py runs once per host; the patches go in once per process
def apply() -> bool:
    """Install them; False (and nothing changed) on another pyinfra release."""
    if not version("pyinfra").startswith(FOR_PYINFRA):
        return False
    _arguments.all_global_arguments = functools.cache(_arguments.all_global_arguments)
    util = _module("util")
    util.stack, util.getframeinfo = _stack, _frame_info
    for name in PATCHED_MODULES:  # each imported the function by name
        _module(name).pop_global_arguments = _pop_global_arguments
    _module("command").shlex = _ShlexSplittingOnce()
    return True


# The modules calling pop_global_arguments (pyinfra.api's own `deploy` and
# `operation` attributes are the decorators, hence the modules by full name).
PATCHED_MODULES = ("arguments", "deploy", "facts", "operation")

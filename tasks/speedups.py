"""Two CPU costs pyinfra 3.10 pays on every operation and every fact, removed
without changing any result. They add up to ~0.1 s per host per run, which is most of
the controller's work when a run changes nothing, and grows with the host count.

1. Operation order: for every operation, pyinfra walks the call stack with
   `inspect.stack()`, which reads the source lines around every frame (searching
   all of sys.modules for frames of files that are not modules, such as deploy.py),
   only to keep each frame's file name and line number. Here the same frames are
   walked with no source context: the same names and numbers, so the same order.
2. Global arguments: `pop_global_arguments` (once per operation and per fact)
   re-evaluates the type hints of pyinfra's argument TypedDicts each time; they never
   change, so they are evaluated once.

Applied only to the pyinfra release they were written against (requirements.txt pins
it); with any other, pyinfra runs as shipped.
"""

from __future__ import annotations

import functools
import inspect
import sys
from importlib.metadata import version

FOR_PYINFRA = "3.10."


def _stack(context: int = 1):
    # The frames inspect.stack() would list for its caller, without source context.
    return inspect.getouterframes(sys._getframe(1), 0)


def _frame_info(frame, context: int = 1):
    return inspect.getframeinfo(frame, 0)


@functools.cache  # deploy.py runs once per host; the patches go in once per process
def apply() -> bool:
    """Install both; False (and nothing changed) on another pyinfra release."""
    if not version("pyinfra").startswith(FOR_PYINFRA):
        return False
    from pyinfra.api import arguments, util

    arguments.all_global_arguments = functools.cache(arguments.all_global_arguments)
    util.stack, util.getframeinfo = _stack, _frame_info
    return True

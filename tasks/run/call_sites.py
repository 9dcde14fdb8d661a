"""deploy.py named as a module, so that pyinfra's per-operation look at the call
stack finds its source without searching.

In its command line, pyinfra places each operation by the line numbers of the call
stack that added it (`inspect.stack()`), and `inspect` looks up the module of every
frame's file to read its source. pyinfra runs deploy.py as a file, not as an import,
so no loaded module has it as its `__file__`: for deploy.py's frame, three times per
operation, `inspect.getmodule` scans every loaded module (~1,000) and finds none.
That was ~0.11 s of a ~1.6 s run that changes nothing (52 operations; measured on
this repository's test host). An entry in `sys.modules` whose `__file__` is
deploy.py's is found by `inspect`'s own file-to-module cache instead. The entry holds
nothing and runs nothing; the source lines `inspect` reads are the same.
"""

from __future__ import annotations

import os
import sys
import types

NAME = "pyinfra_flask_deploy_file"


def register(path: str) -> None:
    """Name the deploy file `path` (as pyinfra was given it) in `sys.modules`."""
    if NAME in sys.modules:
        return
    module = types.ModuleType(NAME, f"{path}, as pyinfra runs it (tasks/run/call_sites.py)")
    module.__file__ = os.path.abspath(path)
    sys.modules[NAME] = module

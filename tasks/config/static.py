"""Where a Flask app keeps its static files, found the way Flask finds them.

`Flask(__name__)` serves `<the module's directory>/static` under `/static`; a package
(`myapp/__init__.py`) keeps it in `myapp/static`; `Flask(..., static_folder="assets",
static_url_path="/a")` moves both, and `static_folder=None` turns it off. The app's
code is read (parsed, never run) for its `Flask(...)` calls, so nginx serves the same
directory at the same URL the app itself would.
"""

from __future__ import annotations

import ast
import os
import stat
from pathlib import Path, PurePosixPath
from typing import NamedTuple

MAX_DEPTH = 3  # the app's own modules, not a vendored tree
SKIP_DIRS = {"__pycache__", ".git", ".venv", "venv", "node_modules", ".pytest_cache", "tests"}


class StaticFolder(NamedTuple):
    directory: str  # relative to the app's source directory
    url: str  # starts and ends with "/"


def _flask_calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name == "Flask":
                yield node


def _constant(node: ast.Call, keyword: str, default):
    for kw in node.keywords:
        if kw.arg == keyword:
            return kw.value.value if isinstance(kw.value, ast.Constant) else default
    return default


def _python_files(source: Path):
    # Links are neither followed nor read, nor is anything but a regular file (a FIFO
    # would block): the settings check refuses an app_source holding them, after this.
    for dirpath, dirnames, filenames in os.walk(source):
        base = Path(dirpath).relative_to(source)
        dirnames[:] = sorted(name for name in dirnames
                             if name not in SKIP_DIRS and len(base.parts) + 1 < MAX_DEPTH)
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if name.endswith(".py") and stat.S_ISREG(path.lstat().st_mode):
                yield path, base / name


def find(source: Path, entry_module: str) -> StaticFolder | None:
    """The static folder of the app in `source` whose WSGI module is `entry_module`,
    or None when it has none (or switched it off)."""
    entry_parts = tuple(entry_module.split("."))
    found: list[tuple[int, StaticFolder]] = []
    for path, relative in sorted(_python_files(source)):
        try:
            tree = ast.parse(path.read_text(errors="replace"), str(path))
        except (SyntaxError, ValueError):
            continue
        for call in _flask_calls(tree):
            module = relative.with_suffix("").parts
            module = module[:-1] if module[-1] == "__init__" else module
            # The app the entry point names wins over others in the tree.
            rank = 0 if module == entry_parts[: len(module)] else 1
            folder = _constant(call, "static_folder", "static")
            if folder is None:  # static_folder=None: the app serves no static files
                found.append((rank, None))
                continue
            if not isinstance(folder, str) or not folder or folder.startswith("/") or ".." in folder.split("/"):
                continue
            directory = PurePosixPath(*relative.parts[:-1], folder)
            if not (source / directory).is_dir():
                continue
            url = _constant(call, "static_url_path", None)
            url = url if isinstance(url, str) and url.startswith("/") else "/" + PurePosixPath(folder).name
            found.append((rank, StaticFolder(str(directory), url.rstrip("/") + "/")))
    if found:
        return min(found, key=lambda item: item[0])[1]
    return StaticFolder("static", "/static/") if (source / "static").is_dir() else None

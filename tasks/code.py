"""The app's code, uploaded from a local directory."""

from pyinfra.api import deploy
from pyinfra.operations import files

# Local clutter that must never reach a server.
EXCLUDE_FILES = ["*.pyc", "*.pyo", ".DS_Store", "*.swp"]
EXCLUDE_DIRS = ["__pycache__", ".git", ".venv", "venv", ".pytest_cache", "node_modules"]


@deploy("App code")
def upload(s):
    return files.sync(
        name=f"Upload {s.app_source} to {s.code_dir}",
        src=str(s.source_dir),
        dest=s.code_dir,
        user="root",
        group=s.app_user,
        mode="640",
        dir_mode="750",
        delete=True,
        exclude=EXCLUDE_FILES,
        exclude_dir=EXCLUDE_DIRS,
    )

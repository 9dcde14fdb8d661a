"""The deploy's building blocks, one concern per module; `deploy.py` composes them."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = REPO_ROOT / "templates"

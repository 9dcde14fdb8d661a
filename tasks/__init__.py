"""The deploy's building blocks, one concern per module; `deploy.py` composes them."""

from pathlib import Path

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"

"""The deploy's building blocks, one concern per module; `deploy.py` composes them."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = REPO_ROOT / "templates"

# Templates drop the lines their {% %} tags stand on, so the files they render read
# like hand-written config.
JINJA = {"trim_blocks": True, "lstrip_blocks": True}

"""`<app_root>/bin/release-tool ...`: the zipapp's entry, at the zip's top (tasks/tool.py
`build`). Its app root is the one it is installed in: the zip's own <app_root>/bin/..."""

import os
import sys
from pathlib import Path

from release_tool import cli

sys.exit(cli.main(root=Path(os.path.dirname(__file__)).resolve().parent.parent))

"""`python3 <app_root>/bin/release-tool ...`: the zipapp's entry (its app root is the
one it is installed in, <app_root>/bin/..)."""

import os
import sys
from pathlib import Path

from release_tool import cli

sys.exit(cli.main(root=Path(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))).resolve().parent))

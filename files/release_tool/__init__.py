"""The host-side release tool (see cli.py for its commands), one module per concern.

Shipped to each host as one file, a zipapp (tasks/tool.py `build`), installed as
<app_root>/bin/release-tool and run by the host's python3 as root. Standard library
only. Its modules import each other as modules (`from . import base`), never names
from each other, so what a test replaces on a module is what every part calls.
"""

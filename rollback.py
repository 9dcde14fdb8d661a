"""Roll the app back to the previous release, or to a named one:

    pyinfra inventories/prod.py rollback.py
    pyinfra inventories/prod.py rollback.py --data rollback_to=20261121T073000Z-abc1234

The switch is atomic, uWSGI is reloaded without dropping requests (with the
release's own venv), and the result is health-checked through nginx; if the
check fails, the release that was live stays live. List releases first with
`pyinfra inventories/prod.py releases.py`.
"""

import shlex

from pyinfra import host
from pyinfra.operations import server

from tasks.settings import load_settings

s = load_settings(host)
target = s.rollback_to or ""
server.shell(
    name=f"Roll back to {s.rollback_to or 'the previous release'}",
    commands=[f"{s.app_root}/bin/release-tool --host-name {shlex.quote(host.name)} rollback {target}"],
)

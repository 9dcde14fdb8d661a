"""Roll an app back to its previous release, or to a named one:

    pyinfra inventories/prod.py rollback.py
    pyinfra inventories/prod.py rollback.py --data rollback_to=20261121T073000Z-abc1234
    pyinfra inventories/prod.py rollback.py --data rollback_app=blog   # hosts with several apps

Without an id, the target is the release that was live before the live one by
the host's own record (<app_root>/history.jsonl, host clock), never by name;
rolling back again goes further back, and releases that failed after their switch
are never targets. The switch is atomic, uWSGI is reloaded without dropping
requests (with the release's own venv), and the result is health-checked; if the
check fails, the release that was live stays live. List releases first with
`pyinfra -y inventories/prod.py releases.py`. Like a deploy, a rollback takes the
app's deploy lock (tasks/run/lock.py).
"""

from pyinfra import host
from pyinfra.operations import server

from tasks import identity
from tasks import tool as host_tool
from tasks.run import hooks, lock
from tasks.config.host import load
from tasks.config.settings import SettingsError

this = load(host)
apps = this.apps
wanted = this.settings.rollback_app  # host-wide: one per host
if wanted is None and len(apps) > 1:
    raise SettingsError(f"Host {host.name!r} runs several apps ({', '.join(a.app_name for a in apps)}): "
                        "say which to roll back with --data rollback_app=NAME; nothing was changed.")
matches = [app for app in apps if wanted in (None, app.app_name)]
if not matches:
    raise SettingsError(f"rollback_app = {wanted!r}: host {host.name!r} runs no such app "
                        f"({', '.join(a.app_name for a in apps)}); nothing was changed.")
app = matches[0]
lock.take(host, [app])
hooks.register(host, [app], "rollback")  # local hooks and the webhook (tasks/run/hooks.py)
server.shell(
    name=f"Roll {app.app_name} back to {app.rollback_to or 'the release live before this one'}",
    commands=[host_tool.rollback(host_tool.path(app.app_root), app.rollback_to, host.name, identity.RUN_ID,
                                 identity.BY)],
)

"""List each host's releases per app, the live one marked; changes nothing:

    pyinfra -y inventories/prod.py releases.py
"""

import click
from pyinfra import host

from tasks.config.inventory import load_apps
from tasks.steps.release import Releases

for app in load_apps(host):
    listing = host.get_fact(Releases, app_root=app.app_root)
    click.echo(f"[{host.name}] {app.app_name}: releases in {app.app_root}/releases:\n" + (listing or "  (none)"), err=True)

"""List each host's releases, the live one marked; changes nothing:

    pyinfra inventories/prod.py releases.py
"""

import click
from pyinfra import host

from tasks.release import Releases
from tasks.settings import load_settings

s = load_settings(host)
listing = host.get_fact(Releases, app_root=s.app_root)
click.echo(f"[{host.name}] releases in {s.app_root}/releases:\n" + (listing or "  (none)"), err=True)

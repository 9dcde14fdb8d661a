"""uWSGI's configuration (and the loader for application factories)."""

from pyinfra.api import deploy
from pyinfra.operations import files

from tasks import TEMPLATES


@deploy("uWSGI configuration")
def configure(s):
    ini = files.template(
        name=f"Write {s.uwsgi_ini}",
        src=str(TEMPLATES / "uwsgi.ini.j2"),
        dest=s.uwsgi_ini,
        user="root",
        group=s.app_user,
        mode="640",
        s=s,
    )
    loader_path = f"{s.app_root}/factory_entry.py"
    if s.entry_is_factory:
        loader = files.template(
            name=f"Write the loader that calls {s.app_entry}",
            src=str(TEMPLATES / "factory_entry.py.j2"),
            dest=loader_path,
            user="root",
            group=s.app_user,
            mode="640",
            s=s,
        )
    else:
        loader = files.file(
            name="Remove the application factory loader (not used)",
            path=loader_path,
            present=False,
        )
    return [ini, loader]

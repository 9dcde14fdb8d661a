"""The app's unprivileged user and group, and the directories it runs from."""

from pyinfra.api import deploy
from pyinfra.operations import files, server


@deploy("App user and directories")
def create(platform, s):
    server.group(name=f"Create system group {s.app_user}", group=s.app_user, system=True)
    server.user(
        name=f"Create system user {s.app_user} (no login shell)",
        user=s.app_user,
        group=s.app_user,
        home=s.app_root,
        shell="/usr/sbin/nologin",
        system=True,
        create_home=False,
        ensure_home=False,
    )
    # Only nginx joins the app's group: the group can use the socket (mode 660)
    # and read the static files; everybody else is kept out.
    nginx_in_group = None if s.behind_balancer else server.user(
        name=f"Let nginx ({platform.nginx_user}) use the socket as a member of {s.app_user}",
        user=platform.nginx_user,
        groups=[s.app_user],
        append=True,
        ensure_home=False,
    )
    # Code, venv and config belong to root: the app can read but not rewrite itself.
    files.directory(
        name=f"Create {s.app_root} (root-owned, readable by the app's group)",
        path=s.app_root,
        user="root",
        group=s.app_user,
        mode="750",
    )
    if s.uwsgi_log != "journal":
        files.directory(
            name="Create the uWSGI log directory (writable by the app)",
            path=s.uwsgi_log.rsplit("/", 1)[0] or "/",
            user=s.app_user,
            group=s.app_user,
            mode="750",
        )
    return nginx_in_group

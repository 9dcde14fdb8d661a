"""The app's unprivileged user and group, and the directories it runs from."""

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import files, server

from tasks.steps.facts import Account

NO_LOGIN = "/usr/sbin/nologin"


@deploy("App user and directories")
def create(platform, s):
    server.group(name=f"Create system group {s.app_user}", group=s.app_user, system=True)
    # server.user reads every account on the host; it only runs when the one account
    # it would touch is not as wanted already.
    app_account = host.get_fact(Account, user=s.app_user)
    if not app_account or (app_account.home, app_account.shell, app_account.group) != (
            s.app_root, NO_LOGIN, s.app_user):
        server.user(
            name=f"Create system user {s.app_user} (no login shell)",
            user=s.app_user,
            group=s.app_user,
            home=s.app_root,
            shell=NO_LOGIN,
            system=True,
            create_home=False,
            ensure_home=False,
        )
    # Only nginx joins the app's group: the group can use the socket (mode 660)
    # and read the static files; everybody else is kept out.
    nginx_in_group = None
    if not s.behind_balancer:
        nginx_account = host.get_fact(Account, user=platform.nginx_user)
        if not (nginx_account and s.app_user in nginx_account.groups):
            nginx_in_group = server.user(
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

"""The app's unprivileged user and group, and the directories it runs from."""

import shlex
from typing import NamedTuple

from pyinfra import host
from pyinfra.api import FactBase, deploy
from pyinfra.operations import files, server

NO_LOGIN = "/usr/sbin/nologin"


class AccountInfo(NamedTuple):
    home: str
    shell: str
    group: str
    groups: tuple[str, ...]


class Account(FactBase):
    """One user's home, shell, primary group and all its groups, or None when there
    is no such user. pyinfra's `server.user` reads every account on the host (a
    shell loop of several processes per user, ~0.2 s); this reads one."""

    def command(self, user: str) -> str:
        user = shlex.quote(user)
        return f"getent passwd {user} && id -gn {user} && id -Gn {user} || true"

    def process(self, output: list[str]) -> AccountInfo | None:
        if len(output) < 3:
            return None
        fields = output[0].split(":")
        if len(fields) < 7:
            return None
        return AccountInfo(home=fields[5], shell=fields[6], group=output[1].strip(),
                           groups=tuple(output[2].split()))


@deploy("App user and directories")
def create(platform, app):
    server.group(name=f"Create system group {app.app_user}", group=app.app_user, system=True)
    # server.user reads every account on the host; it only runs when the one account
    # it would touch is not as wanted already.
    app_account = host.get_fact(Account, user=app.app_user)
    if not app_account or (app_account.home, app_account.shell, app_account.group) != (
            app.app_root, NO_LOGIN, app.app_user):
        server.user(
            name=f"Create system user {app.app_user} (no login shell)",
            user=app.app_user,
            group=app.app_user,
            home=app.app_root,
            shell=NO_LOGIN,
            system=True,
            create_home=False,
            ensure_home=False,
        )
    # Only nginx joins the app's group: the group can use the socket (mode 660)
    # and read the static files; everybody else is kept out.
    nginx_in_group = None
    if not app.behind_balancer:
        nginx_account = host.get_fact(Account, user=platform.nginx_user)
        if not (nginx_account and app.app_user in nginx_account.groups):
            nginx_in_group = server.user(
                name=f"Let nginx ({platform.nginx_user}) use the socket as a member of {app.app_user}",
                user=platform.nginx_user,
                groups=[app.app_user],
                append=True,
                ensure_home=False,
            )
    # Code, venv and config belong to root: the app can read but not rewrite itself.
    files.directory(
        name=f"Create {app.app_root} (root-owned, readable by the app's group)",
        path=app.app_root,
        user="root",
        group=app.app_user,
        mode="750",
    )
    if app.uwsgi_log != "journal":
        files.directory(
            name="Create the uWSGI log directory (writable by the app)",
            path=app.uwsgi_log.rsplit("/", 1)[0] or "/",
            user=app.app_user,
            group=app.app_user,
            mode="750",
        )
    return nginx_in_group

"""The settings of one concern: the app: its name, code, entry point, URL, user, directory and environment.

One part of tasks/config/settings/__init__.py's Settings; its fields, in this order,
are its rows of the settings table (`markdown_table`)."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, Field

from tasks.config import reserved
from tasks.config.settings.values import AppDirectory, ENTRY_RE, NAME_RE, RelPath, STATIC_URL_RE


class AppSettings(BaseModel):
    """The app: its name, code, entry point, URL, user, directory and environment."""

    app_name: Annotated[str, AfterValidator(reserved.unit)] = Field(
        "greeting",
        pattern=NAME_RE,
        description="Name of the app: its system user and group, systemd unit, "
        "nginx site and directory names derive from it.",
    )
    app_source: str = Field(
        "files/greeting",
        min_length=1,
        description="Local directory with the app's code, uploaded to the host "
        "(relative paths are relative to the repository root). Its regular files ship; a "
        "symbolic link or special file among them is refused, never followed (see Troubleshooting).",
    )
    app_entry: str = Field(
        "wsgi:app",
        pattern=ENTRY_RE,
        description="WSGI entry point: `module:callable`, or an application factory "
        "`package:create_app()`.",
    )
    app_requirements: RelPath = Field(
        "requirements.txt",
        min_length=1,
        description="The app's pip requirements file, relative to `app_source`.",
    )
    app_static_dir: RelPath | None = Field(
        None,
        description="Directory (relative to `app_source`) that nginx serves itself "
        "under `app_static_url`; empty to serve no static files. Default: the app's own static "
        "folder, found in its `Flask(...)` call (`static/` beside the module, `pkg/static` for a "
        "package, its `static_folder`), or none when it has none.",
    )
    app_static_url: str | None = Field(
        None,
        pattern=STATIC_URL_RE,
        description="URL prefix for the static directory; starts and ends with `/`. Default: the "
        "app's `static_url_path`, or `/static/`.",
    )
    url_prefix: Annotated[str, AfterValidator(reserved.no_dot_segments)] = Field(
        "/",
        pattern=r"^/([A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*)?/?$",
        description="URL path the app is mounted under, e.g. `/blog` (it sees SCRIPT_NAME "
        "`/blog`; `/blog` and `/blog/` both reach it). Several apps can share a host name "
        "under different prefixes.",
    )
    websockets: bool = Field(
        False,
        description="Serve WebSockets: uWSGI runs gevent with `http-websockets` on an HTTP "
        "socket and nginx proxies with the Upgrade headers. Needs `gevent` in the app's "
        "requirements; threads are not used.",
    )
    socketio: bool = Field(
        False,
        description="Serve a Flask-SocketIO app over real WebSockets on every CPU: `socketio_instances` "
        "single-process gevent uWSGI workers, each on a socket of its own, behind nginx with session "
        "affinity (a route cookie), and Redis as the message queue (`redis` defaults to on; `REDIS_URL`). "
        "Needs `gevent` and `Flask-SocketIO` in the app's requirements. See docs/socketio.md.",
    )
    socketio_instances: int | None = Field(
        None, ge=2, le=64,
        description="Socket.IO instances (single-process uWSGI workers, one socket each) for `socketio` apps. "
        "Default: one per CPU of the host (from its facts), at least 2, at most 16.",
    )
    app_user: Annotated[str, AfterValidator(reserved.account)] | None = Field(
        None,
        pattern=NAME_RE,
        description="Unprivileged system user (and group) the app runs as. "
        "Default: `app_name`.",
    )
    app_root: AppDirectory | None = Field(
        None,
        description="Directory on the host holding code, venv and uWSGI config. "
        "Default: `/srv/<app_name>`.",
    )
    shared_paths: list[RelPath] = Field(
        ["instance/"],
        description="Paths (relative to the app) kept outside the releases and linked into "
        "each, so data survives redeploys and rollbacks; a trailing `/` makes a directory, "
        "otherwise a file.",
    )
    app_env_file: str | None = Field(
        None, min_length=1,
        description="Local file of `KEY=value` lines (keep it out of git) that become the app's "
        "environment: uploaded with mode 600, owned by the app user, never printed.",
    )
    app_env_from: list[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]] = Field(
        [],
        description="Names of environment variables of the shell running pyinfra to pass to the app "
        "the same way (e.g. `SECRET_KEY`).",
    )

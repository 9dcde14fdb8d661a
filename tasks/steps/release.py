"""Releases: each code change becomes releases/<id>, switched to atomically.

    <app_root>/releases/<id>/       code, its .venv link, shared-path links, loader
    <app_root>/venvs/<hash>/        one venv per requirements file (shared by releases)
    <app_root>/shared/<path>        data that outlives releases (instance/, uploads/, ...)
    <app_root>/current -> releases/<id>
    <app_root>/assets/live/         root's merge of the kept releases' static files, served by nginx

A release is made only when what would go into it (code, requirements, entry point,
shared paths) differs from the live one, so a no-op run stays "No changes". The
switch, the reload and the health gate with automatic rollback are done on the host
by bin/release-tool (files/release_tool/), which rollback.py uses too.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass

from pyinfra import host, state
from pyinfra.api import DeployError, FactBase, deploy
from pyinfra.facts.files import Link
from pyinfra.facts.systemd import SystemdStatus
from pyinfra.operations import files, server

from tasks import TEMPLATES, identity
from tasks import tool as host_tool
from tasks.steps import healthcheck
from tasks.steps.secrets import env_file, put_secret
# The bundle built on the laptop, and its upload with its --diff preview.
from tasks.steps.bundle import META, build_bundle
from tasks.steps.release_preview import ship_release


class LiveRelease(FactBase):
    """The live release's metadata (`current/.deploy-release.json`), or None."""

    def command(self, app_root: str) -> str:
        return f"cat {shlex.quote(app_root)}/current/{META} 2>/dev/null || true"

    def process(self, output: list[str]) -> dict | None:
        try:
            return json.loads("\n".join(output))
        except ValueError:
            return None


class Releases(FactBase):
    """The release tool's listing of the releases, the live one marked."""

    def command(self, app_root: str) -> str:
        tool = host_tool.path(app_root)
        return host_tool.if_installed(tool, host_tool.listing(tool))

    def process(self, output: list[str]) -> str:
        return "\n".join(f"  {line}" for line in output)


class LiveConfirmed(FactBase):
    """Whether the live release's activation ended healthy (the release tool writes
    `live-confirmed` only then): False after a run was cut off past the switch."""

    def command(self, app_root: str) -> str:
        root = shlex.quote(app_root)
        return (f"[ ! -e {root}/current ] || [ \"$(readlink {root}/current)\" = "
                f"\"releases/$(cat {root}/live-confirmed 2>/dev/null)\" ] && echo yes || echo no")

    def process(self, output: list[str]) -> bool:
        return output[-1:] == ["yes"]


@dataclass
class Ship:
    """A release to ship in activate(), all in one command: its bundle and before-switch commands."""
    bundle: object
    before: list


@dataclass
class Release:
    id: str
    tool: str
    new: bool
    settings: object  # the op writing the release tool's settings (health check among them)
    environment: object = None  # the op uploading the app's environment, if it has one
    confirmed: bool = True  # False: the live release's activation never ended healthy
    activated: object = None  # the op of its exclusive migration, which switched to it already
    ship: Ship | None = None  # to ship whole (checks, switch, reload, prune) in activate()
    shipped: object = None  # the op that did, ending with the health gate
    trial: bool = False  # on trial behind balancers: promoted (and pruned) by tasks/steps/fleet_canary.py


def tool_settings(app) -> dict:
    """The release tool's settings (its `Settings`, files/release_tool/base.py) for an app."""
    settings = {
        "app": app.app_name,
        "service": app.service,
        "user": app.app_user,
        "requirements": app.app_requirements,
        "sandbox": list(app.sandbox_properties),
        # Where the release's steps as the app user may write: its shared data only.
        "writable": [f"{app.app_root}/shared/{path.rstrip('/')}" for path in app.shared_paths],
        "master_fifo": f"{app.socket_dir}/master.fifo",
        "stats_socket": f"{app.socket_dir}/stats.sock",
        "reload_timeout": app.reload_timeout,
        "keep_releases": app.keep_releases,
        "static_dir": app.release_static_dir,
        "nginx_error_log": app.nginx_error_log,
        "health": healthcheck.spec(app),
        "health_module": healthcheck.MODULE,
        "maintenance_dir": app.maintenance_dir,
        "workers": app.worker_instances,
        "environment_files": app.environment_files,
        "uwsgi": f"{app.uwsgi_venv}/bin/uwsgi",
        "message_queue": bool(app.socketio),
        "canary": {
            "share": app.canary_share, "window": app.canary_window, "min_requests": app.canary_min_requests,
            "max_error_rate": float(app.canary_max_error_rate), "ini": app.canary_ini, "link": app.canary_code_dir,
            "flag": f"{app.canary_dir}/on", "socket_dir": app.canary_socket_dir, "log": app.canary_log,
            "sockets": {app.canary_address: "canary", app.uwsgi_address: "live"}, "unit": f"{app.app_name}-canary.service",
        } if app.canary_share else {},
    }
    contract = host_tool.settings_contract()
    if set(settings) != set(contract) or not all(isinstance(value, contract[key]) for key, value in settings.items()):
        raise TypeError(f"tool_settings does not match the release tool's Settings: {sorted(settings)}")
    return settings


@deploy("Release")
def prepare(app, alone: bool = False) -> Release:
    """Install the release tool, the shared paths, and (when something changed)
    a new release with its venv, checked and ready to switch to. `alone`: the host's
    only app, whose new release (without migrations) is shipped whole in activate()."""
    tool = host_tool.path(app.app_root)
    files.put(name="Install the release tool", src=host_tool.upload(), dest=tool, mode="750")
    settings = files.template(name="Write the release tool's settings", src=str(TEMPLATES / "release-tool.json.j2"),
                              dest=f"{app.app_root}/release-tool.json", mode="640", settings=tool_settings(app))
    if app.canary_share:
        files.directory(name=f"Create {app.canary_dir} (root's: the canary's flag, read by nginx)",
                        path=app.canary_dir, user="root", group="root", mode="755")
    else:
        files.directory(name=f"No {app.canary_dir} (canary_share is 0)", path=app.canary_dir, present=False)
    for path in ("releases", "venvs", "shared"):
        files.directory(name=f"Create {app.app_root}/{path}", path=f"{app.app_root}/{path}",
                        user="root", group=app.app_user, mode="750")
    _serve_assets(app, tool, settings)
    environment = None
    variables = app.environment()
    if variables:
        files.directory(name=f"Create {app.app_root}/secrets (private)", path=f"{app.app_root}/secrets",
                        user="root", group="root", mode="700")
        environment = put_secret(
            name=f"Upload the app's environment ({len(variables)} variables, values never shown)",
            src=env_file(variables), dest=app.env_file_path, user=app.app_user, group=app.app_user, mode="600")
    else:
        files.file(name="No app environment file", path=app.env_file_path, present=False)
    for path in app.shared_paths:
        target = f"{app.app_root}/shared/{path.rstrip('/')}"
        if path.endswith("/"):
            files.directory(name=f"Create shared directory {path} (writable by the app)", path=target,
                            user=app.app_user, group=app.app_user, mode="750")
        else:
            files.file(name=f"Create shared file {path} (writable by the app)", path=target,
                       user=app.app_user, group=app.app_user, mode="640", touch=False)

    bundle = build_bundle(app)
    live = host.get_fact(LiveRelease, app_root=app.app_root)
    if live and live.get("content_hash") == bundle.content_hash:
        return Release(live["id"], tool, new=False, settings=settings, environment=environment,
                       confirmed=host.get_fact(LiveConfirmed, app_root=app.app_root))

    if live and live.get("id") == bundle.id:
        # A named id (release_id) already live with other code: unpacking would replace the live release.
        raise DeployError(f"release_id = {bundle.id!r} is already live on host {host.name!r} with other code: "
                          "name a new release; nothing was changed.")
    # In this order on the host: the app must import, the before-switch commands (migrations,
    # a first `flask init-db`) run, and only then is the app asked for its health path, so
    # an app whose pages need those tables can deploy. One upload and one release-tool
    # command (`ship`) do it all; its venv is built there (as the app user) when missing.
    migrations = app.migrate_commands if app.runs_migrations else []
    # A canary (canary_share) needs a live release to split traffic with: not on a first deploy.
    split = bool(app.canary_share) and host.get_fact(ServiceActive, services=[app.service]).get(app.service, False)
    if alone and not migrations and not split:
        # The host's one app, no migrations: nothing else to do before its switch, so the
        # one command goes on to the switch, the reload and pruning (see activate()).
        return Release(bundle.id, tool, new=True, settings=settings, environment=environment,
                       ship=Ship(bundle, list(app.before_switch_commands)))
    before = list(app.before_switch_commands)
    ship(app, tool, bundle, before, canary=not migrations and not split)
    # A first deploy has no requests to hold (nor its uWSGI unit yet): the plain way.
    if app.migrate_exclusive and migrations and host.get_fact(ServiceActive, services=[app.service]).get(app.service):
        # One command on the host holds the requests, migrates, runs the canary and
        # switches, and always ends the hold (the release tool's hold.py).
        migrated = server.shell(
            name=f"Migrate with requests held (at most {app.migrate_hold_timeout} s each), then switch to "
                 f"release {bundle.id}: {'; '.join(migrations)}",
            commands=[host_tool.migrate(tool, bundle.id, migrations, app.migrate_hold_timeout,
                                        app.maintenance_retry_after, host.name, identity.RUN_ID, identity.BY)])
        return Release(bundle.id, tool, new=True, settings=settings, environment=environment,
                       activated=migrated)
    # Behind balancers on one app server only (tasks/config/topology.py); every host runs
    # this step before any runs its switch (pyinfra runs each step on all hosts first).
    for command in migrations:
        server.shell(name=f"Migrate: {command}",
                     commands=[host_tool.run_in_release(tool, bundle.id, command, identity.RUN_ID, identity.BY)])
    if split and app.behind_balancer:
        # The balancers split the traffic: the release goes on trial in the run's canary
        # steps once every host is deployed (tasks/steps/fleet_canary.py), which promote it or roll it back.
        checked = server.shell(name=f"Check release {bundle.id} answers GET {app.healthcheck_path} (called "
                                    "in-process), before its canary behind the balancers",
                               commands=[host_tool.canary(tool, bundle.id, identity.RUN_ID, identity.BY)])
        return Release(bundle.id, tool, new=True, settings=settings, environment=environment, activated=checked,
                       trial=True)
    if split:
        # One command on the host: the in-process check, then the release as a second uWSGI
        # instance for a share of new clients, then its promotion or rollback (split.py).
        tried = server.shell(
            name=f"Canary: release {bundle.id} answers GET {app.healthcheck_path} in-process, then serves "
                 f"{app.canary_share} % of new clients beside the live release for {app.canary_window} s; "
                 "promoted or rolled back by its 5xx rate",
            commands=[host_tool.split(tool, bundle.id, host.name, identity.RUN_ID, identity.BY)])
        return Release(bundle.id, tool, new=True, settings=settings, environment=environment, activated=tried)
    if migrations:
        server.shell(name=f"Check release {bundle.id} answers GET {app.healthcheck_path} (called in-process)",
                     commands=[host_tool.canary(tool, bundle.id, identity.RUN_ID, identity.BY)])
    return Release(bundle.id, tool, new=True, settings=settings, environment=environment)


def ship(app, tool: str, bundle, before: list[str], canary: bool, activation=None):
    """The release's upload and its one `release-tool ship` command. `activation`: a
    function giving, when the command runs, the mode of the switch and reload that
    follow the checks (with pruning), or None (checked only, not switched to)."""
    steps = ["unpack", "venv", "import check", *(f"`{command}`" for command in before),
             *(["canary GET " + app.healthcheck_path] if canary else [])]
    if activation is not None:
        steps += ["switch, reload uWSGI, check health, keep the newest " + str(app.keep_releases)]

    def command(upload: str, sha256: str) -> str:
        return host_tool.ship(tool, bundle.id, upload, sha256, before, canary,
                              activation() if activation is not None else None, activation is not None,
                              host.name, identity.RUN_ID, identity.BY)

    return ship_release(name=f"Ship release {bundle.id} (as {app.app_user}): {', '.join(steps)}", bundle=bundle,
                        app_name=app.app_name, app_root=app.app_root, command=command)


def _serve_assets(app, tool: str, settings) -> None:
    """Root's merge of the kept releases' static files that nginx serves (the release
    tool's assets.py), built before nginx is pointed at it; activation and prune keep
    it up to date, and a change of the tool's settings (its static directory) rebuilds it."""
    top = f"{app.app_root}/assets"
    if not app.release_static_dir:
        files.directory(name=f"No {top}: nginx serves no static files from the releases", path=top, present=False)
        return
    files.directory(name=f"Create {top} (root's: the static files nginx serves)", path=top,
                    user="root", group=app.app_user, mode="750")
    if app.behind_balancer:
        # uWSGI serves them (templates/uwsgi.ini.j2): through a path it resolves anew per request.
        link = app.assets_url_link
        files.directory(name=f"Create {link.rsplit('/', 1)[0]} (root's: uWSGI's way to the static files)",
                        path=link.rsplit("/", 1)[0], user="root", group=app.app_user, mode="750")
        files.link(name=f"Link {link} to the static files served", path=link, target=app.assets_dir,
                   user="root", group=app.app_user)
    build = host_tool.assets(tool)
    if host.get_fact(Link, path=app.assets_dir):
        server.shell(name="Rebuild the static files nginx serves (the tool's settings changed)", commands=[build],
                     _if=settings.did_change)
    else:
        server.shell(name="Build the static files nginx serves (the live release's, then the kept ones')",
                     commands=[build])


@deploy("Release activation")
def activate(app, release: Release, restart_triggers, reload_triggers):
    """Switch to the release and get uWSGI onto it, health-gated; roll back on failure."""
    def run(mode: str) -> str:
        return host_tool.activate(release.tool, release.id, mode, host.name, identity.RUN_ID, identity.BY)

    if release.ship is not None:
        def mode() -> str:
            # Asked when the command runs (the triggers have run by then), as the steps below.
            if not state.is_executing:
                return "auto"
            if any(op.did_change() for op in restart_triggers):
                return "restart"
            return "graceful" if any(op.did_change() for op in reload_triggers) else "auto"

        release.shipped = ship(app, release.tool, release.ship.bundle, release.ship.before, canary=True,
                               activation=mode)
        return [release.shipped]

    restarted = server.shell(
        name=f"Restart uWSGI on release {release.id} (its unit or uWSGI itself changed)",
        commands=[run("restart")],
        _if=lambda: any(op.did_change() for op in restart_triggers),
    )
    reloaded = server.shell(
        name=f"Reload uWSGI gracefully on release {release.id} (its config changed)",
        commands=[run("graceful")],
        _if=lambda: not restarted.did_change() and any(op.did_change() for op in reload_triggers),
    )
    ops = [restarted, reloaded, *([release.activated] if release.activated else [])]
    running = host.get_fact(ServiceActive, services=[app.service]).get(app.service, False)
    if (release.new and release.activated is None) or not running:
        ops.append(server.shell(
            name=f"Switch to release {release.id}, reload uWSGI without dropping requests, check health",
            commands=[run("auto")],
            _if=lambda: not restarted.did_change() and not reloaded.did_change(),
        ))
    elif not release.confirmed:
        # `current` was switched but the run ended before the health gate said yes.
        ops.append(server.shell(
            name=f"Activate release {release.id} again: its activation never ended healthy",
            commands=[run("auto")],
            _if=lambda: not restarted.did_change() and not reloaded.did_change(),
        ))
    if release.new and not release.trial:
        server.shell(name=f"Keep the newest {app.keep_releases} releases (by this host's record)",
                     commands=[host_tool.prune(release.tool)])
    return ops


def on_trial(server, app) -> str | None:
    """The release `server` puts on trial for `app` in this run behind load balancers (new
    code beside a live release), else None; read from `server`'s facts, so that every host
    of the run knows (tasks/steps/fleet_canary.py), as prepare() decides it."""
    if not (app.canary_share and app.behind_balancer):
        return None
    if not server.get_fact(ServiceActive, services=[app.service]).get(app.service, False):
        return None
    live, bundle = server.get_fact(LiveRelease, app_root=app.app_root), build_bundle(app)
    return None if live and live.get("content_hash") == bundle.content_hash else bundle.id


class ServiceActive(SystemdStatus):
    """{unit: active?}, as `systemctl is-active` answers it (active or reloading),
    read like pyinfra's own unit facts (so a run reads them all in one call)."""

    state_key = "ActiveState"
    state_values = ("active", "reloading")

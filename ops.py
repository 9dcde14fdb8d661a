"""Day-two commands over the hosts of an inventory, from your laptop:

    .venv/bin/python ops.py inventories/prod.py releases
    .venv/bin/python ops.py inventories/prod.py --limit web1.example.com releases
    .venv/bin/python ops.py inventories/prod.py maintenance on     # 503 + page; `off` to end it
    .venv/bin/python ops.py inventories/prod.py audit -n 20        # who deployed what, when
    .venv/bin/python ops.py inventories/prod.py --help          # every command

The inventory, `--limit` and `--data` work as they do for `pyinfra INVENTORY
deploy.py`: the same hosts, connected the same way, with the same settings
(tasks/ops/fleet.py). Every command reads or acts on what the deploy put there and
says which host each line comes from.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import click

from tasks import identity
from tasks import tool as host_tool
from tasks.config.settings import SettingsError
from tasks.config.topology import database_server, is_backup_server
from tasks.ops import audit, backups as ops_backups, exec as ops_exec, logs as ops_logs, status as ops_status
from tasks.ops.fleet import Fleet, FleetError, echo, parse_data, run, show_output
from tasks.steps import maintenance, restic


class Context:
    """What every command gets: the hosts, connected on first use."""

    def __init__(self, inventory: str, limit: tuple[str, ...], data: tuple[str, ...], app: str | None):
        self.inventory, self.limit, self.data, self.app = inventory, limit, data, app
        self._fleet: Fleet | None = None

    @property
    def fleet(self) -> Fleet:
        if self._fleet is None:
            self._fleet = Fleet.connect(self.inventory, self.limit, parse_data(self.data), self.app)
        return self._fleet


def _add(ctx: click.Context, param: click.Parameter, value):
    """Options given after the command name add to those given before it."""
    obj = ctx.find_object(Context)
    if obj is not None and value:
        if param.name == "app":
            obj.app = value
        else:
            setattr(obj, param.name, (*getattr(obj, param.name), *value))
    return value


def fleet_options(command, after: bool = True):
    """--limit, --data and --app, taken before or after the command name."""
    extra = {"expose_value": False, "callback": _add} if after else {}
    for option in reversed([
        click.option("--limit", multiple=True, metavar="HOST|GROUP", help="Only these hosts or groups (names "
                     "or glob patterns, comma-separated; as pyinfra's --limit).", **extra),
        click.option("--data", multiple=True, metavar="KEY=VALUE", help="Override a setting (as pyinfra's "
                     "--data).", **extra),
        click.option("--app", metavar="NAME", help="Only this app, on hosts that run several.", **extra),
    ]):
        command = option(command)
    return command


def command(*args, **kwargs):
    """A subcommand of ops.py, with the fleet options."""
    def register(function):
        return cli.command(*args, **kwargs)(fleet_options(function))
    return register


class FleetGroup(click.Group):
    """Takes the fleet options anywhere: `ops.py INVENTORY --limit web1 status` as
    well as before INVENTORY or after the command's name."""

    FLEET_OPTIONS = ("--limit", "--data", "--app")

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and not args[0].startswith("-"):
            rest, moved = list(args[1:]), []
            while rest and rest[0].split("=", 1)[0] in self.FLEET_OPTIONS:
                take = 1 if "=" in rest[0] else 2
                moved, rest = moved + rest[:take], rest[take:]
            args = [*moved, args[0], *rest]
        return super().parse_args(ctx, args)


@click.group(cls=FleetGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("inventory", type=click.Path(dir_okay=False))
@lambda function: fleet_options(function, after=False)
@click.pass_context
def cli(ctx: click.Context, inventory: str, limit: tuple[str, ...], data: tuple[str, ...], app: str | None):
    """Day-two operations on the hosts of INVENTORY (a pyinfra inventory file)."""
    ctx.obj = Context(inventory, limit, data, app)


@command()
@click.pass_obj
def releases(ctx: Context):
    """List each host's releases per app, the live one marked."""
    def listing(host):
        return [(app.app_name, run(host, host_tool.listing(host_tool.path(app.app_root))))
                for app in ctx.fleet.apps(host)]

    for name, apps in ctx.fleet.each(listing).items():
        for app_name, (ok, out, err) in apps:
            click.echo(f"[{name}] {app_name}:")
            for line in (out if ok else err) or ["(none)"]:
                echo(f"[{name}]   {line}")


@command(short_help="How each host's apps are doing (exit 1 if unhealthy).")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON (for scripts).")
@click.pass_obj
def status(ctx: Context, as_json: bool):
    """How each host's apps are doing; exit status 1 if anything is unhealthy.

    Per host and app: the live release, the web unit, workers, uWSGI's busy/idle
    workers and requests served, nginx, days left on the certificate, free disk. Exit status 1 when anything is unhealthy: the web unit not active, a worker not
    active, a job or timer failed, nginx not active, the health check failing, the
    certificate missing or expiring within acme_min_valid_days. A host whose updates
    need a reboot is said so (it is not unhealthy). A backup host: its last restore
    drill and files drill (when, ok or failed, why), unhealthy when one failed."""
    def gather(host):
        apps = ctx.fleet.apps(host)
        if is_backup_server(host):
            # The pgBackRest drill with a db server, the files drill with an app's files backed up.
            kept = [ops_status.DRILLS[0]] if database_server(host) else []
            kept += [ops_status.DRILLS[1]] if restic.served(host) else []
            rows = []
            for drill in kept:
                ok, out, err = run(host, ops_status.verify_command(drill), timeout=60)
                schedule = getattr(apps[0], drill.setting) if apps else None
                rows.append(ops_status.verify_row(host.name, out if ok else [], schedule, drill))
            return rows
        if not apps:
            return []
        ok, out, err = run(host, ops_status.with_reboot_flag(ops_status.host_command(host, apps)), timeout=120)
        reports = ops_status.parse(host, apps, out, err)
        return [ops_status.summary(host.name, app, reports[app.app_name], ops_status.now()) for app in apps]

    rows = [row for found in ctx.fleet.each(gather).values() for row in found]
    if as_json:
        click.echo(json.dumps(rows, indent=1))
    else:
        for line in ops_status.table(rows):
            echo(line)
    return 0 if all(row["healthy"] for row in rows) else 1


@command(short_help="Log lines from every host, prefixed with the host.")
@click.option("-n", "--lines", type=click.IntRange(min=0), default=10, show_default=True,
              help="Lines to show from the end, per host (and per file).")
@click.option("--since", metavar="TIME", help="Only journal lines since then (journalctl's --since: "
              "'1 hour ago', '2026-12-01 10:00', 'today').")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines until interrupted (Ctrl-C).")
@click.option("--workers", is_flag=True, help="Add the app's workers and jobs.")
@click.option("--nginx", is_flag=True, help="Add nginx's unit and the site's access and error logs.")
@click.pass_obj
def logs(ctx: Context, lines: int, since: str | None, follow: bool, workers: bool, nginx: bool):
    """The app's log lines from every host, each prefixed with its host.

    The journal of the app's web unit (uWSGI: the app's own output and errors), with
    --workers its workers and jobs, with --nginx nginx's unit and the site's log
    files; a uwsgi_log file too when it is set. --since applies to the journal."""
    def read(host):
        command = ops_logs.host_command(host, ctx.fleet.apps(host), lines=lines, since=since, follow=follow,
                                        nginx=nginx, workers=workers)
        return run(host, command, stream=True, pty=follow) if command else (True, [], [])

    results = ctx.fleet.each(read)
    return 0 if all(ok for ok, _, _ in results.values()) else 1


@command("run", context_settings={"ignore_unknown_options": True})
@click.option("--tty", is_flag=True, help="On a terminal, for interactive commands (flask shell); one host only.")
@click.argument("words", nargs=-1, required=True, type=click.UNPROCESSED, metavar="-- COMMAND...")
@click.pass_obj
def run_(ctx: Context, tty: bool, words: tuple[str, ...]):
    """Run COMMAND in the live release as the app user, on every host.

    With the release's venv on PATH, the app's environment files (its secrets
    among them) and the service's sandbox: `run -- flask db upgrade`. The words are
    joined with spaces and run by /bin/sh on the host. Each output line is prefixed
    with its host; the exit status is the command's (with several hosts: the first
    non-zero one, in inventory order). --tty (`run --tty --limit web1 -- flask
    shell`) opens an SSH session with a terminal instead (see docs/operations.md)."""
    def app_of(host):
        apps = ctx.fleet.apps(host)
        if len(apps) > 1:
            raise FleetError(f"{host.name} runs several apps ({', '.join(a.app_name for a in apps)}): "
                             "choose one with --app")
        return apps[0] if apps else None

    targets = [(host, app_of(host)) for host in ctx.fleet.hosts]
    targets = [(host, app) for host, app in targets if app is not None]
    if tty:
        if len(targets) != 1:
            raise FleetError(f"--tty needs exactly one host, and {len(targets)} are chosen: "
                             "narrow them with --limit")
        host, app = targets[0]
        return subprocess.run(ops_exec.ssh_argv(host, ops_exec.exec_command(app, words, tty=True))).returncode

    by_name = dict(targets)
    show_output(raw=True)  # the operator's own command: its output as it is
    results = ctx.fleet.each(lambda host: run(host, ops_exec.exec_command(by_name[host], words), stream=True)
                             if host in by_name else (True, [], []))
    codes = [ops_exec.exit_status(ok, err) for ok, _, err in results.values()]
    return next((code for code in codes if code), 0)



def _interrupted(signum, frame) -> None:
    """Ctrl-C: stop at once, quietly (`logs --follow` ends this way). The connections
    close with the process: a command that runs on a pseudo-terminal (`logs
    --follow`) gets a hangup there and ends too."""
    sys.stdout.flush()
    os._exit(130)
@command("maintenance")
@click.argument("state", type=click.Choice(["on", "off", "status"]))
@click.pass_obj
def maintenance_command(ctx: Context, state: str):
    """Switch maintenance mode on or off (or show it: status).

    While on, nginx answers every request for the app with 503, its maintenance
    page (`maintenance_page`) and `Retry-After` (`maintenance_retry_after`), except
    the deploy's health check, ACME challenges and the clients of
    `maintenance_allow`. It takes effect on the next request (no reload), and stays
    on through redeploys until switched off. Behind load balancers it is switched
    on the balancers. Every switch goes into the host's audit log.
    """
    def switch(host):
        return [(s.app_name, run(host, maintenance.switch_command(tool, state, identity.BY)))
                for s, tool in maintenance.targets(host, ctx.fleet.apps(host))]

    failed = False
    for name, apps in ctx.fleet.each(switch).items():
        if not apps:
            click.echo(f"[{name}] (behind load balancers: maintenance is switched on the balancers)")
        for app_name, (ok, out, err) in apps:
            failed = failed or not ok
            for line in (out if ok else err) or ["(no answer)"]:
                echo(f"[{name}] {app_name}: {line}", err=not ok)
    if failed:
        raise click.exceptions.Exit(1)


@command("audit")
@click.option("--json", "as_json", is_flag=True, help="One JSON object a line, with the host it came from.")
@click.option("-n", "last", type=click.IntRange(min=1), help="Only the last N entries of each host's log.")
@click.pass_obj
def audit_command(ctx: Context, as_json: bool, last: int | None):
    """Print each host's audit log: every deploy, rollback, maintenance switch and
    lock break, with who (user@machine), when (host clock), what and how it ended."""
    def read(host):
        return [(s.app_name, run(host, audit.command(tool, as_json, last or 0)))
                for s, tool in audit.tools(host, ctx.fleet.apps(host))]

    failed = False
    for name, apps in ctx.fleet.each(read).items():
        for app_name, (ok, out, err) in apps:
            failed = failed or not ok
            if not ok:
                for line in err or ["(no answer)"]:
                    echo(f"[{name}] {app_name}: {line}", err=True)
                continue
            for line in out:
                echo(audit.tagged(name, app_name, line) if as_json else f"[{name}] {app_name}: {line}")
    if failed:
        raise click.exceptions.Exit(1)


def _report(results: dict, label: str) -> bool:
    """Print each host's and app's lines; True when every one succeeded."""
    every = True
    for name, apps in results.items():
        if not apps:
            click.echo(f"[{name}] no app with a database")
        for app_name, ok, lines in apps:
            every = every and ok
            click.echo(f"[{name}] {app_name}: {label if ok else 'FAILED'}")
            for line in lines:
                echo(f"[{name}]   {line}")
    return every


@command()
@click.argument("what", type=click.Choice(["now"]))
@click.option("--download", metavar="DIR", type=click.Path(file_okay=False, exists=True, writable=True),
              help="Also copy each new backup into this local directory (as <host>-<backup>, mode 600).")
@click.pass_obj
def backup(ctx: Context, what: str, download: str | None):
    """Back up each app's database now (`database: postgresql`): pg_dump into the
    host's root-only backup directory, then its retention."""
    if not _report(ops_backups.backup_now(ctx.fleet, download), "backed up"):
        raise click.ClickException("a backup failed (above)")


@command()
@click.pass_obj
def backups(ctx: Context):
    """List each app's database backups on each host, oldest first (name, bytes, time)."""
    if not _report(ops_backups.listing(ctx.fleet), "backups"):
        raise click.ClickException("a host's backups could not be listed (above)")


@command()
@click.argument("name", required=False)
@click.option("--to", metavar="TIME", help="With a backup host (pgBackRest): the point in time to restore, as "
              "PostgreSQL reads it, e.g. '2026-12-06 20:15:00+00'. Default: the latest state.")
@click.pass_obj
def restore(ctx: Context, name: str | None, to: str | None):
    """Restore the backup NAME (see `backups`) into its app's own database: its web
    unit, workers and jobs are stopped, the backup restored, the units started again
    and the app health-checked. With a backup host, no NAME: pgBackRest restores the
    db server to its latest state, or to --to TIME (docs/backups.md)."""
    what = name or (f"to {to}" if to else "the latest state")
    if not _report(ops_backups.restore(ctx.fleet, name, to), f"restored {what}"):
        raise click.ClickException(f"restore {what} failed (above)")


@command("restore-files")
@click.option("--to", metavar="TIME", help="The newest snapshot at or before this time, e.g. "
              "'2026-12-06 20:15:00+00'. Default: the newest.")
@click.pass_obj
def restore_files(ctx: Context, to: str | None):
    """Restore each app's shared_paths (uploads, instance/) on each app server from its
    newest snapshot on the backup host (restic), or the newest at or before --to TIME:
    the app's units are stopped, the snapshot restored as the app user (every file read
    back and checked; files made since it are kept), the units started again and the
    app health-checked (docs/backups.md)."""
    what = f"the files as at {to}" if to else "the newest files"
    if not _report(ops_backups.restore_files(ctx.fleet, to), f"restored {what}"):
        raise click.ClickException(f"restore-files {what} failed (above)")


def main() -> int:
    signal.signal(signal.SIGINT, _interrupted)
    try:
        code = cli(standalone_mode=False)
    except (FleetError, SettingsError) as exc:
        click.echo(f"Error: {exc}", err=True)
        return 2
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Abort:
        return 1
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())

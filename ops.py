"""Day-two commands over the hosts of an inventory, from your laptop:

    .venv/bin/python ops.py inventories/prod.py releases
    .venv/bin/python ops.py inventories/prod.py --limit web1.example.com releases
    .venv/bin/python ops.py inventories/prod.py --help          # every command

The inventory, `--limit` and `--data` work as they do for `pyinfra INVENTORY
deploy.py`: the same hosts, connected the same way, with the same settings
(tasks/fleet.py). Every command reads or acts on what the deploy put there and
says which host each line comes from.
"""

from __future__ import annotations

import sys

import click

from tasks import database
from tasks.fleet import Fleet, FleetError, parse_data, run
from tasks.settings import SettingsError


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
        return [(app.app_name, run(host, f"{app.app_root}/bin/release-tool list")) for app in ctx.fleet.apps(host)]

    for name, apps in ctx.fleet.each(listing).items():
        for app_name, (ok, out, err) in apps:
            click.echo(f"[{name}] {app_name}:")
            for line in (out if ok else err) or ["(none)"]:
                click.echo(f"[{name}]   {line}")


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
                click.echo(f"[{name}]   {line}")
    return every


@command()
@click.argument("what", type=click.Choice(["now"]))
@click.option("--download", metavar="DIR", type=click.Path(file_okay=False, exists=True, writable=True),
              help="Also copy each new backup into this local directory (as <host>-<backup>, mode 600).")
@click.pass_obj
def backup(ctx: Context, what: str, download: str | None):
    """Back up each app's database now (`database: postgresql`): pg_dump into the
    host's root-only backup directory, then its retention."""
    if not _report(database.backup_now(ctx.fleet, download), "backed up"):
        raise click.ClickException("a backup failed (above)")


@command()
@click.pass_obj
def backups(ctx: Context):
    """List each app's database backups on each host, oldest first (name, bytes, time)."""
    if not _report(database.listing(ctx.fleet), "backups"):
        raise click.ClickException("a host's backups could not be listed (above)")


@command()
@click.argument("name")
@click.pass_obj
def restore(ctx: Context, name: str):
    """Restore the backup NAME (see `backups`) into its app's own database: its web
    unit, workers and jobs are stopped, the backup restored, the units started again
    and the app health-checked."""
    if not _report(database.restore(ctx.fleet, name), f"restored {name}"):
        raise click.ClickException(f"restore {name} failed (above)")


def main() -> int:
    try:
        cli(standalone_mode=False)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())

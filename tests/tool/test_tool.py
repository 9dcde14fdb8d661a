"""The host tool's one file and its command lines (tasks/tool.py), host-less: the
zipapp is the same bytes for the same source, runs with the host's way of running
it, holds the package; every command line the deploy can build parses with the
tool's own argument parser."""

from __future__ import annotations

import ast
import importlib
import inspect
import io
import json
import os
import shlex
import subprocess
import sys
import zipfile

import pytest

from tasks import tool as host_tool

TOOL = "/srv/greeting/bin/release-tool"
RUN, BY = "20261201T100000Z-abcd", "ana@laptop"

# One call of each builder, with the values the deploy gives it.
CALLS = {
    host_tool.listing: (TOOL,),
    host_tool.build_venv: (TOOL, "r1", RUN, BY),
    host_tool.check: (TOOL, "r1", RUN, BY),
    host_tool.run_in_release: (TOOL, "r1", "flask init-db --force 'x y'", RUN, BY),
    host_tool.canary: (TOOL, "r1", RUN, BY),
    host_tool.ship: (TOOL, "r1", "/home/deploy/.pyinfra-flask-uploads/release-ab.tar", "0" * 64,
                     ["flask init-db --force 'x y'", "--odd"], True, "graceful", True, "web 1", RUN, BY),
    host_tool.activate: (TOOL, "r1", "graceful", "web 1", RUN, BY),
    host_tool.rollback: (TOOL, None, "web1", RUN, BY),
    host_tool.prune: (TOOL,),
    host_tool.assets: (TOOL,),
    host_tool.health: (TOOL, "web1"),
    host_tool.lock_take: (TOOL, RUN, json.dumps({"user": "ana", "machine": "laptop", "pid": 7}), 5, "old-run", True),
    host_tool.lock_release: (TOOL, RUN),
    host_tool.status: (TOOL, True, ["greeting-mailer@1.service"], ["greeting-report.service"],
                       ["greeting-report.timer"], ["/etc/letsencrypt/live/greeting/fullchain.pem"],
                       "/var/lib/pyinfra-flask/watch/state.json"),
    host_tool.execute: (TOOL, "flask shell", True),
    host_tool.maintenance: (TOOL, "on", BY),
    host_tool.audit: (TOOL, True, 5),
    host_tool.migrate: (TOOL, "r1", ["flask db upgrade", "--odd 'x y'"], 20, 30, "web 1", RUN, BY),
    host_tool.hold: (TOOL, "off"),
    host_tool.split: (TOOL, "r1", "web 1", RUN, BY),
    host_tool.canary_start: (TOOL, "r1", "web 1", RUN, BY),
    host_tool.canary_verdict: (TOOL, "r1", '{"canary": {"requests": 3, "5xx": 0}}', "web 1", RUN, BY),
    host_tool.canary_finish: (TOOL, "r1", '{"canary": {"requests": 3, "5xx": 0}}', "web 1", RUN, BY),
    host_tool.canary_watch: (TOOL, "r1"),
    host_tool.canary_close: (TOOL,),
}


def test_every_builder_is_in_the_contract():
    public = {function for name, function in inspect.getmembers(host_tool, inspect.isfunction)
              if function.__module__ == host_tool.__name__ and name in {f.__name__ for f in host_tool.BUILDERS}}
    assert set(host_tool.BUILDERS) == set(CALLS) == public


@pytest.mark.parametrize("builder", host_tool.BUILDERS, ids=lambda builder: builder.__name__)
def test_every_command_line_parses_with_the_tools_own_parser(builder):
    words = shlex.split(builder(*CALLS[builder]))
    assert words[0] == TOOL
    args = host_tool.load().argument_parser().parse_args(words[1:])
    assert args.action
    if "--run" in words:
        assert args.run == RUN
    if "--by" in words:
        assert args.by == BY


def test_the_parsed_lines_say_what_the_builders_were_given():
    parser = host_tool.load().argument_parser()

    def parsed(builder, *arguments):
        return parser.parse_args(shlex.split(builder(*arguments))[1:])

    take = parsed(host_tool.lock_take, TOOL, RUN, '{"user": "ana"}', 5, "old-run", True)
    assert (take.lock_action, take.holder, take.wait, take.break_run, take.force) == (
        "take", '{"user": "ana"}', 5, "old-run", True)
    activate = parsed(host_tool.activate, TOOL, "r1", "chain", "web 1", RUN, BY)
    assert (activate.release, activate.mode, activate.host_name) == ("r1", "chain", "web 1")
    assert parsed(host_tool.rollback, TOOL, "r0", "web1", RUN, BY).release == "r0"
    assert parsed(host_tool.rollback, TOOL, None, "web1", RUN, BY).release is None
    migrate = parsed(host_tool.migrate, *CALLS[host_tool.migrate])
    assert (migrate.release, migrate.command, migrate.hold, migrate.retry_after, migrate.host_name) == (
        "r1", ["flask db upgrade", "--odd 'x y'"], 20, 30, "web 1")
    status = parsed(host_tool.status, *CALLS[host_tool.status])
    assert (status.json, status.nginx, status.worker, status.timer) == (
        True, True, ["greeting-mailer@1.service"], ["greeting-report.timer"])
    run = parsed(host_tool.run_in_release, *CALLS[host_tool.run_in_release])
    assert [word for word in run.cmd if word != "--"] == ["flask init-db --force 'x y'"]
    ship = parsed(host_tool.ship, *CALLS[host_tool.ship])
    assert (ship.release, ship.upload, ship.sha256, ship.before, ship.canary, ship.activate, ship.prune,
            ship.host_name) == ("r1", "/home/deploy/.pyinfra-flask-uploads/release-ab.tar", "0" * 64,
                                ["flask init-db --force 'x y'", "--odd"], True, "graceful", True, "web 1")
    bare = parsed(host_tool.ship, TOOL, "r1", "/tmp/u.tar", "0" * 64, [], False, None, False, "web1", RUN, BY)
    assert (bare.before, bare.canary, bare.activate, bare.prune) == ([], False, None, False)
    audit = parsed(host_tool.audit, TOOL, False, 0)
    assert (audit.json, audit.n) == (False, 0)


def test_the_shell_wrapped_lines_run_only_where_the_tool_is_installed(tmp_path):
    missing = str(tmp_path / "bin/release-tool")
    command = host_tool.if_installed(missing, host_tool.listing(missing))
    assert subprocess.run(["sh", "-c", command], capture_output=True, text=True).returncode == 0


# The one file ----------------------------------------------------------------------

def test_the_zipapp_is_the_same_bytes_for_the_same_source():
    first = host_tool.build()
    host_tool.build.cache_clear()
    assert host_tool.build() == first
    assert host_tool.upload().read() == first
    assert first.startswith(b"#!/usr/bin/env python3\n")


def test_the_zipapp_holds_the_package_and_its_entry_with_fixed_times_and_modes():
    archive = zipfile.ZipFile(io.BytesIO(host_tool.build()))
    names = archive.namelist()
    assert names[0] == "__main__.py"
    assert names[1:] == [f"release_tool/{name}" for name in host_tool.sources()]
    assert {f"release_tool/{name}.py" for name in host_tool.MODULES} | {"release_tool/__init__.py"} == set(names[1:])
    for info in archive.infolist():
        assert info.date_time == host_tool.EPOCH and (info.external_attr >> 16) & 0o777 == 0o644
        assert info.compress_type == zipfile.ZIP_STORED
    for name in names[1:]:
        assert archive.read(name) == (host_tool.SOURCE / name.partition("/")[2]).read_bytes()


def test_the_zipapp_runs_isolated_and_finds_its_app_root(tmp_path):
    """As the host runs it (its shebang, or python3 -I -S): its own package only, the
    app root it is installed in."""
    root = tmp_path / "greeting"
    (root / "bin").mkdir(parents=True)
    tool = root / "bin/release-tool"
    tool.write_bytes(host_tool.build())
    tool.chmod(0o750)
    (root / "release-tool.json").write_text(json.dumps({"app": "greeting"}))
    # A release_tool on the caller's path is never imported instead of its own.
    decoy = tmp_path / "decoy/release_tool"
    decoy.mkdir(parents=True)
    (decoy / "__init__.py").write_text("raise SystemExit('the wrong release_tool')\n")
    (decoy / "cli.py").write_text("raise SystemExit('the wrong release_tool')\n")
    env = {**os.environ, "PYTHONPATH": str(decoy.parent)}
    for argv in ([str(tool), "list"], [sys.executable, "-I", "-S", str(tool), "list"]):
        done = subprocess.run(argv, capture_output=True, text=True, cwd=decoy.parent, env=env)
        assert (done.returncode, done.stdout, done.stderr) == (0, "no releases yet\n", "")
    done = subprocess.run([sys.executable, "-I", "-S", str(tool), "lock", "nonsense"], capture_output=True, text=True)
    assert done.returncode == 2 and "invalid choice: 'nonsense'" in done.stderr


def test_a_command_imports_only_its_own_modules(tmp_path):
    """Every deploy's first round trip takes the lock with the tool, and a zipapp's
    modules are compiled from source on each run: `lock` loads three of them, not the
    tool's nineteen; every other command still finds its module."""
    root = tmp_path / "greeting"
    (root / "bin").mkdir(parents=True)
    tool = root / "bin/release-tool"
    tool.write_bytes(host_tool.build())
    (root / "release-tool.json").write_text(json.dumps({"app": "greeting"}))

    def imported(*argv: str) -> tuple[str, set[str]]:
        """What the command printed, and the tool's modules it had loaded at its exit."""
        script = ("import atexit, runpy, sys; atexit.register(lambda: print(*sorted(name for name in sys.modules "
                  "if name.startswith('release_tool.')), file=sys.stderr)); sys.argv = sys.argv[1:]; "
                  "runpy.run_path(sys.argv[0], run_name='__main__')")
        done = subprocess.run([sys.executable, "-I", "-S", "-c", script, str(tool), *argv],
                              capture_output=True, text=True)
        return done.stdout, set(done.stderr.split())

    assert imported("lock", "show") == (
        "LOCK free\n", {"release_tool.cli", "release_tool.base", "release_tool.lock", "release_tool.audit"})
    output, modules = imported("list")
    assert output == "no releases yet\n" and "release_tool.status" in modules and "release_tool.ship" not in modules
    # Every command the deploy sends has its handler where the table says.
    tool = host_tool.load()
    for module, function in tool.COMMANDS.values():
        assert callable(getattr(importlib.import_module(f"release_tool.{module}"), function))
    for builder in host_tool.BUILDERS:
        action = tool.argument_parser().parse_args(shlex.split(builder(*CALLS[builder]))[1:]).action
        assert action in tool.COMMANDS


def test_the_loader_gives_a_fresh_tool_whose_names_set_where_they_are_defined(tmp_path):
    one, two = host_tool.load(), host_tool.load()
    one.configure(tmp_path, {"app": "greeting"})
    assert one.CONFIG == {"app": "greeting"} and two.CONFIG == {}
    one.BY = "bo@ci"
    assert one.audit.__module__ == "release_tool.audit" and one.who()["user"] == "bo"
    with pytest.raises(AttributeError):
        _ = one.no_such_name


def test_no_other_module_writes_the_tools_path_or_command_lines():
    """tasks/tool.py is the one place that names bin/release-tool in code (docstrings
    and comments aside)."""
    from tasks import REPO_ROOT

    scripts = ("ops.py", "rollout.py", "rollback.py", "releases.py", "deploy.py")
    sources = [*(REPO_ROOT / "tasks").rglob("*.py"), *(REPO_ROOT / name for name in scripts)]
    found = []
    for source in sources:
        if source == REPO_ROOT / "tasks/tool.py":
            continue
        tree = ast.parse(source.read_text())
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef)) and node.body
                      and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
        found += [f"{source.relative_to(REPO_ROOT)}:{node.lineno}" for node in ast.walk(tree)
                  if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
                  and ("bin/release-tool" in node.value or "release-tool " in node.value)]
    assert found == []

"""The release bundle without a host: what never ships, the manifest, the --diff preview,
and the host-side reader (run here on a release directory laid out as on a host)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import shutil
import subprocess
import re
import shlex
import tarfile
from pathlib import Path
from unittest.mock import patch

import pytest
from pyinfra.api import DeployError

from dev.throwaway import PYINFRA, run_command
from tasks.steps import bundle as release_bundle, release_preview
from tasks.config.release_exclude import configured_secrets, secret_path
from tasks.steps.release_preview import Changes, compare, render, render_first, to_fetch
from tasks.config.checks import validate
from tasks.config.settings import SettingsError
from tests.conftest import REPO_ROOT

SECRET = "SECRET=do-not-ship-" + "a1b2c3d4"
PRIVATE_KEY = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----\n"
CERTIFICATE = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----\n"


def _bundle(source: Path, shared=("instance/",), never=frozenset()):
    return release_bundle._bundle(object(), source, tuple(shared), "requirements.txt", "loader\n", "/srv/greeting",
                           str(source), frozenset(never))


@pytest.fixture
def app(tmp_path) -> Path:
    """The example app with secrets lying about, as on a developer's laptop."""
    target = tmp_path / "app"
    shutil.copytree(REPO_ROOT / "files/greeting", target)
    for rel, text in {
        ".env": SECRET + "\n",
        ".env.example": "SECRET=change-me\n",
        ".env.production": SECRET + "\n",
        "production.env": SECRET + "\n",
        ".envrc": f"export {SECRET}\n",
        ".flaskenv": "FLASK_APP=wsgi\n",
        "instance/config.py": f"SECRET_KEY = {SECRET!r}\n",
        "certs/site.key": PRIVATE_KEY,
        "certs/site.crt": CERTIFICATE,
        "deploy/bundle.pem": CERTIFICATE + PRIVATE_KEY,
        "deploy/service-account.json": json.dumps({"private_key": PRIVATE_KEY}),
        "deploy/id_ed25519": "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk\n-----END OPENSSH PRIVATE KEY-----\n",
        "pkg/.netrc": "machine example.com password hunter2\n",
        "tools/.env/bin/activate": "# a virtualenv called .env\n",
        "config/prod.vars": SECRET + "\n",
        "__pycache__/greeting.cpython-311.pyc": "clutter",
    }.items():
        path = target / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return target


def _members(bundle) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(bundle.tar)) as tar:
        return {member.name: member for member in tar}


def test_secrets_never_go_into_the_bundle(app):
    bundle = _bundle(app, never={"config/prod.vars"})
    names = set(_members(bundle))
    assert b"do-not-ship" not in bundle.tar and b"PRIVATE KEY" not in bundle.tar and b"hunter2" not in bundle.tar
    assert names >= {"greeting.py", "wsgi.py", ".flaskenv", "certs/site.crt", ".deploy-release.json"}
    for rel in (".env", ".env.example", ".env.production", "production.env", ".envrc", "instance/config.py",
                "certs/site.key", "deploy/bundle.pem", "deploy/service-account.json", "deploy/id_ed25519",
                "pkg/.netrc", "tools/.env/bin/activate", "config/prod.vars"):
        assert rel not in names and rel not in bundle.files, rel
    # The shared path is a link into shared/, as before; clutter is gone without a word.
    assert names >= {"instance"} and _members(bundle)["instance"].issym()
    assert not any("__pycache__" in name for name in names)
    assert bundle.left_out == ("instance/", ".env", ".env.example", ".env.production", ".envrc",
                               "production.env", "certs/site.key", "config/prod.vars", "deploy/bundle.pem",
                               "deploy/id_ed25519", "deploy/service-account.json", "pkg/.netrc", "tools/.env/")


def test_what_was_left_out_is_named_on_one_line_without_contents(app, caplog):
    with caplog.at_level("WARNING", logger="pyinfra"):
        _bundle(app)
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 1 and "Not uploaded from" in lines[0]
    assert ".env" in lines[0] and "certs/site.key" in lines[0] and "instance/" in lines[0]
    assert "do-not-ship" not in lines[0] and "PRIVATE KEY" not in lines[0]


def test_a_clean_app_leaves_nothing_out_and_says_nothing(caplog):
    with caplog.at_level("WARNING", logger="pyinfra"):
        bundle = _bundle(REPO_ROOT / "files/greeting")
    assert bundle.left_out == () and caplog.records == []


def test_configured_env_file_and_tls_key_inside_the_app_stay_home(app, tmp_path):
    (app / "secrets").mkdir()
    (app / "secrets/app-environment").write_text(SECRET + "\n")
    (app / "tls").mkdir()
    (app / "tls/server-key.txt").write_text("not PEM, but the configured key\n")
    (app / "tls/server.crt").write_text(CERTIFICATE)
    outside = tmp_path / "outside.vars"
    outside.write_text(SECRET + "\n")
    s = validate({"app_source": str(app), "app_env_file": str(app / "secrets/app-environment"),
                  "tls_certificate": str(app / "tls/server.crt"),
                  "tls_certificate_key": str(app / "tls/server-key.txt")})
    assert configured_secrets(s) == {"secrets/app-environment", "tls/server-key.txt"}
    bundle = _bundle(app, never=configured_secrets(s))
    assert "tls/server-key.txt" not in bundle.files and "secrets/app-environment" not in bundle.files
    assert "tls/server.crt" in bundle.files
    assert configured_secrets(validate({"app_env_file": str(outside)})) == frozenset()


@pytest.mark.parametrize(("rel", "secret"), [
    (".env", True), ("sub/.ENV", True), (".env.example", True), ("conf/prod.env", True), ("a.key", True),
    ("keys/store.p12", True), ("instance/x.cfg", True), ("sub/instance/x.cfg", False), ("environment.py", False),
    (".flaskenv", False), ("static/app.js", False), ("envs.py", False), ("docs/key.md", False),
])
def test_secret_names(rel, secret):
    assert secret_path(rel) is secret


def test_manifest_in_the_metadata_matches_the_tarball(app):
    bundle = _bundle(app)
    with tarfile.open(fileobj=io.BytesIO(bundle.tar)) as tar:
        meta = json.loads(tar.extractfile(".deploy-release.json").read())
        regular = {m.name: m for m in tar if m.isfile() and m.name != ".deploy-release.json"}
        data = {name: tar.extractfile(member).read() for name, member in regular.items()}
    assert meta["files"] == bundle.files and set(bundle.files) == set(regular)
    import hashlib
    for name, member in regular.items():
        assert bundle.files[name] == {"sha256": hashlib.sha256(data[name]).hexdigest(),
                                      "mode": f"{member.mode:o}", "size": member.size}
    assert meta["shared"] == ["instance"] and bundle.contents(["wsgi.py"]) == {"wsgi.py": data["wsgi.py"]}


def test_content_hash_is_what_it_was_before_the_manifest():
    """Releases made before this change must not be replaced by an identical one."""
    import hashlib
    source = REPO_ROOT / "files/greeting"
    digest = hashlib.sha256()
    for path in sorted(p for p in source.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        rel = str(path.relative_to(source))
        digest.update(f"{rel}\0{path.stat().st_mode & 0o111}\0".encode() + path.read_bytes() + b"\0")
    venv = hashlib.sha256((source / "requirements.txt").read_bytes()).hexdigest()[:16]
    digest.update(b"loader\n" + b"\0" + venv.encode() + b"\0" + b"instance/")
    assert _bundle(source).content_hash == digest.hexdigest()


# The preview ------------------------------------------------------------------

def entry(data: bytes, mode: str = "640") -> dict:
    import hashlib
    return {"sha256": hashlib.sha256(data).hexdigest(), "mode": mode, "size": len(data)}


LIVE = {
    "greeting.py": b'import flask\n\nGREETING = "Hello"\n\n\ndef index():\n    return GREETING\n',
    "old.py": b"print('old')\n",
    "run.sh": b"#!/bin/sh\n",
    "static/logo.png": b"\x89PNG\r\n\x1a\n\0\0\0old",
}
NEW = {
    "greeting.py": b'import flask\n\nGREETING = "Hello, world"\n\n\ndef index():\n    return GREETING\n',
    "extra.py": b"def helper():\n    return 42\n",
    "run.sh": b"#!/bin/sh\n",
    "static/logo.png": b"\x89PNG\r\n\x1a\n\0\0\0new!",
    "static/new.png": b"\x89PNG\r\n\x1a\n\0\0\0",
}


def preview(live=LIVE, new=NEW, live_modes=None, new_modes=None, live_data=None):
    live_files = {p: entry(d, (live_modes or {}).get(p, "640")) for p, d in live.items()}
    new_files = {p: entry(d, (new_modes or {}).get(p, "640")) for p, d in new.items()}
    changes = compare(live_files, new_files)
    new_data = {p: new[p] for p in changes.changed + changes.added}
    fetch = to_fetch(changes, live_files, new_data)
    if live_data is None:
        live_data = {p: live[p] for p in fetch}
    return changes, fetch, render(changes, "R2", "R1", new_files, live_files, new_data, live_data)


def test_compare_lists_added_removed_changed_and_mode_changes():
    changes, _, _ = preview(live_modes={"run.sh": "640"}, new_modes={"run.sh": "750"})
    assert changes == Changes(added=["extra.py", "static/new.png"], removed=["old.py"],
                              changed=["greeting.py", "static/logo.png"], modes={"run.sh": ("640", "750")})


def test_preview_is_a_unified_diff_of_the_changed_text_files():
    changes, fetch, lines = preview(live_modes={"run.sh": "640"}, new_modes={"run.sh": "750"})
    assert fetch == ["greeting.py"], "only changed text files are read from the host"
    text = "\n".join(lines)
    assert lines[0] == "Release R2 would replace the live R1: 2 changed, 2 added, 1 removed file(s)"
    assert "  changed  greeting.py" in lines and "  removed  old.py" in lines and "  mode     run.sh (640 -> 750)" in lines
    assert "  changed  static/logo.png (binary, 15 B)" in lines and "  added    static/new.png (binary, 11 B)" in lines
    assert "  added    extra.py (2 lines)" in lines
    hunk = text[text.index("--- a/greeting.py"):]
    assert hunk.splitlines()[:4] == ["--- a/greeting.py", "+++ b/greeting.py", "@@ -1,6 +1,6 @@", " import flask"]
    assert '-GREETING = "Hello"' in hunk and '+GREETING = "Hello, world"' in hunk
    assert "+++ b/extra.py" in text and "+    return 42" in text
    assert "\0" not in text and "PNG" not in text


def test_preview_never_shows_secrets_or_control_characters():
    live = {"config.py": PRIVATE_KEY.encode(), "notes.txt": b"plain\n", ".env": b"SECRET=x\n"}
    new = {"config.py": b"KEY = None\n", "notes.txt": b"plain \x1b[2Jcleared\r\n"}
    _, fetch, lines = preview(live, new)
    text = "\n".join(lines)
    assert "PRIVATE KEY" not in text and "SECRET=x" not in text
    assert "  changed  config.py (the host's copy holds a private key: not shown)" in lines
    assert "  removed  .env" in lines  # a release made before .env files stayed home: named only
    assert "\x1b" not in text and "\r" not in text and "+plain \\x1b[2Jcleared" in text


def test_large_and_unread_files_are_named_not_shown():
    big = b"x = 1\n" * 60000
    _, fetch, lines = preview({"big.py": b"x = 0\n", "other.py": b"a\n"}, {"big.py": big, "other.py": b"b\n"},
                              live_data={})
    assert fetch == ["other.py"]
    assert "  changed  big.py (larger than 256.0 KiB: not shown)" in lines
    assert "  changed  other.py (the host's copy was not read)" in lines
    long_file = b"line\n" * 500
    _, _, lines = preview({}, {"long.py": long_file})
    assert lines[1:] == ["  added    long.py (500 lines: not shown)"]


def test_nothing_but_links_changed():
    _, _, lines = preview({"a.py": b"a\n"}, {"a.py": b"a\n"})
    assert lines[1:] == ["  no file differs (the release's links or venv do)"]


def test_first_release_lists_a_few_files_not_their_content():
    files = {f"pkg/module{i:03}.py": entry(b"x\n") for i in range(100)}
    lines = render_first("R1", files)
    assert lines[0] == "Release R1 would be the first on this host: 100 file(s)"
    assert lines[1] == "  added    pkg/module000.py" and lines[-1] == "  ... and 60 more"
    assert len(lines) == 2 + release_preview.MAX_LISTED


# The host side: the reader run on a release laid out as the deploy leaves it ----------

def host_fact(fact, **kwargs):
    command = fact().command(**kwargs)
    out = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True)
    return fact().process(out.stdout.splitlines())


@pytest.fixture
def app_root(tmp_path, app) -> Path:
    root = tmp_path / "srv"
    (root / "releases").mkdir(parents=True)
    (root / "shared/instance").mkdir(parents=True)
    (root / "shared/instance/notes.txt").write_text("app data\n")
    bundle = _bundle(app)
    target = root / "releases" / "R1"
    target.mkdir()
    with tarfile.open(fileobj=io.BytesIO(bundle.tar)) as tar:
        tar.extractall(target)
    os.unlink(target / "instance")
    os.symlink(root / "shared/instance", target / "instance")
    os.symlink("releases/R1", root / "current")
    return root


def test_host_reader_returns_the_live_manifest(app_root):
    live = host_fact(release_preview.LiveReleaseFiles, app_root=str(app_root))
    meta = json.loads((app_root / "releases/R1/.deploy-release.json").read_text())
    assert live == {"id": "R1", "files": meta["files"], "shared": ["instance"], "computed": False}


def test_host_reader_computes_the_manifest_of_an_older_release(app_root):
    meta_path = app_root / "releases/R1/.deploy-release.json"
    meta = json.loads(meta_path.read_text())
    recorded = meta.pop("files")
    meta_path.write_text(json.dumps(meta))
    live = host_fact(release_preview.LiveReleaseFiles, app_root=str(app_root))
    assert live["computed"] is True
    # The same list (modes as unpacked here), and nothing behind the links into shared/.
    assert {p: e["sha256"] for p, e in live["files"].items()} == {p: e["sha256"] for p, e in recorded.items()}
    assert not any(path.startswith("instance") for path in live["files"])


def test_host_reader_reads_only_regular_files_and_never_follows_links(app_root, tmp_path):
    top = app_root / "releases/R1"
    (tmp_path / "elsewhere").write_text("root's secret\n")
    os.symlink(tmp_path / "elsewhere", top / "linked.py")
    contents = host_fact(release_preview.ReleaseFileContents, app_root=str(app_root), release="R1",
                         paths=("greeting.py", "linked.py", "instance/notes.txt", "../current/wsgi.py", "nope.py"))
    assert contents == {"greeting.py": (top / "greeting.py").read_bytes(), "linked.py": None,
                        "instance/notes.txt": None, "../current/wsgi.py": None, "nope.py": None}


def test_host_reader_without_a_live_release(tmp_path):
    assert host_fact(release_preview.LiveReleaseFiles, app_root=str(tmp_path)) is None
    os.symlink("/etc", tmp_path / "current")
    assert "error" in host_fact(release_preview.LiveReleaseFiles, app_root=str(tmp_path))


# The operation, through pyinfra's API on its @fake connector (tests/roles/test_distros.py) --

def test_upload_goes_by_the_private_directory_and_diff_shows_the_preview(caplog):
    from pyinfra.api import Config
    from pyinfra.api.command import FileUploadCommand

    from tasks.steps.uploads import LoginUser
    from tests.roles import test_distros

    source = REPO_ROOT / "files/greeting"
    bundle = release_bundle._bundle(object(), source, ("instance/",), "requirements.txt", release_bundle._loader(validate({})),
                             "/srv/greeting", "files/greeting")
    old = bundle.contents(["greeting.py"])["greeting.py"].replace(b"GREETING = ", b"GREETING = 'before' or ")
    live_files = {**bundle.files, "greeting.py": entry(old), "gone.py": entry(b"x\n")}
    facts = test_distros.host_facts(
        "debian12",
        SshUser=LoginUser("deploy", "/home/deploy"),
        LiveRelease={"id": "R1", "content_hash": "older"},
        LiveReleaseFiles={"id": "R1", "files": live_files, "shared": ["instance"], "computed": False},
        ReleaseFileContents=lambda **kwargs: {"greeting.py": old} if kwargs["paths"] == ("greeting.py",) else {},
    )
    shown = test_distros._text

    def text(command):
        if isinstance(command, FileUploadCommand):
            return f"upload {command.dest} via {command.remote_temp_filename}"
        return shown(command)

    with patch.object(test_distros, "_text", text), patch.object(test_distros, "Config", lambda: Config(DIFF=True)), \
            caplog.at_level("INFO", logger="pyinfra"):
        run = test_distros.deploy({"debian12": facts}, host_data={"debian12": {"_sudo": True}})["debian12"]
    (name, commands), = ((n, c) for n, c in run.changed.items() if n.startswith("Release activation | Ship release"))
    upload, ship = commands
    dest = upload.split()[1]
    # As the SSH user into its private directory (no sudo `cp`), then one command as root.
    assert re.fullmatch(r"upload /home/deploy/\.pyinfra-flask-uploads/release-greeting-[0-9a-f]{32}\.tar via None", upload), upload
    words = shlex.split(ship)
    assert words[0] == "/srv/greeting/bin/release-tool" and f"Ship release {words[words.index('ship') + 1]} " in name
    assert words[words.index("--upload") + 1] == dest
    assert re.fullmatch(r"[0-9a-f]{64}", words[words.index("--sha256") + 1])
    assert "--canary" in words and "--activate" in words and "--prune" in words
    log = "\n".join(record.getMessage() for record in caplog.records)
    assert "would replace the live R1: 1 changed, 0 added, 1 removed file(s)" in log
    assert "-GREETING = 'before' or " in log and "removed  gone.py" in log
    assert "ustar" not in log and "\0" not in log
    # Printed once, while pyinfra works out the changes; not again when it executes.
    assert log.count("would replace the live R1") == 1


# Links and special files in app_source (issue 24): never followed, never shipped --------

@pytest.fixture
def home(tmp_path) -> Path:
    """A stand-in for the laptop user's home, with a credentials file."""
    target = tmp_path / "home"
    (target / ".aws").mkdir(parents=True)
    (target / ".aws/credentials").write_text("aws_secret_access_key = do-not-ship-home\n")
    return target


@contextlib.contextmanager
def never_blocks(seconds: int = 10):
    """Fails the test, instead of hanging it, if the laptop opens a FIFO for reading."""
    def blocked(*_):
        raise AssertionError(f"blocked for {seconds}s: a FIFO was opened")
    previous = signal.signal(signal.SIGALRM, blocked)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _plant(app: Path, home: Path, case: str) -> str:
    """Plant one hostile entry in the app; the problem line expected for it."""
    if case == "relative link out of the tree":  # to the .env the README says never leaves
        (app / "static/about.txt").symlink_to("../.env")
        return "app_source: static/about.txt is a symbolic link (to ../.env) in "
    if case == "absolute link to a file in home":
        (app / "static/credentials.txt").symlink_to(home / ".aws/credentials")
        return f"app_source: static/credentials.txt is a symbolic link (to {home}/.aws/credentials) in "
    if case == "directory link":
        shutil.rmtree(app / "static")
        (app / "static").symlink_to(home)
        return f"app_source: static is a symbolic link (to {home}) in "
    if case == "FIFO":
        os.mkfifo(app / "static/feed.txt")
        return "app_source: static/feed.txt is a FIFO in "
    if case == "FIFO named like a module":  # the static folder's search reads *.py
        os.mkfifo(app / "tasks.py")
        return "app_source: tasks.py is a FIFO in "
    raise AssertionError(case)


LINK_CASES = ["relative link out of the tree", "absolute link to a file in home", "directory link", "FIFO",
              "FIFO named like a module"]


@pytest.mark.parametrize("case", LINK_CASES)
def test_links_and_special_files_in_app_source_are_refused_before_any_host(app, home, case):
    expected = _plant(app, home, case)
    with never_blocks(), pytest.raises(SettingsError) as caught:
        validate({"app_source": str(app)}, where="settings for host 'web1'")
    lines = str(caught.value).splitlines()
    # The settings check: raised before any operation is added, one line for the app_source.
    assert lines[0] == "Invalid settings for host 'web1'; nothing was changed on any host:"
    assert len(lines) == 2 and lines[1].startswith("  - " + expected), lines
    assert "links and special files are never shipped" in lines[1]
    assert "do-not-ship" not in str(caught.value)


@pytest.mark.parametrize("case", LINK_CASES)
def test_the_bundle_never_follows_a_link_nor_opens_a_fifo(app, home, case):
    """Past the settings check (the tree changed since), the bundle refuses too."""
    expected = _plant(app, home, case)
    with never_blocks(), pytest.raises(DeployError) as caught:
        _bundle(app)
    assert str(caught.value).startswith(expected)


def test_what_never_ships_may_be_a_link_and_is_never_opened(app, home, tmp_path):
    """Local venvs, secrets by name and the configured env file may be links (or
    worse): left where they are, not followed, not opened, not refused."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    (app / "venv").symlink_to(home)
    (app / ".venv/bin").mkdir(parents=True)
    (app / ".venv/bin/python").symlink_to("/usr/bin/python3")
    (app / "node_modules").symlink_to(home)
    (app / ".env").unlink()
    (app / ".env").symlink_to(fifo)  # opened, it would block
    (app / ".envs").symlink_to(home)
    (app / "site.key").symlink_to(fifo)
    (app / "config/prod.vars").unlink()
    (app / "config/prod.vars").symlink_to(home / ".aws/credentials")
    with never_blocks():
        s = validate({"app_source": str(app), "app_env_file": str(app / "config/prod.vars")})
        bundle = _bundle(app, never=configured_secrets(s))
    assert configured_secrets(s) == {"config/prod.vars"}
    assert b"do-not-ship" not in bundle.tar
    assert {".env", ".envs", "site.key", "config/prod.vars"} <= set(bundle.left_out)
    assert not any(name.startswith(("venv", ".venv", "node_modules", ".envs")) for name in bundle.files)


def test_a_deploy_with_a_link_in_app_source_stops_in_one_line_touching_nothing(app, tmp_path, monkeypatch):
    """The real command line, at @local in dry mode: stopped while the settings are
    read, before any fact or operation, with the one line and no traceback."""
    (app / "static/about.txt").symlink_to("../.env")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # this machine's fact cache stays as it is
    inventory = tmp_path / "inventory.py"
    inventory.write_text(f'hosts = [("@local", {{"app_source": {str(app)!r}, "app_root": "/nonexistent/greeting"}})]\n')
    run = run_command([PYINFRA, str(inventory), "deploy.py", "--dry"], timeout=120)
    assert run.returncode != 0
    assert "  - app_source: static/about.txt is a symbolic link (to ../.env) in " in run.output, run.output[-3000:]
    assert "nothing was changed on any host" in run.output and "Traceback" not in run.output
    assert "do-not-ship" not in run.output and "Loading: deploy.py" in run.output
    assert not (tmp_path / "cache").exists()  # no fact was read: nothing to remember


def test_diff_with_yes_says_it_shows_nothing_once_per_run(caplog):
    """`pyinfra -y ... --dry --diff`: pyinfra skips change detection with -y, so no diff
    would print at all; the run says so once, at its start."""
    from pyinfra.api import Config, State

    def run(diff: bool, yes: bool):
        state = State(check_for_changes=not yes)
        state.config = Config(DIFF=diff)
        return state

    with caplog.at_level("WARNING", logger="pyinfra"):
        skipped = run(diff=True, yes=True)
        assert release_preview.warn_if_diff_is_skipped(skipped) is True
        assert release_preview.warn_if_diff_is_skipped(skipped) is False  # the next host of the run
        assert not any(release_preview.warn_if_diff_is_skipped(run(diff, yes))
                       for diff, yes in ((True, False), (False, True), (False, False)))
    assert [record.getMessage() for record in caplog.records] == [
        "--diff with -y shows no diff: pyinfra skips change detection with -y; run without -y (with --dry to "
        "change nothing) to see what would change"]


class _FlaskLike:
    """What the loader reads of a Flask app, with Flask's own cookie path rule
    (SessionInterface.get_cookie_path: SESSION_COOKIE_PATH, else APPLICATION_ROOT)."""

    def __init__(self, **config):
        self.config = {"SESSION_COOKIE_PATH": None, "APPLICATION_ROOT": "/", **config}

    def cookie_path(self):
        return self.config["SESSION_COOKIE_PATH"] or self.config["APPLICATION_ROOT"]


@pytest.mark.parametrize(("prefix", "config", "expected"), [
    ("/blog", {}, "/blog"),  # two apps on one host name keep their session cookies apart
    ("/", {}, "/"),
    ("/blog", {"SESSION_COOKIE_PATH": "/"}, "/"),  # the app's own choice stands
    ("/blog", {"APPLICATION_ROOT": "/b"}, "/b"),
])
def test_the_loader_keeps_the_session_cookie_under_the_apps_prefix(tmp_path, prefix, config, expected):
    s = validate({"app_name": "blog", "app_source": "tests/apps/blog", "app_entry": "blog:app", "url_prefix": prefix})
    (tmp_path / "blog.py").write_text(f"from tests.steps.test_bundle import _FlaskLike\napp = _FlaskLike(**{config!r})\n")
    loader = tmp_path / release_bundle.LOADER
    loader.write_text(release_bundle._loader(s))
    cwd = os.getcwd()
    try:
        namespace = {"__file__": str(loader), "__name__": "loader"}
        exec(compile(loader.read_text(), str(loader), "exec"), namespace)
    finally:
        os.chdir(cwd)
        import sys
        sys.modules.pop("blog", None)
        sys.path.remove(str(tmp_path))
    assert namespace["application"].cookie_path() == expected

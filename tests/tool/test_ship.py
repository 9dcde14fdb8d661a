"""`release-tool ship` (files/release_tool/ship.py) on a temporary root, for real: the
tarball's hash is checked before anything is unpacked, the steps run in the deploy's
order with their own messages, and uploads are removed. Host-less: the sandboxed
steps themselves (systemd-run) are replaced by recorders; tests/hosts/test_releases.py
runs them on real hosts."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile

import pytest

from tasks import REPO_ROOT
from tasks import tool as host_tool


@pytest.fixture
def root(tmp_path):
    top = tmp_path / "srv"
    (top / "releases").mkdir(parents=True)
    (top / "venvs").mkdir()
    (top / "release-tool.json").write_text(json.dumps({
        "app": "greeting", "user": "daemon", "keep_releases": 2, "service": "greeting.service",
        "requirements": "requirements.txt", "message_queue": False, "workers": [],
    }))
    return top


@pytest.fixture
def tool():
    return host_tool.load()


def tarball(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


RELEASE = "20261206T200000Z-abcd"
CODE = {".deploy-release.json": json.dumps({"id": RELEASE, "venv": "v1"}).encode(), "app.py": b"print('hi')\n"}


def upload(tmp_path, data: bytes):
    private = tmp_path / "home/deploy/.pyinfra-flask-uploads"
    private.mkdir(parents=True, exist_ok=True)
    path = private / "release-greeting-0123abcd.tar"
    path.write_bytes(data)
    return path


def audit(root) -> list[dict]:
    path = root / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_tampered_tarball_is_never_unpacked(tool, root, tmp_path, capsys):
    sent = tarball(CODE)
    path = upload(tmp_path, tarball({**CODE, "app.py": b"import os; os.system('evil')\n"}))
    code = tool.main(["--run", "run-1", "ship", RELEASE, "--upload", str(path),
                      "--sha256", hashlib.sha256(sent).hexdigest(), "--canary", "--activate", "auto"], root=root)
    assert code == 1
    err = capsys.readouterr().err
    assert f"release {RELEASE}: the uploaded tarball's sha256 is " in err
    assert "refused, nothing was unpacked; the live release was left alone" in err
    # Nothing unpacked, no copy kept, the upload gone.
    assert os.listdir(root / "releases") == [] and not path.exists()
    [entry] = audit(root)
    assert (entry["event"], entry["result"], entry["stage"], entry["to"]) == ("deploy", "failed", "upload", RELEASE)


def test_a_link_or_a_missing_upload_is_refused(tool, root, tmp_path, capsys):
    secret = tmp_path / "root-only"
    secret.write_bytes(tarball(CODE))
    link = tmp_path / "release-link.tar"
    link.symlink_to(secret)
    for given in (link, tmp_path / "release-missing.tar"):
        code = tool.main(["ship", RELEASE, "--upload", str(given), "--sha256",
                          hashlib.sha256(secret.read_bytes()).hexdigest()], root=root)
        assert code == 1 and "cannot be read" in capsys.readouterr().err
    assert os.listdir(root / "releases") == [] and secret.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="unpacking gives the files to root and the app user's group")
def test_the_steps_run_in_the_deploys_order_then_the_switch_and_prune(tool, root, tmp_path, monkeypatch):
    done = []
    monkeypatch.setattr(tool, "cmd_build_venv", lambda args: done.append("build-venv"))
    monkeypatch.setattr(tool, "cmd_check", lambda args: done.append("check"))
    monkeypatch.setattr(tool, "cmd_run", lambda args: done.append(("run", args.cmd)))
    monkeypatch.setattr(tool, "cmd_canary", lambda args: done.append("canary"))
    monkeypatch.setattr(tool, "cmd_prune", lambda args: done.append("prune"))
    monkeypatch.setattr(tool, "activate", lambda target, mode, host_name, kind, run: done.append(
        ("activate", target, mode, host_name, kind, run)))
    data = tarball(CODE)
    path = upload(tmp_path, data)
    stale = path.with_name("release-greeting-cut-off.tar")  # a run of this app killed after its upload
    stale.write_bytes(b"cut off")
    other = path.with_name("release-blog-under-way.tar")  # another app's run, under way
    other.write_bytes(b"")
    code = tool.main(["--host-name", "web1", "--run", "run-1", "ship", RELEASE, "--upload", str(path),
                      "--sha256", hashlib.sha256(data).hexdigest(), "--before=flask init-db", "--before=true",
                      "--canary", "--activate", "graceful", "--prune"], root=root)
    assert code == 0
    assert done == ["build-venv", "check", ("run", ["flask init-db"]), ("run", ["true"]), "canary",
                    ("activate", RELEASE, "graceful", "web1", "deploy", "run-1"), "prune"]
    unpacked = root / "releases" / RELEASE
    assert (unpacked / "app.py").read_bytes() == CODE["app.py"]
    assert os.stat(unpacked / "app.py").st_uid == 0 and oct(os.stat(unpacked).st_mode & 0o777) == "0o750"
    assert sorted(os.listdir(root / "releases")) == [RELEASE]  # no copy of the tarball left
    assert not path.exists() and not stale.exists() and other.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="unpacking gives the files to root and the app user's group")
def test_a_failing_check_stops_before_the_switch_with_its_own_message(tool, root, tmp_path, monkeypatch, capsys):
    done = []

    def check(args):
        raise tool.Failure(f"release {args.release} failed its check before the switch: the app does not import")

    monkeypatch.setattr(tool, "cmd_build_venv", lambda args: done.append("build-venv"))
    monkeypatch.setattr(tool, "check_and_canary", lambda release: (1, 1))
    monkeypatch.setattr(tool, "cmd_check", lambda args, code: check(args))
    monkeypatch.setattr(tool, "activate", lambda *args, **kwargs: done.append("activate"))
    data = tarball(CODE)
    code = tool.main(["ship", RELEASE, "--upload", str(upload(tmp_path, data)), "--sha256",
                      hashlib.sha256(data).hexdigest(), "--canary", "--activate", "auto"], root=root)
    assert code == 1 and done == ["build-venv"]
    assert "failed its check before the switch: the app does not import" in capsys.readouterr().err
    [entry] = audit(root)
    assert (entry["result"], entry["stage"]) == ("failed", "check")


@pytest.mark.skipif(os.geteuid() != 0, reason="unpacking gives the files to root and the app user's group")
@pytest.mark.parametrize("ended, stage, message", [
    ("with 1", "check", "the app does not import (output above)"),
    ("call failed", "canary", "the app does not answer its health path as expected"),
    ("with 0", None, None),
])
def test_with_no_command_between_them_the_check_and_the_canary_share_one_start(
        tool, root, tmp_path, monkeypatch, capsys, ended, stage, message):
    """One sandboxed run for both (how the canary script ends: `ended`), each judged
    with its own message and stage."""
    runs, done = [], []
    code = tool.CALL_FAILED if ended == "call failed" else int(ended[-1])
    monkeypatch.setattr(tool, "cmd_build_venv", lambda args: done.append("build-venv"))
    monkeypatch.setattr(tool, "_canary", lambda release, what: runs.append(what) or code)
    monkeypatch.setattr(tool, "discard", lambda release: done.append("discarded"))
    monkeypatch.setattr(tool, "activate", lambda *args, **kwargs: done.append("activate"))
    data = tarball(CODE)
    exit_code = tool.main(["ship", RELEASE, "--upload", str(upload(tmp_path, data)), "--sha256",
                           hashlib.sha256(data).hexdigest(), "--canary", "--activate", "auto"], root=root)
    assert runs == ["both"]
    printed = capsys.readouterr()
    output = printed.out + printed.err
    if stage is None:
        assert exit_code == 0 and done == ["build-venv", "activate"]
        assert f"release {RELEASE}: the app imports" in output and "the app answers its health check" in output
        return
    assert exit_code == 1 and done == ["build-venv", "discarded"]
    assert message in printed.err
    [entry] = audit(root)
    assert (entry["result"], entry["stage"]) == ("failed", stage)
    # A canary that fails comes after a check that passed, as when they run apart.
    assert (f"release {RELEASE}: the app imports" in output) == (stage == "canary")


APP = """
def application(environ, start_response):
    if BROKEN == "raises":
        raise RuntimeError("the health path blew up")
    start_response("500 Internal Server Error" if BROKEN == "500" else "200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
"""


@pytest.mark.parametrize("what, app, exit_code, said", [
    ("both", "fine", 0, "canary: GET / answered 200"),
    ("both", "import", 1, "No module named 'no_such_module'"),
    ("both", "500", "call failed", "GET / answered 500, expected 200"),
    ("both", "raises", "call failed", "RuntimeError: the health path blew up"),
    ("import", "500", 0, "the app imports"),
    ("call", "500", "call failed", "GET / answered 500, expected 200"),
])
def test_the_canary_script_tells_a_failed_import_from_a_failed_call(tool, tmp_path, what, app, exit_code, said):
    """The script the check and the canary run (under uWSGI on the hosts: tests/hosts),
    here with this Python: how it ends is how ship tells the two apart."""
    loader = tmp_path / "loader.py"
    loader.write_text("import no_such_module\n" if app == "import" else f"BROKEN = {app!r}\n{APP}")
    script = tmp_path / "canary.py"
    script.write_text(tool.CANARY)
    check = {"path": "/", "status": 200, "body": "", "host_header": "greeting.test"}
    arguments = [str(loader), check, what, str(REPO_ROOT / "files/healthcheck.py"), False, tool.CALL_FAILED]
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          env={**os.environ, "DEPLOY_CANARY": json.dumps(arguments)})
    assert done.returncode == (tool.CALL_FAILED if exit_code == "call failed" else exit_code), done.stderr
    assert said in done.stdout + done.stderr

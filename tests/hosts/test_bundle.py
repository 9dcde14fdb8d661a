"""The release bundle on real hosts: secrets in the app's directory stay on the laptop,
and `--dry --diff` shows the code change, never the tarball."""

from __future__ import annotations

import os
import re

import pytest

from tests.conftest import app_variant, get, run_deploy
from tests.hosts.test_deploy import GREETING

pytestmark = pytest.mark.releases

ROOT = "/srv/greeting"
# Where a copy of an uploaded file could linger on the host.
PLACES = f"{ROOT} /tmp /var/tmp /home /root"


def prepared(output: str) -> str:
    """What pyinfra printed while it worked out the changes (where the preview is)."""
    return output[output.find("--> Preparing operation"):output.find("--> Detected changes")][-4000:]


def live_release(host) -> str:
    return host.exec(f"readlink {ROOT}/current").strip().removeprefix("releases/")


def release_dirs(host) -> list[str]:
    return host.exec(f"ls -a {ROOT}/releases").split()


def test_secrets_in_the_app_directory_never_reach_the_host(fork, tmp_path):
    secret = "s3cret-" + os.urandom(8).hex()
    app = app_variant(tmp_path, greeting="secrets stayed home", append=(
        '\n@app.route("/secret-check")\ndef secret_check():\n'
        '    return str(len(os.environ.get("SECRET", "")))\n'))
    (app / ".env").write_text(f"SECRET={secret}\n")
    (app / "instance").mkdir()
    (app / "instance/config.py").write_text(f"SECRET_KEY = '{secret}-instance'\n")
    (app / "deploy").mkdir()
    (app / "deploy/site.key").write_text(f"-----BEGIN PRIVATE KEY-----\n{secret}\n-----END PRIVATE KEY-----\n")
    # The .env is also the app's environment, the way the README says: app_env_file.
    data = {"app_source": str(app), "app_env_file": str(app / ".env")}

    dry = run_deploy(fork, tmp_path, "--dry", "--diff", data=data)
    run = run_deploy(fork, tmp_path, data=data)
    for output in (dry.output, run.output):
        assert secret not in output
    assert fork.exec(f"find {ROOT}/releases -name .env -o -name site.key -o -path '*/instance/config.py'") == ""
    # The value is nowhere on the host but in the app's root-only environment file.
    found = fork.exec(f"grep -rlF {secret} {PLACES} 2>/dev/null || true").split()
    assert found == [f"{ROOT}/secrets/app.env"], found
    # And the app works, with its environment.
    assert get(fork.url + "/").text.strip() == "secrets stayed home"
    assert get(fork.url + "/secret-check").text == str(len(secret))

    # The user is told, in one line naming the files, what stayed home.
    for output in (dry.output, run.output):
        left_out = [line for line in output.splitlines() if "Not uploaded from" in line]
        assert len(left_out) == 1, output[-3000:]
        assert all(name in left_out[0] for name in (".env", "instance/", "deploy/site.key")), left_out
    print("\n" + left_out[0])
    # The preview is of the code that ships: greeting.py changed, no secret file in it.
    assert "+GREETING = 'secrets stayed home'" in dry.output
    assert not re.search(r"added\s+(\.env|instance/|deploy/site\.key)", dry.output)


def test_dry_diff_shows_the_code_change_not_the_tarball(fork, tmp_path):
    before, dirs = live_release(fork), release_dirs(fork)
    app = app_variant(tmp_path, greeting="Hello from the preview!")
    (app / "extra.py").write_text("def helper():\n    return 'added in this release'\n")
    (app / "static/style.css").unlink()
    (app / "static/logo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8)

    def preview() -> str:
        out = run_deploy(fork, tmp_path, "--dry", "--diff", data={"app_source": str(app)}).output
        assert "\0" not in out and "ustar" not in out and "\x89PNG" not in out
        # A unified diff hunk for greeting.py with the changed line, nothing of the files that did not change.
        hunk = out[out.index("--- a/greeting.py"):]
        assert re.match(r"--- a/greeting\.py\n\s*\+\+\+ b/greeting\.py\n\s*@@ -\d+,\d+ \+\d+,\d+ @@", hunk), hunk[:300]
        assert f'-GREETING = "{GREETING}"' in hunk and "+GREETING = 'Hello from the preview!'" in hunk
        assert "from greeting import app" not in out, "an unchanged file was dumped"
        assert re.search(r"changed\s+greeting\.py", out)
        assert re.search(r"added\s+extra\.py", out) and "+    return 'added in this release'" in out
        assert re.search(r"removed\s+static/style\.css", out)
        assert re.search(r"added\s+static/logo\.png \(binary, 2\.0 KiB\)", out)
        # Exactly those four: nothing unchanged shows up as changed (or as a mode change).
        assert re.search(r"1 changed, 2 added, 1 removed file\(s\)", out) and not re.search(r"^\s*mode\s", out, re.M)
        return out

    out = preview()
    print("\n" + prepared(out))
    # A release made before releases carried their file list: the list is computed on the host.
    fork.exec(f"python3 -c \"import json; p = '{ROOT}/current/.deploy-release.json'; m = json.load(open(p)); "
              f"m.pop('files'); json.dump(m, open(p, 'w'))\"")
    preview()

    # The host is as it was: same live release, no new release, no upload left behind.
    assert live_release(fork) == before and release_dirs(fork) == dirs
    assert fork.exec(f"find /home/deploy /tmp -name '*.tar' -newer {ROOT}/current") == ""
    assert get(fork.url + "/").text.strip() == GREETING


def test_dry_diff_of_a_first_deploy_lists_the_files(bare_host, tmp_path):
    out = run_deploy(bare_host, tmp_path, "--dry", "--diff").output
    assert "\0" not in out and "ustar" not in out
    assert re.search(r"Release \S+ would be the first on this host: 5 file\(s\)", out), prepared(out)
    assert re.search(r"added\s+greeting\.py", out) and re.search(r"added\s+static/style\.css", out)
    assert "def index():" not in out, "a first deploy lists its files, it does not dump them"
    assert bare_host.exec(f"test -e {ROOT} || echo absent").strip() == "absent"

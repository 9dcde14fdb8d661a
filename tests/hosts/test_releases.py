"""Releases: zero-downtime redeploys, health-gated automatic rollback, shared data."""

from __future__ import annotations

import json
import re

import pytest

from tests.conftest import REPO_ROOT, Load, app_variant, get, run_deploy
from tests.hosts.test_deploy import GREETING

pytestmark = pytest.mark.releases

ROOT = "/srv/greeting"


def live_release(host) -> str:
    return host.exec(f"readlink {ROOT}/current").strip().removeprefix("releases/")


def release_dirs(host) -> list[str]:
    return host.exec(f"ls {ROOT}/releases").split()


def test_code_only_redeploy_under_load_drops_nothing(fork, tmp_path):
    before = live_release(fork)
    new_app = app_variant(tmp_path, greeting="Hello from release two!")
    with Load(fork.url + "/") as load:
        run_deploy(fork, tmp_path, data={"app_source": str(new_app)})
    print("\n" + load.report("code-only redeploy under load"))
    assert load.failures == [], load.report("redeploy")
    assert load.sent > 100
    # uWSGI replaced its workers one at a time (chain reload), never all at once.
    assert "chain next victim is worker" in fork.exec("journalctl -u greeting.service --no-pager")
    assert get(fork.url + "/").text.strip() == "Hello from release two!"
    # The old body was served up to the switch, the new one after it.
    assert GREETING[:40] in " ".join(load.bodies) and "Hello from release two!" in load.bodies
    after = live_release(fork)
    # The deploying machine's UTC time and the run's id (no git commit: not a repository).
    assert after != before and re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{6}", after), after
    # The switch was a rename over the link: `current` is a symlink, never a directory.
    assert fork.exec(f"stat -c %F {ROOT}/current").strip() == "symbolic link"


def test_release_id_carries_the_git_commit(deployed):
    release = live_release(deployed.host)
    meta = json.loads(deployed.host.exec(f"cat {ROOT}/current/.deploy-release.json"))
    assert meta["commit"] and f"-{meta['commit']}-" in release
    assert re.fullmatch(rf"\d{{8}}T\d{{6}}Z-{meta['commit']}-[0-9a-f]{{6}}", release), release


def test_release_that_fails_to_import_never_goes_live(fork, tmp_path):
    before = live_release(fork)
    broken = app_variant(tmp_path, greeting="never served", append="\nimport no_such_module_anywhere\n")
    with Load(fork.url + "/") as load:
        run = run_deploy(fork, tmp_path, data={"app_source": str(broken)}, check=False)
    print("\n" + load.report("broken release under load"))
    assert run.returncode != 0
    assert "ModuleNotFoundError: No module named 'no_such_module_anywhere'" in run.output
    assert load.failures == [] and load.sent > 20
    assert live_release(fork) == before
    assert release_dirs(fork) == [before], "the broken release is removed"
    assert get(fork.url + "/").text.strip() == GREETING


def test_release_failing_its_health_check_never_takes_traffic(fork, tmp_path):
    before = live_release(fork)
    failing = app_variant(
        tmp_path, greeting="answers 500",
        append='\n@app.before_request\ndef broken():\n    return "boom", 500\n',
    )
    with Load(fork.url + "/") as load:
        run = run_deploy(fork, tmp_path, data={"app_source": str(failing)}, check=False)
    assert run.returncode != 0
    # Called in-process before the switch, the new release answered 500: refused.
    assert "GET / answered 500, expected 200" in run.output, run.output[-4000:]
    # The import check and the canary ran in one start: this one failed as the canary.
    assert "the app does not answer its health path as expected" in run.output
    assert "the app imports (under uWSGI)" in run.output
    assert load.failures == [] and load.sent > 20
    assert live_release(fork) == before and release_dirs(fork) == [before]


def test_failed_health_gate_after_the_switch_switches_back(fork, tmp_path):
    before = live_release(fork)
    # Healthy when called directly, broken only when served by uWSGI: only the gate
    # after the switch (through nginx) can catch it.
    failing = app_variant(
        tmp_path, greeting="broken under uWSGI",
        append='\n@app.before_request\ndef broken():\n'
               '    if "uwsgi.version" in request.environ:\n        return "boom", 500\n',
    )
    run = run_deploy(fork, tmp_path, data={"app_source": str(failing)}, check=False)
    assert run.returncode != 0
    assert f"FAILED on host {fork.name}" in run.output, run.output[-4000:]
    assert "answered 500, expected 200" in run.output
    assert f"Rolled back: {before} is live and healthy again" in run.output
    assert live_release(fork) == before
    assert get(fork.url + "/").text.strip() == GREETING


def test_health_gate_body_check(fork, tmp_path):
    run = run_deploy(fork, tmp_path, check=False, data={
        "app_source": str(app_variant(tmp_path, greeting="Hello, but not the expected words")),
        "healthcheck_body": "served by uWSGI",
    })
    assert run.returncode != 0
    assert "without 'served by uWSGI' in the body" in run.output
    assert get(fork.url + "/").text.strip() == GREETING


def test_shared_data_dependencies_and_rollback(fork, tmp_path):
    first = live_release(fork)
    first_venv = fork.exec(f"readlink {ROOT}/current/.venv").strip()
    assert get(fork.url + "/notes").status_code == 200
    assert requests_post(fork.url + "/notes", "written under release one") == 201

    # Release two: new code and a new dependency.
    two = app_variant(
        tmp_path, greeting="Hello from release two!",
        append='\nimport six\n\n@app.route("/deps")\ndef deps():\n    return six.__version__\n',
        requirements="Flask==3.1.3\nsix==1.16.0\n",
    )
    run = run_deploy(fork, tmp_path, data={"app_source": str(two)})
    # Its new venv built in the one `ship` command, as the app user (the tool's own line).
    assert re.search(r"Ship release \S+ \(as greeting\): unpack, venv, ", run.output), run.output[-3000:]
    second = live_release(fork)
    assert second != first
    assert get(fork.url + "/deps").text == "1.16.0"
    assert fork.exec(f"readlink {ROOT}/current/.venv").strip() != first_venv
    # Data written under release one is there under release two.
    assert "written under release one" in get(fork.url + "/notes").text
    assert requests_post(fork.url + "/notes", "written under release two") == 201

    # Back to the previous release: its code and its dependencies, and all the data.
    run = run_deploy(fork, tmp_path, deploy="rollback.py")
    assert live_release(fork) == first
    assert get(fork.url + "/").text.strip() == GREETING
    assert get(fork.url + "/deps").status_code == 404
    assert fork.exec(f"readlink {ROOT}/current/.venv").strip() == first_venv
    assert fork.exec(f"{ROOT}/current/.venv/bin/python -c 'import six' 2>&1", check=False).count("No module")
    notes = get(fork.url + "/notes").text
    assert "written under release one" in notes and "written under release two" in notes

    # Forward again to a named release.
    run_deploy(fork, tmp_path, deploy="rollback.py", data={"rollback_to": second})
    assert live_release(fork) == second
    assert get(fork.url + "/deps").text == "1.16.0"

    listing = run_deploy(fork, tmp_path, "-y", deploy="releases.py").output
    assert re.search(rf"{second} .*\* live", listing), listing
    assert first in listing


def test_keep_n_prunes_old_releases_and_their_venvs(fork, tmp_path):
    live_before = live_release(fork)
    for number in range(3):
        app = app_variant(tmp_path, greeting=f"release {number}",
                          requirements=f"Flask==3.1.3\n# variant {number}\n")
        run_deploy(fork, tmp_path, data={"app_source": str(app), "keep_releases": 2})
    releases = release_dirs(fork)
    assert len(releases) == 2 and live_before not in releases
    assert live_release(fork) == releases[-1]
    venvs = fork.exec(f"ls {ROOT}/venvs").split()
    assert len(venvs) == 2, venvs
    assert get(fork.url + "/").text.strip() == "release 2"


def test_before_switch_commands_run_in_the_new_release_as_the_app_user(fork, tmp_path):
    app = app_variant(tmp_path, greeting="migrated")
    command = "python -c \"import getpass, os; open('instance/migrated', 'w').write(getpass.getuser() + ' ' + os.getcwd())\""
    run_deploy(fork, tmp_path, data={"app_source": str(app), "before_switch_commands": [command]})
    release = live_release(fork)
    assert fork.exec(f"cat {ROOT}/shared/instance/migrated") == f"greeting {ROOT}/releases/{release}"


def test_before_switch_failure_leaves_the_live_release_untouched(fork, tmp_path):
    before = live_release(fork)
    app = app_variant(tmp_path, greeting="never live")
    run = run_deploy(fork, tmp_path, check=False, data={
        "app_source": str(app), "before_switch_commands": ["echo migrating", "exit 3"],
    })
    assert run.returncode != 0
    assert "before-switch command failed (3): exit 3" in run.output
    assert live_release(fork) == before
    assert release_dirs(fork) == [before]
    assert get(fork.url + "/").text.strip() == GREETING


def requests_post(url: str, text: str) -> int:
    import requests

    return requests.post(url, data=text.encode(), timeout=10).status_code


TOOL = f"{ROOT}/bin/release-tool"


def step_order(output: str, *lines: str) -> list[int]:
    """Where the release tool said each step ended, in a run's output shown with -vvv (-1: never)."""
    return [output.find(line) for line in lines]


def test_database_app_runs_its_one_time_step_before_the_canary(fork, tmp_path):
    # `/` needs a table that only `flask init-db` creates: the canary must come after
    # the before-switch commands, or such an app could never deploy.
    data = {"app_source": str(REPO_ROOT / "tests/apps/notesdb"), "app_static_dir": "",
            "before_switch_commands": ["test -f instance/app.db || flask init-db"]}
    run = run_deploy(fork, tmp_path, "-vvv", data=data)
    release = live_release(fork)
    # All in the one `ship` command, whose output -vvv shows.
    check, before, canary = step_order(run.output, f"release {release}: the app imports",
                                       f"release {release}: `test -f instance/app.db || flask init-db` succeeded",
                                       f"release {release}: the app answers its health check")
    assert -1 < check < before < canary, (check, before, canary)
    assert get(fork.url + "/").text.strip() == "Hello from the database"
    # Made by the one-time step, as the app user, in the shared directory.
    assert fork.exec(f"stat -c %U {ROOT}/shared/instance/app.db").strip() == "greeting"
    # The next release finds the database and skips the step (`init-db` again would
    # fail: the table exists).
    (tmp_path / "notesdb").mkdir()
    source = REPO_ROOT / "tests/apps/notesdb"
    (tmp_path / "notesdb" / "requirements.txt").write_text((source / "requirements.txt").read_text())
    (tmp_path / "notesdb" / "wsgi.py").write_text((source / "wsgi.py").read_text() + "\n# release two\n")
    run_deploy(fork, tmp_path, data={**data, "app_source": str(tmp_path / "notesdb")})
    assert live_release(fork) != release
    assert get(fork.url + "/").text.strip() == "Hello from the database"


def test_rollback_and_prune_follow_the_hosts_record_not_release_names(fork, tmp_path):
    original = live_release(fork)
    # A release from a laptop whose clock was far ahead: its name sorts after all others.
    skewed = "29990101T000000Z-abcdef"
    fork.exec(f"cp -a {ROOT}/releases/{original} {ROOT}/releases/{skewed} && {TOOL} activate {skewed}")
    assert live_release(fork) == skewed
    run_deploy(fork, tmp_path, data={"app_source": str(app_variant(tmp_path, greeting="release Y"))})
    newer = live_release(fork)
    assert newer < skewed

    # Back to the release that was live before, by the host's record (by name: the original).
    run_deploy(fork, tmp_path, deploy="rollback.py")
    assert live_release(fork) == skewed
    assert get(fork.url + "/").text.strip() == GREETING
    run_deploy(fork, tmp_path, deploy="rollback.py", data={"rollback_to": newer})
    assert live_release(fork) == newer

    # Prune keeps the newest by the host's record: the skewed release is the oldest there.
    run_deploy(fork, tmp_path, data={"app_source": str(app_variant(tmp_path, greeting="release Z")),
                                     "keep_releases": 2})
    last = live_release(fork)
    assert sorted(release_dirs(fork)) == sorted([newer, last]), release_dirs(fork)
    history = [json.loads(line) for line in fork.exec(f"cat {ROOT}/history.jsonl").splitlines()]
    assert [e["release"] for e in history if e["event"] == "live"][-5:] == [skewed, newer, skewed, newer, last]
    assert fork.exec(f"stat -c '%U %a' {ROOT}/history.jsonl").split() == ["root", "640"]
    run_deploy(fork, tmp_path, deploy="rollback.py")
    assert live_release(fork) == newer and get(fork.url + "/").text.strip() == "release Y"


def test_release_settings_are_checked_before_any_host():
    from tasks.config.checks import validate
    from tasks.config.settings import SettingsError

    assert validate({"rollback_to": "20261121T073000Z-3a98e1d-5f0c2a"}).rollback_to.endswith("-5f0c2a")
    assert validate({"rollback_to": "20261121T073000Z-5f0c2a"}).deploy_lock_timeout == 120
    for data, key in (({"rollback_to": "20261121T073000Z-a-b-c"}, "rollback_to"),
                      ({"deploy_lock_timeout": -1}, "deploy_lock_timeout"),
                      ({"shared_paths": ["data/", "data/uploads/"]}, "shared_paths")):
        with pytest.raises(SettingsError) as error:
            validate(data)
        assert key in str(error.value) and "Traceback" not in str(error.value)
    assert "'data/uploads' is inside the shared 'data'/" in str(
        pytest.raises(SettingsError, validate, {"shared_paths": ["data/", "data/uploads/"]}).value)

"""restic without a host (tasks/steps/restic.py, files/repository-sweep.py,
files/restic-verify.py, `ops.py restore-files`, docs/backups.md): the settings refused
naming the key, the rendered units and logins on both sides, the sweep's handling of
what an app server's ingest user adds, the choice of a snapshot. On real hosts:
tests/hosts/test_file_backups.py."""

from __future__ import annotations

import hashlib
import os
import runpy
import stat

import pytest

from tasks import REPO_ROOT
from tasks.config.checks import validate
from tasks.config.settings import SettingsError
from tasks.ops.backups import _instant, choose_snapshot
from tasks.ops.fleet import FleetError
from tasks.steps import restic
from tests.roles.test_distros import deploy, host_facts

SWEEP = runpy.run_path(str(REPO_ROOT / "files/repository-sweep.py"))
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBAD"
GROUPS = {"app_servers": ["web1"], "backup_servers": ["bk1"]}
APPS = [{"app_name": "greeting", "shared_paths": ["instance/", "db.json"]},
        {"app_name": "shop", "app_source": "tests/apps/blog", "app_entry": "blog:app", "url_prefix": "/shop",
         "shared_paths": ["uploads/"]},
        {"app_name": "plain", "app_source": "tests/apps/blog", "app_entry": "blog:app", "url_prefix": "/plain",
         "shared_paths": []}]
DATA = {"web1": {"private_address": "10.0.0.11", "apps": APPS}, "bk1": {"private_address": "10.0.0.9"}}


def fleet(system="debian12", facts=None, **data):
    made = {name: host_facts(system, PublicKey=lambda path: KEY, **(facts or {})) for name in ("web1", "bk1")}
    return deploy(made, groups=GROUPS, host_data=DATA, **data)


@pytest.mark.parametrize(("key", "value"), [
    ("files_backup_schedule", "whenever"), ("files_keep_daily", -1), ("files_prune_schedule", None),
    ("files_verify_schedule", ""),
])
def test_bad_settings_are_refused_naming_the_key(key, value):
    with pytest.raises(SettingsError) as error:
        validate({"app_name": "shop", key: value}, where="test", secrets=False)
    assert key in str(error.value)


@pytest.mark.parametrize("system", ["debian12", "debian13"])
def test_each_app_server_backs_up_as_the_app_user_into_a_repository_it_can_only_add_to(system):
    runs = fleet(system, files_keep_hourly=0)
    web, bk = runs["web1"], runs["bk1"]
    unit = str(web.uploads["/etc/systemd/system/pyinfra-flask-files-greeting.service"])
    for line in ("User=greeting", "WorkingDirectory=/srv/greeting/shared",
                 "-i /etc/pyinfra-flask/restic/greeting/id_ed25519",
                 "RESTIC_PASSWORD_FILE=/etc/pyinfra-flask/restic/greeting/password",
                 "Environment=RESTIC_REPOSITORY=sftp:restic-greeting@10.0.0.9:/var/lib/pyinfra-flask-restic/greeting",
                 "ConditionDirectoryNotEmpty=|/srv/greeting/shared/instance",
                 "ConditionFileNotEmpty=|/srv/greeting/shared/db.json",
                 "backup --host @fake/web1 -- instance db.json", "ProtectSystem=strict", "NoNewPrivileges=yes",
                 "-o StrictHostKeyChecking=yes", "ExecStopPost=+/bin/sh"):
        assert line in unit, line
    restore = str(web.uploads["/etc/systemd/system/pyinfra-flask-files-shop-restore@.service"])
    scratch = "/var/cache/pyinfra-flask-restic-shop/restore"
    assert f"restore %i --host @fake/web1 --target {scratch} --verify" in restore
    assert f"cp -R -P -T --preserve=mode,timestamps {scratch}/uploads /srv/shop/shared/uploads" in restore
    assert "ReadWritePaths=-/srv/shop/shared/uploads" in restore and "User=shop" in restore
    assert "OnCalendar=*-*-* *:15:00" in str(web.uploads["/etc/systemd/system/pyinfra-flask-files-shop.timer"])
    assert "10.0.0.9 ssh-ed25519" in str(web.uploads["/etc/pyinfra-flask/restic/shop/known_hosts"])
    # An app without shared_paths has nothing backed up.
    assert not [path for path in web.uploads if "plain" in path and "files" in path]
    # Each app's key made on the app server, its password copied from the backup host (never in a command).
    assert [name for name in web.changed if "Make shop's SSH key" in name]
    copied = [name for name in web.changed if "Hand shop its file backups' repository password" in name]
    assert copied and "contents not shown" in copied[0]
    # The backup host: the app's ingest user can use SFTP in its repository only, without links or setstat.
    authorized = [commands for name, commands in bk.changed.items()
                  if "Let shop's app servers in as restic-shop" in name]
    assert authorized
    assert str(bk.uploads["/home/restic-shop/.ssh/authorized_keys"]) == (
        f'restrict,command="/usr/lib/openssh/sftp-server -d /var/lib/pyinfra-flask-restic/shop -P '
        f'symlink,hardlink,setstat,lsetstat,copy-data,rmdir -u 0027" {KEY}\n')
    made = [commands for name, commands in bk.changed.items() if "Make shop's restic repository" in name][0]
    assert "runuser -u restic -- restic --repo /var/lib/pyinfra-flask-restic/shop" in made[0]
    assert "chmod 3770" in made[0] and "chgrp -R restic-shop" in made[0]
    assert not [name for name in bk.changed if "plain" in name]
    sweep = str(bk.uploads["/etc/systemd/system/pyinfra-flask-restic-sweep.service"])
    assert sweep.count("--layout restic") == 2 and "--ingest restic-shop" in sweep
    prune = str(bk.uploads["/etc/systemd/system/pyinfra-flask-restic-prune.service"])
    assert "forget --prune --group-by host --keep-daily 7 --keep-weekly 4" in prune and "--keep-hourly" not in prune
    assert "User=restic" in prune
    drill = str(bk.uploads["/etc/systemd/system/pyinfra-flask-restic-verify.service"])
    assert ("--app shop=/var/lib/pyinfra-flask-restic/shop=/etc/pyinfra-flask/restic/shop.password" in drill
            and "User=restic" in drill)
    # No db server: no pgBackRest anywhere.
    assert not [name for run in runs.values() for name in run.changed if "pgBackRest" in name]


def test_without_a_schedule_no_backup_units_and_the_drill_can_be_turned_off():
    runs = fleet(files_backup_schedule=None, files_verify_schedule=None)
    assert not [path for path in runs["web1"].uploads if "pyinfra-flask-files" in path]
    assert not [path for path in runs["bk1"].uploads if "restic" in path]


def test_ingest_users_fit_linux_names_and_stay_apart():
    assert restic.ingest_user("shop") == "restic-shop"
    long_a, long_b = "a" * 26 + "-one", "a" * 26 + "-two"
    assert len(restic.ingest_user(long_a)) == 32 and restic.ingest_user(long_a) != restic.ingest_user(long_b)


@pytest.mark.skipif(os.geteuid() != 0, reason="makes files of other users")
def test_the_sweep_hands_over_restic_files_named_by_their_contents_and_takes_liars_out(tmp_path):
    owner, ingest = 4001, 4002
    repository, quarantine = tmp_path / "repo", tmp_path / "quarantine"
    quarantine.mkdir(mode=0o700)
    packs = repository / "data/ab"
    packs.mkdir(parents=True)
    (repository / "snapshots").mkdir()
    os.chown(repository, owner, ingest)
    content = b"an encrypted pack"
    good = packs / hashlib.sha256(content).hexdigest()
    liar = packs / hashlib.sha256(b"something else").hexdigest()
    writing = packs / f"{hashlib.sha256(b'x').hexdigest()}-restic-temp-1234"
    for path, data in ((good, content), (liar, content), (writing, b"half")):
        path.write_bytes(data)
        os.chown(path, ingest, ingest)
    sweep = SWEEP["Sweep"](owner, ingest, ingest, os.open(quarantine, os.O_RDONLY | os.O_DIRECTORY), "restic")
    root = os.open(repository, os.O_RDONLY | os.O_DIRECTORY)
    sweep.directory(os.open("data", os.O_RDONLY | os.O_DIRECTORY, dir_fd=root))
    found = good.stat()
    assert (found.st_uid, found.st_gid, stat.S_IMODE(found.st_mode)) == (owner, ingest, 0o640)
    assert not liar.exists() and len(os.listdir(quarantine)) == 1
    assert writing.stat().st_uid == ingest
    assert stat.S_IMODE(packs.stat().st_mode) == 0o3770


def test_a_snapshot_is_chosen_by_time_with_its_zone():
    snapshots = [{"time": "2026-12-07T02:19:14.3251237Z", "id": "a"}, {"time": "2026-12-07T03:19:14.1Z", "id": "b"},
                 {"time": "2026-12-07T04:19:14+01:00", "id": "c"}]
    assert choose_snapshot(snapshots, None)["id"] == "b"
    assert choose_snapshot(snapshots, _instant("2026-12-07 03:19:14.05+00", "--to"))["id"] == "c"
    assert choose_snapshot(snapshots, _instant("2026-12-07T02:30:00Z", "--to"))["id"] == "a"
    assert choose_snapshot(snapshots, _instant("2026-12-07 01:00:00+00", "--to")) is None
    with pytest.raises(FleetError, match="--to: '2026-12-07 03:00' is not a time with its zone"):
        _instant("2026-12-07 03:00", "--to")


def test_the_watch_alerts_when_a_file_backup_failed_or_its_timer_stopped():
    import json

    from tasks.steps import watch as watch_step

    config = json.loads(fleet()["web1"].uploads[watch_step.CONFIG])
    assert config["units"]["pyinfra-flask-files-shop.service"] == "the last file backup of shop"
    assert config["units"]["pyinfra-flask-files-shop.timer"] == "the file backups' timer of shop"
    assert not [unit for unit in config["units"] if "plain" in unit]
    status = config["apps"][0]["status"]
    assert "--job" in status and "pyinfra-flask-files-greeting.service" in status
    assert status[status.index("pyinfra-flask-files-greeting.timer") - 1] == "--timer"

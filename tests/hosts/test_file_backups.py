"""restic on real hosts (marker `features`): an app server with two apps whose
`shared_paths` are backed up, and a `backup_servers` host (no db server), on a Docker
network of the test's own (tasks/steps/restic.py, docs/backups.md): an upload made
through the app backed up; the app host's attempts at the repository failing, and at
the other app's; the app host destroyed and replaced, one deploy and one
`ops.py restore-files` later the upload served again, byte for byte; a restore to a
point in time; the files drill passing, then failing on a corrupted repository.
Without a host: tests/steps/test_restic.py.
"""

from __future__ import annotations

import shlex
import time

import pytest
import requests

from dev import throwaway
from tests.conftest import get, run_deploy
from tests.hosts.test_database import ops

REPOSITORIES = "/var/lib/pyinfra-flask-restic"
DRILL = "pyinfra-flask-restic-verify.service"
TEXTFILE_DIR = "/var/lib/pyinfra-flask/metrics"
# The test starts each backup itself; the timers' own runs must not add snapshots meanwhile.
LATER = {"files_backup_schedule": "2099-01-01 00:00:00"}
APPS = [
    {"app_name": "greeting", "shared_paths": ["instance/"], **LATER},
    {"app_name": "blog", "app_source": "tests/apps/blog", "app_entry": "blog:app", "url_prefix": "/blog",
     "shared_paths": ["instance/", "static/uploads/"], **LATER},
]


def upload(app: throwaway.Host, name: str, data: bytes) -> str:
    answer = requests.post(app.url + "/blog/upload", files={"file": (name, data)}, timeout=10)
    answer.raise_for_status()
    return answer.text.strip()


def back_up(app: throwaway.Host, backup: throwaway.Host, app_name: str = "blog") -> list[str]:
    """The app's backup run now (as its timer would), then the sweep; the repository's snapshots."""
    app.exec(f"systemctl start pyinfra-flask-files-{app_name}.service")
    backup.exec("systemctl start pyinfra-flask-restic-sweep.service")
    return backup.exec(f"ls {REPOSITORIES}/{app_name}/snapshots").split()


def sftp(app: throwaway.Host, address: str, batch: str, app_name: str = "blog") -> str:
    """An SFTP session as the app user (compromised: it reads the app's key, as it runs the
    backups), with the app's own key, to its ingest user. Not as root: root owns the key file,
    which is the app group's too, and OpenSSH refuses a key its owner's others can read."""
    secrets = f"/etc/pyinfra-flask/restic/{app_name}"
    return app.exec(f"cd / && printf %s {shlex.quote(batch)} | runuser -u {app_name} -- sftp -b - -i "
                    f"{secrets}/id_ed25519 -o BatchMode=yes -o UserKnownHostsFile={secrets}/known_hosts "
                    f"restic-{app_name}@{address} 2>&1; echo status=$?", check=False)


@pytest.mark.features
def test_uploads_reach_the_backup_host_survive_losing_the_app_host_and_cannot_be_destroyed_from_it(
        hosts, deployed_image, bookworm_image, tmp_path):
    started = time.monotonic()
    network = hosts.network()
    app, backup = hosts.start_many((deployed_image, {"network": network}), (bookworm_image, {"network": network}))
    machines = [app, backup]
    address = backup.address(network)

    def write_inventory(app):
        return throwaway.write_group_inventory(tmp_path / "inventory.py", {
            "app_servers": [(app, {"private_address": app.address(network), "apps": APPS})],
            "backup_servers": [(backup, {"private_address": address, "files_prune_schedule": LATER[
                "files_backup_schedule"], "files_verify_schedule": LATER["files_backup_schedule"]})]})

    inventory = write_inventory(app)
    try:
        first = run_deploy(inventory, tmp_path)
        print(f"\nfirst deploy (app server with two apps, backup host): {first.seconds:.1f}s")
        second = run_deploy(inventory, tmp_path, "--diff")
        assert second.changed_operations() == [], second.output[-3000:]
        password = backup.exec("cat /etc/pyinfra-flask/restic/blog.password").strip()
        assert len(password) == 64 and password not in first.output + second.output
        assert app.exec("stat -c '%U %G %a' /etc/pyinfra-flask/restic/blog/password").split() == ["root", "blog", "640"]
        # One app's user reads its own backup key and password (it runs the backup), not another's.
        stolen = app.exec("cd / && runuser -u blog -- cat /etc/pyinfra-flask/restic/greeting/password "
                          "/etc/pyinfra-flask/restic/greeting/id_ed25519 2>&1; echo status=$?", check=False)
        assert "status=0" not in stolen, stolen
        # Nothing to keep yet: the backup is skipped, no empty snapshot.
        assert back_up(app, backup) == []
        # An upload through the app (as the app user, into shared static/uploads/), backed up.
        first_bytes = b"v1 " + bytes(range(256)) * 40
        url = upload(app, "photo.bin", first_bytes)
        assert get(app.url + url).content == first_bytes
        snapshots = back_up(app, backup)
        assert len(snapshots) == 1, snapshots
        time.sleep(1.5)
        target = app.exec("date -u '+%Y-%m-%d %H:%M:%S+00'").strip()
        time.sleep(1.5)
        second_bytes = b"v2 " + bytes(range(255, -1, -1)) * 50
        upload(app, "photo.bin", second_bytes)
        other = upload(app, "other.txt", b"another upload\n")
        assert len(back_up(app, backup)) == 2
        assert len(back_up(app, backup, "greeting")) == 0  # its instance/ is empty
        # What the app server sent is the owner's now, read-only; its ingest user reads it.
        owners = backup.exec(f"find {REPOSITORIES}/blog/snapshots {REPOSITORIES}/blog/index -type f "
                             "-printf '%u:%g %m\\n' | sort -u").split("\n")
        assert [line for line in owners if line] == ["restic:restic-blog 640"], owners
        # As the app user on the app server, with the app's key: no shell, nothing removed, renamed or
        # replaced. The session itself works (what the backups need: listing, reading).
        snapshot = snapshots[0]
        before = backup.exec(f"sha256sum {REPOSITORIES}/blog/snapshots/{snapshot}")
        repo = f"{REPOSITORIES}/blog"
        listed = sftp(app, address, f"ls {repo}/snapshots\n")
        assert "status=0" in listed and snapshot in listed, listed
        attacks = {
            "remove": f"rm {repo}/snapshots/{snapshot}\n",
            "rename": f"rename {repo}/snapshots/{snapshot} {repo}/snapshots/x\n",
            "overwrite": f"put /etc/hostname {repo}/snapshots/{snapshot}\n",
            "chmod": f"chmod 666 {repo}/snapshots/{snapshot}\n",
            "symlink": f"symlink /etc/shadow {repo}/snapshots/y\n",
            "other app's repository": f"ls {REPOSITORIES}/greeting/snapshots\n",
            "the other app's password": "get /etc/pyinfra-flask/restic/greeting.password /tmp/stolen\n",
        }
        for what, batch in attacks.items():
            out = sftp(app, address, batch)
            assert "status=0" not in out, f"{what}: {out}"
        shell = app.exec(f"cd / && runuser -u blog -- ssh -i /etc/pyinfra-flask/restic/blog/id_ed25519 -o BatchMode=yes "
                         f"-o UserKnownHostsFile=/etc/pyinfra-flask/restic/blog/known_hosts restic-blog@{address} "
                         "id 2>&1 </dev/null; echo status=$?", check=False)
        assert "uid=" not in shell, shell
        restic = ("cd / && RESTIC_PASSWORD_FILE=/etc/pyinfra-flask/restic/blog/password runuser -u blog -- restic "
                  "--no-cache -o 'sftp.command=ssh -i /etc/pyinfra-flask/restic/blog/id_ed25519 -o UserKnownHostsFile="
                  f"/etc/pyinfra-flask/restic/blog/known_hosts restic-blog@{address} -s sftp' "
                  f"-r sftp:restic-blog@{address}:{repo}")
        # restic itself reaches the repository this way (it lists the snapshots), and cannot forget one.
        listed = app.exec(f"{restic} snapshots --json 2>&1; echo status=$?", check=False)
        assert "status=0" in listed and snapshot in listed, listed
        forget = app.exec(f"{restic} forget --prune {snapshot} 2>&1; echo status=$?", check=False)
        assert "status=0" not in forget, forget
        assert backup.exec(f"sha256sum {repo}/snapshots/{snapshot}") == before
        # A file whose name lies about its contents, added as the ingest user, is taken out by the sweep.
        liar = f"{repo}/data/00/00" + "0" * 62
        backup.exec(f"cd / && runuser -u restic-blog -- sh -c {shlex.quote(f'echo junk > {liar}')}")
        backup.exec("systemctl start pyinfra-flask-restic-sweep.service")
        assert not backup.exec(f"ls {liar} 2>/dev/null; true").strip()
        # The files drill: every app server's newest snapshot restored and read back.
        backup.exec(f"mkdir -p {TEXTFILE_DIR}")
        backup.exec(f"systemctl start {DRILL}")
        last = backup.exec("cat /var/lib/pyinfra-flask-restic-verify/last")
        assert last.startswith("ok ") and f"blog: {app.name} 2 files" in last and "greeting: no snapshot" in last, last
        status = ops(inventory, "status")
        assert status.returncode == 0 and "files drill: ok at " in status.stdout, status.stdout + status.stderr
        assert "restore drill" not in status.stdout  # no db server, no pgBackRest
        # The app host is lost with its disk; a new one takes its name, at a new address.
        app.remove()
        hosts.remove(app)
        replaced = time.monotonic()
        new = hosts.start(deployed_image, network=network, hostname=app.name)
        machines.append(new)
        inventory = write_inventory(new)
        run_deploy(inventory, tmp_path)
        assert get(new.url + url).status_code == 404
        assert len(back_up(new, backup)) == 2, "the new host's empty uploads were backed up"
        restored = ops(inventory, "restore-files")
        assert restored.returncode == 0, restored.stdout + restored.stderr
        assert "Stopped pyinfra-flask-files-blog.timer" in restored.stdout, restored.stdout
        print(f"app host replaced: new host to serving the uploads again {time.monotonic() - replaced:.1f}s")
        assert get(new.url + url).content == second_bytes
        assert get(new.url + other).text == "another upload\n"
        assert new.exec("stat -c '%U' /srv/blog/shared/static/uploads/photo.bin").strip() == "blog"
        # To the time between the two backups: the first upload's bytes; the later file is kept.
        earlier = ops(inventory, "restore-files", "--to", target)
        assert earlier.returncode == 0, earlier.stdout + earlier.stderr
        assert get(new.url + url).content == first_bytes
        assert get(new.url + other).status_code == 200
        # The new host's backups reach the repository (its new key let in by the deploy).
        assert len(back_up(new, backup)) == 3
        # Forget and prune, as the owner, by the retention.
        backup.exec("systemctl start pyinfra-flask-restic-prune.service")
        # A corrupted pack (as root on the backup host): the drill fails, says so, and the unit is failed.
        pack = backup.exec(f"find {repo}/data -type f -printf '%s %p\\n' | sort -n | tail -1").split()[-1]
        backup.exec(f"printf 'corrupted-by-the-test' | dd of={shlex.quote(pack)} bs=1 seek=64 conv=notrunc "
                    "status=none")
        failed = backup.exec(f"systemctl start {DRILL} 2>&1; echo status=$?", check=False)
        assert "status=0" not in failed, failed
        assert f'pyinfra_flask_unit_failed{{unit="{DRILL}"}} 1' in backup.exec(f"cat {TEXTFILE_DIR}/unit-{DRILL}.prom")
        assert backup.exec("cat /var/lib/pyinfra-flask-restic-verify/last").startswith("failed ")
        status = ops(inventory, "status")
        assert status.returncode != 0 and "files drill: FAILED at " in status.stdout, status.stdout + status.stderr
        print(f"files drill: {status.stdout.strip().splitlines()[-1]}")
        # The backup host's watch (alerts where the host's alerts go): the failed drill is a failing check.
        backup.exec("systemctl start pyinfra-flask-watch.service")
        watched = backup.exec("cat /var/lib/pyinfra-flask/watch/state.json")
        assert '"unit:pyinfra-flask-restic-verify.service"' in watched.split('"failing": [')[1].split("]")[0], watched
        assert not backup.exec("ls /var/lib/pyinfra-flask-restic-verify/scratch 2>/dev/null; true").strip()
    except BaseException:
        print(backup.exec("journalctl --no-pager -n 40 -u 'pyinfra-flask-restic-*'; ls -laR "
                          f"{REPOSITORIES} | head -40", check=False))
        for h in machines:
            if h is not backup and h in hosts.hosts:
                print(h.exec("journalctl --no-pager -n 30 -u 'pyinfra-flask-files-*'", check=False))
        raise
    finally:
        for h in machines:
            hosts.remove(h)
    print(f"test_file_backups on real hosts: {time.monotonic() - started:.1f}s")

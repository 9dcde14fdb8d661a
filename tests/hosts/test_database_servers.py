"""`db_servers` on real hosts (marker `features`): a db server, an app server and an
outsider on a Docker network of the test's own (tasks/roles/database_server.py,
tasks/steps/database.py's hand_over, docs/database.md). Without a host:
tests/roles/test_database_server.py.
"""

from __future__ import annotations

import shlex
import time

import pytest
import requests

from dev import throwaway
from tests.conftest import get, run_deploy
from tests.hosts.test_database import HOSTILE, notespg, notespg_data, ops


def connects(client: throwaway.Host, address: str, port: int = 5432) -> bool:
    """Whether `client` opens a TCP connection to address:port within 3 s."""
    return client.exec(f"timeout 3 bash -c '</dev/tcp/{address}/{port}' && echo open || echo closed").strip() == "open"


@pytest.mark.features
def test_the_app_reaches_its_database_on_the_db_server_over_tls_and_nobody_else_does(
        hosts, deployed_image, bookworm_image, tmp_path):
    started = time.monotonic()
    network = hosts.network()
    # NET_ADMIN: the deploy loads the db server's firewall (nftables).
    db, app, outsider = hosts.start_many((deployed_image, {"network": network, "cap_add": ("NET_ADMIN",)}),
                                         (deployed_image, {"network": network}),
                                         (bookworm_image, {"network": network}))
    data = notespg_data(notespg(tmp_path, "v1"))
    address = db.address(network)
    inventory = throwaway.write_group_inventory(tmp_path / "inventory.py", {
        "db_servers": [(db, {"private_address": address, **data})],
        "app_servers": [(app, {"private_address": app.address(network), **data})]})
    try:
        first = run_deploy(inventory, tmp_path, check=False)
        assert first.returncode == 0, "\n".join(line for line in first.output.splitlines()
                                                if "rror" in line or "ailed" in line or "Traceback" in line)
        print(f"\nfirst deploy (db server and app server): {first.seconds:.1f}s")
        password = db.exec("cat /etc/pyinfra-flask/postgresql/notespg.password").strip()
        assert len(password) == 64
        assert app.exec("stat -c '%U %a' /srv/notespg/secrets/database.env").split() == ["root", "600"]
        assert not app.exec("ls /etc/pyinfra-flask/postgresql 2>/dev/null; dpkg -l postgresql 2>/dev/null | "
                            "grep ^ii; true").strip(), "a PostgreSQL on the app server"
        # The first migration ran against the db server; a row written through the app is read back.
        assert db.exec("cd / && runuser -u postgres -- psql -XAt -d notespg -c 'select version_num from "
                       "alembic_version'").strip() == "0001"
        requests.post(app.url + "/notes", data={"text": "remote"}, timeout=10).raise_for_status()
        assert get(app.url + "/").text == "notespg v1: 1 notes\n"
        assert db.exec("cd / && runuser -u postgres -- psql -XAt -d notespg -c 'select text from note'").strip() == "remote"
        # The app's connection is encrypted.
        assert db.exec("cd / && runuser -u postgres -- psql -XAt -c \"select distinct s.ssl from pg_stat_ssl s join "
                       "pg_stat_activity a using (pid) where a.usename = 'notespg'\"").strip() == "t"
        # From the outsider nothing connects; from the app server it does.
        assert connects(app, address)
        assert not connects(outsider, address)
        dry = run_deploy(inventory, tmp_path, "--dry", "--diff")
        second = run_deploy(inventory, tmp_path)
        assert "No changes" in second.output, second.output[-3000:]
        assert second.changed_operations() == []
        for run in (first, dry, second):
            assert password not in run.output
        # The hostile app stores code for a superuser's restore to run (tests/hosts/test_database.py).
        app.exec("cd / && set -a && . /srv/notespg/secrets/database.env && runuser -u notespg -- "
                 "/srv/notespg/current/.venv/bin/python -c 'import os, sys, psycopg; psycopg.connect("
                 f"os.environ[\"DATABASE_URL\"], autocommit=True).execute(sys.argv[1])' {shlex.quote(HOSTILE)}")
        # Backup on the db server, rows deleted, restored: the app server's units stop
        # for it and start again (a new uWSGI master), the rows are back.
        made = ops(inventory, "backup", "now")
        assert made.returncode == 0 and f"[{db.name}] notespg: backed up" in made.stdout, made.stdout + made.stderr
        backup = next(word for line in made.stdout.splitlines() for word in line.split() if word.endswith(".dump"))
        requests.delete(app.url + "/notes", timeout=10).raise_for_status()
        assert get(app.url + "/").text == "notespg v1: 0 notes\n"
        pid = app.exec("systemctl show -p MainPID --value notespg").strip()
        restored = ops(inventory, "restore", backup)
        assert restored.returncode == 0, restored.stdout + restored.stderr
        assert f"RESTORED {backup}" in restored.stdout and "Stopped notespg.service" in restored.stdout
        assert app.exec("systemctl show -p MainPID --value notespg").strip() not in ("0", pid)
        assert get(app.url + "/notes").text == "remote\n"
        # The restore ran it as the app's role: no superuser, no program run as postgres.
        assert db.exec("cd / && runuser -u postgres -- psql -XAt -c \"select rolsuper from pg_roles where "
                       "rolname = 'notespg'\"; test -e /var/lib/postgresql/pwned || echo none").split() == ["f", "none"]
        for run in (made, restored):
            assert password not in run.stdout + run.stderr
    except BaseException:
        print(db.exec("journalctl --no-pager -n 30 -u postgresql@15-main; nft list ruleset", check=False))
        print(app.exec("journalctl --no-pager -n 30 -u notespg", check=False))
        raise
    finally:
        for h in (db, app, outsider):
            hosts.remove(h)
    print(f"test_database_servers on real hosts: {time.monotonic() - started:.1f}s")

"""The database server without a host (tasks/roles/database_server.py, docs/database.md):
the db server and its app servers deployed against mocked facts, the topologies refused,
and a restore stopping the app on every app server first (tasks/ops/backups.py). On real
hosts: tests/hosts/test_database_servers.py."""

from __future__ import annotations

from dataclasses import replace

import pytest
from pyinfra.api.exceptions import DeployError

from tasks.steps.database import CA_PATH, remote_url
from tests.roles.test_distros import deploy, host_facts


DB = {"database": "postgresql"}


GROUPS = {"db_servers": ["db1"], "app_servers": ["web1", "web2"]}


DATA = {"db1": {"private_address": "10.0.0.5"}, "web1": {"private_address": "10.0.0.11"},
        "web2": {"private_address": "10.0.0.12"}}


HBA = "/etc/postgresql/15/main/pg_hba.conf"


CONF = "/etc/postgresql/15/main/conf.d/pyinfra-flask.conf"


def cluster(**data):
    facts = {name: host_facts("debian12") for name in ("db1", "web1", "web2")}
    return deploy(facts, groups=GROUPS, host_data=DATA, **{**DB, **data})


def test_the_db_server_listens_privately_with_tls_for_exactly_the_app_servers():
    runs = cluster()
    db = runs["db1"]
    conf = db.uploads[CONF].decode() if isinstance(db.uploads[CONF], bytes) else db.uploads[CONF]
    assert "listen_addresses = '10.0.0.5'" in conf and "ssl = on" in conf
    assert "ssl_cert_file = '/etc/postgresql/pyinfra-flask-10.0.0.5.crt'" in conf
    hba = [line.split() for line in str(db.uploads[HBA]).splitlines() if line and not line.startswith("#")]
    # Over the socket, the backup tool connects as the app's role (never as a superuser).
    assert hba == [["local", "all", "postgres", "peer"], ["local", "greeting", "greeting", "scram-sha-256"],
                   ["hostssl", "greeting", "greeting", "10.0.0.11/32", "scram-sha-256"],
                   ["hostssl", "greeting", "greeting", "10.0.0.12/32", "scram-sha-256"]]
    rules = str(db.uploads["/etc/pyinfra-flask/uwsgi-firewall.nft"])
    assert "tcp dport { 5432 }" in rules
    assert [line.split()[:3] for line in rules.splitlines() if "saddr" in line] == [
        ["ip", "saddr", "10.0.0.11"], ["ip", "saddr", "10.0.0.12"]]
    commands = "\n".join(c for cs in db.changed.values() for c in cs)
    assert "openssl req -x509" in commands and "subjectAltName=IP:10.0.0.5" in commands
    assert "CREATE ROLE greeting" in commands and "createdb -O greeting greeting" in commands
    # Only PostgreSQL: no nginx, no uWSGI, no app.
    assert not [name for name in db.changed if "nginx" in name.lower() or "uWSGI" in name or "release" in name.lower()]


def test_app_servers_get_no_postgresql_and_the_remote_url_from_the_db_server():
    runs = cluster()
    for name in ("web1", "web2"):
        run = runs[name]
        assert not [op for op in run.changed if op.startswith("PostgreSQL |")]
        assert not [c for cs in run.changed.values() for c in cs if "CREATE ROLE" in c or "apt-get" in c and "postgresql" in c]
        handed = [op for op in run.changed if op.startswith("Database | Hand greeting its DATABASE_URL")]
        assert handed == ["Database | Hand greeting its DATABASE_URL and the db server's certificate "
                          "(from @fake/db1, contents not shown)"]
        # The unit reads the env file the hand-over writes.
        assert "EnvironmentFile=/srv/greeting/secrets/database.env" in str(run.uploads["/etc/systemd/system/greeting.service"])


def test_the_remote_url_verifies_the_server():
    from types import SimpleNamespace

    s = SimpleNamespace(database_name="shop", database_host="10.0.0.5")
    assert remote_url(s) == ("postgresql://shop:%s@10.0.0.5:5432/shop?sslmode=verify-full&sslrootcert="
                             f"{CA_PATH}")


@pytest.mark.parametrize(("groups", "data", "line"), [
    ({"db_servers": ["db1", "web2"], "app_servers": ["web1"]}, DATA,
     "db_servers has 2 hosts (@fake/db1, @fake/web2): one database server serves the app servers; nothing was changed."),
    ({"db_servers": ["db1"], "app_servers": ["web1", "db1"]}, DATA,
     "Host '@fake/db1' is in both app_servers and db_servers: a database server runs only PostgreSQL; nothing was changed."),
    ({"db_servers": ["db1"], "app_servers": ["web1", "web2"]}, {**DATA, "db1": {}},
     "Database server '@fake/db1' has no private_address"),
    ({"db_servers": ["db1"], "app_servers": ["web1", "web2"]}, {**DATA, "web2": {}},
     "App server '@fake/web2' has no private_address: the database server lets in only"),
])
def test_bad_db_server_topologies_are_refused(groups, data, line):
    facts = {name: host_facts("debian12") for name in ("db1", "web1", "web2")}
    with pytest.raises(DeployError) as info:
        deploy(facts, groups=groups, host_data=data, **DB)
    assert line in str(info.value) and "nothing was changed" in str(info.value)


def test_backups_are_the_db_servers_and_a_restore_stops_the_app_on_every_app_server_first(monkeypatch):
    from types import SimpleNamespace

    from tasks.config import inventory
    from tasks.ops import backups
    from tasks.config.checks import validate
    from tasks.ops.fleet import Fleet, FleetError

    db = SimpleNamespace(name="db1", groups=["db_servers"])
    webs = [SimpleNamespace(name=name, groups=["app_servers"]) for name in ("web1", "web2")]
    on_db = SimpleNamespace(app_name="shop", database="postgresql", database_host=None)
    on_web = replace(validate({"app_name": "shop", **DB}), database_host="10.0.0.5")
    monkeypatch.setattr(inventory, "load_apps", lambda h, secrets=True: [on_db] if h is db else [on_web])
    commands = []

    def run(h, command, **options):
        commands.append((h.name, command))
        return True, [f"RESTORED {command.split()[-2]}"] if "restore" in command else ["ok"], []

    monkeypatch.setattr("tasks.ops.backups.run", run)
    state = SimpleNamespace(inventory=[db, *webs])
    fleet = Fleet(state, [db, *webs], {"db1": [on_db], "web1": [on_web], "web2": [on_web]})
    monkeypatch.setattr(fleet, "each", lambda work: {h.name: work(h) for h in fleet.hosts})
    assert [backups._apps_with_database(fleet, h) for h in (db, *webs)] == [[on_db], [], []]
    results = backups.restore(fleet, "shop-20261202T030000Z.dump")
    assert all(ok for found in results.values() for _, ok, _ in found)
    order = [(name, command.split()[1] if command.startswith("systemctl") else "restore") for name, command in commands]
    assert order[:3] == [("web1", "stop"), ("web2", "stop"), ("db1", "restore")]
    assert sorted(order[3:]) == [("web1", "start"), ("web2", "start")]
    assert "--units-elsewhere" in commands[2][1]
    assert "healthcheck.py --check" in commands[3][1]

    # An app server left out by --limit: refused, nothing run.
    commands.clear()
    fleet = Fleet(state, [db, webs[0]], {"db1": [on_db], "web1": [on_web]})
    with pytest.raises(FleetError, match="shop also runs on web2, which --limit leaves out.*nothing was changed"):
        backups.restore(fleet, "shop-20261202T030000Z.dump")
    assert commands == []

"""The monitoring host and every host's exporters without a host
(tasks/roles/monitoring_server.py, tasks/steps/metrics.py, tasks/steps/monitoring.py,
docs/monitoring.md): deploy.py against mocked facts on Debian 12 and 13, the scrape
targets following the inventory, the refusals, the secrets never shown, the relay's
and the metrics reader's own logic. On real hosts: tests/hosts/test_monitoring.py."""

from __future__ import annotations

import re

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from pyinfra.api.exceptions import DeployError

from tasks import REPO_ROOT
from tasks.config.checks import validate
from tasks.config.settings import parse
from tasks.steps import metrics, monitoring
from tests.roles.test_distros import deploy, host_facts

WEBHOOK = "https://hooks.example.com/services/T0KEN-5ecret"
PASSWORD = "smtp-Pa55word"
RULES = monitoring.RULES
# Prometheus's own unit tests of every shipped rule, for the rules as the defaults render them.
RULES_TESTS = Path(__file__).with_name("prometheus-rules-test.yml")


def fleet(system: str = "debian12", web: tuple[str, ...] = ("web1", "web2"), **mon_data):
    names = (*web, "lb1", "mon1")
    facts = {name: host_facts(system) for name in names}
    data = {name: {"private_address": f"10.0.0.{index}"} for index, name in enumerate(names, 11)}
    data["mon1"].update({"alert_webhook_url": WEBHOOK, "alert_email_to": ["ops@example.com"],
                         "alert_smtp_host": "smtp.example.com", "alert_smtp_user": "ops@example.com",
                         "alert_smtp_password": PASSWORD, **mon_data})
    return deploy(facts, groups={"app_servers": list(web), "load_balancers": ["lb1"], "monitoring_servers": ["mon1"]},
                  host_data=data)


def scrape_config(run) -> str:
    return str(run.uploads[monitoring.CONFIG])


@pytest.mark.parametrize("system", ["debian12", "debian13"])
def test_every_host_gets_its_exporters_and_the_monitor_scrapes_exactly_them(system):
    runs = fleet(system)
    config = scrape_config(runs["mon1"])
    targets = [line.strip() for line in config.splitlines() if "targets:" in line and "127.0.0.1" not in line]
    assert targets == ['- targets: ["10.0.0.11:9100"]', '- targets: ["10.0.0.12:9100"]',
                       '- targets: ["10.0.0.13:9100"]', '- targets: ["10.0.0.14:9100"]',
                       '- targets: ["10.0.0.13:9113"]', '- targets: ["10.0.0.13:3903"]']
    assert "scrape_interval: 15s" in config and "127.0.0.1:9093" in config
    mon = runs["mon1"]
    assert ("Monitoring server | Monitoring | System packages | Install prometheus, prometheus-alertmanager, python3"
            in mon.changed)
    manager = str(mon.uploads[monitoring.ALERTMANAGER_CONFIG])
    assert "group_wait: 30s\n" in manager and "group_interval: 60s\n" in manager and "send_resolved: true" in manager
    assert '--storage.tsdb.retention.time=15d --web.listen-address=127.0.0.1:9090' in str(
        mon.uploads["/etc/default/prometheus"])
    assert "--cluster.listen-address=" in str(mon.uploads["/etc/default/prometheus-alertmanager"])
    # Behind the balancer the app servers run no nginx: only the node exporter, on their private address.
    web = runs["web1"]
    assert str(web.uploads["/etc/default/prometheus-node-exporter"]).endswith(
        'ARGS="--web.listen-address=10.0.0.11:9100 --collector.textfile.directory=/var/lib/pyinfra-flask/metrics"\n')
    assert "/etc/default/prometheus-nginx-exporter" not in web.uploads
    assert "Metrics | Exporters | Write pyinfra-flask-metrics.timer (every 15 s)" in web.changed
    lb = runs["lb1"]
    assert "--nginx.scrape-uri=http://127.0.0.1:8089/stub_status" in str(
        lb.uploads["/etc/default/prometheus-nginx-exporter"])
    assert "listen 127.0.0.1:8089;" in str(lb.uploads[metrics.STUB_STATUS_CONF])
    # mtail counts the balanced app's answers from the balancer's access log.
    assert 'LOGS="/var/log/nginx/greeting.access.log"' in str(lb.uploads["/etc/default/mtail"])
    program = str(lb.uploads[metrics.MTAIL_PROGRAM])
    assert 'getfilename() == "/var/log/nginx/greeting.access.log" {' in program
    assert 'pyinfra_flask_nginx_5xx_total["greeting"]++' in program
    for name, run in runs.items():
        rules = str(run.uploads["/etc/pyinfra-flask/metrics-firewall.nft"])
        assert [line.split()[:3] for line in rules.splitlines() if "saddr" in line] == [["ip", "saddr", "10.0.0.14"]]
        assert "tcp dport { 9100" in rules
        # The uWSGI table is not touched by the exporters' (the balancer-facing one stays its own).
        assert "Metrics | Exporters | Firewall | Load the changed metrics firewall rules (nft -c first)" in run.changed


def test_a_host_added_is_scraped_and_one_removed_is_dropped():
    three = scrape_config(fleet(web=("web1", "web2", "web3"))["mon1"])
    one = scrape_config(fleet(web=("web1",))["mon1"])
    assert '"10.0.0.13:9100"' in three and 'instance: "@fake/web3"' in three
    assert 'instance: "@fake/web2"' not in one and 'instance: "@fake/web3"' not in one
    assert 'instance: "@fake/web1"' in one


def test_without_a_monitoring_host_nothing_of_it_is_deployed_and_what_was_goes():
    facts = {"web1": host_facts("debian12")}
    run = deploy(facts)["web1"]
    assert not [name for name in run.changed if "Metrics" in name or "prometheus" in name.lower()]
    was = deploy({"web1": host_facts("debian12", File=lambda path: {"size": 1} if path.endswith(
        "metrics-firewall.nft") else None)})["web1"]
    [commands] = [c for name, c in was.changed.items() if name.startswith("Metrics | Exporters | Stop the exporters")]
    assert commands[0] == "systemctl disable --now pyinfra-flask-metrics.timer 2>/dev/null || true"
    assert commands[6] == "systemctl disable --now pyinfra-flask-metrics-firewall.service"


def test_the_rules_carry_the_settings_and_pass_promtool_where_it_is():
    mon = fleet(monitoring_alert_after=30, monitoring_slow_response=0.5, alert_disk_free=15)["mon1"]
    rules = str(mon.uploads[RULES])
    assert rules.count("for: 30s") == 4 and "> 0.5" in rules and "< 15" in rules and "> 0.05" in rules
    for alert in ("TargetDown", "AppDown", "UnitFailed", "SlowResponses", "ErrorRate", "AppErrors", "DiskFull",
                  "CertificateExpiring", "BackupTooOld"):
        assert f"alert: {alert}" in rules
    if shutil.which("promtool"):
        path = REPO_ROOT / ".pytest-rules.yml"
        try:
            path.write_text(rules)
            assert "SUCCESS" in subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True,
                                                text=True).stdout
        finally:
            path.unlink()


def rules_unit_tests(directory: Path) -> Path:
    """The rules a monitoring host with the default settings gets, beside Prometheus's unit
    tests of them (prometheus-rules-test.yml): run `promtool test rules` on the path returned
    (here where promtool is installed; on the monitoring host by tests/hosts/test_monitoring.py)."""
    defaults = validate({"app_source": "files/greeting"})
    rules = monitoring.render("prometheus-rules.yml.j2", **monitoring.rules_context(defaults))
    (directory / "pyinfra-flask-rules.yml").write_text(rules)
    tests = directory / RULES_TESTS.name
    tests.write_text(RULES_TESTS.read_text())
    return tests


def test_every_shipped_rule_has_unit_tests_that_fire_and_resolve_it(tmp_path):
    tests = rules_unit_tests(tmp_path)
    shipped = re.findall(r"^\s+- alert: (\w+)$", (tmp_path / "pyinfra-flask-rules.yml").read_text(), re.M)
    text = tests.read_text()
    fired = set(re.findall(r"^\s+alertname: (\w+)\n\s+exp_alerts:\n\s+- exp_labels:", text, re.M))
    resolved = set(re.findall(r"alertname: (\w+), exp_alerts: \[\]", text))
    assert len(shipped) == 10 and fired == resolved == set(shipped), (shipped, fired, resolved)
    if shutil.which("promtool"):
        said = subprocess.run(["promtool", "test", "rules", str(tests)], capture_output=True, text=True)
        assert said.returncode == 0 and "SUCCESS" in said.stdout, said.stdout + said.stderr


def test_secrets_only_in_the_relays_root_only_file():
    runs = fleet()
    for name, run in runs.items():
        for dest, text in run.uploads.items():
            if dest != monitoring.TARGETS:
                assert WEBHOOK not in str(text) and PASSWORD not in str(text), dest
        for commands in run.changed.values():
            assert not any(WEBHOOK in c or PASSWORD in c for c in commands)
    secret = runs["mon1"].uploads[monitoring.TARGETS]
    assert WEBHOOK.encode() in secret and PASSWORD.encode() in secret
    assert "relay" in str(runs["mon1"].uploads[monitoring.ALERTMANAGER_CONFIG])


@pytest.mark.parametrize("key, value, said", [
    ("monitoring_interval", 1, "monitoring_interval = 1: Input should be greater than or equal to 2"),
    ("monitoring_retention", "15 days", "monitoring_retention = '15 days'"),
    ("monitoring_alert_after", -1, "monitoring_alert_after = -1"),
    ("monitoring_slow_response", 0, "monitoring_slow_response = 0"),
    ("monitoring_error_ratio", 2.0, "monitoring_error_ratio = 2.0: Input should be less than or equal to 1"),
])
def test_bad_settings_are_refused_naming_the_key(key, value, said):
    settings, problems = parse({key: value})
    assert settings is None and len(problems) == 1 and problems[0].startswith(said), problems


def test_refused_topologies():
    facts = {name: host_facts("debian12") for name in ("web1", "mon1")}
    with pytest.raises(DeployError, match="web1' has no private_address: with a monitoring_servers host"):
        deploy(facts, groups={"app_servers": ["web1"], "monitoring_servers": ["mon1"]},
               host_data={"mon1": {"private_address": "10.0.0.5"}})
    with pytest.raises(DeployError, match="in both app_servers and monitoring_servers"):
        deploy(facts, groups={"app_servers": ["web1", "mon1"], "monitoring_servers": ["mon1"]},
               host_data={"mon1": {"private_address": "10.0.0.5"}, "web1": {"private_address": "10.0.0.6"}})
    with pytest.raises(DeployError, match="monitoring_servers has 2 hosts"):
        deploy(facts, groups={"monitoring_servers": ["web1", "mon1"]},
               host_data={"mon1": {"private_address": "10.0.0.5"}, "web1": {"private_address": "10.0.0.6"}})


def load(name: str):
    spec = importlib.util.spec_from_file_location(name.replace("-", "_"), REPO_ROOT / "files" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_relay_turns_alertmanagers_notification_into_the_watchs_alert():
    relay = load("alert-relay")
    payload = {"alerts": [
        {"status": "firing", "labels": {"alertname": "AppDown", "instance": "web1", "app": "shop"},
         "annotations": {"summary": "web1: shop's health check fails"}, "startsAt": "2026-01-01T10:00:00.5Z"},
        {"status": "resolved", "labels": {"alertname": "UnitFailed", "instance": "web2", "unit": "x.service"},
         "annotations": {"summary": "web2: x.service failed"}, "startsAt": "2026-01-01T10:00:00Z",
         "endsAt": "2026-01-01T10:05:00.123456789Z"}]}
    item = relay.item("mon1", payload, 0.0)
    assert item["text"] == ("[mon1] FAILING: AppDown: web1: shop's health check fails\n"
                            "RECOVERED: UnitFailed: web2: x.service failed (after 5m00s)")
    assert item["failing"][0]["check"] == "AppDown:web1:shop"
    assert relay.item("mon1", {"alerts": []}, 0.0) is None and relay.item("mon1", {"alerts": "x"}, 0.0) is None


def test_the_metrics_reader_keeps_only_numbers():
    reader = load("metrics")
    out = reader.Lines()
    report = {"health": {"failure": None}, "units": {"shop.service": {"LoadState": "loaded", "ActiveState": "failed"}},
              "uwsgi": {"workers": 2, "busy": 1, "requests": 41, "exceptions": True, "harakiri": "9",
                        "avg_rt": 250000},
              "certificates": {"/c.pem": ["notAfter=Jan 11 00:00:00 2026 GMT"]}}
    reader.app_metrics(out, {"app": 'sh"op', "certificate_days": 14, "backups": []}, report,
                       reader.calendar.timegm((2026, 1, 1, 0, 0, 0)))
    text = out.text()
    assert 'pyinfra_flask_uwsgi_requests_total{app="sh\\"op"} 41\n' in text
    assert "exceptions" not in text and "harakiri" not in text  # not numbers: left out
    assert 'pyinfra_flask_uwsgi_response_seconds{app="sh\\"op"} 0.25\n' in text
    assert 'pyinfra_flask_app_healthy{app="sh\\"op"} 1\n' in text
    assert 'pyinfra_flask_unit_failed{app="sh\\"op",unit="shop.service"} 1\n' in text
    assert 'pyinfra_flask_certificate_days_left{app="sh\\"op",path="/c.pem"} 10\n' in text
    assert text.count("# TYPE pyinfra_flask_uwsgi_requests_total counter") == 1


def test_each_apps_redis_its_own_exporter_and_postgresql_its_own_where_they_run():
    facts = {name: host_facts("debian12") for name in ("web1", "db1", "mon1")}
    runs = deploy(facts, groups={"app_servers": ["web1"], "db_servers": ["db1"], "monitoring_servers": ["mon1"]},
                  host_data={"web1": {"private_address": "10.0.0.11", "apps": [
                      {"app_name": "greeting", "redis": True, "database": "postgresql"},
                      {"app_name": "shop", "url_prefix": "/shop", "redis": True}]},
                      "db1": {"private_address": "10.0.0.5", "database": "postgresql"},
                      "mon1": {"private_address": "10.0.0.9"}})
    config = scrape_config(runs["mon1"])
    # With a db server, the apps' Redis is there (docs/workers.md): so are their exporters.
    assert '- targets: ["10.0.0.5:9122"]\n        labels:\n          instance: "@fake/db1"\n          app: "greeting"' \
        in config
    assert '- targets: ["10.0.0.5:9123"]\n        labels:\n          instance: "@fake/db1"\n          app: "shop"' \
        in config
    assert "10.0.0.11:9122" not in config and "10.0.0.11:9123" not in config
    assert '- targets: ["10.0.0.5:9187"]' in config and "10.0.0.11:9187" not in config  # its database is db1's
    assert "/etc/systemd/system/pyinfra-flask-redis-exporter@.service" not in runs["web1"].uploads
    unit = str(runs["db1"].uploads["/etc/systemd/system/pyinfra-flask-redis-exporter@.service"])
    # The password goes in on standard input (opened by systemd), to a user of the exporter's own.
    assert "DynamicUser=yes" in unit and "StandardInput=file:/etc/pyinfra-flask/redis/%i.password" in unit
    # Over TLS to the address Redis listens on, verified by its certificate (readable by that user).
    assert [line for line in str(runs["db1"].uploads["/etc/pyinfra-flask/metrics/redis-shop.env"]).splitlines()
            if not line.startswith("#")] == [
        "REDIS_ADDR=rediss://10.0.0.5:" + re.search(r"^tls-port (\d+)$", str(runs["db1"].uploads[
            "/etc/redis/redis-shop.conf"]), re.M).group(1),
        "REDIS_EXPORTER_TLS_CA_CERT_FILE=/etc/pyinfra-flask/redis-10.0.0.5.crt",
        "REDIS_EXPORTER_WEB_LISTEN_ADDRESS=10.0.0.5:9123"]
    assert "Metrics | Exporters | Keep Debian's prometheus-redis-exporter.service from starting (masked)" in \
        runs["db1"].changed
    # Without a db server, an app server's own Redis has its exporter there.
    alone = deploy({"web1": host_facts("debian12"), "mon1": host_facts("debian12")},
                   groups={"app_servers": ["web1"], "monitoring_servers": ["mon1"]},
                   host_data={"web1": {"private_address": "10.0.0.11", "redis": True},
                              "mon1": {"private_address": "10.0.0.9"}})
    assert str(alone["web1"].uploads["/etc/pyinfra-flask/metrics/redis-greeting.env"]).endswith(
        "REDIS_ADDR=redis://127.0.0.1:" + re.search(r"^port (\d+)$", str(alone["web1"].uploads[
            "/etc/redis/redis-greeting.conf"]), re.M).group(1) + "\nREDIS_EXPORTER_WEB_LISTEN_ADDRESS=10.0.0.11:9122\n")
    assert '- targets: ["10.0.0.11:9122"]' in scrape_config(alone["mon1"])
    db = runs["db1"]
    assert "local   postgres  prometheus  peer" in str(db.uploads["/etc/postgresql/15/main/pg_hba.conf"])
    assert 'DATA_SOURCE_NAME="user=prometheus host=/run/postgresql dbname=postgres sslmode=disable"' in str(
        db.uploads["/etc/default/prometheus-postgres-exporter"])
    assert db.changed["Metrics | Exporters | Create the database role prometheus (pg_monitor: statistics, no data)"] == [
        "(cd / && runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -c 'CREATE ROLE prometheus LOGIN IN ROLE "
        "pg_monitor')"]
    # Without a monitoring host, pg_hba.conf lets no exporter in.
    alone = deploy({"db1": host_facts("debian12"), "web1": host_facts("debian12")},
                   groups={"app_servers": ["web1"], "db_servers": ["db1"]},
                   host_data={"web1": {"private_address": "10.0.0.11", "database": "postgresql"},
                              "db1": {"private_address": "10.0.0.5", "database": "postgresql"}})
    assert "prometheus" not in str(alone["db1"].uploads["/etc/postgresql/15/main/pg_hba.conf"])


def test_the_metrics_reader_gives_the_newest_backups_age(tmp_path):
    reader = load("metrics")
    (tmp_path / "shop-20260101T000000Z.dump").write_text("x")
    (tmp_path / "other-20260101T000000Z.dump").write_text("x")
    tmp_path.chmod(0o700)
    backup = {"kind": "database", "directory": str(tmp_path), "max_age_hours": 26,
              "pattern": r"^shop-\d{8}T\d{6}Z(-\d+)?\.dump$"}
    out = reader.Lines()
    now = (tmp_path / "shop-20260101T000000Z.dump").stat().st_mtime + 3600
    reader.app_metrics(out, {"app": "shop", "backups": [backup]}, {"error": "not answering"}, now)
    text = out.text()
    assert 'pyinfra_flask_backup_age_seconds{app="shop",kind="database"} 3600\n' in text
    assert 'pyinfra_flask_backup_max_age_seconds{app="shop",kind="database"} 93600\n' in text
    assert 'pyinfra_flask_app_healthy{app="shop"} 0\n' in text and 'pyinfra_flask_uwsgi_up{app="shop"} 0\n' in text

"""pgBackRest's repository in an S3 bucket (`pgbackrest_repository = s3`) on real hosts
(marker `features`): a db server, an app server with tests/apps/notespg, a backup host
and an S3 endpoint on a Docker network of the test's own. No S3 service is reachable
from these machines and none is a Debian package: the endpoint is moto's server (PyPI,
an S3 API emulator), over TLS with a certificate of the test's own CA, path-style
(tasks/steps/pgbackrest.py, docs/backups.md). Without a host: tests/steps/test_pgbackrest.py.
"""

from __future__ import annotations

import os
import shlex
import time

import pytest
import requests

from dev import throwaway
from tests.conftest import run_deploy
from tests.hosts.test_backups import ARCHIVE_TIMEOUT, DRILL, SLACK, sql, wait_archived
from tests.hosts.test_database import notespg, notespg_data, ops

BUCKET = "pyinfra-flask-test"
SECRET_VARIABLE = "PYINFRA_FLASK_TEST_S3_SECRET"


NGINX = """server {
    listen 443 ssl;
    ssl_certificate /root/s3.crt;
    ssl_certificate_key /root/s3.key;
    client_max_body_size 0;
    proxy_request_buffering off;
    location / {
        proxy_pass http://127.0.0.1:5000;
        proxy_set_header Host $host;
        proxy_http_version 1.1;
    }
}
"""


def s3_endpoint(s3: throwaway.Host, address: str) -> str:
    """moto's S3 server on `s3` behind Debian's nginx, HTTPS on 443 with a certificate for
    the name `address` (the container's, which Docker's DNS resolves on the test's network;
    pgBackRest checks a name, not an IP address) signed by a CA made here, and the bucket;
    returns the CA's certificate (PEM). nginx terminates TLS because pgBackRest refuses
    moto's own TLS (werkzeug ends its connections without TLS's close_notify: "TLS error
    ... unexpected eof while reading")."""
    s3.exec("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv openssl curl "
            "nginx-light >/dev/null && python3 -m venv /opt/moto && /opt/moto/bin/pip install -q 'moto[server]'")
    s3.exec("cd /root && openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=test-ca -keyout ca.key "
            "-out ca.crt 2>/dev/null && openssl req -newkey rsa:2048 -nodes -subj /CN=s3 -keyout s3.key -out s3.csr "
            f"2>/dev/null && printf 'subjectAltName=DNS:{address}' > san && openssl x509 -req -in s3.csr -CA ca.crt "
            "-CAkey ca.key -CAcreateserial -days 2 -extfile san -out s3.crt 2>/dev/null")
    s3.exec(f"printf %s {shlex.quote(NGINX)} > /etc/nginx/sites-enabled/default && systemctl restart nginx")
    s3.exec("systemd-run --unit moto /opt/moto/bin/moto_server -H 127.0.0.1 -p 5000")
    answer = ""
    for _ in range(60):
        answer = s3.exec(f"curl -s -o /dev/null -w '%{{http_code}}' --cacert /root/ca.crt -X PUT "
                         f"https://{address}/{BUCKET} 2>&1", check=False).strip()
        if answer == "200":
            return s3.exec("cat /root/ca.crt")
        time.sleep(0.5)
    raise AssertionError(f"{answer}\n" + s3.exec("journalctl -u moto -u nginx --no-pager -n 30", check=False))


@pytest.mark.features
def test_the_repository_in_an_s3_bucket_takes_the_wal_a_backup_and_the_restore_drill(
        hosts, deployed_image, bookworm_image, tmp_path, monkeypatch):
    started = time.monotonic()
    network = hosts.network()
    db, app, backup, s3 = hosts.start_many(
        (deployed_image, {"network": network, "cap_add": ("NET_ADMIN",)}), (deployed_image, {"network": network}),
        (bookworm_image, {"network": network}), (bookworm_image, {"network": network}))
    address = s3.name
    secret = "s3-secret-" + os.urandom(12).hex()
    monkeypatch.setenv(SECRET_VARIABLE, secret)
    ca = tmp_path / "s3-ca.crt"
    ca.write_text(s3_endpoint(s3, address))
    data = {**notespg_data(notespg(tmp_path, "v1")), "shared_paths": []}
    s3_data = {"pgbackrest_repository": "s3", "pgbackrest_s3_endpoint": address, "pgbackrest_s3_bucket": BUCKET,
               "pgbackrest_s3_uri_style": "path", "pgbackrest_s3_key": "test-key",
               "pgbackrest_s3_key_secret_from": SECRET_VARIABLE, "pgbackrest_s3_ca_file": str(ca)}
    inventory = throwaway.write_group_inventory(tmp_path / "inventory.py", {
        "db_servers": [(db, {"private_address": db.address(network), "pgbackrest_archive_timeout": ARCHIVE_TIMEOUT,
                             **data})],
        "app_servers": [(app, {"private_address": app.address(network), **data})],
        "backup_servers": [(backup, {"private_address": backup.address(network), **data, **s3_data})]})
    try:
        first = run_deploy(inventory, tmp_path, check=False)
        assert first.returncode == 0, "\n".join(line for line in first.output.splitlines()
                                                if "rror" in line or "ailed" in line or "Traceback" in line)
        print(f"\nfirst deploy (db server, app server, backup host with an S3 repository): {first.seconds:.1f}s")
        second = run_deploy(inventory, tmp_path, "--diff")
        assert second.changed_operations() == [], second.output[-3000:]
        assert secret not in first.output + second.output
        assert backup.exec("stat -c '%U %G %a' /etc/pgbackrest.conf").split() == ["root", "pgbackrest", "640"]
        assert f"repo1-s3-key-secret={secret}" in backup.exec("cat /etc/pgbackrest.conf")
        # WAL reaches the bucket through the backup host; a full backup; the drill restores from the bucket.
        requests.post(app.url + "/notes", data={"text": "in the bucket"}, timeout=10).raise_for_status()
        segment = sql(db, "select pg_walfile_name(pg_current_wal_lsn())")
        print(f"WAL {segment} in the bucket after {wait_archived(db, segment, ARCHIVE_TIMEOUT + SLACK):.1f}s")
        made = ops(inventory, "backup", "now")
        assert made.returncode == 0, made.stdout + made.stderr
        listed = ops(inventory, "backups")
        assert listed.returncode == 0 and "full backup:" in listed.stdout, listed.stdout + listed.stderr
        assert secret not in made.stdout + made.stderr + listed.stdout + listed.stderr
        backup.exec(f"systemctl start {DRILL}")
        last = backup.exec("cat /var/lib/pyinfra-flask-pgbackrest-verify/last")
        assert last.startswith("ok ") and "notespg: " in last, last
        # The objects are in the bucket, not on the backup host's disk.
        assert not backup.exec("ls /var/lib/pgbackrest 2>/dev/null; true").strip()
        objects = s3.exec(f"curl -s --cacert /root/ca.crt https://{address}/{BUCKET}?prefix=pgbackrest/archive/")
        assert "<Key>pgbackrest/archive/main/" in objects, objects[:500]
    except BaseException:
        print(backup.exec("cat /var/log/pgbackrest/* 2>/dev/null | tail -30; journalctl --no-pager -n 30 "
                          f"-u {DRILL}", check=False))
        print(s3.exec("journalctl --no-pager -n 20 -u moto", check=False))
        raise
    finally:
        for h in (db, app, backup, s3):
            hosts.remove(h)
    print(f"test_backups_s3 on real hosts: {time.monotonic() - started:.1f}s")

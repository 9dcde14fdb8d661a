"""An exclusive migration on a real host (one fork of the shared deployed host): requests
through nginx are held while it runs instead of failing, and are then served by the new
release; past the bound they get 503 with Retry-After, and only then; a migration that
fails ends the hold and the live release serves on. The app user can neither make nor
end a hold. Host-less: tests/config/test_exclusive_migration.py, tests/tool/test_hold.py."""

from __future__ import annotations

import json
import time

import pytest
import requests

from tests.conftest import Load, app_variant, run_deploy

pytestmark = pytest.mark.features

TOOL = "/srv/greeting/bin/release-tool"


class Timed(Load):
    """The shared load loop, each request's time and answer noted (a request may wait
    out a hold: a longer timeout)."""

    def __init__(self, url: str):
        super().__init__(url, threads=6, max_seconds=150, interval=0.05)
        self.answers: list[tuple[float, str, str | None, str]] = []  # seconds, status, Retry-After, body

    def _run(self):
        session = requests.Session()
        deadline = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            started = time.monotonic()
            try:
                response = session.get(self.url, timeout=40)
                answer = (str(response.status_code), response.headers.get("Retry-After"), response.text.strip()[:60])
            except requests.RequestException as exc:
                answer = (type(exc).__name__, None, "")
            with self._lock:
                self.answers.append((time.monotonic() - started, *answer))
            self._stop.wait(self.interval)

    def with_status(self, *statuses: str) -> list:
        return [a for a in self.answers if a[1] in statuses]

    def failed(self) -> list:
        return [a for a in self.answers if a[1] != "200"]

    def slowest(self) -> float:
        return max(a[0] for a in self.answers)


def test_an_exclusive_migration_holds_requests_then_the_new_release_serves_them(fork, tmp_path):
    # No setting that changes nginx's config: its reload under this load would close
    # kept-alive connections as a request goes out on one (requests does not retry).
    inventory = fork.write_inventory(tmp_path / "inventory.py", {
        "migrate_exclusive": True, "migrate_hold_timeout": 20, "migrate_commands": ["sleep 5"]})
    old = json.loads(fork.exec(f"{TOOL} list --json"))["live"]

    # 1. Through a deploy: the bound (20 s) outlasts the migration (5 s): nothing fails.
    started = time.monotonic()
    with Timed(fork.url + "/") as load:
        run_deploy(inventory, tmp_path, data={"app_source": str(app_variant(tmp_path, "Hello after the hold"))})
    deploy_seconds = time.monotonic() - started
    new = json.loads(fork.exec(f"{TOOL} list --json"))["live"]
    held = [a for a in load.answers if a[0] > 1.5]
    print(f"\nbound 20 s, migration 5 s (deploy {deploy_seconds:.1f}s): {len(load.answers)} requests, "
          f"{len(load.failed())} failed, {len(held)} held > 1.5 s, slowest {load.slowest():.2f}s")
    assert new != old and not load.failed(), load.failed()[:5]
    assert 5 <= load.slowest() < 15
    # The held requests were answered by the new release.
    assert held and all(a[3] == "Hello after the hold" for a in held), held[:5]
    assert fork.exec(f"{TOOL} hold status").strip() == "HOLD off"
    audit = [json.loads(line) for line in fork.exec("tail -n 2 /srv/greeting/audit.jsonl").splitlines()]
    assert audit[-1]["event"] == "deploy" and audit[-1]["result"] == "ok" and audit[-1]["to"] == new

    # 2. The bound at 2 s (the tool as the deploy runs it, on the live release): 503s
    # with Retry-After, each after 2 s of waiting at least, and nothing else fails.
    with Timed(fork.url + "/") as load:
        fork.exec(f"{TOOL} migrate {new} --hold 2 --retry-after 30 --command='sleep 5'")
    refused = load.with_status("503")
    print(f"bound 2 s, migration 5 s: {len(load.answers)} requests, {len(refused)} x 503 after "
          f"{min(a[0] for a in refused):.2f}-{max(a[0] for a in refused):.2f}s, other failures "
          f"{len(load.failed()) - len(refused)}, slowest {load.slowest():.2f}s")
    assert refused and all(a[0] >= 2 and a[2] == "30" for a in refused), refused[:5]
    assert load.failed() == refused

    # 3. A migration that fails (the release kept from before, not live): the hold ends
    # at once, the live release serves on, the failure is reported.
    with Timed(fork.url + "/") as load:
        out = fork.exec(f"{TOOL} migrate {old} --hold 20 --retry-after 30 --command='sleep 2; exit 3'", check=False)
    print(f"failing migration: {len(load.answers)} requests, {len(load.failed())} failed, slowest "
          f"{load.slowest():.2f}s")
    assert "before-switch command failed (3)" in out and "requests to greeting are no longer held" in out
    assert not load.failed() and {a[3] for a in load.answers} == {"Hello after the hold"}
    assert json.loads(fork.exec(f"{TOOL} list --json"))["live"] == new
    assert fork.exec(f"{TOOL} hold status").strip() == "HOLD off"

    # The app user can neither start a hold nor end one.
    fork.exec("touch /srv/greeting/hold.json")
    for attack in ("rm -f /srv/greeting/hold.json", "sh -c 'echo {} > /srv/greeting/hold.json'"):
        fork.exec(f"runuser -u greeting -- {attack}", check=False)
    assert fork.exec("stat -c %U /srv/greeting/hold.json").strip() == "root"
    fork.exec("rm /srv/greeting/hold.json && runuser -u greeting -- touch /srv/greeting/hold.json", check=False)
    assert fork.exec("test -e /srv/greeting/hold.json && echo yes || echo no").strip() == "no"

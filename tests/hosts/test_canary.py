"""A canary by share of traffic on a real host (one fork of the shared deployed host):
nginx sends its share of new clients (a cookie id, set once) to the new release's own
uWSGI instance for the window; a release that fails a route is rolled back by its numbers
with no failure for the clients not in the canary, a good one is promoted with no failure
for anyone, and a second run changes nothing. Host-less: tests/config/test_canary.py."""

from __future__ import annotations

import http.client
import json
import threading
import time
from urllib.parse import urlsplit

import pytest

from tests.conftest import app_variant, get, run_deploy
from tests.hosts.test_deploy import GREETING

pytestmark = pytest.mark.releases

TOOL = "/srv/greeting/bin/release-tool"
COOKIE = "pyinfra_flask_greeting_client"
SHARE = 10
BROKEN = '\n@app.route("/broken")\ndef broken_route():\n    return "boom", 500\n'


class Clients:
    """Threads of new clients: each one's first request has no cookie (nginx picks its
    version and sets the cookie), then it asks `later` with its cookie."""

    def __init__(self, url: str, later: tuple[str, ...], threads: int = 6, max_seconds: float = 150):
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port
        self.later, self.threads, self.max_seconds = later, threads, max_seconds
        self.clients: list[dict] = []
        self._lock, self._stop = threading.Lock(), threading.Event()

    def _get(self, connection, path: str, cookie: str | None):
        try:
            connection.request("GET", path, headers={"Cookie": f"{COOKIE}={cookie}"} if cookie else {})
            answer = connection.getresponse()
            body = answer.read().decode(errors="replace").strip()
            return answer.status, body, answer.getheader("Set-Cookie") or ""
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            return type(exc).__name__, "", ""

    def _run(self):
        connection = http.client.HTTPConnection(self.host, self.port, timeout=30)
        deadline = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            started = time.time()
            status, body, cookie = self._get(connection, "/", None)
            value = cookie.split(";")[0].partition("=")[2] if cookie.startswith(COOKIE + "=") else None
            client = {"at": started, "first": (status, body), "cookie": value, "later": []}
            for path in self.later if value else ():
                client["later"].append((path, *self._get(connection, path, value)[:2]))
            with self._lock:
                self.clients.append(client)

    def __enter__(self):
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(self.threads)]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def in_window(self, canary: dict, new_body: str) -> tuple[list[dict], list[dict]]:
        """The clients that came while the canary took clients (its window by the host's
        clock, the audit's; a host of this machine shares its clock), and those it got."""
        window = [c for c in self.clients if canary["opened"] <= c["at"] and c["at"] + 0.5 <= canary["closed"]]
        return window, [c for c in window if c["first"][1] == new_body]


def audit_last(host) -> dict:
    return json.loads(host.exec("tail -n 1 /srv/greeting/audit.jsonl"))


def share_of(clients: Clients, entry: dict, new_body: str) -> tuple[list[dict], list[dict], float]:
    window, canary = clients.in_window(entry["canary"], new_body)
    return window, canary, 100.0 * len(canary) / max(1, len(window))


def rolled_back(load: Clients, entry: dict, bad: str, label: str) -> tuple[list[dict], list[dict]]:
    """A canary rolled back under `load`: no client outside it failed or saw the release
    `bad` answers with; its own clients failed on /broken only. (Clients of the window, of
    the canary.)"""
    window, canary, share = share_of(load, entry, bad)
    # The clients not in the canary: every answer as the live release gives it.
    live_clients = [c for c in load.clients if c["first"][1] != bad]
    live_failed = [c for c in live_clients if c["first"][0] != 200 or any(
        status != (404 if path == "/broken" else 200) for path, status, _ in c["later"])]
    # The canary's clients: /broken failed on the canary, nothing else did.
    canary_other = [c for c in canary if any(status != 200 for path, status, _ in c["later"] if path == "/")]
    print(f"\n{label}: {len(load.clients)} new clients, {len(window)} during the canary, {len(canary)} of them on "
          f"it ({share:.1f} %); {len(live_failed)} failed among {len(live_clients)} not in the canary; verdict: "
          f"{entry['canary']['why']}")
    assert live_failed == [], live_failed[:5]
    # ... and all from the live release: one client, one version.
    assert all(body == GREETING for c in live_clients for path, _, body in c["later"] if path == "/")
    assert canary_other == [], canary_other[:5]
    assert any(status == 500 for c in canary for path, status, _ in c["later"] if path == "/broken")
    return window, canary


def promoted(load: Clients, entry: dict, good: str, label: str, before: list[dict], before_canary: list[dict]) -> None:
    """A canary promoted under `load`: nobody failed, each of its clients stayed on it, and
    the share over this window and the one `before` is the setting's, within 3 points."""
    failed = [c for c in load.clients if c["first"][0] != 200 or any(s != 200 for _, s, _ in c["later"])]
    window, canary, share = share_of(load, entry, good)
    # One user, one version: a canary client's later request is on the canary too (the
    # main instance runs the release once promoted).
    moved = [c for c in canary if any(body != good for _, _, body in c["later"])]
    total, on_canary = len(before) + len(window), len(before_canary) + len(canary)
    both = 100.0 * on_canary / max(1, total)
    print(f"{label}: {len(load.clients)} new clients, {len(window)} during the canary, {len(canary)} on it "
          f"({share:.1f} %); {len(failed)} failed; verdict: {entry['canary']['why']}\n"
          f"share over both canaries: {on_canary} of {total} new clients = {both:.2f} % (setting {SHARE} %)")
    assert failed == [], failed[:5]
    assert moved == [], moved[:5]
    assert abs(both - SHARE) <= 3, both


def test_a_canary_rolls_back_a_failing_release_and_promotes_a_good_one(fork, tmp_path):
    inventory = fork.write_inventory(tmp_path / "inventory.py", {
        "canary_share": SHARE, "canary_window": 8, "canary_min_requests": 50, "canary_max_error_rate": 1.0})
    # The split in nginx and the canary's ini, before any load (an nginx reload closes
    # kept-alive connections). The code is the live one's: no release, no canary.
    run_deploy(inventory, tmp_path)
    old = json.loads(fork.exec(f"{TOOL} list --json"))["live"]
    answer = get(fork.url + "/")
    # No canary running: the live release, and no cookie.
    assert answer.text.strip() == GREETING and "Set-Cookie" not in answer.headers
    assert answer.headers["X-Content-Type-Options"] == "nosniff"  # the server's headers, repeated

    # 1. A release whose /broken answers 500: rolled back by its canary.
    bad = app_variant(tmp_path, "Hello from the bad canary", append=BROKEN)
    with Clients(fork.url, later=("/broken", "/")) as load:
        run = run_deploy(inventory, tmp_path, data={"app_source": str(bad)}, check=False)
    assert run.returncode != 0 and "ROLLED BACK by its canary" in run.output, run.output[-4000:]
    assert json.loads(fork.exec(f"{TOOL} list --json"))["live"] == old
    assert fork.exec("ls /srv/greeting/releases").split() == [old], "the rolled back release is removed"
    entry = audit_last(fork)
    assert entry["result"] == "rolled-back" and entry["canary"]["verdict"] == "rolled-back", entry
    assert entry["canary"]["canary"]["5xx"] > 0 and entry["canary"]["live"]["5xx"] == 0, entry
    bad_window, bad_canary = rolled_back(load, entry, "Hello from the bad canary", "bad release")

    # 2. A good release: promoted, nobody fails; the canary's clients stay on it.
    good = app_variant(tmp_path, "Hello from the good canary")
    with Clients(fork.url, later=("/",)) as load:
        run_deploy(inventory, tmp_path, data={"app_source": str(good)})
    new = json.loads(fork.exec(f"{TOOL} list --json"))["live"]
    entry = audit_last(fork)
    assert new != old and entry["result"] == "ok" and entry["canary"]["verdict"] == "promoted", entry
    promoted(load, entry, "Hello from the good canary", "good release", bad_window, bad_canary)
    assert get(fork.url + "/").text.strip() == "Hello from the good canary"
    assert fork.exec("systemctl is-active greeting-canary.service || true").strip() != "active"
    assert fork.exec("ls /etc/pyinfra-flask/canary/greeting").strip() == ""

    # 3. A second run after the finished canary changes nothing.
    second = run_deploy(inventory, tmp_path, data={"app_source": str(good)})
    assert second.changed_operations() == [], second.changed_operations()

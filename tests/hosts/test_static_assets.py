"""Assets of earlier releases stay served (issue 29, part 1): pages rendered before a
switch (by workers still on the old code, or held by a browser) name assets whose
names carry their release's hash; nginx serves them from the kept releases until
they are pruned, never through a link the app user could plant. Host-less half:
tests/tool/test_static_assets.py and tests/config/test_static_links.py."""

from __future__ import annotations

import re
import runpy
import shutil
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import REPO_ROOT, Load, get, run_deploy

pytestmark = pytest.mark.releases

ROOT = "/srv/greeting"
HASHED = REPO_ROOT / "tests/apps/hashed"


def hashed_release(tmp_path: Path, release: str) -> tuple[Path, dict]:
    """A copy of the hashed app whose assets are named for `release`'s content."""
    target = tmp_path / f"hashed-{release}"
    shutil.copytree(HASHED, target)
    manifest = runpy.run_path(str(target / "digest.py"))["write"](target / "static", release)
    return target, manifest


class PageClient:
    """A browser, over and over: a page, then every asset it names. Bounded in
    time; afterwards `.pages`, `.assets`, `.failures` (a page not 200, or no answer)
    and `.missing` (an asset not 200: the page would break)."""

    def __init__(self, url: str, max_seconds: float = 200):
        self.url, self.max_seconds = url, max_seconds
        self.pages: dict[str, int] = {}
        self.assets = 0
        self.seen: set[str] = set()
        self.failures: list[str] = []
        self.missing: list[str] = []
        self._stop = threading.Event()

    def _run(self):
        session = requests.Session()
        deadline = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                page = session.get(self.url + "/", timeout=15)
            except requests.RequestException as exc:
                self.failures.append(f"/: {type(exc).__name__}")
                continue
            if page.status_code != 200:
                self.failures.append(f"/: HTTP {page.status_code}")
                continue
            release = re.search(r"<p>release (\S+)</p>", page.text)
            release = release.group(1) if release else "?"
            self.pages[release] = self.pages.get(release, 0) + 1
            for ref in re.findall(r'(?:href|src)="(/[^"]+)"', page.text):
                try:
                    answer = session.get(self.url + ref, timeout=15)
                    outcome = None if answer.status_code == 200 else f"HTTP {answer.status_code}"
                except requests.RequestException as exc:
                    outcome = type(exc).__name__
                self.assets += 1
                self.seen.add(ref)
                if outcome:
                    self.missing.append(f"{ref} of a page of release {release}: {outcome}")

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        time.sleep(0.5)
        self._stop.set()
        self._thread.join(timeout=30)

    def report(self, label: str) -> str:
        return (f"{label}: pages {self.pages}, {self.assets} assets fetched, {len(self.missing)} missing, "
                f"{len(self.failures)} failed pages")


def nginx_workers(host) -> str:
    return host.exec("pgrep -d, -P \"$(cat /run/nginx.pid)\"").strip()


def test_assets_of_kept_releases_stay_served_through_a_redeploy_and_a_rollback(fork, tmp_path):
    settings = {"app_entry": "hashed:app", "keep_releases": 2}
    one, one_assets = hashed_release(tmp_path, "one")
    two, two_assets = hashed_release(tmp_path, "two")
    run_deploy(fork, tmp_path, data={**settings, "app_source": str(one)})
    # The example app's stylesheet is only in the release before (kept): still served.
    assert get(fork.url + "/static/style.css").status_code == 200
    assert get(fork.url + f"/static/{one_assets['app.js']}").status_code == 200
    workers = nginx_workers(fork)

    with Load(fork.url + "/", threads=2) as load, PageClient(fork.url) as client:
        time.sleep(2)
        run_deploy(fork, tmp_path, data={**settings, "app_source": str(two)})
        time.sleep(2)
        run_deploy(fork, tmp_path, deploy="rollback.py", data={**settings, "app_source": str(two)})
        time.sleep(2)
    print("\n" + load.report("load through a redeploy and a rollback"))
    print(client.report("pages and their assets"))
    assert load.failures == [] and load.sent > 100, load.report("load")
    assert client.failures == [] and client.missing == [], client.report("pages")
    # Pages of both releases were rendered, and every asset they named was there.
    assert client.pages.get("one", 0) > 5 and client.pages.get("two", 0) > 5, client.pages
    assert {f"/static/{one_assets[name]}" for name in ("app.js", "style.css")} <= client.seen
    assert {f"/static/{two_assets[name]}" for name in ("app.js", "style.css")} <= client.seen
    # Release one is live again; a page of release two held by a browser still finds its
    # assets, which the live release does not have.
    assert "<p>release one</p>" in get(fork.url + "/").text
    assert fork.exec(f"test -e {ROOT}/current/static/{two_assets['app.js']} || echo absent").strip() == "absent"
    for ref in client.seen:
        assert get(fork.url + ref).status_code == 200, ref
    # The release of the example app was pruned (keep_releases = 2): its stylesheet,
    # in no kept release, is gone; so is a name no release ever had.
    assert get(fork.url + "/static/style.css").status_code == 404
    assert get(fork.url + "/static/app.00000000.js").status_code == 404
    # No reload of nginx for any of it: the same workers served throughout.
    assert nginx_workers(fork) == workers

    # Below what nginx serves: no link, and nothing the app user can write.
    assert fork.exec(f"find -P {ROOT}/assets/live/ -type l").strip() == ""
    attack = fork.exec(f"runuser -u greeting -- ln -s /etc/shadow {ROOT}/assets/live/shadow.css", check=False)
    assert "Permission denied" in attack, attack
    assert get(fork.url + "/static/shadow.css").status_code == 404

    # Behind load balancers uWSGI serves them (templates/uwsgi.ini.j2): the same lines,
    # run by hand beside the site, one worker that keeps serving through two rebuilds.
    fork.exec(f"mkdir -p {ROOT}/assets/url && ln -sfn {ROOT}/assets/live {ROOT}/assets/url/static")
    fork.exec("runuser -u greeting -- /opt/pyinfra-flask/uwsgi-*/bin/uwsgi --master --processes 1 "
              f"--http-socket 127.0.0.1:9191 --static-map2 /static={ROOT}/assets/url --static-safe {ROOT}/assets/ "
              "--pidfile /tmp/static-probe.pid --daemonize /tmp/static-probe.log && sleep 1")
    try:
        def status(name: str) -> str:
            return fork.exec(f"curl -s -o /dev/null -w '%{{http_code}}' http://127.0.0.1:9191/static/{name}").strip()

        assert status(one_assets["app.js"]) == status(two_assets["style.css"]) == "200"
        for _ in range(2):  # the build this worker first saw is gone after two
            fork.exec(f"{ROOT}/bin/release-tool assets")
        assert status(one_assets["app.js"]) == status(two_assets["style.css"]) == "200"
        assert status("style.css") != "200"  # pruned: falls through (to the app; here none)
    finally:
        fork.exec("kill $(cat /tmp/static-probe.pid)", check=False)

    # A second run of the same settings changes nothing.
    again = run_deploy(fork, tmp_path, data={**settings, "app_source": str(one)})
    assert again.changed_operations() == [], again.changed_operations()

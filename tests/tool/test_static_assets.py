"""The static files nginx serves (files/release_tool/assets.py) against a temporary
root: the live release's first, then the kept releases' newest first, a name no kept
release has absent, and never a link below `live`. On a real host, under load through
a redeploy, a rollback and a prune: tests/hosts/test_static_assets.py."""

from __future__ import annotations

import json
import os
import stat

import pytest

from tasks import tool as host_tool

OLD, MID, NEW = "20261201T100000Z-aaaa", "20261201T110000Z-bbbb", "20261201T120000Z-cccc"


@pytest.fixture
def tool(tmp_path):
    module = host_tool.load()
    module.configure(tmp_path, {"app": "greeting", "keep_releases": 2, "static_dir": "pkg/static"})
    (tmp_path / "releases").mkdir()
    (tmp_path / "shared/uploads").mkdir(parents=True)
    (tmp_path / "shared/uploads/user.txt").write_text("the app user's")
    return module


def make_release(tool, name: str, files: dict[str, str]) -> None:
    path = tool.RELEASES / name
    (path / "pkg/static").mkdir(parents=True)
    (path / tool.META).write_text(json.dumps({"id": name, "venv": "v1"}))
    for relative, text in files.items():
        (path / "pkg/static" / relative).parent.mkdir(parents=True, exist_ok=True)
        (path / "pkg/static" / relative).write_text(text)


def served(tool) -> dict[str, str]:
    live = tool.ROOT / "assets/live"
    found = {}
    for dirpath, dirnames, filenames in os.walk(live):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            assert not os.path.islink(path), f"a link below live: {path}"
        for name in filenames:
            path = os.path.join(dirpath, name)
            found[os.path.relpath(path, live)] = open(path).read()
    return found


def history(tool, *lines):
    for event, release in lines:
        tool.record(event, release)


def test_the_live_release_first_then_the_kept_ones_newest_first(tool):
    make_release(tool, OLD, {"app.1111.js": "old js", "style.css": "old css", "gone/only-old.txt": "old"})
    make_release(tool, MID, {"app.2222.js": "mid js", "style.css": "mid css"})
    make_release(tool, NEW, {"app.3333.js": "new js", "style.css": "new css"})
    history(tool, ("live", OLD), ("live", MID), ("live", NEW))
    tool.rebuild(NEW)
    assert served(tool) == {"app.1111.js": "old js", "app.2222.js": "mid js", "app.3333.js": "new js",
                            "style.css": "new css", "gone/only-old.txt": "old"}
    # The releases' own files (root's), not copies; no name there that no release has.
    live = tool.ROOT / "assets/live"
    assert os.stat(live / "app.1111.js").st_ino == os.stat(tool.RELEASES / OLD / "pkg/static/app.1111.js").st_ino
    # A rollback to MID: its files win, the newer release's stay behind them.
    tool.rebuild(MID)
    assert served(tool)["style.css"] == "mid css" and served(tool)["app.3333.js"] == "new js"


def test_the_order_follows_the_hosts_record_not_names(tool):
    for name in (OLD, MID, NEW):
        make_release(tool, name, {"same.txt": name})
    history(tool, ("live", NEW), ("live", OLD), ("live", MID))
    assert tool.assets.order(MID) == [MID, OLD, NEW]
    assert tool.assets.order(None) == [MID, OLD, NEW]


def test_links_and_special_files_in_a_release_are_never_served(tool):
    make_release(tool, NEW, {"app.js": "js"})
    static = tool.RELEASES / NEW / "pkg/static"
    # A shared path inside the static directory: a link to the app user's directory.
    os.symlink(tool.ROOT / "shared/uploads", static / "uploads")
    os.symlink("/etc/passwd", static / "passwd.txt")
    os.mkfifo(static / "fifo")
    tool.rebuild(NEW)
    assert served(tool) == {"app.js": "js"}
    assert sorted(os.listdir(tool.ROOT / "assets/live")) == ["app.js"]


def test_a_static_path_through_a_link_serves_nothing_of_that_release(tool):
    make_release(tool, OLD, {"old.js": "old"})
    (tool.RELEASES / NEW / "pkg").mkdir(parents=True)
    (tool.RELEASES / NEW / tool.META).write_text("{}")
    os.symlink(tool.ROOT / "shared", tool.RELEASES / NEW / "pkg/static")
    tool.rebuild(NEW)
    assert served(tool) == {"old.js": "old"}


def test_prune_rebuilds_without_the_pruned_releases(tool):
    tool.CONFIG["sandbox"], tool.CONFIG["user"] = [], "nobody"
    (tool.ROOT / "venvs").mkdir()
    make_release(tool, OLD, {"app.1111.js": "old"})
    make_release(tool, MID, {"app.2222.js": "mid"})
    make_release(tool, NEW, {"app.3333.js": "new"})
    history(tool, ("live", OLD), ("live", MID), ("live", NEW))
    tool.switch(NEW)
    tool.rebuild(NEW)
    assert set(served(tool)) == {"app.1111.js", "app.2222.js", "app.3333.js"}
    tool.cmd_prune(None)  # keep_releases = 2
    assert set(served(tool)) == {"app.2222.js", "app.3333.js"}


def test_the_build_before_stays_for_requests_on_their_way_and_older_ones_go(tool):
    make_release(tool, NEW, {"a.js": "a"})
    top = tool.ROOT / "assets"
    tool.rebuild(NEW)
    first = os.readlink(top / "live")
    tool.rebuild(NEW)
    second = os.readlink(top / "live")
    assert sorted(os.listdir(top)) == sorted(["live", first, second])
    (top / "url").mkdir()  # behind balancers, the deploy's way in for uWSGI: kept
    tool.rebuild(NEW)
    assert first not in os.listdir(top) and second in os.listdir(top) and "url" in os.listdir(top)
    mode = os.lstat(top / os.readlink(top / "live")).st_mode
    assert stat.S_IMODE(mode) & 0o022 == 0


def test_no_static_directory_from_the_releases_means_no_merge(tool):
    make_release(tool, NEW, {"a.js": "a"})
    tool.rebuild(NEW)
    tool.CONFIG["static_dir"] = ""
    tool.rebuild(NEW)
    assert not (tool.ROOT / "assets").exists()


def test_assets_dir_that_is_not_roots_is_refused(tool, tmp_path):
    make_release(tool, NEW, {"a.js": "a"})
    os.symlink(tmp_path / "shared", tool.ROOT / "assets")
    with pytest.raises(tool.Failure, match="refusing"):
        tool.rebuild(NEW)
    assert not (tmp_path / "shared/live").exists()

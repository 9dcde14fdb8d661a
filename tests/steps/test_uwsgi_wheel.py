"""The laptop's cache of uWSGI wheels without a host (tasks/steps/uwsgi_wheel.py): the key
a host reports, the first host compiling and the wheel coming back, later hosts getting
the kept wheel checked by its hash on the host, and wheels that are not what was kept
never uploaded. On a real host: tests/hosts/test_deploy.py."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from tasks.steps import uwsgi_wheel
from tasks.steps.uwsgi_wheel import WheelKey
from tests.roles.test_distros import deploy_one

KEY = "debian-12-x86_64"
NAME = "uWSGI-2.0.31-cp311-cp311-linux_x86_64.whl"


def make_wheel(path: Path, version: str = "2.0.31", tag: str = "cp311-cp311-linux_x86_64", name: str = "uWSGI") -> Path:
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(f"{name}-{version}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        wheel.writestr(f"{name}-{version}.dist-info/WHEEL", f"Wheel-Version: 1.0\nRoot-Is-Purelib: false\nTag: {tag}\n")
        wheel.writestr(f"{name}-{version}.data/scripts/uwsgi", b"\x7fELF uwsgi")
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("PYINFRA_FLASK_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def kept(cache: Path, tmp_path: Path) -> Path:
    uwsgi_wheel.keep(str(make_wheel(tmp_path / "built.whl")), "2.0.31", KEY)
    return cache / "uwsgi" / "2.0.31" / KEY / NAME


def test_the_key_is_release_architecture_and_python():
    # Read on a bare host, before python3 is installed.
    assert WheelKey().process(["debian-12", "x86_64"]) == KEY
    assert WheelKey().process(["ubuntu-24.04", "aarch64"]) == "ubuntu-24.04-aarch64"
    assert WheelKey().process(["debian-13"]) is None  # no key: no cache
    assert WheelKey().process(["debian-13", "x86_64; rm -rf /"]) is None


def test_cache_location_and_off(monkeypatch, tmp_path):
    monkeypatch.delenv("PYINFRA_FLASK_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert uwsgi_wheel.cache_root() == tmp_path / "pyinfra-flask"
    monkeypatch.setenv("PYINFRA_FLASK_CACHE", str(tmp_path / "moved"))
    assert uwsgi_wheel.cache_root() == tmp_path / "moved"
    monkeypatch.setenv("PYINFRA_FLASK_CACHE", "off")
    assert uwsgi_wheel.cache_root() is None


def test_first_host_compiles_and_the_wheel_comes_back(cache):
    run = deploy_one("debian12", WheelKey=KEY, UwsgiBuild=None)
    install = run.named("uWSGI | Install uWSGI")
    assert list(install) == ["uWSGI | Install uWSGI 2.0.31 with PCRE and SSL (was: none), compiled"]
    script = next(iter(install.values()))[0]
    assert "pip wheel --no-input --disable-pip-version-check --no-deps --wheel-dir /var/cache/pyinfra-flask/uwsgi/2.0.31 uwsgi==2.0.31" in script
    assert "ln -f /var/cache/pyinfra-flask/uwsgi/2.0.31/*.whl /var/cache/pyinfra-flask/uwsgi/2.0.31/built.whl" in script
    assert "built WITHOUT PCRE or SSL" in script
    assert list(run.named("uWSGI | Download")) == [
        f"uWSGI | Download the uWSGI wheel built for {KEY} to this machine's cache"]
    assert list(run.named("uWSGI | Keep")) == [f"uWSGI | Keep the uWSGI wheel built for {KEY} for the next hosts"]
    assert not run.named("uWSGI | Upload")


def test_later_hosts_install_the_kept_wheel_checked_on_the_host(cache, tmp_path):
    wheel = kept(cache, tmp_path)
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    assert (wheel.parent / f"{NAME}.sha256").read_text() == f"{digest}  {NAME}\n"
    run = deploy_one("debian12", WheelKey=KEY, UwsgiBuild=None)
    assert f"upload /var/cache/pyinfra-flask/uwsgi/{NAME}" in run.changed[
        "uWSGI | Upload the uWSGI wheel kept on this machine for " + KEY]
    assert "chmod 700 /var/cache/pyinfra-flask/uwsgi" in run.changed["uWSGI | Create /var/cache/pyinfra-flask/uwsgi"]
    [(name, [script])] = run.named("uWSGI | Install uWSGI").items()
    assert name == "uWSGI | Install uWSGI 2.0.31 with PCRE and SSL (was: none) from this machine's wheel cache"
    # The host's python3 must be the wheel's, or it compiles.
    assert script.index('if [ "$python" != cp311 ]; then') < script.index("compiling uWSGI")
    check = script.index(f"echo '{digest}  /var/cache/pyinfra-flask/uwsgi/{NAME}' | sha256sum --check --quiet --strict")
    assert check < script.index(f"--no-index --no-deps --force-reinstall /var/cache/pyinfra-flask/uwsgi/{NAME}")
    assert not run.named("uWSGI | Download")
    # Another release, architecture or Python is another key: it compiles.
    other = deploy_one("debian13", WheelKey="debian-13-x86_64", UwsgiBuild=None)
    assert list(other.named("uWSGI | Install uWSGI")) == [
        "uWSGI | Install uWSGI 2.0.31 with PCRE and SSL (was: none), compiled"]


def test_a_wheel_that_is_not_what_was_kept_is_never_uploaded(cache, tmp_path, caplog):
    wheel = kept(cache, tmp_path)
    with zipfile.ZipFile(wheel, "a") as tampered:
        tampered.writestr("uWSGI-2.0.31.data/scripts/extra", b"#!/bin/sh\nevil\n")
    run = deploy_one("debian12", WheelKey=KEY, UwsgiBuild=None)
    assert not run.named("uWSGI | Upload")
    assert list(run.named("uWSGI | Install uWSGI")) == [
        "uWSGI | Install uWSGI 2.0.31 with PCRE and SSL (was: none), compiled"]
    assert f"{wheel} is not used (it does not match the hash recorded when it was kept); remove it" in caplog.text


@pytest.mark.parametrize(("version", "tag", "name", "why"), [
    ("2.0.30", "cp311-cp311-linux_x86_64", "uWSGI", "it is uWSGI 2.0.30, not uWSGI 2.0.31"),
    ("2.0.31", "py3-none-any", "uWSGI", "is not one CPython's on linux_x86_64"),
    ("2.0.31", "cp311-cp311-linux_aarch64", "uWSGI", "is not one CPython's on linux_x86_64"),
    ("2.0.31", "cp311-cp311-linux_x86_64", "gunicorn", "it is gunicorn 2.0.31"),
])
def test_only_a_uwsgi_wheel_for_its_key_is_kept(cache, tmp_path, caplog, version, tag, name, why):
    downloaded = make_wheel(tmp_path / "built.whl", version, tag, name)
    uwsgi_wheel.keep(str(downloaded), "2.0.31", KEY)
    assert why in caplog.text
    assert not list((cache / "uwsgi").rglob("*.whl"))
    assert not downloaded.exists()  # the download is never left behind


def test_cache_off_compiles_without_asking_the_key(monkeypatch):
    monkeypatch.setenv("PYINFRA_FLASK_CACHE", "off")

    def no_key():
        raise AssertionError("the key is not read with the cache off")

    run = deploy_one("debian12", WheelKey=no_key, UwsgiBuild=None)
    assert list(run.named("uWSGI | Install uWSGI")) == [
        "uWSGI | Install uWSGI 2.0.31 with PCRE and SSL (was: none), compiled"]
    assert not run.named("uWSGI | Download")

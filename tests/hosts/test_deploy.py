"""The foundation: a bare Debian host converged to nginx -> uWSGI -> Flask by the real CLI."""

from __future__ import annotations

import hashlib
import io
import re
import shlex
import shutil
import tarfile

import pytest
import testinfra

from tasks.steps.uwsgi import _wheel_script
from tasks.steps.uwsgi_wheel import Wheel
from tests.conftest import REPO_ROOT, RUN_DIR, WHEEL_CACHE, get, run_deploy

pytestmark = pytest.mark.e2e

GREETING = (REPO_ROOT / "files/greeting/greeting.py").read_text().split('GREETING = "')[1].split('"')[0]
SOCKET = "/run/greeting/uwsgi.sock"
UWSGI_VENV = "/opt/pyinfra-flask/uwsgi-2.0.31"


def uwsgi_requests(host, app: str) -> int:
    """Requests uWSGI's workers have served so far, from its stats socket."""
    script = ("import json, socket; s = socket.socket(socket.AF_UNIX); s.connect('/run/%s/stats.sock'); "
              "data = b''.join(iter(lambda: s.recv(65536), b'')); "
              "print(sum(w['requests'] for w in json.loads(data)['workers']))" % app)
    return int(host.exec(f'python3 -c "{script}"'))


@pytest.fixture(scope="module")
def infra(deployed):
    return testinfra.get_host(f"docker://{deployed.host.container.id}")


def test_first_deploy_serves_the_app_through_nginx(deployed):
    response = get(deployed.host.url + "/")
    assert response.status_code == 200
    assert response.text.strip() == GREETING
    assert response.headers["Server"].startswith("nginx")
    # The app really runs under uWSGI: the process that answered is a uWSGI worker of the app user.
    info = get(deployed.host.url + "/info").json()
    assert info["host"] == deployed.host.name
    assert deployed.host.exec(f"ps -o comm=,user= -p {info['pid']}").split() == ["uwsgi", "greeting"]


def test_static_files_are_served_by_nginx_not_uwsgi(deployed):
    response = get(deployed.host.url + "/static/style.css")
    assert response.status_code == 200
    assert response.text == (REPO_ROOT / "files/greeting/static/style.css").read_text()
    served = uwsgi_requests(deployed.host, "greeting")
    for _ in range(5):
        assert get(deployed.host.url + "/static/style.css").status_code == 200
    assert uwsgi_requests(deployed.host, "greeting") == served, "uWSGI served none of them"
    get(deployed.host.url + "/")
    assert uwsgi_requests(deployed.host, "greeting") == served + 1
    access_log = deployed.host.exec("cat /var/log/nginx/greeting.access.log")
    assert "GET /static/style.css" in access_log


def test_services_are_active_and_enabled(infra):
    for name in ("greeting", "nginx"):
        service = infra.service(name)
        assert service.is_running, name
        assert service.is_enabled, name
    assert infra.process.filter(user="greeting", comm="uwsgi"), "uWSGI must run as the app user"
    assert not infra.process.filter(user="root", comm="uwsgi")


def test_socket_is_reachable_by_nginx_only(infra):
    socket = infra.file(SOCKET)
    assert socket.is_socket
    assert (socket.user, socket.group, socket.mode) == ("greeting", "greeting", 0o660)
    run_dir = infra.file("/run/greeting")
    assert (run_dir.user, run_dir.group, run_dir.mode) == ("greeting", "greeting", 0o750)
    assert "greeting" in infra.user("www-data").groups
    # nginx's user can open it; any other unprivileged user cannot even reach it.
    assert infra.run(f"runuser -u www-data -- test -w {SOCKET}").rc == 0
    assert infra.run(f"runuser -u nobody -- test -e {SOCKET}").rc != 0
    # The app user owns no code: it cannot rewrite itself.
    assert infra.run("runuser -u greeting -- test -w /srv/greeting/current/greeting.py").rc != 0
    assert infra.user("greeting").shell == "/usr/sbin/nologin"


def test_uwsgi_has_pcre(infra):
    assert "-DUWSGI_PCRE" in infra.check_output("/opt/pyinfra-flask/uwsgi-2.0.31/bin/uwsgi --cflags")
    journal = infra.check_output("journalctl -u greeting.service --no-pager")
    assert "no internal routing support" not in journal
    assert "Starting uWSGI 2.0.31" in journal


def test_nginx_config_is_valid(infra):
    result = infra.run("nginx -t")
    assert result.rc == 0, result.stderr
    assert not infra.file("/etc/nginx/sites-enabled/default").exists
    site = infra.file("/etc/nginx/sites-available/greeting.conf").content_string
    assert f"uwsgi_pass unix:{SOCKET};" in site
    assert not re.search(r"^\s*proxy_pass\s", site, re.M), "uwsgi socket needs uwsgi_pass, not proxy_pass"


def test_first_run_reported_changes_and_second_run_none(deployed, tmp_path):
    assert len(deployed.first_run.changed_operations()) > 10
    second = run_deploy(deployed.host, tmp_path)
    assert second.changed_operations() == [], second.output[-4000:]
    grand = second.results()["Grand total"]
    assert grand[0] == "-" and grand[1] == "-"
    print(f"\nno-op re-run: {second.seconds:.1f}s")


def test_dry_diff_shows_the_change_and_touches_nothing(deployed, tmp_path):
    host = deployed.host
    ini_before = host.exec("sha256sum /srv/greeting/uwsgi.ini")
    pid_before = host.exec("systemctl show -p MainPID --value greeting.service")
    # The default is one worker per CPU (at least 2), read from the host's facts.
    workers = min(16, max(2, int(host.exec("nproc"))))
    run = run_deploy(host, tmp_path, "--dry", "--diff", data={"uwsgi_processes": workers + 1})
    assert re.search(rf"^\s*- processes = {workers}$", run.output, re.M), run.output[-3000:]
    assert re.search(rf"^\s*\+ processes = {workers + 1}$", run.output, re.M)
    assert host.exec("sha256sum /srv/greeting/uwsgi.ini") == ini_before
    assert host.exec("systemctl show -p MainPID --value greeting.service") == pid_before
    assert f"processes = {workers}\n" in host.exec("cat /srv/greeting/uwsgi.ini")


def test_failed_health_check_names_the_host(deployed, tmp_path):
    run = run_deploy(deployed.host, tmp_path, data={"healthcheck_path": "/no-such-page"}, check=False)
    assert run.returncode != 0
    assert f"HEALTH CHECK FAILED on host {deployed.host.name}" in run.output
    assert "answered 404, expected 200" in run.output


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"nginx_port": 70000}, "nginx_port = 70000"),
        ({"app_entry": "wsgi"}, "app_entry = 'wsgi': must be 'module:callable'"),
        ({"uwsgi_procesess": 8}, "uwsgi_procesess: unknown setting (did you mean 'uwsgi_processes'?)"),
        ({"app_source": "files/no-such-app"}, "app_source: 'files/no-such-app' is not a directory"),
    ],
)
def test_bad_settings_fail_before_any_host_is_touched(bare_host, tmp_path, data, message):
    bare_host.exec("touch /tmp/before-deploy")
    run = run_deploy(bare_host, tmp_path, data=data, check=False)
    assert run.returncode != 0
    assert message in run.output, run.output[-3000:]
    assert "nothing was changed on any host" in run.output
    assert "Beginning operation run" not in run.output
    assert bare_host.exec("dpkg-query -W nginx 2>&1", check=False).startswith("dpkg-query: no packages")
    assert bare_host.exec("find /etc /srv /usr /var/lib/dpkg -newer /tmp/before-deploy") == ""


def test_rejected_nginx_config_keeps_the_previous_one_serving(fork, tmp_path):
    site = "/etc/nginx/sites-available/greeting.conf"
    good_site = fork.exec(f"cat {site}")
    # Someone left a broken file in nginx's config: nginx -t fails for any change.
    fork.exec("echo 'this is not nginx syntax' > /etc/nginx/conf.d/broken.conf")
    run = run_deploy(fork, tmp_path, data={"nginx_client_max_body_size": "10M"}, check=False)
    assert run.returncode != 0
    assert "[emerg]" in run.output and "broken.conf" in run.output, run.output[-3000:]
    assert "the previous config keeps serving" in run.output
    assert fork.exec(f"cat {site}") == good_site
    assert get(fork.url + "/", retries=5).status_code == 200

    # Once the broken file is gone, the same deploy goes through.
    fork.exec("rm /etc/nginx/conf.d/broken.conf")
    run_deploy(fork, tmp_path, data={"nginx_client_max_body_size": "10M"})
    assert "client_max_body_size 10M;" in fork.exec(f"cat {site}")
    assert get(fork.url + "/").status_code == 200


def _no_wheel_cache(patch: pytest.MonkeyPatch) -> None:
    """Deploys with uWSGI's wheels off (PYINFRA_FLASK_CACHE=off), whose fact lists then go
    to $XDG_CACHE_HOME: the run's own directory, not this machine's cache."""
    patch.setenv("PYINFRA_FLASK_CACHE", "off")
    patch.setenv("XDG_CACHE_HOME", str(RUN_DIR / "xdg-cache"))


@pytest.fixture(scope="module")
def no_pcre(hosts, deployed_image, tmp_path_factory):
    """One fork where uWSGI cannot get PCRE, deployed once with no wheel kept on this
    machine: the deploy that must stop (its run, and whether uWSGI is left). The build
    it tried leaves a uWSGI wheel without PCRE in root's pip cache, which the rebuild
    test then installs rather than compile uWSGI without PCRE once more (three
    compilations of uWSGI for the two tests, 125 s of a fresh-clone run; now two)."""
    host = hosts.from_spare(deployed_image)
    with pytest.MonkeyPatch.context() as patch:
        _no_wheel_cache(patch)
        # pcre-config is how uWSGI's build finds PCRE; a broken one means no PCRE at all.
        host.exec("printf '#!/bin/sh\\nexit 1\\n' > /usr/local/bin/pcre-config && chmod +x /usr/local/bin/pcre-config")
        _remove_uwsgi(host)  # installed from a wheel, pip removes its binary too
        # A host that never built uWSGI: no wheel in pip's cache (the deployed host's is
        # kept aside for the rebuild test) or root's build directory.
        host.exec("mkdir -p /root/.cache/pip && mv /root/.cache/pip /root/.pip-cache-of-the-deploy && "
                  "rm -rf /var/cache/pyinfra-flask/uwsgi")
        run = run_deploy(host, tmp_path_factory.mktemp("no-pcre"), check=False)
    uwsgi_left = host.exec(f"test -e {UWSGI_VENV}/bin/uwsgi || echo gone").strip()
    yield host, run, uwsgi_left
    hosts.remove(host)


def test_uwsgi_that_cannot_get_pcre_stops_the_deploy(no_pcre):
    _, run, uwsgi_left = no_pcre
    assert run.returncode != 0
    assert "built WITHOUT PCRE or SSL" in run.output, run.output[-3000:]
    assert uwsgi_left == "gone"


def test_uwsgi_built_without_pcre_is_rebuilt(no_pcre, tmp_path, monkeypatch):
    # The tutorials' trap: a uWSGI compiled without the PCRE headers (the one the build
    # above compiled with a broken pcre-config, from root's pip cache), on a host
    # otherwise as deployed: pcre-config working, pip's cache the deploy's own.
    fork, _, _ = no_pcre
    _no_wheel_cache(monkeypatch)  # as with no wheel kept on this machine
    [wheel] = fork.exec("find /root/.cache/pip -name 'uWSGI-2.0.31-*.whl'").split()
    fork.exec(f"{UWSGI_VENV}/bin/pip install -q --no-index --no-deps --force-reinstall {wheel}")
    fork.exec("rm -rf /root/.cache/pip /usr/local/bin/pcre-config && mv /root/.pip-cache-of-the-deploy /root/.cache/pip")
    assert "-DUWSGI_PCRE" not in fork.exec("/opt/pyinfra-flask/uwsgi-2.0.31/bin/uwsgi --cflags")
    run = run_deploy(fork, tmp_path)
    assert "Install uWSGI 2.0.31 with PCRE and SSL (was: 2.0.31 without PCRE)" in run.output
    assert "-DUWSGI_PCRE" in fork.exec("/opt/pyinfra-flask/uwsgi-2.0.31/bin/uwsgi --cflags")
    assert get(fork.url + "/").status_code == 200


def _remove_uwsgi(host):
    host.exec(f"{UWSGI_VENV}/bin/pip uninstall -y -q uwsgi && rm -f {UWSGI_VENV}/bin/uwsgi")


def test_a_host_without_uwsgi_installs_the_wheel_the_first_host_built(deployed, fork, tmp_path):
    # The session's first bookworm deploy compiled uWSGI and kept its wheel on this machine.
    [wheel] = (WHEEL_CACHE / "uwsgi" / "2.0.31" / "debian-12-x86_64").glob("*.whl")
    assert re.fullmatch(r"uWSGI-2\.0\.31-cp311-cp311-linux_x86_64\.whl", wheel.name)
    _remove_uwsgi(fork)
    fork.exec("printf '#!/bin/sh\\nexit 1\\n' > /usr/local/bin/gcc && chmod +x /usr/local/bin/gcc")  # no compiling
    run = run_deploy(fork, tmp_path)
    assert "Install uWSGI 2.0.31 with PCRE and SSL (was: none) from this machine's wheel cache" in run.output
    assert "compiled" not in run.output
    flags = fork.exec(f"{UWSGI_VENV}/bin/uwsgi --cflags")
    assert "-DUWSGI_PCRE" in flags and "-DUWSGI_SSL" in flags
    # The uploaded wheel is gone once installed; root's directory stays root's.
    assert fork.exec("ls /var/cache/pyinfra-flask/uwsgi/*.whl 2>/dev/null; stat -c %a /var/cache/pyinfra-flask/uwsgi",
                     check=False).split() == ["700"]
    assert get(fork.url + "/").status_code == 200


def test_a_wheel_that_arrives_changed_is_not_installed(fork, tmp_path):
    """What the host runs when the wheel it received is not the one this machine kept."""
    [kept] = (WHEEL_CACHE / "uwsgi" / "2.0.31" / "debian-12-x86_64").glob("*.whl")
    _remove_uwsgi(fork)
    uploaded = f"/var/cache/pyinfra-flask/uwsgi/{kept.name}"
    fork.exec("mkdir -p -m 700 /var/cache/pyinfra-flask/uwsgi")
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        tar.add(kept, arcname=kept.name)
    fork.container.put_archive("/var/cache/pyinfra-flask/uwsgi", archive.getvalue())
    fork.exec(f"printf tampered >> {uploaded}")
    app = type("App", (), {"uwsgi_venv": UWSGI_VENV, "uwsgi_version": "2.0.31"})()
    script = _wheel_script(app, Wheel(kept, hashlib.sha256(kept.read_bytes()).hexdigest()), uploaded)
    out = fork.exec(f"bash -c {shlex.quote(script)} 2>&1; echo rc=$?", check=False)
    assert "does not match its SHA-256" in out and out.strip().endswith("rc=1"), out
    assert fork.exec(f"test -e {UWSGI_VENV}/bin/uwsgi || test -e {uploaded} || echo gone").strip() == "gone"


def test_application_factory_entry_point_and_its_static_folder(fork, tmp_path):
    # A package app without any static folder: the default must not refuse it.
    factory = {"app_source": "tests/apps/factory", "app_entry": "factoryapp:create_app()"}
    run_deploy(fork, tmp_path, data=factory)
    response = get(fork.url + "/")
    assert response.status_code == 200
    assert response.text == "made by create_app()\n"
    assert "application = create_app()" in fork.exec("cat /srv/greeting/current/.deploy-loader.py")
    assert "location /static/" not in fork.exec("cat /etc/nginx/sites-available/greeting.conf")

    # The same package with its static folder where Flask keeps it (factoryapp/static):
    # found, and served by nginx (its `expires`), not by the app.
    app = tmp_path / "factory"
    shutil.copytree(REPO_ROOT / "tests/apps/factory", app)
    (app / "factoryapp/static").mkdir()
    (app / "factoryapp/static/app.css").write_text("body { color: teal }\n")
    run_deploy(fork, tmp_path, data={**factory, "app_source": str(app)})
    response = get(fork.url + "/static/app.css")
    assert response.status_code == 200 and response.text == "body { color: teal }\n"
    assert response.headers.get("Cache-Control") == "max-age=2592000", response.headers
    # nginx serves it from root's merge of the kept releases' static folders.
    site = fork.exec("cat /etc/nginx/sites-available/greeting.conf")
    assert "alias /srv/greeting/assets/live/;" in site, site
    assert fork.exec("cat /srv/greeting/assets/live/app.css") == "body { color: teal }\n"


def test_app_that_fails_to_import_fails_the_deploy_with_its_traceback(fork, tmp_path):
    live = fork.exec("readlink /srv/greeting/current")
    run = run_deploy(fork, tmp_path, data={"app_entry": "wsgi:no_such_callable"}, check=False)
    assert run.returncode != 0
    assert "ImportError: cannot import name 'no_such_callable' from 'wsgi'" in run.output, run.output[-4000:]
    assert "failed its check before the switch: the app does not import" in run.output
    # Refused before the switch: the live release never changed and still serves.
    assert fork.exec("readlink /srv/greeting/current") == live
    assert get(fork.url + "/").text.strip() == GREETING


def test_host_restart_brings_everything_back(deployed):
    # Last in this module: the other tests share this host.
    deployed.host.restart()
    response = get(deployed.host.url + "/", retries=30)
    assert response.status_code == 200
    assert response.text.strip() == GREETING

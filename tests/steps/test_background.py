"""Workers, scheduled jobs and the local Redis without a host (tasks/steps/background.py,
docs/workers.md): the settings refused before any host is touched, the units as rendered
and the operations against mocked facts (tests/roles/test_distros.py's fake hosts), the
release tool restarting workers only after the health gate. On a real host:
tests/hosts/test_workers.py."""

from __future__ import annotations

import json

import pytest
from pyinfra.api.exceptions import DeployError

from tasks import tool as host_tool
from tasks.config.app import App
from tasks.steps.background import REDIS_TEMPLATE_UNIT, BackgroundUnits, RedisInstances, systemd_command
from tasks.config.settings import Settings
from tests.conftest import REPO_ROOT
from tests.roles.test_distros import LB_DATA, deploy, host_facts


WORKERS = {"celery": {"command": "celery -A tasks worker --loglevel=INFO", "processes": 2, "stop_timeout": 45}}


JOBS = {"report": {"command": "python report.py >> $HOME/x", "schedule": "*:*:0/5", "timeout": 60,
                   "randomized_delay": 3}}


def one(**data):
    return deploy({"web": host_facts("debian12")}, **data)["web"]


def refused(**data) -> str:
    with pytest.raises(DeployError) as info:
        one(**data)
    return str(info.value)


@pytest.mark.parametrize(("data", "line"), [
    ({"jobs": {"nightly": {"command": "true", "schedule": "every night"}}},
     "jobs.nightly.schedule = 'every night': must be a systemd calendar event"),
    ({"jobs": {"nightly": {"command": "true", "schedule": "*-*-* 25:00"}}}, "jobs.nightly.schedule = '*-*-* 25:00'"),
    ({"workers": {"Celery": {"command": "celery"}}}, "workers.Celery = 'Celery': must be 1-31 characters"),
    ({"workers": {"celery": {"command": "celery", "processes": 0}}},
     "workers.celery.processes = 0: Input should be greater than or equal to 1"),
    ({"workers": {"celery": {"command": "a\nb"}}}, "workers.celery.command = 'a\\nb'"),
    ({"workers": {"celery": {"comand": "celery"}}}, "workers.celery.comand = 'celery': Extra inputs"),
    ({"workers": {"x": {"command": "a"}}, "jobs": {"x": {"command": "b", "schedule": "daily"}}},
     "jobs: x is also the name of a worker"),
])
def test_bad_worker_and_job_settings_are_refused_naming_the_key(data, line):
    message = refused(**data)
    assert "nothing was changed" in message and line in message


@pytest.mark.parametrize("schedule", ["daily", "hourly", "*:*:0/5", "*:0/15", "Mon..Fri 08:30", "Sat,Sun 03:00:00",
                                      "*-*-* 03:00:00", "*-*-01 04:00 UTC", "2027-01-01", "*-*-* 0..6:00/30"])
def test_calendar_events_systemd_reads_are_accepted(schedule):
    from tasks.config.settings.values import calendar_event

    assert calendar_event(schedule) == schedule


def test_jobs_host_must_be_an_app_server():
    message = refused(jobs=JOBS, jobs_host="nowhere")
    assert "jobs_host = 'nowhere': not an app server of the inventory (@fake/web)" in message


def test_local_redis_with_workers_on_several_app_servers_is_refused():
    facts = {name: host_facts("debian12") for name in ("web1", "web2", "lb1")}
    with pytest.raises(DeployError) as info:
        deploy(facts, groups={"app_servers": ["web1", "web2"], "load_balancers": ["lb1"]}, host_data=LB_DATA,
               workers=WORKERS, redis=True)
    assert "redis = True: Redis is local to each app server" in str(info.value)


def test_a_unit_of_someone_elses_under_a_job_name_stops_the_run():
    foreign = lambda unit, marker=None: "/lib/systemd/system/shop-server.service" if unit == "shop-server.service" else None  # noqa: E731
    with pytest.raises(DeployError) as info:
        deploy({"web": host_facts("debian12", ForeignUnit=foreign)}, app_name="shop",
               jobs={"server": {"command": "true", "schedule": "daily"}})
    assert ("jobs: the host already has shop-server.service (/lib/systemd/system/shop-server.service), which "
            "this deploy did not write for shop; name the job something else") in str(info.value)


def test_the_foreign_unit_fact_knows_our_background_units():
    from tasks.run.preflight import ForeignUnit

    command = ForeignUnit().command("greeting-report.service", marker="pyinfra-flask background unit of app greeting)")
    assert "'pyinfra-flask background unit of app greeting)'" in command


def test_worker_and_job_units_follow_the_live_release_with_the_apps_user_sandbox_and_environment():
    run = one(workers=WORKERS, jobs=JOBS, redis=True, app_env_from=["HOME"])
    worker = run.uploads["/etc/systemd/system/greeting-celery@.service"]
    web = run.uploads["/etc/systemd/system/greeting.service"]
    for line in ("User=greeting", "WorkingDirectory=/srv/greeting/current",
                 "Environment=PATH=/srv/greeting/current/.venv/bin:", "EnvironmentFile=/srv/greeting/secrets/app.env",
                 "EnvironmentFile=/srv/greeting/secrets/redis.env", "KillSignal=SIGTERM", "TimeoutStopSec=45",
                 "Restart=on-failure", 'ExecStart=/bin/sh -c "celery -A tasks worker --loglevel=INFO"',
                 "ReadWritePaths=-/srv/greeting/shared/instance", "After=network.target redis-server@greeting.service"):
        assert line in worker, line
    # The same sandbox and environment as the web app's unit.
    for line in web.splitlines():
        if line.startswith(("Protect", "NoNewPrivileges", "CapabilityBoundingSet", "UMask", "EnvironmentFile")):
            assert line in worker.splitlines(), line
    job = run.uploads["/etc/systemd/system/greeting-report.service"]
    assert "Type=oneshot" in job and "TimeoutStartSec=60" in job and "[Install]" not in job
    assert 'ExecStart=/bin/sh -c "python report.py >> $$HOME/x"' in job
    timer = run.uploads["/etc/systemd/system/greeting-report.timer"]
    for line in ("OnCalendar=*:*:0/5", "Persistent=true", "RandomizedDelaySec=3", "Unit=greeting-report.service"):
        assert line in timer
    assert run.changed["Workers and jobs | Start greeting-celery@1.service at boot"] == [
        "systemctl enable greeting-celery@1.service"]
    assert "Workers and jobs | Start greeting-celery@2.service at boot" in run.changed
    assert run.changed["Workers and jobs | Start the timer greeting-report.timer (and at boot)"] == [
        "systemctl enable --now greeting-report.timer"]
    # Started after the release went live; the release tool restarts them on later releases.
    names = list(run.changed)
    activation = max(i for i, n in enumerate(names) if n.startswith("Release activation |"))
    assert names.index("Workers onto the live release | Start greeting's worker celery") > activation
    settings = json.loads(run.uploads["/srv/greeting/release-tool.json"])
    assert settings["workers"] == ["greeting-celery@1.service", "greeting-celery@2.service"]


def test_redis_password_is_made_on_the_host_and_never_in_the_output():
    run = one(workers=WORKERS, redis=True)
    redis = run.named("Redis")
    assert "Redis | Install redis-server" in redis
    commands = "\n".join(c for cs in run.changed.values() for c in cs)
    assert "user default on >%s ~* %s+@all -@admin" in commands
    assert "$(cat /etc/pyinfra-flask/redis/greeting.password)" in commands
    assert "umask 077" in redis["Redis | Generate greeting's Redis password (on the host, root-only)"][0]
    port = App.resolve(Settings()).redis_port
    [url] = run.changed["Redis URL | Hand greeting its REDIS_URL (/srv/greeting/secrets/redis.env, root-only)"]
    assert f"REDIS_URL=\"redis://default:%s@127.0.0.1:{port}/0\"" in url
    # A fake host is no container: no PrivateUsers drop-in.
    assert "Redis | Let redis-server@ start in this container (PrivateUsers=no)" not in redis
    # In a container it is written, for the template unit of every app's Redis.
    contained = deploy({"web": host_facts("debian12", Container=True)}, workers=WORKERS, redis=True)["web"]
    assert contained.uploads[
        "/etc/systemd/system/redis-server@.service.d/pyinfra-flask-container.conf"] == "[Service]\nPrivateUsers=no\n"


def test_each_app_has_a_redis_of_its_own():
    apps = [{"app_name": "shop", "redis": True, "workers": WORKERS},
            {"app_name": "blog", "redis": True, "url_prefix": "/blog"}, {"app_name": "plain", "url_prefix": "/p"}]
    run = one(apps=apps)
    ports = {name: App.resolve(Settings(app_name=name)).redis_port for name in ("shop", "blog")}
    assert len(set(ports.values())) == 2
    for name, port in ports.items():
        conf = run.uploads[f"/etc/redis/redis-{name}.conf"]
        for line in ("bind 127.0.0.1 -::1", f"port {port}", f"dir /var/lib/redis/{name}",
                     f"include /etc/redis/redis-{name}.user.conf", "protected-mode yes", "supervised systemd"):
            assert line in conf.splitlines(), (name, line)
        assert "requirepass" not in conf and "unixsocket" not in conf.replace("unix socket", "")
        assert f"Redis | Run redis-server@{name}.service (and at boot)" in run.changed
        assert f"Redis | Create /var/lib/redis/{name} ({name}'s Redis data)" in run.changed
    assert "/etc/redis/redis-plain.conf" not in run.uploads
    assert "After=network.target redis-server@shop.service" in run.uploads["/etc/systemd/system/shop-celery@.service"]
    # Debian's own instance (6379, no password) never starts: masked before the package.
    names = list(run.changed)
    assert names.index("Redis | Keep Debian's shared redis-server.service from starting (masked)") < names.index(
        "Redis | Install redis-server")
    # Installed already: left alone.
    installed = deploy({"web": host_facts("debian12", File=lambda path: path.endswith("@.service") or None)},
                       apps=apps)["web"]
    assert "Redis | Keep Debian's shared redis-server.service from starting (masked)" not in installed.changed


@pytest.mark.parametrize(("apps", "line"), [
    ([{"app_name": "shop", "redis": True, "redis_port": 7000}, {"app_name": "blog", "redis": True,
                                                                 "redis_port": 7000, "url_prefix": "/blog"}],
     "redis_port = 7000: blog's Redis would be on the port of shop's redis_port; set redis_port for one of them"),
    ([{"app_name": "shop", "redis": True, "redis_port": 8080, "nginx_port": 8080}],
     "redis_port = 8080: shop's Redis would be on the port of shop's nginx_port"),
])
def test_redis_ports_that_clash_are_refused_naming_the_key(apps, line):
    assert line in refused(apps=apps)


def test_the_shared_redis_of_older_deploys_gives_way_to_one_per_app():
    older = ("/etc/redis/pyinfra-flask.conf", "/etc/pyinfra-flask/redis.password", REDIS_TEMPLATE_UNIT)
    legacy = {"File": lambda path: {"user": "root", "group": "root", "mode": 600} if path in older else None,
              "RedisUrlIs": lambda path, url: ":6379/" in url and "/blog/" not in path}
    # One app used it: its Redis starts with the shared one's data (saved first).
    run = deploy({"web": host_facts("debian12", legacy)}, redis=True)["web"]
    [seeded] = [name for name in run.changed if name.endswith("with the shared Redis's data")]
    commands = "\n".join(run.changed[seeded])
    assert 'REDISCLI_AUTH="$(cat /etc/pyinfra-flask/redis.password)" redis-cli -h 127.0.0.1 -p 6379 save' in commands
    assert "/var/lib/redis/dump.rdb /var/lib/redis/greeting/dump.rdb" in commands
    # The shared one is stopped and its configuration removed last, once every app
    # is on its own Redis.
    names = list(run.changed)
    retired = names.index("Redis of apps no longer deployed | Stop the shared redis-server.service "
                          "(each app has a Redis of its own)")
    assert retired > max(i for i, n in enumerate(names) if n.startswith("Release activation |"))
    assert "Redis of apps no longer deployed | Remove /etc/redis/pyinfra-flask.conf" in names[retired:]
    assert "Redis of apps no longer deployed | Remove /etc/pyinfra-flask/redis.password" in names[retired:]
    assert 'REDIS_URL="redis://default:%s@127.0.0.1:' in "\n".join(
        run.changed["Redis URL | Hand greeting its REDIS_URL (/srv/greeting/secrets/redis.env, root-only)"])
    # Several apps shared it: their keys cannot be told apart, none gets them.
    two = [{"app_name": "shop", "redis": True}, {"app_name": "wiki", "redis": True, "url_prefix": "/w"}]
    run = deploy({"web": host_facts("debian12", legacy)}, apps=two)["web"]
    assert not [name for name in run.changed if name.endswith("with the shared Redis's data")]
    assert "Redis | Create /var/lib/redis/shop (shop's Redis data)" in run.changed
    # An app new to Redis beside the one that used it: only that one gets its data.
    run = deploy({"web": host_facts("debian12", legacy)}, apps=[two[0], {**two[1], "app_name": "blog"}])["web"]
    assert [name for name in run.changed if name.endswith("with the shared Redis's data")] == [
        "Redis | Create /var/lib/redis/shop (shop's Redis data), with the shared Redis's data"]


def test_the_shared_redis_stays_while_an_apps_own_environment_names_it(tmp_path):
    env = tmp_path / "other.env"
    env.write_text("REDIS_URL=redis://:copied@127.0.0.1:6379/0\n")
    older = ("/etc/redis/pyinfra-flask.conf", "/etc/pyinfra-flask/redis.password", REDIS_TEMPLATE_UNIT)
    facts = host_facts("debian12", File=lambda path: {"user": "root", "group": "root", "mode": 600}
                       if path in older else None)
    run = deploy({"web": facts}, apps=[{"app_name": "shop", "redis": True},
                                       {"app_name": "other", "url_prefix": "/o", "app_env_file": str(env)}])["web"]
    assert not [name for name in run.changed if "shared redis-server.service" in name or "pyinfra-flask.conf" in name]
    assert "Redis | Run redis-server@shop.service (and at boot)" in run.changed


def test_the_redis_of_a_removed_app_is_stopped_and_its_secrets_removed():
    found = {"gone": "/etc/redis/redis-gone.conf", "greeting": "/etc/redis/redis-greeting.conf"}
    gone = ("/etc/redis/redis-gone.conf", "/etc/redis/redis-gone.user.conf", "/etc/pyinfra-flask/redis/gone.password")
    run = deploy({"web": host_facts("debian12", RedisInstances=found, File=lambda path: {
        "user": "root", "group": "root", "mode": 600} if path in gone else None)}, redis=True)["web"]
    assert run.changed["Redis of apps no longer deployed | Stop redis-server@gone (its app is gone or has no redis)"] == [
        "systemctl disable --now redis-server@gone.service"]
    for path in ("/etc/redis/redis-gone.conf", "/etc/redis/redis-gone.user.conf",
                 "/etc/pyinfra-flask/redis/gone.password"):
        assert f"Redis of apps no longer deployed | Remove {path}" in run.changed
    assert not [name for name in run.changed if "redis-server@greeting (its app" in name]
    assert not [name for name in run.changed if "/var/lib/redis/gone" in " ".join(run.changed[name])]


def test_the_instances_fact_reads_the_marked_configurations():
    assert RedisInstances().process(["/etc/redis/redis-shop.conf", "/etc/redis/redis-my-blog.conf"]) == {
        "shop": "/etc/redis/redis-shop.conf", "my-blog": "/etc/redis/redis-my-blog.conf"}


def test_behind_balancers_only_the_first_app_server_gets_the_timers():
    facts = {name: host_facts("debian12") for name in ("web1", "web2", "lb1")}
    groups = {"app_servers": ["web1", "web2"], "load_balancers": ["lb1"]}
    runs = deploy(facts, groups=groups, host_data=LB_DATA, jobs=JOBS)
    assert "/etc/systemd/system/greeting-report.timer" in runs["web1"].uploads
    assert "/etc/systemd/system/greeting-report.timer" not in runs["web2"].uploads
    assert "/etc/systemd/system/greeting-report.service" in runs["web2"].uploads  # to run by hand
    assert not [u for u in runs["lb1"].uploads if "report" in u]
    runs = deploy(facts, groups=groups, host_data=LB_DATA, jobs=JOBS, jobs_host="@fake/web2")
    assert "/etc/systemd/system/greeting-report.timer" in runs["web2"].uploads
    assert "/etc/systemd/system/greeting-report.timer" not in runs["web1"].uploads


def test_removed_workers_jobs_and_processes_are_stopped_and_their_units_removed():
    found = {"units": {"greeting-old@.service": "greeting", "greeting-report.service": "greeting",
                       "greeting-report.timer": "greeting", "gone-celery@.service": "gone"},
             "enabled": ["greeting-celery@1.service", "greeting-celery@2.service", "greeting-celery@3.service",
                         "greeting-old@1.service", "greeting-report.timer", "gone-celery@1.service"]}
    present = {f"/etc/systemd/system/{unit}" for unit in found["units"]}
    file = lambda path: {"size": 1, "mode": 644, "user": "root", "group": "root"} if path in present else None  # noqa: E731
    run = deploy({"web": host_facts("debian12", BackgroundUnits=found, File=file)},
                 workers={"celery": {"command": "celery", "processes": 2}})["web"]
    changed = run.named("Workers and jobs")
    assert changed["Workers and jobs | Stop and disable greeting-old@.service (no longer in the settings)"] == [
        "systemctl disable --now greeting-old@1.service", "systemctl stop 'greeting-old@*.service'"]
    assert changed["Workers and jobs | Stop and disable greeting-report.timer (no longer in the settings)"] == [
        "systemctl disable --now greeting-report.timer"]
    assert changed["Workers and jobs | Remove the unit greeting-report.service"] == [
        "rm -f /etc/systemd/system/greeting-report.service"]
    assert changed["Workers and jobs | Stop and disable greeting-celery@3.service (beyond the worker's processes)"] == [
        "systemctl disable --now greeting-celery@3.service"]
    assert "Workers and jobs | Start greeting-celery@1.service at boot" not in changed
    gone = run.named("Workers and jobs of apps no longer deployed")
    assert gone["Workers and jobs of apps no longer deployed | Stop and disable gone-celery@.service (no longer in the settings)"] == [
        "systemctl disable --now gone-celery@1.service", "systemctl stop 'gone-celery@*.service'"]


def test_background_units_fact_reads_markers_and_enabled_links():
    output = ["greeting-celery@.service:# greeting: worker celery, written by the pyinfra deploy "
              "(pyinfra-flask background unit of app greeting).",
              "enabled:greeting-celery@1.service", "enabled:greeting-report.timer"]
    assert BackgroundUnits().process(output) == {
        "units": {"greeting-celery@.service": "greeting"},
        "enabled": ["greeting-celery@1.service", "greeting-report.timer"]}


def test_commands_are_escaped_for_systemd():
    assert systemd_command('echo "$X" 100% \\o/') == '"echo \\"$$X\\" 100%% \\\\o/"'


@pytest.fixture
def tool(tmp_path, monkeypatch):
    module = host_tool.load()
    module.configure(tmp_path, {"app": "greeting", "service": "greeting.service", "keep_releases": 2,
                                "workers": ["greeting-celery@1.service"]})
    (tmp_path / "releases").mkdir()
    for name in ("r1", "r2"):
        (tmp_path / "releases" / name).mkdir()
        (tmp_path / "releases" / name / module.META).write_text("{}")
    module.switch("r1")
    calls = []
    monkeypatch.setattr(module, "service_active", lambda: False)
    monkeypatch.setattr(module, "reload", lambda mode, fifo=None: calls.append(("reload", mode)))
    monkeypatch.setattr(module.subprocess, "run", lambda args, **kw: calls.append(tuple(args)) or
                        type("R", (), {"returncode": 0, "stderr": ""})())
    module.calls = calls
    return module


def test_workers_restart_only_after_the_release_passed_its_health_gate(tool, monkeypatch):
    monkeypatch.setattr(tool, "health", lambda attempts=None: tool.calls.append(("health",)))
    tool.activate("r2", "graceful", "web")
    assert tool.calls[-2:] == [("health",), ("systemctl", "restart", "greeting-celery@1.service")]


def test_a_release_failing_its_gate_never_restarts_the_workers(tool, monkeypatch):
    def unhealthy(attempts=None):
        if tool.live() == "r2":
            raise tool.Failure("unhealthy")
    monkeypatch.setattr(tool, "health", unhealthy)
    with pytest.raises(tool.Failure, match="Rolled back: r1"):
        tool.activate("r2", "graceful", "web")
    assert not [c for c in tool.calls if c[0] == "systemctl"]


TASKER = REPO_ROOT / "tests/apps/tasker"


CELERY = ("celery -A tasker:celery worker --pool=solo --loglevel=INFO --without-gossip --without-mingle "
          "--without-heartbeat")


# Slower (4 s) than its interval (2 s): runs must queue, never overlap.
TICK = "echo start $(date +%s.%N) >> instance/ticks.log; sleep 4; echo end $(date +%s.%N) >> instance/ticks.log"


WORKER_UNIT = "tasker-celery@1.service"

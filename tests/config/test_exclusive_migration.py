"""An exclusive migration's settings and operations, host-less (docs/releases.md): the
settings refused before any host is touched, one line naming the key; the one step
that holds requests, migrates and switches; the plain way where nothing runs yet.
The hold itself: tests/tool/test_hold.py; on a real host: tests/hosts/test_exclusive_migration.py."""

from __future__ import annotations

import shlex

import pytest
from pyinfra.api.exceptions import DeployError

from tests.roles.test_distros import LB_DATA, deploy, host_facts

RUNNING = {"ServiceActive": lambda services: {service: True for service in services}}
EXCLUSIVE = {"migrate_exclusive": True, "migrate_commands": ["flask db upgrade", "flask backfill --all"]}
LB_GROUPS = {"app_servers": ["web1", "web2"], "load_balancers": ["lb1"]}


def refused(**data) -> str:
    with pytest.raises(DeployError) as info:
        deploy({"web": host_facts("debian12")}, **data)
    return str(info.value)


@pytest.mark.parametrize(("data", "line"), [
    ({"migrate_exclusive": True}, "migrate_exclusive: true, but there are no migrate_commands to run exclusively"),
    ({**EXCLUSIVE, "migrate_hold_timeout": 26},
     "migrate_hold_timeout: 26 s must be at least 5 s below uwsgi_harakiri (30 s)"),
    ({**EXCLUSIVE, "migrate_hold_timeout": 10, "uwsgi_harakiri": 12},
     "migrate_hold_timeout: 10 s must be at least 5 s below uwsgi_harakiri (12 s)"),
    ({**EXCLUSIVE, "migrate_hold_timeout": 51}, "migrate_hold_timeout = 51: Input should be less than or equal to 50"),
    ({**EXCLUSIVE, "migrate_hold_timeout": 0}, "migrate_hold_timeout = 0: Input should be greater than or equal to 1"),
    ({"migrate_exclusive": "sometimes"}, "migrate_exclusive = 'sometimes'"),
])
def test_bad_settings_are_refused_in_one_line_naming_the_key(data, line):
    message = refused(**data)
    assert line in message and "nothing was changed" in message
    assert "Traceback" not in message


def test_the_bound_may_exceed_harakiri_when_it_is_off_or_unused():
    deploy({"web": host_facts("debian12")}, **EXCLUSIVE, migrate_hold_timeout=40, uwsgi_harakiri=0)
    deploy({"web": host_facts("debian12")}, migrate_hold_timeout=40)


def test_one_step_holds_migrates_and_switches_and_the_plain_steps_are_gone():
    run = deploy({"web": host_facts("debian12", RUNNING)}, **EXCLUSIVE, migrate_hold_timeout=12,
                 maintenance_retry_after=90)["web"]
    names = list(run.changed)
    [step] = [name for name in names if name.startswith("Release | Migrate with requests held")]
    assert "(at most 12 s each)" in step and "flask db upgrade; flask backfill --all" in step
    words = shlex.split(run.changed[step][0])
    assert words[0] == "/srv/greeting/bin/release-tool" and "migrate" in words
    assert words[words.index("--hold") + 1] == "12" and words[words.index("--retry-after") + 1] == "90"
    assert [w for w in words if w.startswith("--command=")] == ["--command=flask db upgrade",
                                                                "--command=flask backfill --all"]
    # Its own canary and switch: neither the plain steps nor a second switch.
    assert not [name for name in names if name.startswith(("Release | Migrate: ", "Release | Check release")
                                                          ) and "imports" not in name]
    assert not [name for name in names if name.startswith("Release activation | Switch to release")]
    # After it, the health gate through nginx as after any activation.
    assert names.index(step) < names.index(next(n for n in names if n.startswith("Health check | Check GET /")))


def test_a_first_deploy_migrates_the_plain_way():
    names = list(deploy({"web": host_facts("debian12")}, **EXCLUSIVE)["web"].changed)
    assert "Release | Migrate: flask db upgrade" in names
    assert not [name for name in names if "requests held" in name]
    assert [name for name in names if name.startswith(("Release activation | Switch to release",
                                                       "Release activation | Restart uWSGI on release"))]


def test_behind_balancers_the_migrations_host_holds_its_own_requests_only():
    facts = {name: host_facts("debian12", RUNNING) for name in ("web1", "web2", "lb1")}
    runs = deploy(facts, groups=LB_GROUPS, host_data=LB_DATA, **EXCLUSIVE)
    held = [name for name in runs["web1"].changed if "requests held" in name]
    assert held and not [name for name in runs["web2"].changed if "requests held" in name]
    # Its canary, then its own switch, in its one `ship` command.
    assert "Release activation | Ship release" in " ".join(runs["web2"].changed)


def test_a_second_run_with_the_release_live_holds_nothing(monkeypatch):
    from tasks.steps import release

    built = []
    monkeypatch.setattr(release, "build_bundle", lambda app, build=release.build_bundle: built.append(build(app))
                        or built[-1])
    first = deploy({"web": host_facts("debian12", RUNNING)}, **EXCLUSIVE)["web"].changed
    assert [name for name in first if "requests held" in name]
    live = {"LiveRelease": {"id": built[-1].id, "content_hash": built[-1].content_hash},
            "LiveConfirmed": True}
    names = list(deploy({"web": host_facts("debian12", RUNNING, live)}, **EXCLUSIVE)["web"].changed)
    assert not [name for name in names if "requests held" in name or name.startswith(("Release | Upload release",
                                                                                       "Release | Migrate"))]

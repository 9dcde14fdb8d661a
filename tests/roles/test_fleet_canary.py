"""A canary behind load balancers without a host (tasks/steps/fleet_canary.py): the app
servers and the balancer run their release-tool steps in turn, the balancer's counts go
to every app server's verdict, and a deploy with nothing on trial adds none of the steps.
On real hosts: tests/hosts/test_rollout.py."""

from __future__ import annotations

import json
import shlex
from unittest.mock import patch

import pytest
from pyinfra.api import Host
from pyinfra.api.exceptions import DeployError
from pyinfra.connectors.util import CommandOutput, OutputLine

from tasks import tool as host_tool
from tasks.steps.fleet_canary import total
from tests.roles.test_distros import deploy, host_facts

GROUPS = {"app_servers": ["web1", "web2"], "load_balancers": ["lb1"]}
DATA = {"web1": {"private_address": "10.0.0.11"}, "web2": {"private_address": "10.0.0.12"},
        "lb1": {"private_address": "10.0.0.2"}}
CANARY = {"canary_share": 10, "canary_window": 30}
COUNTED = {"canary": {"requests": 120, "5xx": 1}, "live": {"requests": 1000, "5xx": 2},
           "opened": 100.0, "closed": 130.0}


def output(lines: list[str]) -> CommandOutput:
    return CommandOutput([OutputLine("stdout", line) for line in lines])


def run(live: bool):
    """deploy.py over two app servers (a live release with other code when `live`) and a
    balancer; the release-tool commands each host was sent, in order."""
    sent: list[tuple[str, list[str]]] = []

    def run_shell_command(self, command, *args, **kwargs):
        text = command.get_raw_value() if hasattr(command, "get_raw_value") else str(command)
        if "release-tool" in text:
            sent.append((self.name.removeprefix("@fake/"), shlex.split(text)))
        if "canary-watch" in text:
            return True, output([host_tool.CANARY_NUMBERS + json.dumps(COUNTED)])
        return True, output([])

    on = {"ServiceActive": lambda services: {service: live for service in services},
          "LiveRelease": lambda app_root: {"id": "20261201T000000Z-old", "content_hash": "other"} if live else None}
    facts = {"web1": host_facts("debian12", on), "web2": host_facts("debian12", on), "lb1": host_facts("debian12")}
    with patch.object(Host, "run_shell_command", run_shell_command):
        runs = deploy(facts, groups=GROUPS, host_data=DATA, **CANARY)
    return runs, sent


def test_behind_a_balancer_the_canary_steps_take_turns_and_every_app_server_judges_the_balancers_counts():
    runs, sent = run(live=True)
    steps = [(name, words[words.index(next(w for w in words if w.startswith("canary-")))])
             for name, words in sent if any(w.startswith("canary-") for w in words)]
    order = [step for _, step in steps]
    assert order == ["canary-start"] * 2 + ["canary-watch"] + ["canary-verdict"] * 2 + ["canary-close"] + \
        ["canary-finish"] * 2, steps
    assert {name for name, step in steps if step == "canary-watch"} == {"lb1"}
    assert {name for name, step in steps if step in ("canary-start", "canary-verdict", "canary-finish")} == \
        {"web1", "web2"}
    for name, words in sent:
        if "canary-verdict" in words or "canary-finish" in words:
            numbers = json.loads(words[words.index("--numbers") + 1])
            assert numbers == {**COUNTED, "balancers": ["@fake/lb1"]}
    # Checked in-process before it goes on trial; not switched to, nor pruned, before the verdict.
    web1 = runs["web1"].changed
    assert any(name.startswith("Release | Check release") and "before its canary behind the balancers" in name
               for name in web1)
    assert not [name for name in web1 if "Switch to release" in name or "Keep the newest" in name]
    # The balancer's tool knows both instances of each app server; the canary port is open to it.
    settings = json.loads(runs["lb1"].uploads["/var/lib/pyinfra-flask/greeting/release-tool.json"])
    assert settings["canary"]["sockets"] == {"10.0.0.11:4031": "canary", "10.0.0.12:4031": "canary",
                                             "10.0.0.11:3031": "live", "10.0.0.12:3031": "live"}
    site = str(runs["lb1"].uploads["/etc/nginx/sites-available/greeting.conf"])
    assert "server 10.0.0.11:4031 max_fails=0;" in site and "server 10.0.0.12:3031 backup;" in site
    assert "uwsgi_pass $pyinfra_flask_greeting_pass;" in site and "default greeting_app_servers;" in site
    assert "tcp dport { 3031, 4031 }" in str(runs["web1"].uploads["/etc/pyinfra-flask/uwsgi-firewall.nft"])
    ini = str(runs["web1"].uploads["/srv/greeting/uwsgi-canary.ini"])
    assert "socket = 10.0.0.11:4031" in ini.splitlines()


def test_with_nothing_on_trial_no_canary_step_is_added():
    # A first deploy (no live release): the release goes live at once, as without a canary.
    runs, sent = run(live=False)
    assert not [words for _, words in sent if any(w.startswith("canary-") for w in words)]
    assert not [name for r in runs.values() for name in r.changed if "Canary behind the balancers" in name]


@pytest.mark.parametrize("balancer, line", [
    ({}, "canary_share: 10 on app server '@fake/web1' but 0 on balancer '@fake/lb1': set the same for both"),
    ({"canary_share": 10, "canary_window": 60},
     "canary_window: 30 on app server '@fake/web1' but 60 on balancer '@fake/lb1'"),
])
def test_the_balancer_and_the_app_servers_must_agree_on_the_split(balancer, line):
    facts = {name: host_facts("debian12") for name in ("web1", "web2", "lb1")}
    data = {name: {**values, **(CANARY if name != "lb1" else balancer)} for name, values in DATA.items()}
    with pytest.raises(DeployError, match=line.replace("(", r"\(").replace(")", r"\)")):
        deploy(facts, groups=GROUPS, host_data=data)


def test_the_balancers_counts_are_summed_over_one_window():
    second = {"canary": {"requests": 30, "5xx": 3}, "live": {"requests": 500, "5xx": 0},
              "opened": 99.5, "closed": 131.0}
    assert total({"lb1": COUNTED, "lb2": second}) == {
        "canary": {"requests": 150, "5xx": 4}, "live": {"requests": 1500, "5xx": 2},
        "opened": 99.5, "closed": 131.0, "balancers": ["lb1", "lb2"]}
    # No balancer counted (each failed): nothing to judge by, so too few requests.
    assert total({})["canary"] == {"requests": 0, "5xx": 0}

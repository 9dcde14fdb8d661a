"""How rollout.py reads an inventory and cuts it into batches (no hosts)."""

from __future__ import annotations

import pytest

import rollout


@pytest.mark.parametrize(("text", "expected"), [
    # The README's form: (hosts, group data), hosts as (name, data).
    ("app_servers = ([('web1', {'private_address': '10.0.0.11'}), ('web2', {})], {'_sudo': True})\n"
     "load_balancers = ([('lb1', {})], {})\n", (["web1", "web2"], ["lb1"])),
    # No app_servers group: every host that is not a balancer is one.
    ("hosts = ['a', ('b', {'x': 1})]\nload_balancers = ['lb']\nothers = (['c'], {})\n_private = ['z']\n",
     (["a", "b", "c"], ["lb"])),
    ("app_servers = ['only']\n", (["only"], [])),
])
def test_inventory_groups_are_read_as_pyinfra_reads_them(tmp_path, text, expected):
    path = tmp_path / "inventory.py"
    path.write_text(text)
    assert rollout.load_inventory(str(path)) == expected


def test_batches_by_count_and_percentage():
    hosts = [f"web{i}" for i in range(1, 6)]
    assert rollout.batches(hosts, "2") == [["web1", "web2"], ["web3", "web4"], ["web5"]]
    assert rollout.batches(hosts, "40%") == [["web1", "web2"], ["web3", "web4"], ["web5"]]
    assert rollout.batches(hosts, "1%") == [[h] for h in hosts]
    with pytest.raises(SystemExit, match="--batch must be at least 1"):
        rollout.batches(hosts, "0")

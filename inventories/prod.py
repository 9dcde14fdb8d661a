"""Production: two app servers behind one nginx load balancer. Replace the
placeholder hosts and addresses with yours.

    pyinfra inventories/prod.py deploy.py --dry --diff        # see what would change
    pyinfra inventories/prod.py deploy.py                     # converge everything
    .venv/bin/python rollout.py inventories/prod.py --batch 1 # or roll out in batches

Settings (see the README's table) can be set per host, per group (the dict after
each host list), or in group_data/<group>.py; anything not set keeps the default
from tasks/config/settings/. Without the load_balancers group, each app server runs its
own nginx in front of a unix socket.
"""

_ssh = {"ssh_user": "deploy", "_sudo": True}

app_servers = (
    [
        ("web1.example.com", {"private_address": "10.0.0.11"}),
        ("web2.example.com", {"private_address": "10.0.0.12"}),
    ],
    {**_ssh, "uwsgi_processes": 4},
)

load_balancers = (
    # The address the app servers see its connections come from: their firewall
    # lets only the balancers reach uWSGI.
    [("lb1.example.com", {"private_address": "10.0.0.2"})],
    {**_ssh, "nginx_server_names": ["example.com", "www.example.com"], "lb_method": "least_conn"},
)

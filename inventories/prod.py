"""Production: replace the placeholder hosts with your servers.

    pyinfra inventories/prod.py deploy.py --dry --diff   # see what would change
    pyinfra inventories/prod.py deploy.py                # apply

Settings (see the README's table) can be set per host, per group (the dict next
to the host list), or in group_data/<group>.py; anything not set keeps the
default from tasks/settings.py.
"""

app_servers = (
    [
        ("web1.example.com", {"ssh_user": "deploy", "_sudo": True}),
        ("web2.example.com", {"ssh_user": "deploy", "_sudo": True}),
    ],
    {
        "nginx_server_names": ["example.com", "www.example.com"],
        "uwsgi_processes": 4,
    },
)

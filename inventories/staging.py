"""Staging: one server, smaller, same deploy.

    pyinfra inventories/staging.py deploy.py
"""

app_servers = [
    ("staging.example.com", {
        "ssh_user": "deploy",
        "_sudo": True,
        "nginx_server_names": ["staging.example.com"],
        "uwsgi_processes": 2,
    }),
]

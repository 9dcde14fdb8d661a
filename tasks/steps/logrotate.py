"""Log rotation for every log file the deploy creates outside the distribution's
own rotation (the journal and /var/log/nginx/*.log are already rotated)."""

from pyinfra.api import deploy
from pyinfra.operations import files

from tasks import JINJA, TEMPLATES


@deploy("Log rotation")
def rotate(app):
    nginx_logs = sorted({path for path in (app.nginx_access_log, app.nginx_error_log)
                         if path.startswith("/") and not path.startswith("/var/log/nginx/")})
    path = f"/etc/logrotate.d/pyinfra-flask-{app.app_name}"
    if app.uwsgi_log == "journal" and not nginx_logs:
        files.file(name=f"No log rotation needed for {app.app_name}", path=path, present=False)
        return
    files.template(name=f"Rotate {app.app_name}'s log files ({path})", src=str(TEMPLATES / "logrotate.j2"),
                   dest=path, mode="644", jinja_env_kwargs=JINJA, s=app, nginx_logs=nginx_logs)

"""Settings validation: every bad value is refused with a message naming the key."""

from __future__ import annotations

import re

import pytest

from tasks.config import checks, settings
from tasks.config.checks import validate
from tasks.config.settings import SettingsError
from tests.conftest import REPO_ROOT


def test_defaults_are_valid_and_derived():
    s = validate({})
    assert s.app_user == "greeting"
    assert s.app_root == "/srv/greeting"
    assert s.code_dir == "/srv/greeting/current"
    assert s.uwsgi_venv == "/opt/pyinfra-flask/uwsgi-2.0.31"
    assert s.socket_path == "/run/greeting/uwsgi.sock"
    assert s.nginx_access_log == "/var/log/nginx/greeting.access.log"


def test_derived_defaults_follow_app_name_and_root():
    s = validate({"app_name": "shop", "app_root": "/opt/shop"})
    assert (s.app_user, s.code_dir, s.service) == ("shop", "/opt/shop/current", "shop.service")


def test_pyinfra_own_data_is_not_mistaken_for_a_typo():
    validate({"ssh_port": 2222, "ssh_user": "deploy", "_sudo": True, "docker_identifier": "x"})


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"nginx_port": 0}, "nginx_port = 0: Input should be greater than or equal to 1"),
        ({"nginx_port": 70000}, "nginx_port = 70000"),
        ({"nginx_port": "80"}, "nginx_port = '80': Input should be a valid integer"),
        ({"uwsgi_processes": 0}, "uwsgi_processes = 0"),
        ({"uwsgi_threads": 2.5}, "uwsgi_threads = 2.5"),
        ({"uwsgi_harakiri": -1}, "uwsgi_harakiri = -1"),
        ({"app_entry": "wsgi"}, "app_entry = 'wsgi': must be 'module:callable'"),
        ({"app_entry": "wsgi:app; rm -rf /"}, "app_entry = 'wsgi:app; rm -rf /'"),
        ({"app_entry": "nosuchmodule:app"}, "app_entry: module 'nosuchmodule' not found"),
        ({"app_name": "My App"}, "app_name = 'My App': must be 1-31 characters"),
        ({"app_name": "a;b"}, "app_name = 'a;b'"),
        ({"app_root": "srv/app"}, "app_root = 'srv/app': must be an absolute path"),
        ({"app_root": "/srv/my app"}, "app_root = '/srv/my app'"),
        ({"app_root": "/srv/../etc"}, "app_root = '/srv/../etc': must not contain '..'"),
        ({"venv_path": "/srv/venv"}, "venv_path: unknown setting"),
        ({"shared_paths": ["/var/data"]}, "shared_paths[0] = '/var/data'"),
        ({"shared_paths": ["../up"]}, "shared_paths[0] = '../up'"),
        ({"shared_paths": [".venv"]}, "shared_paths: '.venv' would replace the release itself or its venv"),
        ({"shared_paths": "instance/"}, "shared_paths = 'instance/': Input should be a valid list"),
        ({"keep_releases": 0}, "keep_releases = 0"),
        ({"before_switch_commands": "flask db upgrade"}, "before_switch_commands = 'flask db upgrade'"),
        ({"rollback_to": "last"}, "rollback_to = 'last'"),
        ({"healthcheck_body": "a\nb"}, "healthcheck_body = 'a\\nb'"),
        ({"reload_timeout": 1}, "reload_timeout = 1"),
        ({"app_source": "files/nope"}, "app_source: 'files/nope' is not a directory"),
        ({"app_requirements": "missing.txt"}, "app_requirements: 'missing.txt' not found"),
        ({"app_requirements": "../requirements.txt"}, "app_requirements = '../requirements.txt'"),
        ({"app_static_dir": "assets"}, "app_static_dir: 'assets' is not a directory"),
        ({"app_static_url": "static"}, "app_static_url = 'static': must start and end with '/'"),
        ({"nginx_server_names": "example.com"}, "nginx_server_names = 'example.com': Input should be a valid list"),
        ({"nginx_server_names": []}, "nginx_server_names = []"),
        ({"nginx_server_names": ["ok.example", "bad;name"]}, "nginx_server_names[1] = 'bad;name'"),
        ({"nginx_server_names": ["evil\nserver_name x"]}, "nginx_server_names[0]"),
        ({"nginx_client_max_body_size": "75 MB"}, "nginx_client_max_body_size = '75 MB': must be a size"),
        ({"nginx_access_log": "logs/access.log"}, "nginx_access_log = 'logs/access.log'"),
        ({"uwsgi_log": "uwsgi.log"}, "uwsgi_log = 'uwsgi.log': Input should be 'journal', or must be an absolute path"),
        ({"uwsgi_version": "latest"}, "uwsgi_version = 'latest': must be a release version"),
        ({"healthcheck_path": "health"}, "healthcheck_path = 'health'"),
        ({"healthcheck_path": "/x'; reboot"}, "healthcheck_path = \"/x'; reboot\""),
        ({"healthcheck_path": "/static/style.css"}, "healthcheck_path: points into app_static_url"),
        ({"healthcheck_status": 700}, "healthcheck_status = 700"),
        ({"uwsgi_procesess": 4}, "uwsgi_procesess: unknown setting (did you mean 'uwsgi_processes'?)"),
        ({"totally_unknown": 1}, "totally_unknown: unknown setting"),
        ({"app_env_file": "no/such.env"}, "app_env_file: 'no/such.env' is not a file"),
        ({"app_env_from": ["NOT_SET_ANYWHERE_42"]}, "app_env_from: NOT_SET_ANYWHERE_42 not set in the shell"),
        ({"app_env_from": ["BAD-NAME"]}, "app_env_from[0] = 'BAD-NAME'"),
        ({"websockets": True, "app_source": "tests/apps/websocket", "app_static_dir": "", "uwsgi_threads": 4},
         "uwsgi_threads: 4 conflicts with websockets"),
        ({"websockets": True}, "websockets: needs gevent in requirements.txt"),
        ({"tls_certificate": "files/greeting/wsgi.py"}, "tls_certificate and tls_certificate_key: set both or neither"),
        ({"url_prefix": "blog"}, "url_prefix = 'blog'"),
        ({"uwsgi_socket": "127.0.0.1:80"}, "uwsgi_socket: port 80 is nginx's port"),
        ({"lb_method": "random"}, "lb_method = 'random'"),
        # Values no pattern refuses but the system does not survive.
        ({"app_root": "/"}, "app_root = '/': / is a directory the system and other software share"),
        ({"app_root": "/etc"}, "app_root = '/etc': /etc is inside /etc, which belongs to the system"),
        ({"app_root": "/var"}, "app_root = '/var': /var is a directory the system and other software share"),
        ({"app_root": "/srv"}, "app_root = '/srv'"),
        ({"app_root": "/usr/local/lib/app"}, "app_root = '/usr/local/lib/app': /usr/local/lib/app is inside /usr"),
        ({"app_root": "/home/alice"}, "app_root = '/home/alice': /home/alice is a user's home directory"),
        ({"app_root": "/opt/pyinfra-flask/x"}, "app_root = '/opt/pyinfra-flask/x'"),
        ({"app_name": "ssh"}, "app_name = 'ssh': would replace the system's own ssh.service"),
        ({"app_name": "nginx"}, "app_name = 'nginx': would replace the system's own nginx.service"),
        ({"app_name": "systemd-journald"}, "app_name = 'systemd-journald'"),
        ({"app_user": "www-data"}, "app_user = 'www-data': is an account the system or one of its services uses"),
        ({"app_user": "root"}, "app_user = 'root'"),
        ({"app_user": "nginx"}, "app_user = 'nginx'"),
        ({"url_prefix": "/blog/../admin"}, "url_prefix = '/blog/../admin': must not contain '.' or '..'"),
        ({"url_prefix": "/./x"}, "url_prefix = '/./x'"),
        ({"uwsgi_log": "/var/log/uwsgi.log"}, "uwsgi_log: its directory is given to the app user, and /var/log is"),
        ({"uwsgi_log": "/etc/greeting/uwsgi.log"}, "uwsgi_log: its directory is given to the app user, and /etc"),
        # nginx (root) must never open a log where the app user could put a link.
        ({"uwsgi_log": "/var/log/greeting/uwsgi.log", "nginx_access_log": "/var/log/greeting/access.log"},
         "nginx_access_log: /var/log/greeting/access.log is inside /var/log/greeting, where the app user can write"),
        ({"nginx_error_log": "/srv/greeting/shared/instance/error.log"}, "nginx_error_log: /srv/greeting/shared"),
        ({"nginx_access_log": "/tmp/access.log"}, "nginx_access_log: /tmp/access.log is inside /tmp"),
        ({"nginx_error_log": "/run/greeting/error.log"}, "nginx_error_log: /run/greeting/error.log"),
        ({"shared_paths": ["instance/", "instance/uploads/"]},
         "shared_paths: 'instance/uploads' is inside the shared 'instance'/"),
    ],
)
@pytest.mark.reliability
def test_bad_settings_are_refused_naming_the_key(data, expected):
    with pytest.raises(SettingsError) as caught:
        validate(data, where="settings for host 'web1'")
    message = str(caught.value)
    assert expected in message
    assert message.startswith("Invalid settings for host 'web1'; nothing was changed on any host")


def test_every_problem_is_reported_at_once():
    with pytest.raises(SettingsError) as caught:
        validate({"nginx_port": -1, "uwsgi_threads": 0, "typo_key": 1})
    message = str(caught.value)
    for key in ("nginx_port", "uwsgi_threads", "typo_key"):
        assert f"  - {key}" in message


def test_settings_page_table_matches_the_code():
    page = (REPO_ROOT / "docs" / "settings.md").read_text()
    table = settings.markdown_table()
    assert table in page, "docs/settings.md's table is stale: regenerate it with `python -m tasks.config.settings`"
    # And every setting is in it.
    for name in settings.Settings.model_fields:
        assert re.search(rf"^\| `{name}` \|", page, re.M), name


def test_readme_common_settings_are_rows_of_the_full_table():
    readme = (REPO_ROOT / "README.md").read_text()
    rows = set(settings.markdown_table().splitlines())
    common = re.findall(r"^\| `\w+` \|.*$", readme, re.M)
    assert len(common) >= 10, "README lost its table of the common settings"
    for row in common:
        assert row in rows, f"README row is stale (copy it from docs/settings.md): {row[:60]}"
    assert "docs/settings.md" in readme


def test_an_app_user_that_is_the_ssh_user_is_refused():
    apps = [validate({"app_user": "deploy"})]
    [problem] = checks.apps_apart(apps, login="deploy")
    assert problem.startswith("app_user = 'deploy': is the user pyinfra logs in as")
    assert checks.apps_apart(apps, login="admin") == []


def test_an_app_root_inside_another_apps_is_refused():
    apps = [validate({"app_name": "shop"}), validate({"app_name": "blog", "app_root": "/srv/shop/blog"})]
    assert "app_root = '/srv/shop/blog': is inside shop's app_root /srv/shop" in "\n".join(checks.apps_apart(apps))


def test_two_apps_whose_units_would_share_a_name_are_refused():
    job = {"command": "true", "schedule": "daily"}

    def named(data):  # each app on a name of its own, so that only the units can clash
        return validate({**data, "nginx_server_names": [f"{data['app_name']}.example"]})
    # shop's job "blog" is shop-blog.service: the service of an app named shop-blog.
    apps = [named({"app_name": "shop", "jobs": {"blog": job}}), named({"app_name": "shop-blog"})]
    assert checks.apps_apart(apps) == ["app_name of shop-blog: its unit shop-blog.service would also be "
                                       "shop's (jobs); rename one of them"]
    # Workers: shop's "a-b" and shop-a's "b" are both shop-a-b@.service.
    apps = [named({"app_name": "shop", "workers": {"a-b": {"command": "x"}}}),
            named({"app_name": "shop-a", "workers": {"b": {"command": "x"}}})]
    assert checks.apps_apart(apps) == ["workers.b of shop-a: its unit shop-a-b@.service would also be "
                                       "shop's (workers); rename one of them"]
    apps = [named({"app_name": "shop", "jobs": {"a": job}}), named({"app_name": "blog", "jobs": {"a": job}})]
    assert checks.apps_apart(apps) == []


@pytest.mark.parametrize(("files", "entry", "expected"), [
    # The example app: Flask(__name__) in greeting.py, static/ beside it.
    ({"greeting.py": "from flask import Flask\napp = Flask(__name__)\n", "static/a.css": ""}, "wsgi",
     ("static", "/static/")),
    # No static folder at all: nothing to serve, and no error.
    ({"app.py": "from flask import Flask\napp = Flask(__name__)\n"}, "app", None),
    # A package keeps it beside its __init__.py.
    ({"shop/__init__.py": "import flask\ndef create_app():\n    return flask.Flask(__name__)\n",
      "shop/static/a.css": "", "wsgi.py": "from shop import create_app\n"}, "shop", ("shop/static", "/static/")),
    # Its own folder and URL.
    ({"app.py": "from flask import Flask\napp = Flask(__name__, static_folder='assets', static_url_path='/a')\n",
      "assets/x.js": ""}, "app", ("assets", "/a/")),
    ({"app.py": "from flask import Flask\napp = Flask(__name__, static_folder='public')\n", "public/x": ""},
     "app", ("public", "/public/")),
    # Turned off, even with a static/ directory lying around.
    ({"app.py": "from flask import Flask\napp = Flask(__name__, static_folder=None)\n", "static/x": ""},
     "app", None),
    # Two apps in the tree: the one the entry point imports wins.
    ({"admin/__init__.py": "from flask import Flask\napp = Flask(__name__)\n", "admin/static/x": "",
      "site/__init__.py": "from flask import Flask\napp = Flask(__name__)\n", "site/static/y": ""},
     "site", ("site/static", "/static/")),
])
def test_static_folder_is_found_where_flask_keeps_it(tmp_path, files, entry, expected):
    from tasks.config import static

    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    found = static.find(tmp_path, entry)
    assert (tuple(found) if found else None) == expected


def test_an_app_without_a_static_folder_is_valid_and_serves_none():
    s = validate({"app_source": "tests/apps/factory", "app_entry": "factoryapp:create_app()"})
    assert s.app_static_dir == ""
    # Set on purpose and missing: that is a mistake, named.
    with pytest.raises(SettingsError, match="app_static_dir: 'static' is not a directory"):
        validate({"app_source": "tests/apps/factory", "app_entry": "factoryapp:create_app()",
                  "app_static_dir": "static"})


def test_env_files_are_read_as_dotenv_reads_them(tmp_path):
    env = tmp_path / "app.env"
    env.write_text("# the app's secrets\nSECRET_KEY=abc\nexport DATABASE_URL='sqlite:///x.db'\n"
                   'GREETING="hello world"  # inline comment\nEMPTY=\n')
    s = validate({"app_env_file": str(env)})
    assert s.environment() == {"SECRET_KEY": "abc", "DATABASE_URL": "sqlite:///x.db",
                               "GREETING": "hello world", "EMPTY": ""}
    env.write_text("SECRET_KEY=abc\nthis is not a setting\n")
    with pytest.raises(SettingsError, match=r"app_env_file: line 2 of .*app.env is not KEY=value"):
        validate({"app_env_file": str(env)})


def _host_problems(apps) -> list[str]:
    """The lines of a host's refused settings, as tasks/inventory.load_apps finds them:
    each app alone, then all of them together."""
    try:
        found = [validate(app, where="settings for host 'web1'") for app in apps]
    except SettingsError as exc:
        return [line for line in str(exc).splitlines()[1:]]
    return checks.apps_apart(found)


@pytest.mark.parametrize(("apps", "expected"), [
    # The attack: blog's own nginx logs elsewhere, its uWSGI log in nginx's directory,
    # which would be chowned to blog (it then links nginx's error.log where it likes).
    ([{"app_name": "shop"},
      {"app_name": "blog", "url_prefix": "/blog", "uwsgi_log": "/var/log/nginx/blog.uwsgi.log",
       "nginx_access_log": "/var/log/blog-nginx/access.log", "nginx_error_log": "/var/log/blog-nginx/error.log"}],
     "uwsgi_log: its directory is given to the app user, and /var/log/nginx is where a service run by root "
     "writes its logs; use e.g. /var/log/blog/uwsgi.log"),
    ([{"app_name": "blog", "uwsgi_log": "/var/log/postgresql/blog.log"}], "uwsgi_log: its directory is given"),
    ([{"app_name": "blog", "uwsgi_log": "/var/log/redis/blog/x.log"}], "/var/log/redis/blog is inside /var/log/redis, "
     "where a service run by root"),
    # Another app's nginx logs, uWSGI log directory or app root.
    ([{"app_name": "shop", "nginx_access_log": "/var/log/shop-nginx/access.log"},
      {"app_name": "blog", "url_prefix": "/blog", "uwsgi_log": "/var/log/shop-nginx/blog.log"}],
     "uwsgi_log of blog: its directory /var/log/shop-nginx would be given to blog, and it is (or holds, or is "
     "inside) /var/log/shop-nginx, shop's nginx_access_log; each app's uWSGI log needs a directory of its own"),
    ([{"app_name": "shop", "uwsgi_log": "/var/log/apps/shop.log"},
      {"app_name": "blog", "url_prefix": "/blog", "uwsgi_log": "/var/log/apps/blog.log"}],
     "uwsgi_log of shop: its directory /var/log/apps would be given to shop, and it is (or holds, or is inside) "
     "/var/log/apps, blog's uwsgi_log"),
    ([{"app_name": "shop"}, {"app_name": "blog", "url_prefix": "/blog", "uwsgi_log": "/srv/shop/log/blog.log"}],
     "uwsgi_log of blog: its directory /srv/shop/log would be given to blog, and it is (or holds, or is inside) "
     "/srv/shop, shop's app_root"),
    # Its own app root holds root's directories (releases, bin, secrets).
    ([{"app_name": "blog", "uwsgi_log": "/srv/blog/releases/uwsgi.log"}],
     "uwsgi_log of blog: /srv/blog/releases is inside its app_root /srv/blog, whose directories are root's"),
])
def test_log_directories_are_checked_across_the_hosts_apps(apps, expected):
    problems = _host_problems(apps)
    assert len(problems) == 1 and expected in problems[0], problems


def test_apps_with_log_directories_of_their_own_pass():
    assert _host_problems([
        {"app_name": "shop", "uwsgi_log": "/var/log/shop/uwsgi.log", "nginx_access_log": "/var/log/shop-nginx/a.log"},
        {"app_name": "blog", "url_prefix": "/blog", "uwsgi_log": "/var/log/blog/uwsgi.log"}]) == []


@pytest.mark.parametrize(("owner", "expected"), [
    ("root", "uwsgi_log of greeting: its directory /var/log/foo already exists and belongs to root; the deploy "
             "would hand it to greeting; use a directory of the app's own, e.g. /var/log/greeting/uwsgi.log"),
    ("link", "its directory /var/log/foo already exists and is a link"),
    ("blog", "already exists and belongs to blog"),
])
def test_a_log_directory_the_host_already_has_for_someone_else_is_refused(owner, expected):
    """Whatever the list of service directories misses: the host says whose it is."""
    from pyinfra.api.exceptions import DeployError

    from tests.roles.test_distros import deploy, host_facts

    facts = host_facts("debian12", DirectoryOwner=lambda path: owner if path == "/var/log/foo" else None)
    with pytest.raises(DeployError) as info:
        deploy({"web": facts}, uwsgi_log="/var/log/foo/uwsgi.log")
    message = str(info.value)
    assert message.startswith("Invalid settings for host '@fake/web'; nothing was changed on any host")
    assert expected in message
    # Its own directory (a redeploy) is fine.
    facts = host_facts("debian12", DirectoryOwner=lambda path: "greeting" if path == "/var/log/foo" else None)
    deploy({"web": facts}, uwsgi_log="/var/log/foo/uwsgi.log")


def test_a_host_letting_anyone_hard_link_others_files_is_refused():
    from pyinfra.api.exceptions import DeployError

    from tests.roles.test_distros import deploy, host_facts

    with pytest.raises(DeployError, match=r"fs.protected_hardlinks is 0 on this host: an app user could hard-link"):
        deploy({"web": host_facts("debian12", ProtectedHardlinks=0)})
    deploy({"web": host_facts("debian12", ProtectedHardlinks=1)})

"""nginx serves no link the app user could plant (issue 24), as rendered, without a
host: every location serving files from disk follows links only up to a path of
root's. The attack itself, on a real host: tests/hosts/test_features.py
(test_nginx_serves_no_link_an_app_planted_in_its_shared_static_path)."""

from __future__ import annotations

import re
import shutil
from dataclasses import replace

import pytest
from jinja2 import Environment, FileSystemLoader

from tasks import JINJA, TEMPLATES
from tasks.config.checks import validate
from tests.conftest import REPO_ROOT
from tests.ops.test_maintenance_audit import blocks, render

BLOG = {"app_name": "blog", "app_source": "tests/apps/blog", "app_entry": "blog:app", "url_prefix": "/blog"}


def static_blocks(config: str) -> dict[str, tuple[str, str]]:
    """location -> (alias, disable_symlinks' from) of every location with an alias."""
    found = {}
    for where, body in blocks(config).items():
        alias = re.search(r"^\s*alias (\S+);", body, re.M)
        if alias:
            links = re.search(r"^\s*disable_symlinks on from=(\S+);", body, re.M)
            found[where] = (alias.group(1), links.group(1) if links else None)
    return found


def test_a_shared_path_under_static_is_served_from_its_own_directory_without_links():
    blog = validate({**BLOG, "shared_paths": ["instance/", "static/uploads/", "static/feeds/data.json"]})
    assert static_blocks(render("nginx-site.conf.j2", [blog])) == {
        # The releases' own files: root's merge of the kept releases' (the live one's
        # first), reached through root's `live` link, no link below.
        "/blog/static/": ("/srv/blog/assets/live/", "/srv/blog/assets/live"),
        # The app user's: straight from the shared directory, never through a link in it.
        "/blog/static/uploads/": ("/srv/blog/shared/static/uploads/", "/srv/blog/shared/static/uploads"),
        # A shared file: from its directory (root's), so the file itself is checked too.
        "= /blog/static/feeds/data.json": ("/srv/blog/shared/static/feeds/data.json", "/srv/blog/shared/static/feeds"),
    }


@pytest.mark.parametrize(("shared", "expected"), [
    (["static/"], ("/srv/blog/shared/static/", "/srv/blog/shared/static")),
    (["assets/"], ("/srv/blog/shared/assets/static/", "/srv/blog/shared/assets")),
])
def test_a_static_directory_inside_a_shared_path_follows_no_link_below_it(shared, expected, tmp_path):
    """Below the shared directory everything is the app user's, `static/` included
    (it could be a link): served from the real directory, links refused from there."""
    shutil.copytree(REPO_ROOT / BLOG["app_source"], tmp_path / "blog")
    (tmp_path / "blog/assets/static").mkdir(parents=True)
    static_dir = "assets/static" if shared == ["assets/"] else "static"
    blog = validate({**BLOG, "app_source": str(tmp_path / "blog"), "shared_paths": shared,
                     "app_static_dir": static_dir, "app_static_url": "/static/"})
    assert static_blocks(render("nginx-site.conf.j2", [blog])) == {"/blog/static/": expected}


def test_every_location_serving_app_files_refuses_links_and_others_are_roots():
    shop = validate({"app_name": "shop", "tls_acme": True, "acme_email": "ops@example.com",
                     "nginx_server_names": ["example.com"], "shared_paths": ["static/"]})
    blog = validate({**BLOG, "tls_acme": True, "acme_email": "ops@example.com", "nginx_server_names": ["example.com"],
                     "shared_paths": ["static/uploads/"]})
    config = render("nginx-site.conf.j2", [shop, blog])
    served = {where: place for where, place in static_blocks(config).items()}
    assert set(served) == {"/static/", "/blog/static/", "/blog/static/uploads/"}
    for where, (alias, trusted) in served.items():
        assert trusted and alias.startswith(trusted), where
    # The other files nginx serves from disk are root's alone: the maintenance page
    # and the ACME challenges (no directory of them is an app's).
    roots = re.findall(r"^\s*root (\S+);", config, re.M)
    assert roots and all(root.startswith(("/etc/pyinfra-flask/", "/var/lib/")) for root in roots), roots



@pytest.mark.parametrize(("shared", "expected"), [
    # The merge, through root's link at the static URL (resolved per request), its real
    # files below static-safe: earlier releases' assets are served behind balancers too.
    (["instance/"], ["static-map2 = /static=/srv/greeting/assets/url", "static-safe = /srv/greeting/assets/"]),
    # All of the static directory is the app's own data: served from there as before.
    (["static/"], ["static-map = /static=/srv/greeting/current/static"]),
])
def test_behind_balancers_uwsgi_serves_the_same_merge(shared, expected):
    app = replace(validate({"app_name": "greeting", "shared_paths": shared}), behind_balancer=True)
    env = Environment(**{**JINJA, "loader": FileSystemLoader(str(TEMPLATES))})
    config = env.get_template("uwsgi.ini.j2").render(s=app, processes=2, sockets=[], canary=False)
    assert re.findall(r"^static-\S+ = .*$", config, re.M) == expected
    assert app.assets_url_link == "/srv/greeting/assets/url/static"

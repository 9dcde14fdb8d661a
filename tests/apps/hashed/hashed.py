"""An app whose asset names carry a hash of their content, as Flask-Assets,
flask-static-digest or a bundler make them: each release's pages name that release's
files (`app.3f9a1c2b.js`), found through the manifest written with them. `digest.py`
writes a release of it (tests/hosts/test_static_assets.py)."""

import json
import os

from flask import Flask, url_for

app = Flask(__name__)

with open(os.path.join(app.static_folder, "manifest.json"), encoding="utf-8") as handle:
    MANIFEST = json.load(handle)


@app.route("/")
def index():
    # A page as a browser gets it: what to fetch next is in it.
    return (f'<!doctype html><title>release {MANIFEST["release"]}</title>\n'
            f'<link rel="stylesheet" href="{url_for("static", filename=MANIFEST["style.css"])}">\n'
            f'<script src="{url_for("static", filename=MANIFEST["app.js"])}"></script>\n'
            f'<p>release {MANIFEST["release"]}</p>\n')

"""An app whose pages need a table that a one-time step creates (`flask init-db`),
with its SQLite database in the shared `instance/` directory."""

import os
import sqlite3

import click
from flask import Flask

app = Flask(__name__)


def connect() -> sqlite3.Connection:
    return sqlite3.connect(os.path.join(app.instance_path, "app.db"))


@app.cli.command("init-db")
def init_db():
    """Create the tables (once: the database outlives releases in instance/)."""
    with connect() as db:
        db.execute("CREATE TABLE greetings (text TEXT NOT NULL)")
        db.execute("INSERT INTO greetings VALUES ('Hello from the database')")
    click.echo(f"initialised the database as uid {os.getuid()}")


@app.route("/")
def index():
    with connect() as db:
        (text,) = db.execute("SELECT text FROM greetings").fetchone()
    return text + "\n"

"""Notes in PostgreSQL (`database: postgresql`): Flask-SQLAlchemy on the
DATABASE_URL the deploy hands the app, its schema made by Flask-Migrate's
migrations (`migrate_commands = ["flask --app wsgi db upgrade"]`)."""

import os

from flask import Flask, request
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import inspect

VERSION = "v1"

app = Flask(__name__)
# postgresql://role:password@/database?host=/var/run/postgresql, the libpq URI; for
# SQLAlchemy the driver is named in the scheme: psycopg (3), in requirements.txt.
app.config["SQLALCHEMY_DATABASE_URI"] = os.environ["DATABASE_URL"].replace("postgresql://", "postgresql+psycopg://", 1)
db = SQLAlchemy(app)
Migrate(app, db)


class Note(db.Model):
    id = db.Column(db.Integer, primary_key=True)
    text = db.Column(db.String(200), nullable=False)


@app.route("/")
def index():
    return f"notespg {VERSION}: {db.session.query(Note).count()} notes\n"


@app.route("/notes", methods=["GET", "POST", "DELETE"])
def notes():
    if request.method == "POST":
        db.session.add(Note(text=request.form["text"]))
    elif request.method == "DELETE":
        db.session.query(Note).delete()
    db.session.commit()
    return "".join(f"{note.text}\n" for note in db.session.query(Note).order_by(Note.id))


@app.route("/schema")
def schema():
    columns = [column["name"] for column in inspect(db.engine).get_columns("note")]
    return " ".join(sorted(columns)) + "\n"

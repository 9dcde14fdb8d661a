"""Alembic's environment for Flask-Migrate: the app's engine and models."""

from alembic import context
from flask import current_app

database = current_app.extensions["migrate"].db

with database.engine.connect() as connection:
    context.configure(connection=connection, target_metadata=database.metadata)
    with context.begin_transaction():
        context.run_migrations()

"""The notes' author (the second migration: tests/hosts/test_database.py ships it in
migrations/versions/ on the next deploy).

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade():
    # Nullable: the release still live while the migration runs knows nothing of it.
    op.add_column("note", sa.Column("author", sa.String(length=80), nullable=True))


def downgrade():
    op.drop_column("note", "author")

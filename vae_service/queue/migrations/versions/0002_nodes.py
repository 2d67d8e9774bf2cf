"""The Ray nodes a job's workers ran on (from its outcome).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("nodes", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("jobs", "nodes")

"""Preemption: whether a job may be stopped for a higher-priority one, how often it was, and
when its current attempt started running (the thrash guard).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("preemptible", sa.Boolean(), nullable=False, server_default=sa.true()))
        batch.add_column(sa.Column("preemptions", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("running_since", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("running_since")
        batch.drop_column("preemptions")
        batch.drop_column("preemptible")

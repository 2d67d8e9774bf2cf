"""How a job's workers are placed, node by node: its bundles (one per worker) and their
strategy, as JSON (core/placement.Bundles). Jobs stored before have none: they count as one
bundle of everything they ask for. And an index in the order the dispatcher reads the front of
the queue (each user's first jobs at each priority: Store.queue_head), so that read needs no sort.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("bundles", sa.Text(), nullable=True))
    op.create_index("ix_jobs_state_priority_user_created", "jobs", ["state", "priority", "submitted_by", "created_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_jobs_state_priority_user_created", "jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("bundles")

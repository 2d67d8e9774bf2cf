"""Where each job's run goes (its run directory, a path or s3://bucket/prefix/<name>-<id>),
decided when the job is stored: the job's entrypoint runs there and the dispatcher reads the
job's outcome.json from there. Jobs stored before have none: their directory is worked out
from their spec, as it was then (dispatcher.outcome_location).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("run_dir", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("run_dir")

"""Fair share's history: each user's decayed usage (dominant-share-seconds) and current share,
one row per user, so that a restarted server remembers who held the cluster lately.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "fair_share_usage",
        sa.Column("submitted_by", sa.String(200), primary_key=True),
        sa.Column("usage_s", sa.Float(), nullable=False),
        sa.Column("current_share", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("fair_share_usage")

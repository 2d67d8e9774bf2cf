"""Idempotency keys unique per submitter, not across the server; why a queued job waits.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

NEW_KEY = "uq_jobs_submitted_by_idempotency_key"
OLD_KEY = "uq_jobs_idempotency_key"  # 0001 left it unnamed; on SQLite this convention names it
CONVENTION = {"uq": "uq_%(table_name)s_%(column_0_name)s"}


def _old_key_name(bind) -> str:
    if bind.dialect.name == "sqlite":
        return OLD_KEY
    for constraint in sa.inspect(bind).get_unique_constraints("jobs"):
        if constraint["column_names"] == ["idempotency_key"]:
            return constraint["name"]  # PostgreSQL's own: jobs_idempotency_key_key
    raise RuntimeError("migration 0003: the jobs table has no unique constraint on idempotency_key")


def upgrade() -> None:
    bind = op.get_bind()
    old = _old_key_name(bind)
    with op.batch_alter_table("jobs", naming_convention=CONVENTION) as batch:
        batch.drop_constraint(old, type_="unique")
        batch.create_unique_constraint(NEW_KEY, ["submitted_by", "idempotency_key"])
        batch.add_column(sa.Column("waiting_reason", sa.Text(), nullable=True))


def downgrade() -> None:
    # Fails if two submitters used the same key meanwhile: that is what the old constraint forbade.
    with op.batch_alter_table("jobs", naming_convention=CONVENTION) as batch:
        batch.drop_column("waiting_reason")
        batch.drop_constraint(NEW_KEY, type_="unique")
        batch.create_unique_constraint(OLD_KEY, ["idempotency_key"])

"""Alembic environment: always run programmatically by `vae_service.queue.db.upgrade`, which
hands over an open connection (there is no alembic.ini)."""

from alembic import context

from vae_service.queue.models import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()

"""`vae server`: the job queue's API and its dispatcher in one process."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer

from vae_service.cli.common import app, fail, say
from vae_service.core.errors import one_line, redact


@app.command(rich_help_panel="Queue")
def server(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="Port to listen on."),
    db: Optional[str] = typer.Option(None, "--db", help="Job store URL: sqlite:///path or postgresql://user@host/db "
                                     "[env VAE_DB_URL; default sqlite:///$VAE_HOME/queue.db]"),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Ray Jobs API (dashboard) URL "
                                              "[env VAE_RAY_ADDRESS; default http://127.0.0.1:8265]"),
    no_dispatcher: bool = typer.Option(False, "--no-dispatcher", help="Serve the API only (another server dispatches)."),
    token_file: Optional[Path] = typer.Option(None, "--token-file", help="File of API tokens, one per line "
                                              "[env VAE_API_TOKEN_FILE; VAE_API_TOKEN takes a comma-separated list]"),
) -> None:
    """Run the job queue: the HTTP API and the dispatcher that runs queued jobs on Ray.

    With no token configured, a random one is written to $VAE_HOME/api_token (default
    ./.vae/api_token), where `vae submit` in the same directory finds it. Ray's own token is
    read from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token.
    """
    from vae_service.queue.settings import Settings

    overrides = {k: v for k, v in {"db_url": db, "ray_address": ray_address, "api_token_file": token_file}.items() if v}
    try:
        settings = Settings(**overrides)
    except ValueError as exc:  # pydantic's ValidationError: a VAE_* setting that does not parse
        fail(f"error: settings: {one_line(exc, 300)}", 2)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per call to Ray, twice a second
    import uvicorn

    from vae_service.queue.api import create_app
    from vae_service.queue.auth import TokenError, TokenSet
    from vae_service.queue.db import DatabaseError, make_engine, upgrade
    from vae_service.queue.dispatcher import Dispatcher
    from vae_service.queue.leader import leadership_for
    from vae_service.queue.policy import Policy
    from vae_service.queue.quotas import FairShare, Quota
    from vae_service.queue.scheduling import Rules
    from vae_service.queue.ray_jobs import RayJobs, ray_token
    from vae_service.queue.store import Store
    from vae_service.tracking.mlflow_run import prepare_local_store

    try:
        tokens = TokenSet.from_settings(settings, create=True)
    except TokenError as exc:
        fail(f"error: {exc}", 2)
    url = settings.database_url
    try:
        engine = make_engine(url)
        upgrade(engine)
    except DatabaseError as exc:
        fail(f"error: {exc}", 2)
    except Exception as exc:  # unreachable database, bad credentials: one line, no password
        fail(f"error: job store {redact(url)}: {one_line(exc, 300)}", 2)
    store = Store(engine)
    if not no_dispatcher:
        prepare_local_store()
    ray = RayJobs(settings.ray_address, ray_token(), timeout_s=settings.ray_timeout_s)
    quota = Quota.from_settings(settings)
    fair = FairShare.from_settings(settings)
    rules = Rules(quota=quota, preempt_min_run_s=settings.preempt_min_run_s, fair_share=fair)
    dispatcher = None if no_dispatcher else Dispatcher(store, ray, python=settings.job_python, rules=rules,
                                                      grace_s=settings.preempt_grace_s)
    leadership = None if no_dispatcher else leadership_for(engine)
    say(f"vae server: API on http://{host}:{port} (docs at /docs), store {redact(url)}, "
        f"Ray {redact(settings.ray_address)}, dispatcher {'off' if no_dispatcher else 'on'}, tokens from {tokens.source}")
    application = create_app(store, tokens, ray=ray, dispatcher=dispatcher, leadership=leadership,
                             storage_uri=settings.storage_uri, policy=Policy.from_settings(settings),
                             max_grid_points=settings.max_grid_points, quota=quota, max_failures=settings.max_failures, fair=fair)
    uvicorn.run(application, host=host, port=port, log_level="warning", access_log=False)

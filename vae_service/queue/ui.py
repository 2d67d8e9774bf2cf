"""The web page over the API: a static page (ui/index.html, app.js, style.css; no build step,
no framework, nothing fetched from elsewhere) that lists the jobs and shows one, its spec and
its log, calling the same JSON routes as any client with the token the user pastes in.

    GET  /ui                   the page (no token: it holds no data; app.js keeps the token in
                               the tab's sessionStorage and sends it as a bearer header)
    GET  /ui/app.js, /ui/style.css

`job_links` gives GET /jobs/{id} its links to the job's MLflow run and Ray job.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional
from urllib.parse import quote, urlsplit, urlunsplit

from fastapi import APIRouter
from fastapi.responses import Response

from vae_service.queue.settings import Settings

UI_DIR = Path(__file__).with_name("ui")
# Everything from this server only; no inline script or style, no frames, no forms posted anywhere.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # job ids in the page's address stay out of MLflow's and Ray's logs
    "Cache-Control": "no-cache",  # revalidate: a new release's app.js is picked up at once
}
FILES = {"": ("index.html", "text/html; charset=utf-8"),
         "/app.js": ("app.js", "text/javascript; charset=utf-8"),
         "/style.css": ("style.css", "text/css; charset=utf-8")}


def ui_router() -> APIRouter:
    """The page's routes (left out of the OpenAPI description: they are not API)."""
    router = APIRouter(include_in_schema=False)
    for suffix, (name, media_type) in FILES.items():
        body = (UI_DIR / name).read_bytes()  # a few KB each, read once

        def serve(body: bytes = body, media_type: str = media_type) -> Response:
            return Response(body, media_type=media_type, headers=HEADERS)

        router.add_api_route(f"/ui{suffix}", serve, methods=["GET"])
    return router


def job_links(job, settings: Settings) -> dict:
    """{"mlflow": URL or None, "ray": URL or None}: the job's MLflow run and its Ray job in their
    web UIs. MLflow's `#/runs/<id>` finds the run's experiment itself; Ray's dashboard takes a
    submission id at `#/jobs/<id>`. The dashboard is the Jobs API's server (VAE_RAY_ADDRESS) unless
    VAE_RAY_UI_URL names the address a browser reaches it at."""
    ray = _base_url(settings.ray_ui_url or settings.ray_address)
    mlflow = _base_url(settings.mlflow_ui_url)
    return {
        "mlflow": f"{mlflow}/#/runs/{quote(job.mlflow_run_id, safe='')}" if mlflow and job.mlflow_run_id else None,
        "ray": f"{ray}/#/jobs/{quote(job.ray_submission_id, safe='')}" if ray and job.ray_submission_id else None,
    }


def _base_url(url: Optional[str]) -> Optional[str]:
    """An http(s) URL without its user:password@, query or fragment and without a trailing
    slash; None for anything else (ray://, auto, unset)."""
    url = (url or "").strip()
    if not url.lower().startswith(("http://", "https://")):
        return None
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:  # not a port number: no link rather than a broken one
        return None
    host = parts.hostname
    if not host:
        return None
    host = f"[{host}]" if ":" in host else host  # an IPv6 literal
    netloc = f"{host}:{port}" if port else host
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))

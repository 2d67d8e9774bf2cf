"""A small HTTP client for the API (used by the `vae` queue commands).

Errors become `ApiError(message, code)` with one line for the user and the CLI's exit code:
2 for an unreachable API, a refused token, an unknown job or a bad spec.

A submission always carries an Idempotency-Key (a random one unless the caller gives one) and is
retried a few times when the API is briefly away or answers 503, so a lost answer never makes a
second job.
"""

from __future__ import annotations

import uuid
from typing import Iterator, Optional

import httpx
import tenacity

from vae_service.core.errors import ShownError
from vae_service.queue.auth import client_token
from vae_service.queue.settings import Settings

TIMEOUT_S = 30.0
SUBMIT_ATTEMPTS = 4  # waits 0.5 s, 1 s, 2 s between them
RETRIABLE = (None, 502, 503, 504)  # None: no answer at all


class ApiError(ShownError):
    def __init__(self, message: str, code: int = 2, status: Optional[int] = None, problems: Optional[list] = None):
        super().__init__(message)
        self.code, self.status, self.problems = code, status, problems or []


class Client:
    def __init__(self, settings: Optional[Settings] = None, url: Optional[str] = None, token: Optional[str] = None):
        settings = settings or Settings()
        self.url = (url or settings.api_url).rstrip("/")
        token = token or client_token(settings)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=TIMEOUT_S)

    def close(self) -> None:
        self._http.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _request(self, method: str, path: str, **kwargs) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ApiError(f"cannot reach the API at {self.url}: {exc.__class__.__name__} (is `vae server` running? VAE_API_URL)") from None
        self._raise_for(response)
        return response

    def _raise_for(self, response: httpx.Response) -> None:
        if response.status_code < 400:
            return
        try:
            detail = response.json().get("detail")
        except ValueError:
            detail = response.text.strip()[:300]
        if response.status_code == 401:
            raise ApiError(f"the API at {self.url} refused the token (set VAE_API_TOKEN or VAE_API_TOKEN_FILE)", status=401)
        if response.status_code == 422 and isinstance(detail, list):
            lines = [f"{p.get('path') or '.'.join(map(str, p.get('loc', [])))}: {p.get('msg')}"
                     + (f" (line {p['line']})" if p.get("line") else "") for p in detail]
            raise ApiError("\n".join(lines), status=422, problems=detail)
        raise ApiError(str(detail) if detail else f"HTTP {response.status_code}", status=response.status_code)

    def submit(self, spec_text: str, priority: int = 0, overrides: tuple[str, ...] = (), idempotency_key: Optional[str] = None) -> dict:
        headers = {"Content-Type": "application/yaml", "Idempotency-Key": idempotency_key or uuid.uuid4().hex}
        params = [("priority", str(priority))] + [("set", o) for o in overrides]
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(SUBMIT_ATTEMPTS), wait=tenacity.wait_exponential(multiplier=0.5, max=2),
            retry=tenacity.retry_if_exception(lambda exc: isinstance(exc, ApiError) and exc.status in RETRIABLE),
            reraise=True)
        return retrying(self._request, "POST", "/jobs", content=spec_text.encode(), params=params, headers=headers).json()

    def jobs(self, state: Optional[str] = None, limit: int = 50, offset: int = 0, user: Optional[str] = None) -> dict:
        params = {"limit": limit, "offset": offset, **({"state": state} if state else {}), **({"user": user} if user else {})}
        return self._request("GET", "/jobs", params=params).json()

    def fair_share(self) -> dict:
        return self._request("GET", "/fair-share").json()

    def job(self, job_id: str) -> dict:
        return self._request("GET", f"/jobs/{job_id}").json()

    def cancel(self, job_id: str) -> dict:
        return self._request("POST", f"/jobs/{job_id}/cancel").json()

    def set_priority(self, job_id: str, priority: int) -> dict:
        return self._request("POST", f"/jobs/{job_id}/priority", params={"priority": priority}).json()

    def logs(self, job_id: str) -> str:
        return self._request("GET", f"/jobs/{job_id}/logs").text

    def log_page(self, job_id: str, *, offset: Optional[int] = None, limit: Optional[int] = None,
                 tail: Optional[int] = None) -> tuple[bytes, int, Optional[int]]:
        """(bytes, where they start, the whole log's size) — see GET /jobs/{id}/logs; with
        `tail`, the last lines and (0, None)."""
        params = {k: v for k, v in {"offset": offset, "limit": limit, "tail": tail}.items() if v is not None}
        response = self._request("GET", f"/jobs/{job_id}/logs", params=params)
        size = response.headers.get("x-log-size")
        return response.content, int(response.headers.get("x-log-offset", 0)), int(size) if size else None

    def follow_logs(self, job_id: str) -> Iterator[str]:
        try:
            with self._http.stream("GET", f"/jobs/{job_id}/logs", params={"follow": "true"},
                                   timeout=httpx.Timeout(TIMEOUT_S, read=None)) as response:
                if response.status_code >= 400:
                    response.read()
                    self._raise_for(response)
                yield from response.iter_text()
        except httpx.HTTPError as exc:
            raise ApiError(f"log stream from {self.url} broke: {exc.__class__.__name__}") from None

"""A small HTTP client for the API (used by the `vae` queue commands).

Errors become `ApiError(message, code)` with one line for the user and the CLI's exit code:
2 for an unreachable API, a refused token, an unknown job or a bad spec.
"""

from __future__ import annotations

from typing import Iterator, Optional

import httpx

from vae_service.queue.auth import client_token
from vae_service.queue.settings import Settings

TIMEOUT_S = 30.0


class ApiError(Exception):
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
        headers = {"Content-Type": "application/yaml"}
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        params = [("priority", str(priority))] + [("set", o) for o in overrides]
        return self._request("POST", "/jobs", content=spec_text.encode(), params=params, headers=headers).json()

    def jobs(self, state: Optional[str] = None, limit: int = 50, offset: int = 0) -> dict:
        params = {"limit": limit, "offset": offset, **({"state": state} if state else {})}
        return self._request("GET", "/jobs", params=params).json()

    def job(self, job_id: str) -> dict:
        return self._request("GET", f"/jobs/{job_id}").json()

    def cancel(self, job_id: str) -> dict:
        return self._request("POST", f"/jobs/{job_id}/cancel").json()

    def logs(self, job_id: str) -> str:
        return self._request("GET", f"/jobs/{job_id}/logs").text

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

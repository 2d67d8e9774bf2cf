"""Secrets never leave: a real `vae server` holding an API token, a Ray token, S3 keys and
passwords in its database, Ray and MLflow URLs is driven through every route (hostile specs,
wrong tokens, logs from a Ray that is not there, cancels), and the `vae` CLI is run against it
with a password in its API URL. Every log line, answer (body and headers) and CLI output is
then searched for each secret: none may appear."""

from __future__ import annotations

import os
import secrets
import subprocess

import httpx
import pytest
from queue_support import VAE, free_port, start_server, temporary_database, tiny_spec_text, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

HOSTILE = [
    "resources: {cpus_per_worker: .inf}\n",
    "a: &a [*a]\n",
    "optim: {lr: 1, lr: 2}\n",
    "tracking: {alias: champion}\n",
    "storage: {uri: s3://user:inline-pw@bucket/runs}\n",
    "\x00\x01garbage",
    "kind: sweep\nsweep: {space: {optim.lr: {grid: [" + ",".join(["1e-3"] * 5) + "]}}}\n",
]


def test_no_secret_reaches_a_log_an_answer_or_the_cli(tmp_path):
    secret = {name: f"{name.lower()}-{secrets.token_hex(8)}" for name in
              ("api_token", "ray_token", "aws_secret", "db_password", "ray_password", "mlflow_password", "api_password")}
    with temporary_database("postgresql", tmp_path) as plain_url:
        db_url = plain_url.replace("postgres@", f"postgres:{secret['db_password']}@")  # trust auth: accepted
        ray_port, mlflow_port = free_port(), free_port()  # nothing listens there
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env.update(
            VAE_API_TOKEN=f"alice:{secret['api_token']}", VAE_HOME=str(tmp_path / ".vae"), VAE_DB_URL=db_url,
            VAE_RAY_ADDRESS=f"http://ray:{secret['ray_password']}@127.0.0.1:{ray_port}", VAE_RAY_TIMEOUT_S="1",
            RAY_AUTH_TOKEN=secret["ray_token"], AWS_ACCESS_KEY_ID="abuse-key-id", AWS_SECRET_ACCESS_KEY=secret["aws_secret"],
            MLFLOW_TRACKING_URI=f"http://ml:{secret['mlflow_password']}@127.0.0.1:{mlflow_port}")
        server = start_server(tmp_path, env)
        seen: list[str] = []

        def keep(response: httpx.Response) -> httpx.Response:
            seen.append(response.text + "\n" + "\n".join(f"{k}: {v}" for k, v in response.headers.items()))
            return response

        try:
            auth = {"Authorization": f"Bearer {secret['api_token']}"}
            with httpx.Client(base_url=server.url, timeout=30) as http:
                job_ids = [keep(http.post("/jobs", content=tiny_spec_text(f"s{i}"), headers=auth)).json()["id"]
                           for i in range(3)]
                for body in HOSTILE:
                    keep(http.post("/jobs", content=body.encode("utf-8", "surrogatepass"), headers=auth))
                for headers in ({}, {"Authorization": "Bearer " + secret["api_token"][:-1]}, {"Authorization": secret["api_token"]}):
                    keep(http.get("/jobs", headers=headers))
                # The dispatcher tries Ray (not there) with its token and password-bearing URL.
                wait_for(lambda: "dispatcher:" in server.log() and "127.0.0.1:" + str(ray_port) in server.log(),
                         30, "the dispatcher to report Ray unreachable")
                for job_id in job_ids:
                    keep(http.get(f"/jobs/{job_id}", headers=auth))
                    keep(http.get(f"/jobs/{job_id}/logs", headers=auth))
                keep(http.post(f"/jobs/{job_ids[0]}/cancel", headers=auth))
                keep(http.get("/jobs", headers=auth))
                keep(http.get("/metrics", headers=auth))
                keep(http.get("/openapi.json"))
            cli_env = dict(env, VAE_API_TOKEN=secret["api_token"],
                           VAE_API_URL=server.url.replace("http://", f"http://me:{secret['api_password']}@"))
            spec = tmp_path / "bad.yaml"
            spec.write_text(HOSTILE[0])
            for args in (["jobs"], ["status", job_ids[1]], ["logs", job_ids[1]], ["submit", str(spec)],
                         ["cancel", job_ids[2]], ["validate", str(spec)]):
                done = subprocess.run([VAE, *args], env=cli_env, capture_output=True, text=True, timeout=60)
                seen.append(done.stdout + done.stderr)
            unreachable = dict(cli_env, VAE_API_URL=f"http://me:{secret['api_password']}@127.0.0.1:{free_port()}")
            done = subprocess.run([VAE, "jobs"], env=unreachable, capture_output=True, text=True, timeout=60)
            seen.append(done.stdout + done.stderr)
            assert done.returncode == 2 and "***@127.0.0.1" in done.stderr  # the path that used to print it
        finally:
            server.stop()
        seen.append(server.log())

    everything = "\n".join(seen)
    leaked = {name for name, value in secret.items() if value in everything}
    assert not leaked, f"secrets found in logs, answers or CLI output: {sorted(leaked)}"
    assert "Traceback" not in server.log()

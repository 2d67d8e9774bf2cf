"""Job queue under load: the API's submission rate and latency on SQLite and PostgreSQL, the
dispatch latency when the cluster has room, and submit → first training step on a warm cluster.

    python bench/queue_load.py [--submissions 2000] [--concurrency 32] [--dispatch-jobs 20] [--first-step-runs 2]
    python bench/queue_load.py --tiny [--output PATH]

Everything runs on this machine: a Ray head with token auth on free ports (`ray start --head`),
`vae server` processes, and the load generator (one asyncio process, httpx). On 2 cores the
generator and the server compete for the CPU: the submission rate is a floor for a server
with its own cores. Prints a table and writes bench/results/queue_load.json.

  submissions   POST /jobs (a 1 KB YAML spec, validated, normalised, stored) from `concurrency`
                clients at once against `vae server --no-dispatcher`
  dispatch      created → handed to Ray (the store's dispatch_latency_s), one job a second to a
                server with its dispatcher; each is cancelled once handed over, so there is room
  first step    a tiny 1-epoch job on a warm cluster (one job has already run), broken down:
                queue (created → handed to Ray), Ray job start (→ `vae run` calls the trainer,
                i.e. driver process start and imports), worker start (→ the first training step,
                Ray Train's start-up), from the run's metrics.json (startup_s, first_step_at)

--tiny (CI's smoke run, tests/test_benches.py): every part on both stores, 20 submissions from 4
clients, 1 dispatched job per store, 1 first-step run with no warm-up run before it; the JSON goes
to --output (default: a temporary directory), never to bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "queue_load.json"
sys.path.insert(0, str(REPO / "tests"))
from queue_support import ray_head, start_server, temporary_database, tiny_spec_text  # noqa: E402

TOKEN = "bench-token"
TARGETS = {"submissions_per_s": 200.0, "dispatch_p95_s": 1.0, "submit_to_first_step_s": 5.0}
TINY = {"submissions": 20, "concurrency": 4, "dispatch_jobs": 1, "first_step_runs": 1, "warm_up": 0}
sys.path.insert(0, str(REPO / "bench"))
import _tiny  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


async def submit_load(url: str, n: int, concurrency: int) -> dict:
    spec = tiny_spec_text("load").encode()
    latencies: list[float] = []
    errors = 0
    queue: asyncio.Queue = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, limits=limits, timeout=60) as client:
        async def worker():
            nonlocal errors
            while not queue.empty():
                queue.get_nowait()
                started = time.perf_counter()
                response = await client.post("/jobs", content=spec, params={"priority": 0})
                latencies.append(time.perf_counter() - started)
                errors += response.status_code != 201

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return {"submissions": n, "concurrency": concurrency, "errors": errors, "wall_s": wall,
            "submissions_per_s": n / wall, "p50_ms": 1000 * percentile(latencies, 50),
            "p95_ms": 1000 * percentile(latencies, 95), "p99_ms": 1000 * percentile(latencies, 99)}


def wait_state(client: httpx.Client, job_id: str, states: set, timeout: float, min_attempts: int = 0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        if job["state"] in states and job["attempts"] >= min_attempts:
            return job
        time.sleep(0.1)
    raise SystemExit(f"job {job_id} did not reach {states} in {timeout:.0f} s")


def dispatch_latency(server, jobs: int) -> dict:
    """One job a second; each is cancelled as soon as it is handed to Ray, so the cluster (and
    this machine's two cores) always has room and the next job measures the queue alone."""
    client = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    latencies, attempts = [], []
    for _ in range(jobs):
        job_id = client.post("/jobs", content=tiny_spec_text("dispatch")).json()["id"]
        # `submitted` is committed before the hand-off to Ray counts its attempt: cancel once
        # Ray has it (the latency is the job's stored created → submitted), and read the
        # attempts when the job has ended.
        handed = wait_state(client, job_id, {"submitted", "running", "failed"}, 60, min_attempts=1)
        latencies.append(handed["dispatch_latency_s"])
        client.post(f"/jobs/{job_id}/cancel")
        attempts.append(wait_state(client, job_id, {"cancelled", "failed", "succeeded"}, 60)["attempts"])
        time.sleep(1.0)
    return {"jobs": jobs, "p50_s": percentile(latencies, 50), "p95_s": percentile(latencies, 95),
            "max_s": max(latencies), "each_handed_to_ray_once": all(a == 1 for a in attempts)}


def first_step(server, runs_dir: Path, runs: int, warm_up: int) -> dict:
    client = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    rows = []
    for i in range(warm_up + runs):  # the warm-up runs warm the cluster and are not counted
        job_id = client.post("/jobs", content=tiny_spec_text(f"first-step-{i}")).json()["id"]
        job = wait_state(client, job_id, {"succeeded", "failed"}, 300)
        if job["state"] != "succeeded":
            raise SystemExit(f"job {job_id} failed: {job['error']}")
        # The run's own record (jobs/train.py RunResult), beside it under the server's runs/.
        outcome = json.loads((runs_dir / f"{job['name']}-{job_id}" / "metrics.json").read_text())
        created = datetime.fromisoformat(job["created_at"]).timestamp()
        handed = datetime.fromisoformat(job["submitted_at"]).timestamp()
        trainer_called = outcome["first_step_at"] - outcome["startup_s"]
        row = {"queue_s": handed - created, "ray_job_start_s": trainer_called - handed,
               "worker_start_s": outcome["startup_s"], "total_s": outcome["first_step_at"] - created}
        print(f"  first step run {i}{' (warm-up)' if i < warm_up else ''}: {row['total_s']:.1f} s", file=sys.stderr)
        if i >= warm_up:
            rows.append(row)
    return {"runs": rows, **{k: statistics.median(r[k] for r in rows) for k in rows[0]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--submissions", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--dispatch-jobs", type=int, default=20)
    parser.add_argument("--first-step-runs", type=int, default=2)
    parser.add_argument("--warm-up", type=int, default=1, help="Uncounted first-step runs before them (imports, the data cache).")
    args = _tiny.parse_args(parser, RESULTS, TINY)

    import tempfile

    work = Path(tempfile.mkdtemp(prefix="vae-queue-bench-"))
    os.environ.setdefault("VAE_DATA_DIR", str(REPO.parent / "shared" / "data"))
    os.environ["VAE_DATA_DIR"] = str(Path(os.environ["VAE_DATA_DIR"]).resolve())
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work}/mlflow.db"  # benchmark runs are not experiments
    results = {}
    with ray_head(num_cpus=8) as head:  # 8 logical CPUs: room for every dispatch-latency job
        base_env = head.server_env(VAE_API_TOKEN=TOKEN)
        for backend in ("sqlite", "postgresql"):
            folder = work / backend
            folder.mkdir()
            with temporary_database(backend, folder) as db_url:
                env = dict(base_env, VAE_DB_URL=db_url, VAE_HOME=str(folder / ".vae"))
                api_only = start_server(folder, env, "--no-dispatcher", name="api")
                try:
                    load = asyncio.run(submit_load(api_only.url, args.submissions, args.concurrency))
                    print(f"  {backend}: {load['submissions_per_s']:.0f} submissions/s", file=sys.stderr)
                finally:
                    api_only.stop()
            # A fresh store for the dispatcher: the load jobs above must not all be admitted.
            with temporary_database(backend, folder / "dispatch") as db_url:
                env = dict(base_env, VAE_DB_URL=db_url, VAE_HOME=str(folder / ".vae"))
                server = start_server(folder, env, name="dispatch")
                try:
                    dispatch = dispatch_latency(server, args.dispatch_jobs)
                    print(f"  {backend}: dispatch p95 {dispatch['p95_s']:.3f} s", file=sys.stderr)
                    if backend == "sqlite":
                        results["first_step"] = first_step(server, folder / "runs", args.first_step_runs, args.warm_up)
                finally:
                    server.stop()
            results[backend] = {"submit": load, "dispatch": dispatch}

    fs = results["first_step"]
    print(f"\n{'store':<12}{'submits/s':>11}{'p50 ms':>9}{'p95 ms':>9}{'errors':>8}{'dispatch p50 s':>16}{'p95 s':>8}")
    for backend in ("sqlite", "postgresql"):
        s, d = results[backend]["submit"], results[backend]["dispatch"]
        print(f"{backend:<12}{s['submissions_per_s']:>11.0f}{s['p50_ms']:>9.1f}{s['p95_ms']:>9.1f}{s['errors']:>8}"
              f"{d['p50_s']:>16.3f}{d['p95_s']:>8.3f}")
    print(f"\nsubmit → first training step (warm cluster, median of {len(fs['runs'])}): {fs['total_s']:.1f} s = "
          f"queue {fs['queue_s']:.2f} + Ray job start {fs['ray_job_start_s']:.1f} + worker start {fs['worker_start_s']:.1f}")
    worst_rate = min(results[b]["submit"]["submissions_per_s"] for b in ("sqlite", "postgresql"))
    worst_dispatch = max(results[b]["dispatch"]["p95_s"] for b in ("sqlite", "postgresql"))
    reached = {"submissions_per_s": worst_rate, "dispatch_p95_s": worst_dispatch, "submit_to_first_step_s": fs["total_s"]}
    met = {"submissions_per_s": worst_rate >= TARGETS["submissions_per_s"],
           "dispatch_p95_s": worst_dispatch <= TARGETS["dispatch_p95_s"],
           "submit_to_first_step_s": fs["total_s"] <= TARGETS["submit_to_first_step_s"]}
    for key, target in TARGETS.items():
        print(f"target {key}: {target:g} → reached {reached[key]:.2f} ({'met' if met[key] else 'NOT met'})")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({
        "benchmark": "queue_load",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "gpu": False},
        "tiny": args.tiny,
        "setup": {"submissions": args.submissions, "concurrency": args.concurrency, "dispatch_jobs": args.dispatch_jobs,
                  "first_step_runs": args.first_step_runs, "warm_up": args.warm_up, "spec": "tiny: 256 images, MLP 784-32-2, 1 epoch, 1 worker",
                  "note": "load generator, API server, Ray head and jobs share the machine's cores"},
        "targets": TARGETS, "reached": reached, "met": met,
        "results": results,
    }, indent=2))
    print(f"\nwrote {_tiny.shown(args.output)}")


if __name__ == "__main__":
    main()

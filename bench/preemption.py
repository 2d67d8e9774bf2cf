"""Preemption: how long an urgent job waits when the cluster is full of lower-priority work, and
how much work each preemption costs the job it stops.

    python bench/preemption.py [--rounds 3] [--long-epochs 6] [--warm-up 1]
    python bench/preemption.py --tiny [--output PATH]

Everything runs on this machine: a Ray head with token auth and 2 CPUs (`ray start --head`), one
`vae server` with its dispatcher (VAE_PREEMPT_MIN_RUN_S=0), real trainings. Each round:

  baseline   the urgent job (priority 10, both CPUs, 1 epoch) on an idle cluster: submit → its
             first training step
  preempted  a long job (priority 1, both CPUs) runs; once it has checkpointed an epoch and is
             part-way through the next, the same urgent job is submitted:
               decision      submitted → the long job is `preempting` (the dispatcher chose it)
               resources free  → `preempted` (its driver checkpointed and ended; Ray freed the CPUs)
               first step    → the urgent job's first training step
             then the long job resumes and finishes; work lost = the time it had trained since its
             last whole epoch when it was asked to stop, less what its stop checkpoint kept (it
             finishes the step in flight and checkpoints there: the steps its resumed attempt
             skips, from that attempt's log), also in epochs; and whether every epoch is logged
             exactly once in its MLflow run.

The ratio reported is (submit → first step, preempting) / (submit → first step, idle): what
preemption adds to an urgent job's start. Prints a table and writes bench/results/preemption.json.

--tiny (CI's smoke run, tests/test_benches.py): the same cluster and both measurements, 1 round,
a 5-epoch long job (still training when the urgent job arrives, and epochs enough for a median
epoch time), no warm-up job; the JSON goes to --output (default: a temporary directory), never to
bench/results/.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "preemption.json"
sys.path.insert(0, str(REPO / "tests"))
from queue_support import ray_head, start_server, tiny_spec_text  # noqa: E402

TOKEN = "bench-token"
POLL_S = 0.05
RUNS = Path()  # the server's runs/ folder (set in main)
LONG_BATCH = 32
LONG = ["data.limit=8192", f"optim.batch_size={LONG_BATCH}", "model.hidden=[256]"]
TINY = {"rounds": 1, "long_epochs": 5, "warm_up": 0}
sys.path.insert(0, str(REPO / "bench"))
import _tiny  # noqa: E402


def wait_state(client: httpx.Client, job_id: str, states: set, timeout: float) -> tuple[dict, float]:
    """The job once it is in one of `states`, and when that was first seen (time.time())."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        if job["state"] in states:
            return job, time.time()
        time.sleep(POLL_S)
    raise SystemExit(f"job {job_id} did not reach {states} in {timeout:.0f} s")


def first_step_at(runs: Path, job: dict) -> float:
    """Unix time of the job's first training step, from the metrics.json in its run directory."""
    return json.loads((runs / f"{job['name']}-{job['id']}" / "metrics.json").read_text())["first_step_at"]


def epoch_times(run_id: str) -> list[float]:
    """When each logged epoch ended (unix seconds), in epoch order."""
    from vae_service.tracking.mlflow_run import client

    history = client().get_metric_history(run_id, "train_loss")
    return [m.timestamp / 1000 for m in sorted(history, key=lambda m: m.step)]


def urgent(client: httpx.Client, name: str) -> dict:
    return client.post("/jobs", params={"priority": 10}, content=tiny_spec_text(name, cpus=2)).json()


def baseline(client: httpx.Client, i: int) -> float:
    job = urgent(client, f"idle-{i}")
    created = datetime.fromisoformat(job["created_at"]).timestamp()
    done, _ = wait_state(client, job["id"], {"succeeded", "failed"}, 300)
    if done["state"] != "succeeded":
        raise SystemExit(f"baseline job failed: {done['error']}")
    return first_step_at(RUNS, done) - created


def preempted_round(client: httpx.Client, i: int, long_epochs: int) -> dict:
    spec = tiny_spec_text(f"long-{i}", cpus=2)
    long = client.post("/jobs", params={"priority": 1, "set": LONG + [f"optim.epochs={long_epochs}"]}, content=spec).json()
    run_dir = RUNS / f"long-{i}-{long['id']}"
    deadline = time.monotonic() + 300
    while not list(run_dir.glob("checkpoint_*/state.json")):  # an epoch checkpointed
        if time.monotonic() > deadline:
            raise SystemExit(f"job {long['id']} wrote no checkpoint in 300 s")
        time.sleep(0.1)
    run_id = (run_dir / "mlflow_run_id").read_text().strip()
    time.sleep(1.5)  # part of the next epoch trained (each takes several seconds here)
    job = urgent(client, f"urgent-{i}")
    created = datetime.fromisoformat(job["created_at"]).timestamp()
    _, decided = wait_state(client, long["id"], {"preempting", "preempted", "queued"}, 60)
    _, freed = wait_state(client, long["id"], {"preempted", "queued"}, 300)
    done, _ = wait_state(client, job["id"], {"succeeded", "failed"}, 300)
    if done["state"] != "succeeded":
        raise SystemExit(f"urgent job failed: {done['error']}")
    first = first_step_at(RUNS, done)
    resumed, _ = wait_state(client, long["id"], {"succeeded", "failed"}, 600)
    if resumed["state"] != "succeeded":
        raise SystemExit(f"preempted job did not finish: {resumed['error']}")
    all_ends = epoch_times(run_id)
    checkpointed = [t for t in all_ends if t <= decided]  # the epochs done before the stop
    epoch_s = statistics.median(b - a for a, b in zip(all_ends, all_ends[1:])) if len(all_ends) > 1 else float("nan")
    from vae_service.core import metrics as M
    from vae_service.tracking.mlflow_run import client as mlflow

    history = json.loads((run_dir / "metrics.json").read_text())["history"]  # the run's own record, every epoch
    steps_per_epoch = math.ceil(history[0][M.TRAIN_ITEMS] / LONG_BATCH)
    resumed_at = re.search(r"and\s+(\d+)\s+steps\s+of\s+epoch", client.get(f"/jobs/{long['id']}/logs").text)
    kept_steps = int(resumed_at.group(1)) if resumed_at else 0  # none: it resumed from a whole epoch
    trained_s = decided - max(checkpointed)
    lost_s = max(0.0, trained_s - kept_steps / steps_per_epoch * epoch_s)  # the steps kept ran until the stop landed
    steps = sorted(m.step for m in mlflow().get_metric_history(run_id, "train_loss"))
    return {"decision_s": decided - created, "resources_free_s": freed - created, "first_step_s": first - created,
            "trained_since_epoch_s": trained_s, "kept_steps": kept_steps, "steps_per_epoch": steps_per_epoch,
            "work_lost_s": lost_s, "epoch_s": epoch_s, "work_lost_epochs": lost_s / epoch_s,
            "every_epoch_logged_once": steps == list(range(long_epochs)), "attempts": resumed["attempts"],
            "same_mlflow_run": resumed["mlflow_run_id"] == run_id}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--long-epochs", type=int, default=6)
    parser.add_argument("--warm-up", type=int, default=1, help="Uncounted idle jobs run first (imports, the data cache).")
    args = _tiny.parse_args(parser, RESULTS, TINY)

    work = Path(tempfile.mkdtemp(prefix="vae-preemption-bench-"))
    os.environ["VAE_DATA_DIR"] = str(Path(os.environ.get("VAE_DATA_DIR", REPO.parent / "shared" / "data")).resolve())
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work}/mlflow.db"  # benchmark runs are not experiments
    global RUNS
    RUNS = work / "runs"  # the server runs in `work`; specs keep runs in ./runs
    from vae_service.tracking.mlflow_run import client as mlflow

    mlflow().search_experiments()  # MLflow imported and its store created before anything is timed
    rounds = []
    with ray_head(num_cpus=2) as head:
        server = start_server(work, head.server_env(work, VAE_API_TOKEN=TOKEN, VAE_PREEMPT_MIN_RUN_S="0"))
        client = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
        try:
            for i in range(args.warm_up):
                baseline(client, -1 - i)  # warms the cluster (imports, the data cache); not counted
            for i in range(args.rounds):
                idle = baseline(client, i)
                row = preempted_round(client, i, args.long_epochs)
                row.update(idle_first_step_s=idle, ratio=row["first_step_s"] / idle)
                rounds.append(row)
                print(f"  round {i}: first step {row['first_step_s']:.1f} s (idle {idle:.1f} s), "
                      f"work lost {row['work_lost_s']:.1f} s", file=sys.stderr)
        finally:
            server.stop()

    keys = ["decision_s", "resources_free_s", "first_step_s", "idle_first_step_s", "ratio", "work_lost_s", "work_lost_epochs"]
    median = {k: statistics.median(r[k] for r in rounds) for k in keys}
    print(f"\n{'round':<7}{'decision s':>11}{'free s':>8}{'1st step s':>11}{'idle s':>8}{'ratio':>7}{'lost s':>8}{'lost ep':>9}")
    for i, r in enumerate(rounds + [median]):
        label = str(i) if i < len(rounds) else "median"
        print(f"{label:<7}{r['decision_s']:>11.2f}{r['resources_free_s']:>8.2f}{r['first_step_s']:>11.2f}"
              f"{r['idle_first_step_s']:>8.2f}{r['ratio']:>7.2f}{r['work_lost_s']:>8.2f}{r['work_lost_epochs']:>9.2f}")
    print(f"every epoch logged once, one MLflow run, in every round: "
          f"{all(r['every_epoch_logged_once'] and r['same_mlflow_run'] for r in rounds)}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({
        "benchmark": "preemption",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "gpu": False},
        "tiny": args.tiny,
        "setup": {"rounds": args.rounds, "long_job": f"priority 1, 2 CPUs, {args.long_epochs} epochs, " + ", ".join(LONG),
                  "urgent_job": "priority 10, 2 CPUs, tiny: 256 images, MLP 784-32-2, 1 epoch",
                  "cluster": "Ray head, 2 CPUs; server, Ray and jobs share the machine's 2 cores",
                  "times": "seconds from the urgent job's submission; states polled every 50 ms"},
        "median": median, "rounds": rounds,
    }, indent=2))
    print(f"\nwrote {_tiny.shown(args.output)}")


if __name__ == "__main__":
    main()

"""Training throughput: the plain PyTorch loop vs `vae run` with 1 worker (one Ray task) and 2 (Ray Train).

Same model (MLP 784-400-20 VAE), same data (MNIST train split, on the device as tensors), same
`core.loop.train_epoch`, in one run. Each mode runs in its own process, so every start-up cost
is counted from `python` starting to the first training step.

    python bench/train_throughput.py [--epochs 3] [--repeats 1] [--limit N] [--gpu]
    python bench/train_throughput.py --tiny [--output PATH]

Prints a table and writes bench/results/train_throughput.json. images/s is the training loop's
own rate (steps only, no evaluation), averaged over the epochs after the first.

--tiny (CI's smoke run, tests/test_benches.py): every mode, 1 epoch on 512 images, the Ray modes
joining one Ray the bench starts; the JSON goes to --output (default: a temporary directory),
never to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "train_throughput.json"
TINY = {"epochs": 1, "limit": 512}
sys.path.insert(0, str(REPO / "bench"))
import _tiny  # noqa: E402


def _spec(epochs: int, workers: int, cpus: float, gpu: bool, storage: str, limit: int = 0):
    from vae_service.core.spec_loading import validate_data

    return validate_data({
        "name": f"bench-{workers}w",
        **({"data": {"limit": limit}} if limit else {}),
        "optim": {"epochs": epochs, "batch_size": 128, "seed": 0},
        "resources": {"num_workers": workers, "cpus_per_worker": cpus, "use_gpu": gpu},
        "storage": {"uri": storage, "keep_checkpoints": 1},
        "tracking": {"figures": False},  # not what is measured: ~3 s at each run's end
    })


def run_plain(epochs: int, gpu: bool, process_start: float, limit: int = 0) -> dict:
    import torch

    from vae_service.core import from_spec
    from vae_service.core import metrics as M
    from vae_service.core.data import epoch_shard
    from vae_service.core.loop import train_epoch
    from vae_service.core.model import VAE

    spec = _spec(epochs, 1, os.cpu_count() or 1, gpu, "/tmp/unused", limit)
    torch.set_num_threads(spec.resources.torch_threads)
    device = torch.device("cuda" if gpu else "cpu")
    data = from_spec.training_data(spec, device)
    torch.manual_seed(0)
    model = VAE(from_spec.model_config(spec, data.image_shape)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=spec.optim.lr)
    first_step: list[float] = []
    rates = []
    for epoch in range(epochs):
        shard = epoch_shard(len(data.train), epoch, 0, 1, 0).to(device)
        on_step = (lambda *_: first_step.append(time.time()) if not first_step else None)
        stats = train_epoch(model, optimizer, data.train.images, shard, 128, from_spec.objective(spec), epoch, on_step=on_step)
        rates.append(stats.as_metrics()[M.IMAGES_PER_S])
    return {"rates": rates, "startup_s": first_step[0] - process_start}


def run_ray(epochs: int, workers: int, gpu: bool, process_start: float, limit: int = 0) -> dict:
    import tempfile

    from vae_service.jobs.execute import execute

    from vae_service.jobs.reporter import Reporter

    cpus = max(1, (os.cpu_count() or 1) // workers)
    with tempfile.TemporaryDirectory() as storage:
        # Benchmark runs are not experiments: keep their MLflow records out of ./mlflow.db.
        os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{storage}/mlflow.db")
        outcome = execute(_spec(epochs, workers, cpus, gpu, storage, limit), reporter=Reporter.quiet())
        if outcome.error:
            sys.exit(str(outcome.error))
        result = outcome.result
    return {"rates": [row["images_per_s"] for row in result.history], "startup_s": result.first_step_at - process_start}


def child(mode: str, epochs: int, gpu: bool, process_start: float, limit: int = 0) -> None:
    out = (run_plain(epochs, gpu, process_start, limit) if mode == "plain"
           else run_ray(epochs, int(mode[-1]), gpu, process_start, limit))
    print("RESULT " + json.dumps(out), flush=True)


def measure(mode: str, epochs: int, gpu: bool, limit: int = 0) -> dict:
    start = time.time()
    cmd = [sys.executable, __file__, "--child", mode, "--epochs", str(epochs), "--limit", str(limit), "--start", repr(start)]
    cmd += ["--gpu"] if gpu else []
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    line = next((l for l in done.stdout.splitlines() if l.startswith("RESULT ")), None)
    if done.returncode != 0 or line is None:
        sys.exit(f"{mode} failed:\n{done.stderr[-3000:]}")
    out = json.loads(line[len("RESULT "):])
    steady = out["rates"][1:] or out["rates"]
    return {"images_per_s": statistics.mean(steady), "per_epoch": out["rates"], "startup_s": out["startup_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=1, help="Interleaved repetitions of every mode.")
    parser.add_argument("--gpu", action="store_true", help="use_gpu: true (needs a GPU).")
    parser.add_argument("--modes", default="plain,ray1,ray2", help="Comma-separated subset of plain,ray1,ray2.")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--start", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--limit", type=int, default=0, help="MNIST training images used (0: the whole train split).")
    args = _tiny.parse_args(parser, RESULTS, TINY)
    if args.child:
        child(args.child, args.epochs, args.gpu, args.start, args.limit)
        return

    labels = {"plain": "plain PyTorch loop", "ray1": "Ray, 1 worker (a task)", "ray2": "Ray Train, 2 workers"}
    modes = {m: labels[m] for m in args.modes.split(",")}
    if "plain" not in modes:
        parser.error("--modes must include plain (the baseline)")
    if args.tiny:
        _tiny.start_shared_ray()  # the runs' start-up then leaves out Ray's own: a tiny run's numbers mean nothing
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    for _ in range(args.repeats):
        for mode in modes:  # interleaved, so drift in machine load hits every mode alike
            runs[mode].append(measure(mode, args.epochs, args.gpu, args.limit))
            print(f"  {mode}: {runs[mode][-1]['images_per_s']:,.0f} img/s", file=sys.stderr)

    base = statistics.mean(r["images_per_s"] for r in runs["plain"])
    rows = []
    print(f"\n{'mode':<24}{'images/s':>12}{'vs plain':>10}{'start-up s':>12}")
    for mode, label in modes.items():
        rate = statistics.mean(r["images_per_s"] for r in runs[mode])
        startup = statistics.mean(r["startup_s"] for r in runs[mode])
        rows.append({"mode": mode, "label": label, "images_per_s": rate, "ratio_to_plain": rate / base,
                     "startup_s": startup, "runs": runs[mode]})
        print(f"{label:<24}{rate:>12,.0f}{rate / base:>9.2f}×{startup:>12.1f}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({
        "benchmark": "train_throughput",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "gpu": args.gpu},
        "tiny": args.tiny,
        "setup": {"model": "MLP 784-400-20 VAE",
                  "data": f"MNIST train split ({args.limit:,} images)" if args.limit else "MNIST train split (54,000 images)",
                  "batch_size": 128, "epochs": args.epochs, "repeats": args.repeats,
                  "images_per_s": "mean over epochs after the first", "startup_s": "python start → first training step"},
        "target": "1 worker on Ray >= 0.95x the plain loop",
        "results": rows,
    }, indent=2))
    print(f"\nwrote {_tiny.shown(args.output)}")


if __name__ == "__main__":
    main()

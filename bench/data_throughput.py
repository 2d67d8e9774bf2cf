"""Your own data: the Ray Data streaming path vs the in-memory path.

1. Throughput on MNIST: the same MLP VAE trained by `vae run` with data.loading memory (uint8
   tensors on the worker, index slices) and streaming (Ray Data, `iter_torch_batches` over the
   worker's shard); and the same images as a folder of PNGs (decoded by Ray Data's read_images)
   both ways. images/s is the training loop's own rate (steps only), the median of the epochs
   after the first.
2. Memory: peak memory (PSS, so the object store's shared pages count once) of everything a run
   uses — the `vae run` process and the local Ray it starts (its object store set small through
   RAY_DEFAULT_OBJECT_STORE_MEMORY_PROPORTION) — while it trains on generated Parquet tables of
   float32 vectors 1×, 2× and 4× the object store's size, streamed and in memory.

    VAE_DATA_DIR=../shared/data python bench/data_throughput.py [--epochs 3] [--object-store-mb 128] [--png-images 20000]
                                                                [--limit N] [--multiples 1,2,4] [--only PART]
    VAE_DATA_DIR=../shared/data python bench/data_throughput.py --tiny [--output PATH]

Prints tables and writes bench/results/data_throughput.json. Target: streaming ≥ 0.8× the
in-memory rate on MNIST-sized images, and streaming's peak memory flat as the data grows.

--tiny (CI's smoke run, tests/test_benches.py): both parts, every case, 1 epoch: 512 MNIST IDX
images, 256 PNGs, one Parquet table 0.1× the object store. Every `vae run` joins one Ray that the
bench starts (its object store the memory part's size), instead of starting a local Ray of its
own: a local Ray's start is most of a tiny run, and so the peak memory counts the `vae run`
process alone. The JSON goes to --output (default: a temporary directory), never to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "data_throughput.json"
FEATURES = 256  # float32 per row: 1 KiB
TINY = {"epochs": 1, "png_images": 256, "limit": 512, "multiples": "0.1"}
sys.path.insert(0, str(REPO / "bench"))
import _tiny  # noqa: E402


def vae_run(spec: dict, env: dict, sampler: "PeakMemory | None" = None) -> dict:
    """`vae run SPEC --json -q` in a child process: the run's JSON record."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as handle:
        json.dump(spec, handle)  # JSON is YAML
    command = [sys.executable, "-m", "vae_service.cli", "run", handle.name, "--json", "-q"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    if sampler is not None:
        sampler.watch(process.pid)
    out, err = process.communicate()
    if sampler is not None:
        sampler.stop()
    os.unlink(handle.name)
    records = [line for line in out.splitlines() if line.startswith("{")]  # (libraries may print too)
    if process.returncode != 0 or not records:
        raise SystemExit(f"vae run failed ({process.returncode}):\n{err[-3000:]}\n{out[-2000:]}")
    return json.loads(records[-1])


def training_rate(record: dict) -> float:
    rates = [epoch["images_per_s"] for epoch in record["history"]][1:] or [record["history"][0]["images_per_s"]]
    return statistics.median(rates)


class PeakMemory:
    """Samples the summed PSS of a process tree (a `vae run` and its local Ray) every 0.25 s."""

    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()

    def watch(self, pid: int) -> None:
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, args=(pid,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self, pid: int) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, cluster_pss(pid))
            time.sleep(0.25)


def cluster_pss(pid: int) -> int:
    """The summed PSS of process `pid` and all its descendants: a `vae run` and every process of
    the local Ray it started (GCS, raylet, its agents and workers are all descendants). Not every
    process named ray on the machine: other Ray clusters may run here, and they are not the run's."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for process in processes:
        try:
            total += process.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total


def write_pngs(folder: Path, count: int) -> None:
    """MNIST's first `count` training images as PNG files (one folder per digit)."""
    from PIL import Image

    from vae_service.core.data import load_mnist

    data = load_mnist(download=False, val_fraction=0.0, limit=count).train
    for i, (image, label) in enumerate(zip(data.images[:, 0].numpy(), data.labels.tolist())):
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / str(label) / f"{i:05d}.png")


def write_table(folder: Path, megabytes: int) -> int:
    """Gaussian blobs as Parquet files of ~16 MiB each: `megabytes` MiB of float32 features."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows_per_file, rows = 16 * 1024, megabytes * 1024
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 3, (10, FEATURES)).astype(np.float32)
    for part, start in enumerate(range(0, rows, rows_per_file)):
        n = min(rows_per_file, rows - start)
        x = centres[rng.integers(0, 10, n)] + rng.normal(0, 1, (n, FEATURES)).astype(np.float32)
        pq.write_table(pa.table({f"f{j}": x[:, j] for j in range(FEATURES)}), folder / f"part-{part:04d}.parquet")
    return rows


def object_store_mb(env: dict) -> float:
    """The object store a `vae run` under `env` gets (a local Ray it starts, or the one it joins), in MiB."""
    if "RAY_ADDRESS" in env:
        import ray

        return ray.cluster_resources()["object_store_memory"] / 2**20
    probe = "import ray; ray.init(include_dashboard=False); print(ray.cluster_resources()['object_store_memory'])"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True)
    return float(done.stdout.strip().splitlines()[-1]) / 2**20


def spec(name: str, data: dict, epochs: int, storage: Path, **model) -> dict:
    return {
        "name": name,
        "data": data,
        "model": {"hidden": [400], "latent_dim": 20, **model},
        "optim": {"epochs": epochs, "batch_size": 128, "seed": 0},
        "resources": {"num_workers": 1, "cpus_per_worker": 1},
        "storage": {"uri": str(storage), "keep_checkpoints": 1},
        "tracking": {"figures": False},  # not what is measured: ~3 s at each run's end
    }


def measure_throughput(args, work: Path, env: dict) -> dict:
    """Part 1: images/s of the same MNIST model on each path."""
    rows = []
    pngs = work / "mnist-png"
    write_pngs(pngs, args.png_images)
    idx = {"limit": args.limit} if args.limit else {}
    cases = [
        ("MNIST idx, in memory", {"loading": "memory", **idx}),
        ("MNIST idx, streaming", {"loading": "streaming", **idx}),
        (f"MNIST {args.png_images:,} PNGs, in memory", {"source": str(pngs), "format": "images", "loading": "memory"}),
        (f"MNIST {args.png_images:,} PNGs, streaming", {"source": str(pngs), "format": "images", "loading": "streaming"}),
    ]
    for label, data in cases:
        record = vae_run(spec("throughput", data, args.epochs, work / "runs"), env)
        rows.append({"case": label, "images_per_s": training_rate(record), "wall_s": record["wall_s"],
                     "val_neg_elbo": record["metrics"]["val_neg_elbo"]})
        print(f"  {label}: {rows[-1]['images_per_s']:,.0f} img/s", file=sys.stderr)
    return {"throughput": rows, "streaming_vs_memory_mnist": rows[1]["images_per_s"] / rows[0]["images_per_s"],
            "epochs": args.epochs}


def measure_memory(args, work: Path, env: dict) -> dict:
    """Part 2: peak memory on data 1×, 2×, 4× the object store (--multiples). Each `vae run`
    starts its own local Ray (the embedded default), its object store made small through the
    environment (--tiny: they join the bench's Ray, whose store has that size)."""
    proportion = (args.object_store_mb << 20) / psutil.virtual_memory().total
    store_env = dict(env, RAY_DEFAULT_OBJECT_STORE_MEMORY_PROPORTION=f"{proportion:.6f}")
    rows, sampler = [], PeakMemory()
    for multiple in args.multiples:
        table = work / f"table-{multiple:g}x"
        megabytes = max(1, round(args.object_store_mb * multiple))
        count = write_table(table, megabytes)
        for loading in ("streaming", "memory"):
            data = {"source": str(table), "format": "parquet", "loading": loading}
            record = vae_run(spec("memory", data, 1, work / "runs", likelihood="gaussian", hidden=[64], latent_dim=8),
                             store_env, sampler)
            rows.append({"data_mb": megabytes, "rows": count, "loading": loading,
                         "peak_mb": sampler.peak / 2**20, "images_per_s": training_rate(record)})
            print(f"  {multiple:g}× ({count:,} rows) {loading}: peak {rows[-1]['peak_mb']:,.0f} MiB", file=sys.stderr)
        shutil.rmtree(table)
    return {"memory": rows, "object_store_mb": object_store_mb(store_env)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--object-store-mb", type=int, default=128)
    parser.add_argument("--png-images", type=int, default=20_000)
    parser.add_argument("--limit", type=int, default=0, help="MNIST IDX training images of part 1 (0: all).")
    parser.add_argument("--multiples", type=lambda s: [float(v) for v in s.split(",")], default=[1, 2, 4],
                        help="Part 2's table sizes, as multiples of the object store.")
    parser.add_argument("--only", choices=("throughput", "memory"), help="Measure one part; the other's results are kept.")
    args = _tiny.parse_args(parser, RESULTS, TINY)
    work = Path(tempfile.mkdtemp(prefix="vae-bench-data-"))
    if args.tiny:
        _tiny.start_shared_ray(object_store_mb=args.object_store_mb)  # its object store: the memory part's size
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{work}/mlflow.db")
    results = json.loads(args.output.read_text()) if args.only and args.output.exists() else {}
    if args.only in (None, "throughput"):
        results.update(measure_throughput(args, work, env))
    if args.only in (None, "memory"):
        results.update(measure_memory(args, work, env))
    results.update(machine={"cpus": os.cpu_count(), "platform": platform.platform()}, when=time.strftime("%Y-%m-%d %H:%M:%S"),
                   tiny=args.tiny)
    shutil.rmtree(work, ignore_errors=True)

    if "throughput" in results:
        base = results["throughput"][0]["images_per_s"]
        print(f"\n{'case':<34}{'images/s':>12}{'vs memory':>11}{'val −ELBO':>11}")
        for row in results["throughput"]:
            print(f"{row['case']:<34}{row['images_per_s']:>12,.0f}{row['images_per_s'] / base:>10.2f}×{row['val_neg_elbo']:>11.1f}")
    if "memory" in results:
        counted = "the vae process alone (--tiny: Ray is the bench's)" if args.tiny else "the vae process, its Ray and their children"
        print(f"\nRay object store {results['object_store_mb']:,.0f} MiB; peak PSS of {counted}")
        print(f"{'data':>10}{'rows':>10}{'loading':>12}{'peak MiB':>11}{'rows/s':>10}")
        for row in results["memory"]:
            print(f"{row['data_mb']:>7} MiB{row['rows']:>10,}{row['loading']:>12}{row['peak_mb']:>11,.0f}{row['images_per_s']:>10,.0f}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {_tiny.shown(args.output)}")


if __name__ == "__main__":
    main()

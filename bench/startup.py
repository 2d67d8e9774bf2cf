"""Where a small job's seconds go: `vae run` on a fresh local Ray against a plain PyTorch script.

Both train the same model (jobs/mnist-vae.yaml: MLP 784-400-20) on the same MNIST images for the
same epochs, each in a process of its own, timed from the moment it is launched:

- **plain**: what a user would write without the service: import torch, read the IDX files,
  train, compute the test −ELBO, save the weights (safetensors).
- **vae run**: `vae run jobs/mnist-vae.yaml --json`, with no model registration; a local Ray of
  its own (no RAY_ADDRESS), MLflow in a temporary SQLite store. It runs under py-spy (sampling
  every 10 ms, waiting included), and each sample is put in the first phase whose function is on
  its stack (PHASES), so the breakdown is of wall time in the `vae` process (--nonblocking: the
  process is not paused to be sampled; it runs about 8% slower than unprofiled). The training phase
  includes what the worker does in its own process (start, imports, data, steps, evaluation).

- **vae run, joining a running Ray**: the same command with RAY_ADDRESS set to a Ray this bench
  started (2 CPUs) before the repeats: what a user with a cluster up, or a queued job, pays. A
  one-worker job then starts its worker with the job (jobs/warm.py).
- **a sweep's trials**: `vae run` of a sweep of one-worker trials, one at a time (a grid over β),
  joining the same running Ray, with the trials' figures (the default) and without
  (`tracking.figures: false`). A trial's start is the time from the previous trial's end (its
  run's metrics.json: started, wall time) to its own first training step: the Tune round trip, the
  next MLflow run, the data and the task in the reused process. The first trial's start is the
  sweep's, not counted. (--tiny: the sweep without figures only.)
- **the CLI**: `vae --help`, `vae validate`, `vae jobs` and `vae status` against a `vae server`
  (SQLite, no dispatcher), wall time of each command from launch to exit (median of 5).

Fixed cost = total − the training steps (each epoch's items / images per second). The issue's
targets are ratios to the plain script: start (launch → first step) ≤ 1.5×, fixed cost ≤ 3×; a
sweep's trials after the first start in ≤ 1 s each; and each CLI command ≤ 0.5 s.

    VAE_DATA_DIR=../shared/data python bench/startup.py [--epochs 1] [--limit 6000] [--repeats 1] [--trials 5] [--cli-repeats 5]
    VAE_DATA_DIR=../shared/data python bench/startup.py --tiny [--output PATH]

Prints the tables and writes bench/results/startup.json. py-spy must be able to trace the `vae`
process it starts (root, or ptrace allowed).
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
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "startup.json"
SPEC = REPO / "jobs" / "mnist-vae.yaml"
TINY = {"epochs": 1, "limit": 512, "trials": 2, "cli_repeats": 1}
SAMPLE_RATE = 100  # py-spy samples per second
sys.path.insert(0, str(REPO / "bench"))
import _tiny  # noqa: E402

# (phase, function, file it is defined in; py-spy names a method Class.method): a sample counts for
# the first phase on its stack.
# A phase never seen fails the bench: the code moved, and this list must follow it.
PHASES = [
    ("data check", "check_data", "vae_service/jobs/execute.py"),
    ("Ray start (local)", "ensure_ray", "vae_service/cluster.py"),
    ("MLflow run opened", "begin", "vae_service/tracking/tracked_run.py"),
    ("training task (worker start, data, steps, evaluation)", "fit", "vae_service/training/runner.py"),
    ("figures", "render_run_figures", "vae_service/viz/run_figures.py"),
    ("model saved and logged, run closed", "publish", "vae_service/tracking/tracked_run.py"),
    ("Ray shut down (at exit)", "shutdown", "ray/_private/worker.py"),
    ("imports (elsewhere)", "_find_and_load", "<frozen importlib._bootstrap>"),
]
OTHER = "the rest (spec, run directory, summary)"
UNSEEN = "not sampled (python's start, samples py-spy missed)"


# ---------------------------------------------------------------------------------------------
# the plain script (a child process)


def plain_child(epochs: int, limit: int, launched: float, out_dir: Path) -> None:
    import torch
    from safetensors.torch import save_file

    from vae_service.core import from_spec
    from vae_service.core.data import epoch_shard
    from vae_service.core.loop import evaluate, train_epoch
    from vae_service.core.model import VAE
    from vae_service.core.spec_loading import load_spec

    spec = load_spec(SPEC, [f"optim.epochs={epochs}", f"data.limit={limit}"])
    torch.set_num_threads(spec.resources.torch_threads)
    data = from_spec.training_data(spec, torch.device("cpu"))
    torch.manual_seed(0)
    model = VAE(from_spec.model_config(spec, data.image_shape))
    optimizer = torch.optim.Adam(model.parameters(), lr=spec.optim.lr)
    first_step: list[float] = []
    steps_s = 0.0
    for epoch in range(epochs):
        shard = epoch_shard(len(data.train), epoch, 0, 1, 0)
        on_step = (lambda *_: first_step.append(time.time()) if not first_step else None)
        began = time.perf_counter()
        train_epoch(model, optimizer, data.train.images, shard, spec.optim.batch_size, from_spec.objective(spec), epoch,
                    on_step=on_step)
        steps_s += time.perf_counter() - began
    test_neg_elbo = evaluate(model, data.test.images)["neg_elbo"]
    save_file(model.state_dict(), str(out_dir / "model.safetensors"))
    print("RESULT " + json.dumps({"first_step_s": first_step[0] - launched, "steps_s": steps_s,
                                  "test_neg_elbo": float(test_neg_elbo)}), flush=True)


def measure_plain(epochs: int, limit: int) -> dict:
    with tempfile.TemporaryDirectory() as out_dir:
        launched = time.time()
        done = subprocess.run([sys.executable, __file__, "--child", "--epochs", str(epochs), "--limit", str(limit),
                               "--launched", repr(launched), "--out-dir", out_dir], capture_output=True, text=True, cwd=REPO)
        total_s = time.time() - launched
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    if done.returncode != 0 or line is None:
        sys.exit(f"the plain script failed:\n{done.stderr[-3000:]}")
    result = json.loads(line[len("RESULT "):])
    return {**result, "total_s": total_s, "fixed_s": total_s - result["steps_s"]}


# ---------------------------------------------------------------------------------------------
# `vae run` under py-spy


VAE = shutil.which("vae") or str(Path(sys.executable).with_name("vae"))


def vae_env(store_uri: str, ray_address: str | None) -> dict:
    """The environment of a `vae run` this bench starts: its MLflow store, the Ray it joins (none:
    a local Ray of its own) and the data directory made absolute (the run starts in a temporary one)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    if ray_address:
        env["RAY_ADDRESS"] = ray_address
    env["MLFLOW_TRACKING_URI"] = store_uri
    if env.get("VAE_DATA_DIR"):
        env["VAE_DATA_DIR"] = str(Path(env["VAE_DATA_DIR"]).resolve())
    return env


def measure_vae_run(epochs: int, limit: int, store_uri: str, ray_address: str | None = None) -> dict:
    """`vae run` on a fresh local Ray, or joining the Ray at `ray_address`."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        env = vae_env(store_uri, ray_address)
        profile = work / "profile.json"
        command = [py_spy, "record", "--idle", "--rate", str(SAMPLE_RATE), "--nonblocking", "--format", "speedscope", "--output", str(profile),
                   "--", VAE, "run", str(SPEC), "--json", "--quiet", "--set", f"optim.epochs={epochs}", "--set", f"data.limit={limit}",
                   "--set", "tracking.register_as=null", "--set", f"storage.uri={work / 'runs'}"]
        launched = time.time()
        done = subprocess.run(command, capture_output=True, text=True, cwd=work, env=env)
        total_s = time.time() - launched
        records = [line for line in done.stdout.splitlines() if line.startswith("{")]  # py-spy prints too
        if done.returncode != 0 or not profile.is_file() or not records:
            sys.exit(f"vae run under py-spy failed ({done.returncode}):\n{done.stderr[-3000:]}\n{done.stdout[-2000:]}")
        result = json.loads(records[-1])
        phases = phase_seconds(json.loads(profile.read_text()), joined=bool(ray_address))
    steps_s = sum(row["train_items"] / row["images_per_s"] for row in result["history"])
    sampled = sum(phases.values())
    if sampled > total_s:  # a loaded machine: py-spy's sample times drift past the wall time; keep the shares
        phases = {label: seconds * total_s / sampled for label, seconds in phases.items()}
    phases[UNSEEN] = max(0.0, total_s - sum(phases.values()))  # --nonblocking: a sample that fails is lost
    return {"first_step_s": result["first_step_at"] - launched, "steps_s": steps_s, "total_s": total_s,
            "fixed_s": total_s - steps_s, "phases": phases,
            "test_neg_elbo": result["metrics"].get("test_neg_elbo", float("nan"))}


def measure_sweep(trials: int, epochs: int, limit: int, store_uri: str, ray_address: str, figures: bool) -> dict:
    """A sweep of `trials` one-worker trials run one at a time, joining the Ray at `ray_address`:
    each trial's start after the previous one's end (see the module's docstring)."""
    import yaml

    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        train = {"data": {"limit": limit}, "optim": {"epochs": epochs}, "storage": {"uri": str(work / "runs")},
                 "tracking": {"experiment": "startup-sweep", "register_as": None, "figures": figures}}
        spec = {"kind": "sweep", "name": "startup-sweep", "train": train,
                "sweep": {"space": {"objective.beta": {"grid": [1.0 + i for i in range(trials)]}}, "objectives": ["val_neg_elbo"],
                          "max_concurrent": 1}}
        (work / "sweep.yaml").write_text(yaml.safe_dump(spec))
        env = vae_env(store_uri, ray_address)
        launched = time.time()
        done = subprocess.run([VAE, "run", str(work / "sweep.yaml"), "--json", "--quiet"], capture_output=True, text=True, cwd=work, env=env)
        total_s = time.time() - launched
        if done.returncode != 0:
            sys.exit(f"vae run of the sweep failed ({done.returncode}):\n{done.stderr[-3000:]}")
        out = json.loads(done.stdout.strip().splitlines()[-1])
        runs = [json.loads(path.read_text()) for path in Path(out["sweep_dir"], "trials").glob("*/metrics.json")]
    if len(runs) != trials:
        sys.exit(f"the sweep left {len(runs)} trial runs, not {trials}")
    spans = sorted((r["first_step_at"] - r["startup_s"], r["first_step_at"], r["wall_s"]) for r in runs)  # (started, first step, wall)
    starts = [first_step - (started_before + wall_before)
              for (started_before, _, wall_before), (_, first_step, _) in zip(spans, spans[1:])]
    return {"figures": figures, "trials": trials, "total_s": total_s, "first_trial_start_s": spans[0][1] - launched,
            "trial_start_s": starts, "median_trial_start_s": statistics.median(starts),
            "median_trial_wall_s": statistics.median(wall for _, _, wall in spans)}  # a trial's own run, its figures included


def create_mlflow_store(uri: str) -> float:
    """Creates the SQLite MLflow store the runs log to, before they start: its schema migrations
    are a cost of a store's first run only (a user's later runs find it made). Returns their seconds."""
    from mlflow.tracking import MlflowClient

    began = time.perf_counter()
    MlflowClient(uri).search_experiments()
    return time.perf_counter() - began


def measure_cli(spec: Path, repeats: int = 5) -> dict:
    """Median wall seconds of each quick command, launch to exit, against a `vae server` with one job."""
    sys.path.insert(0, str(REPO / "tests"))
    from queue_support import start_server

    def timed(*args: str, env: dict) -> float:
        began = time.perf_counter()
        done = subprocess.run([VAE, *args], capture_output=True, text=True, env=env)
        if done.returncode != 0:
            sys.exit(f"vae {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
        return time.perf_counter() - began

    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env.update(VAE_DB_URL=f"sqlite:///{work}/queue.db", VAE_HOME=str(work / ".vae"), VAE_API_TOKEN="bench-token")
        server = start_server(work, env, "--no-dispatcher", name="cli")
        try:
            env["VAE_API_URL"] = server.url
            submitted = subprocess.run([VAE, "submit", str(spec)], capture_output=True, text=True, env=env, check=True)
            job_id = submitted.stdout.split()[0]  # submit prints the job's id
            commands = {"vae --help": ["--help"], "vae validate": ["validate", str(spec)], "vae jobs": ["jobs"],
                        "vae status": ["status", job_id]}
            return {name: statistics.median(timed(*args, env=env) for _ in range(repeats)) for name, args in commands.items()}
        finally:
            server.stop()


def phase_seconds(speedscope: dict, joined: bool = False) -> dict:
    """Seconds of the main thread's samples in each phase (the first of PHASES on the stack);
    `joined`: the run joined a running Ray, so it has no local Ray to start or shut down."""
    frames = speedscope["shared"]["frames"]
    main = max(speedscope["profiles"], key=lambda p: ("MainThread" in p["name"], sum(p["weights"])))
    keys = [(name, file) for _, name, file in PHASES]
    seconds = {label: 0.0 for label, _, _ in PHASES} | {OTHER: 0.0}
    for stack, weight in zip(main["samples"], main["weights"]):
        on_stack = {(frames[i]["name"], frames[i]["file"]) for i in stack}
        label = next((PHASES[k][0] for k, (name, file) in enumerate(keys)
                      if any((n == name or n.endswith("." + name)) and f.endswith(file) for n, f in on_stack)), OTHER)
        seconds[label] += weight
    optional = {"_find_and_load", "check_data"} | ({"ensure_ray", "shutdown"} if joined else set())
    missing = [label for label, name, _ in PHASES if seconds[label] == 0.0 and name not in optional]
    if missing:
        sys.exit(f"no samples in {missing}: the functions in bench/startup.py's PHASES moved or were renamed")
    return seconds


# ---------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--limit", type=int, default=6000, help="MNIST images (the split's train share is trained on).")
    parser.add_argument("--repeats", type=int, default=1, help="Interleaved repetitions; the medians are reported.")
    parser.add_argument("--trials", type=int, default=5, help="Trials of the sweep (one at a time); at least 2.")
    parser.add_argument("--cli-repeats", type=int, default=5, help="Runs of each quick CLI command; the median is reported.")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--launched", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--out-dir", type=Path, help=argparse.SUPPRESS)
    args = _tiny.parse_args(parser, RESULTS, TINY)
    if args.child:
        plain_child(args.epochs, args.limit, args.launched, args.out_dir)
        return
    if args.trials < 2:
        parser.error("--trials: at least 2 (the first trial's start is the sweep's own)")

    plains, runs, joins = [], [], []
    _tiny.start_shared_ray(num_cpus=2)  # the running cluster that the joined runs use (the fresh ones never see it)
    ray_address = os.environ.pop("RAY_ADDRESS")
    with tempfile.TemporaryDirectory() as store:
        store_uri = f"sqlite:///{store}/mlflow.db"
        migration_s = create_mlflow_store(store_uri)
        for repeat in range(args.repeats):
            print(f"repeat {repeat + 1}/{args.repeats}: plain script, vae run on a fresh Ray, vae run joining a running Ray", flush=True)
            plains.append(measure_plain(args.epochs, args.limit))
            runs.append(measure_vae_run(args.epochs, args.limit, store_uri))
            joins.append(measure_vae_run(args.epochs, args.limit, store_uri, ray_address))
        with_figures = (False,) if args.tiny else (True, False)  # --tiny: the part runs once, its sweeps alike but for figures
        print(f"a sweep of {args.trials} trials, one at a time, {'with and ' if True in with_figures else ''}without their figures", flush=True)
        sweeps = [measure_sweep(args.trials, args.epochs, args.limit, store_uri, ray_address, figures) for figures in with_figures]
    cli = measure_cli(SPEC, args.cli_repeats)
    keys = ("first_step_s", "steps_s", "fixed_s", "total_s")
    plain = {key: statistics.median(p[key] for p in plains) for key in keys}
    vae_run, joined = ({key: statistics.median(r[key] for r in each) for key in keys} for each in (runs, joins))
    for summary, each in ((vae_run, runs), (joined, joins)):
        summary["phases"] = {label: statistics.median(r["phases"][label] for r in each) for label in each[0]["phases"]}
    ratios, joined_ratios = ({"start": run["first_step_s"] / plain["first_step_s"], "fixed_cost": run["fixed_s"] / plain["fixed_s"],
                              "total": run["total_s"] / plain["total_s"]} for run in (vae_run, joined))

    print(f"\n{args.epochs} epoch(s) on {args.limit} MNIST images, median of {args.repeats}")
    print(f"{'':30s} {'plain':>7s} {'fresh Ray':>10s} {'ratio':>6s} {'joined':>7s} {'ratio':>6s}  target")
    rows = [("start (launch → first step)", "first_step_s", "start", "≤ 1.5×"), ("training steps", "steps_s", None, ""),
            ("fixed cost (total − steps)", "fixed_s", "fixed_cost", "≤ 3×"), ("total", "total_s", "total", "")]
    for label, key, ratio, target in rows:
        shown = [f"{r[ratio]:5.1f}×" if ratio else f"{run[key] / plain[key]:5.1f}×" for r, run in ((ratios, vae_run), (joined_ratios, joined))]
        print(f"{label:30s} {plain[key]:6.1f}s {vae_run[key]:9.1f}s {shown[0]} {joined[key]:6.1f}s {shown[1]}  {target}")
    print(f"(the MLflow store was made beforehand: a new SQLite store's schema migrations took {migration_s:.1f} s, "
          "paid by the first run that logs to it)")
    for title, run in (("on a fresh Ray", vae_run), ("joining a running Ray", joined)):
        print(f"\nvae run {title}, wall time by phase (py-spy samples of the vae process)")
        for label, seconds in sorted(run["phases"].items(), key=lambda item: -item[1]):
            print(f"  {seconds:6.1f} s  {seconds / run['total_s']:5.0%}  {label}")
    print(f"\na sweep's trials after the first, previous trial's end → first step (target ≤ 1 s); {args.epochs} epoch(s) each")
    for sweep in sweeps:
        each = ", ".join(f"{seconds:.1f}" for seconds in sweep["trial_start_s"])
        print(f"  {sweep['median_trial_start_s']:5.1f} s median  ({each})  figures {'on' if sweep['figures'] else 'off'}; "
              f"a trial's run {sweep['median_trial_wall_s']:.1f} s (median)")
    print(f"\nthe CLI, launch to exit (median of {args.cli_repeats}; target ≤ 0.5 s)")
    for name, seconds in cli.items():
        print(f"  {seconds:5.2f} s  {name}")

    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({
        "what": "vae run on a fresh local Ray and joining a running one vs a plain PyTorch script, launch to exit; a sweep's trials' starts; the CLI's quick commands", "spec": str(SPEC.relative_to(REPO)),
        "epochs": args.epochs, "limit": args.limit, "repeats": args.repeats, "plain": plain, "vae_run": vae_run,
        "ratios": ratios, "vae_run_joined": joined, "ratios_joined": joined_ratios, "sweeps": sweeps, "cli_s": cli,
        "targets": {"start": 1.5, "fixed_cost": 3.0, "trial_start_s": 1.0, "cli_s": 0.5}, "new_mlflow_store_s": migration_s,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()}, "when": time.strftime("%Y-%m-%d %H:%M"),
    }, indent=2) + "\n")
    print(f"\nwrote {_tiny.shown(args.output)}")


if __name__ == "__main__":
    main()

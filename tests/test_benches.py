"""The benchmarks stay runnable: every bench/*.py in its --tiny mode (every part it measures, the
smallest sizes), as CI runs it: a subprocess, its JSON written to tmp_path, then checked for the
bench's own keys with real measurements in them (a part that silently measured nothing fails).
A tiny run must leave bench/results/ and docs/RESULTS.md as they were."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

# On 2 idle cores a tiny run takes about 1 (quality.py) to 5 minutes (data_throughput.py: seven
# `vae run`s, each with its own local Ray); the limit leaves room for a machine shared with other
# test runs (under a load of ~40 data_throughput.py needed over 14 minutes).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
BENCHES = sorted(path.stem for path in BENCH.glob("*.py") if not path.name.startswith("_"))  # _tiny.py: a helper
RUN_LIMIT_S = 1740  # the subprocess's own limit, under the test's: its output is shown when it hangs
# What a tiny run must leave untouched: the committed results and the report quality.py writes.
COMMITTED = [*sorted((BENCH / "results").glob("*")), REPO / "docs" / "RESULTS.md", *sorted((REPO / "docs" / "figures").glob("*"))]


def positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def assert_positive(record: dict, *keys: str, where: str = "") -> None:
    for key in keys:
        assert key in record, f"{where}: no {key!r} in {sorted(record)}"
        assert positive(record[key]), f"{where}.{key} = {record[key]!r}: not a positive finite number"


# ---------------------------------------------------------------------------------------------
# each bench's results


def check_data_throughput(results: dict, output: Path) -> None:
    assert {"throughput", "streaming_vs_memory_mnist", "memory", "object_store_mb", "machine", "when"} <= set(results)
    cases = [row["case"] for row in results["throughput"]]
    assert len(cases) == 4 and sum("streaming" in case for case in cases) == 2 and sum("PNG" in case for case in cases) == 2
    for row in results["throughput"]:
        assert_positive(row, "images_per_s", "wall_s", where=row["case"])
        assert finite(row["val_neg_elbo"])
    assert positive(results["streaming_vs_memory_mnist"]) and positive(results["object_store_mb"])
    assert {row["loading"] for row in results["memory"]} == {"streaming", "memory"}
    for row in results["memory"]:
        assert_positive(row, "data_mb", "rows", "peak_mb", "images_per_s", where=f"memory {row['loading']}")


def check_gpu_check(results: dict, output: Path) -> None:
    assert {"benchmark", "machine", "matmul", "throughput", "iwae", "dsprites", "packages_imported", "elapsed_s"} <= set(results)
    assert results["benchmark"] == "gpu_check" and results["tiny"] and results["finished"]
    for section in ("matmul", "throughput", "iwae", "dsprites"):
        assert "error" not in results[section], f"{section}: {results[section].get('traceback', results[section]['error'])}"
    assert_positive(results["matmul"]["flops_per_s"], "fp32", "bf16", where="matmul")
    models = results["throughput"]["models"]
    assert set(models) == {"mlp", "conv"}
    for arch, model in models.items():
        assert_positive(model, "parameters", "forward_flops_per_image", "train_flops_per_image",
                        "flop_counter_train_flops_per_image", where=arch)
        assert model["train_flops_per_image"] == 3 * model["forward_flops_per_image"]
        # torch's own count of forward + backward agrees (it skips the first layer's input gradient)
        assert 0.75 < model["flop_counter_train_flops_per_image"] / model["train_flops_per_image"] <= 1.0, (arch, model)
    rows = results["throughput"]["rows"]
    measured = {(row["model"], row["mode"], row["batch_size"]) for row in rows if "images_per_s" in row}
    assert measured == {(arch, mode, batch) for arch in ("mlp", "conv") for mode in ("fp32", "bf16") for batch in (128, 256)}
    for row in rows:
        where = f"{row['model']} {row['mode']} {row['batch_size']}"
        if row["mode"] == "compiled":
            assert row["skipped"].startswith("tiny"), where
            continue
        assert_positive(row, "images_per_s", "roofline_images_per_s", "fraction_of_roofline", "steps", "seconds", where=where)
        assert finite(row["train_loss"]), where
    iwae = results["iwae"]
    assert_positive(iwae, "nll", "neg_elbo", "epochs_done", "steps", "train_seconds", where="iwae")
    assert iwae["k"] == 50 and iwae["n_images"] == 200 and iwae["paper"]["nll"] == 86.76 and iwae["paper"]["source"]
    assert iwae["nll"] <= iwae["neg_elbo"] + 1.0  # the IS bound is the tighter one
    dsprites = results["dsprites"]
    assert [run["beta"] for run in dsprites["runs"]] == [1.0, 4.0, 8.0]
    assert dsprites["disentanglement_lib"]["steps"] == 300_000 and dsprites["disentanglement_lib"]["source"]
    for run in dsprites["runs"]:
        assert "error" not in run and not any(key.endswith("_error") for key in run), run
        assert run["steps"] == results["options"]["dsprites_steps"] == 10
        assert_positive(run, "neg_elbo", "steps_per_s", "fraction_of_budget", where=f"dsprites β={run['beta']}")
        for key in ("mig", "factorvae"):  # FactorVAE is 0 when no dimension is active (10 steps)
            assert finite(run[key]) and 0 <= run[key] <= 1, (run["beta"], key, run[key])
    # the device has no Ray, MLflow, pydantic or YAML: the check must run without them
    assert not {"ray", "mlflow", "pydantic", "yaml"} & set(results["packages_imported"]), results["packages_imported"]


def check_preemption(results: dict, output: Path) -> None:
    assert {"benchmark", "median", "rounds", "setup"} <= set(results) and results["benchmark"] == "preemption"
    assert len(results["rounds"]) == 1
    timed = ["decision_s", "resources_free_s", "first_step_s", "idle_first_step_s", "ratio", "epoch_s", "trained_since_epoch_s"]
    for row in results["rounds"]:
        assert_positive(row, *timed, "kept_steps", "steps_per_epoch", where="round")
        assert row["decision_s"] <= row["resources_free_s"]
        assert row["attempts"] >= 2, "the long job was not preempted and resumed"
        assert row["every_epoch_logged_once"] and row["same_mlflow_run"]
        # the stop kept the steps trained: at most what was trained since the epoch is lost
        assert finite(row["work_lost_s"]) and 0 <= row["work_lost_s"] < row["trained_since_epoch_s"]
    assert_positive(results["median"], *[key for key in timed if key not in ("epoch_s", "trained_since_epoch_s")], where="median")
    assert finite(results["median"]["work_lost_s"]) and results["median"]["work_lost_s"] >= 0


def check_quality(results: dict, output: Path) -> None:
    assert {"iwae", "default", "dsprites", "figures", "machine", "updated"} <= set(results)
    for section in ("iwae", "default"):
        r = results[section]
        assert_positive(r, "nll", "neg_elbo", "k", "n_images", "section_seconds", where=section)
    runs = results["dsprites"]["runs"]
    assert len(runs) == 1
    assert_positive(runs[0], "neg_elbo", "steps", where="dsprites run")
    for key in ("mig", "factorvae", "dci", "kl", "dci_informativeness"):
        assert finite(runs[0][key]), f"dsprites {key} = {runs[0][key]!r}"
    figures = output.parent / "figures"
    for name in results["figures"]["files"]:
        assert (figures / name).stat().st_size > 0, f"figure {name} not drawn under {figures}"
    report = output.with_suffix(".md").read_text()
    assert "IS-NLL" in report and "dSprites" in report and "figures/latent_manifold.png" in report


def check_queue_load(results: dict, output: Path) -> None:
    assert {"benchmark", "targets", "reached", "met", "results"} <= set(results) and results["benchmark"] == "queue_load"
    measured = results["results"]
    for backend in ("sqlite", "postgresql"):
        submit, dispatch = measured[backend]["submit"], measured[backend]["dispatch"]
        assert submit["errors"] == 0 and submit["submissions"] == 20
        assert_positive(submit, "submissions_per_s", "wall_s", "p50_ms", "p95_ms", "p99_ms", where=f"{backend} submit")
        assert_positive(dispatch, "p50_s", "p95_s", "max_s", where=f"{backend} dispatch")
        assert dispatch["jobs"] == 1 and dispatch["each_handed_to_ray_once"]
        # the same parts with 300 jobs queued first, each beside the empty queue's as a ratio
        assert set(measured[backend]["prefilled"]) == {"300"}, sorted(measured[backend]["prefilled"])
        row = measured[backend]["prefilled"]["300"]
        assert row["queued"] == 300 and positive(row["fill_s"])
        assert row["submit"]["errors"] == 0 and row["submit"]["submissions"] == 20
        assert_positive(row["submit"], "submissions_per_s", "wall_s", "p50_ms", "p95_ms", where=f"{backend} 300 queued submit")
        assert_positive(row["dispatch"], "p50_s", "p95_s", "max_s", where=f"{backend} 300 queued dispatch")
        assert row["dispatch"]["jobs"] == 1 and row["dispatch"]["each_handed_to_ray_once"]
        assert_positive(row["vs_empty"], "submissions_per_s", "post_p95", "dispatch_p50", "dispatch_p95",
                        where=f"{backend} 300 queued vs empty")
        assert set(row["met"]) == {"submissions_per_s", "dispatch_p95_s", "submissions_vs_empty", "dispatch_p95_vs_empty"}
    assert results["setup"]["prefill"] == [0, 300]
    first = measured["first_step"]  # the part that once read a log line that was gone
    assert len(first["runs"]) == 1
    parts = ["queue_s", "ray_job_start_s", "worker_start_s", "total_s"]
    assert_positive(first, *parts, where="first_step")
    assert_positive(first["runs"][0], *parts, where="first_step run")
    assert_positive(results["reached"], "submissions_per_s", "dispatch_p95_s", "submit_to_first_step_s", where="reached")
    assert_positive(results["reached"]["prefilled"], "submissions_per_s", "dispatch_p95_s", "submissions_vs_empty",
                    "dispatch_p95_vs_empty", where="reached with the queue prefilled")


def check_queue_tick(results: dict, output: Path) -> None:
    assert {"benchmark", "setup", "results", "front_growth", "urgent_growth", "machine", "when"} <= set(results)
    rows = results["results"]
    for backend in ("sqlite", "postgresql"):
        for queued in (0, 300):
            modes = {row["mode"]: row for row in rows if row["backend"] == backend and row["queued"] == queued}
            assert set(modes) == {"every row", "front"}, (backend, queued, modes)
            for row in modes.values():
                assert_positive(row, "read_ms", "plan_ms", "pass_ms", "pass_max_ms", where=f"{backend} {queued} {row['mode']}")
            # Every row read in the baseline: the queued jobs and the urgent one.
            assert modes["every row"]["jobs_read"] == queued + 1
            assert 1 <= modes["front"]["jobs_read"] <= queued + 1
            assert_positive(modes["front"], "urgent_ms", "urgent_max_ms", where=f"{backend} {queued} urgent")
        assert positive(results["front_growth"][backend]) and positive(results["urgent_growth"][backend])


def check_scheduler_sim(results: dict, output: Path) -> None:
    assert {"benchmark", "setup", "policies", "tick_at_full_queue", "targets", "met", "machine", "when"} <= set(results)
    assert results["benchmark"] == "scheduler_sim" and results["tiny"]
    jobs = results["setup"]["jobs"]
    assert set(results["policies"]) == {"queue", "fifo", "priority"}
    for name, policy in results["policies"].items():
        assert policy["finished"] == jobs, f"{name}: {policy['finished']} of {jobs} jobs finished"
        assert_positive(policy, "utilisation", "utilisation_under_backlog", "makespan_h", "backlog_h", "ticks", where=name)
        assert policy["utilisation"] <= 1 and policy["utilisation_under_backlog"] <= 1, name
        assert set(policy["wait_s"]) == {"tier1", "tier2", "tier3"}, name
        for tier, wait in policy["wait_s"].items():
            assert wait["jobs"] > 0 and all(finite(wait[k]) and wait[k] >= 0 for k in ("p50", "p95", "mean")), (name, tier)
            assert wait["p50"] <= wait["p95"], (name, tier)
        assert finite(policy["jain_index"]) and 0 < policy["jain_index"] <= 1, (name, policy["jain_index"])
        assert_positive(policy["tick_ms"], "p50", "p95", "max", where=f"{name} tick_ms")
        assert policy["tick_ms_by_queued"] and all(positive(row["p95_ms"]) for row in policy["tick_ms_by_queued"]), name
        assert finite(policy["gpu_hours_lost"]) and policy["gpu_hours_lost"] >= 0
    # only the real plan preempts, and the tiny trace is made so that it does
    assert results["policies"]["queue"]["preemptions"] > 0 and positive(results["policies"]["queue"]["gpu_hours_lost"])
    assert results["policies"]["fifo"]["preemptions"] == results["policies"]["priority"]["preemptions"] == 0
    full = results["tick_at_full_queue"]
    assert full["queued"] == jobs and 0 < full["front"] <= jobs and full["running"] > 0
    assert_positive(full, "p50_ms", "p95_ms", where="tick_at_full_queue")
    assert set(results["met"]) == {"utilisation_under_backlog", "tier1_p95_wait", "tick_p95_at_full_queue"}
    assert output.with_suffix(".png").stat().st_size > 0, "no plot beside the JSON"


def check_fair_share_sim(results: dict, output: Path) -> None:
    assert results["benchmark"] == "fair_share_sim" and results["tiny"]
    assert set(results["policies"]) == {"drf", "kueue", "slurm", "vae"}
    jobs = results["setup"]["jobs"]
    for name, policy in results["policies"].items():
        assert policy["finished"] == jobs, f"{name}: {policy['finished']} of {jobs} jobs finished"
        assert set(policy["wait_s"]) == {"tier1", "tier2", "tier3"}, name
        fairness = policy["fairness"]
        for key in ("jain_index",):
            assert finite(policy[key]) and 0 < policy[key] <= 1, (name, key)
        assert finite(fairness["weighted_jain_index"]) and 0 < fairness["weighted_jain_index"] <= 1, name
        assert fairness["light_users"]["users"] > 0 and positive(fairness["light_users"]["mean_wait_s"]), name
        for who in ("history_user", "weighted_user"):
            assert_positive(fairness[who], "mean_wait_s", "mean_share_backlogged", "wait_vs_light", "share_vs_light",
                            where=f"{name}.{who}")
    # weights and history change the schedule (the same trace, the same real plan otherwise)
    assert results["policies"]["drf"]["wait_s"] != results["policies"]["vae"]["wait_s"]


def check_startup(results: dict, output: Path) -> None:
    for side in ("plain", "vae_run", "vae_run_joined"):
        assert_positive(results[side], "first_step_s", "steps_s", "fixed_s", "total_s", where=side)
        assert results[side]["first_step_s"] < results[side]["total_s"], side
    for run in ("vae_run", "vae_run_joined"):
        phases = results[run]["phases"]
        assert_positive(phases, "MLflow run opened", "training task (worker start, data, steps, evaluation)",
                        "figures", "model saved and logged, run closed", where=run)
        assert abs(sum(phases.values()) - results[run]["total_s"]) < 0.5, phases  # the phases account for the wall time
    assert_positive(results["vae_run"]["phases"], "Ray start (local)", where="vae_run")
    for ratios in ("ratios", "ratios_joined"):
        assert_positive(results[ratios], "start", "fixed_cost", "total", where=ratios)
    assert [sweep["figures"] for sweep in results["sweeps"]] == [False]  # tiny: the sweep without figures only
    for sweep in results["sweeps"]:
        assert sweep["trials"] == 2 and len(sweep["trial_start_s"]) == 1, sweep  # the second trial's start
        assert_positive(sweep, "total_s", "first_trial_start_s", "median_trial_start_s", "median_trial_wall_s",
                        where=f"sweep figures={sweep['figures']}")
        assert sweep["median_trial_start_s"] < sweep["total_s"], sweep
    assert set(results["cli_s"]) == {"vae --help", "vae validate", "vae jobs", "vae status"}
    assert_positive(results["cli_s"], *results["cli_s"], where="cli_s")


def check_sweep_efficiency(results: dict, output: Path) -> None:
    assert {"benchmark", "setup", "trial_epochs_ratio", "best_gap", "met", "results"} <= set(results)
    for kind in ("grid", "asha"):
        run = results["results"][kind]
        assert run["kind"] == kind and run["trials"] == 2 and run["finished"] >= 1
        assert_positive(run, "trial_epochs", "best_val_neg_elbo", "wall_s", where=kind)
        assert len(run["per_trial"]) == run["trials"]
    assert positive(results["trial_epochs_ratio"]) and finite(results["best_gap"])


def check_train_throughput(results: dict, output: Path) -> None:
    assert {"benchmark", "setup", "results", "machine"} <= set(results) and results["benchmark"] == "train_throughput"
    assert [row["mode"] for row in results["results"]] == ["plain", "ray1", "ray2"]
    for row in results["results"]:
        assert_positive(row, "images_per_s", "ratio_to_plain", "startup_s", where=row["mode"])
        assert all(positive(rate) for run in row["runs"] for rate in run["per_epoch"])


CHECKS = {name[len("check_"):]: check for name, check in globals().items() if name.startswith("check_")}


# ---------------------------------------------------------------------------------------------


def bench_env(tmp_path: Path) -> dict:
    """This process's environment less any Ray cluster or token to attach to (a bench starts
    its own), MNIST where the tests find it, MLflow in tmp_path."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    env.update(VAE_DATA_DIR=os.environ["VAE_DATA_DIR"], MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/mlflow.db",
               PYTHONUNBUFFERED="1")
    return env


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc): what a bench started (`vae run`s, Ray, servers)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def run_bench(command: list[str], env: dict) -> subprocess.CompletedProcess:
    """`command` to the end, or killed at RUN_LIMIT_S with everything it started (by pid: its
    `vae run`s would otherwise go on, each with its own Ray, after the test failed)."""
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = process.communicate(timeout=RUN_LIMIT_S)
    except subprocess.TimeoutExpired:
        for pid in [process.pid, *descendants(process.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        out, err = process.communicate()
        pytest.fail(f"{' '.join(command[1:])} ran past {RUN_LIMIT_S} s:\n{err[-4000:]}\n{out[-2000:]}")
    return subprocess.CompletedProcess(command, process.returncode, out, err)


def test_every_bench_has_its_checks():
    assert sorted(CHECKS) == BENCHES, "a bench/*.py without a check here (or a check without its bench)"


@pytest.mark.parametrize("name", BENCHES)
def test_bench_tiny(name, tmp_path):
    before = {path: path.read_bytes() for path in COMMITTED if path.is_file()}
    output = tmp_path / "x.json"
    started = time.monotonic()
    done = run_bench([sys.executable, str(BENCH / f"{name}.py"), "--tiny", "--output", str(output)], bench_env(tmp_path))
    took = time.monotonic() - started
    assert done.returncode == 0, f"bench/{name}.py --tiny failed ({done.returncode}) after {took:.0f} s:\n" \
                                 f"{done.stderr[-6000:]}\n{done.stdout[-3000:]}"
    assert output.is_file(), f"no JSON at --output:\n{done.stdout[-3000:]}"
    CHECKS[name](json.loads(output.read_text()), output)
    assert "wrote" in done.stdout  # its table and where it wrote
    changed = [str(path.relative_to(REPO)) for path, data in before.items() if not path.is_file() or path.read_bytes() != data]
    assert not changed, f"a tiny run rewrote committed files: {changed}"


# ---------------------------------------------------------------------------------------------
# gpu_check.py: what it can import, and its own arithmetic


def test_gpu_check_imports_only_the_core():
    """The device machine has PyTorch but no Ray, MLflow, pydantic or YAML: importing the check
    loads vae_service.core and nothing else of the service."""
    code = ("import runpy, sys; runpy.run_path(sys.argv[1], run_name='gpu_check'); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'ray', 'mlflow', 'pydantic', 'yaml'}), "
            "sorted(m for m in sys.modules if m.startswith('vae_service.') and not m.startswith('vae_service.core')))")
    done = subprocess.run([sys.executable, "-c", code, str(BENCH / "gpu_check.py")], capture_output=True, text=True,
                          cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[] []", done.stdout


def test_gpu_check_unpacks_and_counts_as_the_core():
    import numpy as np
    import runpy

    import torch

    from vae_service.core import dsprites

    check = runpy.run_path(str(BENCH / "gpu_check.py"), run_name="gpu_check")
    factors = dsprites.DSprites().sample_factors(16, np.random.default_rng(0))
    packed = dsprites.pack(dsprites.render(factors))
    assert np.array_equal(check["unpack_on_device"](torch.from_numpy(packed)).numpy(), dsprites.unpack(packed))
    # the hand count of the MLP 784-400-20 VAE: encoder 784·400 + 400·40, decoder 20·400 + 400·784 multiply-adds
    mlp = check["VAE"](check["THROUGHPUT_MODELS"]["mlp"])
    assert check["forward_flops"](mlp, (1, 28, 28)) == 2 * (784 * 400 + 400 * 40 + 20 * 400 + 400 * 784)

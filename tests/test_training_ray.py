"""Training on a real local Ray cluster (Ray Train V2, TorchTrainer, gloo DDP)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import ray
import torch
from artifact_checks import assert_no_pickles
from safetensors.torch import load_file

from vae_service import storage
from vae_service.core import from_spec
from vae_service.core import metrics as M
from vae_service.core.checkpoint import MODEL_FILE, PART_EPOCH, load_model, read_state
from vae_service.core.data import batch_inputs, epoch_shard
from vae_service.core.errors import Interrupted, JobFailed
from vae_service.core.interrupt import HARD_STOP_AFTER_S, Interrupt
from vae_service.core.loop import evaluate
from vae_service.core.model import VAE
from vae_service.core.objective import compute_loss
from vae_service.jobs.execute import execute
from vae_service.jobs.reporter import Reporter
from vae_service.jobs.train import train
from vae_service.tracking.mlflow_run import client
from vae_service.training.ray_internals import WorkerGroupCallback
from vae_service.training.worker import seed_everything

pytestmark = pytest.mark.slow


def synchronous_reference(spec, world_size: int, share_gradients: bool = True):
    """Data-parallel training of `spec` re-done in this process, without Ray or DDP: every step
    each of the `world_size` ranks takes its slice of its own `epoch_shard`, with its own seeded
    noise, and one optimiser steps on the mean of their losses (DDP's gradient average). With
    `share_gradients=False` rank 0 steps on its own loss alone (what a broken all-reduce does).
    Returns the final weights, rank 0's validation −ELBO per epoch, and the training loss per
    epoch averaged over every rank's images."""
    data = from_spec.training_data(spec)
    torch.manual_seed(spec.optim.seed)
    model = VAE(from_spec.model_config(spec, data.image_shape))
    optimizer = torch.optim.Adam(model.parameters(), lr=spec.optim.lr)
    objective = from_spec.objective(spec)
    batch = spec.optim.batch_size // world_size
    val_neg_elbo, train_loss = [], []
    for epoch in range(spec.optim.epochs):
        loss_sum = images = 0.0
        shards, noise = [], []
        for rank in range(world_size):
            shards.append(epoch_shard(len(data.train), epoch, rank, world_size, spec.optim.seed))
            seed_everything(spec.optim.seed, epoch, rank)
            noise.append(torch.get_rng_state())
        steps = -(-len(shards[0]) // batch)
        for step in range(steps):
            losses = []
            for rank in range(world_size if share_gradients else 1):
                torch.set_rng_state(noise[rank])
                x = batch_inputs(data.train.images[shards[rank][step * batch:(step + 1) * batch]], spec.data.binarize)
                losses.append(compute_loss(model, x, objective, epoch + step / steps).loss)
                loss_sum, images = loss_sum + float(losses[-1]) * len(x), images + len(x)
                noise[rank] = torch.get_rng_state()
            optimizer.zero_grad()
            (sum(losses) / len(losses)).backward()
            optimizer.step()
        torch.set_rng_state(noise[0])  # rank 0 evaluates right after its last step
        val_neg_elbo.append(evaluate(model, data.val.images, binarize=spec.data.binarize)[M.NEG_ELBO])
        train_loss.append(loss_sum / images)
    return model.state_dict(), val_neg_elbo, train_loss


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def checkpoint_epochs(run_dir: str) -> list[int]:
    """The epoch of every checkpoint_* directory left in a (local) run directory."""
    return sorted(read_state(d)["epoch"] for d in Path(run_dir).glob("checkpoint_*") if d.is_dir())


def timeless(record: dict) -> dict:
    return {k: v for k, v in record.items() if k != M.IMAGES_PER_S}


def comparable(record: dict) -> dict:
    """An epoch record without its timing (images/s) and test split (only after a run's last epoch)."""
    return {k: v for k, v in record.items() if k != M.IMAGES_PER_S and not k.startswith("test_")}


def test_two_worker_ddp_shards_are_disjoint_and_weights_stay_identical(ray_cluster, tiny_spec, run_job):
    spec = tiny_spec(resources__num_workers=2, optim__epochs=2, tracking__register_as="tiny-ddp", tracking__experiment="ddp",
                     tracking__figures=True)
    result = run_job(spec)

    assert result.epochs_completed == 2
    # The workers' own all_gather checks (reported by rank 0)...
    assert [(r["shard_overlap"], r["ranks_in_sync"]) for r in result.history] == [(0, True), (0, True)]
    # ...and the same promises checked from outside. Shards: the function the workers call gives
    # the two ranks disjoint halves that together cover the training split, every epoch.
    n = len(from_spec.training_data(spec).train)
    for epoch in range(2):
        shards = [set(epoch_shard(n, epoch, rank, 2, spec.optim.seed).tolist()) for rank in range(2)]
        assert not shards[0] & shards[1] and shards[0] | shards[1] == set(range(n)) and len(shards[0]) == n // 2
    # Weights: rank 0's final weights are those of synchronous data-parallel training on both
    # shards, re-done here without Ray. Were the ranks not in sync (no gradient all-reduce, a rank
    # on the wrong shard or noise, a rank whose weights drifted), rank 0's weights would not be:
    # the no-sharing alternative is shown to be far outside the tolerance.
    reference, reference_val, reference_train = synchronous_reference(spec, world_size=2)
    rank0_alone, _, _ = synchronous_reference(spec, world_size=2, share_gradients=False)
    checkpoint_weights = load_file(Path(result.checkpoint) / MODEL_FILE)
    model_weights = load_model(result.model_dir).state_dict()
    assert max_difference(model_weights, checkpoint_weights) == 0  # the published model is the last checkpoint
    assert max_difference(model_weights, reference) < 1e-4
    assert max_difference(rank0_alone, reference) > 1e-2
    assert [r["val_neg_elbo"] for r in result.history] == pytest.approx(reference_val, rel=1e-4)
    # The training loss reported is the mean over both ranks' images, not rank 0's half.
    assert [r["train_loss"] for r in result.history] == pytest.approx(reference_train, rel=1e-4)
    assert result.metrics["images_per_s"] > 0
    assert 0 < result.metrics["active_units"] <= 4
    model = load_model(result.model_dir)
    assert model.config.latent_dim == 4
    mu, logvar = model.encode(torch.zeros(3, 1, 28, 28))
    assert mu.shape == logvar.shape == (3, 4)
    # Pickle-free: nothing the run left behind is a pickle, by content (tests/artifact_checks.py),
    # whatever the file is called.
    leftovers = [p for p in Path(result.run_dir).rglob("*") if p.suffix in (".pkl", ".pt", ".pth")]
    assert leftovers == []
    assert_no_pickles([Path(result.run_dir)])

    # Tracked: params, metrics, figures, and a registered pickle-free model with its alias.
    mlflow = client()
    run = mlflow.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["model.latent_dim"] == "4"
    assert run.data.params["resources.num_workers"] == "2"
    assert run.data.metrics["val_neg_elbo"] == pytest.approx(result.metrics["val_neg_elbo"])
    assert "val_kl_dim_04" in run.data.metrics
    assert run.data.tags["vae.spec_hash"]
    figures = {f.path for f in mlflow.list_artifacts(result.mlflow_run_id, "figures")}
    assert len(figures) >= 6 and "figures/latent_scatter.png" in figures
    version = mlflow.get_model_version_by_alias("tiny-ddp", "candidate")
    assert result.model_uri == f"models:/tiny-ddp/{version.version}"
    import mlflow as mlflow_module

    local = Path(mlflow_module.artifacts.download_artifacts(artifact_uri=result.model_uri))
    names = {p.name for p in local.rglob("*")}
    assert {"MLmodel", "pyfunc_model.py", "model.safetensors", "config.json"} <= names
    assert not [n for n in names if n.endswith(".pkl")]
    assert_no_pickles([local])  # the registered model's files, by content
    encoded = mlflow_module.pyfunc.load_model(result.model_uri).predict(torch.zeros(2, 784).numpy())
    assert list(encoded.columns[:2]) == ["mu_1", "mu_2"] and len(encoded) == 2


def test_resumed_run_matches_an_uninterrupted_one_and_old_checkpoints_are_pruned(ray_cluster, tiny_spec, run_job):
    # Dynamic binarisation draws fresh Bernoulli pixels every step: more random numbers to get right.
    # No figures (tracking.figures: false): these runs compare numbers, and the figures of three runs take ~10 s.
    spec = lambda epochs: tiny_spec(optim__epochs=epochs, data__binarize="dynamic", storage__keep_checkpoints=2,
                                    tracking__figures=False)
    whole = run_job(spec(4))
    mlflow = client()
    assert mlflow.list_artifacts(whole.mlflow_run_id, "figures") == [] and whole.model_uri  # the model, no figures
    assert [row["epoch"] for row in whole.history] == [0, 1, 2, 3]
    assert whole.history[-1]["val_neg_elbo"] < whole.history[0]["val_neg_elbo"]
    assert whole.history[-1]["train_neg_elbo"] < whole.history[0]["train_neg_elbo"]
    # keep_checkpoints=2: only the two newest of four checkpoints are left.
    assert checkpoint_epochs(whole.run_dir) == [2, 3]

    first = run_job(spec(3))
    assert checkpoint_epochs(first.run_dir) == [1, 2]
    resumed = run_job(spec(4), resume=first.run_dir)
    assert [row["epoch"] for row in resumed.history] == [3]
    assert resumed.epochs_completed == 4 and resumed.run_dir == first.run_dir
    # Stopped after 3 epochs and resumed from a pruned set of checkpoints, the run is the
    # uninterrupted one: same metrics every epoch and the same final weights (the same random
    # draws, weights and optimiser state). A resume from scratch, without Adam's moments or with
    # other noise would differ.
    assert [comparable(r) for r in first.history + resumed.history] == [comparable(r) for r in whole.history]
    assert max_difference(load_model(resumed.model_dir).state_dict(), load_model(whole.model_dir).state_dict()) == 0
    # The resumed run pruned the checkpoints it inherited too.
    assert checkpoint_epochs(first.run_dir) == [2, 3]
    # ...and it went on in the same MLflow run, which now has the four epochs once each.
    assert resumed.mlflow_run_id == first.mlflow_run_id
    steps = [m.step for m in client().get_metric_history(first.mlflow_run_id, "val_neg_elbo")]
    assert sorted(steps) == [0, 1, 2, 3]

    # Resuming a run with no epochs left (stopped before its model was published) trains
    # nothing and finishes from the last checkpoint.
    again = run_job(spec(4), resume=first.run_dir)
    assert again.history == [] and again.epochs_completed == 4
    assert again.metrics["val_neg_elbo"] == resumed.metrics["val_neg_elbo"]


def one_worker_pids(job) -> tuple:
    """Runs `job`; returns its result and the pids of the single-worker tasks' processes seen
    while it ran (among this process's descendants: the session cluster's workers)."""
    import psutil

    seen: set[int] = set()
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.02):
            for process in psutil.Process().children(recursive=True):
                try:
                    if process.cmdline()[:1] and process.cmdline()[0].startswith("ray::train_one_worker"):
                        seen.add(process.pid)
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        return job(), seen
    finally:
        done.set()
        watcher.join()


def test_seeded_single_worker_runs_are_reproducible_in_one_warm_process(ray_cluster, tiny_spec, run_job):
    # One worker: a Ray task whose process Ray keeps for the next run (training/one_worker.py).
    # A run between two identical ones, with another seed, model and thread count, must leave
    # nothing behind in that process that changes the third run's result.
    # Ray hands a task the worker that went idle last, so the three runs share one process.
    a, a_pids = one_worker_pids(lambda: run_job(tiny_spec(optim__seed=7)))
    c, c_pids = one_worker_pids(lambda: run_job(tiny_spec(optim__seed=8, model__latent_dim=6, resources__cpus_per_worker=2)))
    b, b_pids = one_worker_pids(lambda: run_job(tiny_spec(optim__seed=7)))
    assert len(a_pids) == 1 and a_pids == b_pids == c_pids, (a_pids, c_pids, b_pids)  # the same warm process
    assert [timeless(r) for r in a.history] == [timeless(r) for r in b.history]
    assert timeless(a.metrics) == timeless(b.metrics)
    assert max_difference(load_file(Path(a.model_dir, MODEL_FILE)), load_file(Path(b.model_dir, MODEL_FILE))) == 0
    assert a.metrics["val_neg_elbo"] != c.metrics["val_neg_elbo"]


@pytest.mark.parametrize("workers", [1, 2])
def test_a_run_stopped_mid_epoch_resumes_at_its_step_and_equals_the_uninterrupted_run(ray_cluster, tiny_spec, run_job,
                                                                                       workers, tmp_path):
    """A stop request (Ctrl-C, the queue's cancel or preemption) ends the run at the next step,
    with a checkpoint there; resumed, it continues at that step, and its epochs, metrics and
    final weights equal those of a run never stopped. One worker (a Ray task) and two (DDP)."""
    # Many steps of 10 images per worker so that the stop falls inside an epoch (the 90 % train
    # split of 6,000 images for one worker, of 3,000 for each of two, whose DDP steps are slower);
    # a small model, so that each is quick.
    steps_per_epoch = 540 // workers ** 2
    spec = tiny_spec(optim__epochs=2, optim__batch_size=10 * workers, data__limit=6000 // workers,
                     data__binarize="dynamic", resources__num_workers=workers, tracking__register_as=None)
    whole = run_job(spec)

    run_dir = storage.resolve(str(tmp_path / "stopped"))
    storage.make_dirs(run_dir)
    interrupt, asked = Interrupt(), []
    threading.Thread(target=_stop_once_epoch_0_is_checkpointed, args=(Path(run_dir.path), interrupt, asked), daemon=True).start()
    with pytest.raises(Interrupted):
        train(spec, run_dir, resume=False, reporter=Reporter.quiet(), interrupt=interrupt)
    stopped_s = time.monotonic() - asked[0]
    # The workers stopped by themselves, before the hard stop (task cancelled, Train controller aborted):
    # measured 0.4 s for the task, 5 s for Ray Train's group (on a loaded machine).
    assert stopped_s < HARD_STOP_AFTER_S, stopped_s
    states = [read_state(d) for d in Path(run_dir.path).glob("checkpoint_*") if d.is_dir()]
    parts = [state[PART_EPOCH] for state in states if PART_EPOCH in state]
    assert len(parts) == 1 and parts[0]["epoch"] == 1 and 0 < parts[0]["steps"] < steps_per_epoch, parts  # inside epoch 1
    assert len(parts[0]["ranks"]) == workers

    resumed = train(spec, run_dir, resume=True, reporter=Reporter.quiet(), interrupt=Interrupt())
    assert [row["epoch"] for row in resumed.history] == [1]
    assert [timeless(r) for r in resumed.history] == [timeless(r) for r in whole.history[1:]]
    assert timeless(resumed.metrics) == timeless(whole.metrics)
    assert max_difference(load_model(resumed.model_dir).state_dict(), load_model(whole.model_dir).state_dict()) == 0


def _stop_once_epoch_0_is_checkpointed(run_dir: Path, interrupt: Interrupt, asked: list[float]) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not any(run_dir.glob("checkpoint_*/state.json")):
        time.sleep(0.02)
    asked.append(time.monotonic())
    interrupt.request()


def test_non_finite_loss_stops_the_run_with_epoch_and_step(ray_cluster, tiny_spec):
    spec = tiny_spec(**{"optim__lr": 1e30, "model__likelihood": "gaussian", "tracking__register_as": "never",
                        "tracking__experiment": "nan"})
    outcome = execute(spec, reporter=Reporter.quiet())
    assert (outcome.state, outcome.exit_code, outcome.error.kind) == ("failed", 1, "job_failed")
    assert re.match(r"^non-finite loss at epoch 0 step \d+$", outcome.error.message), outcome.error
    # The MLflow run is marked FAILED with the reason, and nothing was registered.
    mlflow = client()
    runs = mlflow.search_runs([mlflow.get_experiment_by_name("nan").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]
    assert runs[0].data.tags["vae.error"].startswith("non-finite loss at epoch 0")
    assert not mlflow.search_registered_models("name='never'")


@ray.remote(num_cpus=0)
class Tally:
    def __init__(self):
        self.count = 0

    def add(self) -> None:
        self.count += 1

    def read(self) -> int:
        return self.count


def count_worker_group_starts(tally) -> WorkerGroupCallback:
    """A callback for the Train controller: counts the worker groups it starts (a retry starts
    another). Defined in a function so that it travels by value: the controller cannot import tests."""

    class CountWorkerGroupStarts(WorkerGroupCallback):
        def after_worker_group_start(self, worker_group) -> None:
            ray.get(tally.add.remote())

    return CountWorkerGroupStarts()


def test_non_finite_loss_on_two_ranks_fails_once_without_retrying(ray_cluster, tiny_spec, tmp_path):
    spec = tiny_spec(**{"optim__lr": 1e30, "model__likelihood": "gaussian", "resources__num_workers": 2,
                        "storage__max_failures": 2, "tracking__register_as": "never2", "tracking__experiment": "nan2"})
    starts = Tally.remote()
    run_dir = storage.resolve(str(tmp_path / "nan2-run"))
    storage.make_dirs(run_dir)
    # The worker loop (not a test double) fails; the job layer's train is called directly only
    # to hand Ray Train the counting callback (execute has no such parameter).
    with pytest.raises(JobFailed) as failed:
        train(spec, run_dir, resume=False, reporter=Reporter.quiet(), interrupt=Interrupt(),
              callbacks=(count_worker_group_starts(starts),))
    # Both ranks stopped at the same step and returned: had one gone on, its next collective would
    # have waited forever for the other, or failed and made Ray Train start another group
    # (max_failures=2 allows two retries). One group was started, and the run failed with the reason.
    assert ray.get(starts.read.remote()) == 1
    assert re.match(r"^non-finite loss at epoch 0 step \d+$", str(failed.value)), failed.value
    assert checkpoint_epochs(run_dir.path) == []
    mlflow = client()
    runs = mlflow.search_runs([mlflow.get_experiment_by_name("nan2").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]
    assert runs[0].data.tags["vae.error"] == str(failed.value)
    assert not mlflow.search_registered_models("name='never2'")


STOPS_FAILED_TASKS = """
import ray
from vae_service.training.one_worker import stop_task

ray.init(log_to_driver=False)

@ray.remote(max_retries=0)
def fails():
    raise RuntimeError("boom")

@ray.remote
def sleeps(started):
    import pathlib, time
    pathlib.Path(started).touch()
    time.sleep(120)

for _ in range(50):
    task = fails.remote()
    try:
        ray.get(task)
    except ray.exceptions.RayTaskError:
        pass
    stop_task(task)  # ended: left alone
# A task that has started, as the stop after its grace finds a run's task (cancelled right
# after submission, under load, a task whose lease Ray was granting at that moment ran on).
import os, tempfile, time
started = os.path.join(tempfile.mkdtemp(), "started")
task = sleeps.remote(started)
deadline = time.monotonic() + 60
while not os.path.exists(started):
    assert time.monotonic() < deadline, "the sleeping task did not start within 60 s"
    time.sleep(0.05)
stop_task(task)  # still running: cancelled
try:
    ray.get(task, timeout=60)
except ray.exceptions.TaskCancelledError:
    print("the running task was cancelled")
print("the driver lives")
"""


def test_a_run_whose_task_failed_does_not_cancel_it_again(ray_address):
    """Ray 2.60 aborts a driver that cancels a task whose failure it has just received (its task
    manager's check "Tried to complete task that was not pending"); unguarded, this loop aborts
    within a few rounds, and a test process that is the driver (an xdist worker) dies with it.
    `one_worker.stop_task` cancels only a task still running. In a process of its own, joined
    to the session cluster, so that a regression fails this test rather than the worker."""
    done = subprocess.run([sys.executable, "-c", STOPS_FAILED_TASKS], env={**os.environ, "RAY_ADDRESS": ray_address},
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, (done.returncode, done.stderr[-3000:])
    assert done.stdout.splitlines()[-2:] == ["the running task was cancelled", "the driver lives"], done.stdout

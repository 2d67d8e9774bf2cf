"""Sweep specs (`kind: sweep`): validation with field paths, trial specs, resources, Pareto
fronts. No Ray here: these are quick."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vae_service.cli import app
from vae_service.core.pareto import knee_point, non_dominated
from vae_service.core.resources import requested_resources
from vae_service.core.spec_loading import SpecError, dump_spec, load_spec_text
from vae_service.core.sweep_spec import SweepSpec

JOBS = Path(__file__).resolve().parents[1] / "jobs"

BASE = """\
kind: sweep
name: s
train:
  optim: {epochs: 2}
  resources: {num_workers: 2, cpus_per_worker: 1.5}
sweep:
  space:
    objective.beta: {loguniform: [0.25, 8]}
    model.latent_dim: {choice: [2, 8]}
  objectives: [distortion, rate]
  max_concurrent: 3
"""


def problems(text: str) -> str:
    with pytest.raises(SpecError) as caught:
        load_spec_text(text, "s.yaml")
    return str(caught.value)


def test_a_sweep_spec_loads_and_round_trips():
    spec = load_spec_text(BASE)
    assert isinstance(spec, SweepSpec)
    assert spec.sweep.trial_count() == 8 and spec.sweep.resolved_sampler == "tpe"
    assert load_spec_text(BASE, overrides=["sweep.num_samples=16"]).sweep.resolved_sampler == "nsga2"
    assert load_spec_text(BASE, overrides=["sweep.objectives=[rate]", "sweep.num_samples=16"]).sweep.resolved_sampler == "tpe"
    assert load_spec_text(dump_spec(spec)) == spec


@pytest.mark.parametrize("change, expected", [
    (("0.25, 8", "-1, 8"), "sweep.space.objective.beta.loguniform: loguniform needs lo > 0 (got -1.0) (line 8)"),
    (("{loguniform: [0.25, 8]}", "{uniform: [-1, 8]}"), "sweep.space.objective.beta: value -1.0 is refused: must be >= 0"),
    (("0.25, 8", "8, 0.25"), "sweep.space.objective.beta.loguniform: empty range: lo (8.0) must be < hi (0.25)"),
    (("{choice: [2, 8]}", "{int: [9, 3]}"), "sweep.space.model.latent_dim.int: empty range: lo (9) must be <= hi (3)"),
    (("{choice: [2, 8]}", "{choice: []}"), "sweep.space.model.latent_dim.choice: List should have at least 1 item"),
    (("{choice: [2, 8]}", "{choice: [0, 8]}"), "sweep.space.model.latent_dim: value 0 is refused: must be > 0 (got 0)"),
    (("model.latent_dim", "model.latent"), "sweep.space.model.latent: unknown field path: model has no field 'latent' (line 9)"),
    (("model.latent_dim", "storage.uri"), "sweep.space.storage.uri: storage cannot be searched"),
    (("model.latent_dim", "model"), "sweep.space.model: names a section, not a field"),
    (("{choice: [2, 8]}", "{pick: [2, 8]}"), "sweep.space.model.latent_dim: a domain is one of {loguniform: [lo, hi]}"),
    (("{choice: [2, 8]}", "{grid: [2, 8]}"), "sweep.space: grid values cannot be mixed with sampled domains"),
    (("model.latent_dim: {choice: [2, 8]}", "model.hidden: {choice: [[64], [128, 64]]}"),
     "sweep.space.model.hidden: choice values must be numbers, strings or booleans (Optuna samples them); use grid for lists"),
    (("objectives: [distortion, rate]", "objectives: [distortion, rate]\n  scheduler: {kind: asha}"),
     "sweep.scheduler: asha stops trials on one metric; it cannot be used with several objectives"),
    (("objectives: [distortion, rate]", "objectives: rate\n  scheduler: {kind: asha, grace_period: 3}"),
     "sweep.scheduler.grace_period (3) exceeds train.optim.epochs (2)"),
    (("[distortion, rate]", "[distortion, elbo]"), "sweep.objectives.1: must be one of"),
    (("[distortion, rate]", "[rate, rate]"), "sweep.objectives: objectives are listed twice"),
    (("max_concurrent: 3", "max_concurrent: 0"), "sweep.max_concurrent: must be > 0"),
    (("  optim: {epochs: 2}", "  optim: {epoch: 2}"), "train.optim.epoch: unknown field"),
])
def test_invalid_sweep_specs_name_the_field(change, expected):
    old, new = change
    assert old in BASE
    assert expected in problems(BASE.replace(old, new))


def test_a_missing_search_space_and_unknown_kinds_are_refused():
    assert "sweep: required field is missing" in problems("kind: sweep\n")
    assert "kind: must be one of 'train', 'sweep', 'encode-dataset' (got 'grid')" in problems("kind: grid\n")
    assert "sweep.space: Dictionary should have at least 1 item" in problems("kind: sweep\nsweep: {space: {}}\n")


def test_cli_exits_2_with_the_field_path_for_a_bad_sweep(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(BASE.replace("0.25, 8", "-1, 8"))
    for command in (["validate", str(path)], ["run", str(path)]):
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 2, result.output
        assert "sweep.space.objective.beta.loguniform: loguniform needs lo > 0" in result.output
        assert "Traceback" not in result.output


def test_set_reaches_the_base_training_fields_and_the_search(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(BASE)
    spec = load_spec_text(BASE, overrides=["train.optim.epochs=1", "sweep.num_samples=6"])
    assert spec.train.optim.epochs == 1 and spec.sweep.trial_count() == 6
    result = CliRunner().invoke(app, ["validate", str(path), "--set", "train.optim.epochs=0"])
    assert result.exit_code == 2 and "train.optim.epochs: must be > 0 (got 0)" in result.output


def test_trial_specs_take_the_trials_values_and_register_nothing():
    spec = load_spec_text(BASE)
    trial = spec.trial_spec({"objective.beta": 2.5, "model.latent_dim": 8}, "s-t1")
    assert (trial.objective.beta, trial.model.latent_dim, trial.name) == (2.5, 8, "s-t1")
    assert trial.tracking.register_as is None
    assert spec.train.objective.beta == 1.0  # the base is untouched


def test_an_all_grid_space_runs_every_combination():
    spec = load_spec_text(BASE.replace("{loguniform: [0.25, 8]}", "{grid: [0.5, 1, 4]}").replace("{choice: [2, 8]}", "{grid: [2, 8]}"))
    assert spec.sweep.is_grid and spec.sweep.trial_count() == 6
    assert {(c["objective.beta"], c["model.latent_dim"]) for c in spec.grid_configs()} == {(b, d) for b in (0.5, 1, 4) for d in (2, 8)}


def test_a_sweep_asks_for_its_concurrent_trials_resources():
    # 3 concurrent trials × 2 workers × 1.5 CPUs; a plain train spec asks for its workers.
    assert requested_resources(load_spec_text(BASE)) == {"CPU": 9.0, "GPU": 0.0}
    assert requested_resources(load_spec_text(BASE, overrides=["sweep.num_samples=1"])) == {"CPU": 3.0, "GPU": 0.0}
    assert requested_resources(load_spec_text("kind: train\nresources: {num_workers: 2}\n")) == {"CPU": 2.0, "GPU": 0.0}


def test_the_shipped_sweep_specs_are_valid():
    for name in ("beta-sweep.yaml", "asha-sweep.yaml"):
        spec = load_spec_text((JOBS / name).read_text(), name)
        assert isinstance(spec, SweepSpec)
    assert load_spec_text((JOBS / "asha-sweep.yaml").read_text()).sweep.scheduler.kind == "asha"


def test_pareto_front_and_knee():
    points = [[1, 9], [2, 5], [3, 3], [9, 1], [4, 6], [3, 3]]
    assert non_dominated(points) == [0, 1, 2, 3, 5]  # [4, 6] is dominated by [2, 5] and [3, 3]
    assert knee_point(points) in (2, 5)  # nearest the ideal [1, 1] after scaling
    assert non_dominated([[5.0]]) == [0] and knee_point([[5.0]]) == 0
    assert non_dominated([[1, 2], [2, 1]]) == [0, 1]


def test_help_documents_how_set_reaches_a_sweep():
    result = CliRunner().invoke(app, ["run", "--help"], terminal_width=200)
    assert "train.optim.epochs=1" in result.output and "sweep.num_samples" in result.output


def test_sweep_spec_schema_covers_both_kinds():
    result = CliRunner().invoke(app, ["schema"])
    assert result.exit_code == 0
    text = textwrap.dedent(result.output)
    assert '"SweepSpec"' in text and '"TrainSpec"' in text and '"loguniform"' in text

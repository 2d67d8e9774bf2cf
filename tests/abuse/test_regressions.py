"""Issue #12, one regression test (or a few) per hardening defect: 3 byte amplification,
6 specs that validated and then failed late (seeds, widths, registry names, a half-done
registration, duplicate keys), 7 unbounded grids, 10 the node-limit message."""

from __future__ import annotations

import time

import pytest
import yaml
from typer.testing import CliRunner

from vae_service.cli import app
from vae_service.core.errors import BadInput
from vae_service.core.spec import (
    MAX_CHANNELS,
    MAX_EPOCHS,
    MAX_PARAMETERS,
    MAX_SEED,
    MAX_WIDTH,
    MAX_WORKERS,
    ModelSpec,
    alias_problem,
    model_name_problem,
)
from vae_service.core.spec_loading import (
    MAX_EXPANDED_NODES,
    MAX_NORMALISED_BYTES,
    SpecError,
    dump_spec,
    load_spec_text,
)
from vae_service.core.sweep_spec import MAX_GRID_POINTS, MAX_SWEEP_SEED


def problems(text: str, overrides=(), **kwargs) -> list[str]:
    with pytest.raises(SpecError) as info:
        load_spec_text(text, "s.yaml", overrides, **kwargs)
    return [str(p) for p in info.value.problems]


def jobs_stored(store) -> int:
    return store.list()[1]


# ---------------------------------------------------------------------------------------------
# 3. byte amplification: a byte budget on the parsed (alias-expanded) and the normalised spec

TEN_KB = "x" * 10_240
AMPLIFIED = ("kind: sweep\n_: &s " + TEN_KB + "\nsweep:\n  space:\n    data.root: {grid: ["
             + ", ".join(["*s"] * 400) + "]}\n")  # 11.6 KB that would normalise to 4 MB


def test_an_aliased_string_is_refused_by_its_expanded_bytes_quickly():
    assert len(AMPLIFIED) < 12_000
    start = time.perf_counter()
    found = problems(AMPLIFIED)
    assert time.perf_counter() - start < 1.0
    assert found == [f"sweep.space.data.root.grid: YAML aliases expand to more than {MAX_NORMALISED_BYTES} bytes; refused"]


def test_a_large_value_without_aliases_is_too_large_not_an_alias_problem():
    found = problems("name: x\ndata:\n  root: " + "r" * (MAX_NORMALISED_BYTES + 1) + "\n")
    assert found == [f"data.root: value is too large: more than {MAX_NORMALISED_BYTES} bytes of keys and values; refused"]


def test_the_normalised_spec_has_the_same_budget():
    # Each --set value fits; together (and with YAML's escaping of non-ASCII) they do not.
    found = problems("name: x\n", ["data.root=" + "a" * 40_000, "storage.uri=" + "é" * 10_000])
    assert len(found) == 1 and found[0].startswith("storage.uri: too large: the normalised spec would be ")
    assert f"over the limit of {MAX_NORMALISED_BYTES}" in found[0]
    near = load_spec_text("name: x\n", "s.yaml", ["data.root=" + "a" * 40_000])  # under the budget: fine
    assert len(dump_spec(near).encode()) <= MAX_NORMALISED_BYTES


def test_byte_amplification_through_the_api_is_a_422_and_stores_nothing(api):
    client, store = api
    before = jobs_stored(store)
    response = client.post("/jobs", content=AMPLIFIED, headers={"Content-Type": "application/yaml"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["path"] == "sweep.space.data.root.grid"
    assert jobs_stored(store) == before


def test_byte_amplification_through_vae_validate_exits_2(tmp_path):
    path = tmp_path / "amplified.yaml"
    path.write_text(AMPLIFIED)
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2 and "aliases expand to more than" in result.output
    assert "Traceback" not in result.output


# ---------------------------------------------------------------------------------------------
# 6. specs that validated, then failed late or never


def test_the_seed_is_bounded_so_every_derived_seed_fits_torch():
    from vae_service.core.data import epoch_shard
    from vae_service.training.worker import seed_everything

    assert load_spec_text(f"optim:\n  seed: {MAX_SEED}\n").optim.seed == MAX_SEED
    assert problems(f"optim:\n  seed: {MAX_SEED + 1}\n") == [
        f"optim.seed: must be <= {MAX_SEED} (got {MAX_SEED + 1}) (line 2)"]
    # The largest seed, epoch and rank a valid spec allows: torch takes the derived seeds.
    seed_everything(MAX_SEED, MAX_EPOCHS - 1, MAX_WORKERS - 1)
    assert len(epoch_shard(10, MAX_EPOCHS - 1, MAX_WORKERS - 1, MAX_WORKERS, MAX_SEED)) <= 1
    with pytest.raises((RuntimeError, ValueError)):  # what an unbounded seed did, in the worker, after startup
        seed_everything(2**64, 0, 0)


def test_the_sweep_seed_leaves_room_for_the_attempt_number():
    import optuna

    assert problems(f"kind: sweep\nsweep:\n  seed: {MAX_SWEEP_SEED + 1}\n  space:\n    objective.beta: {{grid: [1]}}\n")[0] \
        .startswith(f"sweep.seed: must be <= {MAX_SWEEP_SEED}")
    optuna.samplers.RandomSampler(seed=MAX_SWEEP_SEED + 1000)  # NumPy takes seeds below 2**32


@pytest.mark.parametrize("model, expected", [
    ("hidden: [1000000000]", f"model.hidden.0: must be <= {MAX_WIDTH} (got 1000000000)"),
    ("arch: conv, channels: [32, 10000000]", f"model.channels.1: must be <= {MAX_CHANNELS} (got 10000000)"),
    ("hidden: [16384, 16384, 16384]", "model.hidden: the model would have 1,100,514,104 parameters, over the limit"),
    ("arch: conv, channels: [4096, 4096]", "model.channels: the model would have 522,522,153 parameters"),
    ("hidden: [" + ", ".join(["8"] * 17) + "]", "model.hidden: List should have at most 16 items"),
    ("hidden: []", "model.hidden: List should have at least 1 item"),
])
def test_model_size_is_bounded_with_a_clear_message(model, expected):
    found = problems(f"model: {{{model}}}\n")
    assert len(found) == 1 and found[0].startswith(expected), found


@pytest.mark.parametrize("fields, image_shape", [
    ({}, (1, 28, 28)), ({"arch": "conv"}, (1, 28, 28)),
    ({"hidden": [64, 32], "latent_dim": 3, "likelihood": "gaussian"}, (1, 28, 28)),
    ({"arch": "conv", "channels": [8, 16, 4, 2, 5], "latent_dim": 7}, (1, 28, 28)),
    # Higgins et al.'s dSprites model (jobs/dsprites-vae.yaml): 4×4 kernels, 64 → 4
    ({"arch": "conv", "channels": [32, 32, 64, 64], "kernel_size": 4, "latent_dim": 10}, (1, 64, 64)),
    ({"arch": "conv", "channels": [32, 64], "kernel_size": 4, "likelihood": "gaussian"}, (1, 28, 28)),
    ({"arch": "conv", "channels": [16, 16, 16], "kernel_size": 3}, (1, 64, 64)),
    ({"hidden": [32], "likelihood": "gaussian", "gaussian_variance": "learned_per_dim"}, (1, 28, 28)),
    ({"arch": "conv", "channels": [8, 16], "likelihood": "gaussian", "gaussian_variance": "learned_per_dim"}, (1, 64, 64)),
    ({"hidden": [32], "likelihood": "gaussian", "gaussian_variance": "fixed"}, (1, 28, 28)),
    ({"arch": "conv", "likelihood": "continuous_bernoulli"}, (1, 28, 28)),
])
def test_the_parameter_count_matches_the_real_model(fields, image_shape):
    from vae_service.core.model import VAE, ModelConfig, count_parameters

    spec = ModelSpec(**fields)
    config = ModelConfig(image_shape=image_shape, latent_dim=spec.latent_dim, arch=spec.arch, hidden=tuple(spec.hidden),
                         channels=tuple(spec.channels), kernel_size=spec.kernel_size, likelihood=spec.likelihood,
                         gaussian_variance=spec.gaussian_variance)
    assert spec.parameter_count(config.image_shape) == count_parameters(VAE(config))
    assert spec.parameter_count(config.image_shape) <= MAX_PARAMETERS


GOOD_NAMES = ["vae", "mnist-vae", "Model_2", "a.b", "x" * 255, "v3", "latest", "9lives", "a..b"]
BAD_NAMES = ["a/b", "a:b", "a%b", "", " ", "..", ".", "../x", "my model", "a\\b", "x" * 256, "a@b", ".hidden",
             "-x", "é", "a\n", "a\x00b", "\u202ename"]
GOOD_ALIASES = ["candidate", "champion", "prod_2", "v", "vx", "latest-2", "x" * 255, "V-1", "-", "_"]
BAD_ALIASES = ["latest", "LATEST", "Latest", "v3", "V10", "v0", "", "a b", "a/b", "a.b", "x" * 256, "a@b",
               "é", "a\n", "٣", "v٣"]


def _mlflow_refuses(validators, value: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        for validate in validators:
            validate(value)
    except MlflowException:
        return True
    return False


def test_registry_names_follow_mlflows_own_validators():
    """core cannot import MLflow, so its rules are pinned here: every name and alias core
    accepts, MLflow's stores accept; every one MLflow refuses, core refuses (core is a little
    stricter: no spaces, '@' or non-ASCII, which URIs and shells handle badly)."""
    from mlflow.store.model_registry.file_store import _validate_model_name as file_store_name
    from mlflow.utils.validation import (
        _validate_model_alias_name,
        _validate_model_alias_name_reserved,
        _validate_model_name,
    )

    names = (_validate_model_name, file_store_name)
    aliases = (_validate_model_alias_name, _validate_model_alias_name_reserved)
    for name in GOOD_NAMES + BAD_NAMES:
        accepted = model_name_problem(name) is None
        assert accepted == (name in GOOD_NAMES), name
        assert not (accepted and _mlflow_refuses(names, name)), name
    for alias in GOOD_ALIASES + BAD_ALIASES:
        accepted = alias_problem(alias) is None
        assert accepted == (alias in GOOD_ALIASES), alias
        assert not (accepted and _mlflow_refuses(aliases, alias)), alias
    for name in ("a/b", "a:b", "a%b", "..", " "):  # MLflow's own refusals are among ours
        assert _mlflow_refuses(names, name) and model_name_problem(name), name
    for alias in ("latest", "LATEST", "v3", "a b", "a.b", "x" * 256):
        assert _mlflow_refuses(aliases, alias) and alias_problem(alias), alias


@pytest.mark.parametrize("tracking, expected", [
    ("alias: latest", "tracking.alias: alias 'latest' is reserved by MLflow"),
    ("alias: v3", "tracking.alias: alias 'v3' is reserved by MLflow"),
    ("register_as: team/model", "tracking.register_as: invalid model name 'team/model'"),
    ("register_as: my model", "tracking.register_as: invalid model name 'my model'"),
    ("experiment: " + "e" * 501, "tracking.experiment: String should have at most 500 characters"),
])
def test_registry_names_are_checked_at_validation(tracking, expected):
    found = problems(f"tracking:\n  {tracking}\n")
    assert len(found) == 1 and found[0].startswith(expected), found


@pytest.fixture(scope="module")
def mlflow_db(tmp_path_factory):
    """A real local MLflow store (SQLite), created once: its tables take seconds."""
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    MlflowClient(tracking_uri=uri).search_experiments()
    return uri, root


@pytest.fixture
def mlflow_store(mlflow_db, monkeypatch, request):
    """The store, with one run and one logged model of this test's own."""
    from vae_service.tracking.mlflow_run import client

    uri, root = mlflow_db
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow = client()
    experiment = mlflow.create_experiment(request.node.name, artifact_location=(root / request.node.name).as_uri())
    run = mlflow.create_run(experiment)
    logged = mlflow.create_logged_model(experiment, name="model", source_run_id=run.info.run_id)
    return mlflow, f"models:/{logged.model_id}"


def registered(mlflow, *names: str) -> list:
    return [model.name for model in mlflow.search_registered_models() if model.name in names]


def test_registration_refused_by_the_rules_registers_nothing(mlflow_store):
    from vae_service.tracking.registry import register

    mlflow, model_uri = mlflow_store
    for name, alias in (("refused", "latest"), ("refused", "v2"), ("a/b", "candidate")):
        with pytest.raises(BadInput, match="cannot register the model"):
            register(model_uri, name, alias)
    assert registered(mlflow, "refused", "a/b") == []


def test_a_failed_alias_leaves_no_registered_version(mlflow_store):
    """MLflow refusing the alias after the version exists (here: its reserved @latest, with
    our own check skipped) deletes the version, and the model when this call created it."""
    from mlflow.exceptions import MlflowException

    from vae_service.tracking.registry import _register_version, register

    mlflow, model_uri = mlflow_store
    with pytest.raises(MlflowException, match="reserved"):
        _register_version(model_uri, "fresh", "latest")
    assert registered(mlflow, "fresh") == []

    assert register(model_uri, "kept", "candidate") == 1
    with pytest.raises(MlflowException, match="reserved"):
        _register_version(model_uri, "kept", "v9")
    assert [str(v.version) for v in mlflow.search_model_versions("name = 'kept'")] == ["1"]
    assert {a: str(v) for a, v in mlflow.get_registered_model("kept").aliases.items()} == {"candidate": "1"}
    assert register(model_uri, "kept", "candidate") == 3  # numbering moves on; 2 is gone


@pytest.mark.parametrize("text, expected", [
    ("name: x\noptim:\n  epochs: 1\n  batch_size: 8\n  seed: 1\n  lr: 0.1\n  lr: 0.2\n", "optim.lr: duplicate key (line 7)"),
    ('{"name": "x",\n "optim": {"lr": 0.1,\n            "lr": 0.2}}', "optim.lr: duplicate key (line 3)"),
    ("name: x\nname: y\n", "name: duplicate key (line 2)"),
    ("kind: sweep\nsweep:\n  space:\n    objective.beta: {grid: [1]}\n    objective.beta: {grid: [2]}\n",
     "sweep.space.objective.beta: duplicate key (line 5)"),
    ("model:\n  hidden: [{a: 1, a: 2}]\n", "model.hidden.0.a: duplicate key (line 2)"),
])
def test_duplicate_keys_are_refused_with_their_line(text, expected):
    assert problems(text) == [expected]


def test_merge_keys_are_not_duplicates():
    spec = load_spec_text("optim:\n  <<: {epochs: 1, lr: 0.1}\n  lr: 0.2\n")
    assert (spec.optim.epochs, spec.optim.lr) == (1, 0.2)


def test_duplicate_keys_in_set_values_and_over_http(api):
    assert problems("name: x\n", ["optim={lr: 0.1, lr: 0.2}"]) == ["optim.lr: duplicate key"]
    client, store = api
    before = jobs_stored(store)
    body = '{"name": "x", "optim": {"lr": 0.1, "lr": 0.2}}'
    response = client.post("/jobs", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert [(p["path"], p["msg"]) for p in response.json()["detail"]] == [("optim.lr", "duplicate key")]
    response = client.post("/jobs", params={"set": "optim={lr: 1, lr: 2}"}, content="name: x\n")
    assert response.status_code == 422 and response.json()["detail"][0]["path"] == "optim.lr"
    assert jobs_stored(store) == before


# ---------------------------------------------------------------------------------------------
# 7. unbounded grids: counted, capped, never listed


def grid(points_per_domain: int, domains: int, num_samples: int = 1) -> str:
    fields = ["objective.beta", "objective.warmup_epochs", "optim.lr", "optim.seed", "model.latent_dim",
              "data.val_fraction", "optim.epochs", "optim.batch_size", "storage.keep_checkpoints", "data.limit"]
    space = "".join(f"    {f}: {{grid: [{', '.join(str(i + 1) if f != 'data.val_fraction' else str(i / 100) for i in range(points_per_domain))}]}}\n"
                    for f in fields[:domains])
    return f"kind: sweep\nsweep:\n  num_samples: {num_samples}\n  space:\n{space}"


def test_a_grid_of_ten_billion_points_is_refused_without_listing_it():
    start = time.perf_counter()
    found = problems(grid(10, 10))
    assert time.perf_counter() - start < 1.0
    assert found == [f"sweep.space: the grid has 10,000,000,000 points, over the limit of {MAX_GRID_POINTS:,} trials (line 4)"]


def test_the_grid_cap_counts_repeats_and_allows_exactly_the_limit():
    assert load_spec_text(grid(100, 2)).sweep.trial_count() == MAX_GRID_POINTS
    assert problems(grid(100, 2, num_samples=2))[0].startswith(
        "sweep.space: the grid has 10,000 points × num_samples 2 = 20,000, over the limit")
    spec = load_spec_text(grid(10, 2))
    configs = spec.grid_configs()
    assert not isinstance(configs, list) and len(list(configs)) == 100  # one at a time


def test_a_server_can_lower_the_grid_cap_but_not_raise_it(tmp_path, monkeypatch):
    from fastapi.testclient import TestClient
    from pydantic import ValidationError

    from vae_service.queue.api import create_app
    from vae_service.queue.auth import TokenSet
    from vae_service.queue.db import make_engine, upgrade
    from vae_service.queue.settings import Settings
    from vae_service.queue.store import Store

    monkeypatch.setenv("VAE_MAX_GRID_POINTS", "5")
    assert Settings().max_grid_points == 5
    with pytest.raises(ValidationError):
        Settings(max_grid_points=MAX_GRID_POINTS + 1)
    assert problems(grid(3, 2), max_grid_points=5)[0].startswith("sweep.space: the grid has 9 points, over the limit of 5 trials")
    assert problems(grid(200, 2), max_grid_points=10**9)[0].endswith(f"over the limit of {MAX_GRID_POINTS:,} trials (line 4)")

    monkeypatch.setenv("VAE_API_TOKEN", "grid-token-0123456789")
    monkeypatch.chdir(tmp_path)
    engine = make_engine(f"sqlite:///{tmp_path / 'queue.db'}")
    upgrade(engine)
    store = Store(engine)
    settings = Settings(home=tmp_path / "home")
    with TestClient(create_app(store, TokenSet.from_settings(settings), max_grid_points=settings.max_grid_points)) as client:
        client.headers["Authorization"] = "Bearer grid-token-0123456789"
        refused = client.post("/jobs", content=grid(3, 2))
        assert refused.status_code == 422 and refused.json()["detail"][0]["path"] == "sweep.space"
        assert jobs_stored(store) == 0
        assert client.post("/jobs", content=grid(2, 2)).status_code == 201
        assert jobs_stored(store) == 1
    engine.dispose()


# ---------------------------------------------------------------------------------------------
# 10 (last item). the node limit: "too large" unless aliases are the cause


def test_too_many_nodes_without_aliases_says_too_large():
    text = "model:\n  hidden: [" + ", ".join(["8"] * MAX_EXPANDED_NODES) + "]\n"
    found = problems(text)
    assert found == [f"model.hidden: value is too large: more than {MAX_EXPANDED_NODES} YAML nodes (keys, values, list items); refused"]
    spread = yaml.safe_dump({f"k{i}": i for i in range(MAX_EXPANDED_NODES // 2 + 1)})
    found = problems(spread)
    assert found == [f"spec is too large: more than {MAX_EXPANDED_NODES} YAML nodes (keys, values, list items); refused"]
    assert "alias" not in found[0]


def test_too_many_nodes_through_aliases_says_aliases():
    text = "model:\n  hidden: [&a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1], " + ", ".join(["*a"] * 1100) + "]\n"
    assert problems(text) == [f"model.hidden: YAML aliases expand to more than {MAX_EXPANDED_NODES} nodes; refused"]


def test_a_recursive_alias_is_refused_naming_its_field():
    assert problems("optim:\n  lr: &r [1, *r]\n") == [
        "optim.lr: a YAML alias refers to its own anchor (a recursive structure); refused"]


def test_aliases_that_nest_deeper_than_written_are_refused():
    """Each anchor nests 20 levels; aliased into one another they nest 1,200 (Python's
    recursion limit, in pydantic or json, would break long before)."""
    lines = ["x0: &a0 " + "[" * 20 + "1" + "]" * 20]
    lines += [f"x{i}: &a{i} " + "[" * 20 + f"*a{i - 1}" + "]" * 20 for i in range(1, 60)]
    assert problems("\n".join(lines) + "\nmodel:\n  hidden: *a59\n") == ["model.hidden: nested more than 32 levels deep; refused"]

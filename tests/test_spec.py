"""Job specs: strict validation, safe YAML, `--set` overrides, `vae validate` / `vae schema`.

Every failure must come out as `source: path.to.field: reason (line N)`, exit code 2, and never
a traceback.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel
from typer.testing import CliRunner

from vae_service.cli import app, spec_json_schema
from vae_service.core.sweep_spec import SweepSpec
from vae_service.core.spec import TrainSpec
from vae_service.core.spec_loading import (
    MAX_EXPANDED_NODES,
    MAX_SPEC_BYTES,
    SpecError,
    SpecProblem,
    apply_overrides,
    dump_spec,
    load_spec,
    load_spec_text,
    parse_override,
    parse_yaml,
    validate_data,
)

REPO = Path(__file__).resolve().parents[1]
JOBS = REPO / "jobs"
JOB_FILES = sorted(JOBS.glob("*.yaml"))
SCHEMA_FILE = JOBS / "job-spec.schema.json"
SCHEMA_HEADER = "# yaml-language-server: $schema=./job-spec.schema.json"
VAE = Path(sys.executable).with_name("vae")

BOMB = """\
a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
"""
SET_BOMB = (
    "model.hidden=[&a [1,1,1,1,1,1,1,1,1,1], &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a], "
    "&c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b], &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c], "
    "&e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d], &f [*e,*e,*e,*e,*e,*e,*e,*e,*e,*e], "
    "&g [*f,*f,*f,*f,*f,*f,*f,*f,*f,*f]]"
)


def write(tmp_path: Path, text: str | bytes, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def problems_of(exc: SpecError) -> list[str]:
    return [str(p) for p in exc.problems]


def cli(*args: str):
    """Runs `vae ...` in-process; asserts it ended through typer.Exit, not an exception."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    return result


def vae_subprocess(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """Runs the installed `vae` executable, as a user would."""
    return subprocess.run(
        [str(VAE), *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


# ---------------------------------------------------------------------------------------------
# valid specs


def test_minimal_spec_gets_every_default():
    spec = load_spec_text("kind: train\n")
    assert spec == TrainSpec()
    assert spec.model.latent_dim == 20 and spec.optim.lr == 1e-3 and spec.data.binarize == "none"


def test_validate_data_accepts_a_plain_dict():
    assert validate_data({}) == TrainSpec()
    assert validate_data({"optim": {"epochs": 3}}).optim.epochs == 3


def test_dump_spec_round_trips():
    spec = load_spec_text("name: rt\nmodel:\n  hidden: [64, 32]\noptim:\n  seed: null\n")
    again = load_spec_text(dump_spec(spec))
    assert again == spec
    assert again.optim.seed is None and again.model.hidden == [64, 32]


def test_job_files_exist():
    assert len(JOB_FILES) >= 1, "no jobs/*.yaml found"


@pytest.mark.parametrize("path", JOB_FILES, ids=lambda p: p.name)
def test_every_job_file_validates(path):
    spec = load_spec(path)
    assert isinstance(spec, (TrainSpec, SweepSpec))
    assert load_spec_text(dump_spec(spec)) == spec


@pytest.mark.parametrize("path", JOB_FILES, ids=lambda p: p.name)
def test_every_job_file_starts_with_schema_header(path):
    first_line = path.read_text(encoding="utf-8").splitlines()[0]
    assert first_line == SCHEMA_HEADER


def test_yaml_12_floats_are_numbers():
    """3e-4 / 1e3 are floats (YAML 1.2, as editors read them), not strings."""
    spec = load_spec_text("optim:\n  lr: 3e-4\n  epochs: 1e3\n")
    assert spec.optim.lr == pytest.approx(3e-4) and isinstance(spec.optim.lr, float)
    assert spec.optim.epochs == 1000 and isinstance(spec.optim.epochs, int)


def test_utf8_bom_and_crlf_are_accepted(tmp_path):
    path = write(tmp_path, "\ufeffname: bom\r\noptim:\r\n  epochs: 2\r\n".encode("utf-8"))
    spec = load_spec(path)
    assert spec.name == "bom" and spec.optim.epochs == 2


# ---------------------------------------------------------------------------------------------
# invalid specs: exact `path: reason (line N)`

INVALID = [
    # absurd values
    ("model:\n  latent_dim: 0\n", "model.latent_dim: must be > 0 (got 0) (line 2)"),
    ("model:\n  latent_dim: -3\n", "model.latent_dim: must be > 0 (got -3) (line 2)"),
    ("model:\n  latent_dim: 100000\n", "model.latent_dim: must be <= 4096 (got 100000) (line 2)"),
    ("objective:\n  beta: -0.5\n", "objective.beta: must be >= 0.0 (got -0.5) (line 2)"),
    ("optim:\n  epochs: 0\n", "optim.epochs: must be > 0 (got 0) (line 2)"),
    ("optim:\n  epochs: -1\n", "optim.epochs: must be > 0 (got -1) (line 2)"),
    ("optim:\n  batch_size: 0\n", "optim.batch_size: must be > 0 (got 0) (line 2)"),
    ("optim:\n  batch_size: 1000000000000\n", "optim.batch_size: must be <= 1048576 (got 1000000000000) (line 2)"),
    ("optim:\n  lr: 0\n", "optim.lr: must be > 0.0 (got 0) (line 2)"),
    ("optim:\n  lr: -1.0e-3\n", "optim.lr: must be > 0.0 (got -0.001) (line 2)"),
    ("optim:\n  precision: fp16\n", "optim.precision: must be one of 'fp32' or 'bf16' (got 'fp16') (line 2)"),
    ("optim:\n  lr_reference_batch: 0\n", "optim.lr_reference_batch: must be > 0 (got 0) (line 2)"),
    ("resources:\n  num_workers: 0\n", "resources.num_workers: must be > 0 (got 0) (line 2)"),
    ("tracking:\n  alias: Champion\n", "tracking.alias: 'Champion' is protected: only `vae models promote` moves it"),
    ("data:\n  val_fraction: 1.0\n", "data.val_fraction: must be < 1.0 (got 1.0) (line 2)"),
    ("model:\n  hidden: [64, 0]\n", "model.hidden.1: must be > 0 (got 0) (line 2)"),
    ("model:\n  hidden:\n    - 64\n    - -8\n", "model.hidden.1: must be > 0 (got -8) (line 4)"),
    # wrong types
    ("optim:\n  epochs: ten\n", "optim.epochs: Input should be a valid integer"),
    ("optim:\n  epochs: 2.5\n", "optim.epochs: Input should be a valid integer"),
    ("model:\n  hidden: 64\n", "model.hidden: Input should be a valid list"),
    ("data: mnist\n", "data: Input should be a valid dictionary"),
    ("resources:\n  use_gpu: maybe\n", "resources.use_gpu: Input should be a valid boolean"),
    ("name: [a, b]\n", "name: Input should be a valid string"),
    ("model:\n  arch: transformer\n", "model.arch: must be one of 'mlp' or 'conv' (got 'transformer') (line 2)"),
    ("name: has spaces\n", "name: String should match pattern"),
    # unknown keys
    ("modle:\n  latent_dim: 2\n", "modle: unknown field (line 1)"),
    ("name: x\noptim:\n  learning_rate: 0.1\n", "optim.learning_rate: unknown field (line 3)"),
    ("objective:\n  capacity:\n    nats: 3\n", "objective.capacity.nats: unknown field (line 3)"),
    # kinds
    ("kind: sweep\n", "sweep: required field is missing"),
    ("name: x\nkind: sweep\nmodel: {}\n", "model: unknown field (line 3)"),
    ("kind: predict\n", "kind: must be one of 'train', 'sweep', 'encode-dataset' (got 'predict') (line 1)"),
    ("kind: [sweep]\n", "kind: must be one of 'train', 'sweep', 'encode-dataset' (got ['sweep']) (line 1)"),  # was a TypeError
    ("kind: {a: 1}\n", "kind: must be one of 'train', 'sweep', 'encode-dataset'"),
    # cross-field rules
    ("objective:\n  kind: ae\n  capacity: {}\n", "objective: capacity annealing applies to kind: vae only (line 1)"),
    ("model:\n  gaussian_variance: fixed\n", "model: gaussian_variance: fixed applies to likelihood: gaussian only, not bernoulli (line 1)"),
    ("optim:\n  batch_size: 2\nresources:\n  num_workers: 4\n", "optim.batch_size (2) must be at least resources.num_workers (4)"),
    ("resources:\n  gpus_per_worker: 1\n", "resources.gpus_per_worker > 0 needs resources.use_gpu: true"),
    # keys that are not strings
    ("2020-01-01: x\n", "datetime.date(2020, 1, 1): Keys should be strings"),
    ("~: 1\n", "None: Keys should be strings"),
]


@pytest.mark.parametrize("text, expected", INVALID, ids=[e.split(":")[0] + f"-{i}" for i, (_, e) in enumerate(INVALID)])
def test_invalid_spec_names_the_field(text, expected):
    with pytest.raises(SpecError) as info:
        load_spec_text(text, source="s.yaml")
    problems = problems_of(info.value)
    assert any(p == expected or p.startswith(expected) for p in problems), problems
    # the message is `source: problem`, one line per problem
    assert str(info.value).splitlines() == [f"s.yaml: {p}" for p in problems]


def test_every_problem_is_reported_once_with_its_line():
    text = "name: x\nmodel:\n  latent_dim: 0\n  hiden: [1]\noptim:\n  lr: -1\n  batch_size: 0\n"
    with pytest.raises(SpecError) as info:
        load_spec_text(text, source="m.yaml")
    assert sorted(problems_of(info.value)) == sorted([
        "model.latent_dim: must be > 0 (got 0) (line 3)",
        "model.hiden: unknown field (line 4)",
        "optim.lr: must be > 0.0 (got -1) (line 6)",
        "optim.batch_size: must be > 0 (got 0) (line 7)",
    ])


# ---------------------------------------------------------------------------------------------
# unreadable / unsafe YAML

UNPARSABLE = [
    ("empty", "", "spec is empty"),
    ("comments-only", "# nothing here\n\n", "spec is empty"),
    ("syntax-error", "kind: train\nname: [a\n", "YAML syntax error"),
    ("bad-indent", "model:\n  latent_dim: 2\n hidden: [1]\n", "YAML syntax error"),
    ("tab", "model:\n\tlatent_dim: 2\n", "YAML syntax error"),
    ("list", "- kind: train\n- kind: train\n", "spec must be a mapping of fields, got a list (line 1)"),
    ("scalar", "just words\n", "spec must be a mapping of fields, got a single value (line 1)"),
    ("null", "null\n", "spec must be a mapping of fields, got a single value"),
    ("two-documents", "name: a\n---\nname: b\n", "YAML syntax error"),
    ("python-object", "name: !!python/object:collections.OrderedDict {}\n", "could not determine a constructor"),
    ("python-name", "name: !!python/name:os.system\n", "could not determine a constructor"),
    ("unhashable-key", "? [a, b]\n: c\n", "unhashable"),
    ("alias-bomb", BOMB, f"YAML aliases expand to more than {MAX_EXPANDED_NODES} nodes; refused"),
]


@pytest.mark.parametrize("text, expected", [c[1:] for c in UNPARSABLE], ids=[c[0] for c in UNPARSABLE])
def test_unparsable_yaml_is_a_spec_error(text, expected):
    with pytest.raises(SpecError) as info:
        load_spec_text(text, source="u.yaml")
    assert len(info.value.problems) == 1
    assert expected in str(info.value.problems[0])
    assert str(info.value).startswith("u.yaml: ")


def test_syntax_error_reports_its_line():
    with pytest.raises(SpecError) as info:
        load_spec_text("name: x\nmodel:\n  latent_dim: 2\n hidden: [1]\n")
    assert info.value.problems[0].line in (3, 4)
    assert "(line " in str(info.value)


def test_python_tags_are_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    text = f"name: !!python/object/apply:os.system ['touch {marker}']\n"
    with pytest.raises(SpecError) as info:
        load_spec_text(text)
    assert "python/object/apply:os.system" in str(info.value)
    assert not marker.exists()


def test_alias_bomb_is_refused_quickly():
    start = time.perf_counter()
    with pytest.raises(SpecError, match="aliases expand"):
        parse_yaml(BOMB)
    assert time.perf_counter() - start < 1.0


def test_shared_aliases_below_the_limit_are_fine():
    data, _ = parse_yaml("h: &h [64, 32]\nmodel:\n  hidden: *h\n")
    assert data["model"]["hidden"] == [64, 32]


@pytest.mark.parametrize("size", [MAX_SPEC_BYTES + 1, 3 * MAX_SPEC_BYTES])
def test_oversized_file_is_refused(tmp_path, size):
    path = write(tmp_path, b"#" * size)
    with pytest.raises(SpecError, match=f"larger than {MAX_SPEC_BYTES} bytes"):
        load_spec(path)


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_endless_file_is_refused_without_reading_it_all():
    start = time.perf_counter()
    with pytest.raises(SpecError, match="larger than"):
        load_spec("/dev/zero")
    assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda d: d / "missing.yaml", "file not found"),
        (lambda d: d, "cannot read: IsADirectoryError"),
        (lambda d: write(d, "name: x\n", "f.yaml") / "inner.yaml", "cannot read: NotADirectoryError"),
        (lambda d: write(d, b"name: \xff\xfe\n", "latin.yaml"), "cannot read: UnicodeDecodeError"),
    ],
    ids=["missing", "directory", "not-a-directory", "not-utf8"],
)
def test_unreadable_file_is_a_spec_error(tmp_path, make, expected):
    path = make(tmp_path)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(info.value) == f"{path}: {expected}"


def test_spec_problem_formatting():
    assert str(SpecProblem("a.b", "bad", 3)) == "a.b: bad (line 3)"
    assert str(SpecProblem("a.b", "bad")) == "a.b: bad"
    assert str(SpecProblem("", "bad", 1)) == "bad (line 1)"


# ---------------------------------------------------------------------------------------------
# --set overrides


@pytest.mark.parametrize(
    "assignment, keys, value",
    [
        ("optim.lr=3e-4", ["optim", "lr"], 0.0003),
        ("optim.lr=1.0e-3", ["optim", "lr"], 0.001),
        ("optim.epochs=1e3", ["optim", "epochs"], 1000.0),
        ("optim.epochs=7", ["optim", "epochs"], 7),
        ("model.hidden=[64,32]", ["model", "hidden"], [64, 32]),
        ("model.hidden=[64, 32]", ["model", "hidden"], [64, 32]),
        ("optim.seed=null", ["optim", "seed"], None),
        ("optim.seed=~", ["optim", "seed"], None),
        ("optim.seed=", ["optim", "seed"], None),
        ("data.download=false", ["data", "download"], False),
        ("name='3e-4'", ["name"], "3e-4"),
        ("name=my-run", ["name"], "my-run"),
        ("storage.uri=s3://b/k=v", ["storage", "uri"], "s3://b/k=v"),
        ("objective.capacity={max_nats: 5}", ["objective", "capacity"], {"max_nats": 5}),
        (" optim . lr =0.5", ["optim", "lr"], 0.5),
    ],
)
def test_parse_override_reads_yaml_scalars(assignment, keys, value):
    got_keys, got = parse_override(assignment)
    assert got_keys == keys
    assert got == value and type(got) is type(value)


def test_set_values_land_in_the_spec_with_yaml_types():
    spec = load_spec_text(
        "name: x\n",
        overrides=["optim.lr=3e-4", "model.hidden=[64,32]", "optim.seed=null", "optim.epochs=1e3"],
    )
    assert isinstance(spec.optim.lr, float) and spec.optim.lr == 0.0003
    assert spec.model.hidden == [64, 32]
    assert spec.optim.seed is None
    assert spec.optim.epochs == 1000


# One valid, non-default value for every leaf field: `--set` must reach all of them.
SET_EVERY_FIELD = {
    "kind": ("train", "train"),
    "name": ("other-name", "other-name"),
    "data.dataset": ("dsprites", "dsprites"),
    "data.root": ("/tmp/somewhere", "/tmp/somewhere"),
    "data.download": ("false", False),
    "data.binarize": ("dynamic", "dynamic"),
    "data.val_fraction": ("0.25", 0.25),
    "data.limit": ("500", 500),
    "data.source": ("/tmp/cells.npz", "/tmp/cells.npz"),
    "data.format": ("images", "images"),
    "data.image_size": ("64", 64),
    "data.channels": ("3", 3),
    "data.key": ("X", "X"),
    "data.columns": ("[a, b]", ["a", "b"]),
    "data.label": ("folder", "folder"),
    "data.test_fraction": ("0.2", 0.2),
    "data.loading": ("streaming", "streaming"),
    "model.arch": ("conv", "conv"),
    "model.latent_dim": ("3", 3),
    "model.hidden": ("[8,4]", [8, 4]),
    "model.channels": ("[4]", [4]),
    "model.kernel_size": ("4", 4),
    "model.likelihood": ("gaussian", "gaussian"),
    "model.gaussian_variance": ("learned_per_dim", "learned_per_dim"),
    "objective.kind": ("vae", "vae"),
    "objective.beta": ("4", 4.0),
    "objective.warmup_epochs": ("2.5", 2.5),
    "objective.capacity": ("{max_nats: 5}", {"max_nats": 5.0, "anneal_epochs": 10, "gamma": 1000.0}),
    "optim.epochs": ("3", 3),
    "optim.batch_size": ("64", 64),
    "optim.lr": ("3e-4", 0.0003),
    "optim.lr_scaling": ("sqrt", "sqrt"),
    "optim.lr_reference_batch": ("256", 256),
    "optim.lr_warmup_epochs": ("0.5", 0.5),
    "optim.precision": ("bf16", "bf16"),
    "optim.compile": ("true", True),
    "optim.seed": ("null", None),
    "resources.num_workers": ("2", 2),
    "resources.use_gpu": ("true", True),
    "resources.cpus_per_worker": ("0.5", 0.5),
    "resources.gpus_per_worker": ("0", 0.0),
    "resources.placement": ("spread", "spread"),
    "resources.preemptible": ("false", False),
    "storage.uri": ("/tmp/runs", "/tmp/runs"),
    "storage.keep_checkpoints": ("5", 5),
    "storage.max_failures": ("-1", -1),
    "tracking.experiment": ("exp", "exp"),
    "tracking.register_as": ("model-x", "model-x"),
    "tracking.alias": ("prod", "prod"),
    "tracking.figures": ("false", False),
    "evaluation.metrics": ("[nll, au]", ["nll", "au"]),
    "evaluation.nll_samples": ("500", 500),
    "evaluation.points": ("2000", 2000),
}
# What a field's non-default value needs set beside it to be valid.
IMAGES = ["data.source=/tmp/pngs", "data.format=images"]
SET_ALSO = {
    "model.gaussian_variance": ["model.likelihood=gaussian"],
    "data.source": ["data.format=numpy", "model.likelihood=gaussian"],
    "data.format": ["data.source=/tmp/pngs"],
    "data.image_size": IMAGES, "data.channels": IMAGES, "data.label": IMAGES,
    "data.key": ["data.source=/tmp/cells.npz", "data.format=numpy", "model.likelihood=gaussian"],
    "data.columns": ["data.source=/tmp/table", "data.format=parquet", "model.likelihood=gaussian"],
}


def _leaf_paths(model: type[BaseModel], prefix: str = "") -> set[str]:
    paths = set()
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            paths |= _leaf_paths(annotation, f"{prefix}{name}.")
        else:
            paths.add(f"{prefix}{name}")
    return paths


def test_set_table_covers_every_field():
    assert set(SET_EVERY_FIELD) == _leaf_paths(TrainSpec)


@pytest.mark.parametrize("path", sorted(SET_EVERY_FIELD))
def test_set_overrides_every_field(path):
    raw, expected = SET_EVERY_FIELD[path]
    spec = load_spec_text("name: base\n", overrides=[*SET_ALSO.get(path, []), f"{path}={raw}"])
    value = spec.model_dump()
    for key in path.split("."):
        value = value[key]
    assert value == expected


def test_set_creates_missing_and_null_sections():
    spec = load_spec_text("name: x\n", overrides=["objective.capacity.max_nats=7"])
    assert spec.objective.capacity is not None and spec.objective.capacity.max_nats == 7
    spec = load_spec_text("objective:\n  capacity:\n", overrides=["objective.capacity.max_nats=7"])
    assert spec.objective.capacity.max_nats == 7


def test_later_set_wins():
    spec = load_spec_text("name: x\n", overrides=["optim.epochs=2", "optim.epochs=5"])
    assert spec.optim.epochs == 5


def test_apply_overrides_does_not_mutate_its_input():
    data = {"optim": {"lr": 0.1}, "model": {"hidden": [1]}}
    out = apply_overrides(data, ["optim.lr=0.5", "model.hidden=[2]"])
    assert data == {"optim": {"lr": 0.1}, "model": {"hidden": [1]}}
    assert out == {"optim": {"lr": 0.5}, "model": {"hidden": [2]}}


def test_apply_overrides_keeps_non_string_keys_usable():
    """A date key used to crash the JSON deep copy (TypeError); now it is a normal error."""
    with pytest.raises(SpecError, match="Keys should be strings"):
        load_spec_text("2020-01-01: x\n", overrides=["optim.lr=1"])


@pytest.mark.parametrize(
    "assignment, expected",
    [
        ("name.x=1", "--set: name: is not a section, cannot set name.x=1"),
        ("optim.lr.x=1", "--set: optim.lr: is not a section, cannot set optim.lr.x=1"),
        ("model.hidden.0=5", "--set: model.hidden: is not a section, cannot set model.hidden.0=5"),
        ("optim.lr", "--set: optim.lr: expected the form a.b.c=value"),
        ("=3", "--set: =3: expected the form a.b.c=value"),
        ("optim..lr=3", "--set: optim..lr=3: expected the form a.b.c=value"),
        (".lr=3", "--set: .lr=3: expected the form a.b.c=value"),
    ],
)
def test_bad_set_path_is_a_clear_error(assignment, expected):
    base = "name: x\noptim:\n  lr: 0.1\nmodel:\n  hidden: [8]\n"
    with pytest.raises(SpecError) as info:
        load_spec_text(base, overrides=[assignment])
    assert str(info.value) == expected


def test_set_below_an_absent_leaf_is_a_field_error():
    """With no value in the file the leaf becomes a mapping, which validation then names."""
    with pytest.raises(SpecError) as info:
        load_spec_text("name: x\n", source="s.yaml", overrides=["optim.lr.x=1"])
    assert problems_of(info.value) == ["optim.lr: Input should be a valid number (got {'x': 1})"]


@pytest.mark.parametrize(
    "assignment, expected",
    [
        ("optim.learning_rate=1", "optim.learning_rate: unknown field"),
        ("optim.lr=-1", "optim.lr: must be > 0.0 (got -1)"),
        ("model.latent_dim=0", "model.latent_dim: must be > 0 (got 0)"),
        ("objective.beta=-2", "objective.beta: must be >= 0.0 (got -2)"),
        ("optim=5", "optim: Input should be a valid dictionary"),
    ],
)
def test_set_values_are_validated(assignment, expected):
    with pytest.raises(SpecError) as info:
        load_spec_text("name: x\n", source="s.yaml", overrides=[assignment])
    assert any(p.startswith(expected) for p in problems_of(info.value)), problems_of(info.value)


def test_set_python_tag_stays_an_inert_string(tmp_path):
    marker = tmp_path / "pwned"
    with pytest.raises(SpecError) as info:
        load_spec_text("name: x\n", overrides=[f"name=!!python/object/apply:os.system ['touch {marker}']"])
    assert problems_of(info.value)[0].startswith("name: String should")
    assert not marker.exists()


def test_set_alias_bomb_is_refused_quickly():
    start = time.perf_counter()
    with pytest.raises(SpecError) as info:
        load_spec_text("name: x\n", overrides=[SET_BOMB])
    assert time.perf_counter() - start < 2.0
    assert str(info.value).startswith("--set: model.hidden: value: YAML aliases expand")


# ---------------------------------------------------------------------------------------------
# the `vae validate` command


def test_cli_validate_all_jobs_exit_0():
    result = cli("validate", *JOB_FILES)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [f"{p}: ok" for p in JOB_FILES]


CLI_BAD = [
    ("absurd-latent", "model:\n  latent_dim: 0\n", ["model.latent_dim: must be > 0 (got 0) (line 2)"]),
    ("absurd-beta", "objective:\n  beta: -1\n", ["objective.beta: must be >= 0.0 (got -1) (line 2)"]),
    ("absurd-epochs", "optim:\n  epochs: 0\n", ["optim.epochs: must be > 0 (got 0) (line 2)"]),
    ("absurd-batch", "optim:\n  batch_size: -4\n", ["optim.batch_size: must be > 0 (got -4) (line 2)"]),
    ("absurd-lr", "optim:\n  lr: 0.0\n", ["optim.lr: must be > 0.0 (got 0.0) (line 2)"]),
    ("absurd-workers", "resources:\n  num_workers: 0\n", ["resources.num_workers: must be > 0 (got 0) (line 2)"]),
    ("wrong-type", "optim:\n  epochs: many\n", ["optim.epochs: Input should be a valid integer"]),
    ("unknown-key", "name: x\nmodel:\n  layers: 3\n", ["model.layers: unknown field (line 3)"]),
    ("two-problems", "model:\n  latent_dim: 0\noptim:\n  lr: -1\n",
     ["model.latent_dim: must be > 0 (got 0) (line 2)", "optim.lr: must be > 0.0 (got -1) (line 4)"]),
    ("sweep", "kind: sweep\n", ["sweep: required field is missing"]),
    ("kind-list", "kind: [sweep]\n", ["kind: must be one of 'train', 'sweep', 'encode-dataset'"]),
    ("empty", "", ["spec is empty"]),
    ("syntax", "name: [a\n", ["YAML syntax error"]),
    ("list", "- a\n- b\n", ["spec must be a mapping of fields, got a list (line 1)"]),
    ("python-tag", "name: !!python/object/apply:os.system ['true']\n", ["name: could not determine a constructor"]),
    ("bomb", BOMB, ["i: YAML aliases expand to more than"]),
    ("date-key", "2020-01-01: x\n", ["datetime.date(2020, 1, 1): Keys should be strings"]),
]


@pytest.mark.parametrize("text, expected", [c[1:] for c in CLI_BAD], ids=[c[0] for c in CLI_BAD])
def test_cli_validate_reports_each_problem_on_one_line(tmp_path, text, expected):
    path = write(tmp_path, text)
    result = cli("validate", path)
    assert result.exit_code == 2
    lines = result.output.splitlines()
    assert len(lines) == len(expected), lines
    for line, want in zip(lines, expected):
        assert line.startswith(f"{path}: {want}"), line


def test_cli_validate_missing_file(tmp_path):
    result = cli("validate", tmp_path / "nope.yaml")
    assert result.exit_code == 2
    assert result.output == f"{tmp_path / 'nope.yaml'}: file not found\n"


def test_cli_validate_mixed_files_checks_them_all(tmp_path):
    bad = write(tmp_path, "optim:\n  epochs: 0\n", "bad.yaml")
    good = JOB_FILES[0]
    result = cli("validate", good, bad, tmp_path / "gone.yaml")
    assert result.exit_code == 2
    assert result.output.splitlines() == [
        f"{good}: ok",
        f"{bad}: optim.epochs: must be > 0 (got 0) (line 2)",
        f"{tmp_path / 'gone.yaml'}: file not found",
    ]


def test_cli_validate_long_problem_stays_on_one_line_verbatim(tmp_path):
    """rich must neither wrap a long problem at 80 columns nor turn :codes: into emoji."""
    name = ":thumbs_up:" + "x" * 150
    path = write(tmp_path, f'name: "{name}"\n')
    result = cli("validate", path)
    assert result.exit_code == 2
    assert result.output.splitlines() == [
        f"{path}: name: String should have at most 100 characters (got '{name}') (line 1)"
    ]


@pytest.mark.parametrize(
    "args, code, expected",
    [
        (["--set", "optim.lr=3e-4", "--set", "model.hidden=[64,32]", "--set", "optim.seed=null"], 0, "ok"),
        (["--set", "optim.epochs=0"], 2, "optim.epochs: must be > 0 (got 0) (line "),
        (["--set", "optim.nope=1"], 2, "optim.nope: unknown field"),
        (["--set", "name.x=1"], 2, "--set: name: is not a section, cannot set name.x=1"),
        (["--set", "optim.lr"], 2, "--set: optim.lr: expected the form a.b.c=value"),
        (["--set", SET_BOMB], 2, "--set: model.hidden: value: YAML aliases expand"),
    ],
    ids=["yaml-values", "absurd", "unknown", "not-a-section", "no-equals", "bomb"],
)
def test_cli_validate_set(args, code, expected):
    spec = JOBS / "mnist-vae.yaml"
    result = cli("validate", spec, *args)
    assert result.exit_code == code, result.output
    assert len(result.output.splitlines()) == 1
    assert expected in result.output


# The real executable, end to end: exit code 2 and no traceback on stderr.
SUBPROCESS_BAD = [
    ("python-tag", "name: !!python/object:os.system {}\n", "could not determine a constructor"),
    ("bomb", BOMB, "YAML aliases expand to more than"),
    ("empty", "", "spec is empty"),
    ("list", "- 1\n", "got a list"),
    ("kind-list", "kind: [sweep]\n", "kind: must be one of 'train', 'sweep', 'encode-dataset'"),
    ("absurd", "resources:\n  num_workers: -1\n", "resources.num_workers: must be > 0 (got -1) (line 2)"),
]


@pytest.mark.parametrize("text, expected", [c[1:] for c in SUBPROCESS_BAD], ids=[c[0] for c in SUBPROCESS_BAD])
def test_vae_executable_validate_fails_cleanly(tmp_path, text, expected):
    path = write(tmp_path, text)
    start = time.perf_counter()
    proc = vae_subprocess("validate", path, tmp_path / "missing.yaml")
    assert time.perf_counter() - start < 15
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith(f"{path}: ") and expected in lines[0]
    assert lines[1] == f"{tmp_path / 'missing.yaml'}: file not found"


def test_vae_executable_validate_ok_and_set():
    train_files = [p for p in JOB_FILES if "sweep" not in p.name]
    proc = vae_subprocess("validate", *train_files, "--set", "optim.lr=3e-4")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count(": ok") == len(train_files)
    # A sweep's base training fields sit under train.
    sweeps = [p for p in JOB_FILES if "sweep" in p.name]
    proc = vae_subprocess("validate", *sweeps, "--set", "train.optim.lr=3e-4")
    assert proc.returncode == 0 and proc.stderr.count(": ok") == len(sweeps), proc.stderr


def test_vae_executable_set_on_non_section_fails_cleanly():
    proc = vae_subprocess("validate", JOBS / "mnist-vae.yaml", "--set", "optim.lr.x=1")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip() == "--set: optim.lr: is not a section, cannot set optim.lr.x=1"


# ---------------------------------------------------------------------------------------------
# the `vae schema` command and the committed schema file


@pytest.fixture(scope="module")
def schema_text() -> str:
    result = CliRunner().invoke(app, ["schema"])
    assert result.exit_code == 0, result.output
    return result.stdout


def test_schema_is_json_with_metadata(schema_text):
    schema = json.loads(schema_text)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["title"] == "vae-service job spec"
    assert {ref["$ref"] for ref in schema["anyOf"]} == {"#/$defs/TrainSpec", "#/$defs/SweepSpec", "#/$defs/EncodeDatasetSpec"}
    train, sweep = schema["$defs"]["TrainSpec"], schema["$defs"]["SweepSpec"]
    assert train["additionalProperties"] is False and sweep["additionalProperties"] is False
    assert {"data", "model", "objective", "optim", "resources", "storage", "tracking"} <= set(train["properties"])
    assert {"train", "sweep"} <= set(sweep["properties"])
    assert schema == spec_json_schema()


def test_schema_is_a_valid_json_schema(schema_text):
    import jsonschema
    jsonschema.Draft202012Validator.check_schema(json.loads(schema_text))


def test_committed_schema_matches_vae_schema(schema_text):
    committed = SCHEMA_FILE.read_text(encoding="utf-8")
    assert committed == schema_text, "jobs/job-spec.schema.json is stale: run `vae schema > jobs/job-spec.schema.json`"


def test_executable_schema_matches_committed_file():
    proc = vae_subprocess("schema")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == SCHEMA_FILE.read_text(encoding="utf-8")


@pytest.mark.parametrize("path", JOB_FILES, ids=lambda p: p.name)
def test_job_files_satisfy_the_json_schema(path):
    import jsonschema
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator(schema).validate(yaml.safe_load(path.read_text(encoding="utf-8")))


@pytest.mark.parametrize(
    "bad",
    [{"model": {"latent_dim": 0}}, {"optim": {"lr": 0}}, {"modle": {}}, {"objective": {"beta": -1}}],
    ids=["latent_dim", "lr", "unknown", "beta"],
)
def test_json_schema_rejects_what_validate_rejects(bad):
    import jsonschema
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    assert not jsonschema.Draft202012Validator(schema).is_valid(bad)
    with pytest.raises(SpecError):
        validate_data(bad)


@pytest.mark.parametrize("assignment, field", [
    ("resources.cpus_per_worker=.inf", "resources.cpus_per_worker"),
    ("optim.lr=.inf", "optim.lr"),
    ("objective.beta=.nan", "objective.beta"),
    ("objective.capacity={max_nats: .inf}", "objective.capacity.max_nats"),
    ("data.val_fraction=-.inf", "data.val_fraction"),
])
def test_no_spec_float_may_be_infinite_or_nan(tmp_path, assignment, field):
    spec = tmp_path / "spec.yaml"
    spec.write_text("kind: train\n")
    result = CliRunner().invoke(app, ["validate", str(spec), "--set", assignment])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert field in result.output, result.output


@pytest.mark.parametrize("text", [
    "kind: train\nmodel:\n" + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(600)) + "  " * 601 + "x: 1\n",  # block
    "kind: train\nmodel: " + "[" * 600 + "]" * 600 + "\n",  # flow
    '{"kind": "train", "model": ' + '{"a": ' * 600 + "1" + "}" * 600 + "}",  # JSON
    "kind: train\nmodel: " + "[" * 40 + "]" * 40 + "\n",  # deeper than the limit, not than Python
])
def test_deep_nesting_is_a_spec_error_not_a_traceback(tmp_path, text):
    """Issue 12, defect 4: 500+ levels used to end in a RecursionError (exit 1, HTTP 500)."""
    spec = tmp_path / "deep.yaml"
    spec.write_text(text)
    result = CliRunner().invoke(app, ["validate", str(spec)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "nested more than 32 levels deep" in result.output, result.output
    with pytest.raises(SpecError, match="nested more than 32 levels"):
        load_spec_text(text)


def test_deep_nesting_in_a_set_value_is_refused(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("kind: train\n")
    result = CliRunner().invoke(app, ["validate", str(spec), "--set", "model.hidden=" + "[" * 700 + "]" * 700])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "model.hidden" in result.output and "nested more than 32 levels deep" in result.output

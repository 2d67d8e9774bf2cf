"""The layers' import rules (docs/ARCHITECTURE.md), checked on the source: every `import` and
`from … import`, at any depth (imports inside functions count), of every module in vae_service.

Dependencies point down. `core` and `viz` are plain PyTorch / numpy / matplotlib: a notebook can
use them without Ray, MLflow, a web framework, a database driver or an S3 client.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vae_service"

# What each part of vae_service may import from vae_service (itself always).
ALLOWED = {
    "core": set(),
    "viz": {"core"},
    "storage": {"core"},
    "cluster": {"core"},
    "environment": {"core", "storage"},
    "sources": {"core", "storage", "environment"},
    "tracking": {"core", "viz", "storage", "environment"},
    "training": {"core", "tracking", "sources", "storage", "cluster", "environment"},
    "sweeps": {"core", "training", "tracking", "sources", "storage", "cluster", "environment"},
    "jobs": {"core", "viz", "tracking", "training", "sweeps", "sources", "storage", "cluster", "environment"},
    "queue": {"core", "jobs", "tracking", "storage", "environment"},
    "cli": {"core", "viz", "tracking", "training", "sweeps", "jobs", "queue", "sources", "storage", "cluster", "environment"},
}
# Which parts may import each service library: one adapter per library (docs/ARCHITECTURE.md).
LIBRARY_HOMES = {
    "ray.train": {"training"},
    "ray.data": {"sources"},
    "ray.tune": {"sweeps"},
    "optuna": {"sweeps"},
    "mlflow": {"tracking"},
    "sqlalchemy": {"queue"},
    "alembic": {"queue"},
    "fastapi": {"queue"},
    "starlette": {"queue"},
    "uvicorn": {"queue", "cli"},  # `vae server` runs the queue's app
    "boto3": set(),  # S3 goes through pyarrow.fs (storage.py)
    "botocore": set(),
    "pyarrow": {"storage", "sources"},
    "ray.job_submission": set(),  # Ray's Jobs API through its REST endpoints (queue/ray_jobs.py), not this client
}
HEAVY = ("ray", "mlflow", "fastapi", "starlette", "uvicorn", "sqlalchemy", "alembic", "boto3", "botocore", "pyarrow")
PURE = ("core", "viz")  # import none of HEAVY


def part(module: str) -> str:
    """vae_service.jobs.train → jobs; vae_service.storage → storage."""
    return module.split(".")[1] if module.count(".") >= 1 else ""


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(relative.parts)
        if parts[-1] == "__init__":
            parts.pop()
        if "migrations" in parts:  # Alembic's own scripts
            continue
        found[".".join(parts)] = path
    return found


def imports(module: str, path: Path) -> set[str]:
    """Absolute names of everything the module imports (relative imports resolved)."""
    names = set()
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return names


MODULES = modules()


def test_every_module_belongs_to_a_known_part():
    unknown = sorted(m for m in MODULES if m != "vae_service" and part(m) not in ALLOWED)
    assert not unknown, f"add these to ALLOWED (and docs/ARCHITECTURE.md): {unknown}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != "vae_service"))
def test_dependencies_point_down(module):
    own = part(module)
    wrong = sorted(
        name for name in imports(module, MODULES[module])
        if name.startswith("vae_service.") and name in MODULES and part(name) not in ALLOWED[own] | {own}
    )
    assert not wrong, f"{module} ({own}) imports {wrong}; {own} may import {sorted(ALLOWED[own])}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if part(m) in PURE))
def test_core_and_viz_import_no_service_library(module):
    heavy = sorted(name for name in imports(module, MODULES[module]) if name.split(".")[0] in HEAVY)
    assert not heavy, f"{module} imports {heavy}"


def library_of(name: str) -> str | None:
    """ray.train.torch → ray.train; mlflow.entities → mlflow; numpy → None (no rule)."""
    return next((lib for lib in LIBRARY_HOMES if name == lib or name.startswith(lib + ".")), None)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != "vae_service"))
def test_each_service_library_is_imported_by_its_own_layer_only(module):
    own = part(module)
    wrong = sorted(name for name in imports(module, MODULES[module])
                   if library_of(name) is not None and own not in LIBRARY_HOMES[library_of(name)])
    assert not wrong, f"{module} ({own}) imports {wrong}: " + "; ".join(
        f"{library_of(n)} belongs to {sorted(LIBRARY_HOMES[library_of(n)]) or 'no layer'}" for n in wrong)


def test_nothing_outside_the_cli_imports_it():
    importers = sorted(m for m in MODULES if part(m) != "cli"
                       and any(name.startswith("vae_service.cli") for name in imports(m, MODULES[m])))
    assert not importers


def test_the_rules_catch_an_upward_import(tmp_path):
    """The checker itself: a tracking module that imports training is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from vae_service.training.runner import fit\n")
    assert "vae_service.training.runner" in imports("vae_service.tracking.bad", bad)
    assert part("vae_service.training.runner") not in ALLOWED["tracking"]


def test_the_library_rule_catches_a_layer_using_another_layers_library(tmp_path):
    """The checker itself: the queue searching MLflow, or storage building a Ray Train checkpoint."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from mlflow.entities import ViewType\n    import ray.train.torch\n")
    found = imports("vae_service.queue.bad", bad)
    assert {library_of(n) for n in found} >= {"mlflow", "ray.train"}
    assert "queue" not in LIBRARY_HOMES["mlflow"] and "storage" not in LIBRARY_HOMES["ray.train"]


def test_importing_core_and_viz_loads_no_service_library():
    """At run time too (an import hidden behind a helper module would show here)."""
    pure = [m for m in MODULES if part(m) in PURE]
    code = "import sys\n" + "".join(f"import {m}\n" for m in pure) + (
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


QUICK_COMMANDS = [["--help"], ["validate", "jobs/mnist-vae.yaml"], ["jobs"], ["status", "0123456789abcdef"]]


@pytest.mark.parametrize("argv", QUICK_COMMANDS, ids=lambda argv: argv[0])
def test_the_quick_commands_load_no_service_library(argv):
    """`vae --help`, `validate`, `jobs` and `status` answer in well under a second because they
    import none of torch, Ray, MLflow, pyarrow, numpy… (each costs 0.1–3 s). The queue commands
    here meet no API (nothing listens on port 9): the imports are the same."""
    slow = (*HEAVY, "torch", "numpy", "pandas", "matplotlib")
    code = ("import sys\nfrom vae_service.cli import main\nsys.argv = ['vae', *sys.argv[1:]]\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({slow!r})), file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=PACKAGE.parent,
                          env={**os.environ, "VAE_API_URL": "http://127.0.0.1:9"})
    assert done.stderr.strip().splitlines()[-1] == "[]", done.stderr

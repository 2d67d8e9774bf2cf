"""`--tiny` and `--output`, shared by every bench/*.py (a helper, not a bench).

A tiny run is CI's smoke run of a bench (tests/test_benches.py): every part the bench measures,
through the same code, at the smallest sizes that still exercise it, so a broken part fails
instead of going unnoticed until the next real run. Its numbers mean nothing: it never writes
bench/results/ (nor docs/); its JSON goes to --output, by default a new temporary directory.
Options given explicitly still override the tiny sizes.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
RESULTS_DIR = BENCH / "results"


def add_arguments(parser: argparse.ArgumentParser, results: Path, tiny: dict) -> None:
    """--tiny (which sets the options in `tiny` unless they are given) and --output."""
    sizes = " ".join(f"--{key.replace('_', '-')} {value}" for key, value in tiny.items())
    parser.add_argument("--tiny", action="store_true",
                        help=f"CI's smoke run: every part, smallest sizes ({sizes}); writes its JSON to --output "
                             "(default: a new temporary directory), never to bench/results/.")
    parser.add_argument("--output", type=Path, default=None,
                        help=f"The JSON results (default: {results.relative_to(BENCH.parent)}; with --tiny, a temporary file).")


def parse_args(parser: argparse.ArgumentParser, results: Path, tiny: dict, argv: list[str] | None = None) -> argparse.Namespace:
    """The arguments, with the tiny sizes as defaults under --tiny and `output` resolved: a tiny
    run refuses an --output under bench/results/ (the committed results)."""
    add_arguments(parser, results, tiny)
    argv = sys.argv[1:] if argv is None else argv
    known, _ = parser.parse_known_args(argv)
    if known.tiny:
        parser.set_defaults(**tiny)
    args = parser.parse_args(argv)
    if args.output is None:
        args.output = Path(tempfile.mkdtemp(prefix="vae-bench-tiny-")) / results.name if args.tiny else results
    elif args.tiny and args.output.resolve().is_relative_to(RESULTS_DIR):
        parser.error("--tiny: --output must not be under bench/results/ (a tiny run's numbers are not results)")
    return args


def shown(path: Path) -> str:
    """`path` relative to the repository when it is inside it."""
    path = path.resolve()
    return str(path.relative_to(BENCH.parent)) if path.is_relative_to(BENCH.parent) else str(path)


def start_shared_ray(num_cpus: int = 2, object_store_mb: int | None = None) -> None:
    """One Ray for every run a tiny bench starts (each would otherwise start a local Ray of its
    own); it ends with this process. The runs join it through RAY_ADDRESS, set here beside the
    token settings that Ray's start put in this process's environment (the runs inherit both)."""
    import ray

    ray.init(num_cpus=num_cpus, object_store_memory=object_store_mb << 20 if object_store_mb else None,
             include_dashboard=False, log_to_driver=False, configure_logging=False)
    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address

"""Sweep efficiency: an exhaustive grid vs Optuna (TPE) + ASHA over the same β × latent-dimension
values, same base spec, same seed, in one run.

    python bench/sweep_efficiency.py [--epochs 4] [--samples 8] [--limit 12000] [--betas 0.25,0.5,1,2] [--latent-dims 4,8,16]
    python bench/sweep_efficiency.py --tiny [--output PATH]

Both sweeps run through `vae_service.jobs.execute` (Ray Tune over Ray Train trials) on one local Ray. The
budget is counted in trial-epochs (epochs actually trained, summed over trials: what ASHA
saves), alongside wall time. Prints a table and writes bench/results/sweep_efficiency.json.
Target: Optuna + ASHA uses <= 40 % of the grid's trial-epochs and finds a best validation
−ELBO within 1 % of the grid's.

--tiny (CI's smoke run, tests/test_benches.py): both sweeps, over a 2-point space (β 0.5, 1 ×
latent dim 4), 2 Optuna trials, 2 epochs on 512 images; the JSON goes to --output (default: a
temporary directory), never to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "sweep_efficiency.json"
BETAS = [0.25, 0.5, 1.0, 2.0]
LATENT_DIMS = [4, 8, 16]
TINY = {"epochs": 2, "samples": 2, "limit": 512, "betas": "0.5,1", "latent_dims": "4"}
sys.path.insert(0, str(REPO / "bench"))
import _tiny  # noqa: E402


def sweep_spec(kind: str, epochs: int, samples: int, limit: int, storage: str, betas: list[float] = BETAS,
               latent_dims: list[int] = LATENT_DIMS):
    from vae_service.core.spec_loading import validate_data

    if kind == "grid":
        space = {"objective.beta": {"grid": betas}, "model.latent_dim": {"grid": latent_dims}}
        search = {"scheduler": {"kind": "none"}}
    else:
        space = {"objective.beta": {"choice": betas}, "model.latent_dim": {"choice": latent_dims}}
        search = {"num_samples": samples, "sampler": "tpe", "scheduler": {"kind": "asha", "grace_period": 1, "reduction_factor": 2}}
    return validate_data({
        "kind": "sweep",
        "name": f"bench-{kind}",
        "train": {
            "data": {"limit": limit},
            "model": {"hidden": [256]},
            "optim": {"epochs": epochs, "batch_size": 128, "lr": 2e-3, "seed": 0},
            "storage": {"uri": storage, "keep_checkpoints": 1},
            "tracking": {"experiment": f"bench-{kind}", "figures": False},  # ~3 s at each trial's end, not measured
        },
        "sweep": {"space": space, "objectives": ["val_neg_elbo"], "max_concurrent": 2, "seed": 0, **search},
    })


def measure(kind: str, epochs: int, samples: int, limit: int, storage: str, betas: list[float] = BETAS,
            latent_dims: list[int] = LATENT_DIMS) -> dict:
    from vae_service.jobs.execute import execute
    from vae_service.jobs.reporter import Reporter

    started = time.perf_counter()
    outcome = execute(sweep_spec(kind, epochs, samples, limit, storage, betas, latent_dims), reporter=Reporter.quiet())
    if outcome.error:
        sys.exit(str(outcome.error))
    result = outcome.result
    wall = time.perf_counter() - started
    finished = [t for t in result.trials if t.state == "finished"]
    best = min(finished, key=lambda t: t.metrics["val_neg_elbo"])
    return {
        "kind": kind,
        "trials": len(result.trials),
        "trial_epochs": sum(t.epochs for t in result.trials),
        "finished": len(finished),
        "stopped_early": sum(t.state == "stopped" for t in result.trials),
        "best_val_neg_elbo": best.metrics["val_neg_elbo"],
        "best_params": best.params,
        "wall_s": wall,
        "per_trial": [{"params": t.params, "state": t.state, "epochs": t.epochs, "val_neg_elbo": t.metrics.get("val_neg_elbo")} for t in result.trials],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--samples", type=int, default=8, help="Trials Optuna proposes (the grid has 12).")
    parser.add_argument("--limit", type=int, default=12000, help="MNIST training images used.")
    parser.add_argument("--betas", type=lambda s: [float(v) for v in s.split(",")], default=BETAS, help="The β values searched.")
    parser.add_argument("--latent-dims", type=lambda s: [int(v) for v in s.split(",")], default=LATENT_DIMS,
                        help="The latent dimensions searched.")
    args = _tiny.parse_args(parser, RESULTS, TINY)

    scratch = Path(tempfile.mkdtemp(prefix="vae-bench-sweep-"))
    # A throw-away MLflow store and run directory: the benchmark leaves nothing in the repo.
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{scratch}/mlflow.db"
    import ray

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False)
    runs = {}
    for kind in ("grid", "asha"):
        runs[kind] = measure(kind, args.epochs, args.samples, args.limit, str(scratch / "runs"), args.betas, args.latent_dims)
        print(f"  {kind}: {runs[kind]['trial_epochs']} trial-epochs, best {runs[kind]['best_val_neg_elbo']:.2f}", file=sys.stderr)
    ray.shutdown()

    grid, asha = runs["grid"], runs["asha"]
    epochs_ratio = asha["trial_epochs"] / grid["trial_epochs"]
    gap = (asha["best_val_neg_elbo"] - grid["best_val_neg_elbo"]) / grid["best_val_neg_elbo"]
    print(f"\n{'search':<22}{'trials':>8}{'trial-epochs':>14}{'stopped':>9}{'best val −ELBO':>16}{'wall s':>9}")
    for label, run in (("exhaustive grid", grid), ("Optuna TPE + ASHA", asha)):
        print(f"{label:<22}{run['trials']:>8}{run['trial_epochs']:>14}{run['stopped_early']:>9}"
              f"{run['best_val_neg_elbo']:>16.2f}{run['wall_s']:>9.0f}")
    print(f"\nOptuna + ASHA: {epochs_ratio:.0%} of the grid's trial-epochs, best {gap:+.2%} vs the grid's best "
          f"(target <= 40 %, within 1 %)")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({
        "benchmark": "sweep_efficiency",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "tiny": args.tiny,
        "setup": {"space": {"objective.beta": args.betas, "model.latent_dim": args.latent_dims}, "epochs": args.epochs,
                  "optuna_trials": args.samples, "data_limit": args.limit, "model": "MLP 784-256-d VAE",
                  "asha": {"grace_period": 1, "reduction_factor": 2}, "max_concurrent": 2, "seed": 0},
        "target": "Optuna + ASHA <= 40% of the grid's trial-epochs, best val -ELBO within 1%",
        "trial_epochs_ratio": epochs_ratio,
        "best_gap": gap,
        "met": epochs_ratio <= 0.40 and gap <= 0.01,
        "results": runs,
    }, indent=2, default=str))
    print(f"wrote {_tiny.shown(args.output)}")


if __name__ == "__main__":
    main()

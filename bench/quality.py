"""Where our models stand against the papers' tables: MNIST importance-sampled NLL, dSprites
disentanglement for β ∈ {1, 4, 8} × seeds, and the article's figures.

    python bench/quality.py [--iwae-epochs 30] [--default-epochs 10] [--nll-samples 5000]
                            [--nll-images 10000] [--dsprites-steps 3000] [--betas 1,4,8]
                            [--seeds 0,1,2] [--points 3000] [--dci-points 1000] [--only SECTION]
    python bench/quality.py --tiny [--output PATH]

Training is the service's own arithmetic (core.loop.train_epoch, core.objective.compute_loss)
in one plain PyTorch process, without Ray: the point is the numbers, not the plumbing. Each
section's result is saved to bench/results/quality.json as soon as it is done (rerun one with
--only); docs/RESULTS.md and its figures (docs/figures/) are written from that file.

  iwae      the IWAE paper's one-stochastic-layer VAE (784-200-200-50, dynamic binarisation,
            batch 20, Adam 1e-3; Burda et al. 2015, Table 1: 86.76 nats after 3,280 epochs),
            for --iwae-epochs epochs; IS-NLL with K = --nll-samples
  default   jobs/mnist-vae.yaml with dynamic binarisation, its 10 epochs; same IS-NLL
  dsprites  the β-VAE of jobs/dsprites-vae.yaml for --dsprites-steps steps of batch 64 on the
            dSprites grid (a re-rendering, see core/dsprites.py), per β and seed: MIG, FactorVAE
            score, DCI disentanglement
  figures   the article's pictures: latent scatter AE vs KL-only vs VAE, the 2-D manifold,
            inspecting latent dimensions, traversals on dSprites labelled by factor

--tiny (CI's smoke run, tests/test_benches.py): every section and the report, at the smallest
sizes (512 MNIST training images, 1 epoch, K = 8 on 64 test images, 5 dSprites steps for one β
and seed, images rendered on demand instead of the cached grid, 300 / 100 metric points); the
JSON goes to --output (default: a temporary directory), the report and figures beside it
(<output>.md, figures/): never bench/results/ nor docs/.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "quality.json"
REPORT = REPO / "docs" / "RESULTS.md"
FIGURES = REPO / "docs" / "figures"
sys.path.insert(0, str(REPO))
os.environ.setdefault("VAE_DATA_DIR", str(REPO.parent / "shared" / "data"))  # MNIST, as the tests find it

from vae_service.core import disentanglement, from_spec  # noqa: E402
from vae_service.core import metrics as M  # noqa: E402
from vae_service.core.data import load_mnist, to_unit_float  # noqa: E402
from vae_service.core.dsprites import FACTOR_NAMES, DSprites  # noqa: E402
from vae_service.core.evaluation import evaluate, posterior_means  # noqa: E402
from vae_service.core.likelihood import evaluate_likelihood  # noqa: E402
from vae_service.core.loop import train_epoch  # noqa: E402
from vae_service.core.model import VAE, ModelConfig  # noqa: E402
from vae_service.core.objective import Objective, compute_loss  # noqa: E402
from vae_service.core.spec_loading import load_spec  # noqa: E402
from vae_service.viz import figures  # noqa: E402
from vae_service.viz.canvas import save_png  # noqa: E402
from vae_service.viz.comparison import scatter_figure  # noqa: E402
from vae_service.viz.latents import encode_means  # noqa: E402

TINY = {"iwae_epochs": 1, "default_epochs": 1, "nll_samples": 8, "nll_images": 64, "dsprites_steps": 5, "betas": "4",
        "seeds": "0", "points": 300, "dci_points": 100, "figure_epochs": 1, "train_images": 512}
sys.path.insert(0, str(REPO / "bench"))
import _tiny  # noqa: E402

IWAE_PAPER_NLL = 86.76  # Burda et al. (2015), Table 1: VAE, 1 stochastic layer, k = 1, MNIST
IWAE_PAPER_EPOCHS = 3280
# β-VAE on dSprites in Locatello et al. (2019), Figure 13 / disentanglement_lib's 300k steps:
# the spread over β ∈ {1, 2, 4, 6, 8, 16} and 50 seeds, as read off the published box plots.
PUBLISHED_BETA_VAE = {M.MIG: "≈ 0.05–0.35", M.FACTORVAE: "≈ 0.55–0.85", M.DCI: "≈ 0.05–0.45"}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------------------------------------
# MNIST: IS-NLL


def train_mnist(config: ModelConfig, *, epochs: int, batch_size: int, lr: float, seed: int = 0,
                limit: int = 0) -> tuple[VAE, float]:
    """A VAE on all 60,000 MNIST training images (the first `limit`, when given; dynamic
    binarisation); returns it and the seconds."""
    data = load_mnist(None, download=False, val_fraction=0.0, limit=limit or None)
    torch.manual_seed(seed)
    vae = VAE(config)
    optimizer = torch.optim.Adam(vae.parameters(), lr=lr)
    started = time.perf_counter()
    for epoch in range(epochs):
        order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        stats = train_epoch(vae, optimizer, data.train.images, order, batch_size, Objective(), epoch, binarize="dynamic")
        log(f"  epoch {epoch + 1}/{epochs}: train −ELBO {stats.as_metrics()[M.TRAIN_NEG_ELBO]:.2f}")
    return vae.eval(), time.perf_counter() - started


def mnist_nll(name: str, config: ModelConfig, *, epochs: int, batch_size: int, lr: float, k: int, images: int,
              limit: int = 0) -> dict:
    log(f"{name}: training {epochs} epochs")
    vae, train_s = train_mnist(config, epochs=epochs, batch_size=batch_size, lr=lr, limit=limit)
    test = load_mnist(None, download=False, val_fraction=0.0).test.images[:images]
    log(f"{name}: IS-NLL with K = {k} on {len(test)} test images")
    report = evaluate_likelihood(vae, test, binarize="dynamic", k=k, seed=0)
    return {"architecture": _describe(config), "epochs": epochs, "batch_size": batch_size, "lr": lr,
            "train_images": limit or 60_000, "train_seconds": round(train_s, 1), **report.to_dict()}


def _describe(config: ModelConfig) -> str:
    if config.arch == "mlp":
        return "-".join(map(str, [math.prod(config.image_shape), *config.hidden, config.latent_dim]))
    return f"conv {'-'.join(map(str, config.channels))} k{config.kernel_size}, latent {config.latent_dim}"


def section_iwae(args) -> dict:
    config = ModelConfig(hidden=(200, 200), latent_dim=50)
    return mnist_nll("iwae", config, epochs=args.iwae_epochs, batch_size=20, lr=1e-3, k=args.nll_samples, images=args.nll_images,
                     limit=args.train_images)


def section_default(args) -> dict:
    spec = load_spec(REPO / "jobs" / "mnist-vae.yaml", ["data.binarize=dynamic"])
    config = from_spec.model_config(spec, (1, 28, 28))
    o = spec.optim
    return mnist_nll("default", config, epochs=args.default_epochs or o.epochs, batch_size=o.batch_size, lr=o.lr,
                     k=args.nll_samples, images=args.nll_images, limit=args.train_images)


# ---------------------------------------------------------------------------------------------
# dSprites: disentanglement


def dsprites_config() -> tuple[ModelConfig, dict]:
    spec = load_spec(REPO / "jobs" / "dsprites-vae.yaml", [])
    return from_spec.model_config(spec, (1, 64, 64)), {"batch_size": spec.optim.batch_size, "lr": spec.optim.lr}


def train_dsprites(data: DSprites, beta: float, seed: int, steps: int) -> tuple[VAE, float]:
    """`steps` Adam steps on batches drawn uniformly from the whole grid (as disentanglement_lib)."""
    config, optim = dsprites_config()
    torch.manual_seed(seed)
    vae = VAE(config)
    optimizer = torch.optim.Adam(vae.parameters(), lr=optim["lr"])
    rng = np.random.default_rng(seed)
    objective = Objective(beta=beta)
    started = time.perf_counter()
    for step in range(steps):
        x = to_unit_float(data.observations(data.sample_factors(optim["batch_size"], rng)))
        terms = compute_loss(vae, x, objective)
        optimizer.zero_grad(set_to_none=True)
        terms.loss.backward()
        optimizer.step()
        if (step + 1) % 500 == 0:
            log(f"  β={beta} seed {seed}: step {step + 1}/{steps}, −ELBO {float(terms.neg_elbo.mean()):.1f}")
    return vae.eval(), time.perf_counter() - started


def section_dsprites(args) -> dict:
    if args.tiny:  # a few hundred images: rendered on demand, not the whole grid rendered and cached (377 MB)
        data = DSprites()
    else:
        data = DSprites.from_grid(progress=lambda done, total: done % 65536 == 0 and log(f"  rendering the grid: {done:,}/{total:,}"))
    runs = []
    for beta in args.betas:
        for seed in args.seeds:
            log(f"dsprites: β={beta} seed {seed}, {args.dsprites_steps} steps")
            vae, train_s = train_dsprites(data, beta, seed, args.dsprites_steps)
            scores = evaluate(vae, [M.MIG, M.FACTORVAE], test_images=torch.empty(0), binarize="none", factors=data,
                              points=args.points, seed=seed)
            represent, rng = posterior_means(vae), np.random.default_rng(seed)
            dci = disentanglement.dci(data, represent, rng, num_train=args.dci_points, num_test=args.dci_points // 2)
            held_out = to_unit_float(data.observations(data.sample_factors(2000, np.random.default_rng(99))))
            with torch.no_grad():
                terms = compute_loss(vae, held_out, Objective())
            runs.append({"beta": beta, "seed": seed, "steps": args.dsprites_steps, "train_seconds": round(train_s, 1),
                         "neg_elbo": float(terms.neg_elbo.mean()), "kl": float(terms.kl.mean()),
                         M.MIG: scores[M.MIG], M.FACTORVAE: scores[M.FACTORVAE],
                         "factorvae_active_dims": scores["factorvae_active_dims"],
                         M.DCI: dci[disentanglement.DCI_DISENTANGLEMENT],
                         "dci_informativeness": dci[disentanglement.DCI_INFORMATIVENESS_TEST]})
            log(f"  MIG {runs[-1][M.MIG]:.3f}  FactorVAE {runs[-1][M.FACTORVAE]:.3f}  DCI {runs[-1][M.DCI]:.3f}")
            if beta == max(args.betas) and seed == args.seeds[0]:
                traversals = factor_traversals(vae, data, seed, args.points if args.tiny else 5000)
                save_png(traversals, args.figures / "dsprites_traversals.png")
    return {"points": args.points, "dci_points": args.dci_points, "runs": runs}


def factor_traversals(vae: VAE, data: DSprites, seed: int, points: int = 5000):
    """Traversals of the dimensions of largest KL, each row named by the factor it shares the
    most information with (MIG's mutual information between the discretised code and a factor,
    on `points` codes)."""
    rng = np.random.default_rng(seed)
    codes, factors = disentanglement.sample_codes(data, posterior_means(vae), points, rng)
    info = disentanglement.mutual_info(disentanglement.discretize(codes, 20), factors)  # (dims, factors)
    with torch.no_grad():
        kl_per_dim = compute_loss(vae, to_unit_float(data.observations(factors[:1000])), Objective()).kl_dims.mean(dim=0)
    image = data.observations(np.array([[2, 5, 0, 16, 16]]))[0]  # a big heart in the middle
    return figures.latent_traversals(vae, image, kl_per_dim=kl_per_dim, max_dims=6,
                                     row_labels={j: FACTOR_NAMES[int(np.argmax(info[j]))] for j in range(codes.shape[1])})


# ---------------------------------------------------------------------------------------------
# the article's figures (MNIST, 2-D latents)


def section_figures(args) -> dict:
    test = load_mnist(None, download=False, val_fraction=0.0).test
    models = {}
    for kind in ("ae", "kl_only", "vae"):
        log(f"figures: 2-D {kind}, {args.figure_epochs} epochs")
        models[kind] = train_2d(kind, args.figure_epochs, args.train_images)
    images, labels = test.images[:5000], test.labels[:5000]
    codes = {kind: encode_means(vae, images)[0] for kind, vae in models.items()}
    made = {
        "latent_scatter_ae_klonly_vae.png": scatter_figure(codes, labels),
        "latent_manifold.png": figures.latent_manifold(models["vae"]),
        "latent_dimensions.png": figures.latent_dimensions(models["vae"], images[:8]),
    }
    for name, fig in made.items():
        save_png(fig, args.figures / name)
    return {"epochs": args.figure_epochs, "files": sorted(made) + ["dsprites_traversals.png"]}


def train_2d(kind: str, epochs: int, limit: int = 0) -> VAE:
    data = load_mnist(None, download=False, val_fraction=0.0, limit=limit or None)
    torch.manual_seed(0)
    vae = VAE(ModelConfig(hidden=(512,), latent_dim=2))
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-3)
    for epoch in range(epochs):
        order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(epoch))
        train_epoch(vae, optimizer, data.train.images, order, 128, Objective(kind=kind), epoch)
    return vae.eval()


# ---------------------------------------------------------------------------------------------
# the report


def write_report(results: dict, report: Path = REPORT) -> None:
    lines = ["# Results: where our models stand against the papers", "",
             "Written by `python bench/quality.py` from `bench/results/quality.json` "
             f"({results.get('machine', '?')}, {results.get('updated', '?')}). Every number here was measured in that run; "
             "the papers' numbers are quoted with their sources.", ""]
    lines += _report_mnist(results) + _report_dsprites(results) + _report_figures(results)
    report.write_text("\n".join(lines) + "\n")


def _report_mnist(results: dict) -> list[str]:
    rows = [(key, results[key]) for key in ("iwae", "default") if key in results]
    if not rows:
        return []
    lines = ["## MNIST: importance-sampled negative log-likelihood", "",
             "−log p(x) estimated by importance sampling (Burda et al. 2015) with K samples from q(z|x) per image, on "
             "dynamically binarised MNIST (test images binarised once, seed 0). It is a stochastic upper bound on the "
             "true NLL that tightens as K grows; the −ELBO is the K = 1 bound.", "",
             "| model | epochs | K | test images | IS-NLL (nats) | −ELBO (nats) | active units | paper |",
             "|---|---|---|---|---|---|---|---|"]
    for key, r in rows:
        paper = (f"{IWAE_PAPER_NLL} after {IWAE_PAPER_EPOCHS:,} epochs (Burda et al., Table 1, VAE k=1)"
                 if key == "iwae" else "—")
        name = (f"IWAE paper's VAE, {r['architecture']}, batch 20" if key == "iwae"
                else f"`jobs/mnist-vae.yaml` ({r['architecture']}), dynamic binarisation")
        lines.append(f"| {name} | {r['epochs']} | {r['k']:,} | {r['n_images']:,} | {r['nll']:.2f} | {r['neg_elbo']:.2f} | "
                     f"{r['active_units']} | {paper} |")
    took = ", ".join(f"{r['train_seconds']:.0f} s ({key})" for key, r in rows)
    iwae = results.get("iwae")
    full = (f" — about {IWAE_PAPER_EPOCHS * iwae['train_seconds'] / iwae['epochs'] / 3600:.0f} h of training "
            "on this machine" if iwae else "")
    lines += ["", "Differences from the paper's setup: ReLU instead of tanh hidden units, no learning-rate "
              f"schedule, and far fewer epochs than the paper's {IWAE_PAPER_EPOCHS:,}{full}; training took {took} here. "
              "The IS-NLL is well below the −ELBO of the same model, as it should be; how much of the gap to "
              f"{IWAE_PAPER_NLL} nats the remaining epochs close is not measured here.", ""]
    return lines


def _report_dsprites(results: dict) -> list[str]:
    if "dsprites" not in results:
        return []
    d = results["dsprites"]
    runs = d["runs"]
    steps = runs[0]["steps"] if runs else 0
    lines = ["## dSprites: disentanglement of β-VAE", "",
             f"The β-VAE of `jobs/dsprites-vae.yaml` (Higgins et al.'s 64×64 conv net, 10 latents, batch 64, Adam 5e-4) "
             f"trained for **{steps:,} steps** per run on the dSprites factor grid — a procedural re-rendering of the "
             "original's 737,280 images (`core/dsprites.py`), not the original pixels. disentanglement_lib trains "
             "300,000 steps; 2 CPU cores allow about 1% of that per run, so these are early-training numbers. "
             f"MIG on {d['points']:,} points (20-bin histograms), FactorVAE score on {d['points']:,} training and "
             f"{d['points'] // 2:,} evaluation votes, DCI on {d['dci_points']:,} training and {d['dci_points'] // 2:,} "
             "test points (disentanglement_lib uses 10,000 for each; DCI's gradient-boosted trees take ~11 min per "
             "model there on one core).", "",
             "| β | seed | −ELBO | KL | MIG | FactorVAE | DCI disent. | DCI inform. |", "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r['beta']:g} | {r['seed']} | {r['neg_elbo']:.1f} | {r['kl']:.1f} | {r[M.MIG]:.3f} | "
                     f"{r[M.FACTORVAE]:.3f} | {r[M.DCI]:.3f} | {r['dci_informativeness']:.3f} |")
    lines += ["", "Mean ± standard deviation over seeds, beside the spread published for β-VAE:", "",
              "| β | MIG | FactorVAE | DCI disentanglement |", "|---|---|---|---|"]
    for beta in sorted({r["beta"] for r in runs}):
        group = [r for r in runs if r["beta"] == beta]
        cells = [f"{np.mean([r[k] for r in group]):.3f} ± {np.std([r[k] for r in group]):.3f}" for k in (M.MIG, M.FACTORVAE, M.DCI)]
        lines.append(f"| {beta:g} | " + " | ".join(cells) + " |")
    lines.append("| published β-VAE (Locatello et al. 2019, 300k steps) | " + " | ".join(PUBLISHED_BETA_VAE[k] for k in (M.MIG, M.FACTORVAE, M.DCI)) + " |")
    lines += ["", "The published spreads are approximate ranges read off the box plots of Locatello et al. (2019), "
              "over β and 50 seeds, on the original pixels and after 300k steps.", ""]
    low_end = 0.05  # of the published MIG range
    if runs and all(np.mean([r[M.MIG] for r in runs if r["beta"] == b]) < low_end for b in {r["beta"] for r in runs}):
        lines += [f"At {steps:,} steps every β's mean MIG is below the published range: the models have learned "
                  "where the sprite is (see the KL) but not yet separated the factors, and a larger β has not yet "
                  "raised MIG. These numbers show the metrics working on our models at the budget two cores "
                  "allow, not a reproduction of the papers; run `bench/quality.py --dsprites-steps 300000` on a GPU "
                  "for that.", ""]
    return lines


def _report_figures(results: dict) -> list[str]:
    if "figures" not in results:
        return []
    f = results["figures"]
    return ["## The article's figures", "",
            f"Drawn by the service's own figure code (`vae_service/viz/`) from models trained for {f['epochs']} epochs here.", "",
            "**Latent space of a plain autoencoder, a KL-only model and a VAE** (2-D codes, test images coloured by digit): "
            "the autoencoder's codes are spread out with gaps, KL-only collapses onto the prior, the VAE is both "
            "compact and organised.", "", "![latent scatter](figures/latent_scatter_ae_klonly_vae.png)", "",
            "**The 2-D manifold**: decoder means over a grid of latent quantiles.", "", "![manifold](figures/latent_manifold.png)", "",
            "**Inspecting latent dimensions**: μ ± σ of q(z|x) per dimension for eight test images; the grey band is the prior.", "",
            "![latent dimensions](figures/latent_dimensions.png)", "",
            "**Traversals on dSprites by factor** (β-VAE, largest β, first seed): each row varies one latent dimension; "
            "its label is the factor it shares the most information with.", "", "![dSprites traversals](figures/dsprites_traversals.png)", ""]


# ---------------------------------------------------------------------------------------------

SECTIONS = {"iwae": section_iwae, "default": section_default, "dsprites": section_dsprites, "figures": section_figures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iwae-epochs", type=int, default=30)
    parser.add_argument("--default-epochs", type=int, default=0, help="0: the spec's own (10)")
    parser.add_argument("--nll-samples", type=int, default=5000)
    parser.add_argument("--nll-images", type=int, default=10_000)
    parser.add_argument("--dsprites-steps", type=int, default=3000)
    parser.add_argument("--betas", type=lambda s: [float(v) for v in s.split(",")], default=[1.0, 4.0, 8.0])
    parser.add_argument("--seeds", type=lambda s: [int(v) for v in s.split(",")], default=[0, 1, 2])
    parser.add_argument("--points", type=int, default=3000)
    parser.add_argument("--dci-points", type=int, default=1000)
    parser.add_argument("--figure-epochs", type=int, default=10)
    parser.add_argument("--only", choices=sorted(SECTIONS), action="append", help="Run only these sections (repeatable).")
    parser.add_argument("--report-only", action="store_true", help="Rewrite docs/RESULTS.md from quality.json.")
    parser.add_argument("--train-images", type=int, default=0,
                        help="MNIST training images of the iwae, default and figures models (0: all 60,000).")
    args = _tiny.parse_args(parser, RESULTS, TINY)
    # A tiny run's report and figures go beside its JSON, never to docs/.
    args.report = args.output.with_suffix(".md") if args.tiny else REPORT
    args.figures = args.output.parent / "figures" if args.tiny else FIGURES
    torch.set_num_threads(max(1, torch.get_num_threads()))
    args.figures.mkdir(parents=True, exist_ok=True)
    results = json.loads(args.output.read_text()) if args.output.exists() else {}
    if not args.report_only:
        for name in args.only or list(SECTIONS):
            started = time.perf_counter()
            results[name] = SECTIONS[name](args)
            results[name]["section_seconds"] = round(time.perf_counter() - started, 1)
            results.update(machine=f"{os.cpu_count()} CPU cores, {torch.get_num_threads()} threads, torch {torch.__version__}, "
                           f"{'CUDA' if torch.cuda.is_available() else 'CPU only'}",
                           updated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), tiny=args.tiny)
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(json.dumps(results, indent=2) + "\n")  # after each section: nothing lost on a crash
            log(f"{name} done in {results[name]['section_seconds']:.0f} s")
    write_report(results, args.report)
    print(args.report.read_text())
    log(f"wrote {_tiny.shown(args.output)} and {_tiny.shown(args.report)}")


if __name__ == "__main__":
    main()

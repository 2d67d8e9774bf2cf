"""One prepared GPU check: the core's training throughput against the device's roofline, and the
two papers' models trained for as much of their budgets as fits, in at most 8 minutes.

Plain PyTorch and the service's own arithmetic (vae_service.core: model, objective, loop,
likelihood, dSprites, disentanglement metrics); no Ray, no MLflow, no pydantic, no YAML, so it
runs on a bare device machine with Python 3.12 and PyTorch. What it needs besides torch:
numpy (the core) and scikit-learn (MIG's mutual information; it brings scipy, joblib,
threadpoolctl, narwhals), as wheels in a folder; and MNIST's four .gz files.

Prepare here, once (the folders are git-ignored; about 59 MB of wheels, 11 MB of MNIST):

    pip download --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 -d bench/.gpu-wheels numpy scikit-learn && mkdir -p bench/.gpu-data && cp -r ../shared/data/mnist bench/.gpu-data/

and run on the device (carry bench/.gpu-wheels and bench/.gpu-data; leave numpy's wheel out
when the device has numpy, to stay under a 64 MiB carry):

    pip install -q --no-index --find-links bench/.gpu-wheels numpy scikit-learn; python bench/gpu_check.py --output $OUT/gpu_check.json

Sections, each in its own try (an error is written into its place in the JSON, the others go
on), the JSON rewritten after every measurement, so a run cut short still leaves its results:

  matmul      the device's dense matmul rate: a large square torch.matmul in fp32 (and TF32, on
              CUDA) and bf16, in FLOP/s: the roofline's ceiling
  throughput  training images/s of the MLP (784-400-20, jobs/mnist-vae.yaml) and the conv VAE
              (32-64 channels, latent 16, jobs/mnist-conv.yaml) for batch 128 … 16,384 in
              fp32, bf16 (autocast, loss in fp32) and compiled (torch.compile of the loss and
              forward), through core.loop.train_epoch on MNIST held on the device as one
              tensor; timed between torch.cuda.synchronize() calls after warm-up. The roofline
              is the measured matmul rate (fp32 or bf16) / the model's training FLOPs per
              image: the multiply-adds of its Linear and Conv layers counted on one forward
              pass (×2 FLOPs), ×3 for forward + backward
  iwae        the IWAE paper's VAE (784-200-200-50, dynamic binarisation, batch 20, Adam 1e-3;
              Burda et al., Table 1: 86.76 nats after 3,280 epochs) trained for as many epochs
              as fit, then the IS-NLL with K = 5,000 on the 10,000 test images
  dsprites    β-VAE (the conv VAE of jobs/dsprites-vae.yaml) on the dSprites grid for
              β = 1, 4, 8, batch 64, for as many of disentanglement_lib's 300,000 steps as fit;
              then MIG and the FactorVAE score (10,000 points), beside Locatello et al.'s ranges

--budget-s (default 420) is split across the sections (matmul 3%, throughput 30%, iwae 28%,
dsprites 39%; what a section leaves unused goes to the ones after it). A training section
stops at its deadline, less the time its evaluation is estimated to take, and records how much
of the paper's budget it did. The dSprites grid is rendered (about 20 s, once; cached under
$VAE_CACHE_DIR, default ~/.cache/vae-service) in a subprocess while the other sections run.

    python bench/gpu_check.py [--budget-s 420] [--sections matmul,throughput,iwae,dsprites]
                              [--batch-sizes 128,...,16384] [--modes fp32,bf16,compiled]
                              [--data-dir DIR] [--output PATH]
    python bench/gpu_check.py --tiny [--output PATH]

--tiny (CI's smoke run, tests/test_benches.py; on the CPU, about 15 s on 2 idle cores): every section
at the smallest sizes (batch 128 and 256, 1 warm-up and 2 timed steps per mode, the compiled
mode skipped (torch.compile takes 20–60 s on 2 CPU cores; tests/test_step_path.py covers it);
IWAE on 512 images for 1 epoch, K = 50 on 200 test images; dSprites 10 steps per β, images
rendered on demand, 100 metric points); the JSON goes to --output (default: a temporary
directory), never to bench/results/.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "gpu_check.json"
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
import _tiny  # noqa: E402
from vae_service.core import metrics as M  # noqa: E402
from vae_service.core import dsprites as D  # noqa: E402
from vae_service.core.data import load_mnist, to_unit_float  # noqa: E402
from vae_service.core.evaluation import evaluate, posterior_means  # noqa: E402
from vae_service.core.likelihood import evaluate_likelihood  # noqa: E402
from vae_service.core.loop import train_batches, train_epoch  # noqa: E402
from vae_service.core.model import VAE, ModelConfig, count_parameters  # noqa: E402
from vae_service.core.objective import Objective, compute_loss  # noqa: E402

SECTIONS = ("matmul", "throughput", "iwae", "dsprites")
SHARES = {"matmul": 0.03, "throughput": 0.30, "iwae": 0.28, "dsprites": 0.39}
BATCH_SIZES = "128,256,512,1024,2048,4096,8192,16384"
TINY = {"budget_s": 600, "batch_sizes": "128,256", "warmup_steps": 1, "min_steps": 2, "window_s": 0.0,
        "matmul_n": 256, "train_images": 512, "iwae_epochs": 1, "nll_samples": 50, "nll_images": 200,
        "dsprites_steps": 10, "points": 100, "held_out": 200}

# The models measured, as the job files define them (written out here: no YAML on the device).
THROUGHPUT_MODELS = {
    "mlp": ModelConfig(arch="mlp", hidden=(400,), latent_dim=20),  # jobs/mnist-vae.yaml
    "conv": ModelConfig(arch="conv", channels=(32, 64), latent_dim=16),  # jobs/mnist-conv.yaml
}
IWAE_MODEL = ModelConfig(hidden=(200, 200), latent_dim=50)
IWAE_BATCH, IWAE_LR = 20, 1e-3
DSPRITES_MODEL = ModelConfig(image_shape=(1, 64, 64), arch="conv", channels=(32, 32, 64, 64), kernel_size=4,
                             latent_dim=10)  # jobs/dsprites-vae.yaml
DSPRITES_BATCH, DSPRITES_LR = 64, 5e-4

IWAE_PAPER = {
    "nll": 86.76, "epochs": 3280, "batch_size": 20,
    "source": "Burda, Grosse & Salakhutdinov (2016), Importance Weighted Autoencoders (ICLR), Table 1: VAE, "
              "1 stochastic layer (784-200-200-50), k = 1, dynamically binarised MNIST, NLL by importance sampling "
              "with k = 5,000; trained 3^i epochs at learning rate 0.001·10^(−i/7), i = 0 … 7 (3,280 epochs)",
}
DISENTANGLEMENT_LIB = {
    "steps": 300_000, "batch_size": 64,
    "published": {M.MIG: "≈ 0.05–0.35", M.FACTORVAE: "≈ 0.55–0.85"},
    "source": "Locatello et al. (2019), Challenging Common Assumptions in the Unsupervised Learning of Disentangled "
              "Representations (ICML), Figure 13 / disentanglement_lib's β-VAE on dSprites (300,000 steps, batch 64): "
              "the spread over β ∈ {1, 2, 4, 6, 8, 16} and 50 seeds, read approximately off the published box plots "
              "(as bench/quality.py quotes them)",
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def finite_or_none(value: float) -> Optional[float]:
    return float(value) if value is not None and math.isfinite(value) else None


class Stopped(BaseException):
    """SIGTERM (a `timeout`): not an Exception, so no section catches it; main saves and exits."""


# ---------------------------------------------------------------------------------------------
# time and the JSON


class Budget:
    """Deadlines for the sections: each gets its share of what is left of the budget, among the
    sections not yet run, so time one leaves unused goes to the ones after it."""

    def __init__(self, total_s: float, sections: list[str]):
        self.total_s, self.started = total_s, time.perf_counter()
        self.pending = {name: SHARES[name] for name in sections}

    def left(self) -> float:
        return self.total_s - (time.perf_counter() - self.started)

    def deadline(self, section: str) -> float:
        share = self.pending.pop(section) / (sum(self.pending.values()) + SHARES[section])
        return time.perf_counter() + max(self.left(), 0.0) * share


class Report:
    """The JSON, rewritten whole (write and rename) whenever `save` is called."""

    def __init__(self, path: Path, data: dict):
        self.path, self.data = path, data

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        part = self.path.with_name(self.path.name + ".part")
        part.write_text(json.dumps(self.data, indent=2, default=str))
        os.replace(part, self.path)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def machine(device: torch.device) -> dict:
    info = {"device": str(device), "device_name": platform.processor() or platform.machine(),
            "torch": torch.__version__, "python": platform.python_version(), "numpy": np.__version__,
            "platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(device_name=props.name, cuda=torch.version.cuda, gpu_memory_gb=round(props.total_memory / 2**30, 1),
                    cudnn=torch.backends.cudnn.version(), tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
                    tf32_cudnn=torch.backends.cudnn.allow_tf32)
    return info


# ---------------------------------------------------------------------------------------------
# matmul: the roofline's ceiling


def matmul_flops_per_s(device: torch.device, dtype: torch.dtype, n: int, tf32: bool = False, min_s: float = 0.2) -> float:
    """FLOP/s of an n×n by n×n torch.matmul (2n³ FLOPs), repeated until at least `min_s` is timed."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        for _ in range(2):
            torch.matmul(a, b)
        repeats = 1
        while True:
            sync(device)
            start = time.perf_counter()
            for _ in range(repeats):
                torch.matmul(a, b)
            sync(device)
            seconds = time.perf_counter() - start
            if seconds >= min_s or repeats >= 4096:
                return 2 * n**3 * repeats / seconds
            repeats *= max(2, min(16, math.ceil(min_s / max(seconds, 1e-6))))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def section_matmul(args, ctx: dict, deadline: float, out: dict, save: Callable[[], None]) -> None:
    n = args.matmul_n or (8192 if ctx["device"].type == "cuda" else 1024)
    out["n"] = n
    out["flops_per_s"] = rates = {}
    for name, dtype, tf32 in (("fp32", torch.float32, False), ("tf32", torch.float32, True), ("bf16", torch.bfloat16, False)):
        if name == "tf32" and ctx["device"].type != "cuda":
            continue
        rates[name] = matmul_flops_per_s(ctx["device"], dtype, n, tf32)
        log(f"matmul {n}×{n} {name}: {rates[name] / 1e12:.2f} TFLOP/s")
    ctx["matmul"] = rates


# ---------------------------------------------------------------------------------------------
# throughput against the roofline


def forward_flops(model: VAE, image_shape: tuple[int, ...]) -> int:
    """FLOPs of one image's forward pass through the model's Linear, Conv2d and ConvTranspose2d
    layers: 2 per multiply-add (biases, activations and the loss are left out)."""
    counts: list[int] = []

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        x = inputs[0]
        if isinstance(module, nn.Linear):
            counts.append(2 * (x.numel() // module.in_features) * module.in_features * module.out_features)
        elif isinstance(module, nn.Conv2d):
            kernel = math.prod(module.kernel_size) * module.in_channels // module.groups
            counts.append(2 * output.numel() * kernel)
        elif isinstance(module, nn.ConvTranspose2d):  # each input element scatters into out_channels × kernel outputs
            counts.append(2 * x.numel() * math.prod(module.kernel_size) * module.out_channels // module.groups)

    layers = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, layers)]
    batch = 2
    try:
        with torch.no_grad():
            model.cpu()(torch.rand(batch, *image_shape))
    finally:
        for handle in handles:
            handle.remove()
    return sum(counts) // batch


def counted_train_flops(model: VAE, image_shape: tuple[int, ...]) -> Optional[float]:
    """torch.utils.flop_counter's count of one image's loss forward and backward (a check on
    3 × forward_flops: the first layer needs no input gradient, so it counts a little less)."""
    try:
        from torch.utils.flop_counter import FlopCounterMode
    except ImportError:
        return None
    batch = 2
    counter = FlopCounterMode(display=False)
    with counter:
        compute_loss(model.cpu(), torch.rand(batch, *image_shape), Objective()).loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / batch


def throughput_images(device: torch.device, n: int = 60_000) -> tuple[torch.Tensor, str]:
    """MNIST's training images as one uint8 tensor on the device (random pixels when MNIST is
    not found: the rate does not depend on what the pixels are)."""
    try:
        images = load_mnist(None, download=False, val_fraction=0.0).train.images
        return images.to(device), f"MNIST train split ({len(images):,} images) on the device"
    except Exception as error:  # noqa: BLE001 - the rate is measured all the same
        log(f"throughput: no MNIST ({error}); random images instead")
        generator = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=generator)
        return images.to(device), f"random uint8 images ({n:,}, 1×28×28) on the device: MNIST not found"


def measure_rate(model: VAE, optimizer: torch.optim.Optimizer, images: torch.Tensor, batch: int, precision: str,
                 compile_: bool, args, device: torch.device) -> dict:
    """Training images/s through core.loop.train_epoch: warm-up steps (and compilation), a probe
    of --min-steps, then a window of about --window-s when the probe was shorter."""
    generator = torch.Generator(device=device).manual_seed(batch)

    def run(steps: int) -> tuple[float, dict]:
        indices = torch.randint(len(images), (steps * batch,), device=device, generator=generator)
        sync(device)
        start = time.perf_counter()
        stats = train_epoch(model, optimizer, images, indices, batch, Objective(), 0, precision=precision, compile=compile_)
        sync(device)
        return time.perf_counter() - start, stats.as_metrics()

    # Compiled: at least 3 warm-up steps, so the recompilations happen there (a new batch size,
    # and the loss's progress argument taking a second value make torch.compile's shapes and
    # floats dynamic).
    warmup_s, _ = run(max(args.warmup_steps, 3) if compile_ else args.warmup_steps)
    steps = args.min_steps
    seconds, metrics = run(steps)
    if args.window_s > seconds:
        steps = max(steps, min(args.max_steps, math.ceil(args.window_s * steps / seconds)))
        seconds, metrics = run(steps)
    return {"images_per_s": steps * batch / seconds, "steps": steps, "seconds": seconds, "warmup_s": warmup_s,
            "train_loss": finite_or_none(metrics[M.TRAIN_LOSS])}


def section_throughput(args, ctx: dict, deadline: float, out: dict, save: Callable[[], None]) -> None:
    device = ctx["device"]
    images, described = throughput_images(device)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    modes = args.modes.split(",")
    rates = ctx.get("matmul") or {}
    out.update(data=described, batch_sizes=batch_sizes, modes=modes, optimizer="Adam, lr 1e-3", objective="vae, β = 1",
               roofline="measured matmul FLOP/s (fp32 for fp32 and compiled, bf16 for bf16 modes) / training FLOPs "
                        "per image (3 × the forward pass's Linear and Conv multiply-adds × 2)",
               timing="torch.cuda.synchronize() around core.loop.train_epoch, after --warmup-steps; "
                      "images/s = steps × batch / seconds",
               models={}, rows=[])
    try:  # torch.compile keeps at most this many graphs per function before it silently falls back to eager
        import torch._dynamo

        name = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
        setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), 64))
    except Exception:  # noqa: BLE001
        pass
    for arch, config in THROUGHPUT_MODELS.items():
        torch.manual_seed(0)
        model = VAE(config)
        forward = forward_flops(model, config.image_shape)
        out["models"][arch] = {"architecture": _describe(config), "parameters": count_parameters(model),
                               "forward_flops_per_image": forward, "train_flops_per_image": 3 * forward,
                               "flop_counter_train_flops_per_image": counted_train_flops(model, config.image_shape)}
        model.to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        failed: dict[str, str] = {}  # a mode that failed (compilation, say) is not retried at every batch size
        for mode in modes:
            for batch in batch_sizes:
                row = {"model": arch, "mode": mode, "batch_size": batch}
                out["rows"].append(row)
                precision = "bf16" if "bf16" in mode else "fp32"
                compile_ = mode.startswith("compiled")
                if compile_ and args.tiny:
                    row["skipped"] = "tiny: torch.compile takes 20–60 s on 2 CPU cores (tests/test_step_path.py covers it)"
                    continue
                if mode in failed:
                    row["skipped"] = failed[mode]
                    continue
                if time.perf_counter() > deadline:
                    row["skipped"] = "budget: the section's time ran out"
                    continue
                try:
                    row.update(measure_rate(model, optimizer, images, batch, precision, compile_, args, device))
                except Exception as error:  # noqa: BLE001 - recorded, the other rows go on
                    row["error"] = f"{type(error).__name__}: {error}"[:2000]
                    if compile_:
                        failed[mode] = f"{mode} failed at batch {batch}: {row['error'][:300]}"
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                    log(f"throughput {arch} {mode} batch {batch}: {row['error'][:200]}")
                    save()
                    continue
                ceiling = rates.get("bf16" if precision == "bf16" else "fp32")
                if ceiling:
                    row["roofline_images_per_s"] = ceiling / (3 * forward)
                    row["fraction_of_roofline"] = row["images_per_s"] / row["roofline_images_per_s"]
                log(f"throughput {arch} {mode} batch {batch}: {row['images_per_s']:,.0f} images/s"
                    + (f" ({row['fraction_of_roofline']:.1%} of roofline)" if "fraction_of_roofline" in row else ""))
                save()
        del model, optimizer
        if device.type == "cuda":
            torch.cuda.empty_cache()


def _describe(config: ModelConfig) -> str:
    if config.arch == "mlp":
        return "MLP " + "-".join(map(str, [math.prod(config.image_shape), *config.hidden, config.latent_dim]))
    side = "×".join(map(str, config.image_shape[1:]))
    return f"conv {side}, channels {'-'.join(map(str, config.channels))}, kernel {config.kernel_size}, latent {config.latent_dim}"


# ---------------------------------------------------------------------------------------------
# IWAE: the paper's VAE and its IS-NLL


def section_iwae(args, ctx: dict, deadline: float, out: dict, save: Callable[[], None]) -> None:
    device = ctx["device"]
    data = load_mnist(None, download=False, val_fraction=0.0, limit=args.train_images or None)
    train = data.train.images.to(device)
    test = data.test.images[: args.nll_images]
    torch.manual_seed(0)
    vae = VAE(IWAE_MODEL).to(device)
    optimizer = torch.optim.Adam(vae.parameters(), lr=IWAE_LR)
    # The evaluation's time, from a probe on 100 images (its cost does not depend on training).
    probe = min(100, len(test))
    started = time.perf_counter()
    evaluate_likelihood(vae, test[:probe], binarize="dynamic", k=args.nll_samples, seed=0)
    eval_estimate_s = (time.perf_counter() - started) * len(test) / probe * 1.2 + 1.0
    train_deadline = deadline - eval_estimate_s
    steps_per_epoch = math.ceil(len(train) / IWAE_BATCH)
    out.update(architecture=_describe(IWAE_MODEL), batch_size=IWAE_BATCH, lr=IWAE_LR, binarize="dynamic",
               train_images=len(train), precision=args.train_precision, compile=args.train_compile,
               paper=IWAE_PAPER, eval_estimate_s=round(eval_estimate_s, 1), epochs=0, history=[])
    log(f"iwae: training up to {args.iwae_epochs} epochs for {max(train_deadline - time.perf_counter(), 0):.0f} s "
        f"(IS-NLL estimated at {eval_estimate_s:.0f} s)")
    started = time.perf_counter()
    epochs, partial_steps = 0, 0
    while epochs < args.iwae_epochs:
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(epochs)).to(device)
        batches = (train[order[s * IWAE_BATCH : (s + 1) * IWAE_BATCH]] for s in range(steps_per_epoch))
        stats = train_batches(vae, optimizer, batches, steps_per_epoch, Objective(), epochs, binarize="dynamic",
                              should_stop=lambda: time.perf_counter() > train_deadline,
                              precision=args.train_precision, compile=args.train_compile)
        metrics = stats.as_metrics()
        if stats.stopped:
            partial_steps = stats.steps
            break
        epochs += 1
        out["history"].append({"epoch": epochs, "train_neg_elbo": finite_or_none(metrics[M.TRAIN_NEG_ELBO]),
                               "images_per_s": metrics[M.IMAGES_PER_S]})
        out.update(epochs=epochs, train_seconds=round(time.perf_counter() - started, 1))
        if epochs == 1 or epochs % 10 == 0:
            log(f"  epoch {epochs}: train −ELBO {metrics[M.TRAIN_NEG_ELBO]:.2f}, {metrics[M.IMAGES_PER_S]:,.0f} images/s")
            save()
        if time.perf_counter() > train_deadline:
            break
    train_s = time.perf_counter() - started
    done = epochs + partial_steps / steps_per_epoch
    out.update(epochs=epochs, epochs_done=round(done, 3), partial_epoch_steps=partial_steps, train_seconds=round(train_s, 1),
               steps=epochs * steps_per_epoch + partial_steps,
               fraction_of_paper_epochs=done * len(train) / (IWAE_PAPER["epochs"] * 60_000),
               paper_budget_s_at_this_pace=round(train_s / max(done, 1e-9) * IWAE_PAPER["epochs"] * 60_000 / len(train)))
    save()
    log(f"iwae: {done:.2f} epochs in {train_s:.0f} s; IS-NLL with K = {args.nll_samples} on {len(test)} test images")
    report = evaluate_likelihood(vae, test, binarize="dynamic", k=args.nll_samples, seed=0)
    out.update(report.to_dict())
    out["nll_minus_paper"] = report.nll - IWAE_PAPER["nll"]
    log(f"iwae: IS-NLL {report.nll:.2f} nats (paper {IWAE_PAPER['nll']}), −ELBO {report.neg_elbo:.2f}, "
        f"{report.active_units} active units, {report.seconds:.0f} s")


# ---------------------------------------------------------------------------------------------
# dSprites: β-VAE and its disentanglement


def start_grid_render() -> Optional[subprocess.Popen]:
    """Renders and caches the dSprites grid in a subprocess (about 20 s of one core), unless cached."""
    if D.read_packed(D.grid_path(), D.GRID_SIZE) is not None:
        return None
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen([sys.executable, "-c", "from vae_service.core.dsprites import grid_images; grid_images()"],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def unpack_on_device(packed: torch.Tensor) -> torch.Tensor:
    """core.dsprites.unpack on the device: (n, 512) bit-packed uint8 (np.packbits, most
    significant bit first) → (n, 1, 64, 64) uint8 in {0, 255}."""
    shifts = torch.arange(7, -1, -1, device=packed.device, dtype=torch.uint8)
    bits = (packed.unsqueeze(-1) >> shifts) & 1
    return (bits.reshape(len(packed), 1, D.SIDE, D.SIDE) * 255).to(torch.uint8)


def dsprites_batches(ctx: dict, tiny: bool, seed: int):
    """Endless batches of 64 images drawn uniformly from the grid (as disentanglement_lib does),
    on the device: index draws and unpacking there, from the packed grid held on the device;
    rendered on demand on the CPU in a tiny run."""
    device = ctx["device"]
    if tiny or "dsprites_grid" not in ctx:
        data, rng = ctx["dsprites"], np.random.default_rng(seed)
        while True:
            yield data.observations(data.sample_factors(DSPRITES_BATCH, rng)).to(device)
    generator = torch.Generator(device=device).manual_seed(seed)
    grid = ctx["dsprites_grid"]
    while True:
        yield unpack_on_device(grid[torch.randint(len(grid), (DSPRITES_BATCH,), device=device, generator=generator)])


def metric_cost_s(data: D.DSprites, represent: Callable, points: int, device: torch.device) -> float:
    """The metrics' time, estimated from 10 encoded batches of 64: MIG encodes points / 64
    batches, the FactorVAE score points / 64 for the variances and one batch per vote (points
    training votes, points / 2 evaluation votes)."""
    rng = np.random.default_rng(0)
    represent(data.observations(data.sample_factors(DSPRITES_BATCH, rng)))  # the first call's set-up is not the pace
    started = time.perf_counter()
    for _ in range(10):
        represent(data.observations(data.sample_factors(DSPRITES_BATCH, rng)))
    per_batch = (time.perf_counter() - started) / 10
    return per_batch * (2 * points / DSPRITES_BATCH + 1.5 * points) * 1.2 + 2.0


def section_dsprites(args, ctx: dict, deadline: float, out: dict, save: Callable[[], None]) -> None:
    device = ctx["device"]
    out.update(architecture=_describe(DSPRITES_MODEL), batch_size=DSPRITES_BATCH, lr=DSPRITES_LR,
               precision=args.train_precision, compile=args.train_compile, points=args.points,
               disentanglement_lib=DISENTANGLEMENT_LIB, runs=[])
    if args.tiny:  # a few thousand images: rendered on demand, not the whole grid rendered and cached (377 MB)
        data = D.DSprites()
        out["data"] = "dSprites re-rendered on demand (core/dsprites.py)"
    else:
        try:
            render = ctx.get("grid_render")
            if render is not None:
                started = time.perf_counter()
                _, err = render.communicate()
                out["grid_wait_s"] = round(time.perf_counter() - started, 1)
                if render.returncode != 0:
                    raise RuntimeError(f"rendering the dSprites grid failed: {err[-1000:]}")
            packed = D.grid_images()
            data = D.DSprites(lambda indices: D.unpack(packed[indices]))
            ctx["dsprites_grid"] = torch.from_numpy(np.array(packed)).to(device)  # a copy: the memory map is read-only
            out["data"] = "the dSprites grid re-rendered (core/dsprites.py, 737,280 images), bit-packed on the device"
        except Exception as error:  # noqa: BLE001 - slower, but the section still measures
            data = D.DSprites()
            out["data"] = "dSprites re-rendered on demand on the CPU (slower steps): the grid failed"
            out["grid_error"] = f"{type(error).__name__}: {error}"[:1000]
            log(f"dsprites: no grid ({out['grid_error'][:200]}); rendering on demand")
    ctx["dsprites"] = data
    betas = [float(b) for b in args.betas.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    jobs = [(beta, seed) for beta in betas for seed in seeds]
    probe = VAE(DSPRITES_MODEL).to(device).eval()
    metric_s = metric_cost_s(data, posterior_means(probe), args.points, device)
    out["metric_estimate_s"] = round(metric_s, 1)
    for i, (beta, seed) in enumerate(jobs):
        run = {"beta": beta, "seed": seed}
        out["runs"].append(run)
        try:
            left = len(jobs) - i
            train_deadline = time.perf_counter() + (deadline - time.perf_counter() - left * metric_s) / left
            torch.manual_seed(seed)
            vae = VAE(DSPRITES_MODEL).to(device)
            optimizer = torch.optim.Adam(vae.parameters(), lr=DSPRITES_LR)
            log(f"dsprites: β = {beta} seed {seed}: up to {args.dsprites_steps:,} steps for "
                f"{max(train_deadline - time.perf_counter(), 0):.0f} s")
            started = time.perf_counter()
            stats = train_batches(vae, optimizer, itertools.islice(dsprites_batches(ctx, args.tiny, seed), args.dsprites_steps),
                                  args.dsprites_steps, Objective(beta=beta), 0,
                                  should_stop=lambda: time.perf_counter() > train_deadline,
                                  precision=args.train_precision, compile=args.train_compile)
            train_s = time.perf_counter() - started
            run.update(steps=stats.steps, fraction_of_budget=stats.steps / DISENTANGLEMENT_LIB["steps"],
                       train_seconds=round(train_s, 1), steps_per_s=stats.steps / train_s,
                       train_neg_elbo=finite_or_none(stats.as_metrics()[M.TRAIN_NEG_ELBO]))
            vae.eval()
            held_out = data.observations(data.sample_factors(args.held_out, np.random.default_rng(99)))
            with torch.no_grad():
                terms = compute_loss(vae, to_unit_float(held_out.to(device)), Objective())
            run.update(neg_elbo=float(terms.neg_elbo.mean()), kl=float(terms.kl.mean()))
            save()
            started = time.perf_counter()
            for metric in (M.MIG, M.FACTORVAE):  # apart: MIG needs scikit-learn, the FactorVAE score does not
                try:
                    run.update(evaluate(vae, [metric], test_images=torch.empty(0), binarize="none", factors=data,
                                        points=args.points, seed=seed))
                except Exception as error:  # noqa: BLE001
                    run[f"{metric}_error"] = f"{type(error).__name__}: {error}"[:1000]
            run.pop("seconds", None)
            run["metric_seconds"] = round(time.perf_counter() - started, 1)
            log(f"  {stats.steps:,} steps ({run['steps_per_s']:.0f}/s), −ELBO {run['neg_elbo']:.1f}, "
                f"MIG {run.get(M.MIG, float('nan')):.3f}, FactorVAE {run.get(M.FACTORVAE, float('nan')):.3f}")
        except Exception as error:  # noqa: BLE001 - recorded, the other β go on
            run["error"] = f"{type(error).__name__}: {error}"[:2000]
            run["traceback"] = traceback.format_exc()[-3000:]
            log(f"dsprites β = {beta}: {run['error'][:200]}")
        save()


# ---------------------------------------------------------------------------------------------


RUNNERS = {"matmul": section_matmul, "throughput": section_throughput, "iwae": section_iwae, "dsprites": section_dsprites}


def loaded_packages() -> list[str]:
    """The third-party top-level packages this process imported: numpy, torch and what torch
    brings, scikit-learn and its own (with any optional package it found installed, such as
    pandas: not needed). Never ray, mlflow, pydantic or yaml."""
    top = {name.split(".")[0] for name in sys.modules}
    return sorted(name for name in top - set(sys.stdlib_module_names) - {"vae_service"} if not name.startswith("_"))


def print_table(data: dict) -> None:
    rows = data.get("throughput", {}).get("rows", [])
    if rows:
        print(f"\n{'model':<6}{'mode':<10}{'batch':>7}{'images/s':>14}{'roofline':>14}{'of roofline':>13}")
        for row in rows:
            if "images_per_s" in row:
                roof = row.get("roofline_images_per_s")
                print(f"{row['model']:<6}{row['mode']:<10}{row['batch_size']:>7,}{row['images_per_s']:>14,.0f}"
                      f"{roof or float('nan'):>14,.0f}{row.get('fraction_of_roofline', float('nan')):>12.1%}")
            else:
                print(f"{row['model']:<6}{row['mode']:<10}{row['batch_size']:>7,}  {(row.get('skipped') or row.get('error', ''))[:60]}")
    iwae = data.get("iwae", {})
    if "nll" in iwae:
        print(f"\nIWAE VAE {iwae['architecture']}: {iwae['epochs_done']:.2f} of {IWAE_PAPER['epochs']:,} epochs, "
              f"IS-NLL (K = {iwae['k']:,}, {iwae['n_images']:,} images) {iwae['nll']:.2f} nats; paper {IWAE_PAPER['nll']}")
    runs = data.get("dsprites", {}).get("runs", [])
    if runs:
        print(f"\n{'β':>4}{'steps':>10}{'of 300k':>9}{'−ELBO':>9}{'MIG':>8}{'FactorVAE':>11}")
        for run in runs:
            if "steps" in run:
                print(f"{run['beta']:>4g}{run['steps']:>10,}{run['fraction_of_budget']:>9.1%}{run.get('neg_elbo', float('nan')):>9.1f}"
                      f"{run.get(M.MIG, float('nan')):>8.3f}{run.get(M.FACTORVAE, float('nan')):>11.3f}")
        print(f"published (approximate): MIG {DISENTANGLEMENT_LIB['published'][M.MIG]}, "
              f"FactorVAE {DISENTANGLEMENT_LIB['published'][M.FACTORVAE]}")
    for name in SECTIONS:
        if "error" in data.get(name, {}):
            print(f"\n{name}: {data[name]['error'][:300]}")


def default_data_dir() -> str:
    """$VAE_DATA_DIR, else bench/.gpu-data (what the device run carries), else ../shared/data."""
    if os.environ.get("VAE_DATA_DIR"):
        return os.environ["VAE_DATA_DIR"]
    carried = REPO / "bench" / ".gpu-data"
    return str(carried if carried.is_dir() else REPO.parent / "shared" / "data")


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-s", type=float, default=420, help="Seconds for all the sections together (default 420).")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="Comma-separated subset of " + ",".join(SECTIONS) + ".")
    parser.add_argument("--device", default=None, help="cuda when available, else cpu.")
    parser.add_argument("--data-dir", default=None, help="Where mnist/ is (default: $VAE_DATA_DIR, else bench/.gpu-data, else ../shared/data).")
    parser.add_argument("--matmul-n", type=int, default=0, help="Side of the timed square matmul (0: 8192 on CUDA, 1024 on the CPU).")
    parser.add_argument("--batch-sizes", default=BATCH_SIZES)
    parser.add_argument("--modes", default="fp32,bf16,compiled", help="Comma-separated: fp32, bf16, compiled, compiled_bf16.")
    parser.add_argument("--warmup-steps", type=int, default=3, help="Untimed steps per measurement (compilation happens there).")
    parser.add_argument("--min-steps", type=int, default=5, help="Timed steps of the probe.")
    parser.add_argument("--window-s", type=float, default=0.5, help="A timed window of about this long when the probe was shorter.")
    parser.add_argument("--max-steps", type=int, default=2000)
    parser.add_argument("--train-precision", default="fp32", choices=("fp32", "bf16"), help="Of the IWAE and dSprites training.")
    parser.add_argument("--train-compile", action="store_true", help="torch.compile the IWAE and dSprites training steps.")
    parser.add_argument("--train-images", type=int, default=0, help="MNIST training images for IWAE (0: all 60,000).")
    parser.add_argument("--iwae-epochs", type=int, default=IWAE_PAPER["epochs"], help="At most this many (the paper's 3,280).")
    parser.add_argument("--nll-samples", type=int, default=5000, help="K of the IS-NLL.")
    parser.add_argument("--nll-images", type=int, default=10_000, help="Test images of the IS-NLL.")
    parser.add_argument("--dsprites-steps", type=int, default=DISENTANGLEMENT_LIB["steps"], help="At most this many per β.")
    parser.add_argument("--betas", default="1,4,8")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--points", type=int, default=10_000, help="Points of MIG and the FactorVAE score (disentanglement_lib's 10,000).")
    parser.add_argument("--held-out", type=int, default=2000, help="dSprites images of the held-out −ELBO.")
    args = _tiny.parse_args(parser, RESULTS, TINY, argv)
    sections = [s for s in args.sections.split(",") if s]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}: choose from {', '.join(SECTIONS)}")
    os.environ["VAE_DATA_DIR"] = str(Path(args.data_dir or default_data_dir()).resolve())
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))

    def stop(signum, frame):
        raise Stopped()

    signal.signal(signal.SIGTERM, stop)
    report = Report(args.output, {
        "benchmark": "gpu_check", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "tiny": args.tiny,
        "finished": False, "budget_s": args.budget_s, "machine": machine(device),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    })
    ctx: dict = {"device": device}
    if "dsprites" in sections and not args.tiny:
        ctx["grid_render"] = start_grid_render()
    budget = Budget(args.budget_s, sections)
    log(f"gpu_check on {report.data['machine']['device_name']} ({device}), budget {args.budget_s:.0f} s: {', '.join(sections)}")
    try:
        report.save()
        for name in sections:
            deadline = budget.deadline(name)
            out = report.data[name] = {}
            started = time.perf_counter()
            try:
                RUNNERS[name](args, ctx, deadline, out, report.save)
            except Exception as error:  # noqa: BLE001 - recorded; the other sections go on
                out["error"] = f"{type(error).__name__}: {error}"[:2000]
                out["traceback"] = traceback.format_exc()[-4000:]
                log(f"{name} failed: {out['error'][:300]}")
            out["section_seconds"] = round(time.perf_counter() - started, 1)
            out["section_budget_s"] = round(deadline - started, 1)
            report.save()
        report.data["finished"] = True
    except (Stopped, KeyboardInterrupt):
        report.data["stopped"] = "interrupted (SIGTERM or Ctrl-C): the sections after the last saved one did not run"
    finally:
        render = ctx.get("grid_render")
        if render is not None and render.poll() is None:
            render.kill()
        report.data["elapsed_s"] = round(time.perf_counter() - budget.started, 1)
        report.data["packages_imported"] = loaded_packages()
        report.save()
    print_table(report.data)
    print(f"\nwrote {_tiny.shown(args.output)}")


if __name__ == "__main__":
    main()

"""Pickle-free checkpoints: tensors in safetensors files, everything else in JSON.

A checkpoint directory holds
  model.safetensors      the VAE's weights (unwrapped from DDP)
  optimizer.safetensors  the optimiser's per-parameter tensors (e.g. Adam's moments)
  state.json             epoch, metrics, spec, model config, optimiser hyper-parameters and,
                         for a run stopped part-way through an epoch, where it stopped (PART_EPOCH)
so loading one never runs a pickle, even when the files came from shared storage.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors.torch import load_file, save_file

from vae_service.core.model import VAE, ModelConfig, unwrap

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
CONFIG_FILE = "config.json"
# state.json's record of an epoch stopped part-way (Ctrl-C, the queue's cancel or preemption):
# {"epoch", "steps" done, "seconds", "ranks": [per rank {"images", "sums" [loss, recon, kl], "rng"}]}.
# state.json's own "epoch" stays the last whole epoch, so a reader that knows nothing of
# part-epochs is still right.
PART_EPOCH = "part_epoch"


def reached(state: dict) -> tuple[int, int]:
    """How far a checkpoint's run got, for ordering checkpoints: (last whole epoch, steps into the next)."""
    part = state.get(PART_EPOCH)
    return state.get("epoch", -1), (part["steps"] if part else 0)


def rng_state(device: torch.device) -> dict[str, str]:
    """torch's random state (the CPU's, and the GPU's on one) as text for state.json: a run
    continued part-way through an epoch draws the noise the uninterrupted run would have drawn."""
    state = {"cpu": _to_text(torch.get_rng_state())}
    if device.type == "cuda":
        state["cuda"] = _to_text(torch.cuda.get_rng_state(device))
    return state


def restore_rng_state(state: dict[str, str], device: torch.device) -> None:
    torch.set_rng_state(_from_text(state["cpu"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(_from_text(state["cuda"]), device)


def _to_text(tensor: torch.Tensor) -> str:
    return base64.b64encode(tensor.numpy().tobytes()).decode("ascii")


def _from_text(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)


def optimizer_to_flat(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Splits an optimiser state_dict into tensors (`state.<param>.<key>`) and JSON-able rest."""
    state_dict = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for param_id, values in state_dict["state"].items():
        for key, value in values.items():
            name = f"state.{param_id}.{key}"
            if isinstance(value, torch.Tensor):
                tensors[name] = value.detach().cpu().contiguous()
            else:
                scalars[name] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def optimizer_from_flat(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for name, value in list(tensors.items()) + list(meta["scalars"].items()):
        _, param_id, key = name.split(".", 2)
        state.setdefault(int(param_id), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(directory: str | Path, model: torch.nn.Module, optimizer: Optional[torch.optim.Optimizer], info: dict) -> Path:
    """Writes a checkpoint directory; `info` (epoch, spec, metrics…) must be JSON-serialisable."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vae = unwrap(model)
    save_file({k: v.detach().cpu().contiguous() for k, v in vae.state_dict().items()}, directory / MODEL_FILE)
    state = dict(info, model_config=vae.config.to_dict())
    if optimizer is not None:
        tensors, meta = optimizer_to_flat(optimizer)
        save_file(tensors, directory / OPTIMIZER_FILE)
        state["optimizer"] = meta
    (directory / STATE_FILE).write_text(json.dumps(state, indent=2))
    return directory


def read_state(directory: str | Path) -> dict:
    return json.loads((Path(directory) / STATE_FILE).read_text())


def load_checkpoint(directory: str | Path, model: torch.nn.Module, optimizer: Optional[torch.optim.Optimizer] = None, device: str | torch.device = "cpu") -> dict:
    """Restores weights (and the optimiser when given) in place; returns state.json."""
    directory = Path(directory)
    state = read_state(directory)
    unwrap(model).load_state_dict(load_file(directory / MODEL_FILE, device=str(device)))
    if optimizer is not None and "optimizer" in state:
        tensors = load_file(directory / OPTIMIZER_FILE, device=str(device))
        optimizer.load_state_dict(optimizer_from_flat(tensors, state["optimizer"]))
    return state


def save_model(directory: str | Path, model: torch.nn.Module, extra: Optional[dict] = None) -> Path:
    """The final model: weights plus a JSON config from which `load_model` rebuilds it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vae = unwrap(model)
    save_file({k: v.detach().cpu().contiguous() for k, v in vae.state_dict().items()}, directory / MODEL_FILE)
    config = {"model_config": vae.config.to_dict(), **(extra or {})}
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    return directory


def read_model_config(directory: str | Path) -> dict:
    """config.json: the model config, plus what `save_model` was given (the job's spec, metrics)."""
    return json.loads((Path(directory) / CONFIG_FILE).read_text())


def load_model(directory: str | Path, device: str | torch.device = "cpu") -> VAE:
    directory = Path(directory)
    config = read_model_config(directory)
    model = VAE(ModelConfig.from_dict(config["model_config"]))
    model.load_state_dict(load_file(directory / MODEL_FILE, device=str(device)))
    return model.eval()

"""The private Ray APIs behind vae_service.training.ray_internals are where we expect them.

A Ray upgrade that moves one fails here, by name, instead of as a hung Ctrl-C or leaked
placement groups in a sweep. No cluster needed: these read Ray's code and classes.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import time

import ray.tune.tune as tune_module
from ray.train.v2._internal.execution.worker_group.placement_group_handle import PlacementGroupHandle
from ray.train.v2._internal.execution.worker_group.state import WorkerGroupState
from ray.train.v2._internal.execution.worker_group.worker_group import WorkerGroup

from vae_service.core.interrupt import Interrupt
from vae_service.training import ray_internals
from vae_service.training.ray_internals import AbortableTorchTrainer, tune_sigint_handler_disabled


def _defining_class(cls: type, name: str) -> type:
    return next(base for base in cls.__mro__ if name in vars(base))


def test_train_fit_hands_its_controller_to_the_sigint_hook():
    hook = _defining_class(AbortableTorchTrainer.__mro__[1], "_register_sigint_handler")
    assert list(inspect.signature(vars(hook)["_register_sigint_handler"]).parameters) == ["self", "controller"]
    fit_owner = _defining_class(AbortableTorchTrainer, "fit")
    caller = inspect.getsource(fit_owner)
    assert "self._register_sigint_handler(controller)" in caller, f"{fit_owner.__name__} no longer calls the hook"


def test_the_hook_registers_an_abort_on_the_interrupt():
    aborted = []

    class Controller:
        class abort:  # noqa: N801  (an actor method: `.remote()`)
            @staticmethod
            def remote():
                aborted.append(True)

    trainer = AbortableTorchTrainer.__new__(AbortableTorchTrainer)
    trainer.interrupt, trainer.stop_grace_s = Interrupt(), 0.3  # the workers' time to stop by themselves
    trainer._register_sigint_handler(Controller())
    assert aborted == []
    trainer.interrupt.request()
    assert aborted == []
    deadline = time.monotonic() + 10
    while not aborted and time.monotonic() < deadline:
        time.sleep(0.05)
    assert aborted == [True]


def test_worker_group_state_names_its_placement_group():
    assert hasattr(WorkerGroup, "get_worker_group_state")
    fields = {f.name for f in dataclasses.fields(WorkerGroupState)}
    assert "placement_group_handle" in fields
    assert isinstance(inspect.getattr_static(PlacementGroupHandle, "placement_group"), property)
    assert hasattr(ray_internals.WorkerGroupCallback, "after_worker_group_start")
    assert hasattr(ray_internals.PlacementGroupID, "from_hex")


def test_tune_reads_its_sigint_switch_when_fit_starts():
    assert "TUNE_DISABLE_SIGINT_HANDLER" in inspect.getsource(tune_module)
    before = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    with tune_sigint_handler_disabled():
        assert os.environ["TUNE_DISABLE_SIGINT_HANDLER"] == "1"
    assert os.environ.get("TUNE_DISABLE_SIGINT_HANDLER") == before


def test_every_actor_has_the_ready_method_we_ping():
    import ray.actor

    assert "def __ray_ready__(self):" in inspect.getsource(ray.actor._modify_class)

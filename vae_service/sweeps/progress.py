"""The live table of a sweep's trials (state, parameters, epoch, objectives), from Tune's
driver-side callback hooks."""

from __future__ import annotations

from typing import Optional

from ray.tune import Callback
from rich.console import Console
from rich.live import Live
from rich.table import Table

from vae_service.sweeps.records import epochs_done, trial_identity

STATE_STYLE = {"RUNNING": "cyan", "TERMINATED": "green", "ERROR": "red", "PENDING": "dim"}


class SweepProgress(Callback):
    def __init__(self, title: str, paths: list[str], metrics: list[str], epochs: int, console: Console, enabled: bool = True):
        self.title, self.paths, self.metrics, self.epochs = title, paths, metrics, epochs
        self.console, self.enabled = console, enabled
        self.rows: dict[str, dict] = {}
        self.live: Optional[Live] = None

    def __getstate__(self) -> dict:  # Tune saves its callbacks with the experiment: no console
        return {**self.__dict__, "console": None, "live": None, "enabled": False}

    # Tune's hooks -------------------------------------------------------------------------
    def on_trial_start(self, iteration, trials, trial, **info):
        self._update(trial, "RUNNING")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._update(trial, "RUNNING", result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._update(trial, "TERMINATED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._update(trial, "ERROR")

    def on_experiment_end(self, trials, **info):
        self.stop()

    # the display ---------------------------------------------------------------------------
    def _update(self, trial, state: str, result: Optional[dict] = None) -> None:
        trial_id, values = trial_identity(trial.trial_id, trial.config)
        row = self.rows.setdefault(trial_id, {"config": values, "epoch": 0, "metrics": {}})
        row["state"] = state
        if result:
            row["epoch"] = epochs_done(result)
            row["metrics"] = {m: result.get(m) for m in self.metrics}
        if not self.enabled or self.console is None:
            return
        if self.live is None:
            self.live = Live(self.table(), console=self.console, refresh_per_second=2, transient=False)
            self.live.start()
        self.live.update(self.table())

    def table(self) -> Table:
        table = Table(title=self.title)
        table.add_column("trial")
        table.add_column("state")
        for path in self.paths:
            table.add_column(path, justify="right")
        table.add_column("epoch", justify="right")
        for metric in self.metrics:
            table.add_column(metric, justify="right")
        for trial_id, row in self.rows.items():
            state = row["state"]
            values = [cell(row["config"].get(p)) for p in self.paths]
            metrics = [cell(row["metrics"].get(m)) for m in self.metrics]
            table.add_row(trial_id, f"[{STATE_STYLE.get(state, '')}]{state.lower()}[/]", *values,
                          f"{row['epoch']}/{self.epochs}", *metrics)
        return table

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None


def cell(value) -> str:
    """A table cell: 4 significant digits for floats, — for a missing value."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)

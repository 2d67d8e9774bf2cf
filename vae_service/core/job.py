"""A job, as whoever runs, queues, places or checks it sees one: the interface that every kind
(train, sweep, compare, encode-dataset) implements, so that none of them branches on the kind.

What executes each kind is one table, `jobs/execute.EXECUTORS`; the spec classes implement this
protocol (core/spec.TrainSpec, core/sweep_spec.SweepSpec, jobs/compare.CompareJob,
core/encode_spec.EncodeDatasetSpec).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Protocol

if TYPE_CHECKING:
    from vae_service.core.spec import ResourcesSpec, TrainSpec

Field = tuple[str, str]  # (a field's path in the spec, its value): what the queue's policy checks


class Job(Protocol):
    kind: str
    name: str

    @property
    def storage_uri(self) -> str:
        """The storage its run directory goes under (`<name>-<time or job id>`)."""

    def train_specs(self) -> list["TrainSpec"]:
        """The train specs it trains (none for a job that trains nothing)."""

    def trained_by_driver(self) -> Optional["TrainSpec"]:
        """The one spec its driver trains itself (a train job), else None: a sweep's trials run
        in Tune's actors, a comparison's in runs of their own (what jobs/warm.py asks)."""

    def worker_resources(self) -> "ResourcesSpec":
        """What one of its workers asks of Ray, and whether the queue may preempt it."""

    def peak_workers(self) -> int:
        """The most workers it holds at once."""

    def with_absolute_paths(self) -> "Job":
        """Relative local paths made absolute: they mean where the job was started, not a worker's directory."""

    def with_queue_defaults(self, storage_uri: Optional[str], max_failures: int) -> "Job":
        """The queue's defaults where the spec leaves a field unset (a spec's own value wins)."""

    def read_locations(self) -> list[Field]:
        """Where it reads data from."""

    def write_locations(self) -> list[Field]:
        """Where it writes."""

    def registered_names(self) -> list[Field]:
        """The model names it registers."""

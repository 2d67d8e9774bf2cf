"""Where a job talks while it runs: a console (stderr: stdout stays for --json) and how it shows
training progress. The CLI draws a live bar; a queued job writes a line per epoch to its log
(which `vae submit --wait` follows); a sweep trial runs quietly."""

from __future__ import annotations

from dataclasses import dataclass, field

from rich.console import Console

from vae_service.training.progress import ProgressMode


@dataclass
class Reporter:
    console: Console = field(default_factory=lambda: Console(stderr=True))
    progress: ProgressMode = "bar"

    @classmethod
    def quiet(cls) -> "Reporter":
        return cls(Console(stderr=True, quiet=True), progress="off")

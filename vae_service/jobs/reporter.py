"""Where a job talks while it runs: a console (stderr: stdout stays for --json) and whether to
draw live progress. The CLI shows everything; a queued job or a sweep trial runs quietly."""

from __future__ import annotations

from dataclasses import dataclass, field

from rich.console import Console


@dataclass
class Reporter:
    console: Console = field(default_factory=lambda: Console(stderr=True))
    progress: bool = True

    @classmethod
    def quiet(cls) -> "Reporter":
        return cls(Console(stderr=True, quiet=True), progress=False)

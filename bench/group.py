"""What a benchmark group hands the report: its section of bench/RESULTS.md and whether it ran whole.

A group is a module with `run(settings, workdir) -> Section`; bench/__main__.py lists the groups."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    """How long each measurement lasts, the warm-up run before it (whose figures are dropped), and the folder
    of the results file, where charts go (a section links them by file name)."""

    duration_s: float
    warmup_s: float
    charts_dir: Path = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Section:
    """`markdown` starts with its own `##` heading. `broken` names what could not be measured for a reason other
    than a peer that is not installed (a timing never makes a group broken)."""

    markdown: str
    broken: list[str]

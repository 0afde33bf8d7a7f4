"""The PNG charts next to RESULTS.md, drawn with matplotlib (the `bench` extra; scripts/bench installs it).

Each function writes one chart into `Settings.charts_dir` and returns the markdown that shows it (an image link
by file name, since the charts sit beside the results file), or a line saying why there is none: a missing
matplotlib costs the charts, never the figures, so it is imported only where a chart is drawn. Figures use
matplotlib's object API (no pyplot), so nothing global is touched and no display is needed."""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.artist import Artist
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

WIDTH_IN, HEIGHT_IN, DPI = 8.0, 5.0, 100
COLOURS = ("tab:blue", "tab:green", "tab:red", "tab:orange", "tab:purple", "tab:brown")


def _figure() -> Figure | None:
    """A blank figure, or None when matplotlib is not installed."""
    if importlib.util.find_spec("matplotlib") is None:
        return None
    from matplotlib.figure import Figure

    return Figure(figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI, layout="constrained")


def _legend_below(axes: Axes, handles: list[Artist], labels: list[str]) -> None:
    """The legend under the plot, where it hides no bar or line."""
    axes.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=3, fontsize="small")


def _save(figure: Figure, directory: Path, name: str, title: str) -> str:
    figure.savefig(directory / name)
    return f"![{title}]({name})"


_MISSING = "(No chart: matplotlib is not installed; `pip install matplotlib` or run scripts/bench.)"


def latency_percentiles(
    directory: Path, name: str, connections: int, systems: Mapping[str, Sequence[tuple[float, float]]]
) -> str:
    """One line per system: latency (ms, log scale) against percentile, from (percentile, ms) points measured
    at `connections` connections."""
    figure = _figure()
    if figure is None:
        return _MISSING
    axes = figure.subplots()
    # Evenly spaced percentiles rather than a linear axis, which would crowd 99, 99.9 and 99.99 into one point.
    labels = [f"{p:g}" for p, _ in max(systems.values(), key=len)]
    for system, points in systems.items():
        axes.plot(range(len(points)), [ms for _, ms in points], marker="o", markersize=3, label=system)
    axes.set_xticks(range(len(labels)), labels)
    axes.set_yscale("log")
    axes.set_xlabel("percentile")
    axes.set_ylabel("latency (ms, log scale)")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    title = f"Latency distribution at {connections} connections, per system"
    axes.set_title(title)
    return _save(figure, directory, name, title)


def stacked_phases(directory: Path, name: str, phases: Sequence[str], trials: Sequence[Sequence[float]]) -> str:
    """One stacked bar per trial, a segment per phase (ms); `trials[i][j]` is trial i's phase j."""
    figure = _figure()
    if figure is None:
        return _MISSING
    axes = figure.subplots()
    numbers = list(range(1, len(trials) + 1))
    bottom = [0.0] * len(trials)
    for j, phase in enumerate(phases):
        heights = [max(trial[j], 0.0) for trial in trials]
        axes.bar(numbers, heights, bottom=bottom, label=phase)
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    from matplotlib.ticker import MaxNLocator

    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("trial")
    axes.set_ylabel("ms")
    _legend_below(axes, *axes.get_legend_handles_labels())
    title = "Cold start per trial, by phase"
    axes.set_title(title)
    return _save(figure, directory, name, title)


def timeline(
    directory: Path,
    name: str,
    seconds: Sequence[float],
    workers: Mapping[str, Sequence[float]],
    queue: Mapping[str, Sequence[float]],
    marks: Mapping[str, float],
) -> str:
    """Worker counts (left axis, steps) and queue figures (right axis) against seconds, with a vertical line at
    each of `marks` (label -> second). At most `len(COLOURS)` series in all."""
    figure = _figure()
    if figure is None:
        return _MISSING
    left = figure.subplots()
    right = left.twinx()
    # The two axes would each start matplotlib's colour cycle afresh: one cycle for both keeps lines apart.
    colours = iter(COLOURS)
    for label, values in workers.items():
        left.step(seconds, values, where="post", label=label, linewidth=2, color=next(colours))
    for label, values in queue.items():
        right.plot(seconds, values, label=label, linestyle="--", color=next(colours))
    from matplotlib.ticker import MaxNLocator

    left.yaxis.set_major_locator(MaxNLocator(integer=True))
    for label, second in marks.items():
        left.axvline(second, color="grey", linestyle=":")
        left.annotate(label, (second, 0), textcoords="offset points", xytext=(3, 3), fontsize="small")
    left.set_xlabel("seconds")
    left.set_ylabel("workers")
    right.set_ylabel("requests")
    handles, labels = left.get_legend_handles_labels()
    more_handles, more_labels = right.get_legend_handles_labels()
    _legend_below(left, handles + more_handles, labels + more_labels)
    title = "Workers and queue through a load step and back to zero"
    left.set_title(title)
    return _save(figure, directory, name, title)

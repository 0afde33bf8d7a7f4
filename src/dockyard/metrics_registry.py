"""Metrics made once per Prometheus registry.

A metric registers its name on a registry, and registering it twice is an error; yet a loop that the
supervisor restarts, or a second app built on the same context (tests, the stand-alone gateway), builds its
metrics again. `per_registry(build)` answers the set `build(registry)` made the first time for that registry,
and lets a registry that is gone take its set with it.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import TypeVar

from prometheus_client import CollectorRegistry

T = TypeVar("T")


def per_registry(build: Callable[[CollectorRegistry], T]) -> Callable[[CollectorRegistry], T]:
    """A function of a registry that calls `build` once per registry and answers that result ever after."""
    made: weakref.WeakKeyDictionary[CollectorRegistry, T] = weakref.WeakKeyDictionary()

    def for_registry(registry: CollectorRegistry) -> T:
        if registry not in made:
            made[registry] = build(registry)
        return made[registry]

    return for_registry

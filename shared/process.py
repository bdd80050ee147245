"""Process-wide tuning for a service process (the services' entry points and the benchmarks; not tests)."""

from __future__ import annotations

import gc

from shared.settings import ServiceSettings


def tune_process(settings: ServiceSettings) -> None:
    """Tune the garbage collector for a consumer's allocation pattern.

    A consumer batch allocates tens of thousands of short-lived objects (parsed events, models,
    rows); with the default first-generation threshold (700) the collector runs about a hundred
    times per batch and keeps walking every long-lived object. ``gc.freeze()`` moves the start-up
    objects (modules, models, routes) out of its reach and a larger threshold makes collections
    rare; reference counting still frees almost everything at once.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(settings.gc_gen0_threshold, 50, 100)

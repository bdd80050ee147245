"""Equity: does the trial take money disproportionately from patients in the most deprived areas,
from older or younger patients, or from one setting? Pure, no I/O.

One computation for the what-if comparison (over replayed events, ``whatif.equity``) and for the
published report (over settled episodes, ``GET /v1/publication/equity``): per stratum of each
dimension (IMD decile, age band, setting; ``unknown`` where the payment request did not say),
the settled episodes, the share that had an answer that decided them (response rate) and the
share with money diverted, each with a Wilson 95% interval, and the share of the held money
that was diverted (a ratio of sums, no interval: it is the money itself, not a sample of it).

A published stratum with fewer than ``min_episodes`` episodes keeps its episode count and loses
every other figure (``suppressed``), as the FFT publication suppresses small counts: a stratum
that small in one region could point to the few people in it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from shared.money import check
from shared.stats.proportions import wilson_interval

# The what-if output and the report name the setting "setting"; it is the request's service_type.
EQUITY_DIMENSIONS = ("imd_decile", "age_band", "setting")
AGE_BANDS = ("0-17", "18-44", "45-64", "65-74", "75+")
_AGE_ORDER = {band: i for i, band in enumerate(AGE_BANDS)}
UNKNOWN = "unknown"
INTERVAL_LEVEL = 0.95


@dataclass(frozen=True, slots=True)
class StratumTally:
    dimension: str
    stratum: str
    episodes: int
    responses: int  # episodes decided by a patient's answer
    diverted_episodes: int  # episodes with any money diverted
    held_pence: int
    diverted_pence: int

    def __post_init__(self) -> None:
        check(self.dimension in EQUITY_DIMENSIONS, f"unknown equity dimension {self.dimension!r}")
        check(0 <= self.responses <= self.episodes and 0 <= self.diverted_episodes <= self.episodes,
              "responses and diverted episodes are counts of the stratum's episodes")
        check(0 <= self.diverted_pence <= self.held_pence, "diverted money is part of the held money")


def stratum_order(dimension: str, value: str) -> tuple[int, object]:
    """Deciles in number order, age bands youngest first, settings alphabetically; unknown last."""
    if value == UNKNOWN:
        return (1, 0)
    if dimension == "imd_decile":
        return (0, int(value))
    if dimension == "age_band":
        return (0, _AGE_ORDER.get(value, 99))
    return (0, value)


def rate(k: int, n: int) -> dict[str, float | None]:
    """k of n with its Wilson 95% interval (None when n is 0)."""
    if not n:
        return {"rate": None, "low": None, "high": None}
    low, high = wilson_interval(k, n, INTERVAL_LEVEL)
    return {"rate": round(k / n, 6), "low": round(low, 6), "high": round(high, 6)}


def equity_rows(tallies: Iterable[StratumTally], *, min_episodes: int = 0) -> list[dict[str, Any]]:
    """The equity table, dimension by dimension in ``EQUITY_DIMENSIONS`` order, strata in
    ``stratum_order``; strata under ``min_episodes`` suppressed."""
    ordered = sorted(tallies, key=lambda t: (EQUITY_DIMENSIONS.index(t.dimension), stratum_order(t.dimension, t.stratum)))
    keys = [(t.dimension, t.stratum) for t in ordered]
    check(len(set(keys)) == len(keys), "one tally per dimension and stratum")
    out: list[dict[str, Any]] = []
    for t in ordered:
        if t.episodes < min_episodes:
            out.append({"dimension": t.dimension, "stratum": t.stratum, "episodes": t.episodes, "suppressed": True,
                        "responses": None, "response_rate": rate(0, 0), "diverted_episodes": None,
                        "diversion_rate": rate(0, 0), "held_pence": None, "diverted_pence": None,
                        "diverted_share_of_held": None})
            continue
        out.append({"dimension": t.dimension, "stratum": t.stratum, "episodes": t.episodes, "suppressed": False,
                    "responses": t.responses, "response_rate": rate(t.responses, t.episodes),
                    "diverted_episodes": t.diverted_episodes, "diversion_rate": rate(t.diverted_episodes, t.episodes),
                    "held_pence": t.held_pence, "diverted_pence": t.diverted_pence,
                    "diverted_share_of_held": round(t.diverted_pence / t.held_pence, 6) if t.held_pence else None})
    return out

"""Money arithmetic in integer pence and basis points.

Never float: every amount is an ``int`` of pence, every rate an ``int`` of basis points
(1 bps = 0.01%, 10_000 bps = 100%). Rounding is explicit and the parts of a split always
add back to the whole.
"""

from __future__ import annotations

from collections.abc import Sequence

BPS_WHOLE = 10_000


class InvariantError(RuntimeError):
    """A broken money invariant. Never caught: the process must stop loudly."""


def check(condition: bool, message: str) -> None:
    """An invariant check that survives ``python -O`` (unlike ``assert``)."""
    if not condition:
        raise InvariantError(message)


def bps_of(amount_pence: int, rate_bps: int) -> int:
    """``amount × rate`` rounded down to a whole penny.

    Rounding down is deliberate: the at-risk share and any diversion never exceed the
    exact proportion, so rounding always favours the provider.
    """
    check(isinstance(amount_pence, int) and isinstance(rate_bps, int), "pence and bps are ints")
    check(amount_pence >= 0, "amount must be non-negative")
    check(0 <= rate_bps <= BPS_WHOLE, "rate must be within 0..10000 bps")
    return amount_pence * rate_bps // BPS_WHOLE


def split_largest_remainder(total_pence: int, weights: Sequence[int]) -> list[int]:
    """Split ``total_pence`` in proportion to ``weights`` (largest remainder method).

    The parts are non-negative, add up exactly to ``total_pence`` and each part is within
    a penny of its exact share. Ties on the remainder go to the earlier weight, so the
    result is deterministic for a given order.
    """
    check(total_pence >= 0, "total must be non-negative")
    check(all(w >= 0 for w in weights), "weights must be non-negative")
    weight_sum = sum(weights)
    if not weights:
        check(total_pence == 0, "cannot split a non-zero total over no weights")
        return []
    if weight_sum == 0:
        check(total_pence == 0, "cannot split a non-zero total over zero weights")
        return [0] * len(weights)
    floors = [total_pence * w // weight_sum for w in weights]
    remainders = [total_pence * w % weight_sum for w in weights]
    short = total_pence - sum(floors)
    order = sorted(range(len(weights)), key=lambda i: (-remainders[i], i))
    for i in order[:short]:
        floors[i] += 1
    check(sum(floors) == total_pence, "largest remainder split must add up")
    return floors


def format_pence(amount_pence: int) -> str:
    """Human-readable pounds, e.g. -100000 -> '-£1,000.00'."""
    sign = "-" if amount_pence < 0 else ""
    pounds, pence = divmod(abs(amount_pence), 100)
    return f"{sign}£{pounds:,}.{pence:02d}"

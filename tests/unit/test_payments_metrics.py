"""The consumer's per-batch money counters move exactly as per-payment ones would."""

from __future__ import annotations

from prometheus_client import REGISTRY

from services.payments import metrics
from services.payments.store import Accepted


def _totals() -> dict[tuple[str, str], float]:
    return {(name, region): REGISTRY.get_sample_value(f"{name}_total", {"region_code": region}) or 0.0
            for name in ("payments_billed_pence", "payments_held_pence") for region in (*metrics.REGIONS, metrics.OTHER)}


def _accepted(status: str, at_risk_pence: int) -> Accepted:
    return Accepted("pay-1", "ep-1", status, "held", at_risk_pence, None, None, "hold:pay-1")  # type: ignore[arg-type]


BATCH = [(_accepted("created", 100), 1_000, "Y56"), (_accepted("created", 0), 500, "Y56"),
         (_accepted("duplicate", 7), 70, "Y58"), (_accepted("created", 30), 300, None),
         (_accepted("created", 9), 90, "ZZZ"), (_accepted("created", 1), 10, "Y63")]


def test_payments_accepted_moves_the_counters_as_payment_accepted_one_by_one() -> None:
    before = _totals()
    for outcome, amount, region in BATCH:
        metrics.payment_accepted(outcome, amount, region)
    one_by_one = {k: v - before[k] for k, v in _totals().items()}
    before = _totals()
    metrics.payments_accepted(BATCH)
    batched = {k: v - before[k] for k, v in _totals().items()}
    assert batched == one_by_one
    assert batched[("payments_billed_pence", "Y56")] == 1_500 and batched[("payments_held_pence", "other")] == 39


def test_an_empty_batch_moves_nothing() -> None:
    before = _totals()
    metrics.payments_accepted([])
    assert _totals() == before

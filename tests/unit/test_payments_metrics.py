"""Money counters after a committed batch: billed and held per region, for new episodes only."""

from __future__ import annotations

from datetime import date

from prometheus_client import REGISTRY

from services.payments import domain, metrics


def _totals() -> dict[tuple[str, str], float]:
    return {(name, region): REGISTRY.get_sample_value(f"{name}_total", {"region_code": region}) or 0.0
            for name in ("payments_billed_pence", "payments_held_pence") for region in (*metrics.REGIONS, metrics.OTHER)}


def _episode(n: int, amount_pence: int, at_risk_pence: int, region_code: str) -> domain.Episode:
    return domain.Episode(f"pay-{n}", f"ep-{n}", "QWE", "RJ1", region_code, "gp", date(2026, 5, 1), amount_pence, at_risk_pence,
                          "s", 1, "two_phase")


CREATED = [_episode(1, 1_000, 100, "Y56"), _episode(2, 500, 0, "Y56"), _episode(3, 300, 30, "Y99"),
           _episode(4, 90, 9, "ZZZ"), _episode(5, 10, 1, "Y63")]


def test_payments_accepted_counts_pence_per_region_and_folds_unknown_regions_into_other() -> None:
    before = _totals()
    metrics.payments_accepted(CREATED)
    moved = {k: v - before[k] for k, v in _totals().items() if v != before[k]}
    assert moved == {
        ("payments_billed_pence", "Y56"): 1_500, ("payments_held_pence", "Y56"): 100,
        ("payments_billed_pence", "other"): 390, ("payments_held_pence", "other"): 39,
        ("payments_billed_pence", "Y63"): 10, ("payments_held_pence", "Y63"): 1,
    }


def test_an_empty_batch_moves_nothing() -> None:
    before = _totals()
    metrics.payments_accepted([])
    assert _totals() == before

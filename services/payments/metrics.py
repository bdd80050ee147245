"""Money metrics for the payments service (Prometheus, served on /metrics).

Every money counter is in integer pence and labelled by ``region_code`` only: the seven NHS
regions, so cardinality is bounded. Never label by provider, commissioner or episode (thousands
of series; and the per-provider figures already exist in the API and the settlement reports).

Counters move only *after* the database transaction that records the fact has committed, and
only for new facts (a payment accepted as "created", a settlement unit that wrote a report, an
appeal decision that changed something), so retries, duplicates and redeliveries never double
count. A process restart resets them (Prometheus ``rate``/``increase`` handle resets); the
database and the ledger stay the source of truth.

Invariant per region (over the life of one process): held = released + diverted + still held.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from prometheus_client import Counter, Histogram

log = logging.getLogger(__name__)

# The seven NHS England regions (shared/reference/regions.csv). Codes outside this set (a
# deployment's own reference data) are reported as "other", so the label can never grow unbounded.
REGIONS = ("Y56", "Y58", "Y59", "Y60", "Y61", "Y62", "Y63")
OTHER = "other"
TRIGGERS = ("api", "scheduler")

BILLED = Counter("payments_billed_pence", "Pence requested by commissioners in accepted (new) payments", ["region_code"])
HELD = Counter("payments_held_pence", "Pence held at risk when a new payment was accepted", ["region_code"])
RELEASED = Counter("payments_released_pence", "At-risk pence released to providers by settlement", ["region_code"])
DIVERTED = Counter("payments_diverted_pence", "At-risk pence diverted to the regional improvement fund by settlement", ["region_code"])
APPEALED_BACK = Counter("payments_appealed_back_pence", "Diverted pence returned fund -> provider by upheld appeals", ["region_code"])
SETTLEMENT_RUNS = Counter("payments_settlement_runs", "Settlement runs started, by trigger", ["trigger"])
SETTLEMENT_UNITS = Counter("payments_settlement_units", "Settlement units (provider, period, scheme) that wrote a report", ["region_code"])
LEDGER_DISCREPANCIES = Counter(
    "payments_ledger_discrepancies_total",
    "Transfers payments asked for that the ledger refused or recorded otherwise (GET /v1/ledger-discrepancies)")
SETTLEMENT_SECONDS = Histogram(
    "settlement_duration_seconds",
    "Time to settle one provider-period-scheme unit (one transaction, including commit)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)

# Pre-create every series at 0 so dashboards and rate() see the regions before the first event.
for _region in (*REGIONS, OTHER):
    for _counter in (BILLED, HELD, RELEASED, DIVERTED, APPEALED_BACK, SETTLEMENT_UNITS):
        _counter.labels(_region)
for _trigger in (*TRIGGERS, OTHER):
    SETTLEMENT_RUNS.labels(_trigger)


def region_label(region_code: str | None) -> str:
    return region_code if region_code in REGIONS else OTHER


def payments_accepted(created: Iterable[Any]) -> None:
    """Call after the accepting transaction committed, with the episodes it created (never the
    duplicates): billed and held per region, one increment per region and counter."""
    billed_pence: dict[str, int] = {}
    held_pence: dict[str, int] = {}
    for e in created:
        region = region_label(e.region_code)
        billed_pence[region] = billed_pence.get(region, 0) + e.amount_pence
        if e.at_risk_pence:
            held_pence[region] = held_pence.get(region, 0) + e.at_risk_pence
    for region, pence in billed_pence.items():
        BILLED.labels(region).inc(pence)
    for region, pence in held_pence.items():
        HELD.labels(region).inc(pence)


def settlement_run(trigger: str) -> None:
    SETTLEMENT_RUNS.labels(trigger if trigger in TRIGGERS else OTHER).inc()


def unit_settled(summary: dict[str, Any] | None) -> None:
    """Call after the unit's transaction committed, with its report (None: nothing new)."""
    if not summary:
        return
    region = region_label(summary.get("region_code"))
    SETTLEMENT_UNITS.labels(region).inc()
    RELEASED.labels(region).inc(summary["released_pence"])
    DIVERTED.labels(region).inc(summary["diverted_pence"])


def appeal_decided(appeal: dict[str, Any], changed: bool) -> None:
    """Call after the decision committed. Counts an upheld appeal once (a repeat changes nothing)."""
    if changed and appeal.get("status") == "upheld":
        APPEALED_BACK.labels(region_label(appeal.get("region_code"))).inc(appeal.get("diverted_pence") or 0)


def ledger_discrepancies(found: list[tuple[str, str]]) -> None:
    """Call after the answers' transaction committed, with the new discrepancies it recorded."""
    if not found:
        return
    LEDGER_DISCREPANCIES.inc(len(found))
    for transfer_id, why in found[:20]:
        log.error("ledger discrepancy on %s: %s", transfer_id, why)
    if len(found) > 20:
        log.error("... and %d more ledger discrepancies (GET /v1/ledger-discrepancies)", len(found) - 20)

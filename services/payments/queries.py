"""The payments service's read models: what the API shows, read from PostgreSQL.

Nothing here writes. The episode view derives a provisional decision from the answers so far with
the same pure core settlement uses (``domain.decide``); the figures are sums over the same rows
settlement wrote. Bindings are applied by the routes (``api.py``).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import asyncpg

from services.payments import domain, review
from services.payments.schemes import SchemeBook


# ---------------------------------------------------------------------------------------------
# Rows as the pure core's values (the store reads them the same way)
# ---------------------------------------------------------------------------------------------
def episode_of(r: asyncpg.Record) -> domain.Episode:
    return domain.Episode(
        r["payment_id"], r["episode_id"], r["commissioner_code"], r["provider_code"], r["region_code"],
        r["service_type"], r["activity_date"], r["amount_pence"], r["at_risk_pence"], r["scheme_id"], r["scheme_version"],
        r["hold_model"],
    )


def answer_of(r: asyncpg.Record) -> domain.Answer:
    return domain.Answer(r["submission_id"], r["episode_id"], r["instrument"], r["authored_at"],
                         r["fft_answer"], r["patient_choice"])


# ---------------------------------------------------------------------------------------------
# Episodes
# ---------------------------------------------------------------------------------------------
async def episode_provider(conn: asyncpg.Connection, episode_id: str) -> str | None:
    """The episode's provider (the routes check the token acts for it), or None: no such episode."""
    return await conn.fetchval("SELECT provider_code FROM episodes WHERE episode_id = $1", episode_id)


def _answer_role(submission_id: str, decision: dict[str, Any] | None) -> str:
    if decision is None:
        return "recorded (episode not in trial)"
    if submission_id == decision.get("deciding_submission_id"):
        return "deciding"
    if submission_id in decision.get("amendments", ()):
        return "amendment (kept; changes money only if the scheme allows amendments)"
    if submission_id in decision.get("ignored", ()):
        return "ignored (outside the decision window)"
    return "received after settlement (kept; does not change money)"


async def episode_view(conn: asyncpg.Connection, episode_id: str, book: SchemeBook) -> dict[str, Any] | None:
    r = await conn.fetchrow(
        "SELECT e.*, s.run_at AS settled_at FROM episodes e LEFT JOIN settlements s USING (settlement_id)"
        " WHERE e.episode_id = $1", episode_id)
    if r is None:
        return None
    answers = await conn.fetch("SELECT * FROM answers WHERE episode_id = $1 ORDER BY authored_at, submission_id", episode_id)
    transfers = await conn.fetch("SELECT * FROM ledger_transfers WHERE episode_id = $1 ORDER BY requested_at, transfer_id", episode_id)
    scheme = book.get(r["scheme_id"], r["scheme_version"]) if r["scheme_id"] is not None else None
    decision: dict[str, Any] | None
    if r["decision"] is not None:
        decision = {**json.loads(r["decision"]), "final": True}
    elif scheme is not None:
        d = domain.decide(episode_of(r), [answer_of(a) for a in answers], scheme)
        decision = {**asdict(d), "final": False}
    else:
        decision = None
    appeal = await appeal_view(conn, episode_id)
    appeal_info: dict[str, Any] = {"appeal": appeal}
    if appeal is None and r["status"] == "settled" and scheme is not None and r["settled_at"] is not None:
        appeal_info["appealable_until"] = domain.appeal_deadline(r["settled_at"], scheme) if r["diverted_pence"] else None
    return {
        "episode_id": r["episode_id"],
        "payment_id": r["payment_id"],
        "commissioner_code": r["commissioner_code"],
        "provider_code": r["provider_code"],
        "region_code": r["region_code"],
        "service_type": r["service_type"],
        "activity_date": r["activity_date"],
        "period": r["period"],
        "status": r["status"],
        "amount_pence": r["amount_pence"],
        "at_risk_pence": r["at_risk_pence"],
        "released_pence": r["released_pence"],
        "diverted_pence": r["diverted_pence"],
        "appealed_back_pence": appeal["diverted_pence"] if appeal and "upheld" in (
            appeal["status"], (appeal["review"] or {}).get("status")) else 0,
        "paid_now_pence": r["amount_pence"] - r["at_risk_pence"],
        "hold_model": r["hold_model"],
        "scheme": {"scheme_id": r["scheme_id"], "version": r["scheme_version"]} if r["scheme_id"] else None,
        "settlement_id": r["settlement_id"],
        "settled_at": r["settled_at"],
        "decision": decision,
        "answers": [
            {"submission_id": a["submission_id"], "instrument": a["instrument"], "fft_answer": a["fft_answer"],
             "patient_choice": a["patient_choice"], "authored_at": a["authored_at"], "received_at": a["received_at"],
             "amends_submission_id": a["amends_submission_id"], "role": _answer_role(a["submission_id"], decision)}
            for a in answers
        ],
        "ledger_transfers": [
            {"transfer_id": t["transfer_id"], "kind": t["kind"], "status": t["status"], "entry_seq": t["entry_seq"],
             "reason": t["reason"]}
            for t in transfers
        ],
        **appeal_info,
    }


# ---------------------------------------------------------------------------------------------
# Appeals
# ---------------------------------------------------------------------------------------------
async def appeal_view(conn: asyncpg.Connection, episode_id: str) -> dict[str, Any] | None:
    a = await conn.fetchrow("SELECT * FROM appeals WHERE episode_id = $1", episode_id)
    if a is None:
        return None
    events = await conn.fetch("SELECT step, actor, reason, at FROM appeal_events WHERE appeal_id = $1 ORDER BY id", a["appeal_id"])
    return {
        "appeal_id": a["appeal_id"],
        "episode_id": a["episode_id"],
        "payment_id": a["payment_id"],
        "provider_code": a["provider_code"],
        "region_code": a["region_code"],
        "period": a["period"],
        "diverted_pence": a["diverted_pence"],
        "status": a["status"],
        "reason": a["reason"],
        "appealed_by": a["appealed_by"],
        "appealed_at": a["appealed_at"],
        "deadline": a["deadline"],
        "decided_by": a["decided_by"],
        "decided_at": a["decided_at"],
        "decision_reason": a["decision_reason"],
        "transfer_id": a["transfer_id"],
        "review": None if a["review_status"] is None else {
            "status": a["review_status"], "requested_by": a["review_requested_by"], "requested_at": a["review_requested_at"],
            "reason": a["review_request_reason"], "decided_by": a["review_decided_by"], "decided_at": a["review_decided_at"],
            "decision_reason": a["review_decision_reason"], "transfer_id": a["review_transfer_id"]},
        "history": [dict(e) for e in events],
    }


async def list_appeals(conn: asyncpg.Connection, *, status: str | None, provider_code: str | None, limit: int) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT episode_id FROM appeals WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR provider_code = $2)"
        " ORDER BY appealed_at, appeal_id LIMIT $3", status, provider_code, limit)
    return [v for r in rows if (v := await appeal_view(conn, r["episode_id"])) is not None]


# ---------------------------------------------------------------------------------------------
# Settlements
# ---------------------------------------------------------------------------------------------
async def settlements(conn: asyncpg.Connection, period: str) -> list[dict[str, Any]]:
    """A period's settlement reports, in id order (a unit's supplementary ``:late-N`` after it)."""
    rows = await conn.fetch("SELECT * FROM settlements WHERE period = $1 ORDER BY settlement_id", period)
    return [{**dict(r), "scheme": f"{r['scheme_id']}@{r['scheme_version']}"} for r in rows]


async def settlements_by_id(conn: asyncpg.Connection, settlement_ids: list[str]) -> list[dict[str, Any]]:
    rows = await conn.fetch("SELECT * FROM settlements WHERE settlement_id = ANY($1::text[]) ORDER BY settlement_id",
                            settlement_ids)
    return [{**dict(r), "scheme": f"{r['scheme_id']}@{r['scheme_version']}"} for r in rows]


# ---------------------------------------------------------------------------------------------
# Statements (scheme option [review], review.py)
# ---------------------------------------------------------------------------------------------
STATEMENT_COLUMNS = ("statement_id, provider_code, region_code, period, scheme_id, scheme_version, status, created_at,"
                     " window_closes_at, episode_ids, accepted_by, accepted_at")


def statement_of(r: asyncpg.Record) -> review.Statement:
    return review.Statement(r["statement_id"], r["provider_code"], r["region_code"], r["period"], r["scheme_id"],
                            r["scheme_version"], r["status"], r["created_at"], r["window_closes_at"], tuple(r["episode_ids"]),
                            r["accepted_by"], r["accepted_at"])


async def statement_provider(conn: asyncpg.Connection, statement_id: str) -> str | None:
    """The statement's provider (the routes check the token's binding), or None: no such statement."""
    return await conn.fetchval("SELECT provider_code FROM statements WHERE statement_id = $1", statement_id)


async def statement_steps(conn: asyncpg.Connection, statement_id: str) -> list[dict[str, Any]]:
    rows = await conn.fetch("SELECT step, actor, reason, episode_id, action, at FROM statement_events"
                            " WHERE statement_id = $1 ORDER BY id", statement_id)
    return [dict(r) for r in rows]


def _statement_summary(r: asyncpg.Record) -> dict[str, Any]:
    report = json.loads(r["final_report"] if r["final_report"] is not None else r["report"])
    figures = {k: report.get(k) for k in ("episodes", "responses", "billed_pence", "held_pence", "released_pence",
                                          "diverted_pence", "min_sample_applied", "cap_applied", "exempted", "gate_opened")}
    return {
        "statement_id": r["statement_id"], "provider_code": r["provider_code"], "region_code": r["region_code"],
        "period": r["period"], "scheme": f"{r['scheme_id']}@{r['scheme_version']}", "status": r["status"],
        "created_by": r["created_by"], "created_at": r["created_at"], "window_closes_at": r["window_closes_at"],
        "accepted_by": r["accepted_by"], "accepted_at": r["accepted_at"], "finalised_by": r["finalised_by"],
        "finalised_at": r["finalised_at"], "settlement_id": r["settlement_id"], **figures,
        "url": f"/v1/statements/{r['statement_id']}",
    }


async def list_statements(conn: asyncpg.Connection, *, period: str | None, provider_code: str | None,
                          limit: int) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT * FROM statements WHERE ($1::text IS NULL OR period = $1) AND ($2::text IS NULL OR provider_code = $2)"
        " ORDER BY period, provider_code, statement_id LIMIT $3", period, provider_code, limit)
    return [_statement_summary(r) for r in rows]


async def statement_view(conn: asyncpg.Connection, statement_id: str) -> dict[str, Any] | None:
    """A statement with its provisional report, its final report once final, its corrections and
    queries, and every step (who, what, why, when)."""
    r = await conn.fetchrow("SELECT * FROM statements WHERE statement_id = $1", statement_id)
    if r is None:
        return None
    history = await statement_steps(conn, statement_id)
    return {
        **_statement_summary(r),
        "provisional_report": json.loads(r["report"]),
        "final_report": json.loads(r["final_report"]) if r["final_report"] is not None else None,
        "corrections": [h for h in history if h["step"] == "correction"],
        "queries": [h for h in history if h["step"] == "query"],
        "history": history,
    }


# ---------------------------------------------------------------------------------------------
# Exemptions
# ---------------------------------------------------------------------------------------------
async def exemptions(conn: asyncpg.Connection, period: str | None) -> list[dict[str, Any]]:
    """Exemptions (of one period, or all), oldest first; the routes keep those the binding sees."""
    rows = await conn.fetch(
        "SELECT provider_code, period, reason, exempted_by, exempted_at FROM exemptions"
        " WHERE ($1::text IS NULL OR period = $1) ORDER BY exempted_at, provider_code, period", period)
    return [dict(r) for r in rows]


# ---------------------------------------------------------------------------------------------
# Figures per period
# ---------------------------------------------------------------------------------------------
_FIGURES = """
SELECT count(*)                                                        AS episodes,
       coalesce(sum(e.amount_pence), 0)                                AS billed_pence,
       coalesce(sum(e.amount_pence) FILTER (WHERE e.scheme_id IS NOT NULL), 0) AS in_scope_billed_pence,
       coalesce(sum(e.amount_pence - e.at_risk_pence), 0)              AS paid_now_pence,
       coalesce(sum(e.at_risk_pence), 0)                               AS held_pence,
       coalesce(sum(e.at_risk_pence) FILTER (WHERE e.status = 'held'), 0) AS still_held_pence,
       coalesce(sum(e.released_pence), 0)                              AS released_pence,
       coalesce(sum(e.diverted_pence), 0)                              AS diverted_pence,
       coalesce(sum(a.diverted_pence) FILTER (WHERE 'upheld' IN (a.status, a.review_status)), 0) AS appealed_back_pence,
       count(a.appeal_id) FILTER (WHERE a.status = 'open')             AS appeals_open,
       count(a.appeal_id) FILTER (WHERE 'upheld' IN (a.status, a.review_status)) AS appeals_upheld,
       count(a.appeal_id) FILTER (WHERE a.status = 'rejected' AND a.review_status IS DISTINCT FROM 'upheld') AS appeals_rejected,
       count(*) FILTER (WHERE EXISTS (SELECT 1 FROM answers x WHERE x.episode_id = e.episode_id)) AS responses
  FROM episodes e LEFT JOIN appeals a ON a.episode_id = e.episode_id
 WHERE e.period = $1 AND {where}
"""


def _figures(row: asyncpg.Record) -> dict[str, Any]:
    out = {k: int(row[k]) for k in row.keys()}
    out["net_diverted_pence"] = out["diverted_pence"] - out["appealed_back_pence"]
    return out


async def provider_figures(conn: asyncpg.Connection, provider_code: str, period: str) -> dict[str, Any]:
    """What a provider billed, had held, got released, lost, won back on appeal, in one period.

    ``responses`` counts episodes with at least one answer received so far; the settlement
    reports carry the count that was used (answers within each decision window)."""
    row = await conn.fetchrow(_FIGURES.format(where="e.provider_code = $2"), period, provider_code)
    settlements = await conn.fetch(
        "SELECT settlement_id, scheme_id, scheme_version, run_at, run_by, responses, min_sample_applied, cap_applied,"
        " cap_pence, diverted_pence FROM settlements WHERE provider_code = $1 AND period = $2 ORDER BY settlement_id",
        provider_code, period)
    return {"provider_code": provider_code, "period": period, **_figures(row),
            "settlements": [dict(s) for s in settlements]}


async def fund_figures(conn: asyncpg.Connection, region_code: str, period: str) -> dict[str, Any]:
    """What a region's fund received from one period's episodes, net of upheld appeals, by provider."""
    row = await conn.fetchrow(_FIGURES.format(where="e.region_code = $2"), period, region_code)
    by_provider = await conn.fetch(
        "SELECT e.provider_code, coalesce(sum(e.diverted_pence), 0) AS diverted_pence,"
        " coalesce(sum(a.diverted_pence) FILTER (WHERE 'upheld' IN (a.status, a.review_status)), 0) AS appealed_back_pence"
        " FROM episodes e LEFT JOIN appeals a ON a.episode_id = e.episode_id"
        " WHERE e.period = $1 AND e.region_code = $2 GROUP BY e.provider_code ORDER BY e.provider_code",
        period, region_code)
    return {"region_code": region_code, "period": period, **_figures(row),
            "providers": [{"provider_code": p["provider_code"], "diverted_pence": int(p["diverted_pence"]),
                           "appealed_back_pence": int(p["appealed_back_pence"]),
                           "net_diverted_pence": int(p["diverted_pence"]) - int(p["appealed_back_pence"])}
                          for p in by_provider]}


async def ledger_discrepancies(conn: asyncpg.Connection, *, overdue_s: int, limit: int) -> list[dict[str, Any]]:
    """Transfers with a discrepancy (reconcile.py) and those still unanswered after ``overdue_s``,
    oldest first."""
    rows = await conn.fetch(
        "SELECT t.transfer_id, t.episode_id, t.kind, t.expected_status, t.status, t.reason, t.discrepancy,"
        " t.requested_at, t.answered_at, e.provider_code, e.region_code, e.payment_id"
        " FROM ledger_transfers t JOIN episodes e ON e.episode_id = t.episode_id"
        " WHERE t.discrepancy IS NOT NULL"
        " OR (t.status = 'requested' AND t.requested_at < now() - make_interval(secs => $1))"
        " ORDER BY t.requested_at, t.transfer_id LIMIT $2",
        overdue_s, limit,
    )
    return [{**dict(r), "problem": r["discrepancy"] or f"no answer from the ledger after {overdue_s} s"} for r in rows]

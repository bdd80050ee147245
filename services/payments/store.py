"""The payments service's PostgreSQL adapter: accepting payments, recording answers, settling.

Every state change and the ledger transfer requests it causes commit in one transaction (the
outbox), so nothing is half-written and nothing is lost if Kafka is down.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from datetime import date
from typing import Any, Literal

import asyncpg

from services.payments import domain
from services.payments.schemes import Scheme, SchemeBook
from shared.contracts import FeedbackReceived, PaymentRequested, TransferPosted, TransferRequested, envelope
from shared.outbox import enqueue, outbox_row
from shared.reference import ReferenceData
from shared.topics import LEDGER_TRANSFER_REQUESTS

PRODUCER = "payments"


class InputError(ValueError):
    """A request that can never succeed (unknown code, ...). HTTP 422; on Kafka, dead-lettered."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class Conflict(ValueError):
    """The same id was used before with different content. HTTP 409; on Kafka, dead-lettered."""


@dataclass(frozen=True)
class Accepted:
    payment_id: str
    episode_id: str
    status: Literal["created", "duplicate"]
    episode_status: str
    at_risk_pence: int
    scheme_id: str | None
    scheme_version: int | None
    hold_transfer_id: str


def request_fingerprint(req: PaymentRequested) -> str:
    return hashlib.sha256(req.model_dump_json().encode()).hexdigest()


def validate_codes(req: PaymentRequested, ref: ReferenceData) -> str:
    """Check codes against reference data; returns the provider's region."""
    if req.commissioner_code not in ref.commissioners:
        raise InputError("commissioner_code", f"{req.commissioner_code} is not a known integrated care board")
    region = ref.region_of_provider(req.provider_code)
    if region is None:
        raise InputError("provider_code", f"{req.provider_code} is not a known provider")
    return region


def _transfer_rows(transfers: list[tuple[TransferRequested, str]], correlation_id: str, causation_id: str | None):  # type: ignore[no-untyped-def]
    for transfer, _episode in transfers:
        env = envelope(transfer, "ledger.transfer-requested.v1", producer=PRODUCER,
                       correlation_id=correlation_id, causation_id=causation_id)
        yield outbox_row(LEDGER_TRANSFER_REQUESTS.name, transfer.transfer_id, env)


async def _request_transfers(conn: asyncpg.Connection, transfers: list[tuple[TransferRequested, str]],
                             correlation_id: str, causation_id: str | None) -> None:
    if not transfers:
        return
    await conn.executemany(
        "INSERT INTO ledger_transfers(transfer_id, episode_id, kind) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        [(t.transfer_id, episode, t.cause.kind) for t, episode in transfers],
    )
    await enqueue(conn, _transfer_rows(transfers, correlation_id, causation_id))


async def accept_payment(
    conn: asyncpg.Connection, req: PaymentRequested, *, book: SchemeBook, ref: ReferenceData,
    correlation_id: str, causation_id: str | None = None,
) -> Accepted:
    """Idempotent on payment_id and episode_id. Caller provides the transaction."""
    region = validate_codes(req, ref)
    scheme = book.select(activity_date=req.activity_date, region=region, commissioner=req.commissioner_code,
                         provider=req.provider_code, service_type=req.service_type)
    episode, transfer = domain.hold(
        payment_id=req.payment_id, episode_id=req.episode_id, commissioner_code=req.commissioner_code,
        provider_code=req.provider_code, region_code=region, service_type=req.service_type,
        activity_date=req.activity_date, amount_pence=req.amount_pence, scheme=scheme,
    )
    fp = request_fingerprint(req)
    status = "held" if episode.at_risk_pence else "paid_in_full"
    inserted = await conn.fetchval(
        "INSERT INTO episodes(episode_id, payment_id, commissioner_code, provider_code, region_code, service_type,"
        " activity_date, period, amount_pence, at_risk_pence, scheme_id, scheme_version, request_fingerprint, request,"
        " correlation_id, status)"
        " VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14::jsonb,$15,$16) ON CONFLICT DO NOTHING RETURNING 1",
        req.episode_id, req.payment_id, req.commissioner_code, req.provider_code, region, req.service_type,
        req.activity_date, episode.period, req.amount_pence, episode.at_risk_pence, episode.scheme_id,
        episode.scheme_version, fp, req.model_dump_json(), correlation_id, status,
    )
    if not inserted:
        prior = await conn.fetchrow(
            "SELECT * FROM episodes WHERE payment_id = $1 OR episode_id = $2 ORDER BY (payment_id = $1) DESC LIMIT 1",
            req.payment_id, req.episode_id,
        )
        if prior is None:  # pragma: no cover - the conflicting row must exist
            raise RuntimeError("insert conflicted but no prior row found")
        if prior["request_fingerprint"] != fp:
            before = json.loads(prior["request"])
            after = json.loads(req.model_dump_json())
            diff = sorted(k for k in after if before.get(k) != after.get(k))
            raise Conflict(
                f"payment {prior['payment_id']} / episode {prior['episode_id']} was already requested with different "
                f"{', '.join(diff)}"
            )
        return Accepted(req.payment_id, req.episode_id, "duplicate", prior["status"], prior["at_risk_pence"],
                        prior["scheme_id"], prior["scheme_version"], domain.hold_transfer_id(req.payment_id))
    await _request_transfers(conn, [(transfer, req.episode_id)], correlation_id, causation_id)
    return Accepted(req.payment_id, req.episode_id, "created", status, episode.at_risk_pence,
                    episode.scheme_id, episode.scheme_version, transfer.transfer_id)


async def record_answer(conn: asyncpg.Connection, fb: FeedbackReceived) -> bool:
    """Keep an answer that can decide an episode. Returns False for duplicates and other instruments."""
    if fb.instrument not in ("fft", "patient_power"):
        return False
    inserted = await conn.fetchval(
        "INSERT INTO answers(submission_id, episode_id, provider_code, instrument, fft_answer, patient_choice,"
        " authored_at, amends_submission_id) VALUES ($1,$2,$3,$4,$5,$6,$7,$8) ON CONFLICT DO NOTHING RETURNING 1",
        fb.submission_id, fb.episode_id, fb.provider_code, fb.instrument,
        int(fb.fft_answer) if fb.fft_answer is not None else None, fb.patient_choice, fb.authored_at,
        fb.amends_submission_id,
    )
    return bool(inserted)


async def record_ledger_answer(conn: asyncpg.Connection, posted: TransferPosted) -> None:
    await conn.execute(
        "UPDATE ledger_transfers SET status = $2, entry_seq = $3, reason = $4 WHERE transfer_id = $1 AND status <> 'posted'",
        posted.transfer_id, posted.status, posted.entry_seq, posted.reason,
    )


# ---------------------------------------------------------------------------------------------
# Settlement
# ---------------------------------------------------------------------------------------------
def _episode(r: asyncpg.Record) -> domain.Episode:
    return domain.Episode(
        r["payment_id"], r["episode_id"], r["commissioner_code"], r["provider_code"], r["region_code"],
        r["service_type"], r["activity_date"], r["amount_pence"], r["at_risk_pence"], r["scheme_id"], r["scheme_version"],
    )


def _answer(r: asyncpg.Record) -> domain.Answer:
    return domain.Answer(r["submission_id"], r["episode_id"], r["instrument"], r["authored_at"],
                         r["fft_answer"], r["patient_choice"])


async def settle_unit(
    conn: asyncpg.Connection, scheme: Scheme, *, provider_code: str, period: str, run_by: str, correlation_id: str,
) -> dict[str, Any] | None:
    """Settle one provider-period-scheme unit in the caller's transaction. Idempotent: held
    episodes only, so a second run finds nothing to do and returns None."""
    rows = await conn.fetch(
        "SELECT * FROM episodes WHERE provider_code = $1 AND period = $2 AND scheme_id = $3 AND scheme_version = $4"
        " AND status = 'held' ORDER BY episode_id FOR UPDATE",
        provider_code, period, scheme.scheme_id, scheme.version,
    )
    if not rows:
        return None
    episodes = [_episode(r) for r in rows]
    answers = [_answer(r) for r in await conn.fetch(
        "SELECT * FROM answers WHERE episode_id = ANY($1::text[])", [e.episode_id for e in episodes])]
    base_id = f"{provider_code}:{period}:{scheme.key}"
    earlier = await conn.fetchval("SELECT count(*) FROM settlements WHERE settlement_id LIKE $1", base_id + "%")
    # A period settles once. Episodes that arrive after it closed are released in full in a
    # supplementary settlement: the cap and minimum sample cannot be applied fairly twice.
    late = earlier > 0
    report = domain.settle(episodes, answers, scheme, provider_code=provider_code, period=period, divert=not late)
    settlement_id = base_id if not late else f"{base_id}:late-{earlier}"
    await conn.execute(
        "INSERT INTO settlements(settlement_id, provider_code, region_code, period, scheme_id, scheme_version, run_by,"
        " billed_pence, held_pence, released_pence, diverted_pence, responses, episodes, min_sample_applied,"
        " cap_applied, cap_pence) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16)",
        settlement_id, provider_code, report.region_code, period, scheme.scheme_id, scheme.version, run_by,
        report.billed_pence, report.held_pence, report.released_pence, report.diverted_pence, report.responses,
        report.episodes, report.min_sample_applied, report.cap_applied, report.cap_pence,
    )
    await conn.executemany(
        "UPDATE episodes SET status = 'settled', settlement_id = $2, released_pence = $3, diverted_pence = $4,"
        " decision = $5::jsonb WHERE episode_id = $1",
        [
            (line.episode.episode_id, settlement_id, line.released_pence, line.diverted_pence,
             json.dumps({**asdict(line.decision), "steps": list(line.steps)}, default=str))
            for line in report.lines
        ],
    )
    await _request_transfers(
        conn, [(line.transfer, line.episode.episode_id) for line in report.lines if line.transfer], correlation_id, None
    )
    return settlement_summary(settlement_id, report)


def settlement_summary(settlement_id: str, report: domain.SettlementReport) -> dict[str, Any]:
    return {
        "settlement_id": settlement_id,
        "provider_code": report.provider_code,
        "region_code": report.region_code,
        "period": report.period,
        "scheme": report.scheme_key,
        "billed_pence": report.billed_pence,
        "held_pence": report.held_pence,
        "released_pence": report.released_pence,
        "diverted_pence": report.diverted_pence,
        "responses": report.responses,
        "episodes": report.episodes,
        "min_sample_applied": report.min_sample_applied,
        "cap_applied": report.cap_applied,
        "cap_pence": report.cap_pence,
    }


async def run_settlement(
    pool: asyncpg.Pool, book: SchemeBook, *, period: str, provider_code: str | None, run_by: str, correlation_id: str,
) -> list[dict[str, Any]]:
    """Settle every unsettled unit of a period (optionally one provider), one transaction each."""
    async with pool.acquire() as conn:
        units = await conn.fetch(
            "SELECT DISTINCT provider_code, scheme_id, scheme_version FROM episodes"
            " WHERE period = $1 AND status = 'held' AND ($2::text IS NULL OR provider_code = $2)"
            " ORDER BY provider_code, scheme_id, scheme_version",
            period, provider_code,
        )
    reports = []
    for unit in units:
        scheme = book.get(unit["scheme_id"], unit["scheme_version"])
        if scheme is None:
            raise InputError("scheme", f"{unit['scheme_id']}@{unit['scheme_version']} is no longer loaded; cannot settle")
        async with pool.acquire() as conn:
            async with conn.transaction():
                summary = await settle_unit(conn, scheme, provider_code=unit["provider_code"], period=period,
                                            run_by=run_by, correlation_id=correlation_id)
        if summary:
            reports.append(summary)
    return reports


# ---------------------------------------------------------------------------------------------
# Queries
# ---------------------------------------------------------------------------------------------
async def episode_view(conn: asyncpg.Connection, episode_id: str, book: SchemeBook) -> dict[str, Any] | None:
    r = await conn.fetchrow("SELECT * FROM episodes WHERE episode_id = $1", episode_id)
    if r is None:
        return None
    answers = await conn.fetch("SELECT * FROM answers WHERE episode_id = $1 ORDER BY authored_at, submission_id", episode_id)
    transfers = await conn.fetch("SELECT * FROM ledger_transfers WHERE episode_id = $1 ORDER BY requested_at, transfer_id", episode_id)
    decision: dict[str, Any] | None
    if r["decision"] is not None:
        decision = {**json.loads(r["decision"]), "final": True}
    elif r["scheme_id"] is not None and (scheme := book.get(r["scheme_id"], r["scheme_version"])):
        d = domain.decide(_episode(r), [_answer(a) for a in answers], scheme)
        decision = {**asdict(d), "final": False}
    else:
        decision = None
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
        "paid_now_pence": r["amount_pence"] - r["at_risk_pence"],
        "scheme": {"scheme_id": r["scheme_id"], "version": r["scheme_version"]} if r["scheme_id"] else None,
        "settlement_id": r["settlement_id"],
        "decision": decision,
        "answers": [
            {"submission_id": a["submission_id"], "instrument": a["instrument"], "fft_answer": a["fft_answer"],
             "patient_choice": a["patient_choice"], "authored_at": a["authored_at"], "received_at": a["received_at"]}
            for a in answers
        ],
        "ledger_transfers": [
            {"transfer_id": t["transfer_id"], "kind": t["kind"], "status": t["status"], "entry_seq": t["entry_seq"],
             "reason": t["reason"]}
            for t in transfers
        ],
    }


def current_period(today: date) -> str:
    return domain.period_of(today)

"""The funds service in process against real PostgreSQL, the real broker and a real ledger (also
in process, its own database): grants through their whole lifecycle, the ledger's floor deciding
concurrent approvals, bindings, the feedback consumer's tallies and dead letters, and the
database's own guards (maker-checker constraint, append-only history).

One ledger and one funds service serve the whole module (each start costs a Kafka group join);
each test works in its own region so the fund figures can be asserted exactly.
"""

from __future__ import annotations

import asyncio
import csv
import io
import uuid
from datetime import date, datetime, timedelta, timezone
from typing import Any

import asyncpg
import httpx
import pytest

from services.funds.app import create_app as create_funds
from services.funds.settings import FundsSettings
from services.ledger.app import create_app as create_ledger
from services.ledger.settings import LedgerSettings
from shared.auth import bearer_headers
from shared.contracts import FeedbackReceived, TransferPosted, envelope
from shared.topics import FEEDBACK_RECEIVED, FEEDBACK_RECEIVED_DLQ, LEDGER_POSTED, LEDGER_POSTED_DLQ
from tests.conftest import fresh_database, running
from tests.helpers import eventually, publish, read_topic

pytestmark = pytest.mark.integration

TODAY = datetime.now(timezone.utc).date()
MONDAY = TODAY - timedelta(days=TODAY.weekday())
ADMIN = bearer_headers(["ledger:admin", "ledger:read", "ledger:audit"], subject="ledger.admin")


def people(region: str) -> dict[str, dict[str, str]]:
    return {
        "maker": bearer_headers(["funds:propose", "funds:read", "funds:manage"], subject=f"maker@{region}", regions=[region]),
        "checker": bearer_headers(["funds:approve", "funds:read"], subject=f"checker@{region}", regions=[region]),
        "checker2": bearer_headers(["funds:approve", "funds:read"], subject=f"checker2@{region}", regions=[region]),
        "manager": bearer_headers(["funds:manage", "funds:read"], subject=f"manager@{region}", regions=[region]),
    }


def body(grant_id: str, region: str, milestones: list[tuple[str, int]], **overrides: Any) -> dict[str, Any]:
    start = MONDAY - timedelta(weeks=8)
    return {
        "grant_id": grant_id, "region_code": region, "title": "Better discharge", "aim": "Fewer patients say discharge was poor",
        "measure": {"kind": "fft_positive", "interval": "week", "baseline_from": (start - timedelta(weeks=12)).isoformat(),
                    "baseline_to": (start - timedelta(days=1)).isoformat()},
        "start_date": start.isoformat(), "end_date": (TODAY + timedelta(days=200)).isoformat(),
        "amount_pence": sum(a for _, a in milestones),
        "milestones": [{"title": f"milestone {i + 1}", "provider_code": p, "amount_pence": a,
                        "due_date": (TODAY + timedelta(days=30 * (i + 1))).isoformat()} for i, (p, a) in enumerate(milestones)],
        **overrides,
    }


@pytest.fixture(scope="module")
async def stack(infra, kafka_bootstrap):
    run = uuid.uuid4().hex[:8]
    async with fresh_database(infra.postgres_dsn) as ledger_db, fresh_database(infra.postgres_dsn) as funds_db:
        ledger_settings = LedgerSettings(database_url=ledger_db, kafka_bootstrap_servers=kafka_bootstrap,
                                         consumer_group=f"ledger-{run}")
        async with running(create_ledger(ledger_settings), token=None) as ledger:
            settings = FundsSettings(database_url=funds_db, kafka_bootstrap_servers=kafka_bootstrap,
                                     consumer_group=f"funds-{run}", ledger_base_url="http://test")
            async with running(create_funds(settings, ledger_http=ledger), token=None) as funds:
                funds.database_url = funds_db  # type: ignore[attr-defined]
                funds.bootstrap = kafka_bootstrap  # type: ignore[attr-defined]
                yield funds, ledger


async def seed(ledger: httpx.AsyncClient, region: str, pence: int) -> None:
    r = await ledger.post("/v1/transfers", headers=ADMIN, json={
        "transfer_id": f"manual:seed-{region}-{uuid.uuid4().hex[:6]}", "kind": "posted",
        "legs": [{"account_id": "commissioner:QWE", "amount_pence": -pence}, {"account_id": f"fund:{region}", "amount_pence": pence}],
        "cause": {"kind": "manual", "note": "a month's diversions, for the test"}})
    assert r.status_code == 201, r.text


async def settled(funds: httpx.AsyncClient, grant_id: str, headers: dict[str, str], *, not_in: tuple[str, ...] = ("reserving",),
                  timeout_s: float = 30) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        g = (await funds.get(f"/v1/grants/{grant_id}", headers=headers)).json()
        busy = g["status"] in not_in or any(m["status"] in ("reserving", "paying", "releasing") for m in g["milestones"])
        return None if busy else g

    return await eventually(check, timeout_s=timeout_s)


async def balance(ledger: httpx.AsyncClient, account: str) -> dict[str, Any]:
    r = await ledger.get(f"/v1/accounts/{account}/balance", headers=ADMIN)
    return r.json() if r.status_code == 200 else {"posted_pence": 0, "pending_debits_pence": 0, "available_pence": 0}


# ---------------------------------------------------------------------------------------------
async def test_a_grant_is_proposed_checked_reserved_and_paid_through_the_ledger(stack) -> None:
    funds, ledger = stack
    who = people("Y56")
    gid = f"lc-{uuid.uuid4().hex[:6]}"
    await seed(ledger, "Y56", 100_000)
    r = await funds.post("/v1/grants", headers=who["maker"], json=body(gid, "Y56", [("RJ1", 25_000), ("RRV", 35_000)]))
    assert r.status_code == 201, r.text
    assert r.json()["status"] == "proposed" and r.json()["proposed_by"] == "maker@Y56"
    again = await funds.post("/v1/grants", headers=who["maker"], json=body(gid, "Y56", [("RJ1", 25_000), ("RRV", 35_000)]))
    assert again.status_code == 200
    clash = await funds.post("/v1/grants", headers=who["maker"], json=body(gid, "Y56", [("RJ1", 60_000)]))
    assert clash.status_code == 409 and clash.json()["errors"][0]["field"] == "grant_id"

    # the maker may not approve their own proposal, even holding the scope
    own = bearer_headers(["funds:approve"], subject="maker@Y56", regions=["Y56"])
    r = await funds.post(f"/v1/grants/{gid}/decision", headers=own, json={"outcome": "approved", "reason": "mine"})
    assert r.status_code == 403, r.text
    r = await funds.post(f"/v1/grants/{gid}/decision", headers=who["checker"], json={"outcome": "approved", "reason": "good plan"})
    assert r.status_code == 200 and r.json()["decided_by"] == "checker@Y56"
    g = await settled(funds, gid, who["checker"])
    assert g["status"] == "reserved" and g["money"]["committed_pence"] == 60_000
    fund = await balance(ledger, "fund:Y56")
    assert (fund["pending_debits_pence"], fund["available_pence"]) == (60_000, 40_000)

    for n in (1, 2):
        r = await funds.post(f"/v1/grants/{gid}/milestones/{n}/met", headers=who["manager"], json={"note": f"evidence {n}"})
        assert r.status_code == 200, r.text
    g = await settled(funds, gid, who["manager"])
    assert g["status"] == "completed" and g["money"]["paid_pence"] == 60_000
    assert [(s["step"], s["actor"]) for s in g["steps"]][:3] == [("proposed", "maker@Y56"), ("approved", "checker@Y56"),
                                                                  ("reserved", "ledger")]
    t = (await ledger.get(f"/v1/transfers/grant:{gid}:m1:pay", headers=ADMIN)).json()
    assert {(leg["account_id"], leg["amount_pence"]) for leg in t["legs"]} == {("fund:Y56", -25_000), ("provider:RJ1", 25_000)}
    assert t["cause"]["kind"] == "grant_payment" and t["cause"]["grant_id"] == gid

    f = (await funds.get("/v1/funds/Y56", headers=who["manager"])).json()
    assert (f["received_pence"], f["paid_pence"], f["committed_pence"], f["remaining_pence"], f["in_flight"]) == (
        100_000, 60_000, 0, 40_000, False)
    report = (await funds.get("/v1/funds/Y56/report", headers=who["manager"])).json()
    [line] = [p for p in report["projects"] if p["grant_id"] == gid]
    assert line["paid_pence"] == 60_000 and line["measure_status"] == "too_few_responses"
    r = await funds.get("/v1/funds/Y56/report.csv", headers=who["manager"])
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert r.headers["content-type"].startswith("text/csv") and rows[-1]["grant_id"] == "TOTAL"
    assert rows[-1]["received_pence"] == "100000" and rows[-1]["remaining_pence"] == "40000"

    # The public pages' view: approved grants only, no people's names, the portal's reports:read token.
    pending = f"lc-{uuid.uuid4().hex[:6]}"
    assert (await funds.post("/v1/grants", headers=who["maker"], json=body(pending, "Y56", [("RJ1", 1_000)]))).status_code == 201
    public = bearer_headers(["reports:read"], subject="service:portal")
    r = await funds.get("/v1/publication/funds/Y56/grants", headers=public)
    assert r.status_code == 200, r.text
    published = {g["grant_id"]: g for g in r.json()["grants"]}
    assert gid in published and pending not in published  # a proposal is not public until approved
    assert published[gid]["paid_pence"] == 60_000 and published[gid]["providers"] == ["RJ1", "RRV"]
    assert not {"proposed_by", "decided_by", "steps"} & set(published[gid])
    assert (await funds.get("/v1/publication/funds/Y56/grants", headers=who["manager"])).status_code == 403  # funds:read is not it
    london_only = bearer_headers(["reports:read"], subject="x", regions=["Y56"])
    assert (await funds.get("/v1/publication/funds/Y63/grants", headers=london_only)).status_code == 403
    assert (await funds.get("/v1/publication/funds/Y99/grants", headers=public)).status_code == 404
    tb = (await ledger.get("/v1/trial-balance", headers=ADMIN)).json()
    assert tb["total_pence"] == 0
    assert (await ledger.get("/v1/verify", headers=ADMIN)).json()["ok"]


async def test_two_concurrent_approvals_that_exceed_the_fund_cannot_both_succeed(stack) -> None:
    funds, ledger = stack
    who = people("Y63")
    await seed(ledger, "Y63", 100_000)
    run = uuid.uuid4().hex[:6]
    grants = {f"a-{run}": [("RTD", 70_000)], f"b-{run}": [("RR8", 60_000)],
              f"c-{run}": [("RTD", 30_000), ("RR8", 25_000)], f"d-{run}": [("RR8", 20_000), ("RTD", 30_000)]}
    for gid, ms in grants.items():
        r = await funds.post("/v1/grants", headers=who["maker"], json=body(gid, "Y63", ms))
        assert r.status_code == 201, r.text

    async def approve(gid: str, checker: str) -> httpx.Response:
        return await funds.post(f"/v1/grants/{gid}/decision", headers=who[checker], json={"outcome": "approved", "reason": "ok"})

    # single-milestone grants together beyond the fund: exactly one is reserved
    answers = await asyncio.gather(approve(f"a-{run}", "checker"), approve(f"b-{run}", "checker2"))
    assert [a.status_code for a in answers] == [200, 200]
    first = {gid: (await settled(funds, gid, who["checker"]))["status"] for gid in (f"a-{run}", f"b-{run}")}
    assert sorted(first.values()) == ["refused", "reserved"], first
    held = 70_000 if first[f"a-{run}"] == "reserved" else 60_000
    fund = await balance(ledger, "fund:Y63")
    assert fund["pending_debits_pence"] == held and fund["available_pence"] == 100_000 - held

    # two milestones each, beyond what is left: at most one, and nothing stays reserved for a refused one
    left = 100_000 - held
    answers = await asyncio.gather(approve(f"c-{run}", "checker"), approve(f"d-{run}", "checker2"))
    second = {gid: await settled(funds, gid, who["checker"]) for gid in (f"c-{run}", f"d-{run}")}
    statuses = [g["status"] for g in second.values()]
    assert statuses.count("reserved") <= 1 and set(statuses) <= {"reserved", "refused"}
    reserved = sum(g["money"]["committed_pence"] for g in second.values())
    assert reserved <= left
    fund = await balance(ledger, "fund:Y63")
    assert fund["pending_debits_pence"] == held + reserved and fund["available_pence"] >= 0
    for g in second.values():
        if g["status"] == "refused":
            assert g["money"]["committed_pence"] == 0
            assert any(s["step"] == "refused_by_ledger" and "insufficient funds" in (s["reason"] or "") for s in g["steps"])


async def test_bindings_refuse_other_regions_and_hide_other_regions_grants(stack) -> None:
    funds, _ledger = stack
    who = people("Y62")
    gid = f"bd-{uuid.uuid4().hex[:6]}"
    london = bearer_headers(["funds:propose", "funds:approve", "funds:read", "funds:manage"], subject="x@y56", regions=["Y56"])
    r = await funds.post("/v1/grants", headers=london, json=body(gid, "Y62", [("R0A", 1_000)]))
    assert r.status_code == 403 and r.json()["errors"][0]["field"] == "region_code"
    r = await funds.post("/v1/grants", headers=who["maker"], json=body(gid, "Y62", [("RTD", 1_000)]))  # a Newcastle trust
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "milestones.0.provider_code"
    r = await funds.post("/v1/grants", headers=who["maker"], json=body(gid, "Y62", [("R0A", 1_000)], amount_pence=999))
    assert r.status_code == 422
    r = await funds.post("/v1/grants", headers=who["maker"], json=body(gid, "Y62", [("R0A", 1_000)]))
    assert r.status_code == 201
    for method, path, payload in (("GET", f"/v1/grants/{gid}", None),
                                  ("POST", f"/v1/grants/{gid}/decision", {"outcome": "approved", "reason": "x"}),
                                  ("POST", f"/v1/grants/{gid}/cancel", {"reason": "x"}),
                                  ("GET", f"/v1/grants/{gid}/assessment", None)):
        r = await funds.request(method, path, headers=london, json=payload)
        assert r.status_code == 404, (path, r.text)
    assert gid not in [g["grant_id"] for g in (await funds.get("/v1/grants", headers=london)).json()["items"]]
    trust = bearer_headers(["funds:read", "funds:approve"], subject="finance@r0a", ods=["R0A"])
    assert (await funds.get(f"/v1/grants/{gid}", headers=trust)).status_code == 200  # a trust sees grants to it ...
    r = await funds.post(f"/v1/grants/{gid}/decision", headers=trust, json={"outcome": "approved", "reason": "x"})
    assert r.status_code == 404  # ... but does not act for the region
    assert (await funds.get("/v1/funds/Y56", headers=who["manager"])).status_code == 403
    r = await funds.post("/v1/grants", json=body(gid, "Y62", [("R0A", 1_000)]))
    assert r.status_code == 401
    r = await funds.post("/v1/grants", headers=bearer_headers(["funds:read"], regions=["Y62"]), json=body(gid, "Y62", [("R0A", 1)]))
    assert r.status_code == 403 and "funds:propose" in r.json()["detail"]


def fft(sid: str, provider: str, answer: int, day: date) -> FeedbackReceived:
    return FeedbackReceived(submission_id=sid, episode_id=f"ep-{sid}", provider_code=provider, patient_pseudonym="d" * 64,
                            instrument="fft", authored_at=datetime(day.year, day.month, day.day, 11, tzinfo=timezone.utc),
                            fft_answer=answer)  # type: ignore[arg-type]


async def test_feedback_events_feed_the_measure_and_bad_records_are_dead_lettered(stack) -> None:
    funds, _ledger = stack
    who = people("Y59")
    gid = f"ms-{uuid.uuid4().hex[:6]}"
    r = await funds.post("/v1/grants", headers=who["maker"], json=body(gid, "Y59", [("RTH", 5_000)]))
    assert r.status_code == 201, r.text
    start = date.fromisoformat(r.json()["start_date"])
    run = uuid.uuid4().hex[:6]
    wavy = [5, 6, 5, 4, 5, 6, 5, 5, 4, 5, 6, 5]
    messages = []
    for week, positive in enumerate(wavy + [10] * 8):  # 12 baseline weeks, then 8 weeks after the start
        day = start - timedelta(weeks=12) + timedelta(weeks=week, days=2)
        for i in range(10):
            ev = fft(f"{run}-{week}-{i}", "RTH" if i % 2 else "RTH08", 1 if i < positive else 4, day)
            messages.append((ev.episode_id.encode(), envelope(ev, "feedback.received.v1", producer="feedback",
                                                               correlation_id="c").model_dump_json().encode(), {}))
    messages += messages[:15]  # redelivered: counted once
    unknown = fft(f"{run}-unknown", "ZZZ", 1, start)
    messages.append((b"k", envelope(unknown, "feedback.received.v1", producer="feedback", correlation_id="c")
                     .model_dump_json().encode(), {}))
    messages.append((b"k", b"not json", {}))
    await publish(funds.bootstrap, FEEDBACK_RECEIVED.name, messages)  # type: ignore[attr-defined]

    async def judged() -> dict[str, Any] | None:
        a = (await funds.get(f"/v1/grants/{gid}/assessment", headers=who["maker"])).json()
        # every answer consumed (a point already shows once some of its answers are in)
        done = a["after_points"] == 8 and a["baseline_points"] == 12 and sum(p["responses"] for p in a["points"]) == 200
        return a if done else None

    a = await eventually(judged, timeout_s=30)
    assert a["status"] == "improving" and a["improvement_direction"] == "increase"
    assert [p["responses"] for p in a["points"]] == [10] * 20
    r = await funds.get(f"/v1/grants/{gid}/assessment.csv", headers=who["maker"])
    lines = list(csv.reader(io.StringIO(r.text)))
    assert lines[0][:3] == ["period", "period_start", "phase"] and lines[-1][0] == "STATUS" and lines[-1][9] == "improving"
    dead = await read_topic(funds.bootstrap, FEEDBACK_RECEIVED_DLQ.name, expect=2)  # type: ignore[attr-defined]
    reasons = {dict(d.headers).get("dlq_reason", b"").decode() for d in dead}
    assert any("ZZZ" in reason for reason in reasons) and len(dead) == 2

    # the ledger's topic: payments' answers are passed over; an answer about a grant not from the ledger is dead-lettered
    forged = envelope(TransferPosted(transfer_id=f"grant:{gid}:m1:pay", status="posted", entry_seq=1, entry_hash="0" * 64),
                      "ledger.posted.v1", producer="payments", correlation_id="c")
    theirs = envelope(TransferPosted(transfer_id="hold:pay-x", status="pending", entry_seq=2, entry_hash="0" * 64),
                      "ledger.posted.v1", producer="ledger", correlation_id="c")
    await publish(funds.bootstrap, LEDGER_POSTED.name, [(b"f", forged.model_dump_json().encode(), {}),  # type: ignore[attr-defined]
                                                        (b"t", theirs.model_dump_json().encode(), {})])
    dead = await read_topic(funds.bootstrap, LEDGER_POSTED_DLQ.name, expect=1)  # type: ignore[attr-defined]
    assert len(dead) == 1 and b"not the ledger" in dict(dead[0].headers)["dlq_reason"]
    assert (await funds.get(f"/v1/grants/{gid}", headers=who["maker"])).json()["status"] == "proposed"


async def test_the_database_guards_maker_checker_and_the_history(stack) -> None:
    funds, _ledger = stack
    who = people("Y58")
    gid = f"db-{uuid.uuid4().hex[:6]}"
    assert (await funds.post("/v1/grants", headers=who["maker"], json=body(gid, "Y58", [("RA7", 500)]))).status_code == 201
    conn = await asyncpg.connect(funds.database_url)  # type: ignore[attr-defined]
    try:
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute("UPDATE grants SET decision = 'approved', decided_by = proposed_by, decided_at = now()"
                               " WHERE grant_id = $1", gid)
        with pytest.raises(asyncpg.RaiseError, match="append-only"):
            await conn.execute("UPDATE grant_steps SET actor = 'someone' WHERE grant_id = $1", gid)
        with pytest.raises(asyncpg.RaiseError, match="append-only"):
            await conn.execute("DELETE FROM grant_steps WHERE grant_id = $1", gid)
        columns = {r["column_name"] for r in await conn.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'counted_answers'")}
        assert not columns & {"patient_pseudonym", "episode_id", "free_text"}
    finally:
        await conn.close()

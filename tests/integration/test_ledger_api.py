"""Ledger HTTP API and two-phase transfers against real PostgreSQL and the real broker:
pending/post/void/timeout, reversals, balances as of a time, statements with running balance,
trial balance, CSV exports, cursor pagination, filters, the verify CLI, OpenAPI."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import asyncpg
import pytest

from services.ledger.settings import LedgerSettings
from shared.auth import bearer_headers
from shared.contracts import Envelope, TransferPosted
from shared.topics import LEDGER_POSTED
from tests.integration.test_ledger import ledger_http
from tests.helpers import eventually, read_topic

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def manual(tid: str) -> str:
    """Transfers posted over HTTP live in the manual: namespace (shared/namespaces.py)."""
    return tid if ":" in tid else f"manual:{tid}"


def body(tid: str, *legs: tuple[str, int], kind: str = "posted", cause: str = "manual", **extra) -> dict:  # type: ignore[no-untyped-def]
    for link in ("pending_id", "reverses"):
        if extra.get(link):
            extra[link] = manual(extra[link])
    if kind == "pending":
        extra.setdefault("timeout_s", 30 * 86_400)  # a manual hold always has a timeout
    return {"transfer_id": manual(tid), "kind": kind, "legs": [{"account_id": a, "amount_pence": p} for a, p in legs],
            "cause": {"kind": cause}, **extra}


@pytest.fixture
def settings(database, kafka_bootstrap) -> LedgerSettings:
    return LedgerSettings(database_url=database, kafka_bootstrap_servers=kafka_bootstrap, consumer_group=f"ledger-{uuid.uuid4().hex[:8]}",
                          batch_timeout_ms=5, expiry_interval_ms=100)


async def fund(http, amount: int = 10_000) -> None:  # type: ignore[no-untyped-def]
    r = await http.post("/v1/transfers", json=body("seed", ("commissioner:QWE", -amount), ("held:RJ1", amount // 2), ("fund:Y56", amount // 2)))
    assert r.status_code == 201, r.text


async def bal(http, account: str, **params) -> dict:  # type: ignore[no-untyped-def]
    r = await http.get(f"/v1/accounts/{account}/balance", params=params)
    assert r.status_code == 200, r.text
    return r.json()


async def test_two_phase_pending_partial_post_void_and_floors(settings) -> None:
    async with ledger_http(settings) as http:
        await fund(http)  # fund:Y56 = 5,000
        p = await http.post("/v1/transfers", json=body("g1", ("fund:Y56", -3_000), ("provider:RJ1", 3_000), kind="pending"))
        assert p.status_code == 201 and p.json()["status"] == "pending"
        b = await bal(http, "fund:Y56")
        assert (b["posted_pence"], b["pending_debits_pence"], b["available_pence"]) == (5_000, 3_000, 2_000)
        assert (await bal(http, "provider:RJ1"))["pending_credits_pence"] == 3_000
        # A pending debit reduces what is available: 2,001 more would break the floor.
        over = await http.post("/v1/transfers", json=body("x", ("fund:Y56", -2_001), ("provider:RJ1", 2_001)))
        assert over.status_code == 422 and "floor" in over.json()["detail"]
        over_p = await http.post("/v1/transfers", json=body("xp", ("fund:Y56", -2_001), ("provider:RJ1", 2_001), kind="pending"))
        assert over_p.status_code == 422 and "available" in over_p.json()["detail"]
        # Partial post: 1,200 of 3,000; the rest is released.
        post = await http.post("/v1/transfers", json=body("g1-post", ("fund:Y56", -1_200), ("provider:RJ1", 1_200),
                                                          kind="post_pending", pending_id="g1"))
        assert post.status_code == 201 and post.json()["status"] == "posted", post.text
        b = await bal(http, "fund:Y56")
        assert (b["posted_pence"], b["pending_debits_pence"], b["available_pence"]) == (3_800, 0, 3_800)
        again = await http.post("/v1/transfers", json=body("g1-void", kind="void_pending", pending_id="g1"))
        assert again.status_code == 422 and "already posted" in again.json()["detail"]
        view = (await http.get("/v1/transfers/manual:g1")).json()
        assert (view["kind"], view["pending_status"], view["resolved_by"]) == ("pending", "posted", "manual:g1-post")
        assert view["legs"] == [{"account_id": "fund:Y56", "amount_pence": 0, "pending_pence": -3_000, "balance_after_pence": 5_000},
                                {"account_id": "provider:RJ1", "amount_pence": 0, "pending_pence": 3_000, "balance_after_pence": 0}]
        # Void.
        await http.post("/v1/transfers", json=body("g2", ("fund:Y56", -800), ("provider:RJ1", 800), kind="pending"))
        v = await http.post("/v1/transfers", json=body("g2-void", kind="void_pending", pending_id="g2"))
        assert v.status_code == 201 and v.json()["status"] == "voided"
        assert (await bal(http, "fund:Y56"))["available_pence"] == 3_800
        dup = await http.post("/v1/transfers", json=body("g2-void", kind="void_pending", pending_id="g2"))
        assert dup.status_code == 201 and (dup.json()["status"], dup.json()["original_status"]) == ("duplicate", "voided")
        tb = (await http.get("/v1/trial-balance")).json()
        assert tb["total_pence"] == 0 and tb["pending_debits_pence"] == tb["pending_credits_pence"] == 0
        assert (await http.get("/v1/verify")).json()["ok"] is True


async def test_pending_times_out_and_voids_itself_and_a_late_post_is_refused(settings, kafka_bootstrap) -> None:
    async with ledger_http(settings) as http:
        await fund(http)
        for tid in ("t1", "t2"):
            r = await http.post("/v1/transfers", json=body(tid, ("fund:Y56", -1_000), ("provider:RJ1", 1_000), kind="pending", timeout_s=1),
                                headers={"X-Correlation-ID": f"trace-{tid}"})
            assert r.status_code == 201
        assert (await bal(http, "fund:Y56"))["pending_debits_pence"] == 2_000

        async def expired() -> bool:
            return (await bal(http, "fund:Y56"))["pending_debits_pence"] == 0

        await eventually(expired, timeout_s=15)
        late = await http.post("/v1/transfers", json=body("t1-post", kind="post_pending", pending_id="t1"))
        assert late.status_code == 422 and late.json()["detail"] == "pending expired"
        view = (await http.get("/v1/transfers/manual:t1")).json()
        assert view["pending_status"] == "expired" and view["resolved_by"] == "manual:t1~expired"
        exp = (await http.get("/v1/transfers/manual:t1~expired")).json()
        assert exp["kind"] == "expire" and exp["status"] == "voided" and exp["cause"] == {"kind": "expiry"}
        # The expiry entry carries the correlation id of the pending transfer it voided.
        assert view["correlation_id"] == exp["correlation_id"] == "trace-t1"
        assert (await http.get("/v1/transfers/manual:t1-post")).json()["status"] == "rejected"
        assert (await bal(http, "fund:Y56"))["posted_pence"] == 5_000
        assert (await http.get("/v1/verify")).json()["ok"] is True
        await settings_relay_drain(http)
        events = [Envelope[TransferPosted].model_validate_json(r.value).data
                  for r in await read_topic(kafka_bootstrap, LEDGER_POSTED.name, expect=10_000, timeout_s=5)]
        statuses = [(e.transfer_id, e.status) for e in events]
        assert ("manual:t1", "voided") in statuses and ("manual:t2", "voided") in statuses and ("manual:t1-post", "rejected") in statuses


async def settings_relay_drain(http) -> None:  # type: ignore[no-untyped-def]
    await http._transport.app.state.runtime.relay.drain()  # type: ignore[attr-defined]


async def test_expiry_sweeps_in_bounded_passes(settings) -> None:
    settings = settings.model_copy(update={"expiry_interval_ms": 3_600_000})  # no background pass: we drive it
    async with ledger_http(settings) as http:
        await fund(http)
        for i in range(5):
            await http.post("/v1/transfers", json=body(f"p{i}", ("fund:Y56", -10), ("provider:RJ1", 10), kind="pending", timeout_s=1))
        handlers = http._transport.app.state.runtime.handlers  # type: ignore[attr-defined]
        later = datetime.now(timezone.utc) + timedelta(seconds=5)
        first = await handlers.expire_due(limit=3, now=later)
        second = await handlers.expire_due(limit=3, now=later)
        third = await handlers.expire_due(limit=3, now=later)
        assert (len(first), len(second), third) == (3, 2, [])
        assert {o.transfer_id for o in first + second} == {f"manual:p{i}" for i in range(5)}
        assert (await bal(http, "fund:Y56"))["pending_debits_pence"] == 0


async def test_reversal_is_a_new_entry_negating_the_original_once(settings) -> None:
    async with ledger_http(settings) as http:
        await fund(http)
        d = await http.post("/v1/transfers", json=body("div", ("held:RJ1", -700), ("fund:Y56", 700), cause="diversion"))
        assert d.status_code == 201
        wrong = await http.post("/v1/transfers", json=body("div-rev", ("held:RJ1", 600), ("fund:Y56", -600), cause="reversal", reverses="div"))
        assert wrong.status_code == 422 and "exact negation" in wrong.json()["detail"]
        ok = await http.post("/v1/transfers", json=body("div-rev2", ("held:RJ1", 700), ("fund:Y56", -700), cause="reversal", reverses="div"))
        assert ok.status_code == 201, ok.text
        twice = await http.post("/v1/transfers", json=body("div-rev3", ("held:RJ1", 700), ("fund:Y56", -700), cause="reversal", reverses="div"))
        assert twice.status_code == 422 and "already reversed by manual:div-rev2" in twice.json()["detail"]
        assert (await http.get("/v1/transfers/manual:div")).json()["reversed_by"] == "manual:div-rev2"
        rev = (await http.get("/v1/transfers/manual:div-rev2")).json()
        assert rev["reverses"] == "manual:div" and rev["cause"] == {"kind": "reversal"}
        assert (await bal(http, "fund:Y56"))["posted_pence"] == 5_000
        # The original is still in the journal, unchanged: corrections never edit.
        assert [(x["account_id"], x["amount_pence"]) for x in (await http.get("/v1/transfers/manual:div")).json()["legs"]] == [("fund:Y56", 700), ("held:RJ1", -700)]
        assert (await http.get("/v1/verify")).json()["ok"] is True


async def test_balance_as_of_statement_trial_balance_csv_and_pagination(settings) -> None:
    async with ledger_http(settings) as http:
        await fund(http)
        marks = []
        for i in range(7):
            marks.append(datetime.now(timezone.utc))
            await asyncio.sleep(0.005)
            r = await http.post("/v1/transfers", json=body(f"s{i}", ("fund:Y56", -100), ("provider:RJ1", 100)))
            assert r.status_code == 201
        marks.append(datetime.now(timezone.utc))
        # As of each mark: 5,000 less 100 per transfer before it.
        for i, t in enumerate(marks):
            b = await bal(http, "fund:Y56", as_of=t.isoformat())
            assert b["posted_pence"] == 5_000 - 100 * i and b["as_of"] is not None
        before = marks[0] - timedelta(days=1)
        assert (await bal(http, "fund:Y56", as_of=before.isoformat()))["posted_pence"] == 0
        naive = await http.get("/v1/accounts/fund:Y56/balance", params={"as_of": "2026-01-01T00:00:00"})
        assert naive.status_code == 422 and naive.headers["content-type"].startswith("application/problem+json")
        assert (await http.get("/v1/accounts/fund:Y99/balance")).status_code == 404

        # Statement for the period from the 3rd transfer on, 2 lines a page, running balance.
        lines, cursor, opening = [], None, None
        while True:
            params = {"from": marks[2].isoformat(), "limit": 2, **({"cursor": cursor} if cursor else {})}
            page = (await http.get("/v1/accounts/fund:Y56/statement", params=params)).json()
            opening = page["opening_balance_pence"] if opening is None else opening
            lines += page["lines"]
            cursor = page["next_cursor"]
            if not cursor:
                break
        assert opening == 4_800
        assert [ln["transfer_id"] for ln in lines] == [f"manual:s{i}" for i in range(2, 7)]
        assert [ln["balance_after_pence"] for ln in lines] == [4_700, 4_600, 4_500, 4_400, 4_300]
        assert all(ln["amount_pence"] == -100 and ln["cause"] == {"kind": "manual"} for ln in lines)
        window = (await http.get("/v1/accounts/fund:Y56/statement", params={"from": marks[2].isoformat(), "to": marks[4].isoformat()})).json()
        assert [ln["transfer_id"] for ln in window["lines"]] == ["manual:s2", "manual:s3"]
        bad = await http.get("/v1/accounts/fund:Y56/statement", params={"cursor": "not-a-cursor"})
        assert bad.status_code == 400

        for url, extra in (("/v1/accounts/fund:Y56/statement.csv", {}), ("/v1/accounts/fund:Y56/statement", {"format": "csv"})):
            r = await http.get(url, params={"from": marks[2].isoformat(), **extra})
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
            rows = list(csv.DictReader(io.StringIO(r.text)))
            assert rows[0]["kind"] == "opening_balance" and rows[0]["balance_after_pence"] == "4800"
            assert [x["balance_after_pence"] for x in rows[1:]] == ["4700", "4600", "4500", "4400", "4300"]

        # Trial balance now and as of a past time; both sum to zero; CSV has a TOTAL row.
        tb = (await http.get("/v1/trial-balance")).json()
        assert tb["total_pence"] == 0 and tb["account_count"] == 4
        assert tb["by_type_pence"] == {"commissioner": -10_000, "fund": 4_300, "held": 5_000, "provider": 700}
        past = (await http.get("/v1/trial-balance", params={"as_of": marks[3].isoformat()})).json()
        assert past["total_pence"] == 0 and past["by_type_pence"]["fund"] == 4_700
        page1 = (await http.get("/v1/trial-balance", params={"limit": 3})).json()
        assert len(page1["accounts"]) == 3 and page1["next_cursor"] and page1["total_pence"] == 0
        page2 = (await http.get("/v1/trial-balance", params={"limit": 3, "cursor": page1["next_cursor"]})).json()
        assert [a["account_id"] for a in page2["accounts"]] == ["provider:RJ1"] and page2["next_cursor"] is None
        for url, extra in (("/v1/trial-balance.csv", {}), ("/v1/trial-balance", {"format": "csv"})):
            r = await http.get(url, params={"as_of": marks[3].isoformat(), **extra})
            assert r.headers["content-type"].startswith("text/csv")
            rows = list(csv.DictReader(io.StringIO(r.text)))
            assert rows[-1]["account_id"] == "TOTAL" and rows[-1]["posted_pence"] == "0"
            assert {x["account_id"]: int(x["posted_pence"]) for x in rows[:-1]}["fund:Y56"] == 4_700

        # Accounts: filter by type, cursor pagination, metadata.
        put = await http.put("/v1/accounts/fund:Y58", json={"metadata": {"name": "North West improvement fund"}})
        assert put.status_code == 200 and put.json()["floor_pence"] == 0 and put.json()["metadata"]["name"].startswith("North")
        funds = (await http.get("/v1/accounts", params={"type": "fund"})).json()
        assert [a["account_id"] for a in funds["items"]] == ["fund:Y56", "fund:Y58"]
        seen, cursor = [], None
        while True:
            page = (await http.get("/v1/accounts", params={"limit": 2, **({"cursor": cursor} if cursor else {})})).json()
            seen += [a["account_id"] for a in page["items"]]
            cursor = page["next_cursor"]
            if not cursor:
                break
        assert seen == ["commissioner:QWE", "fund:Y56", "fund:Y58", "held:RJ1", "provider:RJ1"]
        as_of_list = (await http.get("/v1/accounts", params={"type": "fund", "as_of": marks[1].isoformat()})).json()
        assert [a["posted_pence"] for a in as_of_list["items"]] == [4_900, 0]

        t = (await http.get("/v1/transfers/manual:s3")).json()
        assert t["legs"] == [{"account_id": "fund:Y56", "amount_pence": -100, "pending_pence": 0, "balance_after_pence": 4_600},
                             {"account_id": "provider:RJ1", "amount_pence": 100, "pending_pence": 0, "balance_after_pence": 400}]
        assert t["cause"] == {"kind": "manual"} and len(t["hash"]) == 64
        assert (await http.get("/v1/transfers/nope")).status_code == 404

        spec = (await http.get("/openapi.json")).json()
        for path in ("/v1/accounts/{account_id}/statement", "/v1/accounts/{account_id}/statement.csv", "/v1/trial-balance",
                     "/v1/trial-balance.csv", "/v1/transfers/{transfer_id}", "/v1/verify", "/v1/accounts"):
            assert path in spec["paths"], path


async def test_verify_cli_names_the_first_bad_entry(settings) -> None:
    async with ledger_http(settings) as http:
        await fund(http)
        for i in range(3):
            await http.post("/v1/transfers", json=body(f"v{i}", ("fund:Y56", -1), ("provider:RJ1", 1)))
    env = {**os.environ, "LEDGER_DATABASE_URL": settings.database_url, "PYTHONPATH": str(ROOT)}

    def cli() -> tuple[int, dict]:
        out = subprocess.run([sys.executable, "-m", "services.ledger", "verify"], env=env, cwd=ROOT, capture_output=True, timeout=60)
        return out.returncode, json.loads(out.stdout)

    code, result = await asyncio.to_thread(cli)
    assert code == 0 and result["ok"] and result["entries_checked"] == 4
    conn = await asyncpg.connect(settings.database_url)
    try:
        await conn.execute("ALTER TABLE legs DISABLE TRIGGER legs_append_only")
        # A balanced edit (both legs): only the hash chain can tell.
        await conn.execute("UPDATE legs SET amount_pence = amount_pence * 2 WHERE entry_seq = 3")
        await conn.execute("ALTER TABLE legs ENABLE TRIGGER legs_append_only")
    finally:
        await conn.close()
    code, result = await asyncio.to_thread(cli)
    assert code == 1 and result["first_bad_seq"] == 3 and result["first_bad_transfer_id"] == "manual:v1"


async def test_pending_transfers_resolve_once_in_the_database(settings) -> None:
    async with ledger_http(settings) as http:
        await fund(http)
        await http.post("/v1/transfers", json=body("g", ("fund:Y56", -1), ("provider:RJ1", 1), kind="pending"))
        await http.post("/v1/transfers", json=body("g-post", kind="post_pending", pending_id="g"))
        assert (await http.post("/v1/transfers", json=body("g-void", kind="void_pending", pending_id="g"))).status_code == 422
    conn = await asyncpg.connect(settings.database_url)
    try:
        with pytest.raises(asyncpg.PostgresError, match="resolved once"):
            await conn.execute("UPDATE pending_transfers SET status = 'pending' WHERE transfer_id = 'manual:g'")
        with pytest.raises(asyncpg.PostgresError, match="resolved once"):
            await conn.execute("DELETE FROM pending_transfers")
        with pytest.raises(asyncpg.PostgresError, match="append-only"):
            await conn.execute("DELETE FROM rejections")
        with pytest.raises(asyncpg.PostgresError, match="check constraint"):
            await conn.execute("UPDATE accounts SET pending_debits_pence = 10000000 WHERE account_id = 'fund:Y56'")
    finally:
        await conn.close()


async def test_scopes_and_region_limited_tokens(settings) -> None:
    async with ledger_http(settings) as admin:
        await fund(admin)  # commissioner:QWE (London ICB), held:RJ1 (London trust), fund:Y56 (London)
        r = await admin.post("/v1/transfers", json=body("nw", ("commissioner:QWE", -50), ("fund:Y62", 50)))
        assert r.status_code == 201
        anonymous = await admin.get("/v1/trial-balance", headers={"Authorization": ""})
        assert anonymous.status_code == 401 and anonymous.headers["content-type"].startswith("application/problem+json")
        reader = bearer_headers(["ledger:read"], subject="reader")
        refused = await admin.post("/v1/transfers", json=body("x", ("commissioner:QWE", -1), ("fund:Y56", 1)), headers=reader)
        assert refused.status_code == 403 and refused.json()["required_scope"] == "ledger:admin"
        assert (await admin.get("/v1/trial-balance", headers=reader)).status_code == 200

        london = bearer_headers(["ledger:read"], subject="london-finance", regions=["Y56"])
        funds = (await admin.get("/v1/accounts", params={"type": "fund"}, headers=london)).json()
        assert [a["account_id"] for a in funds["items"]] == ["fund:Y56"]
        everything = (await admin.get("/v1/accounts", headers=london)).json()
        assert [a["account_id"] for a in everything["items"]] == ["commissioner:QWE", "fund:Y56", "held:RJ1"]
        assert (await admin.get("/v1/accounts/fund:Y56/balance", headers=london)).status_code == 200
        assert (await admin.get("/v1/accounts/fund:Y62/balance", headers=london)).status_code == 403
        assert (await admin.get("/v1/accounts/fund:Y62/statement", headers=london)).status_code == 403
        assert (await admin.get("/v1/trial-balance", headers=london)).status_code == 403
        assert (await admin.get("/v1/trial-balance.csv", headers=london)).status_code == 403
        assert (await admin.get("/v1/transfers/manual:seed", headers=london)).status_code == 200
        north_west = bearer_headers(["ledger:read"], subject="nw-finance", regions=["Y62"])
        assert (await admin.get("/v1/transfers/manual:seed", headers=north_west)).status_code == 404  # a record outside the binding
        assert (await admin.get("/v1/transfers/manual:nw", headers=north_west)).status_code == 200


async def test_out_of_range_input_is_a_client_error_not_a_crash(settings) -> None:
    async with ledger_http(settings) as http:
        await fund(http)
        r = await http.get("/v1/accounts/fund:Y56/balance", params={"as_of": "0001-01-01T00:00:00+14:00"})
        assert r.status_code == 422 and "out of range" in r.json()["detail"]
        for cursor in (store_cursor(123), store_cursor("x", "y"), "!!!"):
            assert (await http.get("/v1/accounts", params={"cursor": cursor})).status_code == 400
            assert (await http.get("/v1/accounts/fund:Y56/statement", params={"cursor": cursor})).status_code == 400
        big = await http.post("/v1/transfers", json=body("big", ("commissioner:QWE", -(10**18)), ("provider:RJ1", 10**18)))
        assert big.status_code == 422 and "more than a leg may move" in big.json()["detail"]


def store_cursor(*parts) -> str:  # type: ignore[no-untyped-def]
    from services.ledger.queries import encode_cursor

    return encode_cursor(*parts)

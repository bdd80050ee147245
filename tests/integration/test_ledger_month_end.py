"""Month-end on the ledger against real PostgreSQL: the journal partitioned by month (and older
ledgers migrated into it unchanged), finding transfers, closing a period with a signed statement
an auditor verifies offline, and reconciling a commissioner's remittance file."""

from __future__ import annotations

import csv
import io
import shutil
import subprocess
import sys
import uuid
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import asyncpg
import pytest

from services.ledger import domain
from services.ledger.settings import LedgerSettings
from shared.auth import bearer_headers
from shared.contracts import TransferRequested
from shared.db import migrate
from shared.periods import next_period, period_of
from tests.integration.test_ledger import ledger_http

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
FINANCE = ("ledger:read", "ledger:admin", "ledger:audit", "ledger:close", "ledger:reconcile")


@pytest.fixture
def settings(database, kafka_bootstrap) -> LedgerSettings:
    return LedgerSettings(database_url=database, kafka_bootstrap_servers=kafka_bootstrap,
                          consumer_group=f"ledger-{uuid.uuid4().hex[:8]}", batch_timeout_ms=5)


def transfer(tid: str, *legs: tuple[str, int], cause: dict | None = None, **extra) -> dict:  # type: ignore[no-untyped-def]
    return {"transfer_id": f"manual:{tid}", "legs": [{"account_id": a, "amount_pence": p} for a, p in legs],
            "cause": cause or {"kind": "manual"}, **extra}


def last_month(today: date) -> str:
    first = today.replace(day=1) - timedelta(days=1)
    return f"{first.year:04d}-{first.month:02d}"


def uk_today() -> date:
    return domain.accounting_date(datetime.now(timezone.utc))


# ---------------------------------------------------------------------------------------------
# Partitions, and a ledger written before them
# ---------------------------------------------------------------------------------------------
async def test_a_ledger_from_before_partitioning_moves_over_unchanged_and_still_verifies(database) -> None:
    conn = await asyncpg.connect(database)
    try:
        await migrate(conn, "shared")
        for name in ("001_ledger.sql", "002_trace_ids.sql"):  # the schema as it was
            await conn.execute((ROOT / "services/ledger/migrations" / name).read_text())
            await conn.execute("INSERT INTO schema_migrations(name) VALUES ($1)", f"services.ledger:{name}")
        # Two months of entries written the old way (the same pure core, the old tables).
        head_seq, head_hash = 0, domain.GENESIS_HASH
        balances: dict[str, domain.AccountState] = {}
        t_oct = datetime(2026, 10, 15, 12, tzinfo=timezone.utc)
        t_nov = datetime(2026, 11, 20, 9, tzinfo=timezone.utc)
        batches = [
            (t_oct, [TransferRequested.model_validate(transfer("a", ("commissioner:QWE", -1_000), ("provider:RJ1", 1_000),
                                                               cause={"kind": "payment", "payment_id": "p-1", "period": "2026-10"}))]),
            (t_nov, [TransferRequested.model_validate(transfer("b", ("commissioner:QWE", -500), ("fund:Y56", 500))),
                     TransferRequested.model_validate(transfer("c", ("provider:RJ1", 1_000), ("commissioner:QWE", -1_000),
                                                               reverses=None))]),
        ]
        for account in ("commissioner:QWE", "provider:RJ1", "fund:Y56"):
            await conn.execute("INSERT INTO accounts(account_id, type, floor_pence) VALUES ($1, split_part($1, ':', 1), $2)",
                               account, domain.account_floor(account))
        for at, requests in batches:
            plan = domain.plan_batch(requests, balances=balances, existing={}, head_seq=head_seq, head_hash=head_hash, now=at)
            for e in plan.entries:
                await conn.execute(
                    "INSERT INTO entries(seq, transfer_id, kind, fingerprint, request, pending_id, reverses, posted_at, expires_at,"
                    " prev_hash, hash, correlation_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 'c-old')",
                    e.seq, e.transfer_id, e.kind, e.fingerprint, e.request_json, e.pending_id, e.reverses, e.posted_at,
                    e.expires_at, e.prev_hash, e.hash)
                for leg in e.legs:
                    await conn.execute("INSERT INTO legs VALUES ($1, $2, $3, $4, $5, $6, $7, $8)", e.seq, leg.account_id,
                                       leg.amount_pence, leg.pending_pence, leg.balance_after_pence,
                                       leg.pending_debits_after_pence, leg.pending_credits_after_pence, e.posted_at)
            for account, (p, _, _) in plan.deltas.items():
                await conn.execute("UPDATE accounts SET posted_pence = posted_pence + $2 WHERE account_id = $1", account, p)
                s = balances.get(account, domain.AccountState())
                balances[account] = domain.AccountState(s.posted_pence + p)
            head_seq, head_hash = plan.head_seq, plan.head_hash
            await conn.execute("UPDATE chain_head SET seq = $1, hash = $2, posted_at = $3 WHERE id = 1", head_seq, head_hash, at)

        assert await migrate(conn, "services.ledger") == ["services.ledger:003_journal_by_month.sql"]

        parts = {r["relname"] for r in await conn.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'entries'::regclass")}
        assert {"entries_y2026m10", "entries_y2026m11"} <= parts
        assert await conn.fetchval("SELECT count(*) FROM entries_y2026m10") == 1
        assert await conn.fetchval("SELECT count(*) FROM legs_y2026m11") == 4
        row = await conn.fetchrow("SELECT payment_id, period, cause_kind, accounting_date, correlation_id FROM entries WHERE seq = 1")
        assert dict(row) == {"payment_id": "p-1", "period": "2026-10", "cause_kind": "payment",
                             "accounting_date": date(2026, 10, 15), "correlation_id": "c-old"}
        from services.ledger import queries

        assert (await queries.verify(conn))["ok"], await queries.verify(conn)
        assert (await queries.balance(conn, "provider:RJ1", t_oct + timedelta(days=1)))["posted_pence"] == 1_000
        assert (await queries.balance(conn, "provider:RJ1"))["posted_pence"] == 2_000
        assert (await queries.transfer(conn, "manual:a"))["legs"][1]["amount_pence"] == 1_000
        # Still append-only, partition by partition.
        with pytest.raises(asyncpg.PostgresError, match="append-only"):
            await conn.execute("UPDATE legs SET amount_pence = 1 WHERE entry_seq = 1")
        with pytest.raises(asyncpg.PostgresError, match="append-only"):
            await conn.execute("TRUNCATE entries_y2026m10")
    finally:
        await conn.close()


async def test_the_writer_makes_partitions_ahead_of_time(settings) -> None:
    async with ledger_http(settings, FINANCE) as http:
        r = await http.post("/v1/transfers", json=transfer("p", ("commissioner:QWE", -10), ("provider:RJ1", 10)))
        assert r.status_code == 201, r.text
    conn = await asyncpg.connect(settings.database_url)
    try:
        through = await conn.fetchval("SELECT partitions_through FROM chain_head")
        now = datetime.now(timezone.utc).date().replace(day=1)
        assert through >= (now + timedelta(days=62)).replace(day=1)  # two months ahead
        name = f"legs_y{through.year:04d}m{through.month:02d}"
        assert await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", name)
    finally:
        await conn.close()


# ---------------------------------------------------------------------------------------------
# Find transfers
# ---------------------------------------------------------------------------------------------
async def test_find_transfers_by_payment_episode_provider_region_kind_period_and_time(settings) -> None:
    async with ledger_http(settings, FINANCE) as http:
        posts = [
            transfer("t1", ("commissioner:QWE", -1_000), ("provider:RJ1", 1_000),
                     cause={"kind": "payment", "payment_id": "pay-1", "episode_id": "ep-1", "provider_code": "RJ1", "period": "2026-10"}),
            transfer("t2", ("commissioner:QWE", -300), ("fund:Y56", 300),  # a diversion: moves no RJ1 account, names RJ1
                     cause={"kind": "diversion", "payment_id": "pay-1", "provider_code": "RJ1", "period": "2026-10"}),
            transfer("t3", ("commissioner:QU9", -700), ("provider:RTH", 700),
                     cause={"kind": "payment", "payment_id": "pay-2", "episode_id": "ep-2", "provider_code": "RTH", "period": "2026-11"}),
            transfer("t4", ("commissioner:QWE", -50), ("provider:RRV", 50)),
        ]
        for p in posts:
            r = await http.post("/v1/transfers", json=p)
            assert r.status_code == 201, r.text

        async def ids(**params) -> list[str]:  # type: ignore[no-untyped-def]
            r = await http.get("/v1/transfers", params=params)
            assert r.status_code == 200, r.text
            return [t["transfer_id"] for t in r.json()["items"]]

        assert await ids(payment_id="pay-1") == ["manual:t1", "manual:t2"]
        assert await ids(episode_id="ep-2") == ["manual:t3"]
        assert await ids(provider="RJ1") == ["manual:t1", "manual:t2"]
        assert await ids(region="Y59") == ["manual:t3"]
        assert await ids(region="Y56") == ["manual:t1", "manual:t2", "manual:t4"]
        assert await ids(cause="diversion") == ["manual:t2"]
        assert await ids(period="2026-11") == ["manual:t3"]
        assert await ids(kind="pending") == []
        assert await ids(**{"from": "2030-01-01T00:00:00Z"}) == []
        assert await ids(accounting_from=uk_today().isoformat()) == ["manual:t1", "manual:t2", "manual:t3", "manual:t4"]
        one = (await http.get("/v1/transfers", params={"payment_id": "pay-1"})).json()["items"][0]
        assert one["legs"] == [{"account_id": "commissioner:QWE", "amount_pence": -1000, "pending_pence": 0},
                               {"account_id": "provider:RJ1", "amount_pence": 1000, "pending_pence": 0}]
        assert one["accounting_date"] == uk_today().isoformat() and one["status"] == "posted"

        # Cursor pagination walks everything once, in chain order.
        seen, cursor = [], None
        while True:
            r = (await http.get("/v1/transfers", params={"limit": 3, **({"cursor": cursor} if cursor else {})})).json()
            seen += [t["transfer_id"] for t in r["items"]]
            cursor = r["next_cursor"]
            if not cursor:
                break
        assert seen == ["manual:t1", "manual:t2", "manual:t3", "manual:t4"]

        # CSV: one line per leg.
        r = await http.get("/v1/transfers", params={"payment_id": "pay-1", "format": "csv"})
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(r.text)))
        assert [(x["transfer_id"], x["account_id"], x["amount_pence"]) for x in rows] == [
            ("manual:t1", "commissioner:QWE", "-1000"), ("manual:t1", "provider:RJ1", "1000"),
            ("manual:t2", "commissioner:QWE", "-300"), ("manual:t2", "fund:Y56", "300")]

        # Bad input is a 4xx naming the field.
        for params, field in (({"provider": "ZZZ"}, "provider"), ({"region": "Y99"}, "region"), ({"period": "2026-13"}, "period"),
                              ({"from": "2026-01-01T00:00:00"}, "from"), ({"cursor": "nonsense"}, "cursor"),
                              ({"kind": "minted"}, "kind")):
            r = await http.get("/v1/transfers", params=params)
            assert 400 <= r.status_code < 500, (params, r.text)
            assert field in r.text, (params, r.text)

        # A London token sees London's transfers only, and may not search another region's.
        http.headers.update(bearer_headers(["ledger:read"], subject="london", regions=["Y56"]))
        assert await ids() == ["manual:t1", "manual:t2", "manual:t4"]
        assert await ids(payment_id="pay-2") == []
        r = await http.get("/v1/transfers", params={"region": "Y59"})
        assert r.status_code == 403 and "region" in r.text
        r = await http.get("/v1/transfers", params={"provider": "RTH"})
        assert r.status_code == 403 and "provider" in r.text


# ---------------------------------------------------------------------------------------------
# Close a period
# ---------------------------------------------------------------------------------------------
async def test_closing_a_period_refuses_postings_dated_in_it_and_its_signed_statement_verifies(settings, tmp_path) -> None:
    today = uk_today()
    closing = last_month(today)
    in_closing = date(int(closing[:4]), int(closing[5:7]), 10)
    async with ledger_http(settings, FINANCE) as http:
        # Dated into the month before this one (still open), and today.
        r = await http.post("/v1/transfers", json=transfer("adj-1", ("commissioner:QWE", -2_500), ("provider:RJ1", 2_500),
                                                           value_date=in_closing.isoformat()))
        assert r.status_code == 201, r.text
        r = await http.post("/v1/transfers", json=transfer("now-1", ("commissioner:QWE", -400), ("fund:Y56", 400)))
        assert r.status_code == 201, r.text
        r = await http.post("/v1/transfers", json=transfer("future", ("commissioner:QWE", -1), ("fund:Y56", 1),
                                                           value_date=(today + timedelta(days=1)).isoformat()))
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "value_date", r.text

        # This month has not ended; a bound token may not close; the month before closes.
        r = await http.post(f"/v1/periods/{period_of(today)}/close")
        assert r.status_code == 409 and "not ended" in r.json()["detail"]
        r = await http.post(f"/v1/periods/{closing}/close")
        assert r.status_code == 201, r.text
        closed = r.json()
        assert closed["status"] == "closed" and closed["closed_by"] == "ledger-tests"
        again = await http.post(f"/v1/periods/{closing}/close")
        assert again.status_code == 200 and again.json()["statement_sha256"] == closed["statement_sha256"]
        listing = (await http.get("/v1/periods")).json()
        assert listing["closed_through"] == closing and listing["next_to_close"] == next_period(closing)
        assert [p["period"] for p in listing["items"]] == [closing]

        # A posting dated in the closed period is refused (and stays refused); a correction posts
        # today, naming the original.
        r = await http.post("/v1/transfers", json=transfer("adj-2", ("commissioner:QWE", -10), ("provider:RJ1", 10),
                                                           value_date=in_closing.isoformat()))
        assert r.status_code == 422, r.text
        assert r.json()["errors"][0]["field"] == "value_date" and f"period {closing} is closed" in r.json()["detail"]
        r = await http.post("/v1/transfers", json=transfer("adj-1-fix", ("commissioner:QWE", 2_500), ("provider:RJ1", -2_500),
                                                           reverses="manual:adj-1"))
        assert r.status_code == 201, r.text
        r = await http.post(f"/v1/periods/{last_month(in_closing)}/close")
        assert r.status_code == 409 and "already closed" in r.json()["detail"]

        # The statement: the chain head, and the period's money by account, which balances.
        r = await http.get(f"/v1/periods/{closing}/statement")
        assert r.status_code == 200
        body = r.content
        sig = (await http.get(f"/v1/periods/{closing}/statement.sig")).content
        key = (await http.get("/v1/statement-key")).content
        assert len(sig) == 64 and b"BEGIN PUBLIC KEY" in key
        assert 'alg="Ed25519"' in r.headers["patient-power-signature"]
        doc = r.json()
        assert doc["period"] == closing and doc["chain_head"]["seq"] == closed["head_seq"] == 2
        assert doc["entries"] == 1 and doc["previous"] is None and doc["covers"]["from"] is None
        assert {a["account_id"]: (a["debits_pence"], a["credits_pence"], a["closing_pence"]) for a in doc["accounts"]} == {
            "commissioner:QWE": (-2_500, 0, -2_500), "provider:RJ1": (0, 2_500, 2_500)}
        assert doc["totals"]["closing_pence"] == 0 and doc["totals"]["debits_pence"] == -2_500
        # A bound token may not read it.
        http.headers.update(bearer_headers(["ledger:read", "ledger:close"], subject="london", regions=["Y56"]))
        assert (await http.get(f"/v1/periods/{closing}/statement")).status_code == 403
        assert (await http.post(f"/v1/periods/{next_period(closing)}/close")).status_code == 403

    # Offline, with the documented command: it verifies, and fails once any byte changes.
    (tmp_path / "statement.json").write_bytes(body)
    (tmp_path / "statement.sig").write_bytes(sig)
    (tmp_path / "key.pem").write_bytes(key)

    def verify() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "services.ledger", "verify-statement", str(tmp_path / "statement.json"),
                               str(tmp_path / "statement.sig"), "--public-key", str(tmp_path / "key.pem")],
                              capture_output=True, text=True, cwd=ROOT, timeout=60)

    ok = verify()
    assert ok.returncode == 0 and ok.stdout.startswith("OK: "), ok.stdout + ok.stderr
    if shutil.which("openssl"):  # the README's second way, without this project
        o = subprocess.run(["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(tmp_path / "key.pem"), "-rawin", "-in",
                            str(tmp_path / "statement.json"), "-sigfile", str(tmp_path / "statement.sig")],
                           capture_output=True, text=True, timeout=30)
        assert o.returncode == 0 and "Verified Successfully" in o.stdout, o.stdout + o.stderr
    for at in (0, len(body) // 2, len(body) - 1):
        changed = bytearray(body)
        changed[at] ^= 0x01
        (tmp_path / "statement.json").write_bytes(bytes(changed))
        bad = verify()
        assert bad.returncode == 1 and bad.stdout.startswith("FAILED: "), (at, bad.stdout, bad.stderr)


async def test_a_second_close_chains_to_the_first_and_opens_with_its_closing_balances(settings) -> None:
    """Two closes in order: the second statement's opening balances are the first's closing ones and
    it names the first statement's SHA-256 (driven through the handler with a clock, since only
    ended months close)."""
    from services.ledger.app import create_app
    from services.ledger.periods import Signer, dev_private_key
    from services.ledger.ports import Submitted
    from tests.conftest import running

    app = create_app(settings)
    async with running(app):
        h = app.state.runtime.handlers
        signer = Signer(dev_private_key())
        sep = datetime(2026, 9, 20, 12, tzinfo=timezone.utc)
        octo = datetime(2026, 10, 5, 12, tzinfo=timezone.utc)
        nov = datetime(2026, 11, 3, 12, tzinfo=timezone.utc)

        def sub(tid: str, *legs: tuple[str, int]) -> Submitted:
            return Submitted(TransferRequested.model_validate(transfer(tid, *legs)), "c", None)

        await h.post([sub("s1", ("commissioner:QWE", -1_000), ("provider:RJ1", 1_000))], now=sep)
        await h.post([sub("o1", ("commissioner:QWE", -200), ("fund:Y56", 200))], now=octo)
        first, made = await h.close_period("2026-09", closed_by="auditor", signer=signer, now=octo)
        assert made
        await h.post([sub("o2", ("provider:RJ1", -100), ("fund:Y56", 100))], now=octo + timedelta(hours=1))
        second, _ = await h.close_period("2026-10", closed_by="auditor", signer=signer, now=nov)
        import json

        a, b = json.loads(first.body), json.loads(second.body)
        assert b["previous"] == {"period": "2026-09", "statement_sha256": first.sha256}
        assert b["covers"]["from"] == "2026-10-01" and b["covers"]["through"] == "2026-10-31"
        lines = {x["account_id"]: x for x in b["accounts"]}
        assert lines["provider:RJ1"]["opening_pence"] == 1_000 and lines["provider:RJ1"]["closing_pence"] == 900
        assert lines["fund:Y56"] == {"account_id": "fund:Y56", "opening_pence": 0, "debits_pence": 0, "credits_pence": 300,
                                     "closing_pence": 300}
        assert {x["account_id"]: x["closing_pence"] for x in a["accounts"]} == {"commissioner:QWE": -1_000, "provider:RJ1": 1_000}
        # Out of order is refused.
        from services.ledger.periods import CloseRefused

        with pytest.raises(CloseRefused, match="next to close is 2026-11"):
            await h.close_period("2026-12", closed_by="auditor", signer=signer, now=datetime(2027, 2, 1, tzinfo=timezone.utc))


# ---------------------------------------------------------------------------------------------
# Reconcile a remittance file
# ---------------------------------------------------------------------------------------------
async def test_a_remittance_file_with_one_missing_one_different_and_one_unknown_is_reported_exactly(settings) -> None:
    async with ledger_http(settings, FINANCE) as http:
        for pid, pence in (("pay-a", 10_000), ("pay-b", 20_000), ("pay-c", 30_000), ("pay-d", 40_000)):
            # paid in two parts, as payments does: at once, then the at-risk share on settlement
            for part, share in (("now", pence * 9 // 10), ("settle", pence - pence * 9 // 10)):
                r = await http.post("/v1/transfers", json=transfer(f"{pid}-{part}", ("commissioner:QWE", -share), ("provider:RJ1", share),
                                                                   cause={"kind": "payment", "payment_id": pid,
                                                                          "provider_code": "RJ1", "period": "2026-10"}))
                assert r.status_code == 201, r.text
        # another commissioner's and another period's payments are out of scope
        for tid, icb, period in (("other-icb", "QMJ", "2026-10"), ("other-period", "QWE", "2026-09")):
            r = await http.post("/v1/transfers", json=transfer(tid, (f"commissioner:{icb}", -5), ("provider:RJ1", 5),
                                                               cause={"kind": "payment", "payment_id": tid, "period": period}))
            assert r.status_code == 201, r.text
        file = ("payment_id,date,amount\n"
                "pay-a,2026-11-03,100.00\n"      # matched
                "pay-b,2026-11-03,199.99\n"      # different by 1p
                "pay-c,2026-11-04,300\n"         # matched (whole pounds)
                "pay-z,2026-11-04,12.34\n")      # unknown; pay-d is missing
        r = await http.post("/v1/remittances", params={"commissioner": "QWE", "period": "2026-10", "file_name": "qwe-oct.csv"},
                            content=file, headers={"content-type": "text/csv"})
        assert r.status_code == 201, r.text
        run = r.json()
        assert run["counts"] == {"matched": 2, "missing": 1, "different": 1, "unknown": 1}
        assert (run["file_pence"], run["ledger_pence"]) == (10_000 + 19_999 + 30_000 + 1_234, 100_000)
        assert run["difference_pence"] == 61_233 - 100_000 and run["file_rows"] == 4 and run["imported_by"] == "ledger-tests"
        lines = (await http.get(run["lines_url"])).json()["items"]
        assert [(x["payment_id"], x["status"], x["file_pence"], x["ledger_pence"], x["difference_pence"]) for x in lines] == [
            ("pay-a", "matched", 10_000, 10_000, 0), ("pay-b", "different", 19_999, 20_000, -1),
            ("pay-c", "matched", 30_000, 30_000, 0), ("pay-d", "missing", None, 40_000, -40_000),
            ("pay-z", "unknown", 1_234, None, 1_234)]
        exc = await http.get(run["exceptions_url"])
        assert exc.status_code == 200
        assert [(x["payment_id"], x["status"], x["difference_pence"]) for x in csv.DictReader(io.StringIO(exc.text))] == [
            ("pay-b", "different", "-1"), ("pay-d", "missing", "-40000"), ("pay-z", "unknown", "1234")]
        assert (await http.get("/v1/remittances", params={"commissioner": "QWE"})).json()["items"][0]["run_id"] == run["run_id"]

        # A malformed file is refused naming row and column, and leaves no run behind.
        for bad, field in (("payment_id,date\npay-a,2026-11-03\n", "header"),
                           ("payment_id,date,amount\npay-a,2026-11-03,1,234.00\n", "row 2"),
                           ("payment_id,date,amount\npay-a,03/11/2026,10.00\n", "row 2: date"),
                           ("payment_id,date,amount\npay-a,2026-11-03,£10.00\n", "row 2: amount"),
                           ("payment_id,date,amount_pence\npay-a,2026-11-03,10.5\n", "row 2: amount_pence"),
                           ("payment_id,date,amount\npay-a,2026-11-03,1\npay-a,2026-11-04,2\n", "row 3: payment_id")):
            r = await http.post("/v1/remittances", params={"commissioner": "QWE", "period": "2026-10"}, content=bad,
                                headers={"content-type": "text/csv"})
            assert r.status_code == 422, (bad, r.text)
            assert r.json()["errors"][0]["field"] == field, (bad, r.json())
        assert len((await http.get("/v1/remittances")).json()["items"]) == 1

        # Another region's commissioner is outside a London token's binding; its runs are not shown.
        http.headers.update(bearer_headers(["ledger:reconcile"], subject="bob", regions=["Y59"]))
        r = await http.post("/v1/remittances", params={"commissioner": "QWE", "period": "2026-10"}, content=file,
                            headers={"content-type": "text/csv"})
        assert r.status_code == 403 and "commissioner" in r.text
        assert (await http.get(f"/v1/remittances/{run['run_id']}")).status_code == 404
        assert (await http.get("/v1/remittances")).json()["items"] == []

"""Scale-out: two instances of every service in the same consumer groups give exactly the same
final ledger as one instance (same accounts and balances, same set of journal entries)."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import asyncpg
import httpx
import pytest

from devtools.demo import run_scenario
from devtools.stack import Stack
from services.funds.domain import LEDGER_HOLD_MAX_S
from shared.security import DEV_METRICS_TOKEN

pytestmark = pytest.mark.e2e


async def final_ledger(stack: Stack) -> tuple[dict[str, int], set[tuple[str, str]]]:
    conn = await asyncpg.connect(stack.database_urls["ledger"])
    try:
        balances = {r["account_id"]: r["posted_pence"] for r in await conn.fetch("SELECT account_id, posted_pence FROM accounts")}
        # The chain order (seq) may differ between runs; the entries themselves must not.
        entries = {(r["transfer_id"], _comparable(r["request"])) for r in await conn.fetch("SELECT transfer_id, request FROM entries")}
    finally:
        await conn.close()
    return balances, entries


def _comparable(request: str) -> str:
    """A grant's reservation holds until its milestone's due date (plus grace), so its timeout_s is
    counted from the moment of approval and differs between two runs minutes apart. Everything else
    in the entry must match byte for byte; the timeout must still be a real, bounded one."""
    body = json.loads(request)
    if (body.get("cause") or {}).get("kind") == "grant_reserve":
        timeout_s = body.pop("timeout_s")
        assert isinstance(timeout_s, int) and 1 <= timeout_s <= LEDGER_HOLD_MAX_S, timeout_s
        return json.dumps(body, sort_keys=True)
    return request


async def run(tmp: Path, replicas: int, today: date) -> tuple[dict[str, int], set[tuple[str, str]], list[str]]:
    stack = Stack(work_dir=tmp, replicas={"ledger": replicas, "payments": replicas, "feedback": replicas})
    try:
        await stack.start()
        result = await run_scenario(stack, out=lambda *_args: None, today=today)
        assert result == {"total_pence": 0, "verified": 1}
        balances, entries = await final_ledger(stack)
        if replicas > 1:
            # Both instances did real work: the group spread the partitions over them.
            async with httpx.AsyncClient(timeout=10, headers={"Authorization": f"Bearer {DEV_METRICS_TOKEN}"}) as http:
                for name, metric in (("payments-2", "events_handled_total"), ("ledger-2", "ledger_transfers_total")):
                    text = (await http.get(stack.services[name].url + "/metrics")).text
                    handled = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(metric + "{"))
                    assert handled > 0, f"{name} handled nothing"
        return balances, entries, sorted(stack.services)
    finally:
        stack.stop()


async def test_two_instances_of_each_service_give_the_same_ledger_as_one(tmp_path: Path) -> None:
    today = date.today()  # both runs derive the same dates even if midnight falls between them
    one_balances, one_entries, one_names = await run(tmp_path / "one", 1, today)
    two_balances, two_entries, two_names = await run(tmp_path / "two", 2, today)
    assert one_names == ["feedback", "funds", "ledger", "payments"]
    assert two_names == ["feedback", "feedback-2", "funds", "ledger", "ledger-2", "payments", "payments-2"]
    assert sum(one_balances.values()) == 0 and len(one_entries) > 1000
    assert two_balances == one_balances
    assert two_entries == one_entries

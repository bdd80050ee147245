"""Scale-out: two instances of every service in the same consumer groups give exactly the same
final ledger as one instance (same accounts and balances, same set of journal entries)."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import httpx
import pytest

from shared.security import DEV_METRICS_TOKEN
from devtools.demo import run_scenario
from devtools.stack import Stack

pytestmark = pytest.mark.e2e


async def final_ledger(stack: Stack) -> tuple[dict[str, int], set[tuple[str, str]]]:
    conn = await asyncpg.connect(stack.database_urls["ledger"])
    try:
        balances = {r["account_id"]: r["posted_pence"] for r in await conn.fetch("SELECT account_id, posted_pence FROM accounts")}
        # The chain order (seq) may differ between runs; the entries themselves must not.
        entries = {(r["transfer_id"], r["request"]) for r in await conn.fetch("SELECT transfer_id, request FROM entries")}
    finally:
        await conn.close()
    return balances, entries


async def run(tmp: Path, replicas: int) -> tuple[dict[str, int], set[tuple[str, str]], list[str]]:
    stack = Stack(work_dir=tmp, replicas={"ledger": replicas, "payments": replicas, "feedback": replicas})
    try:
        await stack.start()
        result = await run_scenario(stack, out=lambda *_args: None)
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
    one_balances, one_entries, one_names = await run(tmp_path / "one", 1)
    two_balances, two_entries, two_names = await run(tmp_path / "two", 2)
    assert one_names == ["feedback", "funds", "ledger", "payments"]
    assert two_names == ["feedback", "feedback-2", "funds", "ledger", "ledger-2", "payments", "payments-2"]
    assert sum(one_balances.values()) == 0 and len(one_entries) > 1000
    assert two_balances == one_balances
    assert two_entries == one_entries

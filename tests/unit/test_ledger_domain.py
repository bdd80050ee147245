"""Unit and property tests for services/ledger/domain.py (plan_batch, floors, hash chain)."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.ledger.domain import (
    GENESIS_HASH,
    ChainRow,
    ExistingEntry,
    PlannedEntry,
    account_floor,
    account_type,
    differing_fields,
    entry_hash,
    fingerprint,
    plan_batch,
    transfer_body,
    verify_chain,
)
from shared.contracts import TransferRequested
from shared.money import InvariantError

PROPS = settings(max_examples=150, deadline=None)
T0 = datetime(2026, 6, 1, 9, 0, tzinfo=timezone.utc)


def tr(transfer_id: str, *pairs: tuple[str, int], kind: str = "manual", **cause: Any) -> TransferRequested:
    return TransferRequested.model_validate(
        {
            "transfer_id": transfer_id,
            "legs": [{"account_id": a, "amount_pence": p} for a, p in pairs],
            "cause": {"kind": kind, **cause},
        }
    )


def hold(pid: str, amount: int = 100_000, at_risk: int = 10_000) -> TransferRequested:
    return tr(
        f"hold:{pid}",
        ("commissioner:QWE", -amount),
        ("provider:RJ1", amount - at_risk),
        ("held:RJ1", at_risk),
        kind="payment_hold",
        payment_id=pid,
    )


def settle(pid: str, released: int, diverted: int) -> TransferRequested:
    pairs = [("held:RJ1", -(released + diverted))]
    if released:
        pairs.append(("provider:RJ1", released))
    if diverted:
        pairs.append(("fund:Y56", diverted))
    return tr(f"settle:{pid}", *pairs, kind="settlement", payment_id=pid)


def plan(requests: list[TransferRequested], balances: dict[str, int] | None = None, existing: dict[str, ExistingEntry] | None = None,
         head_seq: int = 0, head_hash: str = GENESIS_HASH, posted_at: datetime = T0):  # type: ignore[no-untyped-def]
    return plan_batch(
        requests, balances_pence=balances or {}, existing=existing or {}, head_seq=head_seq, head_hash=head_hash, posted_at=posted_at
    )


def rows_of(entries: list[PlannedEntry]) -> list[ChainRow]:
    return [ChainRow(e.seq, e.transfer_id, e.body, e.posted_at, e.prev_hash, e.hash) for e in entries]


def existing_of(entries: list[PlannedEntry]) -> dict[str, ExistingEntry]:
    return {e.transfer_id: ExistingEntry(e.seq, e.fingerprint, e.hash, e.body) for e in entries}


def apply(balances: dict[str, int], deltas: dict[str, int]) -> dict[str, int]:
    out = dict(balances)
    for k, v in deltas.items():
        out[k] = out.get(k, 0) + v
    return out


# ---------------------------------------------------------------------------------------------
# Accounts
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("account", "kind", "floor"),
    [("commissioner:QWE", "commissioner", None), ("provider:RJ1", "provider", None), ("held:RJ1", "held", 0), ("fund:Y56", "fund", 0)],
)
def test_account_types_and_floors(account: str, kind: str, floor: int | None) -> None:
    assert account_type(account) == kind
    assert account_floor(account) == floor


@pytest.mark.parametrize("account", ["bank:RJ1", "RJ1", "", "Held:RJ1"])
def test_unknown_account_type_is_an_invariant_error(account: str) -> None:
    with pytest.raises(InvariantError, match="unknown account type"):
        account_type(account)


# ---------------------------------------------------------------------------------------------
# Fingerprint, body, differing fields, entry hash
# ---------------------------------------------------------------------------------------------
def test_fingerprint_ignores_leg_order_and_transfer_id() -> None:
    a = tr("t1", ("held:RJ1", -5), ("provider:RJ1", 2), ("fund:Y56", 3))
    b = tr("t2", ("fund:Y56", 3), ("held:RJ1", -5), ("provider:RJ1", 2))
    assert fingerprint(a) == fingerprint(b)
    assert len(fingerprint(a)) == 64 and int(fingerprint(a), 16) >= 0
    assert transfer_body(a) == transfer_body(b)
    assert transfer_body(a)["legs"] == [["fund:Y56", 3], ["held:RJ1", -5], ["provider:RJ1", 2]]


def test_fingerprint_depends_on_amounts_accounts_and_cause() -> None:
    base = tr("t1", ("held:RJ1", -5), ("provider:RJ1", 5))
    variants = [
        tr("t1", ("held:RJ1", -6), ("provider:RJ1", 6)),
        tr("t1", ("held:RJ1", -5), ("fund:Y56", 5)),
        tr("t1", ("held:RJ1", -5), ("provider:RJ1", 5), kind="reversal"),
        tr("t1", ("held:RJ1", -5), ("provider:RJ1", 5), note="why"),
    ]
    prints = {fingerprint(base), *(fingerprint(v) for v in variants)}
    assert len(prints) == 1 + len(variants)


def test_differing_fields() -> None:
    a = {"legs": [["held:RJ1", -5], ["provider:RJ1", 5]], "cause": {"kind": "manual"}}
    assert differing_fields(a, a) == []
    assert differing_fields(a, {**a, "cause": {"kind": "reversal"}}) == ["cause"]
    assert differing_fields(a, {"legs": [], "cause": {}}) == ["cause", "legs"]
    assert differing_fields(a, {"legs": a["legs"]}) == ["cause"]


def test_entry_hash_is_deterministic_and_sensitive_to_every_input() -> None:
    body = transfer_body(tr("t1", ("held:RJ1", -5), ("provider:RJ1", 5)))
    h = entry_hash(GENESIS_HASH, 1, "t1", body, T0)
    assert h == entry_hash(GENESIS_HASH, 1, "t1", dict(body), T0)
    others = {
        entry_hash("1" * 64, 1, "t1", body, T0),
        entry_hash(GENESIS_HASH, 2, "t1", body, T0),
        entry_hash(GENESIS_HASH, 1, "t2", body, T0),
        entry_hash(GENESIS_HASH, 1, "t1", {**body, "legs": [["held:RJ1", -6], ["provider:RJ1", 6]]}, T0),
        entry_hash(GENESIS_HASH, 1, "t1", {**body, "cause": {"kind": "reversal"}}, T0),
        entry_hash(GENESIS_HASH, 1, "t1", body, T0 + timedelta(microseconds=1)),
    }
    assert h not in others and len(others) == 6


# ---------------------------------------------------------------------------------------------
# plan_batch: examples
# ---------------------------------------------------------------------------------------------
def test_empty_batch_changes_nothing() -> None:
    p = plan([], head_seq=7, head_hash="a" * 64)
    assert (p.entries, p.deltas_pence, p.outcomes, p.head_seq, p.head_hash) == ([], {}, [], 7, "a" * 64)


def test_single_transfer_posts_as_next_entry() -> None:
    req = hold("p1")
    p = plan([req], head_seq=41, head_hash="f" * 64)
    assert len(p.entries) == 1
    e = p.entries[0]
    assert (e.seq, e.transfer_id, e.prev_hash, e.posted_at) == (42, "hold:p1", "f" * 64, T0)
    assert e.fingerprint == fingerprint(req)
    assert e.hash == entry_hash("f" * 64, 42, "hold:p1", transfer_body(req), T0)
    assert p.outcomes[0].status == "posted" and p.outcomes[0].entry_seq == 42 and p.outcomes[0].entry_hash == e.hash
    assert (p.head_seq, p.head_hash) == (42, e.hash)
    assert p.deltas_pence == {"commissioner:QWE": -100_000, "provider:RJ1": 90_000, "held:RJ1": 10_000}


def test_entries_chain_together_within_a_batch() -> None:
    p = plan([hold("p1"), hold("p2"), hold("p3")])
    assert [e.seq for e in p.entries] == [1, 2, 3]
    assert p.entries[0].prev_hash == GENESIS_HASH
    assert [e.prev_hash for e in p.entries[1:]] == [e.hash for e in p.entries[:-1]]
    assert verify_chain(rows_of(p.entries)) == (True, None, "3 entries verified")


def test_deltas_aggregate_per_account() -> None:
    p = plan([hold("p1"), hold("p2"), settle("p1", 7_000, 3_000)])
    assert p.deltas_pence == {
        "commissioner:QWE": -200_000,
        "provider:RJ1": 187_000,
        "held:RJ1": 10_000,
        "fund:Y56": 3_000,
    }
    assert sum(p.deltas_pence.values()) == 0


def test_duplicate_within_batch_is_a_success_writing_nothing() -> None:
    p = plan([hold("p1"), hold("p1")])
    assert [o.status for o in p.outcomes] == ["posted", "duplicate"]
    assert p.outcomes[1].entry_seq == p.outcomes[0].entry_seq == 1
    assert p.outcomes[1].entry_hash == p.outcomes[0].entry_hash
    assert len(p.entries) == 1
    assert p.deltas_pence["held:RJ1"] == 10_000


def test_duplicate_against_existing_entry() -> None:
    first = plan([hold("p1")])
    again = plan([hold("p1")], balances=apply({}, first.deltas_pence), existing=existing_of(first.entries),
                 head_seq=first.head_seq, head_hash=first.head_hash)
    assert [o.status for o in again.outcomes] == ["duplicate"]
    assert again.outcomes[0].entry_seq == 1 and again.outcomes[0].entry_hash == first.head_hash
    assert again.entries == [] and again.deltas_pence == {}
    assert (again.head_seq, again.head_hash) == (first.head_seq, first.head_hash)


def test_duplicate_with_legs_in_another_order_is_still_a_duplicate() -> None:
    a = tr("t1", ("commissioner:QWE", -5), ("provider:RJ1", 5))
    b = tr("t1", ("provider:RJ1", 5), ("commissioner:QWE", -5))
    assert [o.status for o in plan([a, b]).outcomes] == ["posted", "duplicate"]


def test_conflict_names_the_differing_field_and_writes_nothing() -> None:
    first = plan([hold("p1")])
    changed = hold("p1", amount=100_001)
    p = plan([changed], balances=apply({}, first.deltas_pence), existing=existing_of(first.entries),
             head_seq=first.head_seq, head_hash=first.head_hash)
    (o,) = p.outcomes
    assert o.status == "conflict"
    assert o.reason == "transfer_id already used with different legs"
    assert o.entry_seq == 1 and o.entry_hash == first.head_hash
    assert p.entries == [] and p.deltas_pence == {}


def test_conflict_on_cause_within_batch() -> None:
    a = tr("t1", ("commissioner:QWE", -5), ("provider:RJ1", 5), note="first")
    b = tr("t1", ("commissioner:QWE", -5), ("provider:RJ1", 5), note="second")
    p = plan([a, b])
    assert [o.status for o in p.outcomes] == ["posted", "conflict"]
    assert p.outcomes[1].reason == "transfer_id already used with different cause"
    assert len(p.entries) == 1


def test_held_account_cannot_go_below_zero() -> None:
    p = plan([settle("p1", 7_000, 3_000)])
    (o,) = p.outcomes
    assert o.status == "rejected"
    assert o.reason == "held:RJ1 would fall to -10000 pence, below its floor of 0"
    assert o.entry_seq is None and o.entry_hash is None
    assert p.entries == [] and p.deltas_pence == {} and p.head_seq == 0


def test_fund_account_cannot_go_below_zero_but_can_reach_it() -> None:
    pay_out = tr("grant:1", ("fund:Y56", -500), ("provider:RJ1", 500))
    assert plan([pay_out], balances={"fund:Y56": 499}).outcomes[0].status == "rejected"
    ok = plan([pay_out], balances={"fund:Y56": 500})
    assert ok.outcomes[0].status == "posted"
    assert apply({"fund:Y56": 500}, ok.deltas_pence)["fund:Y56"] == 0


def test_commissioner_and_provider_have_no_floor() -> None:
    p = plan([tr("t1", ("commissioner:QWE", -10**9), ("provider:RJ1", 10**9)), tr("t2", ("provider:RJ1", -2 * 10**9), ("commissioner:QWE", 2 * 10**9))])
    assert [o.status for o in p.outcomes] == ["posted", "posted"]
    assert p.deltas_pence == {"commissioner:QWE": 10**9, "provider:RJ1": -(10**9)}


def test_floor_uses_running_balance_within_the_batch() -> None:
    in_order = plan([hold("p1"), settle("p1", 7_000, 3_000)])
    assert [o.status for o in in_order.outcomes] == ["posted", "posted"]
    assert in_order.deltas_pence["held:RJ1"] == 0
    reversed_order = plan([settle("p1", 7_000, 3_000), hold("p1")])
    assert [o.status for o in reversed_order.outcomes] == ["rejected", "posted"]


def test_rejected_transfer_can_be_retried_once_funds_arrive() -> None:
    first = plan([settle("p1", 7_000, 3_000)])
    assert first.outcomes[0].status == "rejected"
    second = plan([hold("p1"), settle("p1", 7_000, 3_000)], existing=existing_of(first.entries))
    assert [o.status for o in second.outcomes] == ["posted", "posted"]


def test_a_rejected_transfer_does_not_block_a_later_one_in_the_batch() -> None:
    p = plan([settle("p9", 1, 0), hold("p1")])
    assert [o.status for o in p.outcomes] == ["rejected", "posted"]
    assert p.entries[0].seq == 1  # the rejection used no sequence number


# ---------------------------------------------------------------------------------------------
# verify_chain
# ---------------------------------------------------------------------------------------------
@pytest.fixture()
def chain() -> list[ChainRow]:
    return rows_of(plan([hold("p1"), hold("p2"), settle("p1", 7_000, 3_000), settle("p2", 10_000, 0)]).entries)


def test_verify_chain_ok(chain: list[ChainRow]) -> None:
    assert verify_chain(chain) == (True, None, "4 entries verified")
    assert verify_chain([]) == (True, None, "0 entries verified")


def test_verify_chain_from_a_later_start(chain: list[ChainRow]) -> None:
    assert verify_chain(chain[2:], start_hash=chain[1].hash, start_seq=2) == (True, None, "2 entries verified")
    assert verify_chain(chain[2:])[0:2] == (False, 3)


def test_verify_chain_detects_gap(chain: list[ChainRow]) -> None:
    ok, bad, why = verify_chain([chain[0], chain[2]])
    assert (ok, bad) == (False, 3) and "gap" in why


def test_verify_chain_detects_broken_link(chain: list[ChainRow]) -> None:
    tampered = [*chain[:2], replace(chain[2], prev_hash="0" * 64), *chain[3:]]
    ok, bad, why = verify_chain(tampered)
    assert (ok, bad) == (False, 3) and "does not link" in why


def test_verify_chain_detects_unbalanced_body(chain: list[ChainRow]) -> None:
    body = {**chain[1].body, "legs": [[a, m + 1 if a == "held:RJ1" else m] for a, m in chain[1].body["legs"]]}
    ok, bad, why = verify_chain([chain[0], replace(chain[1], body=body), *chain[2:]])
    assert (ok, bad) == (False, 2) and "does not balance (1 pence)" in why


def test_verify_chain_detects_balanced_tampering(chain: list[ChainRow]) -> None:
    # Redirect the diversion from the fund to the provider: still balanced, but the hash no longer matches.
    legs = [["provider:RJ1" if a == "fund:Y56" else a, m] for a, m in chain[2].body["legs"]]
    merged: dict[str, int] = {}
    for a, m in legs:
        merged[a] = merged.get(a, 0) + m
    body = {**chain[2].body, "legs": sorted([a, m] for a, m in merged.items())}
    ok, bad, why = verify_chain([*chain[:2], replace(chain[2], body=body), chain[3]])
    assert (ok, bad) == (False, 3) and "content does not match its hash" in why


def test_verify_chain_detects_changed_time_or_id(chain: list[ChainRow]) -> None:
    moved = [chain[0], replace(chain[1], posted_at=chain[1].posted_at + timedelta(seconds=1)), *chain[2:]]
    assert verify_chain(moved)[:2] == (False, 2)
    renamed = [chain[0], replace(chain[1], transfer_id="hold:px"), *chain[2:]]
    assert verify_chain(renamed)[:2] == (False, 2)


# ---------------------------------------------------------------------------------------------
# plan_batch: properties
# ---------------------------------------------------------------------------------------------
ACCOUNTS = ["commissioner:QWE", "provider:RJ1", "provider:RTH", "held:RJ1", "held:RTH", "fund:Y56", "fund:Y58"]
FLOORED = [a for a in ACCOUNTS if a.split(":")[0] in ("held", "fund")]


@st.composite
def transfer_requests(draw: st.DrawFn) -> TransferRequested:
    tid = draw(st.sampled_from([f"t{i}" for i in range(8)]))
    accounts = draw(st.lists(st.sampled_from(ACCOUNTS), min_size=2, max_size=4, unique=True))
    amounts = [draw(st.integers(-300, 300).filter(bool)) for _ in accounts[:-1]]
    if sum(amounts) == 0:
        amounts[0] += 2 if amounts[0] == -1 else 1
    kind = draw(st.sampled_from(["payment_hold", "settlement", "manual"]))
    return tr(tid, *zip(accounts, [*amounts, -sum(amounts)]), kind=kind)


@st.composite
def batches(draw: st.DrawFn) -> tuple[list[TransferRequested], dict[str, int], int, str]:
    pool = draw(st.lists(transfer_requests(), min_size=1, max_size=12))
    # Sample with replacement so exact duplicates appear as well as same-id conflicts.
    requests = draw(st.lists(st.sampled_from(pool), min_size=0, max_size=25))
    balances = {a: draw(st.integers(0, 400)) for a in FLOORED if draw(st.booleans())}
    balances.update({a: draw(st.integers(-1000, 1000)) for a in ACCOUNTS if a not in FLOORED and draw(st.booleans())})
    head_seq = draw(st.integers(0, 10_000))
    head_hash = GENESIS_HASH if head_seq == 0 else draw(st.text("0123456789abcdef", min_size=64, max_size=64))
    return requests, balances, head_seq, head_hash


def content(req: TransferRequested) -> tuple[Any, ...]:
    return (tuple(sorted((leg.account_id, leg.amount_pence) for leg in req.legs)), req.cause.model_dump_json())


def oracle(requests: list[TransferRequested], balances: dict[str, int]) -> tuple[list[str], dict[str, int]]:
    """An independent, naive model of plan_batch's decisions."""
    state = dict(balances)
    seen: dict[str, tuple[Any, ...]] = {}
    statuses = []
    for req in requests:
        if req.transfer_id in seen:
            statuses.append("duplicate" if seen[req.transfer_id] == content(req) else "conflict")
            continue
        after = {leg.account_id: state.get(leg.account_id, 0) + leg.amount_pence for leg in req.legs}
        if any(after[leg.account_id] < 0 for leg in req.legs if leg.account_id in FLOORED and leg.amount_pence < 0):
            statuses.append("rejected")
            continue
        state.update(after)
        seen[req.transfer_id] = content(req)
        statuses.append("posted")
    return statuses, state


@PROPS
@given(batches())
def test_plan_batch_properties(batch: tuple[list[TransferRequested], dict[str, int], int, str]) -> None:
    requests, balances, head_seq, head_hash = batch
    p = plan(requests, balances=balances, head_seq=head_seq, head_hash=head_hash)

    # One outcome per request, in order, matching an independent model.
    expected_statuses, expected_balances = oracle(requests, balances)
    assert [o.transfer_id for o in p.outcomes] == [r.transfer_id for r in requests]
    assert [o.status for o in p.outcomes] == expected_statuses

    # Balance deltas sum to zero and match the posted requests.
    assert sum(p.deltas_pence.values()) == 0
    final = apply(balances, p.deltas_pence)
    assert final == expected_balances

    # Floors hold after every single posted entry, not just at the end.
    running = dict(balances)
    posted = [r for r, o in zip(requests, p.outcomes) if o.status == "posted"]
    for req in posted:
        for leg in req.legs:
            running[leg.account_id] = running.get(leg.account_id, 0) + leg.amount_pence
        for account in FLOORED:
            assert running.get(account, 0) >= 0, f"{account} went below its floor"
    assert all(final.get(a, 0) >= 0 for a in FLOORED)

    # Entries: one per posted request, gap-free, chained from the given head, verifiable.
    assert [e.transfer_id for e in p.entries] == [r.transfer_id for r in posted]
    assert [e.seq for e in p.entries] == list(range(head_seq + 1, head_seq + 1 + len(posted)))
    assert p.head_seq == head_seq + len(posted)
    assert p.head_hash == (p.entries[-1].hash if p.entries else head_hash)
    ok, bad, _ = verify_chain(rows_of(p.entries), start_hash=head_hash, start_seq=head_seq)
    assert ok and bad is None
    assert len({r.transfer_id for r in posted}) == len(posted)

    # Duplicates and conflicts point at the entry that owns the id.
    by_id = {e.transfer_id: e for e in p.entries}
    for o in p.outcomes:
        if o.status in ("duplicate", "conflict"):
            assert (o.entry_seq, o.entry_hash) == (by_id[o.transfer_id].seq, by_id[o.transfer_id].hash)
        if o.status == "rejected":
            assert o.entry_seq is None and o.reason and "below its floor of 0" in o.reason

    # Replaying the posted requests against the resulting state gives only duplicates.
    again = plan(posted, balances=final, existing=existing_of(p.entries), head_seq=p.head_seq, head_hash=p.head_hash)
    assert all(o.status == "duplicate" for o in again.outcomes)
    assert again.entries == [] and again.deltas_pence == {}
    assert (again.head_seq, again.head_hash) == (p.head_seq, p.head_hash)
    # Replaying everything never posts anything that was already posted, and never changes history.
    replay_all = plan(requests, balances=final, existing=existing_of(p.entries), head_seq=p.head_seq, head_hash=p.head_hash)
    for o_first, o_again in zip(p.outcomes, replay_all.outcomes):
        if o_first.status == "posted":
            assert o_again.status == "duplicate" and o_again.entry_seq == o_first.entry_seq


@PROPS
@given(batches(), st.data())
def test_splitting_a_batch_gives_the_same_ledger(batch: tuple[list[TransferRequested], dict[str, int], int, str], data: st.DataObject) -> None:
    requests, balances, head_seq, head_hash = batch
    cut = data.draw(st.integers(0, len(requests)))
    whole = plan(requests, balances=balances, head_seq=head_seq, head_hash=head_hash)
    first = plan(requests[:cut], balances=balances, head_seq=head_seq, head_hash=head_hash)
    second = plan(requests[cut:], balances=apply(balances, first.deltas_pence), existing=existing_of(first.entries),
                  head_seq=first.head_seq, head_hash=first.head_hash)
    assert first.outcomes + second.outcomes == whole.outcomes
    assert first.entries + second.entries == whole.entries
    assert apply(apply(balances, first.deltas_pence), second.deltas_pence) == apply(balances, whole.deltas_pence)
    assert (second.head_seq, second.head_hash) == (whole.head_seq, whole.head_hash)
    rows = rows_of(first.entries + second.entries)
    assert verify_chain(rows, start_hash=head_hash, start_seq=head_seq)[0]

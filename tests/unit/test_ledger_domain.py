"""Unit and property tests for services/ledger/domain.py: plan_batch, floors, two-phase transfers,
reversals, kept rejections, the hash chain, and replay determinism over random streams."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.ledger.chain import (
    GENESIS_HASH,
    ChainRow,
    Expire,
    canonical,
    differing_fields,
    entry_hash,
    fingerprint,
    request_body,
    verify_chain,
)
from services.ledger.domain import (
    STATUS_OF_KIND,
    AccountState,
    BatchPlan,
    ExistingEntry,
    PendingState,
    PlannedEntry,
    PostedOriginal,
    account_floor,
    account_type,
    chain_row_of,
    plan_batch,
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
    """plan_batch with posted balances in pence (the accounts' pending columns at zero)."""
    return plan_batch(requests, balances={a: AccountState(p) for a, p in (balances or {}).items()}, existing=existing or {},
                      head_seq=head_seq, head_hash=head_hash, now=posted_at)


def deltas(p: BatchPlan) -> dict[str, int]:
    """Posted balance changes per account touched by the batch's entries."""
    return {a: d[0] for a, d in p.deltas.items()}


def triples(e: PlannedEntry) -> list[list[Any]]:
    return [[leg.account_id, leg.amount_pence, leg.pending_pence] for leg in e.legs]


def rows_of(entries: list[PlannedEntry]) -> list[ChainRow]:
    return [chain_row_of(e) for e in entries]


def existing_of(source: list[PlannedEntry] | BatchPlan) -> dict[str, ExistingEntry]:
    """Earlier decisions as the store loads them: entries, and kept rejections when given a plan."""
    entries = source.entries if isinstance(source, BatchPlan) else source
    out = {e.transfer_id: ExistingEntry(e.seq, e.fingerprint, e.hash, e.request_json, STATUS_OF_KIND[e.kind]) for e in entries}
    if isinstance(source, BatchPlan):
        out.update({r.transfer_id: ExistingEntry(None, r.fingerprint, None, r.request_json, "rejected", r.reason) for r in source.rejections})
    return out


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
    assert request_body(a) == request_body(b)
    assert request_body(a)["legs"] == [["fund:Y56", 3], ["held:RJ1", -5], ["provider:RJ1", 2]]


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
    body = canonical(request_body(tr("t1", ("held:RJ1", -5), ("provider:RJ1", 5))))
    legs = [["held:RJ1", -5, 0], ["provider:RJ1", 5, 0]]
    h = entry_hash(GENESIS_HASH, 1, "t1", "posted", body, legs, T0)
    assert h == entry_hash(GENESIS_HASH, 1, "t1", "posted", body, [list(x) for x in legs], T0)
    others = {
        entry_hash("1" * 64, 1, "t1", "posted", body, legs, T0),
        entry_hash(GENESIS_HASH, 2, "t1", "posted", body, legs, T0),
        entry_hash(GENESIS_HASH, 1, "t2", "posted", body, legs, T0),
        entry_hash(GENESIS_HASH, 1, "t1", "pending", body, legs, T0),
        entry_hash(GENESIS_HASH, 1, "t1", "posted", body, [["held:RJ1", -6, 0], ["provider:RJ1", 6, 0]], T0),
        entry_hash(GENESIS_HASH, 1, "t1", "posted", body, [["held:RJ1", -5, 1], ["provider:RJ1", 5, -1]], T0),
        entry_hash(GENESIS_HASH, 1, "t1", "posted", canonical({"kind": "reversal"}), legs, T0),
        entry_hash(GENESIS_HASH, 1, "t1", "posted", body, legs, T0 + timedelta(microseconds=1)),
        entry_hash(GENESIS_HASH, 1, "t1", "posted", body, legs, T0, T0),
    }
    assert h not in others and len(others) == 9


# ---------------------------------------------------------------------------------------------
# plan_batch: examples
# ---------------------------------------------------------------------------------------------
def test_empty_batch_changes_nothing() -> None:
    p = plan([], head_seq=7, head_hash="a" * 64)
    assert (p.entries, deltas(p), p.outcomes, p.head_seq, p.head_hash) == ([], {}, [], 7, "a" * 64)


def test_single_transfer_posts_as_next_entry() -> None:
    req = hold("p1")
    p = plan([req], head_seq=41, head_hash="f" * 64)
    assert len(p.entries) == 1
    e = p.entries[0]
    assert (e.seq, e.transfer_id, e.prev_hash, e.posted_at) == (42, "hold:p1", "f" * 64, T0)
    assert e.fingerprint == fingerprint(req)
    assert e.hash == entry_hash("f" * 64, 42, "hold:p1", "posted", canonical(request_body(req)), triples(e), T0)
    assert e.kind == "posted" and json.loads(e.request_json) == request_body(req)
    assert p.outcomes[0].status == "posted" and p.outcomes[0].entry_seq == 42 and p.outcomes[0].entry_hash == e.hash
    assert (p.head_seq, p.head_hash) == (42, e.hash)
    assert deltas(p) == {"commissioner:QWE": -100_000, "provider:RJ1": 90_000, "held:RJ1": 10_000}


def test_entries_chain_together_within_a_batch() -> None:
    p = plan([hold("p1"), hold("p2"), hold("p3")])
    assert [e.seq for e in p.entries] == [1, 2, 3]
    assert p.entries[0].prev_hash == GENESIS_HASH
    assert [e.prev_hash for e in p.entries[1:]] == [e.hash for e in p.entries[:-1]]
    assert verify_chain(rows_of(p.entries)) == (True, None, "3 entries verified")


def test_deltas_aggregate_per_account() -> None:
    p = plan([hold("p1"), hold("p2"), settle("p1", 7_000, 3_000)])
    assert deltas(p) == {
        "commissioner:QWE": -200_000,
        "provider:RJ1": 187_000,
        "held:RJ1": 10_000,
        "fund:Y56": 3_000,
    }
    assert sum(deltas(p).values()) == 0


def test_duplicate_within_batch_is_a_success_writing_nothing() -> None:
    p = plan([hold("p1"), hold("p1")])
    assert [o.status for o in p.outcomes] == ["posted", "duplicate"]
    assert p.outcomes[1].entry_seq == p.outcomes[0].entry_seq == 1
    assert p.outcomes[1].entry_hash == p.outcomes[0].entry_hash
    assert len(p.entries) == 1
    assert deltas(p)["held:RJ1"] == 10_000


def test_duplicate_against_existing_entry() -> None:
    first = plan([hold("p1")])
    again = plan([hold("p1")], balances=apply({}, deltas(first)), existing=existing_of(first.entries),
                 head_seq=first.head_seq, head_hash=first.head_hash)
    assert [o.status for o in again.outcomes] == ["duplicate"]
    assert again.outcomes[0].entry_seq == 1 and again.outcomes[0].entry_hash == first.head_hash
    assert again.entries == [] and deltas(again) == {}
    assert (again.head_seq, again.head_hash) == (first.head_seq, first.head_hash)


def test_duplicate_with_legs_in_another_order_is_still_a_duplicate() -> None:
    a = tr("t1", ("commissioner:QWE", -5), ("provider:RJ1", 5))
    b = tr("t1", ("provider:RJ1", 5), ("commissioner:QWE", -5))
    assert [o.status for o in plan([a, b]).outcomes] == ["posted", "duplicate"]


def test_conflict_names_the_differing_field_and_writes_nothing() -> None:
    first = plan([hold("p1")])
    changed = hold("p1", amount=100_001)
    p = plan([changed], balances=apply({}, deltas(first)), existing=existing_of(first.entries),
             head_seq=first.head_seq, head_hash=first.head_hash)
    (o,) = p.outcomes
    assert o.status == "conflict"
    assert o.reason == "transfer_id already used with different legs"
    assert o.entry_seq == 1 and o.entry_hash == first.head_hash
    assert p.entries == [] and deltas(p) == {}


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
    assert p.entries == [] and deltas(p) == {} and p.head_seq == 0


def test_fund_account_cannot_go_below_zero_but_can_reach_it() -> None:
    pay_out = tr("grant:1", ("fund:Y56", -500), ("provider:RJ1", 500))
    assert plan([pay_out], balances={"fund:Y56": 499}).outcomes[0].status == "rejected"
    ok = plan([pay_out], balances={"fund:Y56": 500})
    assert ok.outcomes[0].status == "posted"
    assert apply({"fund:Y56": 500}, deltas(ok))["fund:Y56"] == 0


def test_commissioner_and_provider_have_no_floor() -> None:
    p = plan([tr("t1", ("commissioner:QWE", -10**9), ("provider:RJ1", 10**9)), tr("t2", ("provider:RJ1", -2 * 10**9), ("commissioner:QWE", 2 * 10**9))])
    assert [o.status for o in p.outcomes] == ["posted", "posted"]
    assert deltas(p) == {"commissioner:QWE": 10**9, "provider:RJ1": -(10**9)}


def test_floor_uses_running_balance_within_the_batch() -> None:
    in_order = plan([hold("p1"), settle("p1", 7_000, 3_000)])
    assert [o.status for o in in_order.outcomes] == ["posted", "posted"]
    assert deltas(in_order)["held:RJ1"] == 0
    reversed_order = plan([settle("p1", 7_000, 3_000), hold("p1")])
    assert [o.status for o in reversed_order.outcomes] == ["rejected", "posted"]


def test_a_rejection_is_kept_so_a_retry_gets_the_same_answer() -> None:
    # Like TigerBeetle's id_already_failed: replaying a stream can never turn a refusal into money moving.
    first = plan([settle("p1", 7_000, 3_000)])
    assert first.outcomes[0].status == "rejected"
    assert [r.transfer_id for r in first.rejections] == ["settle:p1"]
    second = plan([hold("p1"), settle("p1", 7_000, 3_000)], existing=existing_of(first))
    assert [o.status for o in second.outcomes] == ["posted", "duplicate"]
    assert second.outcomes[1].original_status == "rejected" and second.outcomes[1].event_status == "rejected"
    assert second.outcomes[1].reason == first.outcomes[0].reason
    # A new id is a new decision.
    third = plan([settle("p1b", 7_000, 3_000)], balances=apply({}, deltas(second)))
    assert third.outcomes[0].status == "posted"


def test_a_rejection_retried_with_other_fields_is_a_conflict() -> None:
    first = plan([settle("p1", 7_000, 3_000)])
    p = plan([settle("p1", 6_000, 4_000)], existing=existing_of(first))
    assert p.outcomes[0].status == "conflict" and p.outcomes[0].reason == "transfer_id already used with different legs"


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
    legs = [[leg[0], leg[1] + 1 if leg[0] == "held:RJ1" else leg[1], *leg[2:]] for leg in chain[1].legs]
    ok, bad, why = verify_chain([chain[0], replace(chain[1], legs=legs), *chain[2:]])
    assert (ok, bad) == (False, 2) and "does not balance (1 pence)" in why


def test_verify_chain_detects_balanced_tampering(chain: list[ChainRow]) -> None:
    # Redirect the diversion from the fund to the provider: still balanced, but the hash no longer matches.
    merged: dict[str, int] = {}
    for leg in chain[2].legs:
        a = "provider:RJ1" if leg[0] == "fund:Y56" else leg[0]
        merged[a] = merged.get(a, 0) + leg[1]
    legs = sorted([a, m, 0] for a, m in merged.items())
    ok, bad, why = verify_chain([*chain[:2], replace(chain[2], legs=legs), chain[3]])
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
            seen[req.transfer_id] = content(req)  # a refusal is kept, like a posting
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
    assert sum(deltas(p).values()) == 0
    final = apply(balances, deltas(p))
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
            owner = by_id.get(o.transfer_id)
            assert (o.entry_seq, o.entry_hash) == ((owner.seq, owner.hash) if owner else (None, None))
        if o.status == "rejected":
            assert o.entry_seq is None and o.reason and "below its floor of 0" in o.reason

    # Replaying the posted requests against the resulting state gives only duplicates.
    again = plan(posted, balances=final, existing=existing_of(p), head_seq=p.head_seq, head_hash=p.head_hash)
    assert all(o.status == "duplicate" for o in again.outcomes)
    assert again.entries == [] and deltas(again) == {}
    assert (again.head_seq, again.head_hash) == (p.head_seq, p.head_hash)
    # Replaying everything never posts anything that was already posted, and never changes history.
    replay_all = plan(requests, balances=final, existing=existing_of(p), head_seq=p.head_seq, head_hash=p.head_hash)
    assert replay_all.entries == [] and deltas(replay_all) == {} and replay_all.rejections == []
    for o_first, o_again in zip(p.outcomes, replay_all.outcomes):
        if o_first.status in ("posted", "rejected"):
            assert o_again.status == "duplicate" and o_again.entry_seq == o_first.entry_seq
            assert o_again.event_status == o_first.event_status and o_again.reason == o_first.reason


@PROPS
@given(batches(), st.data())
def test_splitting_a_batch_gives_the_same_ledger(batch: tuple[list[TransferRequested], dict[str, int], int, str], data: st.DataObject) -> None:
    requests, balances, head_seq, head_hash = batch
    cut = data.draw(st.integers(0, len(requests)))
    whole = plan(requests, balances=balances, head_seq=head_seq, head_hash=head_hash)
    first = plan(requests[:cut], balances=balances, head_seq=head_seq, head_hash=head_hash)
    second = plan(requests[cut:], balances=apply(balances, deltas(first)), existing=existing_of(first),
                  head_seq=first.head_seq, head_hash=first.head_hash)
    assert first.outcomes + second.outcomes == whole.outcomes
    assert first.entries + second.entries == whole.entries
    assert apply(apply(balances, deltas(first)), deltas(second)) == apply(balances, deltas(whole))
    assert (second.head_seq, second.head_hash) == (whole.head_seq, whole.head_hash)
    rows = rows_of(first.entries + second.entries)
    assert verify_chain(rows, start_hash=head_hash, start_seq=head_seq)[0]


# ---------------------------------------------------------------------------------------------
# Two-phase transfers, expiry, reversals
# ---------------------------------------------------------------------------------------------
def req(transfer_id: str, kind: str = "posted", legs: tuple[tuple[str, int], ...] = (), **extra: Any) -> TransferRequested:
    cause = extra.pop("cause", {"kind": "manual"})
    return TransferRequested.model_validate({
        "transfer_id": transfer_id, "kind": kind, "legs": [{"account_id": a, "amount_pence": p} for a, p in legs],
        "cause": cause, **extra})


FUNDED = {"fund:Y56": AccountState(1_000, 0, 0)}
GRANT = (("fund:Y56", -600), ("provider:RJ1", 600))


def state_after(p: BatchPlan, start: dict[str, AccountState] | None = None) -> dict[str, tuple[int, int, int]]:
    out = {a: (s.posted_pence, s.pending_debits_pence, s.pending_credits_pence) for a, s in (start or {}).items()}
    for a, d in p.deltas.items():
        o = out.get(a, (0, 0, 0))
        out[a] = (o[0] + d[0], o[1] + d[1], o[2] + d[2])
    return out


def pendings_of(p: BatchPlan, prior: dict[str, PendingState] | None = None) -> dict[str, PendingState]:
    out = dict(prior or {})
    out.update({x.transfer_id: x for x in p.new_pendings})
    for pid, (status, _seq) in p.resolved_pendings.items():
        out[pid] = replace(out[pid], status=status)  # type: ignore[arg-type]
    return out


def test_pending_reserves_without_moving_posted_balances() -> None:
    p = plan_batch([req("g1", "pending", GRANT, timeout_s=60)], balances=FUNDED, existing={}, head_seq=0, head_hash=GENESIS_HASH, now=T0)
    (o,) = p.outcomes
    assert o.status == "pending" and o.event_status == "pending"
    (e,) = p.entries
    assert e.kind == "pending" and e.expires_at == T0 + timedelta(seconds=60)
    assert triples(e) == [["fund:Y56", 0, -600], ["provider:RJ1", 0, 600]]
    assert state_after(p, FUNDED) == {"fund:Y56": (1_000, 600, 0), "provider:RJ1": (0, 0, 600)}
    assert [(leg.balance_after_pence, leg.pending_debits_after_pence) for leg in e.legs] == [(1_000, 600), (0, 0)]
    assert p.new_pendings == [PendingState("g1", (("fund:Y56", -600), ("provider:RJ1", 600)), T0 + timedelta(seconds=60))]


def test_a_pending_debit_reduces_what_is_available() -> None:
    p = plan_batch([req("g1", "pending", GRANT), req("g2", "pending", GRANT), req("x", "posted", (("fund:Y56", -401), ("provider:RJ1", 401))),
                    req("y", "posted", (("fund:Y56", -400), ("provider:RJ1", 400)))],
                   balances=FUNDED, existing={}, head_seq=0, head_hash=GENESIS_HASH, now=T0)
    assert [o.status for o in p.outcomes] == ["pending", "rejected", "rejected", "posted"]
    assert p.outcomes[1].reason == "fund:Y56 would have -200 pence available, below its floor of 0"
    assert p.outcomes[2].reason == "fund:Y56 would fall to -1 pence, below its floor of 0"
    assert state_after(p, FUNDED)["fund:Y56"] == (600, 600, 0)


def run(cmds: list[Any], balances: dict[str, AccountState], pend: dict[str, PendingState] | None = None, now: datetime = T0,
        originals: dict[str, PostedOriginal] | None = None) -> BatchPlan:
    return plan_batch(cmds, balances=balances, existing={}, pendings=pend or {}, originals=originals or {}, head_seq=0,
                      head_hash=GENESIS_HASH, now=now)


def test_post_pending_in_full_in_part_and_void() -> None:
    first = run([req("g1", "pending", GRANT), req("g2", "pending", (("fund:Y56", -300), ("provider:RJ1", 300)))], FUNDED)
    bal = {a: AccountState(*v) for a, v in state_after(first, FUNDED).items()}
    pend = pendings_of(first)
    p = run([req("g1-post", "post_pending", (("fund:Y56", -250), ("provider:RJ1", 250)), pending_id="g1"),
             req("g2-void", "void_pending", pending_id="g2"),
             req("g1-again", "post_pending", pending_id="g1")], bal, pend)
    assert [o.status for o in p.outcomes] == ["posted", "voided", "rejected"]
    assert p.outcomes[2].reason == "pending transfer g1 is already posted"
    assert triples(p.entries[0]) == [["fund:Y56", -250, 600], ["provider:RJ1", 250, -600]]
    assert triples(p.entries[1]) == [["fund:Y56", 0, 300], ["provider:RJ1", 0, -300]]
    # The remainder (350) went back: only the posted part moved, nothing stays reserved.
    assert state_after(p, bal) == {"fund:Y56": (750, 0, 0), "provider:RJ1": (250, 0, 0)}
    assert p.resolved_pendings == {"g1": ("posted", 1), "g2": ("voided", 2)}
    full = run([req("g1-post", "post_pending", pending_id="g1")], bal, pend)
    assert state_after(full, bal) == {"fund:Y56": (400, 300, 0), "provider:RJ1": (600, 0, 300)}


@pytest.mark.parametrize(("legs", "reason"), [
    ((("fund:Y56", -601), ("provider:RJ1", 601)), "fund:Y56: -601 pence is more than the -600 pence pending"),
    ((("fund:Y56", 10), ("provider:RJ1", -10)), "fund:Y56: a partial post must keep the pending leg's sign"),
    ((("fund:Y58", -10), ("provider:RJ1", 10)), "fund:Y58 is not a leg of pending transfer g1"),
])
def test_bad_partial_posts_are_refused(legs: tuple[tuple[str, int], ...], reason: str) -> None:
    first = run([req("g1", "pending", GRANT)], FUNDED)
    bal = {a: AccountState(*v) for a, v in state_after(first, FUNDED).items()}
    p = run([req("g1-post", "post_pending", legs, pending_id="g1")], bal, pendings_of(first))
    assert p.outcomes[0].status == "rejected" and p.outcomes[0].reason == reason and p.entries == []


def test_unknown_pending_is_refused() -> None:
    p = run([req("v", "void_pending", pending_id="nope")], {})
    assert (p.outcomes[0].status, p.outcomes[0].reason) == ("rejected", "no pending transfer nope")


def test_a_late_post_expires_the_pending_first_and_is_refused() -> None:
    first = run([req("g1", "pending", GRANT, timeout_s=30)], FUNDED)
    bal = {a: AccountState(*v) for a, v in state_after(first, FUNDED).items()}
    on_time = run([req("g1-post", "post_pending", pending_id="g1")], bal, pendings_of(first), now=T0 + timedelta(seconds=29))
    assert on_time.outcomes[0].status == "posted"
    late = run([req("g1-post", "post_pending", pending_id="g1")], bal, pendings_of(first), now=T0 + timedelta(seconds=30))
    assert [(o.status, o.reason) for o in late.outcomes] == [("rejected", "pending expired")]
    (e,) = late.entries
    assert (e.kind, e.transfer_id, triples(e)) == ("expire", "g1~expired", [["fund:Y56", 0, 600], ["provider:RJ1", 0, -600]])
    assert late.expiries == [("g1", e.seq, e.hash)]
    assert late.resolved_pendings == {"g1": ("expired", e.seq)}
    assert state_after(late, bal)["fund:Y56"] == (1_000, 0, 0)


def test_expire_command_voids_only_what_is_still_pending() -> None:
    first = run([req("g1", "pending", GRANT, timeout_s=30), req("g2", "pending", (("fund:Y56", -1), ("provider:RJ1", 1)), timeout_s=30)], FUNDED)
    pend = pendings_of(first)
    pend["g2"] = replace(pend["g2"], status="posted")
    bal = {a: AccountState(*v) for a, v in state_after(first, FUNDED).items()}
    p = run([Expire("g1"), Expire("g2"), Expire("missing")], bal, pend, now=T0 + timedelta(minutes=1))
    assert [(o.transfer_id, o.status, o.reason) for o in p.outcomes] == [("g1", "voided", "pending expired")]
    assert [e.transfer_id for e in p.entries] == ["g1~expired"]


def test_reversal_must_negate_the_original_exactly_and_only_once() -> None:
    orig = {"t1": PostedOriginal("t1", "posted", (("commissioner:QWE", -500), ("provider:RJ1", 500)))}
    good = req("t1-rev", "posted", (("commissioner:QWE", 500), ("provider:RJ1", -500)), reverses="t1", cause={"kind": "reversal"})
    p = run([good, req("t1-rev2", "posted", (("commissioner:QWE", 500), ("provider:RJ1", -500)), reverses="t1")], {}, originals=orig)
    assert [o.status for o in p.outcomes] == ["posted", "rejected"]
    assert p.outcomes[1].reason == "t1 is already reversed by t1-rev"
    assert p.reversals == {"t1": "t1-rev"} and p.entries[0].reverses == "t1"
    wrong = run([req("r", "posted", (("commissioner:QWE", 400), ("provider:RJ1", -400)), reverses="t1")], {}, originals=orig)
    assert wrong.outcomes[0].reason == "a reversal's legs must be the exact negation of t1's"
    missing = run([req("r", "posted", (("commissioner:QWE", 1), ("provider:RJ1", -1)), reverses="zz")], {})
    assert missing.outcomes[0].reason == "no posted transfer zz to reverse"


def test_reversal_respects_floors() -> None:
    orig = {"d": PostedOriginal("d", "posted", (("held:RJ1", -100), ("fund:Y56", 100)))}
    p = run([req("d-rev", "posted", (("held:RJ1", 100), ("fund:Y56", -100)), reverses="d")], {"fund:Y56": AccountState(99)}, originals=orig)
    assert p.outcomes[0].status == "rejected" and "floor" in (p.outcomes[0].reason or "")


def test_same_id_different_kind_or_link_is_a_conflict_naming_the_field() -> None:
    first = run([req("g1", "pending", GRANT, timeout_s=30)], FUNDED)
    again = plan_batch([req("g1", "pending", GRANT, timeout_s=31), req("g1", "posted", GRANT, cause={"kind": "manual"})],
                       balances=FUNDED, existing=existing_of(first), head_seq=1, head_hash=first.head_hash, now=T0)
    assert [o.reason for o in again.outcomes] == ["transfer_id already used with different timeout_s",
                                                  "transfer_id already used with different kind, timeout_s"]
    dup = plan_batch([req("g1", "pending", GRANT, timeout_s=30, ordering_key="other")], balances=FUNDED, existing=existing_of(first),
                     head_seq=1, head_hash=first.head_hash, now=T0)
    assert (dup.outcomes[0].status, dup.outcomes[0].original_status) == ("duplicate", "pending")


# ---------------------------------------------------------------------------------------------
# Random streams: properties and replay
# ---------------------------------------------------------------------------------------------
STREAM_ACCOUNTS = ["commissioner:QWE", "commissioner:QHM", "provider:RJ1", "provider:RTH", "held:RJ1", "held:RTH", "fund:Y56", "fund:Y58"]
FLOORED_STREAM = [a for a in STREAM_ACCOUNTS if a.startswith(("held:", "fund:"))]
STEP = timedelta(seconds=10)


def random_stream(rng: Any, n_ops: int) -> list[list[TransferRequested] | str]:
    """A random stream of batches of requests, with "tick" markers where time passes and the
    expiry task runs. Transfers, pendings (some with timeouts), full and partial posts, voids,
    reversals (right and wrong), exact duplicates and same-id conflicts, unknown references."""
    out: list[list[TransferRequested] | str] = []
    batch: list[TransferRequested] = []
    sent: list[TransferRequested] = []
    pendings: list[TransferRequested] = []
    posted: list[tuple[str, tuple[tuple[str, int], ...]]] = []
    for i in range(n_ops):
        roll = rng.random()
        tid = f"op{i}"
        r: TransferRequested
        if roll < 0.05 and sent:
            r = rng.choice(sent)  # exact duplicate (at-least-once delivery)
        elif roll < 0.08 and sent:
            old = rng.choice(sent)
            r = old.model_copy(update={"cause": old.cause.model_copy(update={"note": "changed"})})  # same id, other fields
        elif roll < 0.13:
            out.append("tick")
            continue
        elif roll < 0.45 or (roll < 0.7 and not pendings and not posted):
            accounts = rng.sample(STREAM_ACCOUNTS, rng.randint(2, 4))
            amounts = [rng.choice([-1, 1]) * rng.randint(1, 400) for _ in accounts[:-1]]
            if sum(amounts) == 0:
                amounts[0] += 2 if amounts[0] == -1 else 1
            legs = tuple(zip(accounts, [*amounts, -sum(amounts)]))
            kind = "pending" if roll < 0.25 else "posted"
            timeout = rng.choice([None, 5, 15, 40]) if kind == "pending" else None
            r = req(tid, kind, legs, timeout_s=timeout)
            (pendings if kind == "pending" else posted).append(r if kind == "pending" else (tid, legs))  # type: ignore[arg-type]
        elif roll < 0.6 and pendings:
            p = rng.choice(pendings)
            if rng.random() < 0.3:
                r = req(tid, "void_pending", pending_id=p.transfer_id)
            elif len(p.legs) == 2 and rng.random() < 0.5:
                a, b = p.legs
                part = rng.randint(1, abs(a.amount_pence) + 1)  # sometimes one too many: refused
                sign = 1 if a.amount_pence > 0 else -1
                legs = ((a.account_id, sign * part), (b.account_id, -sign * part))
                r = req(tid, "post_pending", legs, pending_id=p.transfer_id)
                posted.append((tid, legs))
            else:
                r = req(tid, "post_pending", pending_id=p.transfer_id)
                posted.append((tid, tuple((leg.account_id, leg.amount_pence) for leg in p.legs)))
        elif roll < 0.75 and posted:
            orig_id, legs = rng.choice(posted)
            neg = tuple((a, -m) for a, m in legs)
            if rng.random() < 0.2:
                neg = tuple((a, m * 2) for a, m in neg)  # wrong amounts: refused
            r = req(tid, "posted", neg, reverses=orig_id, cause={"kind": "reversal"})
        else:
            r = req(tid, "void_pending", pending_id=f"nope{i}")
        sent.append(r)
        batch.append(r)
        if rng.random() < 0.2:
            out.append(batch)
            batch = []
    if batch:
        out.append(batch)
    return out


class Ledger:
    """The store's bookkeeping around plan_batch, in memory (a fake for the core's port)."""

    def __init__(self, start: dict[str, int] | None = None) -> None:
        self.balances: dict[str, AccountState] = {}
        self.existing: dict[str, ExistingEntry] = {}
        self.pendings: dict[str, PendingState] = {}
        self.originals: dict[str, PostedOriginal] = {}
        self.entries: list[PlannedEntry] = []
        self.head_seq, self.head_hash = 0, GENESIS_HASH
        self.events: list[tuple[str, str]] = []
        if start:  # opening balances are an entry like any other
            self.apply([req("opening", "posted", tuple(sorted(start.items())))], T0 - STEP)

    def apply(self, cmds: list[Any], now: datetime, record: bool = True) -> BatchPlan:
        p = plan_batch(cmds, balances=self.balances, existing=self.existing, pendings=self.pendings, originals=self.originals,
                       head_seq=self.head_seq, head_hash=self.head_hash, now=now)
        for a, d in p.deltas.items():
            s = self.balances.get(a, AccountState())
            self.balances[a] = AccountState(s.posted_pence + d[0], s.pending_debits_pence + d[1], s.pending_credits_pence + d[2])
        self.entries.extend(p.entries)
        self.existing.update(existing_of(p))
        self.pendings = pendings_of(p, self.pendings)
        for e in p.entries:
            if e.kind in ("posted", "post_pending"):
                self.originals[e.transfer_id] = PostedOriginal(e.transfer_id, e.kind, tuple((leg.account_id, leg.amount_pence)
                                                                                           for leg in e.legs if leg.amount_pence))
        for orig, rev in p.reversals.items():
            self.originals[orig] = replace(self.originals[orig], reversed_by=rev)
        self.head_seq, self.head_hash = p.head_seq, p.head_hash
        if record:
            self.events.extend((o.transfer_id, o.event_status) for o in p.outcomes)
        return p

    def expire_due(self, now: datetime) -> BatchPlan:
        due = [pid for _, pid in sorted((p.expires_at, pid) for pid, p in self.pendings.items()
                                        if p.status == "pending" and p.expires_at and p.expires_at <= now)]  # as the store orders them
        return self.apply([Expire(pid) for pid in due], now, record=False)

    def snapshot(self) -> tuple[Any, ...]:
        return (sorted(self.balances.items()), self.head_seq, self.head_hash, sorted(self.pendings.items()))


def play(ledger: Ledger, stream: list[Any], start: datetime = T0) -> None:
    now = start
    for item in stream:
        if item == "tick":
            now += STEP
            ledger.expire_due(now)
        else:
            ledger.apply(item, now)


def check_invariants(ledger: Ledger) -> None:
    posted = {a: s.posted_pence for a, s in ledger.balances.items()}
    assert sum(posted.values()) == 0, "balances must sum to zero"
    for a, s in ledger.balances.items():
        assert s.pending_debits_pence >= 0 and s.pending_credits_pence >= 0, f"{a}: pending went negative"
        if a in FLOORED_STREAM:
            assert s.posted_pence - s.pending_debits_pence >= 0, f"{a}: below its floor"
    # Every leg's stored balances, floors after every single entry, and the chain itself.
    running: dict[str, list[int]] = {}
    assert verify_chain(rows_of(ledger.entries), running=running)[0]
    for e in ledger.entries:
        for leg in e.legs:
            if leg.account_id in FLOORED_STREAM:
                assert leg.balance_after_pence - leg.pending_debits_after_pence >= 0
    assert {a: tuple(v) for a, v in running.items()} == {
        a: (s.posted_pence, s.pending_debits_pence, s.pending_credits_pence) for a, s in ledger.balances.items()}
    # What is still reserved is exactly the legs of the transfers still pending.
    reserved: dict[str, list[int]] = {}
    for p in ledger.pendings.values():
        if p.status == "pending":
            for a, m in p.legs:
                r = reserved.setdefault(a, [0, 0])
                r[0 if m < 0 else 1] += abs(m)
    for a, s in ledger.balances.items():
        assert (s.pending_debits_pence, s.pending_credits_pence) == tuple(reserved.get(a, [0, 0])), a
    # Each original is reversed at most once; every reversal names a distinct original.
    reverses = [e.reverses for e in ledger.entries if e.reverses]
    assert len(reverses) == len(set(reverses))


STREAM_START = {"fund:Y56": 2_000, "fund:Y58": 500, "held:RJ1": 1_000, "commissioner:QWE": -3_500}


@settings(max_examples=100, deadline=None)
@given(st.randoms(use_true_random=False), st.integers(1, 100))
def test_random_streams_keep_every_invariant_and_replay_identically(rng: Any, n_ops: int) -> None:
    stream = random_stream(rng, n_ops)
    ledger = Ledger(STREAM_START)
    play(ledger, stream)
    check_invariants(ledger)
    kinds = {e.kind for e in ledger.entries}
    assert kinds <= {"posted", "pending", "post_pending", "void_pending", "expire"}

    # Replaying the same stream into the same ledger (at-least-once redelivery) changes nothing:
    # same balances, same pendings, same chain head, and every request gets its first answer.
    before = ledger.snapshot()
    n_entries, events_before = len(ledger.entries), list(ledger.events)
    play(ledger, stream)
    assert ledger.snapshot() == before
    assert len(ledger.entries) == n_entries
    assert ledger.events[len(events_before):] == events_before[1:]  # [0] is the opening entry

    # An independent ledger fed the same stream with the same clock is identical, entry for entry.
    twin = Ledger(STREAM_START)
    play(twin, stream)
    assert twin.entries == ledger.entries[:len(twin.entries)] and twin.head_hash == before[2]


@settings(max_examples=60, deadline=None)
@given(st.randoms(use_true_random=False), st.integers(1, 80), st.data())
def test_batch_boundaries_do_not_change_the_ledger(rng: Any, n_ops: int, data: st.DataObject) -> None:
    stream = [r for item in random_stream(rng, n_ops) if item != "tick" for r in item]  # type: ignore[union-attr]
    whole = Ledger(STREAM_START)
    whole.apply(stream, T0)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=5)))
    split = Ledger(STREAM_START)
    for lo, hi in zip([0, *cuts], [*cuts, len(stream)]):
        split.apply(stream[lo:hi], T0)
    assert split.entries == whole.entries and split.snapshot() == whole.snapshot() and split.events == whole.events


def test_fast_request_json_is_the_canonical_form() -> None:
    import random

    from services.ledger.chain import request_json

    reqs = [r for item in random_stream(random.Random(5), 300) if item != "tick" for r in item]  # type: ignore[union-attr]
    reqs += [req("u", "posted", (("fund:Y56", -1), ("provider:RJ1", 1)), cause={"kind": "manual", "note": "caf\u00e9 \"quoted\" \\ x"}),
             req("p", "pending", GRANT, timeout_s=30), req("e", "void_pending", pending_id="p")]
    for r in reqs:
        assert request_json(r) == canonical(request_body(r))
    assert request_json(Expire("p")) == canonical(request_body(Expire("p")))


_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20)
# Every cause field but the note is a bounded id (shared/contracts.py); the note carries any text.
_ID = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:\-]{0,30}", fullmatch=True)
_REF = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:@\-]{0,30}", fullmatch=True)


@given(st.fixed_dictionaries(
    {"kind": st.sampled_from(["payment", "payment_hold", "settlement", "diversion", "release", "appeal_upheld",
                              "reversal", "expiry", "manual"])},
    optional={"payment_id": _ID, "episode_id": _ID, "provider_code": st.from_regex(r"[A-Z0-9]{3}([A-Z0-9]{2})?", fullmatch=True),
              "period": st.from_regex(r"20[0-9]{2}-(0[1-9]|1[0-2])", fullmatch=True), "scheme_id": _REF,
              "scheme_version": st.integers(1, 10**6), "settlement_id": _REF, "appeal_id": _REF, "note": _TEXT}))
def test_fast_cause_json_is_the_canonical_form(cause: dict[str, Any]) -> None:
    """The hand-built cause (hashed into every entry) spells exactly what the general form does."""
    from services.ledger.chain import cause_json as _cause_json
    from shared.contracts import TransferCause

    model = TransferCause.model_validate(cause)
    assert _cause_json(model) == canonical(model.model_dump(mode="json", exclude_none=True))


@given(st.lists(st.tuples(st.sampled_from(["fund:Y56", "provider:RJ1", "held:R\u00e9"]), st.integers(-10**15, 10**15),
                          st.integers(-10**15, 10**15)), max_size=5), st.integers(2, 4))
def test_fast_legs_json_is_the_canonical_form(legs: list[tuple[str, int, int]], arity: int) -> None:
    from services.ledger.chain import legs_json as _legs_json

    cut = [leg[:arity] if arity <= 3 else (*leg, 7) for leg in legs]
    assert _legs_json(cut) == canonical([list(leg) for leg in cut])


def test_amounts_beyond_the_ledgers_range_are_refused() -> None:
    from services.ledger.domain import MAX_BALANCE_PENCE, MAX_LEG_PENCE

    huge = run([req("h", "posted", (("commissioner:QWE", -(MAX_LEG_PENCE + 1)), ("provider:RJ1", MAX_LEG_PENCE + 1)))], {})
    assert huge.outcomes[0].status == "rejected" and "more than a leg may move" in (huge.outcomes[0].reason or "")
    near = {"provider:RJ1": AccountState(MAX_BALANCE_PENCE - 5)}
    over = run([req("o", "posted", (("commissioner:QWE", -6), ("provider:RJ1", 6)))], near)
    assert over.outcomes[0].status == "rejected" and "range" in (over.outcomes[0].reason or "")
    ok = run([req("k", "posted", (("commissioner:QWE", -5), ("provider:RJ1", 5)))], near)
    assert ok.outcomes[0].status == "posted"

"""A batch of the ledger's answers leaves each transfer as recording them one by one would
(reconcile.final_answers, pure; the handler is tested in test_payments_handlers.py and the
PostgreSQL adapter in tests/integration/test_payments_store.py)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from services.payments.reconcile import final_answers as final_ledger_answers
from shared.contracts import TransferPosted

STATUSES = ["requested", "posted", "pending", "voided", "rejected"]

answers = st.lists(
    st.builds(TransferPosted, transfer_id=st.sampled_from(["t1", "t2", "t3"]),
              status=st.sampled_from(STATUSES[1:]), entry_seq=st.one_of(st.none(), st.integers(1, 50))),
    max_size=25,
)


def one_by_one(initial: dict[str, str], batch: list[TransferPosted]) -> dict[str, tuple]:
    """record_ledger_answer's UPDATE ... WHERE status <> 'posted', one answer at a time."""
    state = {t: (s, None) for t, s in initial.items()}
    for a in batch:
        if a.transfer_id in state and state[a.transfer_id][0] != "posted":
            state[a.transfer_id] = (a.status, a.entry_seq)
    return state


def batched(initial: dict[str, str], batch: list[TransferPosted]) -> dict[str, tuple]:
    state = {t: (s, None) for t, s in initial.items()}
    for a in final_ledger_answers(batch):  # one UPDATE ... FROM unnest ... WHERE status <> 'posted'
        if a.transfer_id in state and state[a.transfer_id][0] != "posted":
            state[a.transfer_id] = (a.status, a.entry_seq)
    return state


@given(st.fixed_dictionaries({"t1": st.sampled_from(STATUSES), "t2": st.sampled_from(STATUSES)}), answers)
def test_one_statement_leaves_what_one_by_one_leaves(initial: dict[str, str], batch: list[TransferPosted]) -> None:
    assert batched(initial, batch) == one_by_one(initial, batch)
    assert len({a.transfer_id for a in final_ledger_answers(batch)}) == len(final_ledger_answers(batch))

"""What the ledger admits before deciding (services/ledger/admission.py, shared/namespaces.py)."""

from __future__ import annotations

from shared.contracts import Leg, TransferCause, TransferRequested
from services.ledger.admission import refusal
from shared.reference import load_reference

REF = load_reference()


def transfer(tid: str, *legs: tuple[str, int], **kw: object) -> TransferRequested:
    return TransferRequested(transfer_id=tid, legs=tuple(Leg(account_id=a, amount_pence=p) for a, p in legs),
                             cause=TransferCause(kind="manual"), **kw)


def test_each_producer_uses_only_its_own_namespace() -> None:
    legs = (("commissioner:QWE", -100), ("provider:RJ1", 100))
    assert refusal(transfer("manual:fix-1", *legs), "manual", REF) is None
    assert refusal(transfer("pay:p-1", *legs), "payments", REF) is None
    field, why = refusal(transfer("release:pay-1", *legs), "manual", REF)  # type: ignore[misc]
    assert field == "transfer_id" and "belongs to payments" in why
    assert refusal(transfer("manual:x", *legs), "payments", REF)[0] == "transfer_id"  # type: ignore[index]
    assert "no known namespace" in refusal(transfer("t-1", *legs), "manual", REF)[1]  # type: ignore[index]


def test_payments_holds_cannot_be_posted_voided_or_reversed_by_hand() -> None:
    void = TransferRequested(transfer_id="manual:v", kind="void_pending", pending_id="hold:pay-1", cause=TransferCause(kind="manual"))
    assert refusal(void, "manual", REF)[0] == "pending_id"  # type: ignore[index]
    undo = transfer("manual:r", ("fund:Y56", -5), ("commissioner:QWE", 5), reverses="divert:pay-1")
    assert refusal(undo, "manual", REF)[0] == "reverses"  # type: ignore[index]


def test_unknown_organisations_are_not_opened_as_accounts() -> None:
    for account in ("fund:Y99", "provider:ZZZZZ", "held:ZZZ", "commissioner:QZZ"):
        field, why = refusal(transfer("manual:u", ("commissioner:QWE", -1), (account, 1)), "manual", REF)  # type: ignore[misc]
        assert field == "legs.1.account_id" and account in why


def test_a_manual_hold_needs_a_timeout() -> None:
    hold = transfer("manual:h", ("commissioner:QWE", -1), ("provider:RJ1", 1), kind="pending")
    assert refusal(hold, "manual", REF)[0] == "timeout_s"  # type: ignore[index]
    timed = transfer("manual:h", ("commissioner:QWE", -1), ("provider:RJ1", 1), kind="pending", timeout_s=3600)
    assert refusal(timed, "manual", REF) is None
    payments_hold = transfer("hold:p", ("commissioner:QWE", -1), ("provider:RJ1", 1), kind="pending")
    assert refusal(payments_hold, "payments", REF) is None  # documented: payments' holds carry no timeout

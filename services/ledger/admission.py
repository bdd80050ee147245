"""What the ledger admits before it decides anything (pure; no I/O).

A request that fails here is refused without a trace in the journal, so it cannot occupy an id
that its rightful producer will use later (a kept rejection would answer that producer "duplicate
of rejected" forever):
- the transfer id, and the pending transfer or original it names, must be in the namespace of the
  producer that asks (shared/namespaces.py): payments' ids only from payments, ``manual:`` ids only
  from the HTTP API;
- every account must name an organisation the reference data knows (``fund:Y99`` or
  ``provider:ZZZZZ`` are refused, not opened as new accounts);
- a manual pending transfer must carry a timeout: a reservation nobody resolves would hold money
  forever. (Payments' holds carry none on purpose: the at-risk share belongs to the provider or
  the fund by the patient's answer, and a timeout would hand it back to the commissioner, which no
  rule allows; payments lists holds left open past their settlement in its reconciliation report.)
"""

from __future__ import annotations

from shared import namespaces
from shared.contracts import TransferRequested
from shared.reference import ReferenceData


def unknown_account(account_id: str, ref: ReferenceData) -> bool:
    kind, _, code = account_id.partition(":")
    if kind == "fund":
        return code not in ref.regions
    if kind in ("provider", "held"):
        return code not in ref.providers
    if kind == "commissioner":
        return code not in ref.commissioners
    return True


def refusal(req: TransferRequested, producer: str, ref: ReferenceData) -> tuple[str, str] | None:
    """(field, reason) why the ledger refuses to consider this request at all, or None."""
    why = namespaces.refusal(producer, req.transfer_id, req.pending_id, req.reverses)
    if why is not None:
        return why.split(" ", 1)[0], why
    for i, leg in enumerate(req.legs):
        if unknown_account(leg.account_id, ref):
            return f"legs.{i}.account_id", f"{leg.account_id} names an organisation the reference data does not know"
    if producer == namespaces.MANUAL and req.kind == "pending" and req.timeout_s is None:
        return "timeout_s", "a manual pending transfer needs timeout_s, so a reservation nobody resolves is released"
    return None

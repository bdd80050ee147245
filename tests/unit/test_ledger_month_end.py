"""The pure parts of month-end: accounting dates and closed periods in the core, when a period may
close, the statement and its signature, and remittance matching and parsing."""

from __future__ import annotations

import json
from datetime import date, datetime, timezone

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from services.ledger import domain, periods, remittance
from services.ledger.chain import canonical, request_body, request_json
from shared.contracts import TransferRequested
from shared.money import InvariantError
from shared.periods import next_period, period_dates, period_of

T0 = datetime(2026, 12, 2, 10, tzinfo=timezone.utc)


def req(tid: str, value_date: date | None = None) -> TransferRequested:
    return TransferRequested(transfer_id=f"manual:{tid}", legs=[{"account_id": "commissioner:QWE", "amount_pence": -5},
                                                                {"account_id": "provider:RJ1", "amount_pence": 5}],
                             cause={"kind": "manual"}, value_date=value_date)


def plan(*requests: TransferRequested, closed_through: str | None = None, now: datetime = T0) -> domain.BatchPlan:
    return domain.plan_batch(list(requests), balances={}, existing={}, head_seq=0, head_hash=domain.GENESIS_HASH, now=now,
                             closed_through=closed_through)


# ---------------------------------------------------------------------------------------------
# Accounting dates in the core
# ---------------------------------------------------------------------------------------------
def test_accounting_date_is_the_uk_day_so_a_bst_midnight_posting_belongs_to_the_new_month() -> None:
    assert domain.accounting_date(datetime(2026, 10, 31, 23, 30, tzinfo=timezone.utc)) == date(2026, 10, 31)  # GMT
    assert domain.accounting_date(datetime(2026, 6, 30, 23, 30, tzinfo=timezone.utc)) == date(2026, 7, 1)  # BST
    assert domain.accounting_date(T0, date(2026, 11, 5)) == date(2026, 11, 5)
    assert period_of(date(2026, 1, 9)) == "2026-01"
    assert next_period("2026-12") == "2027-01" and next_period("2026-09") == "2026-10"
    assert period_dates("2026-12") == (date(2026, 12, 1), date(2027, 1, 1))


def test_an_entry_records_its_accounting_date_and_value_date() -> None:
    p = plan(req("a"), req("b", date(2026, 11, 30)))
    assert [(e.accounting_date, e.value_date) for e in p.entries] == [(date(2026, 12, 2), None),
                                                                      (date(2026, 11, 30), date(2026, 11, 30))]


def test_postings_dated_in_a_closed_period_or_the_future_are_refused_and_kept() -> None:
    p = plan(req("closed", date(2026, 10, 31)), req("open", date(2026, 11, 1)), req("future", date(2026, 12, 3)), req("today"),
             closed_through="2026-10")
    assert [o.status for o in p.outcomes] == ["rejected", "posted", "rejected", "posted"]
    assert p.outcomes[0].reason.startswith("period 2026-10 is closed")
    assert p.outcomes[2].reason.startswith("value_date 2026-12-03 is in the future")
    assert [r.transfer_id for r in p.rejections] == ["manual:closed", "manual:future"]  # same answer on a retry


def test_a_clock_inside_a_closed_period_cannot_post_into_it_either() -> None:
    p = plan(req("late"), closed_through="2026-12")
    assert p.outcomes[0].status == "rejected" and "2026-12 is closed" in (p.outcomes[0].reason or "")


def test_value_date_joins_the_canonical_request_only_when_set() -> None:
    """Entries from before the field existed keep their hashes: an unset value_date is absent."""
    assert "value_date" not in request_body(req("a")) and "value_date" not in request_json(req("a"))
    dated = req("a", date(2026, 11, 2))
    assert request_body(dated)["value_date"] == "2026-11-02"
    assert request_json(dated) == canonical(request_body(dated))
    assert request_json(req("a")) == canonical(request_body(req("a")))


# ---------------------------------------------------------------------------------------------
# When a period may close
# ---------------------------------------------------------------------------------------------
def test_periods_close_after_they_end_in_order_once() -> None:
    periods.may_close("2026-11", closed_through=None, today=date(2026, 12, 1))
    periods.may_close("2026-03", closed_through=None, today=date(2026, 12, 1))  # the first close: any ended month
    periods.may_close("2026-12", closed_through="2026-11", today=date(2027, 1, 1))
    for period, through, today, why in (("2026-12", None, date(2026, 12, 31), "has not ended"),
                                        ("2026-11", "2026-11", date(2027, 1, 1), "already closed"),
                                        ("2026-10", "2026-11", date(2027, 1, 1), "already closed"),
                                        ("2027-01", "2026-11", date(2027, 3, 1), "next to close is 2026-12")):
        with pytest.raises(periods.CloseRefused, match=why):
            periods.may_close(period, closed_through=through, today=today)


# ---------------------------------------------------------------------------------------------
# Statements
# ---------------------------------------------------------------------------------------------
def statement(movements, previous=None, before=None, period="2026-11") -> dict:  # type: ignore[no-untyped-def]
    return periods.build_statement(period=period, closed_through_before=before, closed_at=T0, closed_by="auditor", head_seq=9,
                                   head_hash="ab" * 32, entries=3, movements=movements, previous=previous,
                                   previous_sha256="cd" * 32 if previous else None, key_id="k1")


def test_a_statement_opens_with_the_previous_closing_balances_and_totals_by_type() -> None:
    first = statement([periods.Movement("commissioner:QWE", -1_000, 0), periods.Movement("provider:RJ1", 0, 1_000)],
                      period="2026-10")
    second = statement([periods.Movement("provider:RJ1", -100, 0), periods.Movement("fund:Y56", 0, 100)], previous=first,
                       before="2026-10")
    lines = {a["account_id"]: a for a in second["accounts"]}
    assert lines["commissioner:QWE"] == {"account_id": "commissioner:QWE", "opening_pence": -1_000, "debits_pence": 0,
                                         "credits_pence": 0, "closing_pence": -1_000}
    assert lines["provider:RJ1"]["closing_pence"] == 900 and lines["fund:Y56"]["closing_pence"] == 100
    assert second["totals"]["closing_pence"] == 0 and second["totals"]["by_type"]["provider"]["closing_pence"] == 900
    assert second["previous"] == {"period": "2026-10", "statement_sha256": "cd" * 32}
    assert second["covers"] == {"from": "2026-11-01", "through": "2026-11-30", "by": second["covers"]["by"]}
    assert first["covers"]["from"] is None  # the first close covers everything dated up to its end


def test_a_statement_that_does_not_balance_is_never_built() -> None:
    with pytest.raises(InvariantError, match="does not balance"):
        statement([periods.Movement("commissioner:QWE", -1_000, 0), periods.Movement("provider:RJ1", 0, 999)])


def test_a_signed_statement_verifies_and_any_changed_byte_or_other_key_fails() -> None:
    signer = periods.Signer(Ed25519PrivateKey.generate())
    body = periods.canonical_bytes(statement([periods.Movement("commissioner:QWE", -5, 0), periods.Movement("provider:RJ1", 0, 5)]
                                             ) | {"signature": {"algorithm": "Ed25519", "key_id": signer.key_id}})
    sig = signer.sign(body)
    pub = signer.key.public_key()
    ok = periods.verify_statement(body, sig, pub)
    assert ok.ok and "2026-11" in ok.reason
    import base64

    assert periods.verify_statement(body, base64.b64encode(sig), pub).ok  # the header's spelling
    for i in range(len(body)):
        changed = bytearray(body)
        changed[i] ^= 0x20
        assert not periods.verify_statement(bytes(changed), sig, pub).ok
    assert not periods.verify_statement(body + b" ", sig, pub).ok
    other = Ed25519PrivateKey.generate()
    assert not periods.verify_statement(body, other.sign(body), other.public_key()).ok
    # Signed, but by the right key over a non-canonical spelling: still refused.
    loose = json.dumps(json.loads(body), indent=1).encode()
    assert "canonical" in periods.verify_statement(loose, signer.sign(loose), pub).reason


def test_keys_load_from_pem_and_the_dev_key_is_fixed() -> None:
    from cryptography.hazmat.primitives import serialization

    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    assert periods.Signer(periods.load_private_key(pem)).key_id == periods.key_id_of(key.public_key())
    with pytest.raises(ValueError, match="PEM"):
        periods.load_private_key("not a key")
    assert periods.Signer(periods.dev_private_key()).key_id == periods.Signer(periods.dev_private_key()).key_id


# ---------------------------------------------------------------------------------------------
# Remittances
# ---------------------------------------------------------------------------------------------
def test_parse_reads_pence_or_pounds_exactly_and_names_bad_rows() -> None:
    lines = remittance.parse("Payment_ID,Date,Amount\r\np1,2026-11-01,10.5\r\np2,2026-11-02,-0.01\r\n\r\np3,2026-11-02,7\r\n",
                             max_rows=10)
    assert [(x.payment_id, x.amount_pence) for x in lines] == [("p1", 1_050), ("p2", -1), ("p3", 700)]
    assert remittance.parse("\ufeffpayment_id,amount_pence,date\np1,123,2026-11-01\n", max_rows=10)[0].amount_pence == 123
    with pytest.raises(remittance.FileRefused) as exc:
        remittance.parse("payment_id,date,amount\np1,2026-11-01,1.234\n,2026-11-01,1\np3,2026-11-01,1e3\n", max_rows=10)
    assert [e["field"] for e in exc.value.errors] == ["row 2: amount", "row 3: payment_id", "row 4: amount"]
    with pytest.raises(remittance.FileRefused, match="more than 2 rows"):
        remittance.parse("payment_id,date,amount\na,2026-11-01,1\nb,2026-11-01,1\nc,2026-11-01,1\n", max_rows=2)
    with pytest.raises(remittance.FileRefused, match="empty"):
        remittance.parse("", max_rows=2)


@given(st.lists(st.tuples(st.sampled_from([f"p{i}" for i in range(12)]), st.integers(-10**6, 10**6)), unique_by=lambda t: t[0]),
       st.lists(st.tuples(st.sampled_from([f"p{i}" for i in range(12)]), st.integers(-10**6, 10**6)), unique_by=lambda t: t[0]))
def test_matching_accounts_for_every_payment_id_once_and_every_penny(file_side, ledger_side) -> None:  # type: ignore[no-untyped-def]
    f = [remittance.FileLine(p, date(2026, 11, 1), a) for p, a in file_side]
    g = {p: remittance.LedgerPayment(p, a, "RJ1") for p, a in ledger_side}
    result = remittance.match(f, g)
    assert sorted(x.payment_id for x in result.lines) == sorted({p for p, _ in file_side} | set(g))
    assert sum(x.difference_pence for x in result.lines) == result.file_pence - result.ledger_pence
    assert sum(result.counts.values()) == len(result.lines)
    for x in result.lines:
        if x.status == "matched":
            assert x.file_pence == x.ledger_pence and x.difference_pence == 0
        elif x.status == "different":
            assert x.file_pence != x.ledger_pence
        elif x.status == "missing":
            assert x.file_pence is None and x.ledger_pence is not None
        else:
            assert x.ledger_pence is None and x.file_pence is not None

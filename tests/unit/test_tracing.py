"""Correlation ids that may travel into the append-only ledger (shared/tracing.py)."""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from devtools.synthetic import synthetic_nhs_number
from shared.tracing import holds_nhs_number, is_safe_correlation_id, nhs_check_digit_ok, safe_correlation_id


def test_ordinary_ids_are_kept() -> None:
    for cid in ("req-123", "trace-ab12cd", "batch-7f3a9c:1", str(uuid.UUID(int=1234567))):
        assert safe_correlation_id(cid) == cid


def test_nhs_numbers_tokens_and_odd_shapes_are_replaced() -> None:
    nhs = "9434765919"
    for cid in (nhs, f"trace-{nhs}", "943-476-5919", "943.476.5919", f"x{nhs}y", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIi", "has space",
                "", "-starts-with-dash", "x" * 101, "semi;colon", "caf\u00e9"):
        out = safe_correlation_id(cid)
        assert out != cid and uuid.UUID(out), cid


@given(st.integers(0, 9999))
def test_every_synthetic_nhs_number_is_detected(n: int) -> None:
    number = synthetic_nhs_number(n)
    assert nhs_check_digit_ok(number)
    assert holds_nhs_number(f"id-{number}") and not is_safe_correlation_id(f"id-{number}")


@given(st.uuids())
def test_uuids_survive_unless_ten_digits_in_a_row_pass_the_check(value: uuid.UUID) -> None:
    text = str(value)
    kept = safe_correlation_id(text) == text
    assert kept == (not holds_nhs_number(text))


def test_check_digit() -> None:
    assert nhs_check_digit_ok("9434765919")
    assert not nhs_check_digit_ok("9434765918")
    assert not nhs_check_digit_ok("123")

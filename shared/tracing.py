"""Correlation ids: what may travel from a client into logs, events and the append-only ledger.

A correlation id comes from outside (the ``X-Correlation-ID`` header, the envelope of an event a
commissioner or an app backend publishes) and ends up in places that can never be erased: ledger
entries. So only a safe shape is kept: 1-100 letters, digits and ``. _ : -``, starting with a
letter or digit, holding no NHS-number-shaped digits (ten digits, however split, with a valid
check digit) and no piece of a bearer token (``eyJ``: the start of every JWT's base64 JSON).
Anything else is replaced by a new UUID, and the response (or the log line) shows the new one.
"""

from __future__ import annotations

import re
import uuid

MAX_CORRELATION_ID = 100
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,99}$")
# In a correlation id (no spaces allowed): any ten consecutive digits, inside a longer run too, or
# ten digits written 3-3-4 with dashes or dots. A UUID's fixed 8-4-4-4-12 groups cannot hold the
# split form, so a client's UUID is kept unless ten digits of it in a row pass the check digit.
_CONTIGUOUS_TEN = re.compile(r"(?=(\d{10}))")
_SPLIT_334 = re.compile(r"(?<!\d)(\d{3})[.\-](\d{3})[.\-](\d{4})(?!\d)")


def nhs_check_digit_ok(digits: str) -> bool:
    """The NHS number modulus-11 check (DOMAIN.md): weights 10..2, check = 11 - sum mod 11."""
    if len(digits) != 10 or not digits.isdigit():
        return False
    total = sum(int(d) * w for d, w in zip(digits[:9], range(10, 1, -1)))
    check = 11 - total % 11
    if check == 11:
        check = 0
    return check != 10 and check == int(digits[9])


def holds_nhs_number(text: str) -> bool:
    """True if ``text`` holds ten digits in a row, or split 3-3-4, that pass the check-digit test."""
    if any(nhs_check_digit_ok(m.group(1)) for m in _CONTIGUOUS_TEN.finditer(text)):
        return True
    return any(nhs_check_digit_ok("".join(m.groups())) for m in _SPLIT_334.finditer(text))


def is_safe_correlation_id(value: str | None) -> bool:
    return (value is not None and bool(_SAFE.fullmatch(value)) and "eyJ" not in value and not holds_nhs_number(value))


def new_correlation_id() -> str:
    return str(uuid.uuid4())


def safe_correlation_id(value: str | None) -> str:
    """``value`` if it is safe to keep (see the module docstring), else a new UUID."""
    return value if is_safe_correlation_id(value) else new_correlation_id()  # type: ignore[return-value]

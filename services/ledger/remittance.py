"""Reconciling a commissioner's remittance file against the ledger (pure; no I/O).

A commissioner's finance system pays providers and keeps its own record of what it paid: one
line per payment id with the date and the amount. Month-end, the finance team checks that file
against the books. The ledger's side of a payment is what it shows the commissioner paid out for
it: the posted amounts debited from ``commissioner:<ICB>`` by every transfer whose cause carries
that payment id (the part paid at once, and the at-risk part once settled to the provider or
diverted to the fund; a reserved, unsettled at-risk share has not been paid yet, so it does not
count). Each payment id on either side is then one of:

- ``matched``: both sides, same pence;
- ``different``: both sides, different pence (``difference_pence`` = file - ledger);
- ``missing``: in the ledger for this commissioner and period, not in the file;
- ``unknown``: in the file, not in the ledger for this commissioner and period.

The file is CSV with a header row naming ``payment_id``, ``date`` (YYYY-MM-DD) and the amount,
either ``amount_pence`` (whole pence) or ``amount`` (pounds with at most two decimals, such as
``1234.50``; a thousands separator or currency sign is refused rather than guessed). Anything
malformed is refused with the row and the column named; nothing is stored for a refused file.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Literal

from shared.contracts import EXTERNAL_ID_PATTERN

Status = Literal["matched", "missing", "different", "unknown"]
STATUSES: tuple[Status, ...] = ("matched", "missing", "different", "unknown")
MAX_PENCE = 10**13  # £100 billion: far beyond any one payment, well inside bigint
_POUNDS = re.compile(r"^-?[0-9]{1,11}(\.[0-9]{1,2})?$")
_PENCE = re.compile(r"^-?[0-9]{1,13}$")
_ID = re.compile(EXTERNAL_ID_PATTERN)


class FileRefused(ValueError):
    """A remittance file that cannot be read; ``errors`` name the row and column."""

    def __init__(self, message: str, errors: list[dict[str, str]]) -> None:
        super().__init__(message)
        self.errors = errors


@dataclass(frozen=True)
class FileLine:
    payment_id: str
    paid_on: date
    amount_pence: int


@dataclass(frozen=True)
class LedgerPayment:
    payment_id: str
    amount_pence: int
    provider_code: str | None


@dataclass(frozen=True)
class Line:
    payment_id: str
    status: Status
    file_date: date | None
    file_pence: int | None
    ledger_pence: int | None
    difference_pence: int
    provider_code: str | None


@dataclass(frozen=True)
class Result:
    lines: list[Line]
    counts: dict[str, int]
    file_pence: int
    ledger_pence: int

    @property
    def exceptions(self) -> list[Line]:
        return [line for line in self.lines if line.status != "matched"]


def _pence(value: str, column: str) -> int:
    v = value.strip()
    if column == "amount_pence":
        if not _PENCE.match(v):
            raise ValueError("must be whole pence, such as 12345")
        pence = int(v)
    else:
        if not _POUNDS.match(v):
            raise ValueError("must be pounds with at most two decimals, such as 123.45 (no currency sign or separators)")
        negative = v.startswith("-")
        whole, _, frac = v.lstrip("-").partition(".")
        pence = int(whole) * 100 + int((frac + "00")[:2])
        pence = -pence if negative else pence
    if abs(pence) > MAX_PENCE:
        raise ValueError(f"is more than {MAX_PENCE} pence")
    return pence


def parse(text: str, *, max_rows: int) -> list[FileLine]:
    """The file's lines, or FileRefused naming every bad row (up to 20) and column."""
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise FileRefused("the file is empty", [{"field": "body", "message": "the file is empty"}]) from None
    except csv.Error as exc:
        raise FileRefused(f"the file is not CSV: {exc}", [{"field": "body", "message": str(exc)}]) from None
    names = [h.strip().lower().lstrip("\ufeff") for h in header]
    amount_col = "amount_pence" if "amount_pence" in names else "amount" if "amount" in names else None
    missing = [c for c in ("payment_id", "date") if c not in names] + ([] if amount_col else ["amount_pence or amount"])
    if missing:
        msg = f"the header must name payment_id, date and amount_pence (or amount); missing {', '.join(missing)}"
        raise FileRefused(msg, [{"field": "header", "message": msg}])
    if len(set(names)) != len(names):
        raise FileRefused("a column is named twice", [{"field": "header", "message": "a column is named twice"}])
    i_id, i_date, i_amount = names.index("payment_id"), names.index("date"), names.index(amount_col)  # type: ignore[arg-type]
    errors: list[dict[str, str]] = []
    lines: list[FileLine] = []
    seen: dict[str, int] = {}
    try:
        for n, row in enumerate(reader, start=2):
            if not row or all(not c.strip() for c in row):
                continue
            if len(lines) >= max_rows:
                msg = f"the file has more than {max_rows} rows"
                raise FileRefused(msg, [{"field": "body", "message": msg}])
            if len(row) != len(names):
                errors.append({"field": f"row {n}", "message": f"has {len(row)} columns, the header {len(names)}"})
                continue
            pid = row[i_id].strip()
            if not _ID.match(pid):
                errors.append({"field": f"row {n}: payment_id", "message": "is not a payment id (1-100 of A-Z a-z 0-9 . _ : -, starting with a letter or digit)"})
                continue
            if pid in seen:
                errors.append({"field": f"row {n}: payment_id", "message": f"{pid} is also on row {seen[pid]}"})
                continue
            seen[pid] = n
            try:
                paid_on = date.fromisoformat(row[i_date].strip())
            except ValueError:
                errors.append({"field": f"row {n}: date", "message": "must be a date, YYYY-MM-DD"})
                continue
            try:
                amount = _pence(row[i_amount], amount_col)  # type: ignore[arg-type]
            except ValueError as exc:
                errors.append({"field": f"row {n}: {amount_col}", "message": str(exc)})
                continue
            lines.append(FileLine(pid, paid_on, amount))
            if len(errors) >= 20:
                break
    except csv.Error as exc:
        errors.append({"field": "body", "message": f"not CSV: {exc}"})
    if errors:
        raise FileRefused(f"{len(errors)} row(s) of the file cannot be read; first: {errors[0]['field']} {errors[0]['message']}",
                          errors[:20])
    return lines


def match(file_lines: Iterable[FileLine], ledger: Mapping[str, LedgerPayment]) -> Result:
    """Every payment id on either side, with its status; lines in payment-id order."""
    by_id = {f.payment_id: f for f in file_lines}
    lines: list[Line] = []
    for pid in sorted(by_id.keys() | ledger.keys()):
        f, g = by_id.get(pid), ledger.get(pid)
        if f is not None and g is not None:
            status: Status = "matched" if f.amount_pence == g.amount_pence else "different"
            lines.append(Line(pid, status, f.paid_on, f.amount_pence, g.amount_pence, f.amount_pence - g.amount_pence,
                              g.provider_code))
        elif g is not None:
            lines.append(Line(pid, "missing", None, None, g.amount_pence, -g.amount_pence, g.provider_code))
        else:
            assert f is not None
            lines.append(Line(pid, "unknown", f.paid_on, f.amount_pence, None, f.amount_pence, None))
    counts = {s: 0 for s in STATUSES}
    for line in lines:
        counts[line.status] += 1
    return Result(lines, counts, sum(f.amount_pence for f in by_id.values()), sum(g.amount_pence for g in ledger.values()))

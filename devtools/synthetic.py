"""Synthetic data for the demo, the benchmarks and tests: never real patients."""

from __future__ import annotations

_SYNTHETIC: list[str] = []
_SYNTHETIC_START = 999_000_000  # nine-digit stem of 999 000 000x
_SYNTHETIC_LIMIT = 10_000_000


def synthetic_nhs_number(n: int) -> str:
    """The n-th (0-based) valid NHS number in the 999 000 0000 test range: never a real patient.

    Stems whose check digit would be 10 are skipped, so the numbers are distinct for distinct n.
    Generated lazily and cached (amortised O(1) per number).
    """
    if not 0 <= n < _SYNTHETIC_LIMIT:
        raise ValueError(f"n must be in 0..{_SYNTHETIC_LIMIT - 1}")
    stem = _SYNTHETIC_START + (int(_SYNTHETIC[-1][:9]) - _SYNTHETIC_START + 1 if _SYNTHETIC else 0)
    while len(_SYNTHETIC) <= n:
        digits = f"{stem:09d}"
        total = sum(int(d) * w for d, w in zip(digits, range(10, 1, -1)))
        check_digit = 11 - total % 11
        if check_digit == 11:
            check_digit = 0
        if check_digit != 10:
            _SYNTHETIC.append(digits + str(check_digit))
        stem += 1
    return _SYNTHETIC[n]

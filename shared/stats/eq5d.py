"""EQ-5D-5L index values from a configurable, versioned value set. Pure, standard library only.

An EQ-5D-5L answer is a health state, five digits for mobility, self-care, usual activities,
pain/discomfort and anxiety/depression, each level 1 (no problems) to 5 (extreme problems), e.g.
"21143". A **value set** turns a state into an index (1 = full health, 0 = as bad as dead,
negative = worse than dead) from a country's valuation study. Which set applies in England is a
policy choice that has changed (NICE: the 5L mapped onto the 3L set, van Hout 2012 / Hernández
Alava 2017; the EQ-5D-5L England set, Devlin et al. 2018), and the sets are EuroQol's to license,
so the project ships none: an operator installs the licensed file (``FEEDBACK_EQ5D_VALUE_SET_FILE``)
and every figure computed with it names it ("<id>@<version>").

A value-set file is TOML:

    value_set_id = "england-5l"        # [a-z0-9-]
    version = 1
    country = "England"
    source = "citation of the valuation study"
    licence = "who allows its use, on what terms"
    kind = "additive"                  # or "table"
    constant = 0.081                   # additive: subtracted once unless the state is 11111 (optional)
    [decrements]                       # additive: per dimension, levels 2..5 (level 1 is 0), non-decreasing
    mobility = [0.05, 0.07, 0.20, 0.32]
    ...
    [states]                           # table: every one of the 3,125 states
    "11111" = 1.0
    ...

Index values are exact decimals rounded to 3 places (half away from zero), as value sets publish them.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from itertools import product
from pathlib import Path
from typing import Any

DIMENSIONS = ("mobility", "self_care", "usual_activities", "pain_discomfort", "anxiety_depression")
STATES = tuple("".join(p) for p in product("12345", repeat=5))  # 3,125
MAX_FILE_BYTES = 1024 * 1024
_PROFILE = re.compile(r"^[1-5]{5}$")
_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_KEYS = {"value_set_id", "version", "country", "source", "licence", "kind", "constant", "decrements", "states"}
_QUANTUM = Decimal("0.001")


class ValueSetError(ValueError):
    """A value-set file that cannot be used; the message names the field."""


@dataclass(frozen=True)
class ValueSet:
    value_set_id: str
    version: int
    country: str
    source: str
    licence: str
    kind: str
    constant: Decimal
    decrements: dict[str, tuple[Decimal, ...]]  # additive: per dimension, levels 1..5 (level 1 is 0)
    states: dict[str, Decimal]  # table

    @property
    def key(self) -> str:
        return f"{self.value_set_id}@{self.version}"

    def index(self, profile: str) -> Decimal:
        """The state's index value, 3 decimal places."""
        if not isinstance(profile, str) or not _PROFILE.fullmatch(profile):
            raise ValueError(f"{profile!r} is not an EQ-5D-5L health state (five digits 1-5)")
        if self.kind == "table":
            return self.states[profile]
        if profile == "11111":
            return Decimal(1).quantize(_QUANTUM)
        loss = self.constant + sum(self.decrements[d][int(level) - 1] for d, level in zip(DIMENSIONS, profile))
        return (Decimal(1) - loss).quantize(_QUANTUM, rounding=ROUND_HALF_UP)


def _decimal(value: Any, field: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueSetError(f"{field}: a number is needed, got {value!r}")
    try:
        d = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    except InvalidOperation as exc:  # pragma: no cover - TOML numbers are always valid
        raise ValueSetError(f"{field}: not a number") from exc
    if not d.is_finite():
        raise ValueSetError(f"{field}: must be finite")
    return d


def _text(data: dict[str, Any], field: str, limit: int = 2000) -> str:
    value = data.get(field)
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        raise ValueSetError(f"{field}: a non-empty text of at most {limit} characters is needed")
    return value


def parse_value_set(text: str) -> ValueSet:
    """A value set from its TOML text, checked; ``ValueSetError`` naming the field otherwise."""
    if len(text.encode()) > MAX_FILE_BYTES:
        raise ValueSetError(f"the file is larger than {MAX_FILE_BYTES} bytes")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueSetError(f"not TOML: {exc}") from exc
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise ValueSetError(f"{unknown[0]}: unknown field")
    vid = data.get("value_set_id")
    if not isinstance(vid, str) or not _ID.fullmatch(vid):
        raise ValueSetError("value_set_id: lower-case letters, digits and hyphens, at most 63")
    version = data.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= 1_000_000:
        raise ValueSetError("version: a whole number from 1")
    country, source, licence = _text(data, "country", 100), _text(data, "source"), _text(data, "licence")
    kind = data.get("kind")
    if kind not in ("additive", "table"):
        raise ValueSetError('kind: "additive" or "table"')
    if kind == "additive":
        if "states" in data:
            raise ValueSetError("states: only for kind = \"table\"")
        constant = _decimal(data.get("constant", 0), "constant")
        if not 0 <= constant <= 1:
            raise ValueSetError("constant: from 0 to 1")
        raw = data.get("decrements")
        if not isinstance(raw, dict):
            raise ValueSetError("decrements: a table of the five dimensions is needed")
        extra = sorted(set(raw) - set(DIMENSIONS))
        if extra:
            raise ValueSetError(f"decrements.{extra[0]}: unknown dimension")
        decrements: dict[str, tuple[Decimal, ...]] = {}
        for d in DIMENSIONS:
            levels = raw.get(d)
            if not isinstance(levels, list) or len(levels) != 4:
                raise ValueSetError(f"decrements.{d}: four decrements are needed, for levels 2 to 5")
            values = [_decimal(v, f"decrements.{d}") for v in levels]
            if any(v < 0 for v in values) or values != sorted(values):
                raise ValueSetError(f"decrements.{d}: decrements are 0 or more and do not fall as the level rises")
            decrements[d] = (Decimal(0), *values)
        vs = ValueSet(vid, version, country, source, licence, kind, constant, decrements, {})
        worst = vs.index("55555")
        if worst < -1:
            raise ValueSetError(f"decrements: the worst state 55555 would be {worst}, below -1")
        return vs
    if "decrements" in data or "constant" in data:
        raise ValueSetError("decrements: only for kind = \"additive\"")
    raw_states = data.get("states")
    if not isinstance(raw_states, dict):
        raise ValueSetError("states: a table of the 3,125 health states is needed")
    bad = sorted(k for k in raw_states if not _PROFILE.fullmatch(k))
    if bad:
        raise ValueSetError(f"states.{bad[0]}: not a health state")
    missing = [s for s in STATES if s not in raw_states]
    if missing:
        raise ValueSetError(f"states.{missing[0]}: missing ({len(missing)} states missing)")
    states = {}
    for s in STATES:
        v = _decimal(raw_states[s], f"states.{s}")
        if not -1 <= v <= 1:
            raise ValueSetError(f"states.{s}: from -1 to 1")
        states[s] = v.quantize(_QUANTUM, rounding=ROUND_HALF_UP)
    return ValueSet(vid, version, country, source, licence, kind, Decimal(0), {}, states)


def load_value_set(path: Path) -> ValueSet:
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ValueSetError(f"{path}: larger than {MAX_FILE_BYTES} bytes")
        return parse_value_set(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueSetError(f"{path}: cannot be read ({exc.strerror})") from exc
    except ValueSetError as exc:
        raise ValueSetError(f"{path.name}: {exc}") from exc

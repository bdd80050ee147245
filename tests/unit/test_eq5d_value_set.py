"""EQ-5D-5L value sets (shared/stats/eq5d.py) and the PROM report's index gain and % improved."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.feedback.domain import prom_report
from shared.stats.eq5d import DIMENSIONS, STATES, ValueSetError, load_value_set, parse_value_set

EXAMPLE = Path(__file__).resolve().parents[2] / "services" / "feedback" / "value_sets" / "example-not-for-use.toml"
HEAD = ('value_set_id = "t"\nversion = 2\ncountry = "X"\nsource = "invented"\nlicence = "none needed"\n')
ADDITIVE = HEAD + 'kind = "additive"\nconstant = 0.05\n[decrements]\n' + "".join(
    f"{d} = [0.01, 0.02, 0.03, 0.04]\n" for d in DIMENSIONS)


def test_the_shipped_example_is_marked_invented_and_computes_by_hand() -> None:
    vs = load_value_set(EXAMPLE)
    assert vs.key == "example-not-for-use@1" and "Invented" in vs.source and "not a real value set" in vs.licence
    assert vs.index("11111") == Decimal("1.000")
    # 21143: 1 - (0.05 constant + mobility L2 0.05 + pain L4 0.30 + anxiety L3 0.10) = 0.50
    assert vs.index("21143") == Decimal("0.500")
    assert vs.index("55555") == Decimal("-0.480")  # 1 - (0.05 + 0.30 + 0.20 + 0.18 + 0.40 + 0.35)


def test_a_table_value_set_needs_every_state() -> None:
    table = HEAD + 'kind = "table"\n[states]\n' + "".join(f'"{s}" = {1 - int(s) / 100_000:.3f}\n' for s in STATES)
    vs = parse_value_set(table)
    assert vs.index("11111") == Decimal("0.889") and vs.index("55555") == Decimal("0.444")
    with pytest.raises(ValueSetError, match="states.55555: missing"):
        parse_value_set(table.replace('"55555" = 0.444\n', ""))
    with pytest.raises(ValueSetError, match="states.11111: from -1 to 1"):
        parse_value_set(table.replace('"11111" = 0.889', '"11111" = 1.5'))


@pytest.mark.parametrize("change, field", [
    (("version = 2", "version = 0"), "version"),
    (('value_set_id = "t"', 'value_set_id = "T T"'), "value_set_id"),
    (('licence = "none needed"', 'licence = ""'), "licence"),
    (('kind = "additive"', 'kind = "other"'), "kind"),
    (("constant = 0.05", "constant = 2"), "constant"),
    (("mobility = [0.01, 0.02, 0.03, 0.04]", "mobility = [0.02, 0.01, 0.03, 0.04]"), "decrements.mobility"),
    (("mobility = [0.01, 0.02, 0.03, 0.04]", "mobility = [0.01, 0.02, 0.03]"), "decrements.mobility"),
    (("mobility = [0.01, 0.02, 0.03, 0.04]", "mobility = [-0.01, 0.02, 0.03, 0.04]"), "decrements.mobility"),
    (("mobility = [0.01, 0.02, 0.03, 0.04]", "mobility = [0.01, 0.02, 0.03, 1.94]"), "decrements"),
    (("licence", "colour = 1\nlicence"), "colour"),
])
def test_every_bad_field_is_refused_by_name(change: tuple[str, str], field: str) -> None:
    with pytest.raises(ValueSetError, match=field):
        parse_value_set(ADDITIVE.replace(*change, 1))


def test_bad_states_and_files_are_refused(tmp_path: Path) -> None:
    vs = parse_value_set(ADDITIVE)
    for bad in ("61111", "1111", "abcde", 11111):
        with pytest.raises(ValueError):
            vs.index(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueSetError, match="cannot be read"):
        load_value_set(tmp_path / "missing.toml")
    (tmp_path / "big.toml").write_bytes(b"#" * (1024 * 1024 + 1))
    with pytest.raises(ValueSetError, match="larger than"):
        load_value_set(tmp_path / "big.toml")


@given(st.text("12345", min_size=5, max_size=5), st.integers(0, 4), st.lists(
    st.lists(st.integers(0, 60), min_size=4, max_size=4), min_size=5, max_size=5))
def test_an_additive_index_never_rises_when_a_level_rises(state: str, dim: int, raw: list[list[int]]) -> None:
    text = HEAD + 'kind = "additive"\nconstant = 0.01\n[decrements]\n' + "".join(
        f"{d} = [{', '.join(f'{v / 1000:.3f}' for v in sorted(levels))}]\n" for d, levels in zip(DIMENSIONS, raw))
    vs = parse_value_set(text)
    assert vs.index(state) <= vs.index("11111") == Decimal("1.000")
    if state[dim] != "5":
        worse = state[:dim] + str(int(state[dim]) + 1) + state[dim + 1:]
        assert vs.index(worse) <= vs.index(state)


def test_the_prom_report_gives_pct_improved_and_the_index_gain_under_the_value_set() -> None:
    vs = load_value_set(EXAMPLE)
    rows = [("RJ1", "eq5d5l", "hip", 40, 70, "21143", "11111"),  # index 0.500 -> 1.000: +0.5
            ("RJ1", "eq5d5l", "hip", 60, 50, "11111", "21143"),  # -0.5, and the VAS fell
            ("RJ1", "eq5d5l", "hip", 50, 80, "31111", "21111"),  # 0.850 -> 0.900: +0.05
            ("RJ1", "ohs", "hip", 20, 40, None, None), ("RJ1", "ohs", "hip", 30, 30, None, None)]
    eq, ohs = prom_report(rows, min_count=2, value_set=vs)
    assert (eq.pct_improved, eq.avg_index_gain, eq.value_set) == (66.7, 0.017, "example-not-for-use@1")
    assert (ohs.pct_improved, ohs.avg_index_gain, ohs.value_set) == (50.0, None, None)  # Oxford: no index
    [plain_eq, _] = prom_report(rows, min_count=2)
    assert plain_eq.pct_improved == 66.7 and plain_eq.avg_index_gain is None and plain_eq.value_set is None
    [small] = prom_report(rows[:1], min_count=2, value_set=vs)
    assert small.suppressed and small.pct_improved is None and small.avg_index_gain is None

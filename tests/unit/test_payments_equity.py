"""The equity table's pure core (services/payments/equity.py): one computation for the what-if
comparison and the published report."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.payments.equity import AGE_BANDS, StratumTally, equity_rows
from shared.money import InvariantError


@st.composite
def tallies(draw: st.DrawFn) -> list[StratumTally]:
    out = []
    strata = {"imd_decile": [str(d) for d in range(1, 11)] + ["unknown"], "age_band": [*AGE_BANDS, "unknown"],
              "setting": ["inpatient", "maternity", "unknown"]}
    for dimension, values in strata.items():
        for value in draw(st.lists(st.sampled_from(values), unique=True, max_size=len(values))):
            n = draw(st.integers(0, 500))
            held = draw(st.integers(0, 10**9))
            out.append(StratumTally(dimension, value, n, draw(st.integers(0, n)), draw(st.integers(0, n)), held,
                                    draw(st.integers(0, held))))
    return draw(st.permutations(out))


@given(tallies(), st.integers(0, 50))
def test_every_stratum_once_in_order_with_rates_inside_their_intervals(rows: list[StratumTally], min_episodes: int) -> None:
    table = equity_rows(rows, min_episodes=min_episodes)
    assert len(table) == len(rows)
    dims = [r["dimension"] for r in table]
    assert dims == sorted(dims, key=("imd_decile", "age_band", "setting").index)
    for dimension in set(dims):
        strata = [r["stratum"] for r in table if r["dimension"] == dimension]
        assert "unknown" not in strata[:-1]  # unknown comes last
        if dimension == "imd_decile":
            known = [int(s) for s in strata if s != "unknown"]
            assert known == sorted(known)
    for r in table:
        for key in ("response_rate", "diversion_rate"):
            rate = r[key]
            if rate["rate"] is not None:
                assert 0 <= rate["low"] <= rate["rate"] <= rate["high"] <= 1
        if r["episodes"] < min_episodes:  # suppressed: the count only
            assert r["suppressed"] and r["diverted_pence"] is None and r["responses"] is None
            assert r["response_rate"]["rate"] is None and r["diversion_rate"]["rate"] is None
        else:
            assert not r["suppressed"] and r["diverted_pence"] <= r["held_pence"]


def test_a_small_stratum_shows_its_count_and_nothing_else() -> None:
    [small, big] = equity_rows([StratumTally("imd_decile", "2", 50, 20, 5, 50_000, 5_000),
                                StratumTally("imd_decile", "1", 4, 4, 4, 4_000, 4_000)], min_episodes=10)
    assert (small["stratum"], small["episodes"], small["suppressed"], small["diverted_pence"]) == ("1", 4, True, None)
    assert (big["stratum"], big["responses"], big["diverted_share_of_held"]) == ("2", 20, 0.1)
    assert big["diversion_rate"]["rate"] == 0.1 and big["diversion_rate"]["low"] < 0.1 < big["diversion_rate"]["high"]


def test_impossible_tallies_are_refused() -> None:
    with pytest.raises(InvariantError):
        StratumTally("imd_decile", "1", 3, 4, 0, 0, 0)  # more responses than episodes
    with pytest.raises(InvariantError):
        StratumTally("setting", "x", 1, 0, 1, 10, 11)  # more diverted than held
    with pytest.raises(InvariantError):
        equity_rows([StratumTally("setting", "x", 1, 0, 0, 0, 0)] * 2)  # one stratum twice

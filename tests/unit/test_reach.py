"""The binding model (shared/reach.py): what national, region, ICB and trust tokens reach, for
reads and for writes, against the shipped reference data."""

from __future__ import annotations

import pytest

from shared.auth import NATIONAL, Binding
from shared.reach import Reach
from shared.reference import load_reference

REF = load_reference()


def reach(**kw: frozenset[str]) -> Reach:
    return Reach(Binding(False, kw.get("regions", frozenset()), kw.get("icbs", frozenset()), kw.get("providers", frozenset())), REF)


LONDON = reach(regions=frozenset({"Y56"}))
QWE = reach(icbs=frozenset({"QWE"}))
RJ1 = reach(providers=frozenset({"RJ1"}))
ALL = Reach(NATIONAL, REF)


def test_national_reaches_everything_known() -> None:
    assert ALL.sees_provider("RTD") and ALL.pays_for("QHM") and ALL.acts_for_provider("RTD") and ALL.sees_region("Y63")
    assert ALL.moves_account("fund:Y63") and ALL.sees_account("commissioner:QHM")


def test_a_region_reaches_its_own_organisations_only() -> None:
    assert LONDON.sees_provider("RJ1") and LONDON.sees_provider("RJ121")  # a site of a London trust
    assert not LONDON.sees_provider("RTD")  # Newcastle
    assert LONDON.pays_for("QWE") and not LONDON.pays_for("QHM")
    assert LONDON.acts_for_region("Y56") and not LONDON.acts_for_region("Y63")
    assert LONDON.moves_account("fund:Y56") and not LONDON.moves_account("fund:Y63")
    assert not LONDON.moves_account("provider:RTD") and not LONDON.moves_account("commissioner:QHM")


def test_an_icb_pays_for_itself_and_reads_the_trusts_it_commissions() -> None:
    assert QWE.pays_for("QWE") and not QWE.pays_for("QMJ")
    assert QWE.sees_provider("RJ1") and QWE.sees_provider("RTH")  # contracts: RJ1, RRV, RTH
    assert not QWE.sees_provider("RTD")
    assert not QWE.acts_for_provider("RJ1")  # an ICB does not appeal or settle for a trust
    assert not QWE.sees_region("Y56") and not QWE.sees_account("fund:Y56")
    assert QWE.moves_account("commissioner:QWE") and not QWE.moves_account("provider:RJ1")


def test_a_trust_reaches_itself_and_its_sites() -> None:
    assert RJ1.acts_for_provider("RJ1") and RJ1.acts_for_provider("RJ122")
    assert not RJ1.acts_for_provider("RRV") and not RJ1.pays_for("QWE")
    assert RJ1.moves_account("held:RJ1") and RJ1.moves_account("provider:RJ1") and not RJ1.sees_account("fund:Y56")


@pytest.mark.parametrize("code", ["ZZZ", "RJ1ZZ", "", "fund"])
def test_unknown_organisations_are_reached_by_no_bound_token(code: str) -> None:
    for r in (LONDON, QWE, RJ1):
        assert not r.sees_provider(code) and not r.acts_for_provider(code)
    assert not LONDON.sees_account("fund:Y99") and not LONDON.sees_account("bogus:Y56")


def test_refusals_name_the_field_and_the_binding() -> None:
    problem = LONDON.refuse("provider_code", "provider RTD")
    assert problem.status == 403
    assert problem.extra["errors"] == [{"field": "provider_code", "message": "provider RTD is outside this token's binding (regions Y56)"}]

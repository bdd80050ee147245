"""Unit tests for services/payments/schemes.py (TOML trial schemes) and the shipped scheme folder."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

import services.payments.schemes as schemes_module
from services.payments.schemes import (
    CHOICE_RELEASE_BPS,
    FftRelease,
    Scheme,
    SchemeBook,
    SchemeError,
    Scope,
    load_schemes,
    parse_scheme,
)
from shared.contracts import FftAnswer

SHIPPED = Path(schemes_module.__file__).parent / "schemes"

MINIMAL = """\
scheme_id = "test-scheme"
version = 1
title = "Test"
effective_from = 2026-04-01
"""


def make(**kw: Any) -> Scheme:
    base: dict[str, Any] = {"scheme_id": "t-1", "version": 1, "title": "T", "effective_from": date(2026, 4, 1)}
    base.update(kw)
    return Scheme.model_validate(base)


WHERE = {"region": "Y56", "commissioner": "QWE", "provider": "RJ1", "service_type": "inpatient"}


# ---------------------------------------------------------------------------------------------
# The shipped folder
# ---------------------------------------------------------------------------------------------
def test_shipped_scheme_folder_loads() -> None:
    book = load_schemes(SHIPPED)
    assert [s.key for s in book.schemes] == ["england-pilot@1"]
    s = book.get("england-pilot", 1)
    assert s is not None
    assert s.effective_from == date(2026, 4, 1) and s.effective_to is None
    assert (s.at_risk_bps, s.cap_bps, s.min_responses_per_period) == (1_000, 300, 30)
    assert (s.decision_window_days, s.appeal_window_days) == (56, 30)
    assert s.patient_choice_overrides is True and s.allow_amendments is False
    assert s.scope == Scope()
    assert s.fft_release_bps == FftRelease(very_good=10_000, good=10_000, neither=10_000, poor=5_000, very_poor=0)


def test_shipped_scheme_writes_out_exactly_the_documented_defaults() -> None:
    shipped = load_schemes(SHIPPED).get("england-pilot", 1)
    assert shipped is not None
    defaults = Scheme(scheme_id="england-pilot", version=1, title=shipped.title, effective_from=date(2026, 4, 1))
    assert shipped == defaults


def test_shipped_scheme_covers_every_episode_from_its_start_date() -> None:
    book = load_schemes(SHIPPED)
    picked = book.select(activity_date=date(2026, 4, 1), **WHERE)
    assert picked is not None and picked.key == "england-pilot@1"
    assert book.select(activity_date=date(2030, 1, 1), region="Y63", commissioner="QHM", provider="RTD", service_type="dental") is picked
    assert book.select(activity_date=date(2026, 3, 31), **WHERE) is None


# ---------------------------------------------------------------------------------------------
# parse_scheme: good and bad files
# ---------------------------------------------------------------------------------------------
def test_minimal_scheme_takes_defaults() -> None:
    s = parse_scheme(MINIMAL)
    assert s.key == "test-scheme@1"
    assert (s.at_risk_bps, s.cap_bps, s.priority, s.settlement_period) == (1_000, 300, 0, "monthly")


@pytest.mark.parametrize(
    ("extra", "field", "message"),
    [
        ("at_risk_bps = 10001", "at_risk_bps", "less than or equal to 10000"),
        ("at_risk_bps = -1", "at_risk_bps", "greater than or equal to 0"),
        ("at_risk_bps = 500\ncap_bps = 600", "cap_bps", "cannot exceed at_risk_bps"),
        ("cap_bps = 1001", "cap_bps", "cannot exceed at_risk_bps"),
        ("effective_to = 2026-03-31", "effective_to", "must not be before effective_from"),
        ("bogus = 1", "bogus", "Extra inputs are not permitted"),
        ("[scope]\nzones = []", "scope.zones", "Extra inputs are not permitted"),
        ("[fft_release_bps]\ndont_know = 5000", "fft_release_bps.dont_know", "10000"),
        ("[fft_release_bps]\npoor = -1", "fft_release_bps.poor", "greater than or equal to 0"),
        ("[fft_release_bps]\nvery_poor = 10001", "fft_release_bps.very_poor", "less than or equal to 10000"),
        ("[fft_release_bps]\nterrible = 0", "fft_release_bps.terrible", "Extra inputs"),
        ("decision_window_days = 367", "decision_window_days", "less than or equal to 366"),
        ("appeal_window_days = -1", "appeal_window_days", "greater than or equal to 0"),
        ("priority = 1001", "priority", "less than or equal to 1000"),
        ("min_responses_per_period = -1", "min_responses_per_period", "greater than or equal to 0"),
        ('settlement_period = "weekly"', "settlement_period", "monthly"),
        ('at_risk_bps = "ten percent"', "at_risk_bps", "integer"),
        ("patient_choice_overrides = 3", "patient_choice_overrides", "boolean"),
    ],
)
def test_bad_scheme_field_is_named(extra: str, field: str, message: str) -> None:
    with pytest.raises(SchemeError) as exc:
        parse_scheme(MINIMAL + extra + "\n", "bad.toml")
    text = str(exc.value)
    assert text.startswith("bad.toml: ")
    assert field in text
    assert message in text


@pytest.mark.parametrize(
    ("text", "field"),
    [
        (MINIMAL.replace('scheme_id = "test-scheme"', 'scheme_id = "Bad_ID"'), "scheme_id"),
        (MINIMAL.replace('scheme_id = "test-scheme"', 'scheme_id = "x"'), "scheme_id"),
        (MINIMAL.replace("version = 1", "version = 0"), "version"),
        (MINIMAL.replace('title = "Test"', 'title = ""'), "title"),
        (MINIMAL.replace('title = "Test"\n', ""), "title"),
        (MINIMAL.replace("effective_from = 2026-04-01\n", ""), "effective_from"),
        (MINIMAL.replace("effective_from = 2026-04-01", 'effective_from = "April"'), "effective_from"),
    ],
)
def test_bad_or_missing_identity_field_is_named(text: str, field: str) -> None:
    with pytest.raises(SchemeError, match=f"^pilot.toml: .*{field}"):
        parse_scheme(text, "pilot.toml")


def test_scheme_error_lists_every_bad_field() -> None:
    with pytest.raises(SchemeError) as exc:
        parse_scheme(MINIMAL + "at_risk_bps = 20000\npriority = -5\nbogus = true\n", "many.toml")
    for field in ("at_risk_bps", "priority", "bogus"):
        assert field in str(exc.value)


def test_invalid_toml_syntax() -> None:
    with pytest.raises(SchemeError, match="^broken.toml: not valid TOML"):
        parse_scheme(MINIMAL + "cap_bps = \n", "broken.toml")


def test_scheme_error_is_a_value_error_and_chains_the_cause() -> None:
    with pytest.raises(SchemeError) as exc:
        parse_scheme(MINIMAL + "cap_bps = 2000\n")
    assert isinstance(exc.value, ValueError)
    assert isinstance(exc.value.__cause__, ValidationError)
    assert str(exc.value).startswith("<scheme>: ")


def test_effective_to_on_the_start_date_is_allowed() -> None:
    s = parse_scheme(MINIMAL + "effective_to = 2026-04-01\n")
    assert s.effective_to == s.effective_from == date(2026, 4, 1)


def test_dont_know_is_fixed_at_full_release() -> None:
    assert parse_scheme(MINIMAL + "[fft_release_bps]\ndont_know = 10000\n").fft_release_bps.dont_know == 10_000
    with pytest.raises(ValidationError):
        FftRelease(dont_know=0)  # type: ignore[arg-type]


def test_cap_equal_to_at_risk_is_allowed() -> None:
    s = parse_scheme(MINIMAL + "at_risk_bps = 500\ncap_bps = 500\n")
    assert s.cap_bps == s.at_risk_bps == 500


def test_scheme_is_frozen() -> None:
    s = make()
    with pytest.raises(ValidationError):
        s.at_risk_bps = 0  # type: ignore[misc]
    assert s.at_risk_bps == 1_000


# ---------------------------------------------------------------------------------------------
# load_schemes
# ---------------------------------------------------------------------------------------------
def test_load_schemes_names_the_bad_file(tmp_path: Path) -> None:
    (tmp_path / "a-good.toml").write_text(MINIMAL, encoding="utf-8")
    (tmp_path / "b-bad.toml").write_text(MINIMAL.replace("version = 1", "version = 2") + "cap_bps = 5000\n", encoding="utf-8")
    with pytest.raises(SchemeError, match=r"^b-bad\.toml: .*cap_bps"):
        load_schemes(tmp_path)


def test_load_schemes_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(SchemeError, match="scheme folder not found"):
        load_schemes(tmp_path / "nope")


def test_load_schemes_empty_folder_means_nothing_is_in_trial(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a scheme", encoding="utf-8")
    book = load_schemes(tmp_path)
    assert book.schemes == []
    assert book.select(activity_date=date(2026, 5, 1), **WHERE) is None


def test_load_schemes_rejects_the_same_version_twice(tmp_path: Path) -> None:
    (tmp_path / "one.toml").write_text(MINIMAL, encoding="utf-8")
    (tmp_path / "two.toml").write_text(MINIMAL.replace('title = "Test"', 'title = "Copy"'), encoding="utf-8")
    with pytest.raises(SchemeError, match="test-scheme@1 is defined twice"):
        load_schemes(tmp_path)


def test_load_schemes_several_versions(tmp_path: Path) -> None:
    (tmp_path / "v1.toml").write_text(MINIMAL, encoding="utf-8")
    (tmp_path / "v2.toml").write_text(
        MINIMAL.replace("version = 1", "version = 2").replace("2026-04-01", "2026-10-01") + "at_risk_bps = 500\n", encoding="utf-8"
    )
    book = load_schemes(tmp_path)
    assert [s.key for s in book.schemes] == ["test-scheme@1", "test-scheme@2"]
    assert book.select(activity_date=date(2026, 9, 30), **WHERE).key == "test-scheme@1"  # type: ignore[union-attr]
    assert book.select(activity_date=date(2026, 10, 1), **WHERE).key == "test-scheme@2"  # type: ignore[union-attr]
    assert book.get("test-scheme", 3) is None


# ---------------------------------------------------------------------------------------------
# Scope, applies, select
# ---------------------------------------------------------------------------------------------
def test_empty_scope_covers_everything() -> None:
    assert Scope().covers(**WHERE)


@pytest.mark.parametrize(
    ("scope", "covered"),
    [
        (Scope(regions=("Y56",)), True),
        (Scope(regions=("Y58", "Y56")), True),
        (Scope(regions=("Y58",)), False),
        (Scope(commissioners=("QMJ",)), False),
        (Scope(providers=("RJ1", "RTH")), True),
        (Scope(service_types=("maternity",)), False),
        (Scope(regions=("Y56",), service_types=("maternity",)), False),
        (Scope(regions=("Y56",), commissioners=("QWE",), providers=("RJ1",), service_types=("inpatient",)), True),
    ],
)
def test_scope_covers(scope: Scope, covered: bool) -> None:
    assert scope.covers(**WHERE) is covered


def test_applies_is_inclusive_of_both_dates() -> None:
    s = make(effective_from=date(2026, 4, 1), effective_to=date(2026, 4, 30))
    assert not s.applies(activity_date=date(2026, 3, 31), **WHERE)
    assert s.applies(activity_date=date(2026, 4, 1), **WHERE)
    assert s.applies(activity_date=date(2026, 4, 30), **WHERE)
    assert not s.applies(activity_date=date(2026, 5, 1), **WHERE)
    assert make().applies(activity_date=date(2099, 12, 31), **WHERE)


def test_applies_respects_scope() -> None:
    s = make(scope=Scope(service_types=("maternity",)))
    assert not s.applies(activity_date=date(2026, 5, 1), **WHERE)
    assert s.applies(activity_date=date(2026, 5, 1), **{**WHERE, "service_type": "maternity"})


def test_select_prefers_higher_priority() -> None:
    region_wide = make(scheme_id="region", priority=0)
    maternity = make(scheme_id="maternity-pilot", priority=10, scope=Scope(service_types=("maternity",)))
    for order in ([region_wide, maternity], [maternity, region_wide]):
        book = SchemeBook(order)
        assert book.select(activity_date=date(2026, 5, 1), **{**WHERE, "service_type": "maternity"}) == maternity
        assert book.select(activity_date=date(2026, 5, 1), **WHERE) == region_wide


def test_select_prefers_the_latest_version_at_equal_priority() -> None:
    v1 = make(version=1)
    v2 = make(version=2, at_risk_bps=500)
    for order in ([v1, v2], [v2, v1]):
        assert SchemeBook(order).select(activity_date=date(2026, 5, 1), **WHERE) == v2


def test_select_out_of_trial_is_none() -> None:
    book = SchemeBook([make(scope=Scope(regions=("Y58",)))])
    assert book.select(activity_date=date(2026, 5, 1), **WHERE) is None


def test_scheme_book_get() -> None:
    s = make(scheme_id="abc", version=3)
    book = SchemeBook([s])
    assert book.get("abc", 3) is s
    assert book.get("abc", 2) is None


# ---------------------------------------------------------------------------------------------
# Release shares
# ---------------------------------------------------------------------------------------------
def test_fft_release_defaults_per_answer() -> None:
    r = FftRelease()
    assert {a: r.for_answer(a) for a in FftAnswer} == {
        FftAnswer.VERY_GOOD: 10_000,
        FftAnswer.GOOD: 10_000,
        FftAnswer.NEITHER: 10_000,
        FftAnswer.POOR: 5_000,
        FftAnswer.VERY_POOR: 0,
        FftAnswer.DONT_KNOW: 10_000,
    }


def test_fft_release_uses_configured_values() -> None:
    r = FftRelease(very_good=1, good=2, neither=3, poor=4, very_poor=5)
    assert [r.for_answer(a) for a in FftAnswer] == [1, 2, 3, 4, 5, 10_000]


def test_patient_choice_release() -> None:
    assert CHOICE_RELEASE_BPS == {"pay_in_full": 10_000, "hold_back": 0, "not_sure": 10_000}

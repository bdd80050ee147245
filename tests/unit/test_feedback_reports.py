"""Unit tests for the feedback core's PROM pairing, report rules, suppression, redaction and keyring."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devtools.synthetic import synthetic_nhs_number
from services.feedback.domain import (
    REDACTED,
    SUPPRESSION_THRESHOLD,
    Eq5d5lAnswers,
    FftAnswers,
    Keyring,
    OxfordAnswers,
    PatientPowerAnswers,
    PromPair,
    fft_report,
    pair_proms,
    pct,
    prom_pair_key,
    prom_report,
    prom_score,
    pseudonymise,
    redact,
    redact_bytes,
    redact_dead_letter,
    scores,
)
from services.feedback.privacy import RedactingFilter
from shared.contracts import FftAnswer

PROPS = settings(max_examples=150, deadline=None)
T0 = datetime(2026, 1, 10, tzinfo=timezone.utc)
T1 = T0 + timedelta(days=180)


def ohs(items: list[int], timing: str = "pre_op", instrument: str = "ohs") -> OxfordAnswers:
    return OxfordAnswers(instrument=instrument, items=tuple(items), timing=timing, procedure="primary_hip_replacement")  # type: ignore[arg-type]


def eq5d(vas: int, timing: str = "pre_op", procedure: str | None = "primary_knee_replacement") -> Eq5d5lAnswers:
    return Eq5d5lAnswers(mobility=3, self_care=2, usual_activities=3, pain_discomfort=4, anxiety_depression=1, vas=vas,
                         timing=timing, procedure=procedure)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# PROM pairing
# ---------------------------------------------------------------------------------------------
def test_pair_keys() -> None:
    assert prom_pair_key(ohs([1] * 12)) == ("ohs", "primary_hip_replacement", "pre_op")
    assert prom_pair_key(ohs([1] * 12, "post_op", "oks")) == ("oks", "primary_hip_replacement", "post_op")
    assert prom_pair_key(eq5d(50, "post_op")) == ("eq5d5l", "primary_knee_replacement", "post_op")
    assert prom_pair_key(eq5d(50, "other")) is None
    assert prom_pair_key(eq5d(50, "pre_op", None)) is None
    assert prom_pair_key(FftAnswers(fft_answer=FftAnswer.GOOD)) is None
    assert prom_pair_key(PatientPowerAnswers(patient_choice="pay_in_full")) is None


def test_oxford_health_gain_is_post_minus_pre() -> None:
    pre, post = scores(ohs([1] * 12)), scores(ohs([3] * 12, "post_op"))
    pair = pair_proms("ohs", "primary_hip_replacement", (T0, pre), (T1, post))
    assert pair == PromPair("ohs", "primary_hip_replacement", 12, 36)
    assert pair is not None and pair.health_gain == 24


def test_health_gain_can_be_negative() -> None:
    pair = pair_proms("oks", "x", (T0, scores(ohs([4] * 12))), (T1, scores(ohs([2] * 12, "post_op"))))
    assert pair is not None and pair.health_gain == -24


def test_eq5d_health_gain_uses_vas_and_keeps_profiles() -> None:
    pair = pair_proms("eq5d5l", "primary_knee_replacement", (T0, scores(eq5d(40))), (T1, scores(eq5d(75, "post_op"))))
    assert pair is not None
    assert (pair.pre_score, pair.post_score, pair.health_gain) == (40, 75, 35)
    assert pair.pre_profile == pair.post_profile == "32341"


@pytest.mark.parametrize("post_at", [T0, T0 - timedelta(days=1)])
def test_post_op_not_after_pre_op_is_not_paired(post_at: datetime) -> None:
    assert pair_proms("ohs", "x", (T0, {"oxford_total": 10}), (post_at, {"oxford_total": 30})) is None


def test_prom_score_rules() -> None:
    assert prom_score("ohs", {"oxford_total": 17}) == 17
    assert prom_score("oks", {"oxford_total": 0}) == 0
    assert prom_score("eq5d5l", {"eq_vas": 88, "eq5d_profile": "11111"}) == 88
    with pytest.raises(ValueError, match="not a paired PROM"):
        prom_score("fft", {"fft_positive": True})
    with pytest.raises(ValueError, match="integer"):
        prom_score("ohs", {"oxford_total": "17"})


@PROPS
@given(st.lists(st.integers(0, 4), min_size=12, max_size=12), st.lists(st.integers(0, 4), min_size=12, max_size=12))
def test_oxford_gain_property(pre: list[int], post: list[int]) -> None:
    pair = pair_proms("ohs", "p", (T0, scores(ohs(pre))), (T1, scores(ohs(post, "post_op"))))
    assert pair is not None and pair.health_gain == sum(post) - sum(pre)
    assert -48 <= pair.health_gain <= 48


# ---------------------------------------------------------------------------------------------
# PROM report
# ---------------------------------------------------------------------------------------------
def test_prom_report_averages_and_minimum_count() -> None:
    rows = [("RRV", "ohs", "hip", 10, 40), ("RRV", "ohs", "hip", 20, 31), ("RRV", "ohs", "hip", 15, 30),
            ("RJ1", "ohs", "hip", 10, 20), ("RRV", "oks", "knee", 5, 6)]
    report = prom_report(rows, min_count=3)
    by = {(g.provider_code, g.instrument): g for g in report}
    g = by[("RRV", "ohs")]
    assert (g.pairs, g.avg_pre, g.avg_post, g.avg_health_gain, g.suppressed) == (3, 15.0, 33.7, 18.7, False)
    assert by[("RJ1", "ohs")].suppressed and by[("RJ1", "ohs")].pairs == 1 and by[("RJ1", "ohs")].avg_health_gain is None
    assert [(g.provider_code, g.instrument, g.procedure) for g in report] == sorted(
        (g.provider_code, g.instrument, g.procedure) for g in report)


def test_prom_report_rounds_half_away_from_zero() -> None:
    # gains -1 and -2: mean -1.5 → -1.5; gains 1, 0, 0, 0 → 0.25 → 0.3; -0.25 → -0.3
    assert prom_report([("A", "ohs", "p", 2, 1), ("A", "ohs", "p", 3, 1)], 1)[0].avg_health_gain == -1.5
    assert prom_report([("A", "ohs", "p", 0, 1)] + [("A", "ohs", "p", 0, 0)] * 3, 1)[0].avg_health_gain == 0.3
    assert prom_report([("A", "ohs", "p", 1, 0)] + [("A", "ohs", "p", 0, 0)] * 3, 1)[0].avg_health_gain == -0.3


def test_prom_report_rejects_min_count_below_one() -> None:
    with pytest.raises(ValueError, match="min_count"):
        prom_report([], 0)


# ---------------------------------------------------------------------------------------------
# FFT report and suppression
# ---------------------------------------------------------------------------------------------
def counts(**by: int) -> dict[FftAnswer, int]:
    return {FftAnswer[k.upper()]: v for k, v in by.items()}


def test_pct_rounds_half_up_and_none_for_zero() -> None:
    assert pct(1, 3) == 33 and pct(2, 3) == 67 and pct(1, 8) == 13 and pct(1, 200) == 1 and pct(0, 5) == 0
    assert pct(5, 5) == 100 and pct(0, 0) is None


def test_fft_percentages_count_dont_know_in_the_denominator() -> None:
    rows, total = fft_report({"RAA": counts(very_good=3, good=1, neither=1, poor=1, very_poor=1, dont_know=3)})
    (row,) = rows
    assert (row.responses, row.pct_positive, row.pct_negative, row.suppression) == (10, 40, 20, "none")
    assert row.counts == {"very_good": 3, "good": 1, "neither": 1, "poor": 1, "very_poor": 1, "dont_know": 3}
    assert total.provider_code == "ALL" and total.responses == 10


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_one_to_four_responses_are_suppressed(n: int) -> None:
    rows, total = fft_report({"RAA": counts(very_good=n), "RBB": counts(good=20), "RCC": counts(poor=30)})
    by = {r.provider_code: r for r in rows}
    assert by["RAA"].suppression == "primary"
    assert (by["RAA"].responses, by["RAA"].counts, by["RAA"].pct_positive, by["RAA"].pct_negative) == (None, None, None, None)
    # secondary: the next smallest (RBB, 20) hides its counts so RAA = total - RBB - RCC is not recoverable
    assert by["RBB"].suppression == "secondary" and by["RBB"].responses is None and by["RBB"].counts is None
    assert by["RBB"].pct_positive == 100
    assert by["RCC"].suppression == "none" and by["RCC"].responses == 30
    assert total.responses == n + 50


def test_threshold_is_five() -> None:
    assert SUPPRESSION_THRESHOLD == 5
    rows, _ = fft_report({"RAA": counts(very_good=5)})
    assert rows[0].suppression == "none" and rows[0].responses == 5


def test_zero_responses_shown_not_suppressed() -> None:
    rows, total = fft_report({"RAA": {}, "RBB": counts(good=7)})
    by = {r.provider_code: r for r in rows}
    assert by["RAA"].responses == 0 and by["RAA"].suppression == "none"
    assert by["RAA"].pct_positive is None and by["RAA"].pct_negative is None
    assert by["RBB"].suppression == "none"
    assert total.responses == 7


def test_two_primary_suppressions_need_no_secondary() -> None:
    rows, _ = fft_report({"RAA": counts(good=1), "RBB": counts(good=2), "RCC": counts(good=9), "RDD": counts(good=50)})
    assert [r.suppression for r in rows] == ["primary", "primary", "none", "none"]


def test_secondary_ties_broken_by_provider_code_and_zero_rows_skipped() -> None:
    rows, _ = fft_report({"RAA": counts(good=2), "RZZ": counts(good=8), "RBB": counts(good=8), "RCC": {}})
    by = {r.provider_code: r.suppression for r in rows}
    assert by == {"RAA": "primary", "RBB": "secondary", "RCC": "none", "RZZ": "none"}


def test_single_suppressed_provider_alone_has_no_secondary_candidate() -> None:
    rows, total = fft_report({"RAA": counts(good=3)})
    assert rows[0].suppression == "primary" and total.responses == 3


@PROPS
@given(st.dictionaries(st.sampled_from(["RAA", "RBB", "RCC", "RDD", "RJ1"]),
                       st.dictionaries(st.sampled_from(list(FftAnswer)), st.integers(0, 12)), max_size=5))
def test_no_small_count_is_recoverable_from_the_total(data: dict[str, dict[FftAnswer, int]]) -> None:
    rows, total = fft_report(data)
    hidden = [r for r in rows if r.responses is None]
    for r in rows:
        n = sum(data[r.provider_code].values())
        if 0 < n < SUPPRESSION_THRESHOLD:
            assert r.suppression == "primary"
        if r.responses is not None:
            assert r.responses == n
    shown = sum(r.responses for r in rows if r.responses is not None)
    assert total.responses == sum(sum(v.values()) for v in data.values())
    # Subtraction reveals only the sum of the hidden rows; it is a single small count only if
    # exactly one row is hidden, which the secondary rule prevents whenever another row has responses.
    if len(hidden) == 1:
        assert all(r.responses == 0 for r in rows if r is not hidden[0])
        assert total.responses - shown == sum(data[hidden[0].provider_code].values())


# ---------------------------------------------------------------------------------------------
# Redaction
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["9990000018", "999 000 0018", "999-000-0018", "nhs=9990000019;", "x12345678901y"])
def test_redact_removes_ten_digit_runs(text: str) -> None:
    out = redact(text)
    assert REDACTED in out and not any(c.isdigit() for c in out)


@pytest.mark.parametrize("text", ["2026-11-21T10:00:00Z", "fft_answer: 5", "[3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3]", "123456789"])
def test_redact_leaves_other_numbers(text: str) -> None:
    assert redact(text) == text


def test_redact_bytes() -> None:
    assert redact_bytes(b"a 999 000 0018 b") == b"a [redacted] b"
    assert redact_bytes(None) is None


def test_redact_dead_letter_blanks_free_text_and_numbers() -> None:
    env = {"type": "x", "data": {"nhs_number": "9990000018", "free_text": "Dr Smith on ward 9", "episode_id": "e"}}
    out = json.loads(redact_dead_letter(json.dumps(env).encode()))  # type: ignore[arg-type]
    assert out["data"] == {"nhs_number": REDACTED, "free_text": REDACTED, "episode_id": "e"}
    assert redact_dead_letter(b"\xff\xfe 9990000018") == b"\xff\xfe [redacted]"
    assert redact_dead_letter(b"[1, 2]") == b"[1, 2]"
    assert redact_dead_letter(None) is None


def test_log_filter_redacts_message_args_and_exceptions() -> None:
    import logging

    record = logging.LogRecord("aiokafka.conn", logging.DEBUG, __file__, 1, "value=%s", (b"x9990000018",), None)
    assert RedactingFilter().filter(record) is True
    assert record.getMessage() == "value=b'x[redacted]'"
    try:
        raise ValueError("bad 999 000 0018")
    except ValueError:
        import sys

        rec = logging.LogRecord("x", logging.ERROR, __file__, 1, "boom", None, sys.exc_info())
    RedactingFilter().filter(rec)
    assert "0018" not in (rec.exc_text or "") and "[redacted]" in (rec.exc_text or "")


# ---------------------------------------------------------------------------------------------
# Keyring (pseudonym key rotation)
# ---------------------------------------------------------------------------------------------
def test_keyring_pseudonyms_current_first_then_previous() -> None:
    k = Keyring("k2", b"2" * 32, {"k1": b"1" * 32})
    n = synthetic_nhs_number(5)
    assert k.pseudonym(n) == pseudonymise(n, b"2" * 32)
    assert k.all_pseudonyms(n) == [pseudonymise(n, b"2" * 32), pseudonymise(n, b"1" * 32)]
    assert k.key_for("k1") == b"1" * 32 and k.key_for("k2") == b"2" * 32 and k.key_for("k0") is None


def test_keyring_rejects_short_key_and_reused_id() -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        Keyring("k", b"short", {})
    with pytest.raises(ValueError, match="must not also be a previous"):
        Keyring("k", b"x" * 32, {"k": b"y" * 32})

"""The pure rules of services/feedback/decisions.py with plain values: idempotency verdicts, first
answer per question, PROM pairing, order, locks (no store, no handler)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.feedback import decisions
from services.feedback.decisions import Accepted, Conflict, EarlierAnswer, Question, StoredSubmission
from devtools.synthetic import synthetic_nhs_number
from services.feedback.domain import Keyring, Submission, pseudonymise

OLD = Keyring("k1", b"k1" * 16, {})
KEYS = Keyring("k2", b"k2" * 16, {"k1": b"k1" * 16})
AT = datetime(2026, 10, 20, 10, tzinfo=timezone.utc)
RECEIVED = datetime(2026, 11, 1, 9, tzinfo=timezone.utc)
NHS = synthetic_nhs_number(3000)
PS = pseudonymise(NHS, KEYS.current)


def sub(sid: str, answers: dict | None = None, *, episode: str = "ep-1", authored: datetime = AT, **extra: Any) -> Submission:
    return Submission.model_validate({"submission_id": sid, "episode_id": episode, "provider_code": "RRV", "nhs_number": NHS,
                                      "authored_at": authored.isoformat(),
                                      "answers": answers or {"instrument": "fft", "fft_answer": 1}, **extra})


def ohs(timing: str, item: int) -> dict:
    return {"instrument": "ohs", "items": [item] * 12, "timing": timing, "procedure": "primary_hip_replacement"}


def prep(s: Submission, keys: Keyring = KEYS) -> decisions.Prepared:
    return decisions.prepare(s, "kafka", keys)


def decide(*subs: Submission, stored: dict | None = None, first: dict | None = None) -> decisions.Decided:
    return decisions.decide([prep(s) for s in subs], stored or {}, first or {}, KEYS, RECEIVED)


def stored_as(s: Submission, keys: Keyring, **kw: Any) -> StoredSubmission:
    item = prep(s, keys)
    return StoredSubmission(s.submission_id, item.content_hash, keys.current_id, kw.get("is_amendment", False),
                            kw.get("scores", {"fft_positive": True, "fft_negative": False}))


# ---------------------------------------------------------------------------------------------
# Questions and locks
# ---------------------------------------------------------------------------------------------
def test_questions_of_each_instrument() -> None:
    assert decisions.question_of(sub("a"), PS) == Question(PS, "fft", episode_id="ep-1")
    assert decisions.question_of(sub("a", {"instrument": "patient_power", "patient_choice": "hold_back"}), PS) == \
        Question(PS, "patient_power", episode_id="ep-1")
    pre = decisions.question_of(sub("a", ohs("pre_op", 1)), PS)
    assert pre == Question(PS, "ohs", procedure="primary_hip_replacement", timing="pre_op")
    assert pre.counterpart() == Question(PS, "ohs", procedure="primary_hip_replacement", timing="post_op")
    eq5d = {"instrument": "eq5d5l", "mobility": 1, "self_care": 1, "usual_activities": 1, "pain_discomfort": 1,
            "anxiety_depression": 1, "vas": 50}
    assert decisions.question_of(sub("a", eq5d), PS) is None
    assert decisions.question_of(sub("a", {**eq5d, "timing": "pre_op"}), PS) is None  # no procedure: stands alone
    with pytest.raises(ValueError):
        Question(PS, "fft", episode_id="ep-1").counterpart()


def test_lock_names_are_sorted_and_distinct_with_both_timings_of_a_prom_under_one_lock() -> None:
    items = [prep(sub("b", episode="ep-b")), prep(sub("a", episode="ep-a")), prep(sub("c", episode="ep-b")),
             prep(sub("p", ohs("pre_op", 1))), prep(sub("q", ohs("post_op", 1)))]
    assert decisions.lock_names(items) == sorted(["ep-a", "ep-b", f"{PS}:ohs:primary_hip_replacement"])


def test_questions_to_look_up_include_a_proms_counterpart_under_every_key() -> None:
    looked = decisions.questions_to_look_up([prep(sub("p", ohs("pre_op", 1))), prep(sub("f"))])
    aliases = (PS, pseudonymise(NHS, OLD.current))
    assert looked == {Question(PS, "ohs", procedure="primary_hip_replacement", timing="pre_op"): aliases,
                      Question(PS, "ohs", procedure="primary_hip_replacement", timing="post_op"): aliases,
                      Question(PS, "fft", episode_id="ep-1"): aliases}


# ---------------------------------------------------------------------------------------------
# Idempotency verdicts
# ---------------------------------------------------------------------------------------------
def test_same_id_same_content_is_the_stored_result_other_content_a_conflict() -> None:
    stored = {"a": stored_as(sub("a"), KEYS, is_amendment=True, scores={"x": 1})}
    out = decide(sub("a"), sub("a", {"instrument": "fft", "fft_answer": 5}), stored=stored)
    assert out.outcomes == [Accepted("a", "duplicate", True, {"x": 1}), Conflict("a")] and out.rows == []


def test_the_hash_of_a_row_stored_under_a_previous_key_is_recomputed_with_that_key() -> None:
    stored = {"a": stored_as(sub("a"), OLD)}
    assert decide(sub("a"), stored=stored).outcomes[0].status == "duplicate"  # type: ignore[union-attr]
    assert decide(sub("a", free_text="x"), stored=stored).outcomes == [Conflict("a")]
    gone = {"a": StoredSubmission("a", stored["a"].content_hash, "k0", False, {})}
    assert decide(sub("a"), stored=gone).outcomes == [Conflict("a")]


def test_optional_publication_fields_left_out_keep_older_hashes() -> None:
    plain = prep(sub("a")).content_hash
    assert prep(sub("a", setting=None, collection_mode=None)).content_hash == plain
    assert prep(sub("a", setting="maternity")).content_hash != plain


# ---------------------------------------------------------------------------------------------
# First answers, amendments, order
# ---------------------------------------------------------------------------------------------
def test_a_stored_first_answer_makes_a_new_one_an_amendment_of_it() -> None:
    q = Question(PS, "fft", episode_id="ep-1")
    out = decide(sub("b"), first={q: EarlierAnswer("a", "RRV", AT, {})})
    [(_, row)] = out.rows
    assert (row.is_amendment, row.amends_submission_id) == (True, "a")


def test_a_first_answer_to_another_instrument_does_not() -> None:
    q = Question(PS, "fft", episode_id="ep-1")
    out = decide(sub("b", {"instrument": "patient_power", "patient_choice": "hold_back"}),
                 first={q: EarlierAnswer("a", "RRV", AT, {})})
    assert out.rows[0][1].is_amendment is False and out.rows[0][1].amends_submission_id is None


def test_new_rows_are_received_a_microsecond_apart_in_batch_order_and_repeats_take_no_slot() -> None:
    out = decide(sub("z"), sub("z"), sub("a", episode="ep-2"), sub("m", episode="ep-3"))
    assert [(i, r.submission_id, r.received_at) for i, r in out.rows] == [
        (0, "z", RECEIVED), (2, "a", RECEIVED + timedelta(microseconds=1)), (3, "m", RECEIVED + timedelta(microseconds=2))]
    assert out.outcomes[1] == Accepted("z", "duplicate", False, {"fft_positive": True, "fft_negative": False})


# ---------------------------------------------------------------------------------------------
# PROM pairing
# ---------------------------------------------------------------------------------------------
PRE_Q = Question(PS, "ohs", procedure="primary_hip_replacement", timing="pre_op")


def test_a_first_post_operative_answer_pairs_with_the_stored_first_pre_operative_one() -> None:
    pre = EarlierAnswer("pre", "RJ1", AT - timedelta(days=100), {"oxford_total": 12})
    out = decide(sub("post", ohs("post_op", 3)), first={PRE_Q: pre})
    [pair] = out.pairs
    assert (pair.pre_submission_id, pair.post_submission_id, pair.provider_code, pair.pair.health_gain) == ("pre", "post", "RRV", 24)
    assert out.rows[0][1].scores == {"oxford_total": 36, "health_gain": 24, "paired_with": "pre"}


def test_the_event_carries_what_improvement_is_measured_by_and_never_the_answer_text() -> None:
    pre = EarlierAnswer("pre", "RJ1", AT - timedelta(days=100), {"oxford_total": 12})
    out = decide(sub("post", ohs("post_op", 3), setting="inpatient"), sub("f", {"instrument": "fft", "fft_answer": 2}))
    completed = decide(sub("post", ohs("post_op", 3), setting="inpatient"), first={PRE_Q: pre})
    event = decisions.received_event(completed.rows[0][1])
    assert (event.setting, event.procedure, event.timing, event.prom_score, event.health_gain) == (
        "inpatient", "primary_hip_replacement", "post_op", 36, 24)
    alone = decisions.received_event(out.rows[0][1])
    assert (alone.prom_score, alone.health_gain) == (36, None)  # no pre-operative answer yet
    fft = decisions.received_event(out.rows[1][1])
    assert (fft.procedure, fft.timing, fft.prom_score, fft.health_gain, fft.fft_answer) == (None, None, None, None, 2)


def test_a_pre_operative_answer_completing_a_pair_takes_the_post_answers_provider() -> None:
    post = EarlierAnswer("post", "RJ1", AT + timedelta(days=100), {"oxford_total": 48})
    out = decide(sub("pre", ohs("pre_op", 1)), first={PRE_Q.counterpart(): post})
    assert out.pairs[0].provider_code == "RJ1" and out.pairs[0].pair.health_gain == 36


def test_no_pair_when_the_post_answer_is_not_later_and_none_for_an_amendment() -> None:
    post = EarlierAnswer("post", "RJ1", AT - timedelta(days=1), {"oxford_total": 48})
    assert decide(sub("pre", ohs("pre_op", 1)), first={PRE_Q.counterpart(): post}).pairs == []
    later_post = EarlierAnswer("post", "RJ1", AT + timedelta(days=1), {"oxford_total": 48})
    named = decide(sub("pre", ohs("pre_op", 1), amends_submission_id="x"), first={PRE_Q.counterpart(): later_post})
    assert named.pairs == [] and named.rows[0][1].is_amendment


# ---------------------------------------------------------------------------------------------
# Property: an answer is an amendment exactly when it is named one or is not its question's first
# ---------------------------------------------------------------------------------------------
answer_st = st.sampled_from([{"instrument": "fft", "fft_answer": 2}, {"instrument": "patient_power", "patient_choice": "hold_back"},
                             ohs("pre_op", 1), ohs("post_op", 3)])


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(answer_st, st.sampled_from(["ep-1", "ep-2"]), st.booleans()), min_size=1, max_size=25))
def test_property_amendment_iff_named_or_not_first(plan: list[tuple[dict, str, bool]]) -> None:
    subs = [sub(f"s{i}", answers, episode=episode, amends_submission_id="x" if named else None,
                authored=AT + timedelta(days=i)) for i, (answers, episode, named) in enumerate(plan)]
    out = decide(*subs)
    firsts: dict[Question, str] = {}
    for (_, row), s in zip(out.rows, subs):
        q = decisions.question_of(s, PS)
        named = s.amends_submission_id is not None
        assert row.is_amendment == (named or q in firsts)
        if not row.is_amendment:
            firsts[q] = s.submission_id  # type: ignore[index]
        elif not named:
            assert row.amends_submission_id == firsts[q]  # type: ignore[index]
    # Authored in batch order, so every first post-op after a first pre-op pairs with it, once.
    pre, post = [firsts.get(PRE_Q), firsts.get(PRE_Q.counterpart())]
    expect = [(pre, post)] if pre and post and int(pre[1:]) < int(post[1:]) else []
    assert [(p.pre_submission_id, p.post_submission_id) for p in out.pairs] == expect

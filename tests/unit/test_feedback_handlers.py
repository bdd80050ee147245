"""The feedback command handler (services/feedback/handlers.py) on the in-memory store
(tests/unit/fakes_feedback.py): outcomes, order, amendments per question, PROM pairing,
idempotency and conflicts, key rotation, races and limits. Milliseconds each; the PostgreSQL
adapter is held to the same contract in tests/integration/test_feedback_store.py."""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from services.feedback import decisions
from services.feedback.decisions import Accepted, Conflict
from devtools.synthetic import synthetic_nhs_number
from services.feedback.domain import Keyring, Submission, pseudonymise
from services.feedback.handlers import AcceptSubmissions, SubmitFeedback
from shared.retry import RACE_ATTEMPTS
from shared.uow import FakeUnitOfWork, Raced
from tests.unit.fakes_feedback import FakeFeedback, FeedbackState

OLD_KEYS = Keyring("k1", b"k1" * 16, {})
KEYS = Keyring("k2", b"k2" * 16, {"k1": b"k1" * 16})  # after a rotation: k1 is a previous key
AUTHORED = datetime(2026, 10, 20, 10, tzinfo=timezone.utc)


def patient(n: int) -> str:
    return synthetic_nhs_number(2000 + n)


def sub(sid: str, *, episode: str = "ep-1", who: int = 0, answers: dict | None = None, authored: datetime = AUTHORED,
        **extra: Any) -> Submission:
    return Submission.model_validate({
        "submission_id": sid, "episode_id": episode, "provider_code": "RRV", "nhs_number": patient(who),
        "authored_at": authored.isoformat(), "answers": answers or {"instrument": "fft", "fft_answer": 2}, **extra})


def fft(answer: int) -> dict:
    return {"instrument": "fft", "fft_answer": answer}


def power(choice: str) -> dict:
    return {"instrument": "patient_power", "patient_choice": choice}


def ohs(timing: str, item: int, procedure: str = "primary_hip_replacement") -> dict:
    return {"instrument": "ohs", "items": [item] * 12, "timing": timing, "procedure": procedure}


def prom(sid: str, timing: str, item: int, *, days: int, who: int = 0, provider: str = "RRV", **extra: Any) -> Submission:
    return sub(sid, episode=f"op-{sid}", who=who, answers=ohs(timing, item), authored=AUTHORED + timedelta(days=days),
               provider_code=provider, **extra)


async def accept(fake: FakeFeedback, *subs: Submission, keys: Keyring = KEYS, channel: str = "kafka",
                 correlation_id: str = "corr-1") -> list[Accepted | Conflict]:
    handler = AcceptSubmissions(fake.uow, keys)
    return await handler([SubmitFeedback(s, channel, correlation_id, f"cause-{s.submission_id}")  # type: ignore[arg-type]
                          for s in subs])


def created(outcome: Accepted | Conflict) -> Accepted:
    assert isinstance(outcome, Accepted) and outcome.status == "created", outcome
    return outcome


# ---------------------------------------------------------------------------------------------
# One submission
# ---------------------------------------------------------------------------------------------
async def test_a_new_submission_is_stored_pseudonymised_with_its_event() -> None:
    fake = FakeFeedback()
    [out] = await accept(fake, sub("s1", free_text="Kind staff", setting="maternity", collection_mode="sms"), channel="http")
    assert out == Accepted("s1", "created", False, {"fft_positive": True, "fft_negative": False})
    row = fake.state.submissions["s1"]
    assert row.patient_pseudonym == pseudonymise(patient(0), KEYS.current) and row.pseudonym_key_id == "k2"
    assert (row.channel, row.setting, row.collection_mode, row.free_text) == ("http", "maternity", "sms", "Kind staff")
    [(topic, key, payload, headers)] = fake.state.outbox
    event = json.loads(payload)
    assert (topic, key) == ("feedback.received.v1", b"ep-1")
    assert event["type"] == "feedback.received.v1" and event["producer"] == "feedback"
    assert (event["correlation_id"], event["causation_id"]) == ("corr-1", "cause-s1")
    assert json.loads(headers) == {"event_type": "feedback.received.v1", "event_id": event["event_id"],
                                   "correlation_id": "corr-1", "causation_id": "cause-s1"}
    # The setting travels (what improvement work is measured by); the mode and the free text do not.
    assert {k: v for k, v in event["data"].items() if v is not None} == {
        "submission_id": "s1", "episode_id": "ep-1", "provider_code": "RRV", "patient_pseudonym": row.patient_pseudonym,
        "instrument": "fft", "authored_at": "2026-10-20T10:00:00Z", "fft_answer": 2, "setting": "maternity"}
    assert {"patient_choice", "amends_submission_id"} <= set(event["data"])
    assert patient(0) not in payload.decode() and "Kind staff" not in payload.decode()
    assert fake.uow.commits == 1


async def test_nhs_numbers_removed_from_free_text_are_counted_on_the_row() -> None:
    fake = FakeFeedback()
    await accept(fake, sub("s1", free_text="my number is 943 476 5919, twice: 9434765919"))
    row = fake.state.submissions["s1"]
    assert row.free_text_redactions == 2 and "9434765919" not in (row.free_text or "")


async def test_an_empty_batch_opens_no_transaction_and_an_oversized_one_is_refused() -> None:
    fake = FakeFeedback()
    assert await AcceptSubmissions(fake.uow, KEYS)([]) == []
    assert fake.uow.commits == 0 and fake.locks_taken == []
    small = AcceptSubmissions(fake.uow, KEYS, max_commands=2)
    with pytest.raises(ValueError, match="at most 2"):
        await small([SubmitFeedback(sub(f"s{n}", who=n), "kafka", "c") for n in range(3)])
    assert fake.state.submissions == {}


# ---------------------------------------------------------------------------------------------
# Idempotency
# ---------------------------------------------------------------------------------------------
async def test_the_same_submission_again_is_a_duplicate_and_writes_nothing() -> None:
    fake = FakeFeedback()
    [first] = await accept(fake, sub("s1"))
    [again] = await accept(fake, sub("s1"))
    assert again == Accepted("s1", "duplicate", first.is_amendment, first.scores)
    assert len(fake.state.submissions) == 1 and len(fake.state.outbox) == 1


async def test_the_same_id_with_other_content_is_a_conflict_and_the_rest_of_the_batch_goes_on() -> None:
    fake = FakeFeedback()
    await accept(fake, sub("s1"))
    outcomes = await accept(fake, sub("s1", answers=fft(5)), sub("s2", who=1), sub("s1", free_text="changed"))
    assert outcomes[0] == Conflict("s1") and outcomes[2] == Conflict("s1")
    assert outcomes[0].detail == "submission s1 was already received with different content"
    assert created(outcomes[1]).submission_id == "s2"
    assert sorted(fake.state.submissions) == ["s1", "s2"] and len(fake.state.outbox) == 2
    assert json.loads(fake.state.submissions["s1"].answers_json) == fft(2)  # nothing overwritten


async def test_a_repeat_within_a_batch_is_a_duplicate_or_a_conflict_of_the_first() -> None:
    fake = FakeFeedback()
    outcomes = await accept(fake, sub("s1"), sub("s1"), sub("s1", answers=fft(4)))
    assert [type(o).__name__ for o in outcomes] == ["Accepted", "Accepted", "Conflict"]
    assert outcomes[1] == Accepted("s1", "duplicate", False, outcomes[0].scores)  # type: ignore[union-attr]
    assert len(fake.state.outbox) == 1


async def test_only_conflicts_and_duplicates_write_no_rows_and_no_events() -> None:
    fake = FakeFeedback()
    await accept(fake, sub("s1"))
    before = (dict(fake.state.submissions), list(fake.state.outbox))
    await accept(fake, sub("s1"), sub("s1", answers=fft(1)))
    assert (fake.state.submissions, fake.state.outbox) == before


# ---------------------------------------------------------------------------------------------
# Order and amendments: first answer per question
# ---------------------------------------------------------------------------------------------
async def test_items_of_a_batch_are_received_in_order_whatever_their_ids() -> None:
    fake = FakeFeedback()
    await accept(fake, sub("z", answers=fft(1)), sub("a", answers=fft(5)), sub("m", episode="ep-2"))
    rows = fake.state.submissions
    assert rows["z"].received_at < rows["a"].received_at < rows["m"].received_at
    assert (rows["z"].is_amendment, rows["a"].is_amendment, rows["a"].amends_submission_id) == (False, True, "z")
    # Events in batch order too: the relay publishes in outbox order.
    assert [e["data"]["submission_id"] for e in fake.state.events()] == ["z", "a", "m"]


async def test_a_later_answer_to_the_same_question_is_an_amendment_of_the_first() -> None:
    fake = FakeFeedback()
    [rating] = await accept(fake, sub("fft-1", answers=fft(2)))
    [choice] = await accept(fake, sub("pp-1", answers=power("hold_back")))
    [rating_2] = await accept(fake, sub("fft-2", answers=fft(5)))
    [choice_2] = await accept(fake, sub("pp-2", answers=power("pay_in_full")))
    # FFT and the patient power question are two questions: a "hold back" after a rating is the
    # patient's first answer to it (payments' scheme decides which one moves money).
    assert (created(rating).is_amendment, created(choice).is_amendment) == (False, False)
    assert (created(rating_2).is_amendment, created(choice_2).is_amendment) == (True, True)
    rows = fake.state.submissions
    assert [rows[s].amends_submission_id for s in ("fft-1", "pp-1", "fft-2", "pp-2")] == [None, None, "fft-1", "pp-1"]
    amends = {e["data"]["submission_id"]: e["data"]["amends_submission_id"] for e in fake.state.events()}
    assert amends == {"fft-1": None, "pp-1": None, "fft-2": "fft-1", "pp-2": "pp-1"}


async def test_first_answers_are_per_episode_and_patient() -> None:
    fake = FakeFeedback()
    outcomes = await accept(fake, sub("a", who=0), sub("b", who=1), sub("c", who=0, episode="ep-2"))
    assert [created(o).is_amendment for o in outcomes] == [False, False, False]


async def test_a_named_amendment_is_an_amendment_and_never_the_first_answer() -> None:
    fake = FakeFeedback()
    [named] = await accept(fake, sub("n", amends_submission_id="elsewhere"))
    [next_] = await accept(fake, sub("x", answers=fft(4)))
    assert created(named).is_amendment and not created(next_).is_amendment
    [client_named] = await accept(fake, sub("y", answers=fft(1), amends_submission_id="x"))
    [later] = await accept(fake, sub("w", answers=fft(3)))
    assert fake.state.submissions["y"].amends_submission_id == "x"  # the client's link is kept
    assert created(client_named).is_amendment and fake.state.submissions["w"].amends_submission_id == "x"
    assert created(later).is_amendment


async def test_a_batch_equals_its_items_sent_one_at_a_time() -> None:
    batch = [sub("fft-1"), sub("pp-1", answers=power("hold_back")), sub("fft-2", answers=fft(5)),
             prom("pre", "pre_op", 1, days=-100), prom("post", "post_op", 3, days=-1), prom("pre-2", "pre_op", 2, days=-90),
             sub("fft-1"), sub("pp-1", answers=power("not_sure"))]
    together, apart = FakeFeedback(), FakeFeedback()
    got_together = await accept(together, *batch)
    got_apart = [out for s in batch for out in await accept(apart, s)]
    assert got_together == got_apart
    assert together.state.pairs == apart.state.pairs

    def comparable(fake: FakeFeedback) -> list[tuple]:
        return [(r.submission_id, r.is_amendment, r.amends_submission_id, json.dumps(r.scores, sort_keys=True))
                for r in sorted(fake.state.submissions.values(), key=lambda r: r.received_at)]

    assert comparable(together) == comparable(apart)


# ---------------------------------------------------------------------------------------------
# PROM pairing
# ---------------------------------------------------------------------------------------------
async def test_pre_then_post_pairs_and_the_post_answer_gets_the_gain() -> None:
    fake = FakeFeedback()
    [pre] = await accept(fake, prom("pre", "pre_op", 1, days=-100, provider="RJ1"))
    [post] = await accept(fake, prom("post", "post_op", 3, days=-1))
    assert "health_gain" not in created(pre).scores
    assert created(post).scores == {"oxford_total": 36, "health_gain": 24, "paired_with": "pre"}
    [pair] = fake.state.pairs.values()
    assert (pair.pre_submission_id, pair.post_submission_id, pair.provider_code) == ("pre", "post", "RRV")
    assert (pair.pair.pre_score, pair.pair.post_score, pair.pair.health_gain) == (12, 36, 24)


async def test_post_then_pre_pairs_on_the_second_arrival_with_the_post_answers_provider() -> None:
    fake = FakeFeedback()
    outcomes = await accept(fake, prom("post", "post_op", 4, days=-1, provider="RJ1"), prom("pre", "pre_op", 1, days=-100))
    assert created(outcomes[1]).scores == {"oxford_total": 12, "health_gain": 36, "paired_with": "post"}
    [pair] = fake.state.pairs.values()
    assert (pair.pre_submission_id, pair.post_submission_id, pair.provider_code) == ("pre", "post", "RJ1")


async def test_later_proms_at_the_same_timing_are_amendments_and_do_not_repair() -> None:
    fake = FakeFeedback()
    outcomes = await accept(fake, prom("pre", "pre_op", 1, days=-100), prom("post", "post_op", 3, days=-1),
                            prom("pre-2", "pre_op", 0, days=-99), prom("post-2", "post_op", 4, days=-2))
    assert [created(o).is_amendment for o in outcomes] == [False, False, True, True]
    assert fake.state.submissions["pre-2"].amends_submission_id == "pre"
    assert all("health_gain" not in created(o).scores for o in outcomes[2:])
    assert list(fake.state.pairs) == ["pre"]


async def test_a_post_operative_answer_authored_before_the_pre_operative_one_is_not_paired() -> None:
    fake = FakeFeedback()
    outcomes = await accept(fake, prom("pre", "pre_op", 1, days=-1), prom("post", "post_op", 4, days=-100))
    assert "health_gain" not in created(outcomes[1]).scores and fake.state.pairs == {}


async def test_pairs_are_per_patient_instrument_and_procedure() -> None:
    fake = FakeFeedback()
    knee = sub("knee-post", episode="k", answers={**ohs("post_op", 4, "primary_knee_replacement"), "instrument": "oks"},
               authored=AUTHORED)
    outcomes = await accept(fake, prom("pre", "pre_op", 1, days=-100), prom("other-post", "post_op", 4, days=-1, who=1), knee)
    assert all("health_gain" not in created(o).scores for o in outcomes) and fake.state.pairs == {}


# ---------------------------------------------------------------------------------------------
# Key rotation
# ---------------------------------------------------------------------------------------------
async def test_after_a_rotation_earlier_answers_are_still_recognised() -> None:
    fake = FakeFeedback()
    await accept(fake, sub("fft-1"), prom("pre", "pre_op", 1, days=-100), keys=OLD_KEYS)
    outcomes = await accept(fake, sub("fft-1"), sub("fft-2", answers=fft(4)), prom("post", "post_op", 3, days=-1))
    assert outcomes[0] == Accepted("fft-1", "duplicate", False, {"fft_positive": True, "fft_negative": False})
    assert created(outcomes[1]).is_amendment and fake.state.submissions["fft-2"].amends_submission_id == "fft-1"
    assert created(outcomes[2]).scores["paired_with"] == "pre"
    rows = fake.state.submissions
    assert (rows["fft-1"].pseudonym_key_id, rows["fft-2"].pseudonym_key_id) == ("k1", "k2")
    assert rows["fft-1"].patient_pseudonym != rows["fft-2"].patient_pseudonym
    assert fake.state.pairs["pre"].patient_pseudonym == rows["post"].patient_pseudonym  # the new one


async def test_other_content_under_a_previous_key_is_still_a_conflict() -> None:
    fake = FakeFeedback()
    await accept(fake, sub("fft-1"), keys=OLD_KEYS)
    assert await accept(fake, sub("fft-1", answers=fft(5))) == [Conflict("fft-1")]


async def test_a_retired_key_recognises_nothing() -> None:
    fake = FakeFeedback()
    await accept(fake, sub("fft-1"), keys=OLD_KEYS)
    retired = Keyring("k3", b"k3" * 16, {})
    outcomes = await accept(fake, sub("fft-1"), sub("fft-2"), keys=retired)
    assert outcomes[0] == Conflict("fft-1")  # its hash cannot be recomputed: never taken for a duplicate
    assert not created(outcomes[1]).is_amendment  # the patient can no longer be linked


# ---------------------------------------------------------------------------------------------
# Locks, races and metrics
# ---------------------------------------------------------------------------------------------
async def test_one_lock_statement_per_transaction_with_every_question_in_sorted_order() -> None:
    fake = FakeFeedback()
    await accept(fake, sub("a", episode="ep-z"), sub("b", episode="ep-a"), prom("pre", "pre_op", 1, days=-1),
                 sub("eq", answers={"instrument": "eq5d5l", "mobility": 1, "self_care": 1, "usual_activities": 1,
                                    "pain_discomfort": 1, "anxiety_depression": 1, "vas": 50}))
    [names] = fake.locks_taken
    ps = pseudonymise(patient(0), KEYS.current)
    assert names == sorted(["ep-z", "ep-a", f"{ps}:ohs:primary_hip_replacement"])


async def test_a_concurrent_insert_of_the_same_id_reruns_the_batch_which_then_finds_it() -> None:
    fake = FakeFeedback()
    other = FakeFeedback()  # the other writer's row, decided as it would have been
    await accept(other, sub("s1"))
    fake.commit_concurrently(other.state.submissions["s1"])
    outcomes = await accept(fake, sub("s1"), sub("s2", who=1))
    assert outcomes == [Accepted("s1", "duplicate", False, {"fft_positive": True, "fft_negative": False}),
                        Accepted("s2", "created", False, {"fft_positive": True, "fft_negative": False})]
    assert (fake.uow.rollbacks, fake.uow.commits) == (1, 1)
    assert [e["data"]["submission_id"] for e in fake.state.events()] == ["s2"]  # the other writer announced s1


async def test_a_concurrent_insert_with_other_content_becomes_a_conflict_on_the_rerun() -> None:
    fake = FakeFeedback()
    other = FakeFeedback()
    await accept(other, sub("s1", answers=fft(5)))
    fake.commit_concurrently(other.state.submissions["s1"])
    assert await accept(fake, sub("s1")) == [Conflict("s1")]


async def test_a_batch_that_races_every_time_gives_up_after_the_race_attempts_writing_nothing() -> None:
    fake, other = FakeFeedback(), FakeFeedback()
    subs = [sub(f"s{n}", who=n) for n in range(RACE_ATTEMPTS)]
    await accept(other, *subs)
    # Every pass meets another writer's row for one more of its ids.
    fake.commit_concurrently_in_each_transaction(*(other.state.submissions[s.submission_id] for s in subs))
    with pytest.raises(Raced):
        await accept(fake, *subs, sub("new", who=9))
    assert fake.uow.commits == 0 and fake.uow.rollbacks == RACE_ATTEMPTS
    assert "new" not in fake.state.submissions and fake.state.outbox == []


def _metric(channel: str, outcome: str) -> float:
    return REGISTRY.get_sample_value("feedback_submissions_total", {"channel": channel, "outcome": outcome}) or 0.0


class _BrokenStore:
    async def lock(self, names: Any) -> datetime:
        raise RuntimeError("database gone")


async def test_metrics_count_outcomes_after_the_commit_only() -> None:
    fake = FakeFeedback()
    before = [_metric("fhir", o) for o in ("created", "duplicate", "conflict")]
    await accept(fake, sub("s1"), sub("s1"), sub("s1", answers=fft(4)), channel="fhir")
    after = [_metric("fhir", o) for o in ("created", "duplicate", "conflict")]
    assert [a - b for a, b in zip(after, before)] == [1, 1, 1]
    broken = AcceptSubmissions(FakeUnitOfWork(FeedbackState(), lambda draft: _BrokenStore()), KEYS)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError):
        await broken([SubmitFeedback(sub("s3"), "fhir", "c")])
    assert _metric("fhir", "created") == after[0]  # nothing committed, nothing counted


# ---------------------------------------------------------------------------------------------
# Property: any sequence, cut into any batches, gives what one at a time gives
# ---------------------------------------------------------------------------------------------
def random_submissions(rnd: random.Random, n: int) -> list[Submission]:
    """Few patients and episodes, every instrument, repeats (duplicates and conflicts), named
    amendments, PROMs before and after surgery authored either way round."""
    out: list[Submission] = []
    for i in range(n):
        if out and rnd.random() < 0.15:
            prev = rnd.choice(out)
            out.append(prev if rnd.random() < 0.5 else prev.model_copy(update={"free_text": f"other {i}"}))
            continue
        timing = rnd.choice(["pre_op", "post_op"])
        kind = rnd.choice(["fft", "power", "ohs", "ohs", "eq5d"])
        answers = {"fft": fft(rnd.randint(1, 6)), "power": power(rnd.choice(["pay_in_full", "hold_back", "not_sure"])),
                   "ohs": ohs(timing, rnd.randint(0, 4)),
                   "eq5d": {"instrument": "eq5d5l", "mobility": 1, "self_care": 2, "usual_activities": 3,
                            "pain_discomfort": 4, "anxiety_depression": 5, "vas": rnd.randint(0, 100),
                            "timing": timing, "procedure": "primary_knee_replacement"}}[kind]
        amends = rnd.choice(out).submission_id if out and rnd.random() < 0.1 else None
        out.append(sub(f"s{i}", episode=f"ep-{rnd.randrange(3)}", who=rnd.randrange(3), answers=answers,
                       authored=AUTHORED - timedelta(days=rnd.randint(0, 60), minutes=rnd.randint(0, 59)),
                       amends_submission_id=amends))
    return out


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), cuts=st.lists(st.integers(1, 30), min_size=1, max_size=10))
async def test_property_batches_of_any_size_equal_one_at_a_time(seed: int, cuts: list[int]) -> None:
    rnd = random.Random(seed)
    seeded, subs = random_submissions(rnd, 8), random_submissions(random.Random(seed + 1), 40)
    subs += [s for s in seeded if rnd.random() < 0.3]  # stored under the old key, sent again
    together, apart = FakeFeedback(), FakeFeedback()
    for fake in (together, apart):
        for s in seeded:
            await accept(fake, s, keys=OLD_KEYS)
    got_together: list[Any] = []
    k = 0
    while k < len(subs):
        size = cuts[len(got_together) % len(cuts)]
        got_together += await accept(together, *subs[k:k + size])
        k += size
    got_apart = [out for s in subs for out in await accept(apart, s)]
    assert got_together == got_apart

    def rows(fake: FakeFeedback) -> list[tuple]:
        return [(r.submission_id, r.is_amendment, r.amends_submission_id, json.dumps(r.scores, sort_keys=True),
                 r.pseudonym_key_id) for r in sorted(fake.state.submissions.values(), key=lambda r: r.received_at)]

    assert rows(together) == rows(apart)
    assert together.state.pairs == apart.state.pairs
    strip = [{k: v for k, v in e.items() if k not in ("event_id", "occurred_at", "causation_id")}
             for e in together.state.events()]
    assert strip == [{k: v for k, v in e.items() if k not in ("event_id", "occurred_at", "causation_id")}
                     for e in apart.state.events()]


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
async def test_property_at_most_one_first_answer_per_question(seed: int) -> None:
    fake = FakeFeedback()
    await accept(fake, *random_submissions(random.Random(seed), 60))
    firsts: dict[Any, list[str]] = {}
    for row in fake.state.submissions.values():
        q = decisions.Question(row.patient_pseudonym, row.instrument, row.episode_id if row.procedure is None else None,
                               row.procedure, row.timing)  # type: ignore[arg-type]
        if not row.is_amendment and (row.instrument in decisions.DECISION_INSTRUMENTS or row.timing is not None):
            firsts.setdefault(q, []).append(row.submission_id)
        if row.is_amendment:
            assert row.amends_submission_id is not None
    assert all(len(ids) == 1 for ids in firsts.values()), firsts
    for pair in fake.state.pairs.values():
        pre, post = fake.state.submissions[pair.pre_submission_id], fake.state.submissions[pair.post_submission_id]
        assert pre.timing == "pre_op" and post.timing == "post_op" and pre.authored_at < post.authored_at
        assert not pre.is_amendment and not post.is_amendment
        assert pair.pair.health_gain == pair.pair.post_score - pair.pair.pre_score

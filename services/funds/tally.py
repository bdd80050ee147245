"""What the funds service keeps of patients' feedback: per-period tallies, pure (no I/O).

It learns about feedback only from ``feedback.received.v1`` and keeps what a project's measure
needs: per trust, care setting and period (ISO week and month, by the day the patient answered),
the FFT answers and how many were positive and negative; per trust, PROM instrument, procedure
and period, the post-operative scores and the health gains (count and sum). Never a pseudonym, an
episode id or free text.

To count each answer once under at-least-once delivery, and to let an amendment *replace* the
answer it amends rather than add to it, it also keeps one small row per counted answer
(``Counted``): its submission id, the question it answers (the amended submission, else itself),
and what it added to which tallies. Answers that no measure uses (the patient power question) are
not kept at all.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, timezone

from services.funds.measure import period_start
from shared.contracts import FeedbackReceived, FftAnswer
from shared.reference import ReferenceData

UNSPECIFIED_SETTING = "unspecified"  # answers sent without a care setting: counted in "all settings" only
POSITIVE = (FftAnswer.VERY_GOOD, FftAnswer.GOOD)
NEGATIVE = (FftAnswer.POOR, FftAnswer.VERY_POOR)
PROMS = ("eq5d5l", "ohs", "oks")
GRAINS = ("week", "month")


class UnknownProvider(ValueError):
    """An answer about a provider this deployment's reference data does not know (dead-lettered)."""


@dataclass(frozen=True)
class Counted:
    """One answer as counted: which tallies it added to, and how much."""

    submission_id: str
    root_id: str  # the question: the submission it amends, else itself
    kind: str  # "fft" | "prom"
    provider_code: str  # the trust (an answer about a site counts for its trust)
    answered_on: date  # UTC day of authored_at
    setting: str = UNSPECIFIED_SETTING
    positive: int = 0
    negative: int = 0
    instrument: str | None = None
    procedure: str | None = None
    score: int | None = None  # post-operative score
    gain: int | None = None  # health gain, on the answer that completes a pre/post pair


FftKey = tuple[str, date, str, str]  # grain, period start, trust, setting
PromKey = tuple[str, date, str, str, str]  # grain, period start, trust, instrument, procedure


@dataclass
class TallyPlan:
    """What a batch changes: answers to keep, answers replaced, and the deltas per tally row."""

    new: list[Counted] = field(default_factory=list)
    superseded: list[str] = field(default_factory=list)  # stored answers no longer current (submission ids)
    current: set[str] = field(default_factory=set)  # new answers that are current for their question
    fft: dict[FftKey, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0, 0]))  # responses, positive, negative
    prom: dict[PromKey, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0, 0, 0]))  # scores n, sum, gains n, sum
    duplicates: int = 0
    unmeasured: int = 0

    def add(self, c: Counted, sign: int) -> None:
        for grain in GRAINS:
            start = period_start(grain, c.answered_on)  # type: ignore[arg-type]
            if c.kind == "fft":
                row = self.fft[(grain, start, c.provider_code, c.setting)]
                row[0] += sign
                row[1] += sign * c.positive
                row[2] += sign * c.negative
            else:
                prow = self.prom[(grain, start, c.provider_code, c.instrument or "", c.procedure or "")]
                if c.score is not None:
                    prow[0] += sign
                    prow[1] += sign * c.score
                if c.gain is not None:
                    prow[2] += sign
                    prow[3] += sign * c.gain


def counted(ev: FeedbackReceived, ref: ReferenceData) -> Counted | None:
    """What one answer adds, or None when no measure uses it (the patient power question, a PROM
    answer with neither a post-operative score nor a health gain)."""
    trust = ref.trust_of(ev.provider_code)
    if trust is None:
        raise UnknownProvider(f"provider_code {ev.provider_code} is not in the reference data")
    base = Counted(submission_id=ev.submission_id, root_id=ev.amends_submission_id or ev.submission_id, kind="fft",
                   provider_code=trust, answered_on=ev.authored_at.astimezone(timezone.utc).date(),
                   setting=ev.setting or UNSPECIFIED_SETTING)
    if ev.instrument == "fft" and ev.fft_answer is not None:
        return replace(base, positive=int(ev.fft_answer in POSITIVE), negative=int(ev.fft_answer in NEGATIVE))
    if ev.instrument in PROMS and ev.procedure:
        score = ev.prom_score if ev.timing == "post_op" else None
        if score is None and ev.health_gain is None:
            return None
        return replace(base, kind="prom", setting=UNSPECIFIED_SETTING, instrument=ev.instrument, procedure=ev.procedure,
                       score=score, gain=ev.health_gain)
    return None


def plan(events: Sequence[FeedbackReceived], *, ref: ReferenceData, known: Mapping[str, Counted],
         current: Mapping[str, Counted]) -> TallyPlan:
    """The batch's effect, as if its answers were counted one at a time in order.

    ``known``: answers already counted, by submission id, for the batch's submissions and the
    ones they amend (a repeat is a duplicate); ``current``: the answer now counted for each
    question, by root id (an amendment takes it out first).
    Raises ``UnknownProvider`` for an answer about an unknown provider (nothing is planned).
    """
    out = TallyPlan()
    seen = dict(known)
    now_current = dict(current)
    for ev in events:
        if ev.submission_id in seen:
            out.duplicates += 1
            continue
        c = counted(ev, ref)
        if c is None:
            out.unmeasured += 1
            continue
        amended = seen.get(ev.amends_submission_id) if ev.amends_submission_id else None
        if amended is not None:  # an amendment of an amendment answers the same question
            c = replace(c, root_id=amended.root_id)
        prior = now_current.get(c.root_id)
        if prior is not None:
            out.add(prior, -1)
            out.superseded.append(prior.submission_id)
        out.add(c, +1)
        out.new.append(c)
        seen[c.submission_id] = c
        now_current[c.root_id] = c
    # A new answer is stored as current unless a later one in the same batch replaced it; only
    # stored answers need marking as replaced (the others are written as not current).
    last_for_root = {c.root_id: c.submission_id for c in out.new}
    out.current = {c.submission_id for c in out.new if last_for_root[c.root_id] == c.submission_id}
    out.superseded = [s for s in out.superseded if s in known]
    out.fft = {k: v for k, v in out.fft.items() if any(v)}
    out.prom = {k: v for k, v in out.prom.items() if any(v)}
    return out

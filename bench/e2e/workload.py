"""The synthetic "one England day": who is paid, by whom, for what, how much, and what patients say.

Pure and deterministic for a seed (no I/O). Everything is drawn from the reference data the
services validate against (``shared/reference``), so every request is valid:

- providers: volume skewed Zipf-style (exponent 0.8) by trust size, so the largest trust gets about
  six times the episodes of the smallest; all seven regions are present through their trusts;
- commissioners: 85% of a provider's episodes are paid by an ICB of the provider's own region,
  15% by another ICB (patients treated out of area);
- service types and amounts: integer pence drawn from a log-normal per service type (outpatient
  around £160, A&E £220, inpatient £2,800 with a long tail, ...; about £600 on average), clamped to
  £10 .. £250,000;
- activity dates spread over one calendar month;
- feedback for an exact share of episodes (0.5M per 1.5M by default), evenly spread: 85% Friends
  and Family Test with the national shape (mostly Very good and Good, about 4% Poor or Very poor,
  1% Don't know; some free text), 15% the patient power question (mostly "pay in full");
  authored 1-20 days after the activity, never in the future; synthetic NHS numbers from the
  999 000 0000 test range.

Ids carry a run tag so a run never collides with an earlier one on a shared broker or database:
payment ``<run>-p<i>``, episode ``<run>-e<i>``, submission ``<run>-s<i>`` for the global episode
index ``i``; the ledger transfers payments derives are ``pay:<run>-p<i>`` and ``hold:<run>-p<i>``.
"""

from __future__ import annotations

import json
import math
import random
import uuid
from bisect import bisect
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from itertools import accumulate

from devtools.synthetic import synthetic_nhs_number
from services.payments.domain import latest_settleable_period
from shared.reference import ReferenceData

# Rough size order of the trusts in the shipped extract (largest first, by patient contacts);
# codes not listed (a deployment's own reference data) follow in file order.
SIZE_ORDER = ["R0A", "RRK", "RR8", "RJ1", "RTD", "RGT", "RTH", "RRV", "RA7", "RH8"]
ZIPF_EXPONENT = 0.8
OWN_REGION_SHARE = 0.85

# service type: (share of episodes, median amount in pounds, log-normal sigma)
SERVICE_MIX = {
    "outpatient": (0.45, 160, 0.5),
    "a_and_e": (0.17, 220, 0.6),
    "inpatient": (0.08, 2_800, 0.7),
    "community": (0.16, 110, 0.5),
    "mental_health": (0.10, 450, 0.7),
    "maternity": (0.04, 2_600, 0.5),
}
MIN_PENCE, MAX_PENCE = 1_000, 25_000_000

# Friends and Family Test answers 1..6 (Very good .. Don't know): the national shape.
FFT_WEIGHTS = [0.68, 0.24, 0.03, 0.02, 0.02, 0.01]
PATIENT_POWER_SHARE = 0.15
CHOICE_WEIGHTS = {"pay_in_full": 0.88, "not_sure": 0.08, "hold_back": 0.04}
FREE_TEXT_SHARE = 0.4
FREE_TEXT = [json.dumps(t) for t in (
    "Staff were kind and explained everything.",
    "Waited a long time but the care was good.",
    "Thank you to the team on the ward.",
    "Nobody told me what was happening.",
    "Clean, quick and friendly.",
)]

_ENVELOPE = ('{{"event_id":"{eid}","type":"{type}","occurred_at":"{at}","correlation_id":"{cid}",'
             '"causation_id":null,"producer":"bench-e2e","data":{data}}}')


@dataclass(frozen=True)
class Episode:
    index: int
    payment_json: str  # the PaymentRequested payload as JSON
    feedback_json: str | None  # the feedback submission as JSON, when this episode has one
    provider: str
    amount_pence: int
    episode_id: str


def ids(run: str, i: int) -> tuple[str, str, str]:
    return f"{run}-p{i}", f"{run}-e{i}", f"{run}-s{i}"


def previous_month(today: date) -> date:
    """First day of the month before ``today``'s month."""
    return (today.replace(day=1) - timedelta(days=1)).replace(day=1)


def settleable_month(today: date, decision_window_days: int = 56) -> date:
    """First day of the latest month that can be settled today (every decision window closed)."""
    return date.fromisoformat(latest_settleable_period(today, decision_window_days) + "-01")


class Generator:
    """Draws episodes for one phase, in order. ``feedback_ratio`` of them get one submission each,
    evenly spread so that ``count * feedback_ratio`` is exact."""

    def __init__(self, ref: ReferenceData, *, run: str, month: date, feedback_ratio: float, seed: str,
                 nhs_offset: int = 0) -> None:
        self.run = run
        self.rng = random.Random(seed)
        self.month = month
        next_month = (month.replace(day=28) + timedelta(days=4)).replace(day=1)
        self.days = (next_month - month).days
        self.feedback_ratio = feedback_ratio
        self.nhs_next = nhs_offset
        self.k = 0  # episodes drawn by this generator
        order = [c for c in SIZE_ORDER if c in ref.providers] + [c for c in ref.providers if c not in SIZE_ORDER]
        self.providers = order
        self.provider_cum = list(accumulate((rank + 1) ** -ZIPF_EXPONENT for rank in range(len(order))))
        self.region = {c: ref.providers[c].region_code for c in order}
        # A commissioner pays only trusts it holds a contract with (reference data).
        contracted = {c: sorted(icb for icb, trusts in ref.contracts.items() if c in trusts) for c in order}
        self.own_icbs = {c: [i for i in contracted[c] if ref.commissioners[i].region_code == self.region[c]] for c in order}
        self.other_icbs = {c: [i for i in contracted[c] if i not in self.own_icbs[c]] for c in order}
        self.services = list(SERVICE_MIX)
        self.service_cum = list(accumulate(v[0] for v in SERVICE_MIX.values()))
        self.fft_cum = list(accumulate(FFT_WEIGHTS))
        self.choices = list(CHOICE_WEIGHTS)
        self.choice_cum = list(accumulate(CHOICE_WEIGHTS.values()))
        self.now = datetime.now(timezone.utc) - timedelta(minutes=1)

    def _pick(self, items: list[str], cum: list[float]) -> str:
        return items[min(len(items) - 1, bisect(cum, self.rng.random() * cum[-1]))]

    def next(self, index: int) -> Episode:
        rng = self.rng
        provider = self._pick(self.providers, self.provider_cum)
        own, other = self.own_icbs[provider], self.other_icbs[provider]
        icb = rng.choice(own) if own and (rng.random() < OWN_REGION_SHARE or not other) else rng.choice(other or own)
        service = self._pick(self.services, self.service_cum)
        _share, median, sigma = SERVICE_MIX[service]
        amount = int(rng.lognormvariate(math.log(median * 100), sigma))
        amount = max(MIN_PENCE, min(MAX_PENCE, amount))
        day = rng.randrange(self.days)
        activity = self.month + timedelta(days=day)
        pid, eid, sid = ids(self.run, index)
        payment = (f'{{"payment_id":"{pid}","episode_id":"{eid}","commissioner_code":"{icb}",'
                   f'"provider_code":"{provider}","service_type":"{service}",'
                   f'"activity_date":"{activity.isoformat()}","amount_pence":{amount}}}')
        feedback = None
        k = self.k
        self.k += 1
        if math.floor((k + 1) * self.feedback_ratio) > math.floor(k * self.feedback_ratio):
            authored = datetime(activity.year, activity.month, activity.day, tzinfo=timezone.utc) + timedelta(
                days=rng.randint(1, 20), seconds=rng.randrange(8 * 3600, 21 * 3600))
            authored = min(authored, self.now)
            if rng.random() < PATIENT_POWER_SHARE:
                answers = f'{{"instrument":"patient_power","patient_choice":"{self._pick(self.choices, self.choice_cum)}"}}'
                text = "null"
            else:
                code = 1 + bisect(self.fft_cum, rng.random() * self.fft_cum[-1])
                answers = f'{{"instrument":"fft","fft_answer":{min(code, 6)}}}'
                text = rng.choice(FREE_TEXT) if rng.random() < FREE_TEXT_SHARE else "null"
            nhs = synthetic_nhs_number(self.nhs_next)
            self.nhs_next += 1
            feedback = (f'{{"submission_id":"{sid}","episode_id":"{eid}","provider_code":"{provider}",'
                        f'"nhs_number":"{nhs}","authored_at":"{authored.isoformat()}","answers":{answers},'
                        f'"free_text":{text}}}')
        return Episode(index, payment, feedback, provider, amount, eid)


def kafka_envelope(type_: str, data_json: str, correlation_id: str, occurred_at: str) -> bytes:
    """An event envelope (shared/contracts.py Envelope) around an already serialised payload."""
    return _ENVELOPE.format(eid=uuid.uuid4(), type=type_, at=occurred_at, cid=correlation_id, data=data_json).encode()


def json_array(items: list[str]) -> bytes:
    return ("[" + ",".join(items) + "]").encode()

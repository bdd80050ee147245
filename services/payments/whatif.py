"""What-if: run trial schemes over recorded events, offline.

    python -m services.payments.whatif --schemes DIR --events FILE.jsonl [--period YYYY-MM] [--json]

The events file holds one envelope per line, exactly as on the topics ``payments.requested.v1``
and ``feedback.received.v1`` (other event types are skipped). Nothing touches a database or
Kafka: the same pure core the service uses (``domain.new_episode``, ``domain.settle``) decides
every episode, and a tiny in-memory ledger applies the resulting transfers, so a finance team
can see what a draft scheme would have done to each provider and region before it goes live.

The replay is order-independent, like the service: duplicates are ignored; two different events
with one id (a conflict, which the service would refuse) are reported and the one with the
smallest canonical JSON is kept, so the result never depends on file order.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from pydantic import ValidationError

from services.payments import domain
from services.payments.schemes import SchemeBook, SchemeError, load_schemes
from shared.contracts import FeedbackReceived, PaymentRequested, TransferRequested
from shared.money import check, format_pence
from shared.reference import ReferenceData, load_reference

MAX_EVENTS = 5_000_000  # a limit on everything: about three England days of payment requests


@dataclass
class Replay:
    """Everything the what-if found, ready to print or to compare."""

    episodes: list[domain.Episode] = field(default_factory=list)
    answers: list[domain.Answer] = field(default_factory=list)
    reports: list[domain.SettlementReport] = field(default_factory=list)
    transfers: list[TransferRequested] = field(default_factory=list)
    balances_pence: dict[str, int] = field(default_factory=dict)
    pending_pence: dict[str, int] = field(default_factory=dict)
    rejected: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    skipped: int = 0


def _canonical(model: Any) -> str:
    return model.model_dump_json()


def _dedupe(items: Iterable[Any], key: str, what: str, conflicts: list[str]) -> list[Any]:
    chosen: dict[str, Any] = {}
    for item in items:
        k = getattr(item, key)
        prior = chosen.get(k)
        if prior is None or _canonical(item) < _canonical(prior):
            if prior is not None:
                conflicts.append(f"{what} {k}: two different events with one id")
            chosen[k] = item
        elif _canonical(item) != _canonical(prior):
            conflicts.append(f"{what} {k}: two different events with one id")
    return [chosen[k] for k in sorted(chosen)]


def apply_transfers(transfers: Sequence[TransferRequested]) -> tuple[dict[str, int], dict[str, int]]:
    """A minimal two-phase ledger: (posted balances, pending balances) per account.

    Transfers must be in causal order per ordering key (a pending before its post or void)."""
    posted: dict[str, int] = defaultdict(int)
    pending: dict[str, int] = defaultdict(int)
    open_pending: dict[str, TransferRequested] = {}
    for t in transfers:
        if t.kind == "posted":
            for leg in t.legs:
                posted[leg.account_id] += leg.amount_pence
        elif t.kind == "pending":
            open_pending[t.transfer_id] = t
            for leg in t.legs:
                pending[leg.account_id] += leg.amount_pence
        else:
            held = open_pending.pop(t.pending_id or "", None)
            check(held is not None, f"{t.transfer_id} names no open pending transfer")
            for leg in held.legs:  # type: ignore[union-attr]
                pending[leg.account_id] -= leg.amount_pence
            if t.kind == "post_pending":
                for leg in t.legs or held.legs:  # type: ignore[union-attr]
                    posted[leg.account_id] += leg.amount_pence
    check(sum(posted.values()) == 0, "posted balances sum to zero")
    return ({k: v for k, v in sorted(posted.items()) if v}, {k: v for k, v in sorted(pending.items()) if v})


def replay(
    payments: Iterable[PaymentRequested],
    feedback: Iterable[FeedbackReceived],
    book: SchemeBook,
    ref: ReferenceData,
    *,
    period: str | None = None,
    hold_model: domain.HoldModel = "held_account",
) -> Replay:
    """Accept every payment, record every answer, settle every period (or one), apply the money."""
    out = Replay()
    reqs = _dedupe(payments, "payment_id", "payment", out.conflicts)
    by_episode: dict[str, PaymentRequested] = {}
    for req in reqs:  # one payment per episode, as the service enforces; smallest payment id wins
        if req.episode_id in by_episode:
            out.conflicts.append(f"episode {req.episode_id}: paid by {by_episode[req.episode_id].payment_id} and {req.payment_id}")
            continue
        by_episode[req.episode_id] = req
    for req in by_episode.values():
        try:
            ep = domain.episode_for_request(req, book=book, ref=ref, hold_model=hold_model)
        except domain.InputError as exc:
            out.rejected.append(f"payment {req.payment_id}: {exc}")
            continue
        out.episodes.append(ep)
    out.episodes.sort(key=lambda e: e.episode_id)
    out.answers = [
        domain.Answer(fb.submission_id, fb.episode_id, fb.instrument, fb.authored_at, fb.fft_answer, fb.patient_choice)  # type: ignore[arg-type]
        for fb in _dedupe(feedback, "submission_id", "feedback", out.conflicts)
        if fb.instrument in ("fft", "patient_power")
    ]
    by_payment: dict[str, list[TransferRequested]] = {e.payment_id: list(domain.payment_transfers(e)) for e in out.episodes}
    # As in the service, only episodes with money held are settled (nothing at risk: paid in full).
    held = [e for e in out.episodes if e.at_risk_pence > 0 and (period is None or e.period == period)]
    units = sorted({(e.provider_code, e.period, e.scheme_id, e.scheme_version) for e in held})
    for provider, unit_period, scheme_id, version in units:
        scheme = book.get(scheme_id, version)  # type: ignore[arg-type]
        check(scheme is not None, f"{scheme_id}@{version} selected but not loaded")
        report = domain.settle(held, out.answers, scheme, provider_code=provider, period=unit_period)  # type: ignore[arg-type]
        out.reports.append(report)
        for line in report.lines:
            by_payment[line.episode.payment_id].extend(line.transfers)
    out.transfers = [t for pid in sorted(by_payment) for t in by_payment[pid]]
    out.balances_pence, out.pending_pence = apply_transfers(out.transfers)
    return out


def read_events(lines: Iterable[str]) -> tuple[list[PaymentRequested], list[FeedbackReceived], list[str], int]:
    """Parse JSON-lines envelopes. Returns (payments, feedback, errors naming the line, skipped)."""
    payments: list[PaymentRequested] = []
    feedback: list[FeedbackReceived] = []
    errors: list[str] = []
    skipped = 0
    for n, line in enumerate(lines, 1):
        if n > MAX_EVENTS:
            errors.append(f"line {n}: more than {MAX_EVENTS} events; split the file")
            break
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            kind = raw.get("type") if isinstance(raw, dict) else None
            if kind == "payments.requested.v1":
                payments.append(PaymentRequested.model_validate(raw["data"]))
            elif kind == "feedback.received.v1":
                feedback.append(FeedbackReceived.model_validate(raw["data"]))
            else:
                skipped += 1
        except (json.JSONDecodeError, KeyError, ValidationError) as exc:
            detail = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:3]
            ) if isinstance(exc, ValidationError) else str(exc)
            errors.append(f"line {n}: {detail}")
    return payments, feedback, errors, skipped


def summary(result: Replay) -> dict[str, Any]:
    """Per provider (and period) and per region, as plain data."""
    providers = [
        {"provider_code": r.provider_code, "region_code": r.region_code, "period": r.period, "scheme": r.scheme_key,
         "episodes": r.episodes, "billed_pence": r.billed_pence, "held_pence": r.held_pence,
         "released_pence": r.released_pence, "diverted_pence": r.diverted_pence, "responses": r.responses,
         "min_sample_applied": r.min_sample_applied, "cap_applied": r.cap_applied, "cap_pence": r.cap_pence}
        for r in sorted(result.reports, key=lambda r: (r.provider_code, r.period, r.scheme_key))
    ]
    regions: dict[str, dict[str, int]] = defaultdict(lambda: {"diverted_pence": 0, "providers": 0})
    for r in result.reports:
        regions[r.region_code]["diverted_pence"] += r.diverted_pence
        regions[r.region_code]["providers"] += 1
    return {
        "providers": providers,
        "regions": [{"region_code": k, **v} for k, v in sorted(regions.items())],
        "balances_pence": result.balances_pence,
        "out_of_trial_episodes": sum(1 for e in result.episodes if e.scheme_id is None),
        "skipped_events": result.skipped,
        "rejected": result.rejected,
        "conflicts": result.conflicts,
    }


def render(s: dict[str, Any], out: TextIO) -> None:
    head = f"{'provider':8} {'region':6} {'period':7} {'scheme':24} {'eps':>5} {'billed':>14} {'held':>12} {'released':>12} {'diverted':>12} {'resp':>5}  safeguards"
    print(head, file=out)
    print("-" * len(head), file=out)
    for p in s["providers"]:
        flags = ", ".join(x for x, on in (("min-sample", p["min_sample_applied"]), ("cap", p["cap_applied"])) if on) or "-"
        print(f"{p['provider_code']:8} {p['region_code']:6} {p['period']:7} {p['scheme']:24} {p['episodes']:>5}"
              f" {format_pence(p['billed_pence']):>14} {format_pence(p['held_pence']):>12}"
              f" {format_pence(p['released_pence']):>12} {format_pence(p['diverted_pence']):>12} {p['responses']:>5}  {flags}",
              file=out)
    print("", file=out)
    print(f"{'region':6} {'providers':>9} {'to fund':>14}", file=out)
    for r in s["regions"]:
        print(f"{r['region_code']:6} {r['providers']:>9} {format_pence(r['diverted_pence']):>14}", file=out)
    if s["out_of_trial_episodes"]:
        print(f"\n{s['out_of_trial_episodes']} episode(s) out of trial (no scheme applies): paid in full", file=out)
    for what in ("rejected", "conflicts"):
        for line in s[what]:
            print(f"{what}: {line}", file=out)


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.payments.whatif", description=__doc__.split("\n\n")[0])
    parser.add_argument("--schemes", required=True, type=Path, help="folder of scheme TOML files")
    parser.add_argument("--events", required=True, type=Path, help="JSON lines of payments.requested.v1 / feedback.received.v1 envelopes")
    parser.add_argument("--period", help="settle only this period (YYYY-MM); default: every period in the file")
    parser.add_argument("--reference", type=Path, default=None, help="reference data folder (default: the shipped extract)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if args.period is not None and not (len(args.period) == 7 and args.period[4] == "-" and args.period.replace("-", "").isdigit()):
        print(f"--period: {args.period!r} is not YYYY-MM", file=err)
        return 2
    try:
        ref = load_reference(args.reference)
        book = load_schemes(args.schemes, ref)
    except (SchemeError, OSError, ValueError) as exc:
        print(f"bad configuration: {exc}", file=err)
        return 2
    try:
        with args.events.open(encoding="utf-8") as f:
            payments, feedback, errors, skipped = read_events(f)
    except OSError as exc:
        print(f"cannot read events: {exc}", file=err)
        return 2
    if errors:
        for e in errors[:20]:
            print(f"{args.events.name}: {e}", file=err)
        return 2
    result = replay(payments, feedback, book, ref, period=args.period)
    result.skipped = skipped
    s = summary(result)
    if args.json:
        json.dump(s, out, indent=2, default=str)
        out.write("\n")
    else:
        render(s, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

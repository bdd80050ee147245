"""What-if: run trial schemes over recorded events, offline.

    python -m services.payments.whatif --schemes DIR --events FILE.jsonl [--period YYYY-MM] [--json]
    python -m services.payments.whatif --compare A.toml B.toml [...] --events FILE.jsonl [--csv PATH] [--json]

The events file holds one envelope per line, exactly as on the topics ``payments.requested.v1``
and ``feedback.received.v1`` (other event types are skipped). Nothing touches a database or
Kafka: the same pure core the service uses (``domain.validate_codes``, ``domain.episode_for_request``,
``domain.settle``) decides every episode, and a tiny in-memory ledger applies the resulting
transfers (as validated contract models), so a finance team
can see what a draft scheme would have done to each provider and region before it goes live.

The replay is order-independent, like the service: duplicates are ignored; two different events
with one id (a conflict, which the service would refuse) are reported and the one with the
smallest canonical JSON is kept, so the result never depends on file order.

``--compare`` replays the same events once per scheme file (each file alone, applied to whatever
its scope covers) and prints, per provider and period, the money diverted under each, whether its
gate opened, and an equity table: per IMD decile, age band and setting, the response rate and the
share of episodes with money diverted under each scheme, with Wilson 95% intervals, and the share
of the held money diverted. ``--csv PATH`` also writes the provider table to PATH and the equity
table beside it (``<PATH stem>.equity.csv``).

The judgement rules (gate, case mix, improvement credit) need the period's counts over every
provider; the replay computes them from the events file with ``judgement.counts_from_records``, as
the service's store query does from its tables, so the file should hold the whole period (and the
baseline periods) for those figures to be the service's.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from pydantic import ValidationError

from services.payments import domain, judgement
from services.payments.schemes import Scheme, SchemeBook, SchemeError, check_scope, load_schemes, parse_scheme
from shared.contracts import FeedbackReceived, PaymentRequested, TransferRequested
from shared.money import check, format_pence
from shared.reference import ReferenceData, load_reference
from services.payments.equity import EQUITY_DIMENSIONS, UNKNOWN, StratumTally, equity_rows

MAX_EVENTS = 5_000_000  # a limit on everything: about three England days of payment requests


@dataclass
class Replay:
    """Everything the what-if found, ready to print or to compare."""

    episodes: list[domain.Episode] = field(default_factory=list)
    answers: list[domain.Answer] = field(default_factory=list)
    feedback: list[FeedbackReceived] = field(default_factory=list)  # every event, first per submission id
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
    hold_model: domain.HoldModel = domain.DEFAULT_HOLD_MODEL,
    exemptions: Mapping[tuple[str, str], judgement.Exemption] | None = None,
) -> Replay:
    """Accept every payment, record every answer, settle every period (or one), apply the money.

    ``exemptions``: provider-periods exempted, by (provider code, period)."""
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
            region = domain.validate_codes(req, ref)
        except domain.InputError as exc:
            out.rejected.append(f"payment {req.payment_id}: {exc}")
            continue
        out.episodes.append(domain.episode_for_request(req, region=region, book=book, hold_model=hold_model))
    out.episodes.sort(key=lambda e: e.episode_id)
    out.feedback = _dedupe(feedback, "submission_id", "feedback", out.conflicts)
    out.answers = [
        domain.Answer(fb.submission_id, fb.episode_id, fb.instrument, fb.authored_at, fb.fft_answer, fb.patient_choice)  # type: ignore[arg-type]
        for fb in out.feedback if fb.instrument in ("fft", "patient_power")
    ]
    by_payment: dict[str, list[TransferRequested]] = {e.payment_id: [p.request() for p in domain.payment_plan(e)]
                                                      for e in out.episodes}
    # As in the service, only episodes with money held are settled (nothing at risk: paid in full).
    held = [e for e in out.episodes if e.at_risk_pence > 0 and (period is None or e.period == period)]
    units = sorted({(e.provider_code, e.period, e.scheme_id, e.scheme_version) for e in held})
    contexts: dict[str, judgement.JudgementContext] = {}
    for provider, unit_period, scheme_id, version in units:
        scheme = book.get(scheme_id, version)  # type: ignore[arg-type]
        check(scheme is not None, f"{scheme_id}@{version} selected but not loaded")
        assert scheme is not None
        if unit_period not in contexts:  # once per period, as the settlement job does
            contexts[unit_period] = context_of(out.episodes, out.answers, unit_period, book.schemes, feedback=out.feedback,
                                               ref=ref)
        report = domain.settle(held, out.answers, scheme, provider_code=provider, period=unit_period,
                               context=contexts[unit_period], exemption=(exemptions or {}).get((provider, unit_period)))
        out.reports.append(report)
        for line in report.lines:
            by_payment[line.episode.payment_id].extend(p.request() for p in line.plan)
    out.transfers = [t for pid in sorted(by_payment) for t in by_payment[pid]]
    out.balances_pence, out.pending_pence = apply_transfers(out.transfers)
    return out


def context_of(episodes: Sequence[domain.Episode], answers: Sequence[domain.Answer], period: str,
               schemes: Iterable[Scheme], *, feedback: Sequence[FeedbackReceived] = (),
               ref: ReferenceData | None = None) -> judgement.JudgementContext:
    """The judgement's context for a period, from the recorded events (every episode, in trial or not,
    as the store query counts every stored episode; PROM pairs from ``feedback`` as the store's
    ``prom_outcomes``)."""
    schemes = list(schemes)
    needed = judgement.count_sets(period, schemes)
    proms = judgement.prom_from_records(feedback, period, ref.trust_of) if ref is not None and judgement.needs_proms(schemes) else {}
    return judgement.JudgementContext(
        period, {(p, w): judgement.counts_from_records(episodes, answers, p, w) for p, w in needed}, proms)


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
         "min_sample_applied": r.min_sample_applied, "cap_applied": r.cap_applied, "cap_pence": r.cap_pence,
         **judgement_fields(r)}
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
        flags = ", ".join(x for x, on in (
            ("exempted", p["exempted"]), ("min-sample", p["min_sample_applied"]),
            (f"gate {'beyond' if p['gate_opened'] else 'within'} limit {p['upper_limit_count']}", p["gate_applied"]),
            ("cap", p["cap_applied"]), (f"credit {format_pence(p['credit_pence'])}", p["credit_pence"] > 0)) if on) or "-"
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


def judgement_fields(r: domain.SettlementReport) -> dict[str, Any]:
    """What the judgement rules found for a report, as plain data."""
    return {"exempted": r.exempted, "gate_applied": r.gate_applied, "gate_opened": r.gate_opened,
            "measured_responses": r.measured_responses, "measured_events": r.measured_events,
            "benchmark_pct": r.benchmark_pct, "adjusted_expected_pct": r.adjusted_expected_pct,
            "upper_limit_count": r.upper_limit_count, "casemix_factor": r.casemix_factor, "credit_pence": r.credit_pence}


# ---------------------------------------------------------------------------------------------
# Comparing scheme versions over the same events
# ---------------------------------------------------------------------------------------------
def equity(result: Replay) -> list[dict[str, Any]]:
    """The equity table (``equity.equity_rows``) over a replay's settled episodes, nothing suppressed
    (the operator running a what-if sees the whole table)."""
    tally: dict[tuple[str, str], list[int]] = {}
    for r in result.reports:
        for line in r.lines:
            e = line.episode
            for dimension, value in zip(EQUITY_DIMENSIONS, (e.imd_decile, e.age_band, e.service_type)):
                t = tally.setdefault((dimension, UNKNOWN if value is None else str(value)), [0, 0, 0, 0, 0])
                t[0] += 1
                t[1] += line.decision.deciding_submission_id is not None
                t[2] += line.diverted_pence > 0
                t[3] += e.at_risk_pence
                t[4] += line.diverted_pence
    return equity_rows(StratumTally(d, v, *counts) for (d, v), counts in tally.items())


def compare(payments: Sequence[PaymentRequested], feedback: Sequence[FeedbackReceived], schemes: Sequence[tuple[str, Scheme]],
            ref: ReferenceData, *, period: str | None = None) -> dict[str, Any]:
    """Replay the same events under each (label, scheme) alone; per provider-period side by side, and
    the equity table per scheme."""
    labels = [label for label, _ in schemes]
    check(len(set(labels)) == len(labels) and len(labels) >= 2, "two or more schemes, each labelled once")
    runs = {label: replay(payments, feedback, SchemeBook([scheme]), ref, period=period) for label, scheme in schemes}
    providers: dict[tuple[str, str], dict[str, Any]] = {}
    for label, result in runs.items():
        for r in result.reports:
            row = providers.setdefault((r.provider_code, r.period), {"provider_code": r.provider_code,
                                                                     "region_code": r.region_code, "period": r.period,
                                                                     "schemes": {}})
            row["schemes"][label] = {"scheme": r.scheme_key, "episodes": r.episodes, "held_pence": r.held_pence,
                                     "released_pence": r.released_pence, "diverted_pence": r.diverted_pence,
                                     "responses": r.responses, "min_sample_applied": r.min_sample_applied,
                                     "cap_applied": r.cap_applied, "gate": gate_word(r), **judgement_fields(r)}
    return {
        "schemes": [{"label": label, "scheme": scheme.key, "title": scheme.title} for label, scheme in schemes],
        "providers": [providers[k] for k in sorted(providers)],
        "totals": {label: {"diverted_pence": sum(r.diverted_pence for r in res.reports),
                           "held_pence": sum(r.held_pence for r in res.reports),
                           "providers_diverting": sum(1 for r in res.reports if r.diverted_pence)}
                   for label, res in runs.items()},
        "equity": {label: equity(res) for label, res in runs.items()},
        "rejected": sorted({x for res in runs.values() for x in res.rejected}),
        "conflicts": sorted({x for res in runs.values() for x in res.conflicts}),
    }


def gate_word(r: domain.SettlementReport) -> str:
    """How the provider fared at the gate: "beyond" (worse than the benchmark beyond the limit:
    diversions apply), "within" (nothing diverted), or why it was not reached."""
    if r.exempted:
        return "exempted"
    if r.gate_applied:
        return "beyond" if r.gate_opened else "within"
    if r.min_sample_applied:
        return "min-sample"
    return "-"


def _fmt_rate(x: dict[str, float | None]) -> str:
    if x["rate"] is None:
        return "-"
    return f"{x['rate'] * 100:5.1f}% ({x['low'] * 100:.1f}-{x['high'] * 100:.1f})"  # type: ignore[operator]


def render_compare(c: dict[str, Any], out: TextIO) -> None:
    labels = [s["label"] for s in c["schemes"]]
    for i, s in enumerate(c["schemes"]):
        print(f"[{i + 1}] {s['label']}: {s['scheme']} ({s['title']})", file=out)
    print("", file=out)
    head = f"{'provider':8} {'region':6} {'period':7} " + " | ".join(
        f"[{i + 1}] {'diverted':>12} {'gate':>8}" for i in range(len(labels)))
    print(head, file=out)
    print("-" * len(head), file=out)
    for p in c["providers"]:
        cells = []
        for label in labels:
            x = p["schemes"].get(label)
            cells.append(f"{'':4}{'out of scope':>12} {'':>8}" if x is None else
                         f"{'':4}{format_pence(x['diverted_pence']):>12} {x['gate']:>8}")
        print(f"{p['provider_code']:8} {p['region_code']:6} {p['period']:7} " + " | ".join(cells), file=out)
    print(f"{'total':23} " + " | ".join(f"{'':4}{format_pence(c['totals'][label]['diverted_pence']):>12} {'':>8}"
                                        for label in labels), file=out)
    print("\nEquity (Wilson 95% intervals): response rate, episodes with money diverted, share of held money diverted",
          file=out)
    for i, label in enumerate(labels):
        print(f"\n[{i + 1}] {label}", file=out)
        print(f"{'dimension':10} {'stratum':13} {'eps':>6} {'response rate':>22} {'diverted episodes':>22} {'of held':>8}",
              file=out)
        for e in c["equity"][label]:
            share = "-" if e["diverted_share_of_held"] is None else f"{e['diverted_share_of_held'] * 100:.1f}%"
            print(f"{e['dimension']:10} {e['stratum']:13} {e['episodes']:>6} {_fmt_rate(e['response_rate']):>22}"
                  f" {_fmt_rate(e['diversion_rate']):>22} {share:>8}", file=out)
    for what in ("rejected", "conflicts"):
        for line in c[what]:
            print(f"{what}: {line}", file=out)


def write_compare_csv(c: dict[str, Any], path: Path) -> Path:
    """The provider table to ``path`` (one row per provider-period, columns per scheme) and the
    equity table (one row per scheme and stratum) to ``<stem>.equity.csv`` beside it; returns the latter."""
    labels = [s["label"] for s in c["schemes"]]
    per_scheme = ("diverted_pence", "held_pence", "responses", "gate", "measured_events", "measured_responses",
                  "upper_limit_count", "benchmark_pct", "adjusted_expected_pct", "credit_pence", "exempted")
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["provider_code", "region_code", "period", *(f"{label}:{k}" for label in labels for k in per_scheme)])
        for p in c["providers"]:
            w.writerow([p["provider_code"], p["region_code"], p["period"],
                        *(("" if p["schemes"].get(label) is None else p["schemes"][label][k])
                          for label in labels for k in per_scheme)])
    equity_path = path.with_name(f"{path.stem}.equity.csv")
    with equity_path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["scheme", "dimension", "stratum", "episodes", "responses", "response_rate", "response_rate_low",
                    "response_rate_high", "diverted_episodes", "diversion_rate", "diversion_rate_low", "diversion_rate_high",
                    "held_pence", "diverted_pence", "diverted_share_of_held"])
        for label in labels:
            for e in c["equity"][label]:
                rr, dr = e["response_rate"], e["diversion_rate"]
                w.writerow([label, e["dimension"], e["stratum"], e["episodes"], e["responses"], rr["rate"], rr["low"],
                            rr["high"], e["diverted_episodes"], dr["rate"], dr["low"], dr["high"], e["held_pence"],
                            e["diverted_pence"], e["diverted_share_of_held"]])
    return equity_path


def _load_compared(files: Sequence[Path], ref: ReferenceData) -> list[tuple[str, Scheme]]:
    loaded = []
    for path in files:
        scheme = parse_scheme(path.read_text(encoding="utf-8"), path.name)
        check_scope(scheme, ref, path.name)
        loaded.append((path, scheme))
    keys = [s.key for _, s in loaded]
    # Label by scheme key; with the file name where two files share one (and a number if that is shared too).
    labels = [s.key if keys.count(s.key) == 1 else f"{s.key} ({path.name})" for path, s in loaded]
    labels = [label if labels.count(label) == 1 else f"{label} #{i + 1}" for i, label in enumerate(labels)]
    return [(label, s) for label, (_, s) in zip(labels, loaded)]


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.payments.whatif", description=__doc__.split("\n\n")[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--schemes", type=Path, help="folder of scheme TOML files")
    which.add_argument("--compare", nargs="+", type=Path, metavar="SCHEME.toml",
                       help="two or more scheme files, each replayed alone over the same events, side by side")
    parser.add_argument("--events", required=True, type=Path, help="JSON lines of payments.requested.v1 / feedback.received.v1 envelopes")
    parser.add_argument("--period", help="settle only this period (YYYY-MM); default: every period in the file")
    parser.add_argument("--reference", type=Path, default=None, help="reference data folder (default: the shipped extract)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--csv", type=Path, default=None, help="with --compare: also write the tables as CSV (PATH and"
                                                               " <stem>.equity.csv)")
    args = parser.parse_args(argv)
    if args.period is not None and not (len(args.period) == 7 and args.period[4] == "-" and args.period.replace("-", "").isdigit()):
        print(f"--period: {args.period!r} is not YYYY-MM", file=err)
        return 2
    if args.compare is not None and len(args.compare) < 2:
        print("--compare: name two or more scheme files", file=err)
        return 2
    if args.csv is not None and args.compare is None:
        print("--csv: only with --compare", file=err)
        return 2
    try:
        ref = load_reference(args.reference)
        if args.compare is not None:
            compared = _load_compared(args.compare, ref)
        else:
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
    if args.compare is not None:
        c = compare(payments, feedback, compared, ref, period=args.period)
        c["skipped_events"] = skipped
        if args.csv is not None:
            try:
                write_compare_csv(c, args.csv)
            except OSError as exc:
                print(f"cannot write CSV: {exc}", file=err)
                return 2
        if args.json:
            json.dump(c, out, indent=2, default=str)
            out.write("\n")
        else:
            render_compare(c, out)
        return 0
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

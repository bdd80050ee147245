"""The what-if CLI on the shipped sample events, and its handling of bad input."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

from services.payments import whatif

ROOT = Path(__file__).resolve().parents[2]
SCHEMES = ROOT / "services" / "payments" / "schemes"
EVENTS = ROOT / "services" / "payments" / "examples" / "events.jsonl"


def run(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = whatif.main(list(args), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_sample_events_outcome_per_provider_and_region() -> None:
    code, out, err = run("--schemes", str(SCHEMES), "--events", str(EVENTS), "--json")
    assert code == 0, err
    s = json.loads(out)
    by = {p["provider_code"]: p for p in s["providers"]}
    assert set(by) == {"RJ1", "RTH", "RA7"}
    assert by["RJ1"]["cap_applied"] and by["RJ1"]["diverted_pence"] == by["RJ1"]["cap_pence"]
    assert by["RTH"]["min_sample_applied"] and by["RTH"]["diverted_pence"] == 0 and by["RTH"]["responses"] < 30
    assert not by["RA7"]["cap_applied"] and not by["RA7"]["min_sample_applied"] and by["RA7"]["diverted_pence"] > 0
    for p in by.values():
        assert p["released_pence"] + p["diverted_pence"] == p["held_pence"]
    regions = {r["region_code"]: r["diverted_pence"] for r in s["regions"]}
    assert regions == {"Y56": by["RJ1"]["diverted_pence"], "Y58": by["RA7"]["diverted_pence"], "Y59": 0}
    billed = sum(p["billed_pence"] for p in by.values())
    assert sum(v for k, v in s["balances_pence"].items() if k.startswith("commissioner:")) == -billed
    assert s["rejected"] == [] and s["conflicts"] == []


def test_table_output_and_period_filter() -> None:
    code, out, _ = run("--schemes", str(SCHEMES), "--events", str(EVENTS))
    assert code == 0 and "RJ1" in out and "cap" in out and "min-sample" in out and "to fund" in out
    code, out, _ = run("--schemes", str(SCHEMES), "--events", str(EVENTS), "--period", "2026-11", "--json")
    assert code == 0 and json.loads(out)["providers"] == []


def test_cli_as_a_module() -> None:
    done = subprocess.run([sys.executable, "-m", "services.payments.whatif", "--schemes", str(SCHEMES), "--events", str(EVENTS)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "england-pilot@1" in done.stdout


def test_bad_scheme_and_bad_events_are_named(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text('scheme_id = "x-1"\nversion = 1\ntitle = "X"\neffective_from = 2026-01-01\n'
                                       'cap_bps = 99999\n', encoding="utf-8")
    code, _, err = run("--schemes", str(tmp_path), "--events", str(EVENTS))
    assert code == 2 and "bad.toml" in err and "cap_bps" in err
    events = tmp_path / "events.jsonl"
    events.write_text('{"type": "payments.requested.v1", "data": {"payment_id": "p"}}\nnot json\n', encoding="utf-8")
    code, _, err = run("--schemes", str(SCHEMES), "--events", str(events))
    assert code == 2 and "line 1: episode_id" in err and "line 2:" in err
    code, _, err = run("--schemes", str(SCHEMES), "--events", str(EVENTS), "--period", "2026-13x")
    assert code == 2 and "--period" in err
    code, _, err = run("--schemes", str(SCHEMES), "--events", str(tmp_path / "missing.jsonl"))
    assert code == 2 and "cannot read events" in err


def test_unknown_codes_and_conflicts_are_reported(tmp_path: Path) -> None:
    lines = EVENTS.read_text(encoding="utf-8").splitlines()
    first_payment = next(json.loads(x) for x in lines if '"payments.requested.v1"' in x)
    changed = json.loads(json.dumps(first_payment))
    changed["data"]["amount_pence"] += 1
    unknown = json.loads(json.dumps(first_payment))
    unknown["data"].update(payment_id="pay-zzz", episode_id="ep-zzz", provider_code="ZZZ")
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join([*lines, json.dumps(changed), json.dumps(unknown), '{"type": "other.v1"}']) + "\n", encoding="utf-8")
    code, out, err = run("--schemes", str(SCHEMES), "--events", str(events), "--json")
    assert code == 0, err
    s = json.loads(out)
    assert any("ZZZ" in r for r in s["rejected"])
    assert any(first_payment["data"]["payment_id"] in c for c in s["conflicts"])


def test_the_replay_weighs_prom_outcomes_as_the_service_does() -> None:
    """The what-if reads PROM pair completions from the same feedback events (judgement.prom_from_records):
    a month of 40 episodes, 10 answered Very poor; 25 improved hip pairs completed in the month at one of
    the trust's sites. Weighted 70/30, the diversions are scaled by 17.5% / 25% = 0.7."""
    from datetime import date, datetime, timedelta, timezone

    from services.payments.schemes import SchemeBook, parse_scheme
    from shared.contracts import FeedbackReceived, PaymentRequested
    from shared.reference import load_reference

    base = ('scheme_id = "w-outcomes"\ntitle = "W"\nversion = 1\neffective_from = 2020-01-01\nat_risk_bps = 1000\n'
            'min_responses_per_period = 0\ncap_bps = 1000\n')
    signals = '[signals]\nfft_weight_bps = 7000\nprom_weight_bps = 3000\nmin_prom_pairs = 20\n'
    activity, at = date(2026, 3, 10), datetime(2026, 3, 12, 9, tzinfo=timezone.utc)
    pays = [PaymentRequested(payment_id=f"p{i}", episode_id=f"e{i}", commissioner_code="QWE", provider_code="RJ1",
                             service_type="inpatient", activity_date=activity, amount_pence=100_000) for i in range(40)]
    fb = [FeedbackReceived(submission_id=f"s{i}", episode_id=f"e{i}", provider_code="RJ1", patient_pseudonym="a" * 64,
                           instrument="fft", fft_answer=5 if i < 10 else 1, authored_at=at + timedelta(minutes=i)) for i in range(40)]
    proms = [FeedbackReceived(submission_id=f"o{i}", episode_id=f"op{i}", provider_code="RJ122", patient_pseudonym="b" * 64,
                              instrument="ohs", timing="post_op", procedure="primary_hip_replacement", prom_score=36,
                              health_gain=24, authored_at=at + timedelta(days=1, minutes=i)) for i in range(25)]
    ref = load_reference()
    plain = whatif.replay(pays, fb + proms, SchemeBook([parse_scheme(base)]), ref)
    weighed = whatif.replay(pays, fb + proms, SchemeBook([parse_scheme(base + signals)]), ref)
    without = whatif.replay(pays, fb, SchemeBook([parse_scheme(base + signals)]), ref)
    [p], [w], [n] = plain.reports, weighed.reports, without.reports
    assert (p.diverted_pence, w.diverted_pence, n.diverted_pence) == (100_000, 70_000, 100_000)
    assert any("diversions scaled by 0.7000" in step for step in w.judgement_steps)
    assert any("0 PROM pairs" in step and "FFT only" in step for step in n.judgement_steps)

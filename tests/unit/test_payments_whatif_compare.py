"""The what-if comparison: two or more scheme versions over the same recorded events, side by side
per provider (money diverted, the gate), with the equity table and CSV out."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest

from services.payments import whatif
from shared.contracts import FeedbackReceived, PaymentRequested, envelope
from shared.stats.proportions import wilson_interval

ROOT = Path(__file__).resolve().parents[2]
SCHEMES = ROOT / "services" / "payments" / "schemes"
PILOT = SCHEMES / "england-pilot-v1.toml"
GATED = SCHEMES / "examples" / "england-gated-v1.toml"
FAIR = SCHEMES / "examples" / "england-fair-v1.toml"
EVENTS = ROOT / "services" / "payments" / "examples" / "events.jsonl"


def run(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = whatif.main(list(args), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_sample_month_side_by_side() -> None:
    code, out, err = run("--compare", str(PILOT), str(GATED), "--events", str(EVENTS), "--json")
    assert code == 0, err
    c = json.loads(out)
    assert [s["label"] for s in c["schemes"]] == ["england-pilot@1", "england-gated@1"]
    by = {p["provider_code"]: p["schemes"] for p in c["providers"]}
    assert set(by) == {"RJ1", "RA7", "RTH"}
    # RJ1 loses money under the plain pilot (capped); its month is within the 99.8% limit: nothing under the gate.
    assert by["RJ1"]["england-pilot@1"]["diverted_pence"] > 0 and by["RJ1"]["england-pilot@1"]["gate"] == "-"
    gated = by["RJ1"]["england-gated@1"]
    assert gated["diverted_pence"] == 0 and gated["gate"] == "within" and gated["gate_opened"] is False
    assert gated["measured_events"] <= gated["upper_limit_count"] < gated["measured_responses"]
    assert by["RTH"]["england-pilot@1"]["gate"] == by["RTH"]["england-gated@1"]["gate"] == "min-sample"
    for label in ("england-pilot@1", "england-gated@1"):
        assert c["totals"][label]["diverted_pence"] == sum(p[label]["diverted_pence"] for p in by.values())
        for p in by.values():
            assert p[label]["released_pence"] + p[label]["diverted_pence"] == p[label]["held_pence"]
    assert c["totals"]["england-gated@1"]["diverted_pence"] == 0 < c["totals"]["england-pilot@1"]["diverted_pence"]
    # The equity table: every stratum of every dimension, with Wilson 95% intervals.
    eq = c["equity"]["england-pilot@1"]
    assert [e["dimension"] for e in eq] == ["imd_decile", "age_band", "setting", "setting", "setting"]
    assert [e["stratum"] for e in eq] == ["unknown", "unknown", "inpatient", "maternity", "outpatient"]
    assert sum(e["episodes"] for e in eq if e["dimension"] == "setting") == eq[0]["episodes"] == 90
    for e in eq:
        rr, dr = e["response_rate"], e["diversion_rate"]
        assert (rr["low"], rr["high"]) == tuple(round(x, 6) for x in wilson_interval(e["responses"], e["episodes"]))
        assert rr["low"] <= rr["rate"] <= rr["high"] and dr["low"] <= dr["rate"] <= dr["high"]
    assert all(e["diverted_episodes"] == 0 for e in c["equity"]["england-gated@1"])


def test_table_and_csv(tmp_path: Path) -> None:
    path = tmp_path / "compare.csv"
    code, out, err = run("--compare", str(PILOT), str(GATED), str(FAIR), "--events", str(EVENTS), "--csv", str(path))
    assert code == 0, err
    assert "[1] england-pilot@1" in out and "[3] england-fair@1" in out and "within" in out and "Equity" in out
    rj1 = next(line for line in out.splitlines() if line.startswith("RJ1"))
    assert rj1.count("|") == 2 and "£0.00" in rj1
    with path.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["provider_code"] for r in rows] == ["RA7", "RJ1", "RTH"]
    rj1_row = rows[1]
    assert int(rj1_row["england-pilot@1:diverted_pence"]) > 0 and rj1_row["england-gated@1:diverted_pence"] == "0"
    assert rj1_row["england-gated@1:gate"] == "within" and rj1_row["england-fair@1:gate"] == "within"
    with (tmp_path / "compare.equity.csv").open(encoding="utf-8") as f:
        equity = list(csv.DictReader(f))
    assert {r["scheme"] for r in equity} == {"england-pilot@1", "england-gated@1", "england-fair@1"}
    assert len(equity) == 15 and all(float(r["response_rate_low"]) <= float(r["response_rate"]) for r in equity)


def _events(tmp_path: Path) -> Path:
    """RJ1: a bad but ordinary month (9 negative of 40); four other trusts answer well (30 of 400);
    the requests carry age bands and deprivation deciles."""
    activity = date(2026, 9, 10)
    lines = []
    n = 0
    for provider, icb, bad, total in (("RJ1", "QWE", 9, 40), ("RRV", "QMJ", 8, 100), ("RA7", "QUY", 7, 100),
                                      ("RTD", "QHM", 8, 100), ("RTH", "QU9", 7, 100)):
        for i in range(total):
            req = PaymentRequested(payment_id=f"pay-{n}", episode_id=f"ep-{n}", commissioner_code=icb, provider_code=provider,
                                   service_type="maternity" if i % 2 else "inpatient", activity_date=activity,
                                   amount_pence=100_000, age_band=("18-44", "75+", None)[i % 3],
                                   imd_decile=None if i % 5 == 4 else 1 + i % 10)
            fb = FeedbackReceived(submission_id=f"s-{n}", episode_id=f"ep-{n}", provider_code=provider,
                                  patient_pseudonym="c" * 64, instrument="fft", fft_answer=5 if i < bad else 1,
                                  authored_at=datetime(2026, 9, 12, tzinfo=timezone.utc) + timedelta(minutes=n))
            lines += [envelope(req, "payments.requested.v1", producer="t", correlation_id="c").model_dump_json(),
                      envelope(fb, "feedback.received.v1", producer="t", correlation_id="c").model_dump_json()]
            n += 1
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_a_bad_but_ordinary_month_and_the_equity_strata(tmp_path: Path) -> None:
    events = _events(tmp_path)
    plain = tmp_path / "plain.toml"
    plain.write_text(PILOT.read_text(encoding="utf-8").replace("min_responses_per_period = 30", "min_responses_per_period = 0")
                     .replace("cap_bps = 300", "cap_bps = 1000"), encoding="utf-8")
    gated = tmp_path / "gated.toml"
    gated.write_text(GATED.read_text(encoding="utf-8").replace("min_responses_per_period = 30", "min_responses_per_period = 0")
                     .replace("cap_bps = 300", "cap_bps = 1000"), encoding="utf-8")
    code, out, err = run("--compare", str(plain), str(gated), "--events", str(events), "--json")
    assert code == 0, err
    c = json.loads(out)
    rj1 = next(p for p in c["providers"] if p["provider_code"] == "RJ1")["schemes"]
    assert rj1["england-pilot@1"]["diverted_pence"] == 9 * 10_000
    assert rj1["england-gated@1"]["diverted_pence"] == 0 and rj1["england-gated@1"]["gate"] == "within"
    assert rj1["england-gated@1"]["measured_events"] == 9 and rj1["england-gated@1"]["measured_responses"] == 40
    assert rj1["england-gated@1"]["benchmark_pct"] == round(39 / 440 * 100, 4)
    eq = {(e["dimension"], e["stratum"]): e for e in c["equity"]["england-pilot@1"]}
    assert [k[1] for k in eq if k[0] == "imd_decile"] == ["1", "2", "3", "4", "6", "7", "8", "9", "unknown"]
    assert [k[1] for k in eq if k[0] == "age_band"] == ["18-44", "75+", "unknown"]
    assert eq[("imd_decile", "unknown")]["episodes"] == 88 and eq[("setting", "inpatient")]["episodes"] == 220
    assert sum(e["diverted_pence"] for k, e in eq.items() if k[0] == "age_band") == c["totals"]["england-pilot@1"]["diverted_pence"]
    decile1 = eq[("imd_decile", "1")]
    assert decile1["diversion_rate"]["rate"] == round(decile1["diverted_episodes"] / decile1["episodes"], 6)
    # The same file twice: labelled apart by file name and position.
    code, out, err = run("--compare", str(gated), str(gated), "--events", str(events), "--json")
    assert code == 0, err
    assert [s["label"] for s in json.loads(out)["schemes"]] == ["england-gated@1 (gated.toml) #1", "england-gated@1 (gated.toml) #2"]


def test_bad_comparisons_are_refused(tmp_path: Path) -> None:
    code, _, err = run("--compare", str(PILOT), "--events", str(EVENTS))
    assert code == 2 and "two or more" in err
    code, _, err = run("--schemes", str(SCHEMES), "--events", str(EVENTS), "--csv", str(tmp_path / "x.csv"))
    assert code == 2 and "--csv" in err
    code, _, err = run("--compare", str(PILOT), str(tmp_path / "missing.toml"), "--events", str(EVENTS))
    assert code == 2 and "bad configuration" in err
    bad = tmp_path / "bad.toml"
    bad.write_text(GATED.read_text(encoding="utf-8").replace('limit = "99.8"', 'limit = "99"'), encoding="utf-8")
    code, _, err = run("--compare", str(PILOT), str(bad), "--events", str(EVENTS))
    assert code == 2 and "bad.toml" in err and "gate.limit" in err
    with pytest.raises(SystemExit):
        run("--compare", str(PILOT), str(GATED), "--schemes", str(SCHEMES), "--events", str(EVENTS))


def test_compare_as_a_module() -> None:
    done = subprocess.run([sys.executable, "-m", "services.payments.whatif", "--compare", str(PILOT), str(GATED),
                           "--events", str(EVENTS)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "england-gated@1" in done.stdout and "Equity (Wilson 95% intervals)" in done.stdout

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

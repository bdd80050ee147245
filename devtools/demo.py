"""`python -m devtools.demo [demo|up]`: the whole system on embedded infrastructure.

``demo`` starts Kafka, PostgreSQL, the three services and the portal, runs a scripted month of care for ten
providers in seven regions over HTTP, settles it, prints who holds what, stops and exits 0.
``up`` starts the same stack and stays up until Ctrl-C, printing the URLs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import signal
import sys
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx

from devtools.synthetic import synthetic_nhs_number
from services.payments.domain import latest_settleable_period
from shared.auth import bearer_headers
from devtools.stack import Stack
from shared.money import format_pence
from shared.periods import last_day_of
from shared.reference import load_reference

# (provider, commissioner, episodes, answer mix: weights for FFT codes 1..6 and "no answer")
SCENARIO = [
    ("RJ1", "QWE", 40, [50, 30, 8, 4, 2, 3, 3]),   # London, mostly happy
    ("RRV", "QMJ", 40, [5, 10, 5, 30, 45, 3, 2]),   # London, many unhappy: the cap bites
    ("RTH", "QU9", 35, [40, 30, 10, 8, 5, 4, 3]),
    ("RA7", "QUY", 35, [45, 30, 10, 5, 5, 3, 2]),
    ("RGT", "QUE", 35, [40, 35, 10, 5, 5, 3, 2]),
    ("R0A", "QOP", 40, [35, 30, 10, 10, 8, 4, 3]),
    ("RRK", "QHL", 35, [45, 30, 10, 5, 5, 3, 2]),
    ("RTD", "QHM", 12, [10, 10, 10, 30, 40, 0, 0]), # too few responses: minimum sample protects it
    ("RR8", "QWO", 35, [40, 30, 10, 10, 5, 3, 2]),
    ("RH8", "QJK", 35, [50, 25, 10, 5, 5, 3, 2]),
]
SERVICE_TYPES = ["inpatient", "outpatient", "maternity", "a_and_e", "community"]


def settleable_month_end(today: date) -> date:
    """The last day of the latest month that can be settled today: every episode's decision window
    (56 days under the shipped scheme) has closed, so settlement may run."""
    return last_day_of(latest_settleable_period(today, 56))


def build_scenario(seed: int = 2025, today: date | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rng = random.Random(seed)
    last_day = settleable_month_end(today or date.today())
    payments, feedback = [], []
    n = 0
    for provider, icb, count, weights in SCENARIO:
        for i in range(count):
            n += 1
            activity = last_day.replace(day=rng.randint(1, last_day.day))
            episode_id = f"ep-{provider}-{i:03d}"
            payments.append({
                "payment_id": f"pay-{provider}-{i:03d}", "episode_id": episode_id, "commissioner_code": icb,
                "provider_code": provider, "service_type": rng.choice(SERVICE_TYPES),
                "activity_date": activity.isoformat(), "amount_pence": rng.randrange(50_000, 800_000, 100),
            })
            choice = rng.choices(range(1, 8), weights)[0]
            if choice == 7:
                continue  # the patient never answered
            authored = datetime(activity.year, activity.month, activity.day, tzinfo=timezone.utc) + timedelta(days=rng.randint(3, 20), hours=rng.randint(8, 20))
            authored = min(authored, datetime.now(timezone.utc) - timedelta(minutes=1))
            feedback.append({
                "submission_id": f"sub-{provider}-{i:03d}", "episode_id": episode_id, "provider_code": provider,
                "nhs_number": synthetic_nhs_number(n), "authored_at": authored.isoformat(),
                "answers": {"instrument": "fft", "fft_answer": choice},
                "free_text": "Thank you to the team." if choice <= 2 else None,
            })
    return payments, feedback


async def wait_until(predicate, timeout_s: float = 60.0, interval_s: float = 0.2):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while True:
        result = await predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(interval_s)


async def run_scenario(stack: Stack, out=print, today: date | None = None) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """The demo's month. `today` (default: the real date) fixes the dates it derives (the month it
    settles, the grant's id and dates), so two runs compared with each other use the same ones."""
    today = today or date.today()
    payments, feedback = build_scenario(today=today)
    period = payments[0]["activity_date"][:7]
    ref = load_reference()
    # Each actor has its own development token (python -m shared.auth mint ...), with only its scopes.
    commissioner = bearer_headers(["payments:write"], subject="icb-finance-system")
    app_backend = bearer_headers(["feedback:write"], subject="nhs-app-backend")
    finance_admin = bearer_headers(["schemes:admin"], subject="trial-finance-admin")
    finance = bearer_headers(["ledger:read"], subject="national-finance-team")
    async with httpx.AsyncClient(timeout=30) as http:
        pay_url, fb_url, ledger_url = stack.url("payments"), stack.url("feedback"), stack.url("ledger")
        out(f"1. {len(payments)} payment requests from 10 commissioners, {sum(p['amount_pence'] for p in payments) / 100:,.2f} GBP in all")
        r = await http.post(f"{pay_url}/v1/payment-requests/batch", json=payments, headers=commissioner)
        r.raise_for_status()
        out(f"   accepted {r.json()['accepted']}, rejected {r.json()['rejected']}; 10% of each is held")
        at_risk = sum(item["result"]["at_risk_pence"] for item in r.json()["items"] if item.get("result"))

        async def held() -> int | None:
            tb = (await http.get(f"{ledger_url}/v1/trial-balance", headers=finance)).json()
            return tb["pending_credits_pence"] if tb.get("pending_credits_pence") == at_risk else None

        await wait_until(held)
        out(f"   the ledger shows {format_pence(at_risk)} at risk as pending transfers (reserved, not yet paid)")
        out(f"2. {len(feedback)} patients answer the Friends and Family Test ({len(payments) - len(feedback)} never answer)")
        for fb in feedback:
            (await http.post(f"{fb_url}/v1/submissions", json=fb, headers=app_backend)).raise_for_status()

        async def answers_arrived() -> bool:
            for fb in (feedback[0], feedback[-1]):
                ep = (await http.get(f"{pay_url}/v1/episodes/{fb['episode_id']}", headers=finance)).json()
                if not ep.get("answers"):
                    return False
            return True

        await wait_until(answers_arrived)
        await asyncio.sleep(1.0)  # let the tail of the feedback topic drain
        out(f"3. settle period {period}")
        # Settlement is a job: asked for, then followed until it ends (GET its url).
        r = await http.post(f"{pay_url}/v1/settlements/run", params={"wait_s": 30}, json={"period": period},
                            headers=finance_admin)
        r.raise_for_status()
        job = r.json()
        out(f"   job {job['job_id']}: {job['state']}")
        while job["state"] in ("queued", "running"):
            await asyncio.sleep(0.5)
            job = (await http.get(f"{pay_url}{job['url']}", headers=finance_admin)).json()
        if job["state"] != "succeeded":
            raise RuntimeError(f"settlement job {job['job_id']} ended {job['state']}: {job['errors']}")
        out(f"   job {job['state']}: {job['progress']['units_done']} units for {job['progress']['providers_total']} providers,"
            f" {job['counts']['episodes']} episodes")
        reports = job["reports"]

        async def settled() -> dict[str, Any] | None:
            tb = (await http.get(f"{ledger_url}/v1/trial-balance", headers=finance)).json()
            held = [a for a in tb["accounts"] if a["type"] == "held" and a["posted_pence"] != 0]
            pending = tb.get("pending_debits_pence", 0)  # two-phase holds still open
            return tb if not held and not pending and tb["accounts"] else None

        tb = await wait_until(settled)
        grant = await grant_step(http, stack, tb, today, out)
        if grant:
            tb = await wait_until(settled)  # the grant's payments, in the books
        auditor = bearer_headers(["ledger:audit"], subject="national-audit")
        verify = (await http.get(f"{ledger_url}/v1/verify", headers=auditor)).json()
        london = bearer_headers(["ledger:read"], subject="london-finance-team", regions=["Y56"])
        seen = (await http.get(f"{ledger_url}/v1/accounts", params={"type": "fund"}, headers=london)).json()
        london_funds = [a["account_id"] for a in seen.get("items", [])]
        anonymous = (await http.get(f"{ledger_url}/v1/trial-balance")).status_code
        refused = (await http.post(f"{pay_url}/v1/settlements/run", json={"period": period}, headers=finance)).status_code
        london_icb = bearer_headers(["payments:write"], subject="london-icb-system", regions=["Y56"])
        newcastle = {**payments[0], "payment_id": "demo-cross-region", "episode_id": "demo-cross-region",
                     "commissioner_code": "QHM", "provider_code": "RTD"}
        cross_region = (await http.post(f"{pay_url}/v1/payment-requests", json=newcastle, headers=london_icb)).status_code

    out("")
    out(f"Settlement, period {period} (per provider):")
    out(f"  {'provider':<8} {'region':<26} {'billed':>14} {'held':>12} {'released':>12} {'diverted':>12} {'answers':>7}  safeguard")
    for rep in sorted(reports, key=lambda r: r["provider_code"]):
        guard = "cap" if rep["cap_applied"] else ("min sample" if rep["min_sample_applied"] else "")
        out(f"  {rep['provider_code']:<8} {ref.regions[rep['region_code']]:<26} {format_pence(rep['billed_pence']):>14}"
            f" {format_pence(rep['held_pence']):>12} {format_pence(rep['released_pence']):>12}"
            f" {format_pence(rep['diverted_pence']):>12} {rep['responses']:>7}  {guard}")
    out("")
    out("Ledger balances:")
    names = {**{k: v.name for k, v in ref.providers.items()}, **{k: v.name for k, v in ref.commissioners.items()},
             **{k: f"{v} improvement fund" for k, v in ref.regions.items()}}
    for kind, title in (("commissioner", "Commissioners"), ("provider", "Providers"), ("fund", "Regional improvement funds")):
        rows = [a for a in tb["accounts"] if a["type"] == kind]
        out(f"  {title}")
        for a in rows:
            code = a["account_id"].split(":", 1)[1]
            out(f"    {a['account_id']:<18} {names.get(code, '')[:60]:<62} {format_pence(a['posted_pence']):>16}")
    out("")
    out(f"  Ledger total: {format_pence(tb['total_pence'])} (must be £0.00)   hash chain: "
        f"{'verified' if verify['ok'] else 'BROKEN: ' + verify['reason']} ({verify['entries_checked']} entries)")
    out(f"  Access control: no token -> HTTP {anonymous}; a read-only token running settlement -> HTTP {refused};"
        f" the London finance team's token sees funds {london_funds}; a London token paying a Newcastle trust ->"
        f" HTTP {cross_region}")
    return {"total_pence": tb["total_pence"], "verified": int(verify["ok"])}


async def grant_step(http: httpx.AsyncClient, stack: Stack, tb: dict[str, Any], today: date, out=print) -> str | None:  # type: ignore[no-untyped-def]
    """4. The London fund spends some of what it received: a fund manager proposes a grant to a
    London trust, approving it herself is refused, a second person approves (the ledger reserves
    it), a programme manager records the first milestone met (paid fund -> provider; the proposer
    may not) and cancels the rest (released to the fund).
    The grant id, or None when the fund received nothing this month."""
    funds_url = stack.url("funds")
    fund = next((a for a in tb["accounts"] if a["account_id"] == "fund:Y56"), None)
    if fund is None or fund["posted_pence"] < 200:
        out("4. the London fund received nothing this month: no grant")
        return None
    maker = bearer_headers(["funds:propose", "funds:read", "funds:manage"], subject="fund.manager@london", regions=["Y56"])
    checker = bearer_headers(["funds:approve", "funds:read"], subject="fund.approver@london", regions=["Y56"])
    manager = bearer_headers(["funds:manage", "funds:read"], subject="programme.manager@london", regions=["Y56"])
    start = today - timedelta(days=today.weekday() + 7 * 8)
    half = fund["posted_pence"] // 4
    grant_id = f"demo-discharge-{today:%Y%m%d}"
    body = {"grant_id": grant_id, "region_code": "Y56", "title": "Better discharge information",
            "aim": "Fewer patients say their discharge was poorly explained",
            "measure": {"kind": "fft_positive", "interval": "week", "baseline_from": (start - timedelta(weeks=12)).isoformat(),
                        "baseline_to": (start - timedelta(days=1)).isoformat()},
            "start_date": start.isoformat(), "end_date": (today + timedelta(days=200)).isoformat(), "amount_pence": 2 * half,
            "milestones": [{"title": f"milestone {n}", "provider_code": "RJ1", "amount_pence": half,
                            "due_date": (today + timedelta(days=30 * n)).isoformat()} for n in (1, 2)]}
    out(f"4. the London fund ({format_pence(fund['posted_pence'])} received) proposes a grant of {format_pence(2 * half)} to RJ1")
    (await http.post(f"{funds_url}/v1/grants", json=body, headers=maker)).raise_for_status()
    own = bearer_headers(["funds:approve"], subject="fund.manager@london", regions=["Y56"])
    self_approval = (await http.post(f"{funds_url}/v1/grants/{grant_id}/decision", headers=own,
                                     json={"outcome": "approved", "reason": "mine"})).status_code
    (await http.post(f"{funds_url}/v1/grants/{grant_id}/decision", headers=checker,
                     json={"outcome": "approved", "reason": "a clear plan"})).raise_for_status()

    async def status_is(*wanted: str) -> dict[str, Any] | None:
        g = (await http.get(f"{funds_url}/v1/grants/{grant_id}", headers=maker)).json()
        busy = any(m["status"] in ("reserving", "paying", "releasing") for m in g["milestones"])
        return g if g["status"] in wanted and not busy else None

    await wait_until(lambda: status_is("reserved"))
    (await http.post(f"{funds_url}/v1/grants/{grant_id}/milestones/1/met", headers=manager,
                     json={"note": "leaflet and ward rounds in place"})).raise_for_status()
    await wait_until(lambda: status_is("reserved"))
    (await http.post(f"{funds_url}/v1/grants/{grant_id}/cancel", headers=manager,
                     json={"reason": "the second phase is funded elsewhere"})).raise_for_status()
    g = await wait_until(lambda: status_is("cancelled"))
    out(f"   self-approval -> HTTP {self_approval}; approved by a second person; milestone 1 paid"
        f" {format_pence(g['money']['paid_pence'])} fund -> RJ1; the rest cancelled and released"
        f" ({format_pence(g['money']['released_pence'])})")
    return grant_id


async def demo(work_dir: Path | None) -> int:
    stack = Stack(work_dir=work_dir, fixed_ports=True)
    print("Starting embedded Kafka (Tansu), PostgreSQL, the four services and the portal ...", flush=True)
    t0 = time.monotonic()
    try:
        await stack.start()
        print(f"  up in {time.monotonic() - t0:.1f}s ({stack.infra.kind}); logs in {stack.work_dir}", flush=True)
        today = date.today()
        month = settleable_month_end(today)
        print(f"  portal: {stack.url('portal')} (while the demo runs; `make up` keeps it up); the demo's month,"
              f" {month:%B %Y}, is in {stack.url('portal')}/league-table?quarter={month.year}-Q{(month.month - 1) // 3 + 1}",
              flush=True)
        result = await run_scenario(stack, today=today)
    finally:
        stack.stop()
    return 0 if result["total_pence"] == 0 and result["verified"] else 1


def postgres_access(stack: Stack) -> str:
    """How to open the stack's PostgreSQL with psql (the embedded server listens on a Unix socket)."""
    assert stack.infra is not None
    from shared.db import dsn_with_database

    return f'psql "{dsn_with_database(stack.infra.postgres_dsn, "pp_ledger")}" (databases pp_feedback, pp_payments, pp_ledger, pp_funds)'


async def up(work_dir: Path | None) -> int:
    stack = Stack(work_dir=work_dir, fixed_ports=True)
    await stack.start()
    assert stack.infra is not None
    print(f"Patient Power is up ({stack.infra.kind}). Ctrl-C to stop.")
    print(f"  Kafka bootstrap: {stack.infra.kafka_bootstrap}")
    for name in ("feedback", "payments", "ledger", "funds"):
        print(f"  {name:<9} {stack.url(name)}   docs: {stack.url(name)}/docs   metrics: {stack.url(name)}/metrics")
    print(f"  portal    {stack.url('portal')}   (public pages; finance pages: sign in with a token from"
          f" `.venv/bin/python -m shared.auth mint --scope ledger:read`)")
    print(f"  PostgreSQL: {postgres_access(stack)}")
    print(f"  logs and data: {stack.work_dir} ({'removed' if work_dir is None else 'kept'} when the stack stops)")
    print("  a service that stops is restarted (with backoff) and said so here")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    supervisor = asyncio.create_task(stack.supervise(lambda m: print(m, flush=True)))
    try:
        await stop.wait()
    finally:
        print("stopping ...")
        supervisor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await supervisor
        stack.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.demo")
    parser.add_argument("command", choices=["demo", "up"], nargs="?", default="demo")
    parser.add_argument("--work-dir", type=Path, default=None, help="where logs and data go (default: a temp folder)")
    args = parser.parse_args(argv)
    return asyncio.run(demo(args.work_dir) if args.command == "demo" else up(args.work_dir))


if __name__ == "__main__":
    sys.exit(main())

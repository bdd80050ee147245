"""Month-end for finance teams over HTTP: find transfers, close a period (signed statement),
reconcile a commissioner's remittance file. Thin adapters: reads go to ``finance_queries``,
the two writes (a close, a reconciliation run) to ``handlers.LedgerHandlers``."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
from datetime import date, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, Field, StringConstraints

from services.ledger import finance_queries, periods, queries, remittance
from services.ledger.api import PAGE_MAX, _aware, _cursor, _pool, _reach
from services.ledger.finance_queries import TransferFilter
from shared.auth import principal_of
from shared.contracts import IcbCode, OdsCode, PeriodCode, RegionCode
from shared.http import PROBLEM_RESPONSES, Problem
from shared.periods import next_period
from shared.reach import not_found, provider_accounts, region_accounts

router = APIRouter(prefix="/v1", responses=PROBLEM_RESPONSES)

EntryKindName = Literal["posted", "pending", "post_pending", "void_pending", "expire"]
CauseKind = Literal["payment", "payment_hold", "settlement", "diversion", "release", "appeal_upheld", "reversal", "expiry",
                    "manual", "grant_reserve", "grant_payment", "grant_release"]
SearchId = Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:\-]*$")]
RunId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")]
REMITTANCE_MAX_BYTES = 16 * 1024 * 1024
SIGNATURE_HEADER = "Patient-Power-Signature"


# ---------------------------------------------------------------------------------------------
# Find transfers
# ---------------------------------------------------------------------------------------------
class SearchLeg(BaseModel):
    account_id: str
    amount_pence: int
    pending_pence: int


class FoundTransfer(BaseModel):
    entry_seq: int
    transfer_id: str
    kind: str
    status: str
    posted_at: datetime
    accounting_date: date = Field(description="The day it counts in the books (UK): its value_date, else the day posted")
    cause_kind: str
    payment_id: str | None = None
    episode_id: str | None = None
    provider_code: str | None = None
    period: str | None = Field(None, description="The cause's period: the activity month of the payment")
    grant_id: str | None = None
    pending_id: str | None = None
    reverses: str | None = None
    hash: str
    correlation_id: str | None = None
    legs: list[SearchLeg]


class TransferPage(BaseModel):
    items: list[FoundTransfer]
    next_cursor: str | None = Field(description="Pass as `cursor` to get the next page; null at the end")


SEARCH_CSV_COLUMNS = ["entry_seq", "posted_at", "accounting_date", "transfer_id", "kind", "status", "cause_kind", "payment_id",
                      "episode_id", "provider_code", "period", "grant_id", "pending_id", "reverses", "account_id",
                      "amount_pence", "pending_pence", "hash"]


def _csv(values: list[Any]) -> str:
    out = io.StringIO()
    csv.writer(out).writerow(["" if v is None else (v.isoformat() if isinstance(v, (datetime, date)) else v) for v in values])
    return out.getvalue()


def _search_filter(request: Request, *, payment_id: str | None, episode_id: str | None, provider: str | None,
                   region: str | None, kind: str | None, cause: str | None, period: str | None, from_: datetime | None,
                   to: datetime | None, accounting_from: date | None, accounting_to: date | None) -> TransferFilter:
    _aware("from", from_)
    _aware("to", to)
    if from_ and to and to < from_:
        raise Problem(422, "Invalid request", "to must not be before from", errors=[{"field": "to", "message": "before from"}])
    if accounting_from and accounting_to and accounting_to < accounting_from:
        raise Problem(422, "Invalid request", "accounting_to must not be before accounting_from",
                      errors=[{"field": "accounting_to", "message": "before accounting_from"}])
    ref = request.app.state.reference
    reach = _reach(request)
    f: dict[str, Any] = {}
    if provider is not None:
        if ref.trust_of(provider) is None:
            raise Problem(422, "Invalid request", f"provider {provider} is not a trust or site the reference data knows",
                          errors=[{"field": "provider", "message": "unknown organisation"}])
        reach.require(reach.sees_provider(provider), "provider", f"provider {provider}")
        f["provider_accounts"], f["provider_codes"] = provider_accounts(ref, provider)
    if region is not None:
        if region not in ref.regions:
            raise Problem(422, "Invalid request", f"region {region} is not one the reference data knows",
                          errors=[{"field": "region", "message": "unknown region"}])
        reach.require(reach.sees_region(region) or reach.national, "region", f"region {region}")
        f["region_accounts"], f["region_providers"] = region_accounts(ref, region)
    return TransferFilter(payment_id=payment_id, episode_id=episode_id, kind=kind, cause=cause, period=period,
                          visible_accounts=reach.accounts(), posted_from=from_, posted_to=to,
                          accounting_from=accounting_from, accounting_to=accounting_to, **f)


def _after(cursor: str | None) -> tuple[datetime, int] | None:
    after = _cursor(cursor, (str, int))
    if after is None:
        return None
    try:
        return datetime.fromisoformat(after[0]), int(after[1])
    except (ValueError, TypeError):
        raise Problem(400, "Bad request", "cursor is not one this API returned", errors=[{"field": "cursor", "message": "bad cursor"}])


async def _search(request: Request, f: TransferFilter, after: tuple[datetime, int] | None, limit: int) -> list[dict[str, Any]]:
    try:
        async with _pool(request).acquire() as conn:
            return await finance_queries.search_transfers(conn, f, after=after, limit=limit)
    except Exception as exc:  # noqa: BLE001 - only the search's own timeout is the caller's to fix
        if type(exc).__name__ == "QueryCanceledError":
            raise Problem(422, "Search too broad", "the search would read too much of the journal; add from/to, an accounting"
                          " date range, a payment_id or an episode_id", errors=[{"field": "from", "message": "narrow the search"}])
        raise


@router.get("/transfers", response_model=TransferPage, tags=["transfers"],
            summary="Find transfers by payment, episode, provider, region, kind, cause, period and time (JSON or CSV)",
            responses={200: {"content": {"text/csv": {}}}})
async def find_transfers(
    request: Request,
    payment_id: Annotated[SearchId | None, Query(description="The cause's payment id")] = None,
    episode_id: Annotated[SearchId | None, Query(description="The cause's episode id")] = None,
    provider: Annotated[OdsCode | None, Query(description="A trust or site: its transfers (the cause names it, or a leg moves"
                                                           " its provider or held account)")] = None,
    region: Annotated[RegionCode | None, Query(description="A region: transfers moving its fund, trusts or ICBs")] = None,
    kind: Annotated[EntryKindName | None, Query(description="Entry kind")] = None,
    cause: Annotated[CauseKind | None, Query(description="The cause's kind")] = None,
    period: Annotated[PeriodCode | None, Query(description="The cause's period (activity month), YYYY-MM")] = None,
    from_: Annotated[datetime | None, Query(alias="from", description="Posted at or after (with a time zone)")] = None,
    to: Annotated[datetime | None, Query(description="Posted before (with a time zone)")] = None,
    accounting_from: Annotated[date | None, Query(description="Accounting date on or after")] = None,
    accounting_to: Annotated[date | None, Query(description="Accounting date before")] = None,
    cursor: Annotated[str | None, Query(max_length=400)] = None,
    limit: Annotated[int, Query(ge=1, le=PAGE_MAX)] = 100,
    format: Annotated[Literal["json", "csv"], Query()] = "json",
) -> Any:
    f = _search_filter(request, payment_id=payment_id, episode_id=episode_id, provider=provider, region=region, kind=kind,
                       cause=cause, period=period, from_=from_, to=to, accounting_from=accounting_from,
                       accounting_to=accounting_to)
    after = _after(cursor)
    if format == "csv":
        return await _search_csv(request, f, after)
    rows = await _search(request, f, after, limit + 1)
    page = rows[:limit]
    nxt = queries.encode_cursor(page[-1]["posted_at"].isoformat(), page[-1]["entry_seq"]) if len(rows) > limit else None
    return TransferPage(items=[FoundTransfer(**r) for r in page], next_cursor=nxt)


async def _search_csv(request: Request, f: TransferFilter, after: tuple[datetime, int] | None) -> Response:
    max_rows = request.app.state.runtime.settings.search_csv_max_rows
    first = await _search(request, f, after, PAGE_MAX)  # refusals come before streaming starts

    async def lines() -> Any:
        yield _csv(SEARCH_CSV_COLUMNS)
        page, sent = first, 0
        while page:
            for r in page:
                for leg in r["legs"]:  # one line per leg: a spreadsheet sums amount_pence per account
                    yield _csv([r["entry_seq"], r["posted_at"], r["accounting_date"], r["transfer_id"], r["kind"], r["status"],
                                r["cause_kind"], r["payment_id"], r["episode_id"], r["provider_code"], r["period"],
                                r["grant_id"], r["pending_id"], r["reverses"], leg["account_id"], leg["amount_pence"],
                                leg["pending_pence"], r["hash"]])
            sent += len(page)
            if len(page) < PAGE_MAX:
                return
            if sent >= max_rows:
                yield f"# stopped after {sent} transfers (LEDGER_SEARCH_CSV_MAX_ROWS); narrow the search for the rest\n"
                return
            page = await _search(request, f, (page[-1]["posted_at"], page[-1]["entry_seq"]), PAGE_MAX)

    return StreamingResponse(lines(), media_type="text/csv; charset=utf-8",
                             headers={"content-disposition": 'attachment; filename="transfers.csv"'})


# ---------------------------------------------------------------------------------------------
# Periods
# ---------------------------------------------------------------------------------------------
class PeriodView(BaseModel):
    period: str
    status: Literal["closed", "closing", "open"] = Field(description="closing: marked closed, statement not yet written"
                                                                     " (close it again to finish)")
    closed_at: datetime | None = None
    closed_by: str | None = None
    head_seq: int | None = Field(None, description="The chain head when the period closed")
    head_hash: str | None = None
    statement_sha256: str | None = None
    key_id: str | None = None
    statement_url: str | None = None
    signature_url: str | None = None


class PeriodsView(BaseModel):
    closed_through: str | None = Field(description="The last closed period; postings dated in it or before are refused")
    next_to_close: str | None = Field(description="The period that closes next (null before the first close: any ended month)")
    items: list[PeriodView]
    next_cursor: str | None = None


def _period_view(r: dict[str, Any]) -> PeriodView:
    p = r["period"]
    return PeriodView(period=p, status="closed", closed_at=r["closed_at"], closed_by=r["closed_by"], head_seq=r["head_seq"],
                      head_hash=r["head_hash"], statement_sha256=r["statement_sha256"], key_id=r["key_id"],
                      statement_url=f"/v1/periods/{p}/statement", signature_url=f"/v1/periods/{p}/statement.sig")


def _require_national(request: Request, what: str) -> None:
    reach = _reach(request)
    if not reach.national:
        raise reach.refuse("(token)", what)


@router.get("/periods", response_model=PeriodsView, tags=["periods"], summary="Closed accounting periods, newest first")
async def list_periods(request: Request, cursor: Annotated[str | None, Query(max_length=400)] = None,
                       limit: Annotated[int, Query(ge=1, le=PAGE_MAX)] = 100) -> PeriodsView:
    after = _cursor(cursor)
    async with _pool(request).acquire() as conn:
        state = await finance_queries.close_state(conn)
        rows = await finance_queries.list_closes(conn, after=after[0] if after else None, limit=limit + 1)
    items = [_period_view(r) for r in rows[:limit]]
    ct = state["closed_through"]
    if ct is not None and (not items or items[0].period != ct) and after is None:
        items.insert(0, PeriodView(period=ct, status="closing", closed_at=state["closed_at"], head_seq=state["closed_at_seq"]))
    return PeriodsView(closed_through=ct, next_to_close=next_period(ct) if ct else None, items=items,
                       next_cursor=queries.encode_cursor(rows[limit - 1]["period"]) if len(rows) > limit else None)


@router.get("/periods/{period}", response_model=PeriodView, tags=["periods"], summary="One accounting period: open, closing or closed")
async def get_period(request: Request, period: Annotated[PeriodCode, Path()]) -> PeriodView:
    async with _pool(request).acquire() as conn:
        found = await finance_queries.period_close(conn, period)
        state = await finance_queries.close_state(conn)
    if found is not None:
        return _period_view(found)
    ct = state["closed_through"]
    if ct is not None and period <= ct:
        return PeriodView(period=period, status="closing", closed_at=state["closed_at"], head_seq=state["closed_at_seq"])
    return PeriodView(period=period, status="open")


@router.post("/periods/{period}/close", response_model=PeriodView, status_code=201, tags=["periods"],
             summary="Close an ended period (in order): postings dated in it are refused from now on; writes its signed"
                     " statement. Closing a closed period again answers 200 with it.",
             responses={200: {"model": PeriodView, "description": "Already closed"}})
async def close_period(request: Request, period: Annotated[PeriodCode, Path()]) -> Any:
    _require_national(request, "closing a period covers every region; it")
    runtime = request.app.state.runtime
    try:
        stored, closed_now = await runtime.handlers.close_period(period, closed_by=principal_of(request).subject,
                                                                  signer=runtime.signer)
    except periods.CloseRefused as exc:
        raise Problem(409, "Cannot close now", str(exc), errors=[{"field": "period", "message": str(exc)}], period=period)
    async with _pool(request).acquire() as conn:
        found = await finance_queries.period_close(conn, stored.period)
    assert found is not None
    view = _period_view(found)
    return view if closed_now else Response(view.model_dump_json(), status_code=200, media_type="application/json")


async def _statement_of(request: Request, period: str) -> dict[str, Any]:
    _require_national(request, "a period statement covers every region; it")
    async with _pool(request).acquire() as conn:
        found = await finance_queries.period_close(conn, period)
    if found is None:
        raise Problem(404, "Not found", f"period {period} has no statement (it is open, or still closing)")
    return found


@router.get("/periods/{period}/statement", tags=["periods"], response_class=Response,
            summary="The period's signed statement: exactly the bytes signed (canonical JSON); the signature in a header",
            responses={200: {"content": {"application/json": {}}}})
async def get_period_statement(request: Request, period: Annotated[PeriodCode, Path()]) -> Response:
    found = await _statement_of(request, period)
    sig = base64.b64encode(found["signature"]).decode()
    return Response(found["statement"], media_type="application/json", headers={
        SIGNATURE_HEADER: f'alg="Ed25519", key_id="{found["key_id"]}", sig="{sig}"',
        "content-disposition": f'attachment; filename="statement-{period}.json"'})


@router.get("/periods/{period}/statement.sig", tags=["periods"], response_class=Response,
            summary="The statement's Ed25519 signature: 64 raw bytes (for openssl pkeyutl -verify)",
            responses={200: {"content": {"application/octet-stream": {}}}})
async def get_period_signature(request: Request, period: Annotated[PeriodCode, Path()]) -> Response:
    found = await _statement_of(request, period)
    return Response(found["signature"], media_type="application/octet-stream",
                    headers={"content-disposition": f'attachment; filename="statement-{period}.sig"'})


@router.get("/statement-key", tags=["periods"], response_class=Response,
            summary="The public key that verifies period statements (PEM); publish it to auditors out of band too",
            responses={200: {"content": {"application/x-pem-file": {}}}})
async def get_statement_key(request: Request) -> Response:
    signer = request.app.state.runtime.signer
    return Response(signer.public_pem, media_type="application/x-pem-file", headers={"key-id": signer.key_id})


# ---------------------------------------------------------------------------------------------
# Remittances
# ---------------------------------------------------------------------------------------------
class RemittanceRunView(BaseModel):
    run_id: str
    commissioner: str
    period: str
    imported_at: datetime
    imported_by: str
    file_name: str | None = None
    file_sha256: str
    file_rows: int
    counts: dict[str, int] = Field(description="Payment ids by what was found: matched, missing, different, unknown")
    file_pence: int = Field(description="The file's total")
    ledger_pence: int = Field(description="What the ledger shows the commissioner paid for the period's payments")
    difference_pence: int = Field(description="file_pence - ledger_pence")
    head_seq: int = Field(description="The journal was compared as of this entry")
    lines_url: str
    exceptions_url: str


class RemittanceLine(BaseModel):
    payment_id: str
    status: Literal["matched", "missing", "different", "unknown"]
    file_date: date | None = None
    file_pence: int | None = None
    ledger_pence: int | None = None
    difference_pence: int = Field(description="file - ledger (missing: minus the ledger's; unknown: the file's)")
    provider_code: str | None = None


class RemittanceLinePage(BaseModel):
    items: list[RemittanceLine]
    next_cursor: str | None = None


class RemittanceRunPage(BaseModel):
    items: list[RemittanceRunView]
    next_cursor: str | None = None


def _run_view(r: dict[str, Any]) -> RemittanceRunView:
    rid = r["run_id"]
    return RemittanceRunView(
        run_id=rid, commissioner=r["commissioner"], period=r["period"], imported_at=r["imported_at"],
        imported_by=r["imported_by"], file_name=r["file_name"], file_sha256=r["file_sha256"], file_rows=r["file_rows"],
        counts={"matched": r["matched"], "missing": r["missing"], "different": r["different"], "unknown": r["unknown"]},
        file_pence=r["file_pence"], ledger_pence=r["ledger_pence"], difference_pence=r["file_pence"] - r["ledger_pence"],
        head_seq=r["head_seq"], lines_url=f"/v1/remittances/{rid}/lines", exceptions_url=f"/v1/remittances/{rid}/exceptions.csv")


def _check_commissioner(request: Request, commissioner: str) -> None:
    if commissioner not in request.app.state.reference.commissioners:
        raise Problem(422, "Invalid request", f"commissioner {commissioner} is not an ICB the reference data knows",
                      errors=[{"field": "commissioner", "message": "unknown ICB"}])
    reach = _reach(request)
    reach.require(reach.sees_commissioner(commissioner), "commissioner", f"commissioner {commissioner}")


@router.post("/remittances", response_model=RemittanceRunView, status_code=201, tags=["remittances"],
             max_body_size=REMITTANCE_MAX_BYTES,
             summary="Reconcile a commissioner's remittance file (CSV: payment_id, date, amount_pence or amount) against"
                     " the ledger for one period; the run is kept",
             openapi_extra={"requestBody": {"required": True, "content": {"text/csv": {"schema": {"type": "string"}}}}})
async def import_remittance(
    request: Request,
    commissioner: Annotated[IcbCode, Query(description="The ICB whose payments the file lists")],
    period: Annotated[PeriodCode, Query(description="The payments' period (activity month), YYYY-MM")],
    file_name: Annotated[str | None, Query(max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9 ._\-]*$")] = None,
) -> RemittanceRunView:
    _check_commissioner(request, commissioner)
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in ("text/csv", "text/plain", "application/csv"):
        raise Problem(415, "Unsupported media type", "send the remittance file as text/csv",
                      errors=[{"field": "content-type", "message": "expected text/csv"}])
    raw = await request.body()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise Problem(422, "Invalid request", "the file is not UTF-8 text", errors=[{"field": "body", "message": "not UTF-8"}])
    runtime = request.app.state.runtime
    try:
        lines = remittance.parse(text, max_rows=runtime.settings.remittance_max_rows)
    except remittance.FileRefused as exc:
        raise Problem(422, "Invalid remittance file", str(exc), errors=exc.errors)
    run, result = await runtime.handlers.reconcile(
        commissioner=commissioner, period=period, lines=lines, imported_by=principal_of(request).subject,
        file_name=file_name, file_sha256=hashlib.sha256(raw).hexdigest())
    async with _pool(request).acquire() as conn:
        found = await finance_queries.remittance_run(conn, run.run_id)
    assert found is not None
    return _run_view(found)


async def _run(request: Request, run_id: str) -> dict[str, Any]:
    async with _pool(request).acquire() as conn:
        found = await finance_queries.remittance_run(conn, run_id)
    reach = _reach(request)
    if found is None or not reach.sees_commissioner(found["commissioner"]):
        raise not_found(f"remittance run {run_id}")
    return found


@router.get("/remittances", response_model=RemittanceRunPage, tags=["remittances"],
            summary="Reconciliation runs the token's binding sees, newest first")
async def list_remittances(
    request: Request,
    commissioner: Annotated[IcbCode | None, Query()] = None,
    period: Annotated[PeriodCode | None, Query()] = None,
    cursor: Annotated[str | None, Query(max_length=400)] = None,
    limit: Annotated[int, Query(ge=1, le=PAGE_MAX)] = 100,
) -> RemittanceRunPage:
    reach = _reach(request)
    if commissioner is not None:
        _check_commissioner(request, commissioner)
        icbs: list[str] | None = [commissioner]
    else:
        icbs = None if reach.national else [c for c in request.app.state.reference.commissioners if reach.sees_commissioner(c)]
    after = _cursor(cursor, (str, str))
    after_key = None
    if after:
        try:
            after_key = (datetime.fromisoformat(after[0]), after[1])
        except ValueError:
            raise Problem(400, "Bad request", "cursor is not one this API returned", errors=[{"field": "cursor", "message": "bad cursor"}])
    async with _pool(request).acquire() as conn:
        rows = await finance_queries.remittance_runs(conn, commissioners=icbs, period=period, after=after_key, limit=limit + 1)
    page = rows[:limit]
    nxt = queries.encode_cursor(page[-1]["imported_at"].isoformat(), page[-1]["run_id"]) if len(rows) > limit else None
    return RemittanceRunPage(items=[_run_view(r) for r in page], next_cursor=nxt)


@router.get("/remittances/{run_id}", response_model=RemittanceRunView, tags=["remittances"], summary="One reconciliation run")
async def get_remittance(request: Request, run_id: Annotated[RunId, Path()]) -> RemittanceRunView:
    return _run_view(await _run(request, run_id))


@router.get("/remittances/{run_id}/lines", response_model=RemittanceLinePage, tags=["remittances"],
            summary="A run's lines by payment id, optionally only some statuses")
async def get_remittance_lines(
    request: Request,
    run_id: Annotated[RunId, Path()],
    status: Annotated[list[Literal["matched", "missing", "different", "unknown"]] | None, Query()] = None,
    cursor: Annotated[str | None, Query(max_length=400)] = None,
    limit: Annotated[int, Query(ge=1, le=PAGE_MAX)] = 100,
) -> RemittanceLinePage:
    await _run(request, run_id)
    after = _cursor(cursor)
    async with _pool(request).acquire() as conn:
        rows = await finance_queries.remittance_lines(conn, run_id, statuses=status, after=after[0] if after else None,
                                                      limit=limit + 1)
    page = rows[:limit]
    return RemittanceLinePage(items=[RemittanceLine(**r) for r in page],
                              next_cursor=queries.encode_cursor(page[-1]["payment_id"]) if len(rows) > limit else None)


EXCEPTION_COLUMNS = ["payment_id", "status", "file_date", "file_pence", "ledger_pence", "difference_pence", "provider_code"]


@router.get("/remittances/{run_id}/exceptions.csv", tags=["remittances"], response_class=Response,
            summary="The run's exceptions (missing, different, unknown) as CSV, for the finance team to work through",
            responses={200: {"content": {"text/csv": {}}}})
async def get_remittance_exceptions(request: Request, run_id: Annotated[RunId, Path()]) -> Response:
    await _run(request, run_id)

    async def lines() -> Any:
        yield _csv(EXCEPTION_COLUMNS)
        after = None
        while True:
            async with _pool(request).acquire() as conn:
                rows = await finance_queries.remittance_lines(conn, run_id, statuses=["missing", "different", "unknown"],
                                                              after=after, limit=PAGE_MAX)
            for r in rows:
                yield _csv([r[c] for c in EXCEPTION_COLUMNS])
            if len(rows) < PAGE_MAX:
                return
            after = rows[-1]["payment_id"]

    return StreamingResponse(lines(), media_type="text/csv; charset=utf-8",
                             headers={"content-disposition": f'attachment; filename="remittance-{run_id}-exceptions.csv"'})

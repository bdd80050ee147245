"""The ledger's HTTP API for finance teams: accounts and balances (now and as of any time),
statements with running balances, transfers with their legs and cause, trial balance, CSV
exports, verification and direct posting.

Lists page with an opaque ``cursor`` (``next_cursor`` in each page, null at the end) and a
bounded ``limit``. Times must carry a time zone. Errors are problem details.
"""

from __future__ import annotations

import csv
import io
import json
import math
import uuid
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Path, Query, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, Field, StringConstraints, field_validator

from services.ledger import admission, queries
from services.ledger.group_commit import Overloaded
from services.ledger.ports import Submitted
from shared import namespaces
from shared.auth import principal_of
from shared.contracts import AccountId, TransferRequested
from shared.http import PROBLEM_RESPONSES, Problem
from shared.logging import correlation_id_var
from shared.reach import Reach, not_found, reach_of

router = APIRouter(prefix="/v1", responses=PROBLEM_RESPONSES)

PAGE_MAX = 1000
# A journal entry's transfer id: a client's (TransferId) or the ledger's own expiry of one.
EntryId = Annotated[str, StringConstraints(min_length=1, max_length=140,
                                           pattern=r"^[A-Za-z0-9][A-Za-z0-9._:\-]*(~expired)?$")]
AccountType = Literal["commissioner", "provider", "held", "fund"]


class Balance(BaseModel):
    account_id: str
    type: str
    currency: Literal["GBP"] = "GBP"
    floor_pence: int | None
    posted_pence: int = Field(description="Posted balance: + credit, - debit")
    pending_debits_pence: int = Field(0, description="Reserved by pending transfers, to leave the account")
    pending_credits_pence: int = Field(0, description="Reserved by pending transfers, to arrive")
    available_pence: int = Field(0, description="posted - pending debits; never below the floor")
    metadata: dict[str, Any] = Field(default_factory=dict)
    as_of: datetime | None = None


class AccountPage(BaseModel):
    items: list[Balance]
    next_cursor: str | None = Field(description="Pass as `cursor` to get the next page; null at the end")


class TrialBalance(BaseModel):
    as_of: datetime | None
    accounts: list[Balance] = Field(description="One page of accounts (see next_cursor); totals cover all")
    account_count: int
    total_pence: int = Field(description="Sum of every posted balance: always zero in a balanced ledger")
    pending_debits_pence: int
    pending_credits_pence: int = Field(description="Equals pending_debits_pence in a balanced ledger")
    by_type_pence: dict[str, int]
    next_cursor: str | None = None


class StatementLine(BaseModel):
    entry_seq: int
    transfer_id: str
    kind: str
    posted_at: datetime
    amount_pence: int
    pending_pence: int
    balance_after_pence: int = Field(description="Running posted balance after this line")
    pending_debits_after_pence: int
    pending_credits_after_pence: int
    cause: dict[str, Any]


class Statement(BaseModel):
    account_id: str
    type: str
    from_: datetime | None = Field(None, alias="from")
    to: datetime | None
    opening_balance_pence: int = Field(description="Posted balance just before `from`")
    lines: list[StatementLine]
    next_cursor: str | None

    model_config = {"populate_by_name": True}


class LegView(BaseModel):
    account_id: str
    amount_pence: int
    pending_pence: int
    balance_after_pence: int


class TransferView(BaseModel):
    transfer_id: str
    status: Literal["posted", "pending", "voided", "rejected"]
    kind: str
    entry_seq: int | None = None
    posted_at: datetime
    expires_at: datetime | None = None
    cause: dict[str, Any]
    request: dict[str, Any]
    pending_id: str | None = None
    reverses: str | None = None
    reversed_by: str | None = None
    pending_status: str | None = Field(None, description="For a pending transfer: pending, posted, voided or expired")
    correlation_id: str | None = Field(None, description="Correlation id of the request that caused this entry (an expiry"
                                       " carries its pending transfer's); tracing metadata, not hashed")
    causation_id: str | None = Field(None, description="Id of the event (or HTTP request) that delivered the transfer request")
    resolved_by: str | None = None
    reason: str | None = None
    legs: list[LegView]
    prev_hash: str | None = None
    hash: str | None = None


class PostResult(BaseModel):
    transfer_id: str
    status: Literal["posted", "pending", "voided", "duplicate"]
    original_status: str | None = None
    entry_seq: int
    entry_hash: str


class VerifyResult(BaseModel):
    ok: bool
    entries_checked: int
    verified_through_seq: int = Field(0, description="The chain checks out up to this entry (on failure: the last good one)")
    reason: str
    head_seq: int | None = None
    head_hash: str | None = None
    first_bad_seq: int | None = None
    first_bad_transfer_id: str | None = None


METADATA_MAX_BYTES = 16 * 1024  # an account's metadata is a label or two, not a document store
METADATA_MAX_DEPTH = 4


class AccountMetadata(BaseModel):
    model_config = {"extra": "forbid"}
    metadata: dict[str, Any] = Field(default_factory=dict, max_length=50,
                                     description=f"Free-form labels; at most 50 keys, {METADATA_MAX_DEPTH} levels deep and"
                                                 f" {METADATA_MAX_BYTES} bytes as JSON")

    @field_validator("metadata")
    @classmethod
    def _storable(cls, value: dict[str, Any]) -> dict[str, Any]:
        # Stored as jsonb, which holds neither U+0000 nor NaN/Infinity (Python's JSON parser accepts
        # both): refuse them with a 422 instead of failing in the database with a 500. Bounded in
        # size and depth so an account cannot carry megabytes.
        def check(v: Any, depth: int) -> None:
            if depth > METADATA_MAX_DEPTH:
                raise ValueError(f"must be at most {METADATA_MAX_DEPTH} levels deep")
            if isinstance(v, str) and "\x00" in v:
                raise ValueError("must not contain the NUL character (U+0000)")
            if isinstance(v, float) and not math.isfinite(v):
                raise ValueError("numbers must be finite")
            if isinstance(v, dict):
                for k, item in v.items():
                    check(k, depth)
                    check(item, depth + 1)
            elif isinstance(v, list):
                for item in v:
                    check(item, depth + 1)

        check(value, 1)
        if len(json.dumps(value, separators=(",", ":"))) > METADATA_MAX_BYTES:
            raise ValueError(f"must be at most {METADATA_MAX_BYTES} bytes as JSON")
        return value


def _pool(request: Request):  # type: ignore[no-untyped-def]
    return request.app.state.runtime.pool


def _reach(request: Request) -> Reach:
    return reach_of(principal_of(request), request.app.state.reference)


def _check_visible(request: Request, account_id: str) -> None:
    if admission.unknown_account(account_id, request.app.state.reference):
        raise not_found(f"account {account_id}")  # no organisation of that code: no such account
    reach = _reach(request)
    reach.require(reach.sees_account(account_id), "account_id", account_id)


def _check_unlimited(request: Request) -> None:
    reach = _reach(request)
    if not reach.national:
        raise reach.refuse("(token)", "the trial balance covers every region; it")


def _aware(name: str, value: datetime | None) -> None:
    if value is not None and value.tzinfo is None:
        raise Problem(422, "Invalid request", f"{name} must include a time zone, e.g. 2026-11-21T12:00:00Z",
                      errors=[{"field": name, "message": "time zone required"}])
    if value is not None:
        try:
            value.astimezone(timezone.utc)
        except OverflowError:
            raise Problem(422, "Invalid request", f"{name} is out of range", errors=[{"field": name, "message": "out of range"}])


def _cursor(cursor: str | None, shape: tuple[type, ...] = (str,)) -> list[Any] | None:
    if cursor is None:
        return None
    try:
        value = queries.decode_cursor(cursor)
        if len(value) != len(shape) or not all(isinstance(v, t) for v, t in zip(value, shape)):
            raise ValueError("bad cursor")
        return value
    except ValueError:
        raise Problem(400, "Bad request", "cursor is not one this API returned", errors=[{"field": "cursor", "message": "bad cursor"}])


# ---------------------------------------------------------------------------------------------
# Accounts and balances
# ---------------------------------------------------------------------------------------------
@router.get("/accounts", response_model=AccountPage, tags=["balances"], summary="List accounts with balances (now or as of)")
async def list_accounts(
    request: Request,
    type: Annotated[AccountType | None, Query(description="Only accounts of this type")] = None,
    as_of: Annotated[datetime | None, Query(description="Balances as of this time")] = None,
    cursor: Annotated[str | None, Query(max_length=400)] = None,
    limit: Annotated[int, Query(ge=1, le=PAGE_MAX)] = 100,
) -> AccountPage:
    _aware("as_of", as_of)
    after = _cursor(cursor)
    async with _pool(request).acquire() as conn:
        rows = await queries.list_accounts(conn, type_=type, after=after[0] if after else None, limit=limit + 1, as_of=as_of)
    page = rows[:limit]
    # A bound token sees only the accounts its binding reaches (a page may then be shorter).
    reach = _reach(request)
    items = [Balance(**r) for r in page if reach.sees_account(r["account_id"])]
    return AccountPage(items=items, next_cursor=queries.encode_cursor(page[-1]["account_id"]) if len(rows) > limit else None)


@router.get("/accounts/{account_id}/balance", response_model=Balance, tags=["balances"], summary="Balance now or as of a time")
async def get_balance(request: Request, account_id: AccountId, as_of: datetime | None = None) -> Balance:
    _aware("as_of", as_of)
    _check_visible(request, account_id)
    async with _pool(request).acquire() as conn:
        found = await queries.balance(conn, account_id, as_of)
    if found is None:
        raise Problem(404, "Not found", f"no account {account_id}")
    return Balance(**found)


@router.put("/accounts/{account_id}", response_model=Balance, tags=["balances"],
            summary="Declare an account (type and floor follow from its id) and set its metadata")
async def put_account(request: Request, account_id: Annotated[AccountId, Path()], body: Annotated[AccountMetadata, Body()]) -> Balance:
    if admission.unknown_account(account_id, request.app.state.reference):
        raise Problem(422, "Invalid request", f"{account_id} names an organisation the reference data does not know",
                      errors=[{"field": "account_id", "message": "unknown organisation"}])
    reach = _reach(request)
    reach.require(reach.moves_account(account_id), "account_id", account_id)
    await request.app.state.runtime.handlers.declare_account(account_id, body.metadata)
    async with _pool(request).acquire() as conn:
        found = await queries.balance(conn, account_id)
    if found is None:  # pragma: no cover - it was declared just now
        raise RuntimeError(f"{account_id} not found after it was declared")
    return Balance(**found)


STATEMENT_COLUMNS = ["entry_seq", "posted_at", "transfer_id", "kind", "cause_kind", "amount_pence", "balance_after_pence",
                     "pending_pence", "pending_debits_after_pence", "pending_credits_after_pence"]


async def _statement(request: Request, account_id: str, from_: datetime | None, to: datetime | None, cursor: str | None,
                     limit: int) -> dict[str, Any]:
    _check_visible(request, account_id)
    _aware("from", from_)
    _aware("to", to)
    if from_ and to and to < from_:
        raise Problem(422, "Invalid request", "to must not be before from", errors=[{"field": "to", "message": "before from"}])
    after = _cursor(cursor, (str, int))
    after_key = None
    if after:
        try:
            after_key = (datetime.fromisoformat(after[0]), int(after[1]))
        except (ValueError, IndexError, TypeError):
            raise Problem(400, "Bad request", "cursor is not one this API returned")
    async with _pool(request).acquire() as conn:
        found = await queries.statement(conn, account_id, from_=from_, to=to, after=after_key, limit=limit)
    if found is None:
        raise Problem(404, "Not found", f"no account {account_id}")
    return found


@router.get("/accounts/{account_id}/statement", response_model=Statement, tags=["statements"],
            summary="Statement for a period with running balance (JSON, or CSV with format=csv)",
            responses={200: {"content": {"text/csv": {}}}})
async def get_statement(
    request: Request,
    account_id: AccountId,
    from_: Annotated[datetime | None, Query(alias="from", description="Start (inclusive)")] = None,
    to: Annotated[datetime | None, Query(description="End (exclusive)")] = None,
    cursor: Annotated[str | None, Query(max_length=400)] = None,
    limit: Annotated[int, Query(ge=1, le=PAGE_MAX)] = 100,
    format: Annotated[Literal["json", "csv"], Query()] = "json",
) -> Any:
    if format == "csv":
        return await statement_csv(request, account_id, from_, to)
    found = await _statement(request, account_id, from_, to, cursor, limit)
    nxt = found["next_after"]
    return Statement(
        account_id=account_id, type=found["account"]["type"], from_=from_, to=to,
        opening_balance_pence=found["opening_balance_pence"],
        lines=[StatementLine(**line) for line in found["lines"]],
        next_cursor=queries.encode_cursor(nxt[0].isoformat(), nxt[1]) if nxt else None,
    )


def _csv_line(values: list[Any]) -> str:
    out = io.StringIO()
    csv.writer(out).writerow(["" if v is None else (v.isoformat() if isinstance(v, datetime) else v) for v in values])
    return out.getvalue()


@router.get("/accounts/{account_id}/statement.csv", tags=["statements"], summary="Statement for a period as CSV (all lines, streamed)",
            response_class=Response, responses={200: {"content": {"text/csv": {}}}})
async def statement_csv(
    request: Request,
    account_id: AccountId,
    from_: Annotated[datetime | None, Query(alias="from")] = None,
    to: Annotated[datetime | None, Query()] = None,
) -> Response:
    # Checked before streaming starts, so a refusal is still a problem response.
    first = await _statement(request, account_id, from_, to, None, PAGE_MAX)

    async def lines() -> Any:
        # Page by page, each page one query: memory stays one page whatever the statement's length.
        yield _csv_line(STATEMENT_COLUMNS)
        yield _csv_line(["", from_, "", "opening_balance", "", "", first["opening_balance_pence"], "", "", ""])
        found: dict[str, Any] | None = first
        while found is not None:
            for line in found["lines"]:
                yield _csv_line([line["entry_seq"], line["posted_at"], line["transfer_id"], line["kind"], line["cause"].get("kind"),
                                 line["amount_pence"], line["balance_after_pence"], line["pending_pence"],
                                 line["pending_debits_after_pence"], line["pending_credits_after_pence"]])
            nxt = found["next_after"]
            if not nxt:
                break
            async with _pool(request).acquire() as conn:
                found = await queries.statement(conn, account_id, from_=from_, to=to, after=nxt, limit=PAGE_MAX)

    filename = f"statement-{account_id.replace(':', '-')}.csv"
    return StreamingResponse(lines(), media_type="text/csv; charset=utf-8",
                             headers={"content-disposition": f'attachment; filename="{filename}"'})


@router.get("/trial-balance", response_model=TrialBalance, tags=["balances"],
            summary="Every account's balance now or as of a time; sums to zero (JSON, or CSV with format=csv)",
            responses={200: {"content": {"text/csv": {}}}})
async def trial_balance(
    request: Request,
    as_of: datetime | None = None,
    cursor: Annotated[str | None, Query(max_length=400)] = None,
    limit: Annotated[int, Query(ge=1, le=PAGE_MAX)] = PAGE_MAX,
    format: Annotated[Literal["json", "csv"], Query()] = "json",
) -> Any:
    if format == "csv":
        return await trial_balance_csv(request, as_of)
    _check_unlimited(request)
    _aware("as_of", as_of)
    after = _cursor(cursor)
    async with _pool(request).acquire() as conn:
        async with conn.transaction(isolation="repeatable_read", readonly=True):  # totals and page from one snapshot
            totals = await queries.trial_balance_totals(conn, as_of)
            rows = await queries.list_accounts(conn, type_=None, after=after[0] if after else None, limit=limit + 1, as_of=as_of)
    items = [Balance(**r) for r in rows[:limit]]
    return TrialBalance(
        as_of=as_of, accounts=items, account_count=totals["accounts"], total_pence=totals["total_pence"],
        pending_debits_pence=totals["pending_debits_pence"], pending_credits_pence=totals["pending_credits_pence"],
        by_type_pence=totals["by_type_pence"],
        next_cursor=queries.encode_cursor(items[-1].account_id) if len(rows) > limit else None,
    )


TB_COLUMNS = ["account_id", "type", "posted_pence", "pending_debits_pence", "pending_credits_pence", "available_pence", "floor_pence"]


@router.get("/trial-balance.csv", tags=["balances"], summary="Trial balance as CSV, with a total row (streamed)",
            response_class=Response, responses={200: {"content": {"text/csv": {}}}})
async def trial_balance_csv(request: Request, as_of: datetime | None = None) -> Response:
    _check_unlimited(request)
    _aware("as_of", as_of)

    async def lines() -> Any:
        yield _csv_line(TB_COLUMNS)
        totals = [0, 0, 0]
        after = None
        while True:  # a page of accounts per query: memory stays one page however many accounts
            async with _pool(request).acquire() as conn:
                rows = await queries.list_accounts(conn, type_=None, after=after, limit=PAGE_MAX, as_of=as_of)
            for r in rows:
                totals = [totals[0] + r["posted_pence"], totals[1] + r["pending_debits_pence"], totals[2] + r["pending_credits_pence"]]
                yield _csv_line([r[c] for c in TB_COLUMNS])
            if len(rows) < PAGE_MAX:
                break
            after = rows[-1]["account_id"]
        yield _csv_line(["TOTAL", "", *totals, "", ""])

    return StreamingResponse(lines(), media_type="text/csv; charset=utf-8",
                             headers={"content-disposition": 'attachment; filename="trial-balance.csv"'})


# ---------------------------------------------------------------------------------------------
# Transfers
# ---------------------------------------------------------------------------------------------
@router.get("/transfers/{transfer_id}", response_model=TransferView, tags=["transfers"],
            summary="A transfer with its legs, cause, and its two-phase or reversal links")
async def get_transfer(request: Request, transfer_id: Annotated[EntryId, Path()]) -> TransferView:
    async with _pool(request).acquire() as conn:
        found = await queries.transfer(conn, transfer_id)
    if found is None:
        raise not_found(f"transfer {transfer_id}")
    accounts = [leg["account_id"] for leg in found["legs"]] or [leg[0] for leg in found["request"].get("legs", [])]
    reach = _reach(request)
    if not reach.national and not any(reach.sees_account(a) for a in accounts):
        raise not_found(f"transfer {transfer_id}")  # as if it did not exist: ids are not confirmed to strangers
    return TransferView(**found)


@router.post("/transfers", response_model=PostResult, status_code=201, tags=["transfers"],
             summary="Record one manual transfer (ids in the manual: namespace): posted, pending (with timeout_s),"
                     " post_pending or void_pending; idempotent on transfer_id")
async def post_transfer(request: Request, body: TransferRequested) -> PostResult:
    refused = admission.refusal(body, namespaces.MANUAL, request.app.state.reference)
    if refused is not None:
        field, reason = refused
        status = 403 if field in ("transfer_id", "pending_id", "reverses") else 422
        raise Problem(status, "Forbidden" if status == 403 else "Invalid request", reason,
                      errors=[{"field": field, "message": reason}], transfer_id=body.transfer_id)
    reach = _reach(request)
    accounts = [leg.account_id for leg in body.legs]
    if body.pending_id is not None:
        async with _pool(request).acquire() as conn:
            accounts += await queries.pending_accounts(conn, body.pending_id)
    for account in dict.fromkeys(accounts):
        reach.require(reach.moves_account(account), "legs", account)
    cid = correlation_id_var.get() or str(uuid.uuid4())
    try:  # joins the batch being formed: one transaction for all the requests waiting (group_commit.py)
        outcome = await request.app.state.runtime.group_commit.submit(Submitted(body, cid, None))
    except Overloaded as exc:
        raise Problem(503, "Service unavailable", f"{exc}; retry the same request", headers={"Retry-After": "1"}) from exc
    if outcome.status == "conflict":
        fields = (outcome.reason or "").removeprefix("transfer_id already used with different ").split(", ")
        raise Problem(409, "Conflict", outcome.reason or "transfer_id reused with different fields", transfer_id=body.transfer_id,
                      fields=fields, errors=[{"field": f, "message": "differs from the transfer first recorded with this id"}
                                             for f in fields])
    if outcome.status == "rejected" or (outcome.status == "duplicate" and outcome.original_status == "rejected"):
        reason = outcome.reason or "rejected"
        field = "value_date" if reason.startswith(("period ", "value_date ")) else "legs"  # dated in a closed period / the future
        raise Problem(422, "Transfer rejected", reason, transfer_id=body.transfer_id, errors=[{"field": field, "message": reason}])
    if outcome.entry_seq is None or outcome.entry_hash is None:  # pragma: no cover - posted outcomes always have both
        raise RuntimeError("a recorded transfer has no entry")
    return PostResult(transfer_id=body.transfer_id, status=outcome.status, original_status=outcome.original_status,  # type: ignore[arg-type]
                      entry_seq=outcome.entry_seq, entry_hash=outcome.entry_hash)


@router.get("/verify", response_model=VerifyResult, tags=["audit"],
            summary="Recompute the hash chain and balances (auditors; one verification at a time)")
async def verify(request: Request) -> VerifyResult:
    _check_unlimited(request)
    async with _pool(request).acquire() as conn:
        result = await queries.verify_exclusive(conn)
    if result is None:
        raise Problem(409, "Not allowed now", "another verification is running; try again when it has finished",
                      errors=[{"field": "(request)", "message": "a verification is already running"}])
    return VerifyResult(**result)

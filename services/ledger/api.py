"""The ledger's HTTP API for finance teams: balances (now and as of), accounts, transfers,
trial balance, verification and direct posting."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from services.ledger import store
from shared.contracts import AccountId, TransferRequested
from shared.http import PROBLEM_RESPONSES, Problem
from shared.logging import correlation_id_var

router = APIRouter(prefix="/v1", responses=PROBLEM_RESPONSES)


class Balance(BaseModel):
    account_id: str
    type: str
    currency: Literal["GBP"] = "GBP"
    floor_pence: int | None
    posted_pence: int
    as_of: datetime | None = None


class AccountPage(BaseModel):
    items: list[Balance]
    next_cursor: str | None = Field(description="Pass as `cursor` to get the next page; null at the end")


class TrialBalance(BaseModel):
    as_of: datetime | None
    accounts: list[Balance]
    total_pence: int = Field(description="Always zero in a balanced ledger")
    by_type_pence: dict[str, int]


class TransferView(BaseModel):
    transfer_id: str
    entry_seq: int
    posted_at: datetime
    cause: dict[str, Any]
    legs: list[dict[str, Any]]
    prev_hash: str
    hash: str


class PostResult(BaseModel):
    transfer_id: str
    status: Literal["posted", "duplicate"]
    entry_seq: int
    entry_hash: str


class VerifyResult(BaseModel):
    ok: bool
    entries_checked: int
    reason: str
    head_seq: int | None = None
    head_hash: str | None = None
    first_bad_seq: int | None = None
    first_bad_transfer_id: str | None = None


def _pool(request: Request):  # type: ignore[no-untyped-def]
    return request.app.state.runtime.pool


@router.get("/accounts", response_model=AccountPage, tags=["balances"], summary="List accounts with balances")
async def list_accounts(
    request: Request,
    type: Annotated[Literal["commissioner", "provider", "held", "fund"] | None, Query()] = None,
    cursor: Annotated[str | None, Query(max_length=100)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> AccountPage:
    async with _pool(request).acquire() as conn:
        rows = await store.list_accounts(conn, type_=type, after=cursor, limit=limit + 1)
    items = [Balance(account_id=r["account_id"], type=r["type"], floor_pence=r["floor_pence"], posted_pence=r["posted_pence"]) for r in rows[:limit]]
    return AccountPage(items=items, next_cursor=items[-1].account_id if len(rows) > limit else None)


@router.get("/accounts/{account_id}/balance", response_model=Balance, tags=["balances"], summary="Balance now or as of a time")
async def get_balance(request: Request, account_id: AccountId, as_of: datetime | None = None) -> Balance:
    if as_of is not None and as_of.tzinfo is None:
        raise Problem(422, "Invalid request", "as_of must include a time zone, e.g. 2026-11-21T12:00:00Z")
    async with _pool(request).acquire() as conn:
        found = await store.balance(conn, account_id, as_of)
    if found is None:
        raise Problem(404, "Not found", f"no account {account_id}")
    return Balance(**found)


@router.get("/trial-balance", response_model=TrialBalance, tags=["balances"], summary="Every account's balance; sums to zero")
async def trial_balance(request: Request, as_of: datetime | None = None) -> TrialBalance:
    async with _pool(request).acquire() as conn:
        rows = await store.trial_balance(conn, as_of)
    accounts = [Balance(account_id=r["account_id"], type=r["type"], floor_pence=None, posted_pence=r["posted_pence"], as_of=as_of) for r in rows]
    by_type: dict[str, int] = {}
    for a in accounts:
        by_type[a.type] = by_type.get(a.type, 0) + a.posted_pence
    return TrialBalance(as_of=as_of, accounts=accounts, total_pence=sum(a.posted_pence for a in accounts), by_type_pence=by_type)


@router.get("/transfers/{transfer_id}", response_model=TransferView, tags=["transfers"], summary="A transfer with its legs and cause")
async def get_transfer(request: Request, transfer_id: str) -> TransferView:
    async with _pool(request).acquire() as conn:
        found = await store.transfer(conn, transfer_id)
    if found is None:
        raise Problem(404, "Not found", f"no transfer {transfer_id}")
    return TransferView(**found)


@router.post("/transfers", response_model=PostResult, status_code=201, tags=["transfers"],
             summary="Post one balanced journal entry (idempotent on transfer_id)")
async def post_transfer(request: Request, body: TransferRequested) -> PostResult:
    cid = correlation_id_var.get() or str(uuid.uuid4())
    [outcome] = await store.post_batch(_pool(request), [store.Submitted(body, cid, None)])
    if outcome.status == "conflict":
        raise Problem(409, "Conflict", outcome.reason or "transfer_id reused with different fields", transfer_id=body.transfer_id)
    if outcome.status == "rejected":
        raise Problem(422, "Transfer rejected", outcome.reason or "rejected", transfer_id=body.transfer_id)
    return PostResult(transfer_id=body.transfer_id, status=outcome.status, entry_seq=outcome.entry_seq, entry_hash=outcome.entry_hash)  # type: ignore[arg-type]


@router.get("/verify", response_model=VerifyResult, tags=["audit"], summary="Recompute the hash chain and balances")
async def verify(request: Request) -> VerifyResult:
    async with _pool(request).acquire() as conn:
        return VerifyResult(**await store.verify(conn))

"""The funds service's wiring: every route is in its policy (deny by default), the topics it
subscribes to are the ones its AsyncAPI description names, production refuses to start without
its own ledger token, the service token is read from its file when it changes, and the ledger
answers consumer reads only what is the funds service's."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from services.funds import consumer, events
from services.funds.app import create_app
from services.funds.ledger_client import LedgerUnavailable, ServiceToken
from services.funds.policy import POLICY
from services.funds.settings import FundsSettings
from shared.auth import DEV_SECRET, SCOPES, AuthConfig
from shared.consumer import BadEvent
from shared.contracts import FUNDS_EVENT_TYPES, TransferPosted, envelope
from shared.security import InsecureConfiguration
from shared.topics import ALL_TOPICS, FUNDS_GRANTS


def dev_app():  # type: ignore[no-untyped-def]
    os.environ.setdefault("PATIENT_POWER_MODE", "development")
    return create_app(FundsSettings(mode="development"))


def test_every_route_has_a_rule_and_every_rule_a_route_with_a_known_scope() -> None:
    app = dev_app()
    routes = {(method.upper(), path) for path, ops in app.openapi()["paths"].items() if path.startswith("/v1/") for method in ops}
    assert routes == set(POLICY)
    assert {rule.scope for rule in POLICY.values()} == {"funds:propose", "funds:approve", "funds:manage", "funds:read", "reports:read"}
    assert {rule.scope for rule in POLICY.values()} <= set(SCOPES)


def test_the_documented_topics_are_the_ones_subscribed_and_created() -> None:
    broker = dev_app().state.runtime.broker
    real = {name for sub in broker.subscribers for name in sub.topic_names}
    assert real == {spec.name for spec, _model, _text in events.CONSUMES}
    assert FUNDS_GRANTS in ALL_TOPICS and FUNDS_GRANTS.key == "grant_id"
    assert all(t.startswith("funds.") and t.endswith(".v1") for t in FUNDS_EVENT_TYPES)


def test_production_refuses_to_start_without_the_service_token_file(tmp_path: Path) -> None:
    secret = "x" * 40
    settings = FundsSettings(mode="production", auth_hs256_secret=secret, auth_issuer="i", auth_audience="a",
                             metrics_token="m" * 40)
    with pytest.raises(InsecureConfiguration, match="FUNDS_SERVICE_TOKEN_FILE"):
        create_app(settings)
    token_file = tmp_path / "token"
    token_file.write_text("eyJ.a.b\n")
    create_app(settings.model_copy(update={"service_token_file": token_file}))  # starts (the app is built)


def test_the_service_token_is_read_from_its_file_again_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("first.token.value\n")
    token = ServiceToken(token_file=path, development=False, secret=None)
    assert token.get() == "first.token.value"
    path.write_text("second.token.value.rotated\n")
    os.utime(path, (time.time() + 5, time.time() + 5))
    assert token.get() == "second.token.value.rotated"
    path.write_text("")
    os.utime(path, (time.time() + 10, time.time() + 10))
    with pytest.raises(LedgerUnavailable):
        token.get()
    with pytest.raises(LedgerUnavailable):
        ServiceToken(token_file=None, development=False, secret=None).get()


async def test_a_development_token_is_a_national_ledger_read_token_for_the_funds_service() -> None:
    principal = await AuthConfig(hs256_secret=DEV_SECRET).verify(ServiceToken(token_file=None, development=True, secret=None).get())
    assert principal.subject == "service:funds" and principal.scopes == {"ledger:read"} and principal.binding.national


def test_the_answers_consumer_passes_over_other_producers_transfers_and_refuses_forged_ones() -> None:
    def raw(transfer_id: str, producer: str = "ledger") -> bytes:
        data = TransferPosted(transfer_id=transfer_id, status="pending", entry_seq=1, entry_hash="0" * 64)
        return envelope(data, "ledger.posted.v1", producer=producer, correlation_id="c").model_dump_json().encode()

    assert consumer.parse_answer(raw("hold:pay-1")) is None
    assert consumer.parse_answer(raw("manual:grant:x")) is None  # mentions grant: but is not in its namespace
    found = consumer.parse_answer(raw("grant:g1:m1"))
    assert found is not None and found.answer.transfer_id == "grant:g1:m1"
    with pytest.raises(BadEvent, match="not the ledger"):
        consumer.parse_answer(raw("grant:g1:m1", producer="payments"))

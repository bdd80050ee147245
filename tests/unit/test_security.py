"""Production mode refuses to start on anything insecure; development mode warns (shared/security.py)."""

from __future__ import annotations

import json

import pytest

from services.feedback.settings import FeedbackSettings
from services.ledger.settings import LedgerSettings
from shared import security
from shared.auth import DEV_SECRET

STRONG = "s" * 40
JWKS = json.dumps({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k", "use": "sig",
                             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
                             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]})


def production(**kw: object) -> LedgerSettings:
    base = {"mode": "production", "auth_jwks_json": JWKS, "auth_issuer": "https://idp/", "auth_audience": "patient-power",
            "metrics_token": STRONG}
    return LedgerSettings(**{**base, **kw})


def test_a_complete_production_configuration_starts() -> None:
    assert security.problems(production()) == []
    security.enforce(production(), "ledger")


@pytest.mark.parametrize(("change", "finding"), [
    ({"auth_hs256_secret": DEV_SECRET}, "public development secret"),
    ({"auth_hs256_secret": "short"}, "shorter than 32 bytes"),
    ({"auth_jwks_json": None}, "no token verification keys"),
    ({"auth_jwks_json": "{\"keys\": 1}"}, "not a usable JWKS document"),
    ({"auth_jwks_url": "http://idp/jwks"}, "must be https"),
    ({"auth_issuer": None}, "AUTH_ISSUER is not set"),
    ({"auth_audience": None}, "AUTH_AUDIENCE is not set"),
    ({"auth_max_token_lifetime_s": 7 * 86_400}, "AUTH_MAX_TOKEN_LIFETIME_S"),
    ({"metrics_token": None}, "METRICS_TOKEN"),
    ({"metrics_token": security.DEV_METRICS_TOKEN}, "METRICS_TOKEN"),
])
def test_production_refuses_each_insecure_setting(change: dict[str, object], finding: str) -> None:
    settings = production(**change)
    assert any(finding in p for p in security.problems(settings)), security.problems(settings)
    with pytest.raises(security.InsecureConfiguration, match="refusing to start in production mode"):
        security.enforce(settings, "ledger")


def test_production_is_the_default_and_the_defaults_do_not_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PATIENT_POWER_MODE", raising=False)
    settings = LedgerSettings()
    assert settings.mode == "production" and settings.max_token_lifetime_s == 3600
    with pytest.raises(security.InsecureConfiguration):
        security.enforce(settings, "ledger")


def test_feedback_refuses_the_development_pseudonym_key_in_production() -> None:
    settings = FeedbackSettings(mode="production")
    assert settings.security_problems() == ["FEEDBACK_PSEUDONYM_KEY is not set (the development key is public)"]
    assert FeedbackSettings(mode="production", pseudonym_key=STRONG).security_problems() == []
    with pytest.raises(ValueError):
        settings.keyring()


def test_the_ledger_refuses_to_sign_statements_with_the_development_key_in_production() -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.asymmetric.rsa import generate_private_key

    settings = LedgerSettings(mode="production")
    assert settings.security_problems() == [
        "LEDGER_STATEMENT_SIGNING_KEY is not set (period statements would be signed with the public development key)"]
    with pytest.raises(ValueError):
        settings.statement_signer()

    def pem(key) -> str:  # type: ignore[no-untyped-def]
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption()).decode()

    good = LedgerSettings(mode="production", statement_signing_key=pem(Ed25519PrivateKey.generate()))
    assert good.security_problems() == [] and good.statement_signer().key_id
    rsa = LedgerSettings(mode="production", statement_signing_key=pem(generate_private_key(65537, 2048)))
    assert rsa.security_problems() == ["LEDGER_STATEMENT_SIGNING_KEY: the statement signing key must be an Ed25519 key"]
    assert LedgerSettings(mode="development").statement_signer().key_id  # the public development key


def test_development_says_loudly_that_it_is_insecure(capsys: pytest.CaptureFixture[str]) -> None:
    settings = LedgerSettings(mode="development")
    security.enforce(settings, "ledger")
    assert "DEVELOPMENT mode: INSECURE" in capsys.readouterr().err
    assert security.metrics_token(settings) == security.DEV_METRICS_TOKEN
    assert settings.max_token_lifetime_s == 12 * 3600

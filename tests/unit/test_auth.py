"""Bearer tokens fail closed (shared/auth.py): real RS256, RS512, PS256 and ES256 key pairs, a
JWKS with rotation by kid, and every malformed claim refused with a 401 in our own words."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

import shared.auth as auth
from shared.auth import DEV_SECRET, AuthConfig, KeyStore, Principal, mint, parse_jwks, principal_of
from shared.http import Problem
from shared.reference import load_reference

REF = load_reference()
ISSUER, AUDIENCE = "https://login.example.nhs.uk/", "patient-power"


def rsa_key() -> Any:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def ec_key(curve: ec.EllipticCurve | None = None) -> Any:
    return ec.generate_private_key(curve or ec.SECP256R1())


def jwk_of(private_key: Any, kid: str, alg: str | None = None) -> dict[str, Any]:
    algo = jwt.algorithms.RSAAlgorithm if isinstance(private_key, rsa.RSAPrivateKey) else jwt.algorithms.ECAlgorithm
    jwk = json.loads(algo.to_jwk(private_key.public_key()))
    jwk.update({"kid": kid, "use": "sig"})
    if alg:
        jwk["alg"] = alg
    return jwk


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"sub": "finance.lead@rj1", "scope": "ledger:read", "iat": now, "exp": now + 600, "ods": ["RJ1"],
            "iss": ISSUER, "aud": AUDIENCE}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def config(*jwks: dict[str, Any], secret: str | None = None, **kw: Any) -> AuthConfig:
    keys = KeyStore({"keys": list(jwks)}) if jwks else KeyStore()
    return AuthConfig(hs256_secret=secret, keys=keys, issuer=ISSUER, audience=AUDIENCE, reference=REF, **kw)


def verify(cfg: AuthConfig, token: str) -> Principal:
    return asyncio.run(cfg.verify(token))


def refused(cfg: AuthConfig, token: str) -> str:
    with pytest.raises(Problem) as caught:
        verify(cfg, token)
    assert caught.value.status == 401
    return caught.value.detail


@pytest.mark.parametrize("alg", ["RS256", "RS512", "PS256"])
def test_rsa_tokens_verify_with_the_jwks(alg: str) -> None:
    key = rsa_key()
    cfg = config(jwk_of(key, "k1"))
    principal = verify(cfg, jwt.encode(claims(), key, algorithm=alg, headers={"kid": "k1"}))
    assert principal.subject == "finance.lead@rj1" and principal.scopes == {"ledger:read"}
    assert principal.binding.providers == {"RJ1"} and not principal.binding.national


def test_es256_tokens_verify_and_a_jwk_alg_narrows_the_key() -> None:
    key = ec_key()
    cfg = config(jwk_of(key, "e1", "ES256"))
    assert verify(cfg, jwt.encode(claims(), key, algorithm="ES256", headers={"kid": "e1"})).subject == "finance.lead@rj1"
    rkey = rsa_key()
    narrowed = config(jwk_of(rkey, "r1", "RS256"))
    assert "algorithm" in refused(narrowed, jwt.encode(claims(), rkey, algorithm="RS512", headers={"kid": "r1"}))


def test_nhs_login_style_rs512_id_token_is_accepted_but_carries_no_binding() -> None:
    """NHS login signs ID tokens with RS512; such a token names a patient, not an organisation, so
    it proves who someone is and reaches nothing here (README: NHS login's ID-token claims)."""
    key = rsa_key()
    cfg = config(jwk_of(key, "nhs-login-1"))
    id_token = {"sub": "49f470a1-cc52-49b7-beba-0f9cec937c46", "iss": ISSUER, "aud": AUDIENCE, "iat": int(time.time()),
                "exp": int(time.time()) + 300, "vot": "P9.Cp.Cd", "identity_proofing_level": "P9", "nhs_number": "9990000018",
                "scope": "openid profile"}
    detail = refused(cfg, jwt.encode(id_token, key, algorithm="RS512", headers={"kid": "nhs-login-1"}))
    assert detail == "the token carries no binding: national, regions, icbs or ods"


def test_a_key_of_one_type_never_verifies_another_algorithm() -> None:
    rkey, ekey = rsa_key(), ec_key()
    cfg = config(jwk_of(rkey, "r1"), jwk_of(ekey, "e1"))
    assert "algorithm" in refused(cfg, jwt.encode(claims(), rkey, algorithm="RS256", headers={"kid": "e1"}))
    # HS256 signed with the public key as the secret (the classic confusion): no HS secret here.
    pem = rkey.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    head = jwt.utils.base64url_encode(json.dumps({"alg": "HS256", "kid": "r1"}).encode())
    body = jwt.utils.base64url_encode(json.dumps(claims()).encode())
    mac = jwt.utils.base64url_encode(hmac.new(pem, head + b"." + body, hashlib.sha256).digest())
    assert refused(cfg, (head + b"." + body + b"." + mac).decode()) == "symmetric (HS256) tokens are not accepted here"


def test_unsigned_and_garbage_tokens_are_refused() -> None:
    cfg = config(secret=DEV_SECRET)
    header = jwt.utils.base64url_encode(json.dumps({"alg": "none", "typ": "JWT"}).encode()).decode()
    body = jwt.utils.base64url_encode(json.dumps(claims()).encode()).decode()
    assert "algorithm" in refused(cfg, f"{header}.{body}.")
    assert refused(cfg, "not-a-token") == "the token is malformed or too large"
    assert refused(cfg, "a" * 9000) == "the token is malformed or too large"
    assert refused(cfg, "eyJhbGciOiJIUzI1NiJ9.e30.x") in ("the token is malformed", "the token's signature does not verify",
                                                             "the token lacks the exp claim")


def test_messages_are_ours_not_the_librarys() -> None:
    cfg = config(secret=DEV_SECRET)
    wrong = jwt.encode(claims(), "another-secret-of-at-least-32-bytes!!", algorithm="HS256")
    assert refused(cfg, wrong) == "the token's signature does not verify"
    expired = jwt.encode(claims(exp=int(time.time()) - 3600, iat=int(time.time()) - 4000), DEV_SECRET, algorithm="HS256")
    assert refused(cfg, expired) == "the token has expired"
    assert refused(cfg, jwt.encode(claims(iss="https://evil.example/"), DEV_SECRET, algorithm="HS256")) == \
        "the token comes from another issuer"
    assert refused(cfg, jwt.encode(claims(aud="someone-else"), DEV_SECRET, algorithm="HS256")) == \
        "the token is meant for another audience"
    assert refused(cfg, jwt.encode(claims(iss=None), DEV_SECRET, algorithm="HS256")) == "the token lacks the iss claim"
    assert refused(cfg, jwt.encode(claims(iat=None), DEV_SECRET, algorithm="HS256")) == "the token lacks the iat claim"


@pytest.mark.parametrize(("overrides", "detail"), [
    ({"exp": int(time.time()) + 10 * 365 * 86_400}, "longer"),
    ({"exp": 10**30}, "longer"),
    ({"iat": int(time.time()) - 86_400, "exp": int(time.time()) + 600}, "longer"),
])
def test_token_lifetime_is_capped(overrides: dict[str, Any], detail: str) -> None:
    cfg = config(secret=DEV_SECRET, max_lifetime_s=3600)
    assert detail in refused(cfg, jwt.encode(claims(**overrides), DEV_SECRET, algorithm="HS256"))


@pytest.mark.parametrize(("overrides", "detail"), [
    ({"regions": "Y56", "ods": None}, "the regions claim must be a non-empty list of codes"),
    ({"regions": [], "ods": None}, "the regions claim must be a non-empty list of codes"),
    ({"regions": ["Y99"], "ods": None}, "the regions claim names Y99, which the reference data does not know"),
    ({"regions": [56], "ods": None}, "the regions claim holds a malformed code"),
    ({"icbs": ["QZZ"], "ods": None}, "the icbs claim names QZZ, which the reference data does not know"),
    ({"ods": "RJ1"}, "the ods claim must be a non-empty list of codes"),
    ({"ods": None}, "the token carries no binding: national, regions, icbs or ods"),
    ({"national": "yes", "ods": None}, "the national claim must be true or false"),
    ({"national": True}, "a national token cannot also carry regions, icbs or ods"),
    ({"sub": ""}, "the sub claim must be 1-200 letters, digits or . _ : @ | + -"),
    ({"sub": "a b\x00"}, "the sub claim must be 1-200 letters, digits or . _ : @ | + -"),
    ({"sub": 42}, "the sub claim must be 1-200 letters, digits or . _ : @ | + -"),
    ({"scope": ["ledger:read"]}, "the scope claim must be a space-separated string"),
    ({"scope": None}, "the scope claim must be a space-separated string"),
])
def test_malformed_claims_are_refused_never_read_generously(overrides: dict[str, Any], detail: str) -> None:
    """A regions claim that is a string once gave national reach; every such shape is now a 401."""
    cfg = config(secret=DEV_SECRET)
    assert refused(cfg, jwt.encode(claims(**overrides), DEV_SECRET, algorithm="HS256")) == detail


def test_bindings_and_unknown_scopes() -> None:
    cfg = config(secret=DEV_SECRET)
    p = verify(cfg, jwt.encode(claims(ods=None, regions=["Y56"], icbs=["QWE"], scope="ledger:read openid nonsense"),
                               DEV_SECRET, algorithm="HS256"))
    assert p.scopes == {"ledger:read"} and p.binding.regions == {"Y56"} and p.binding.icbs == {"QWE"}
    national = verify(cfg, jwt.encode(claims(ods=None, national=True), DEV_SECRET, algorithm="HS256"))
    assert national.binding.national


class _Jwks:
    """A local identity provider publishing a JWKS document that can change (a rotation)."""

    def __init__(self) -> None:
        self.document: dict[str, Any] = {"keys": []}
        self.fetches = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                outer.fetches += 1
                body = json.dumps(outer.document).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/jwks.json"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()


def test_jwks_url_picks_up_a_rotated_key_by_kid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth, "JWKS_MIN_REFETCH_S", 0.0)
    idp = _Jwks()
    old, new = rsa_key(), rsa_key()
    idp.document = {"keys": [jwk_of(old, "2026-1")]}
    try:
        async def scenario() -> None:
            keys = KeyStore(url=idp.url, refresh_s=3600)
            cfg = AuthConfig(keys=keys, issuer=ISSUER, audience=AUDIENCE, reference=REF)
            await keys.start()
            try:
                assert (await cfg.verify(jwt.encode(claims(), old, algorithm="RS256", headers={"kid": "2026-1"}))).subject
                # The identity provider rotates: publishes the new key, then signs with it. No restart.
                idp.document = {"keys": [jwk_of(old, "2026-1"), jwk_of(new, "2026-2")]}
                token = jwt.encode(claims(), new, algorithm="RS512", headers={"kid": "2026-2"})
                assert (await cfg.verify(token)).subject == "finance.lead@rj1"
                fetches = idp.fetches
                # A kid nobody published is refused, and costs at most one more fetch.
                stranger = rsa_key()
                with pytest.raises(Problem) as caught:
                    await cfg.verify(jwt.encode(claims(), stranger, algorithm="RS256", headers={"kid": "evil"}))
                assert caught.value.detail == "the token is signed with a key this service does not know"
                assert idp.fetches == fetches + 1
                # The old key retired: its new tokens fail once the document drops it (a token
                # verified before stays honoured for at most VERIFIED_CACHE_S: see below).
                idp.document = {"keys": [jwk_of(new, "2026-2")]}
                await keys.refresh(force=True)
                with pytest.raises(Problem):
                    await cfg.verify(jwt.encode(claims(sub="after.rotation"), old, algorithm="RS256", headers={"kid": "2026-1"}))
            finally:
                await keys.stop()

        asyncio.run(scenario())
    finally:
        idp.stop()


def test_unknown_kid_refetches_at_most_once_per_interval() -> None:
    idp = _Jwks()
    key = rsa_key()
    idp.document = {"keys": [jwk_of(key, "a")]}
    try:
        async def scenario() -> None:
            keys = KeyStore(url=idp.url)
            cfg = AuthConfig(keys=keys, reference=REF)
            await keys.start()
            try:
                for _ in range(5):
                    with pytest.raises(Problem):
                        await cfg.verify(jwt.encode(claims(iss=None, aud=None), rsa_key(), algorithm="RS256", headers={"kid": "x"}))
                assert idp.fetches == 1  # the start-up fetch only: unknown kids cannot drive load to the IdP
            finally:
                await keys.stop()

        asyncio.run(scenario())
    finally:
        idp.stop()


def test_parse_jwks_refuses_what_is_not_a_key_set() -> None:
    with pytest.raises(ValueError):
        parse_jwks({"keys": "nope"})
    with pytest.raises(ValueError):
        parse_jwks({"keys": [jwk_of(rsa_key(), "a"), jwk_of(rsa_key(), "a")]})
    assert parse_jwks({"keys": [{**jwk_of(rsa_key(), "enc"), "use": "enc"}]}) == {}
    assert parse_jwks({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "s"}]}) == {}


def test_principal_of_refuses_a_request_without_a_principal() -> None:
    """It once returned a principal with every scope; now a route wired without the policy is a 401."""
    class Req:
        class state:  # noqa: N801 - shaped like starlette's request.state
            pass

    with pytest.raises(Problem) as caught:
        principal_of(Req())  # type: ignore[arg-type]
    assert caught.value.status == 401


def test_mint_gives_national_reach_only_when_no_binding_is_named() -> None:
    token = mint(["ledger:read"], regions=["Y56"])
    body = jwt.decode(token, DEV_SECRET, algorithms=["HS256"])
    assert body["regions"] == ["Y56"] and "national" not in body
    assert jwt.decode(mint(["ledger:read"]), DEV_SECRET, algorithms=["HS256"])["national"] is True
    with pytest.raises(ValueError):
        mint(["ledger:everything"])


def test_a_verified_token_is_remembered_for_at_most_a_minute(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = config(secret=DEV_SECRET)
    token = jwt.encode(claims(), DEV_SECRET, algorithm="HS256")
    first = verify(cfg, token)
    cfg.hs256_secret = "x" * 40  # as if the key were retired: the remembered verification still stands ...
    assert verify(cfg, token) is first
    real = time.time
    monkeypatch.setattr(auth.time, "time", lambda: real() + auth.VERIFIED_CACHE_S + 1)
    assert refused(cfg, token) == "the token's signature does not verify"  # ... but not beyond the minute

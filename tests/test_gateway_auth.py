"""The gateway's token checks (services/gateway/auth.py), without a cluster: every refusal's reason,
the algorithm fixed by the key, revocations, and streams that end with their tokens."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import jwt
import pytest

from ringcast.reasons import Reason
from ringcast_tools.cluster import tokens
from services.common.errors import ServiceError
from services.common.revocations import PREFIX, Revocations, parse
from services.gateway.auth import Authenticator, load_keys

SECRET = b"s" * 32


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    tokens.ensure_keys(tmp_path)
    keyset = json.loads((tmp_path / tokens.KEYSET_FILE).read_text())
    keyset["keys"].append({"kid": "shared", "alg": "HS256", "secret": base64.urlsafe_b64encode(SECRET).decode()})
    (tmp_path / tokens.KEYSET_FILE).write_text(json.dumps(keyset))
    return tmp_path


def authenticator(keys: Path, now: float | None = None) -> Authenticator:
    clock = (lambda: now) if now is not None else time.time
    return Authenticator(load_keys(keys / tokens.KEYSET_FILE), now=clock)


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def refused(auth: Authenticator, metadata: list[tuple[str, str]] | None) -> str:
    with pytest.raises(ServiceError) as caught:
        auth.grant(metadata)
    return caught.value.reason


def claims(**overrides: object) -> dict[str, object]:
    now = int(time.time())
    return {
        "sub": "alice",
        "iat": now,
        "exp": now + 60,
        "jti": "j1",
        "capability": {"chat:*": ["publish"]},
        **overrides,
    }


def test_a_good_token_grants_its_capability_and_limits(keys: Path) -> None:
    token = tokens.mint(keys / tokens.SIGNING_FILE, "alice", {"chat:*": ["publish"]}, 60, limits={"publish_rate": 5})
    grant = authenticator(keys).grant(bearer(token))
    assert (grant.sub, grant.limits.publish_rate) == ("alice", 5.0)
    grant.require("chat:x", "publish")
    with pytest.raises(ServiceError) as caught:
        grant.require("news:1", "publish")
    assert caught.value.reason == Reason.CAPABILITY_DENIED


def test_the_key_fixes_the_algorithm(keys: Path) -> None:
    auth = authenticator(keys)
    assert auth.grant(bearer(jwt.encode(claims(), SECRET, algorithm="HS256", headers={"kid": "shared"}))).sub == "alice"
    signing_kid = json.loads((keys / tokens.SIGNING_FILE).read_text())["kid"]
    # An HS256 token naming the EdDSA key's kid fails, whatever it was signed with.
    forged = jwt.encode(claims(), SECRET, algorithm="HS256", headers={"kid": signing_kid})
    assert refused(auth, bearer(forged)) == Reason.TOKEN_INVALID
    unsigned = jwt.encode(claims(), None, algorithm="none", headers={"kid": "shared"})
    assert refused(auth, bearer(unsigned)) == Reason.TOKEN_INVALID


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [
        (None, Reason.TOKEN_MISSING),
        ([("authorization", "Basic abc")], Reason.TOKEN_MISSING),
        ([("authorization", "Bearer ")], Reason.TOKEN_MISSING),
        (bearer("not-a-token"), Reason.TOKEN_INVALID),
        (bearer("x" * 10_000), Reason.TOKEN_INVALID),
    ],
)
def test_missing_and_garbled_tokens(keys: Path, metadata: list[tuple[str, str]] | None, reason: str) -> None:
    assert refused(authenticator(keys), metadata) == reason


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        (lambda now: {"exp": now - 30}, Reason.TOKEN_EXPIRED),
        (lambda now: {"nbf": now + 600}, Reason.TOKEN_INVALID),
        (lambda now: {"iat": now - 100_000, "exp": now + 60}, Reason.TOKEN_INVALID),  # lifetime above 24 h
        (lambda now: {"capability": {"chat:*": ["delete"]}}, Reason.TOKEN_INVALID),
        (lambda now: {"sub": ""}, Reason.TOKEN_INVALID),
        (lambda now: {"limits": {"publish_rate": -1}}, Reason.TOKEN_INVALID),
    ],
    ids=["expired", "not-yet-valid", "lifetime", "capability", "empty-sub", "negative-limit"],
)
def test_claims_are_checked(keys: Path, overrides: Callable[[int], dict[str, object]], reason: str) -> None:
    token = jwt.encode(claims(**overrides(int(time.time()))), SECRET, algorithm="HS256", headers={"kid": "shared"})
    assert refused(authenticator(keys), bearer(token)) == reason


def test_missing_claims_make_a_token_invalid(keys: Path) -> None:
    for claim in ("sub", "exp", "iat", "jti"):
        body = claims()
        del body[claim]
        token = jwt.encode(body, SECRET, algorithm="HS256", headers={"kid": "shared"})
        assert refused(authenticator(keys), bearer(token)) == Reason.TOKEN_INVALID, claim


def test_revocations_by_jti_by_sub_and_by_time(keys: Path) -> None:
    token = jwt.encode(claims(), SECRET, algorithm="HS256", headers={"kid": "shared"})
    issued = float(jwt.decode(token, options={"verify_signature": False})["iat"])
    for revocations in (
        Revocations(jtis={"j1"}),
        Revocations(subs={"alice": issued + 1}),
        Revocations(issued_before=issued + 1),
    ):
        auth = authenticator(keys)
        auth.grant(bearer(token))  # cached as verified...
        auth.revoked(revocations)
        assert refused(auth, bearer(token)) == Reason.TOKEN_REVOKED  # ...and refused all the same
    auth = authenticator(keys)
    auth.revoked(Revocations(subs={"alice": issued - 1}))  # revoked before this token was issued
    assert auth.grant(bearer(token)).sub == "alice"


def test_revocations_parse_from_etcd_keys() -> None:
    parsed = parse(
        [
            (PREFIX + "jti/j1", b"100"),
            (PREFIX + "sub/alice", b"200"),
            (PREFIX + "issued-before", b"300"),
            (PREFIX + "sub/bob", b"garbage"),
        ]
    )
    assert parsed == Revocations(jtis={"j1"}, subs={"alice": 200.0}, issued_before=300.0)


async def _ticks() -> AsyncIterator[int]:
    n = 0
    while True:
        await asyncio.sleep(0.01)
        n += 1
        yield n


def test_a_stream_ends_when_its_token_is_revoked_and_when_it_expires(keys: Path) -> None:
    async def scenario() -> tuple[str, str]:
        auth = authenticator(keys)
        token = jwt.encode(claims(), SECRET, algorithm="HS256", headers={"kid": "shared"})
        grant = auth.grant(bearer(token))
        reasons = []
        stream = auth.streaming(grant, _ticks())
        await anext(stream)
        asyncio.get_running_loop().call_later(0.05, auth.revoked, Revocations(jtis={"j1"}))
        with pytest.raises(ServiceError) as caught:
            async for _ in stream:
                pass
        reasons.append(caught.value.reason)
        short = jwt.encode(claims(exp=int(time.time()) - 4), SECRET, algorithm="HS256", headers={"kid": "shared"})
        grant = authenticator(keys).grant(bearer(short))  # within the 5 s skew: good for about a second
        with pytest.raises(ServiceError) as caught:
            async for _ in auth.streaming(grant, _ticks()):
                pass
        reasons.append(caught.value.reason)
        return reasons[0], reasons[1]

    assert asyncio.run(scenario()) == (Reason.TOKEN_REVOKED, Reason.TOKEN_EXPIRED)


def test_an_es256_key_verifies_its_own_tokens_only(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "keys.json").write_text(
        json.dumps({"keys": [{"kid": "ec", "alg": "ES256", "public_key": public.decode()}]})
    )
    auth = Authenticator(load_keys(tmp_path / "keys.json"))
    assert auth.grant(bearer(jwt.encode(claims(), key, algorithm="ES256", headers={"kid": "ec"}))).sub == "alice"
    other = ec.generate_private_key(ec.SECP256R1())
    assert refused(auth, bearer(jwt.encode(claims(), other, algorithm="ES256", headers={"kid": "ec"}))) == (
        Reason.TOKEN_INVALID
    )
    # HS256 "signed" with the public key's PEM as the secret: refused, the key says ES256.
    import hmac as hmac_module

    header = base64.urlsafe_b64encode(json.dumps({"alg": "HS256", "kid": "ec"}).encode()).rstrip(b"=")
    body = base64.urlsafe_b64encode(json.dumps(claims()).encode()).rstrip(b"=")
    signature = hmac_module.new(public, header + b"." + body, "sha256").digest()
    forged = (header + b"." + body + b"." + base64.urlsafe_b64encode(signature).rstrip(b"=")).decode()
    assert refused(auth, bearer(forged)) == Reason.TOKEN_INVALID


def test_a_keyset_with_a_short_secret_or_an_unknown_algorithm_is_refused_at_start(tmp_path: Path) -> None:
    for key in (
        {"kid": "short", "alg": "HS256", "secret": base64.urlsafe_b64encode(b"x" * 16).decode()},
        {"kid": "none", "alg": "none"},
        {"kid": "rs", "alg": "RS256", "public_key": "x"},
    ):
        (tmp_path / "keys.json").write_text(json.dumps({"keys": [key]}))
        with pytest.raises(SystemExit):
            load_keys(tmp_path / "keys.json")

"""Token signing keys and tokens, for `ringcast up`, `ringcast token` and the CLI (DESIGN §10).

`ensure_keys(tls_dir)` makes, once, an Ed25519 signing key (`token-signing.json`, 0600: kid, alg and
the private key; only tools that mint tokens read it) and the keyset gateways check tokens with
(`token-keys.json`: kid, alg and the public key). A gateway never holds a key that can sign.
Rotation: add a key with a new kid to the keyset, restart the gateways one by one, sign with it,
and drop the old kid once its tokens have expired (at most `token_lifetime_s_max`).

`mint(...)` signs one token with PyJWT: `sub`, `iat`, `nbf`, `exp`, a random `jti`, the capability
map, and optional limits.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

SIGNING_FILE = "token-signing.json"
KEYSET_FILE = "token-keys.json"

ADMIN_CAPABILITY: dict[str, list[str]] = {"*": ["*"]}
admin_token_ttl_s = 3600


def write_private(path: Path, data: bytes) -> None:
    """Write a secret readable by its owner only (0600 from the start, never world-readable)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)


def ensure_keys(tls_dir: Path) -> list[str]:
    """Make the signing key and the keyset if missing; the files made."""
    signing, keyset = tls_dir / SIGNING_FILE, tls_dir / KEYSET_FILE
    if signing.exists() and keyset.exists():
        return []
    key = Ed25519PrivateKey.generate()
    kid = f"ringcast-{time.strftime('%Y%m%d')}-{secrets.token_hex(4)}"
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    write_private(signing, json.dumps({"kid": kid, "alg": "EdDSA", "private_key": private}, indent=2).encode())
    keyset.write_text(json.dumps({"keys": [{"kid": kid, "alg": "EdDSA", "public_key": public}]}, indent=2) + "\n")
    return [SIGNING_FILE, KEYSET_FILE]


def mint(
    signing_file: Path,
    sub: str,
    capability: Mapping[str, list[str]],
    ttl_s: float,
    *,
    limits: Mapping[str, float] | None = None,
    now: float | None = None,
) -> str:
    """A token for `sub` with `capability`, good for `ttl_s` seconds from `now`."""
    signing = json.loads(Path(signing_file).read_text())
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "sub": sub,
        "iat": issued,
        "nbf": issued,
        "exp": issued + max(1, int(ttl_s)),
        "jti": secrets.token_urlsafe(12),
        "capability": dict(capability),
    }
    if limits:
        claims["limits"] = {name: value for name, value in limits.items() if value}
    key = serialization.load_pem_private_key(signing["private_key"].encode(), password=None)
    return jwt.encode(claims, key, algorithm=signing["alg"], headers={"kid": signing["kid"]})  # type: ignore[arg-type]


__all__ = ["ADMIN_CAPABILITY", "KEYSET_FILE", "SIGNING_FILE", "admin_token_ttl_s", "ensure_keys", "mint"]

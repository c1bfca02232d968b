"""API keys: their format, what a key may do, and how a presented key is checked.

A key reads `sk-citadel-<id>-<secret>`: the id (12 hex digits) is stored in clear for
lookup, logs and display; of the secret only its SHA-256 is stored, and comparison is
constant-time. The full key exists once, in the answer to its creation.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from functools import cached_property
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    field_validator,
    model_validator,
)

from actors.limiter.budget import Budget
from actors.limiter.local import LimitSpec

PREFIX = "sk-citadel-"
# Matched whole (fullmatch): `^...$` would let a trailing newline through.
_KEY = re.compile(r"sk-citadel-([0-9a-f]{12})-([A-Za-z0-9_-]{20,128})")
_ID = re.compile(r"[0-9a-f]{12}")
_POLICY_NAME = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_HEX64 = re.compile(r"[0-9a-f]{64}")

Endpoint = Literal["chat.completions", "completions", "embeddings", "models"]
# Compared against when the id is unknown, so that a miss costs what a wrong secret costs.
_DUMMY_HASH = hashlib.sha256(b"citadel-no-such-key").hexdigest()


def new_key() -> tuple[str, str, str]:
    """A fresh key: (key_id, full key, SHA-256 of its secret in hex)."""
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return key_id, f"{PREFIX}{key_id}-{secret}", hash_secret(secret)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def split_key(key: str) -> tuple[str, str] | None:
    """(key_id, secret) of a well-formed key, else None."""
    match = _KEY.fullmatch(key)
    return (match.group(1), match.group(2)) if match else None


def secret_matches(secret: str, stored_hash: str | None) -> bool:
    """Constant-time: the same work whether or not there is a stored hash."""
    return hmac.compare_digest(hash_secret(secret), stored_hash or _DUMMY_HASH) and (
        stored_hash is not None
    )


class KeyScopes(BaseModel):
    """What a key may do. Limits of None mean no limit of that kind for this key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field("", max_length=200, description="who or what the key is for")
    models: tuple[str, ...] = Field(("*",), description='model ids, aliases, virtual, or "*"')
    endpoints: tuple[Endpoint | Literal["*"], ...] = ("*",)
    rpm: StrictInt | None = Field(None, ge=1, description="requests per minute")
    tpm: StrictInt | None = Field(None, ge=1, description="tokens per minute (prompt + completion)")
    max_concurrent: StrictInt | None = Field(None, ge=1, description="requests in flight at once")
    budget: Budget | None = Field(None, description="tokens per day, week or month")
    expires_at: StrictFloat | None = Field(
        None, gt=0, allow_inf_nan=False, description="unix time after which it is refused"
    )
    guardrails: tuple[str, ...] = Field(
        (),
        max_length=16,
        description="guardrail policies applied to this key's requests besides its models'",
    )
    admin: StrictBool = Field(
        False,
        description="may use /admin/*; never a substitute for scopes: an admin key may call "
        "no model unless its models are given",
    )

    @model_validator(mode="before")
    @classmethod
    def _admin_keys_are_admin_only(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("admin") is True and "models" not in data:
            return {**data, "models": ()}
        return data

    @cached_property
    def limits(self) -> LimitSpec:
        """The key's own limits, as the rate limiter takes them (built once per scopes)."""
        return LimitSpec(
            rpm=self.rpm, tpm=self.tpm, max_concurrent=self.max_concurrent, budget=self.budget
        )

    @field_validator("guardrails")
    @classmethod
    def _policy_names(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        for name in names:
            if not _POLICY_NAME.fullmatch(name):
                raise ValueError(f"guardrail policy {name[:64]!r}: 1-64 of letters, digits, ._:-")
        return names

    def allows_model(self, *ids: str) -> bool:
        """Whether any of `ids` (the id the client sent, the model that serves it) is in
        scope."""
        return "*" in self.models or any(model_id in self.models for model_id in ids)

    def allows_endpoint(self, endpoint: str) -> bool:
        return "*" in self.endpoints or endpoint in self.endpoints

    def expired(self, now: float | None = None) -> bool:
        return self.expires_at is not None and (now or time.time()) >= self.expires_at


class KeyRecord(BaseModel):
    """A key as stored: id, the hash of its secret, its scopes, and its life."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    secret_sha256: str
    scopes: KeyScopes = KeyScopes()
    created_at: float = 0.0
    revoked_at: float | None = None
    source: Literal["store", "config"] = "store"

    @field_validator("id")
    @classmethod
    def _valid_id(cls, key_id: str) -> str:
        if not _ID.fullmatch(key_id):
            raise ValueError("a key id is 12 lowercase hex digits")
        return key_id

    @field_validator("secret_sha256")
    @classmethod
    def _valid_hash(cls, value: str) -> str:
        if not _HEX64.fullmatch(value):
            raise ValueError("the SHA-256 of the secret, as 64 lowercase hex digits")
        return value

    def public(self) -> dict[str, object]:
        """What may be shown: everything but the hash."""
        return {
            "id": self.id,
            "prefix": f"{PREFIX}{self.id}-",
            **self.scopes.model_dump(),
            "created_at": self.created_at,
            "revoked_at": self.revoked_at,
            "source": self.source,
        }

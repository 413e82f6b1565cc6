"""Signed tokens, the key that signs them, CSRF tokens and the login rate limit.

A token is ``payload.signature``: the payload is URL-safe base64 JSON, the signature an
HMAC-SHA256 over the token's purpose and the payload, so a login link can never pass for a
session cookie or the other way round. Expiry is inside the signed payload.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from collections import deque
from pathlib import Path
from typing import Any

KEY_FILE = "web-secret.key"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def load_key(configured: str | None, data_dir: Path) -> bytes:
    """The signing key: the configured secret, else one generated once and kept (mode 0600)
    in the data dir, so sessions and links survive a restart."""
    if configured:
        return hashlib.sha256(configured.encode()).digest()
    path = data_dir / KEY_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return bytes.fromhex(path.read_text(encoding="ascii").strip())
    key = secrets.token_bytes(32)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(key.hex())
    return key


class Signer:
    """Signs and checks tokens for one purpose each ("login", "session", "flash")."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def _mac(self, purpose: str, payload: str) -> str:
        message = f"{purpose}.{payload}".encode()
        return _b64(hmac.new(self._key, message, hashlib.sha256).digest())

    def sign(self, purpose: str, data: dict[str, Any], ttl_s: float) -> str:
        """A token carrying ``data``, valid for ``ttl_s`` seconds."""
        body = {**data, "exp": time.time() + ttl_s}
        payload = _b64(json.dumps(body, separators=(",", ":")).encode())
        return f"{payload}.{self._mac(purpose, payload)}"

    def load(self, purpose: str, token: str | None) -> dict[str, Any] | None:
        """The token's data, or None when it is malformed, forged, of another purpose or
        expired."""
        if not token or token.count(".") != 1:
            return None
        payload, mac = token.split(".")
        if not hmac.compare_digest(mac, self._mac(purpose, payload)):
            return None
        try:
            data = json.loads(_unb64(payload))
        except ValueError:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("exp"), int | float):
            return None
        return data if data["exp"] > time.time() else None

    def csrf(self, session_id: str) -> str:
        """The CSRF token of a session: derived from its id, so nothing is stored."""
        return self._mac("csrf", session_id)


class RateLimit:
    """At most ``limit`` failures per client in any ``window_s`` seconds."""

    def __init__(self, limit: int, window_s: float = 60.0) -> None:
        self._limit = limit
        self._window = window_s
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, client: str) -> deque[float]:
        now = time.monotonic()
        failures = self._failures.setdefault(client, deque())
        while failures and now - failures[0] > self._window:
            failures.popleft()
        return failures

    def allowed(self, client: str) -> bool:
        """True while ``client`` has attempts left."""
        allowed = len(self._recent(client)) < self._limit
        if len(self._failures) > 10_000:  # a flood of addresses must not grow memory forever
            self._failures = {k: v for k, v in self._failures.items() if v}
        return allowed

    def failed(self, client: str) -> None:
        self._recent(client).append(time.monotonic())

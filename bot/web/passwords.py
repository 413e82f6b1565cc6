"""Password hashes for ``web.password_hash``, from the standard library only.

``python -m bot.web.passwords`` asks for a password and prints its hash for the config.
Formats: ``scrypt$N$r$p$salt$hash`` (the default) and ``pbkdf2_sha256$iterations$salt$hash``,
salt and hash in URL-safe base64.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import hmac
import secrets

_SCRYPT = (2**14, 8, 1)  # 16 MiB and ~50 ms a guess: cheap for one admin, dear for a guesser


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str) -> str:
    """A new scrypt hash of ``password`` with a random salt."""
    n, r, p = _SCRYPT
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=32)
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    """True when ``password`` matches ``stored``; False for a wrong or malformed hash."""
    try:
        kind, *fields = stored.split("$")
        if kind == "scrypt":
            n, r, p, salt, digest = fields
            got = hashlib.scrypt(
                password.encode(), salt=_unb64(salt), n=int(n), r=int(r), p=int(p), dklen=32
            )
        elif kind == "pbkdf2_sha256":
            iterations, salt, digest = fields
            got = hashlib.pbkdf2_hmac("sha256", password.encode(), _unb64(salt), int(iterations))
        else:
            return False
        return hmac.compare_digest(got, _unb64(digest))
    except ValueError:
        return False


def main() -> None:
    """Print the hash of a password typed twice."""
    first = getpass.getpass("Dashboard password: ")
    if not first or first != getpass.getpass("Again: "):
        raise SystemExit("The two passwords differ (or are empty); nothing printed.")
    print(hash_password(first))


if __name__ == "__main__":
    main()

"""The ``[web]`` section: the operator's dashboard served beside the bot."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator

from bot.settings.base import Section


class WebSettings(Section):
    """The dashboard: off unless enabled; on 127.0.0.1 unless told otherwise."""

    enabled: bool = Field(False, description="Serve the web dashboard (`selftune run`).")
    listen: str = Field(
        "127.0.0.1", description="Address to bind; put a TLS proxy in front for another host."
    )
    port: int = Field(8765, ge=1, le=65535, description="Port to bind.")
    public_url: str | None = Field(
        None,
        description="Base URL in login links, e.g. 'https://bot.example.com' (default: "
        "http://listen:port).",
    )
    password_hash: SecretStr | None = Field(
        None,
        description="Log in with a password too: `python -m bot.web.passwords` prints the hash "
        "(scrypt or pbkdf2_sha256). None: only one-time links from /dashboard.",
    )
    secret_key: SecretStr | None = Field(
        None,
        description="Key that signs links and sessions (or SELFTUNE_WEB__SECRET_KEY); None: a "
        "random key kept in the data dir (web-secret.key).",
    )
    metrics_token: SecretStr | None = Field(
        None, description="Bearer token that lets a scraper read /metrics without a session."
    )
    link_ttl_s: int = Field(600, ge=30, le=86400, description="Seconds a login link is valid.")
    session_ttl_s: int = Field(
        43200, ge=300, le=2592000, description="Seconds a dashboard session lasts."
    )
    secure_cookies: bool = Field(
        False, description="Mark the session cookie Secure (when served over https)."
    )
    login_attempts_per_minute: int = Field(
        5, ge=1, le=1000, description="Failed logins allowed per client address per minute."
    )

    @field_validator("public_url")
    @classmethod
    def _no_trailing_slash(cls, value: str | None) -> str | None:
        return value.rstrip("/") if value else value

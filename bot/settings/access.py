"""The ``[access]`` section: who the bot answers, and where.

Admins (``admins``) are always answered. A user refused here gets one short notice and nothing
else: their messages are not stored or answered and their 👍/👎 presses are refused.
``/block`` and ``/unblock`` (and the dashboard's Users page) block user keys at run time, in the
database; the lists below are the configuration's part, read at start-up.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from bot.settings.base import Section


def check_keys(value: list[str]) -> list[str]:
    """Each entry must look like a key: ``platform:id`` (``telegram:42``, ``discord:-100``)."""
    for key in value:
        platform, _, ident = key.partition(":")
        if not platform or not ident:
            raise ValueError(f"{key!r} is not a key like 'telegram:42'")
    return value


class AccessSettings(Section):
    """Allow and block lists of user and chat keys, and whether private chats are served."""

    allow_users: list[str] = Field(
        default_factory=list,
        description="User keys the bot answers, e.g. 'telegram:42'; empty: everyone.",
    )
    block_users: list[str] = Field(
        default_factory=list,
        description="User keys the bot never answers (/block adds more, in the database).",
    )
    allow_chats: list[str] = Field(
        default_factory=list,
        description="Group chat keys the bot answers in, e.g. 'telegram:-100123' or "
        "'discord:<channel id>'; empty: every group. Private chats: see private_chats.",
    )
    private_chats: bool = Field(
        True, description="Answer in private chats (DMs); admins are always answered."
    )

    @field_validator("allow_users", "block_users", "allow_chats")
    @classmethod
    def _keys(cls, value: list[str]) -> list[str]:
        return check_keys(value)

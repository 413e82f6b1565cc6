"""The ``[serving]`` section: which roles this process takes when several serve one database.

A role is a part of serving: ``console``, ``schedule``, ``telegram-polling`` and ``discord`` are
exclusive (one process at a time holds each); ``telegram-webhook`` is shared (every process
behind the load balancer takes it). On SQLite one process serves a data dir and holds them all.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from bot.settings.base import Section

EXCLUSIVE_ROLES = ("console", "schedule", "telegram-polling", "discord")
SHARED_ROLES = ("telegram-webhook",)
_SHARD = re.compile(r"discord-shard-\d+")  # one process per shard (exclusive per number)


def is_role(name: str) -> bool:
    """Whether ``name`` is a role a process can take."""
    return name in EXCLUSIVE_ROLES or name in SHARED_ROLES or bool(_SHARD.fullmatch(name))


def is_exclusive(name: str) -> bool:
    """Whether at most one process may hold the role."""
    return name not in SHARED_ROLES


class ServingSettings(Section):
    """Roles of this serving process on a shared (PostgreSQL) database."""

    roles: list[str] = Field(
        default_factory=list,
        description="Roles this process takes: console, schedule, telegram-polling, "
        "telegram-webhook, discord, discord-shard-<n>. Empty: every role its configuration "
        "serves, leaving out an exclusive one another process holds. Listed: each one must be "
        "had, or start-up fails.",
    )
    when_taken: Literal["fail", "skip"] | None = Field(
        None,
        description="An exclusive role another process holds: 'fail' (stop with a message) "
        "or 'skip' (run without it). Unset: 'fail' for listed roles, 'skip' otherwise.",
    )

    @field_validator("roles")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        for name in value:
            if not is_role(name):
                raise ValueError(
                    f"{name!r} is not a role (console, schedule, telegram-polling, "
                    "telegram-webhook, discord, discord-shard-<n>)"
                )
        return value

    @property
    def on_taken(self) -> Literal["fail", "skip"]:
        """What a role held elsewhere means for this process."""
        if self.when_taken is not None:
            return self.when_taken
        return "fail" if self.roles else "skip"

"""selftune on Discord (discord.py 2, imported only in this package).

- ``adapter``: ``DiscordAdapter`` (the client inside the shared event loop, start-up errors)
- ``sdk``: discord.py, imported in one place with its import-time warning silenced
- ``incoming``: message/interaction → Incoming (chat keys, addressing, text, admin role)
- ``messages``: which messages to answer, and answering them (streamed, split)
- ``replies``: Discord's side of the shared reply stream (``adapters.streaming``): 2000-character
  pieces, the 👍/👎 view, the edit window per channel, the typing indicator
- ``rating``: the persistent 👍/👎 buttons (``ui.DynamicItem``)
- ``slash``: slash commands from the core's command table
- ``private``: the core's private messages to a user (training progress) by DM
- ``shards``: which shard gets a server's events, the sharded client's options
"""

from adapters.discord.adapter import DiscordAdapter, DiscordStartupError

__all__ = ["DiscordAdapter", "DiscordStartupError"]

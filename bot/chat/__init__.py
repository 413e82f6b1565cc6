"""The conversation core: one incoming message in, a streamed reply out, ratings stored.

- ``service.py``: ``ChatService`` — store the message → fit the prompt → stream → store the reply;
  ``rate`` (one vote per user per reply); commands are handed to the command router
- ``prompt.py``: stored history → chat turns → fitted to the context window by tokens
- ``ratelimit.py``: the per-user message limit
"""

from bot.chat.service import ChatService

__all__ = ["ChatService"]

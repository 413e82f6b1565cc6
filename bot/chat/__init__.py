"""The conversation core: one incoming message in, a streamed reply out, ratings stored.

- ``service.py``: ``ChatService`` — store the message → fit the prompt → stream → store the reply;
  commands are handed to the ``route`` callable it is given (``bot.commands.router``)
- ``rating.py``: ``rate`` — one vote per user per reply; the rating buttons and /good, /bad
- ``prompt.py``: stored history → chat turns → fitted to the context window by tokens
- ``ratelimit.py``: the per-user message limit
"""

from bot.chat.service import ChatService

__all__ = ["ChatService"]

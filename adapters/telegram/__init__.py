"""selftune on Telegram (python-telegram-bot 22, imported only in this package).

- ``adapter``: ``TelegramAdapter`` (lifecycle, updates, button presses, the core's notices)
- ``app``: PTB's Application as the adapter uses it (build, initialise, receive, command menu)
- ``bot_api``: the Bot API calls, patient with flood control, falling back to plain text
- ``format``: the model's Markdown as Telegram HTML, and Telegram-sized pieces
- ``stream``: Telegram's side of the shared reply stream (``adapters.streaming``)
- ``updates``: Telegram objects ↔ the core's values (Incoming, chat keys, 👍/👎 keyboards)
"""

from adapters.telegram.adapter import TelegramAdapter
from adapters.telegram.app import TelegramStartupError

__all__ = ["TelegramAdapter", "TelegramStartupError"]

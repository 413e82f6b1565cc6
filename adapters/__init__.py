"""Platforms: each holds the chat core (composition) and speaks its platform's protocol.

- ``base.py``: the ``Adapter`` and ``ChatCore`` protocols, rating tokens, text splitting
- ``streaming.py``: showing a reply while it is written (drafts, paced edits, pieces, the final
  text with 👍/👎) and the in-flight drain at shutdown, shared by every chat platform
- ``console.py``: the terminal chat
- ``telegram/``: python-telegram-bot 22 (imported only there)
- ``discord/``: discord.py 2 (imported only there)

Adapters import from the core only ``bot.types``, ``bot.errors``, their own settings section and
``bot.commands.table``; everything else they ask of the core goes through ``ChatCore``.
"""

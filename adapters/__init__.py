"""Platforms: each holds the chat core (composition) and speaks its platform's protocol.

- ``base.py``: the ``Adapter`` and ``ChatCore`` protocols, rating tokens, text splitting, pacing
- ``console.py``: the terminal chat
- ``telegram/``: python-telegram-bot 22 (imported only there)
- ``discord/``: discord.py 2 (imported only there)
"""

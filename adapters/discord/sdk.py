"""discord.py, imported in one place with its single import-time warning silenced.

discord.py imports the standard library's ``audioop`` for voice (unused here), which Python 3.11
deprecates with a DeprecationWarning at import; the test suite treats warnings as errors. Every
Discord module imports the SDK from here, so whichever is imported first imports it quietly.
"""

from __future__ import annotations

import warnings

with warnings.catch_warnings():
    warnings.filterwarnings(
        "ignore", message="'audioop' is deprecated", category=DeprecationWarning
    )
    import discord
    from discord import app_commands, ui

# The bot never joins voice: discord.py's warnings about missing voice libraries would only
# puzzle the operator.
discord.VoiceClient.warn_nacl = discord.VoiceClient.warn_dave = False

__all__ = ["app_commands", "discord", "ui"]

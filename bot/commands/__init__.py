"""Chat commands, the same on every platform.

- ``table.py``: the command table, each command declared once (``CommandSpec``: name, help,
  admin, private, the handler's ``module:function``), parsing of ``/name@bot args``, the help text
- ``context.py``: ``CommandContext``, what handlers may use (built in ``bot/app.py``)
- ``router.py``: routes a parsed command to its handler, with the admin check and the privacy
  the spec declares; a ``UserError`` becomes a notice
- ``conversation.py``: the commands every user has (start, help, new, persona, good, bad,
  forget, optout, optin)
- ``learning.py``: the admin commands of the learning loop (finetune, status, adapters,
  rollback, activate, ab, stats)
- ``args.py``: strict parsing of the arguments: version numbers (ASCII digits, bounded) and
  shares, for the chat commands and the CLI alike
- ``views.py``: how adapter versions are shown (also by the CLI)
- ``charts.py``: the /stats chart (matplotlib, imported only here)
- ``docs.py``: ``python -m bot.commands.docs`` writes README's command table
"""

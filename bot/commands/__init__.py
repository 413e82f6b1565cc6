"""Chat commands, the same on every platform.

- ``table.py``: the command table (one ``CommandSpec`` per command: name, help, admin, private,
  handler), parsing of ``/name@bot args``, the help text
- ``router.py``: routes a parsed command to its handler, with the admin check
- ``learning.py``: the admin commands of the learning loop (finetune, status, adapters, rollback,
  activate, ab, stats)
- ``charts.py``: the /stats chart (matplotlib, imported only here)
"""

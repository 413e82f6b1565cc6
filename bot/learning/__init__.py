"""The learning loop's orchestration, without torch: what to train on, when, and what goes live.

Nothing is imported here: the trainer child process imports a few of these modules and must not
load storage.

- ``finetune.py``: ``Finetuner`` — curate → lock → run the trainer → release
- ``curation.py``: which rated exchanges a run uses (as ``Row``s, and the report why), the
  held-out split
- ``dataset.py``: rows written as JSONL in TRL's format
- ``protocol.py``: what the parent and the trainer child say to each other: ``TrainingSpec``
  (SPEC.json), the events ``Start``/``Phase``/``Step``/``Done``/``Error`` (``to_json`` and
  ``parse``), ``TrainResult``
- ``trainer_process.py``: the child process ``python -m bot.trainer`` at low priority
- ``progress.py``: trainer events → progress messages and the /status view
- ``evaluation.py``: the gate's metrics (one registry, ``GATE_METRICS``) and decision
- ``release.py``: register a trained version, let the gate decide, swap it in (or an A/B test)
- ``versions.py``: ``AdapterVersions`` — the serving LoRA follows the database's active version
- ``ab.py``, ``ab_stats.py``: A/B tests (start, promote, retire) and their statistics
- ``schedule.py``: training every N hours or after M new ratings
"""

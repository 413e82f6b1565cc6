"""The training child process, ``python -m bot.trainer SPEC.json`` (torch).

Nothing is imported here. ``__main__.py`` runs ``run.main``.

- ``run.py``: ``train`` — load the base with a fresh LoRA, fit, score the held-out rows, save
  atomically (``<output>.partial`` renamed at the end); the event emitter
- ``examples.py``: dataset rows → tokenized examples (loss on the reply and its end of turn)
- ``inputs.py``: the split into train / held-out / dropped, and the data report
- ``loop.py``: the optimizer loop, SFT steps, scoring, bf16 autocast
- ``kto.py``: KTO's loss and reference log-probs; ``lm.py``: the optional self-supervised term
- ``scoring.py``: held-out metrics of the base, the serving LoRA and the candidate
"""

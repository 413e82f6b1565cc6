"""The llama.cpp / ggml engine: the second in-process engine, on ``llama_cpp`` (no torch).

Nothing is imported here, so ``import bot.ggml.x`` loads only what ``x`` needs. This package is
the only place that imports ``llama_cpp``.

- ``convert.py``: the serving model and its PEFT LoRA adapters as llama.cpp GGUF files
  (``model_gguf``, ``lora_gguf``), written once with ``gguf`` and numpy
"""

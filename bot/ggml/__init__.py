"""The llama.cpp / ggml engine: the second in-process engine, on ``llama_cpp`` (no torch).

Nothing is imported here, so ``import bot.ggml.x`` loads only what ``x`` needs. This package is
the only place that imports ``llama_cpp``.

- ``generator.py``: ``LlamaCppGenerator``, the Generator the core talks to (``model.engine``)
- ``engine.py``: ``LlamaEngine``, the thread that decodes every running reply together
- ``rows.py``: requests, rows, one lane (a llama.cpp context) per adapter, kept prompt prefixes
- ``threads.py``: ``ThreadTuner``, each lane's thread count per step by measured decode time
- ``llama.py``: the few llama.cpp C calls the engine makes
- ``sampling.py``: per-row sampling in numpy, with transformers' semantics
- ``text.py``: the tokenizer, chat template and streamed text (transformers' fast tokenizer)
- ``convert.py``: the serving model and its PEFT LoRA adapters as llama.cpp GGUF files
  (``model_gguf``, ``lora_gguf``), written once with ``gguf`` and numpy
"""

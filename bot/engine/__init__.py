"""The local model (torch): a transformers causal LM with LoRA slots and its decode engine.

Nothing is imported here, so ``import bot.engine.x`` loads only what ``x`` needs.

- ``generator.py``: ``TransformersGenerator``, the Generator the core talks to
- ``core.py``: ``DecodeEngine``, the thread that decodes every running reply together
- ``batch.py``: the running rows and one decoding step
- ``prefill.py``: prompts in, with prefix reuse
- ``kv_cache.py``, ``attention.py``: the batched KV cache and row-exact attention
- ``slots.py``: named LoRA slots (default, an A/B candidate) routed per row
- ``lora.py``: LoRA config, wrapping a model, reading and hot-swapping LoRA weights
- ``packed.py``: bfloat16 linears packed for oneDNN on a CPU
- ``runtime.py``: device, dtype and chat-template helpers shared with the trainer
- ``tokenizer.py``: the tokenizer alone (the OpenAI backend counts tokens with it)
- ``convert.py``: GGUF → safetensors conversion (called by :mod:`bot.generation.source`)
"""

"""A tiny chat model for tests: a 2-layer Llama and a byte-level BPE tokenizer, made offline.

It talks nonsense, but it has everything the real default model has that selftune relies on:
a ChatML chat template (with a default system prompt, like SmolLM2's), ``<|im_end|>`` as
end of turn, a generation config, and LoRA target modules named ``q_proj``... ``o_proj``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from bot.app import Core, build_core
from bot.engine.generator import TransformersGenerator
from bot.learning.trainer_process import Trainer
from bot.settings import Settings

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a tiny test model.<|im_end|>\\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
_SENTENCES = [
    "the sea is calm and blue under the warm sun",
    "a small boat with a white sail left the harbour in the morning",
    "waves and wind and a storm over the deep cold water at night",
    "fish swim near the reef while a whale sings and gulls cry above the shore",
    "hello hi thanks thank you please yes no maybe sure good bad great fine well",
    "how what why where when who which tell me about it and explain or describe",
    "a short story a long poem a song a question an answer from a friend",
    "the assistant can help the user learn and the model will train on what you like",
    "is are was were be been am do does did have has had can could will would should may",
]
_MULTIBYTE = ["café naïve façade", "Привет, как дела?", "日本語のテキスト", "🌊🐟⛵ emoji"]
TINY_VOCAB_SIZE = 640


def _corpus() -> list[str]:
    # Deterministic: every sentence and every pair of sentences, so BPE learns merges across them.
    pairs = [f"{a}, {b}!" for a in _SENTENCES for b in _SENTENCES]
    return _SENTENCES * 5 + pairs + _MULTIBYTE


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (every UTF-8 string encodes) with a ChatML template."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_corpus(), trainer)
    tokenizer = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=backend,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_model(path: Path, *, seed: int = 0) -> Path:
    """Save a tiny Llama chat model (weights, tokenizer, generation config) to ``path``."""
    tokenizer = build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        # Ten times the usual init scale: peaked logits make greedy decoding robust to rounding
        # (batched == solo) and let a random LoRA adapter visibly change the output.
        initializer_range=0.2,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(  # type: ignore[no-untyped-call]
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
    )
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def tiny_settings(
    settings: Settings, model_dir: Path, *, max_new_tokens: int, **training: Any
) -> Settings:
    """``settings`` for the tiny model at ``model_dir`` (its conversions cached beside it, in the
    test's temp dirs): float32, a 256-token context, greedy replies of at most
    ``max_new_tokens`` tokens, training in batches of 2 with ``training``'s other values
    (epochs, max_length, ...), and a gate that serves a candidate it cannot judge (a few ratings
    are too few for it)."""
    return settings.model_copy(
        update={
            "model": settings.model.model_copy(
                update={
                    "name": str(model_dir),
                    "dtype": "float32",
                    "max_context_tokens": 256,
                    # its GGUF (the llama.cpp engine) beside it, not in the user's cache
                    "cache_dir": model_dir.parent / "converted",
                }
            ),
            "generation": settings.generation.model_copy(
                update={"temperature": 0.0, "max_new_tokens": max_new_tokens}
            ),
            "training": settings.training.model_copy(update={"batch_size": 2, **training}),
            "gate": settings.gate.model_copy(update={"when_undecided": "activate"}),
        }
    )


async def tiny_core(settings: Settings, trainer: Trainer | None = None) -> Core:
    """The real core on the real engine loading ``settings.model`` (the tiny one), training with
    ``trainer`` (by default the real subprocess trainer)."""
    generator = await TransformersGenerator.load(settings.model, settings.lora)
    return await build_core(
        settings, generator=generator, model_dir=generator.model_dir, trainer=trainer
    )

"""Settings sections of the learning loop: LoRA, training, the gate, A/B tests, the schedule."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from bot.settings.base import Section, known_device

ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoraSettings(Section):
    """Fixed per deployment: every adapter version has this shape, so any of them hot-swaps."""

    r: int = Field(16, ge=1, le=256, description="LoRA rank.")
    alpha: int = Field(32, ge=1, description="LoRA scaling (alpha / r multiplies the update).")
    # Off by default: on the reference CPU its random masks (one per LoRA layer and pass) took
    # 28 % of a training step (3.47 -> 2.49 s, SmolLM2-135M, batch 8, bf16 autocast).
    dropout: float = Field(
        0.0, ge=0.0, lt=1.0, description="LoRA dropout while training (0 = off: faster)."
    )
    # Every linear layer of a Llama-style block (issue 10): a taste shows in what is said (the
    # MLPs) as much as in what is attended to. A deployment that changes this shape can no
    # longer hot-swap the adapters trained before.
    target_modules: list[str] = Field(
        default_factory=lambda: list(ALL_LINEAR),
        description="Modules that get LoRA weights.",
    )


class TrainingSettings(Section):
    """The ``[training]`` table: hyperparameters and resources of a fine-tuning run."""

    epochs: float = Field(2.0, gt=0.0, description="Passes over the training rows.")
    learning_rate: float = Field(1e-3, gt=0.0, lt=1.0, description="Peak learning rate.")
    schedule: Literal["constant", "linear"] = Field(
        "constant", description="Learning rate over the run: constant, or decaying linearly to 0."
    )
    batch_size: int = Field(8, ge=1, description="Examples per optimizer step.")
    max_length: int = Field(512, ge=32, description="Tokens per training example.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many steps.")
    max_examples: int = Field(2000, ge=1, description="Most recent rated exchanges used.")
    min_examples: int = Field(1, ge=1, description="Liked exchanges needed to train.")
    seed: int = Field(0, description="Random seed of a training run.")
    nice: int = Field(
        19,
        ge=0,
        le=19,
        description="Scheduling priority of the trainer (19, the lowest: replies first; it "
        "still gets every idle cycle).",
    )
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="Training precision; auto uses bfloat16 autocast where supported."
    )
    method: Literal["auto", "kto", "sft"] = Field(
        "auto",
        description="kto: learn from 👍 and 👎 (KTO); sft: imitate 👍 only; auto: KTO when there "
        "are at least kto_min_disliked 👎, else SFT.",
    )
    kto_min_disliked: int = Field(
        10, ge=1, description="Fewest 👎 for KTO under method = auto; fewer: SFT on the 👍."
    )
    beta: float = Field(
        0.1, gt=0.0, le=10.0, description="KTO's beta: how far the adapter may move from the base."
    )
    sft_weight: float = Field(
        3.0,
        ge=0.0,
        le=10.0,
        description="Weight of the 👍 replies' NLL next to KTO's loss in a KTO run (0 = KTO "
        "alone): the liked replies are imitated, the disliked pushed down.",
    )
    anchor_weight: float = Field(
        1.0,
        ge=0.0,
        le=100.0,
        description="Weight of the anchor in a KTO run: the KL from the base model's next-token "
        "distribution to the adapter's, per reply token, so the ratings change what they agree "
        "on and little else (0 = off).",
    )
    anchor_free: Literal["nothing", "end", "rated"] = Field(
        "rated",
        description="What the anchor leaves to the ratings: nothing; the end of turn (how long "
        "replies are); or that and the tokens 👍 and 👎 replies use at different rates (a "
        "list's dashes, a question mark, the first person).",
    )
    pair_weight: float = Field(
        1.0,
        ge=0.0,
        le=10.0,
        description="Weight of the DPO loss on preference pairs (a regenerated or corrected "
        "reply against the one it replaced), next to the ratings' loss (0 = pairs unused).",
    )
    max_per_user: int = Field(
        200, ge=1, description="Most ratings of one user per run (their newest): nobody dominates."
    )
    lm_weight: float = Field(
        0.0,
        ge=0.0,
        le=10.0,
        description="Weight of a self-supervised term: next-token loss on the users' messages "
        "of unrated exchanges (0 = off).",
    )
    lm_max_examples: int = Field(500, ge=1, description="Most unrated exchanges for that term.")
    device: str = Field(
        "auto",
        description="Where the trainer trains: auto (the first CUDA GPU if there is one, else "
        "the CPU), cpu, cuda, cuda:1, ...",
    )
    runner: Literal["local", "queue"] = Field(
        "local",
        description="local: /finetune and the schedule train in a child process of the "
        "serving process; queue: they only queue a run, and a `selftune trainer` worker "
        "(on this machine or another one, same database) takes it.",
    )
    poll_s: float = Field(
        2.0, gt=0.0, description="How often a trainer worker looks for a queued run."
    )
    heartbeat_s: float = Field(
        5.0, gt=0.0, description="How often a trainer worker says it still holds its run."
    )
    stale_after_s: float = Field(
        60.0,
        gt=0.0,
        description="A worker's run with no heartbeat for this long is taken as abandoned "
        "(the worker was killed): the next worker requeues it and removes its partial output.",
    )
    max_attempts: int = Field(
        3, ge=1, description="Times a run is taken by a worker before it fails for good."
    )
    watch_interval_s: float = Field(
        5.0,
        ge=0.0,
        description="How often a serving process checks for a new active adapter version (or "
        "a /rollback elsewhere) and for ended queued runs to report (0 = never).",
    )

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        return known_device(value)


# The gate metrics' names; bot.learning.evaluation.GATE_METRICS says what each one is.
GateMetricName = Literal["preference_accuracy", "liked_nll", "reward_margin"]


# Everyday requests no user's taste is about. The damage check runs on these, not on the users'
# own prompts: there the replies the bot writes now are what the ratings ask to change (a "short
# replies" taste made the serving adapter's long greedy replies 11.8-13.4 % less likely while the
# base's replies to neutral prompts rose 7 %, bench/taste.py). Not the bench's neutral prompts.
GENERAL_PROMPTS = (
    "What is the boiling point of water?",
    "Can you recommend a book for a long train ride?",
    "How do plants make their food?",
    "What is a healthy breakfast?",
    "Explain what a computer does.",
    "How many days are in a leap year?",
    "What should I pack for a weekend trip?",
    "Tell me something interesting about the ocean.",
    "How can I get better at remembering names?",
    "What is the difference between weather and climate?",
    "Thanks for your help!",
    "Write one sentence about autumn.",
)


class GateSettings(Section):
    """A new adapter goes live only if the held-out ratings say it is not worse."""

    enabled: bool = Field(True, description="Evaluate candidates before they go live.")
    metric: GateMetricName = Field(
        "reward_margin",
        description="What decides: KTO's reward margin (log-prob gain over the base on 👍 "
        "minus that on 👎); the share of (👍, 👎) pairs ranked right by per-token "
        "log-probability; or NLL per token of 👍 replies.",
    )
    margin: float = Field(
        0.02, ge=0.0, description="How much worse than the serving adapter a candidate may be."
    )
    min_gain: float = Field(
        0.02,
        ge=0.0,
        description="How much better than the base model a candidate must be on the metric: "
        "one that has not learned the ratings is not called better.",
    )
    max_nll_rise: float = Field(
        0.10,
        ge=0.0,
        description="Most the liked replies' NLL per token may rise over the serving "
        "adapter's (a share: 0.10 = 10 %): more is damage, and the candidate fails.",
    )
    heldout_fraction: float = Field(
        0.2,
        ge=0.0,
        lt=1.0,
        description="Share of rated replies held out for evaluation, never trained on (chosen "
        "by a stable hash of the exchange's text).",
    )
    heldout_max: int = Field(200, ge=1, description="Most held-out rows evaluated per run.")
    min_heldout: int = Field(
        8, ge=1, description="Fewer held-out rows than this: the gate cannot judge."
    )
    heldout_floor: int = Field(
        2,
        ge=0,
        description="A young bot (too few ratings for min_heldout) holds out heldout_fraction "
        "of its rated replies, at least this many, so its first runs can be judged and go "
        "live; 0 = no young gate: runs wait for /activate until min_heldout is reached.",
    )
    sample_prompts: int = Field(
        16,
        ge=0,
        description="Held-out prompts the serving adapter (before training) and the candidate "
        "answer, sampled as users are served (generation.temperature, top_p, max_new_tokens): "
        "a reward model learned from the run's ratings predicts the 👍 share of each one's "
        "replies, and the candidate's must be min_share_gain above. 0 = off.",
    )
    general_prompts: list[str] = Field(
        default_factory=lambda: list(GENERAL_PROMPTS),
        description="Prompts no taste is about, asked with chat.system_prompt: the base "
        "model's greedy replies to them must not become more than max_general_nll_rise less "
        "likely under the candidate (damage to what the bot says in general), in every run the "
        "gate judges. [] = not checked.",
    )
    # Calibrated against the taste bench's damage check (its own 8 neutral prompts, bound 10 %):
    # on the same 12 candidates these longer replies read 1-5.5 points higher (+12.7 % here for
    # +7.2 % there; +19.7 % for +15.4 %), so 15 % here is about the bench's 10 %.
    max_general_nll_rise: float = Field(
        0.15,
        ge=0.0,
        description="Most the NLL per token of the base's replies to general_prompts may rise "
        "under the candidate (a share: 0.15 = 15 %): more is damage, and the candidate fails.",
    )
    samples_per_prompt: int = Field(3, ge=1, description="Sampled replies per such prompt.")
    min_share_gain: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="How much higher the reward model's predicted 👍 share of the candidate's "
        "sampled replies must be than of the serving adapter's (0.05 = 5 points; 0 = not lower: "
        "a candidate that writes as before then fails about half the time, by chance — it has "
        "not shown a visible change).",
    )
    min_reward_auc: float = Field(
        0.7,
        ge=0.5,
        le=1.0,
        description="How well the reward model must rank the held-out ratings (AUC) for its "
        "prediction to count; below, or without 👍 and 👎 to learn from, only the damage "
        "on general_prompts is checked.",
    )
    when_undecided: Literal["activate", "keep"] = Field(
        "keep",
        description="When the gate cannot judge (too few held-out rows): serve the candidate "
        "anyway, or keep it ready for /activate.",
    )


class ABSettings(Section):
    """Serve a candidate to some chats first and compare 👍-rates before promoting it."""

    share: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Share of chats a candidate that passed the gate is served to first "
        "(0 = it goes live for everyone at once).",
    )
    alpha: float = Field(
        0.05, gt=0.0, lt=1.0, description="Significance level of the 👍-rate comparison."
    )


class ScheduleSettings(Section):
    """Training on its own; the same lock as /finetune, so never two at once."""

    every_hours: float = Field(0.0, ge=0.0, description="Train every N hours (0 = off).")
    after_ratings: int = Field(
        0, ge=0, description="Train after this many new ratings since the last run (0 = off)."
    )
    check_interval_s: float = Field(60.0, gt=0.0, description="How often to check.")
    notify_chats: list[str] = Field(
        default_factory=list,
        description="Chat keys told about scheduled runs, e.g. 'telegram:42' (a private chat).",
    )

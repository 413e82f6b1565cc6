"""What a candidate visibly writes: its sampled replies to held-out prompts, judged by a reward
model learned from the run's own ratings.

Log-probabilities of stored replies (bot.learning.evaluation) say whether a candidate ranks 👍
above 👎; they do not say whether what it now *writes* is what users like. A candidate can
separate the held-out ratings and still write fewer liked replies than before (measured in
bench/taste.py: a "bulleted list" taste whose candidate passed on reward margin while its share
of lists fell from 18.8 % to 8.3 %). So the trainer also:

- fits a reward model on the rated training rows: an L2 logistic regression on the base model's
  final hidden states of each reply (their mean, and the states at the reply's last two tokens),
  the linear probe of the reward-modelling literature on a frozen model, which costs no extra pass
  (the states come from the base pass the trainer makes anyway). On bench/taste.py's ratings it
  ranks held-out ratings with AUC 0.80–1.00 (``reward_auc``, printed per run by bench/taste.py);
- checks it on the held-out ratings (its AUC); a reward model that cannot rank them says nothing,
  and its numbers are left out;
- samples replies to the held-out prompts from the serving adapter before training and from
  the candidate after, the same way (prompts, temperature, length, seed), and predicts the 👍
  share of each: the stored replies would not do as the other side, as they were written under
  other settings (their predicted share sits at another level; measured on bench/taste.py's
  "bulleted list" ratings);
- keeps the base model's greedy replies to general prompts no taste is about
  (``gate.general_prompts``) and scores them under the candidate: their NLL rise is the damage
  to what the bot says in general (the bench's check, on prompts of its own). Not on the users'
  prompts: there the replies the bot writes now are what the ratings ask to change (a "short
  replies" candidate made the serving adapter's own long replies 11.8-13.4 % less likely, and the
  check failed it, while the base's replies to neutral prompts rose 7 %).

The gate (bot.learning.evaluation.decide) reads the numbers as ``liked_share`` (serving and
candidate metrics) and ``general_nll`` (base and candidate metrics).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bot.learning.protocol import SampleSpec
from bot.trainer.examples import IGNORE, Example
from bot.trainer.loop import Forward, Runtime, score, use_attention


@dataclass(frozen=True)
class Ends:
    """The ids that end a sampled reply, and the one a stored reply ends with."""

    stop: frozenset[int]
    end_of_turn: int


L2 = 0.01  # the probe's penalty on standardised features (0.001–0.1 measured alike)


def reply_features(out: Forward) -> torch.Tensor:
    """Per row: the mean of its reply's hidden states, and the states that predict its last two
    tokens (the reply's end: a question mark, a list's last line, the end of turn)."""
    if out.hidden is None:
        raise ValueError("the forward pass kept no hidden states")
    rows = []
    for states in torch.split(out.hidden.float(), out.labelled.sum(-1).tolist()):
        last = states[-1]
        before = states[-2] if len(states) > 1 else last
        rows.append(torch.cat([states.mean(0), last, before]))
    return torch.stack(rows).cpu()


class FeatureSink:
    """A ``keep`` callback for bot.trainer.loop.score that collects each row's features."""

    def __init__(self) -> None:
        self.parts: list[torch.Tensor] = []

    def __call__(self, out: Forward) -> None:
        self.parts.append(reply_features(out))

    def features(self) -> torch.Tensor:
        return torch.cat(self.parts) if self.parts else torch.zeros(0, 0)


def base_features(model: object, examples: Sequence[Example], rt: Runtime) -> list[torch.Tensor]:
    """Features of ``examples`` under the base model (the adapters off)."""
    sink = FeatureSink()
    with model.disable_adapter():  # type: ignore[attr-defined]
        score(model, examples, rt, sink)
    return list(sink.features())


@dataclass(frozen=True)
class RewardModel:
    """A logistic regression on standardised reply features: P(👍 | reply)."""

    mean: torch.Tensor
    scale: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor

    @classmethod
    def fit(cls, features: torch.Tensor, labels: Sequence[bool]) -> RewardModel | None:
        """Fitted on rows of both labels, or None without them."""
        y = torch.tensor([1.0 if label else 0.0 for label in labels])
        if len(y) < 4 or y.sum() == 0 or y.sum() == len(y):
            return None
        mean, scale = features.mean(0), features.std(0) + 1e-6
        x = (features - mean) / scale
        weight = torch.zeros(x.shape[1], requires_grad=True)
        bias = torch.zeros(1, requires_grad=True)
        optimizer = torch.optim.LBFGS([weight, bias], max_iter=200)

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = F.binary_cross_entropy_with_logits(x @ weight + bias, y)
            loss = loss + L2 * (weight * weight).sum()
            loss.backward()  # type: ignore[no-untyped-call]
            return loss

        with torch.enable_grad():
            optimizer.step(closure)  # type: ignore[no-untyped-call]
        return cls(mean, scale, weight.detach(), bias.detach())

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """P(👍) of each row."""
        return torch.sigmoid(((features - self.mean) / self.scale) @ self.weight + self.bias)


def auc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """The chance that a random 👍 row scores above a random 👎 one (ties half); None without
    both labels."""
    liked = [s for s, label in zip(scores, labels, strict=True) if label]
    disliked = [s for s, label in zip(scores, labels, strict=True) if not label]
    if not liked or not disliked:
        return None
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in liked for b in disliked)
    return wins / (len(liked) * len(disliked))


def prompts_of(heldout: Sequence[Example], most: int) -> list[list[int]]:
    """The distinct prompts of the held-out rows, in order, at most ``most``."""
    seen: dict[tuple[int, ...], None] = {}
    for example in heldout:
        seen.setdefault(tuple(example.input_ids[: example.prompt_len]), None)
    return [list(p) for p in list(seen)[:most]]


def generate(
    model: object,
    prompts: Sequence[list[int]],
    spec: SampleSpec,
    ends: Ends,
    rt: Runtime,
    *,
    greedy: bool,
    seed: int,
) -> list[Example]:
    """Replies of the adapter active now to ``prompts`` (``spec.per_prompt`` each when sampled,
    one when greedy), as labelled Examples ending with the end-of-turn token."""
    params = spec.params
    greedy = greedy or params.greedy  # a greedy bot's candidate answers greedily
    per = 1 if greedy else spec.per_prompt
    batch = [p for p in prompts for _ in range(per)]
    if not batch:
        return []
    width = max(len(p) for p in batch)
    ids = torch.tensor([[rt.pad_id] * (width - len(p)) + p for p in batch], device=rt.device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], device=rt.device)
    was_training = model.training  # type: ignore[attr-defined]
    model.eval()  # type: ignore[attr-defined]
    use_attention(model, width + params.max_new_tokens, rt)  # the same on either side
    try:
        # A random stream of its own (the CPU's and the model's device's): training draws the
        # same dropout with the check or without.
        with (
            _own_random(rt.device),
            torch.no_grad(),
            torch.autocast(rt.device.type, dtype=torch.bfloat16, enabled=rt.bf16),
        ):
            torch.manual_seed(seed)
            out = model.generate(  # type: ignore[attr-defined]
                input_ids=ids,
                attention_mask=mask,
                do_sample=not greedy,
                temperature=None if greedy else params.temperature,
                top_p=None if greedy else params.top_p,
                top_k=None if greedy or not params.top_k else params.top_k,
                repetition_penalty=params.repetition_penalty,
                max_new_tokens=params.max_new_tokens,
                pad_token_id=rt.pad_id,
                eos_token_id=sorted(ends.stop),
            )
    finally:
        model.train(was_training)  # type: ignore[attr-defined]
    examples = []
    for prompt, row in zip(batch, out[:, width:].tolist(), strict=True):
        reply = []
        for token in row:
            if token in ends.stop:
                break
            reply.append(int(token))
        reply.append(ends.end_of_turn)
        labels = [IGNORE] * len(prompt) + reply
        examples.append(Example(prompt + reply, labels, prompt_len=len(prompt)))
    return examples


def _own_random(device: torch.device) -> contextlib.AbstractContextManager[None]:
    """Restore the CPU's random state on exit, and that of ``device`` when it is an accelerator
    (``torch.manual_seed`` reseeds every device)."""
    if device.type == "cpu":
        return torch.random.fork_rng(devices=[])
    index = device.index if device.index is not None else 0
    return torch.random.fork_rng(devices=[index], device_type=device.type)


def nll_per_token(scores: Sequence[tuple[float, int]]) -> float | None:
    """Mean NLL per token of scored rows."""
    tokens = sum(t for _, t in scores)
    return -sum(logp for logp, _ in scores) / tokens if tokens else None


@dataclass(frozen=True)
class Numbers:
    """The check's numbers, for the base's, the serving adapter's and the candidate's metrics,
    and about the reward model."""

    base: dict[str, float]
    serving: dict[str, float]
    candidate: dict[str, float]
    info: dict[str, float]


class VisibleCheck:
    """The check's state through a run: features of the rated rows as the base passes see them,
    the base's greedy replies to general prompts, then the candidate's samples and the
    numbers. ``general``: those prompts' token ids (chat template applied). ``rated``: the run
    learns from 👍 and 👎 (KTO), so a reward model can be fitted and replies are sampled for it
    (``spec.prompts`` of them; 0: none); else only the damage on the general prompts is
    checked."""

    def __init__(
        self,
        spec: SampleSpec,
        ends: Ends,
        rt: Runtime,
        seed: int,
        general: Sequence[list[int]] = (),
        rated: bool = True,
    ) -> None:
        self.spec, self.ends, self.rt, self.seed = spec, ends, rt, seed
        self.general = list(general)
        self.sampling = rated and spec.prompts > 0
        self.train = FeatureSink()  # the training rows under the base (KTO's reference pass)
        self.heldout = FeatureSink()  # the held-out rows under the base (the baseline pass)
        self._said: list[Example] = []  # the base's greedy replies to the general prompts
        self._said_nll: float | None = None
        self._sampled = torch.zeros(0, 0)  # features of the serving adapter's sampled replies

    def base(self, model: object) -> None:
        """Call with the adapters off: keep the base's greedy replies to the general prompts
        and their NLL under it."""
        if not self.general:
            return
        said = generate(model, self.general, self.spec, self.ends, self.rt, greedy=True, seed=0)
        self._said, self._said_nll = said, nll_per_token(score(model, said, self.rt))

    def serving(self, model: object, heldout: Sequence[Example]) -> None:
        """Call with the serving adapter active (or the adapters off when none serves): keep
        the features of replies sampled from it as the candidate's will be (same prompts,
        settings and seed)."""
        if self.sampling:
            self._sampled = self._sample(model, heldout)

    def _sample(self, model: object, heldout: Sequence[Example]) -> torch.Tensor:
        """Features (under the base) of replies sampled from the adapter active now."""
        prompts = prompts_of(heldout, self.spec.prompts)
        replies = generate(
            model, prompts, self.spec, self.ends, self.rt, greedy=False, seed=self.seed
        )
        return torch.stack(base_features(model, replies, self.rt))

    def numbers(
        self,
        model: object,
        heldout: Sequence[Example],
        train: Sequence[Example],
    ) -> Numbers:
        """With the candidate active: the numbers of the base, serving and candidate, and the
        reward model's."""
        found = Numbers({}, {}, {}, {})
        if self._said and self._said_nll is not None:
            drift = nll_per_token(score(model, self._said, self.rt))
            if drift is not None:
                found.base["general_nll"] = self._said_nll
                found.candidate["general_nll"] = drift
        judge = self._judge(heldout, train, found.info) if self.sampling else None
        if judge is not None and len(self._sampled):
            sampled = self._sample(model, heldout)
            found.serving["liked_share"] = float(judge.predict(self._sampled).mean())
            found.candidate["liked_share"] = float(judge.predict(sampled).mean())
            found.info["sampled_replies"] = float(len(sampled))
        return found

    def _judge(
        self, heldout: Sequence[Example], train: Sequence[Example], info: dict[str, float]
    ) -> RewardModel | None:
        """The reward model, if the training rows fit one and it ranks the held-out ratings."""
        features = self.train.features()
        if len(features) != len(train) or len(self.heldout.features()) != len(heldout):
            return None
        judge = RewardModel.fit(features, [ex.label for ex in train])
        if judge is None:
            return None
        predicted = judge.predict(self.heldout.features()).tolist()
        ranked = auc(predicted, [ex.label for ex in heldout])
        if ranked is None:
            return None
        info["reward_auc"] = ranked
        return judge if ranked >= self.spec.min_auc else None

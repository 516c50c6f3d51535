"""Plan-aware generation: choose the best of several plans, repair its geometry, then draw.

GoT-R1 draws from whatever chain it sampled. Here, for each image:

1. **Plan candidates.** `PlanOptions.candidates` chains are sampled (stage 1 only) and scored with
   the chain stage of the dual reward (R_sem + R_spa, through the same judge objects GRPO uses);
   the best is kept (ties: the earliest sampled). With `PlanOptions.judge_noise` > 0 each
   candidate's score is perturbed by Gaussian noise of that standard deviation before choosing
   (a judge that disagrees with people, for measuring how much of the selection survives one);
   the records keep the judge's own scores beside the noised ones.
2. **Plan repair** (`PlanOptions.repair`): boxes are clamped to the grid and given a minimum size,
   the relations the prompt states (world prompts by the world grammar, other prompts as
   `gotr1 eval` parses T2I-CompBench's 2D-spatial ones) are made to hold by GenEval's position rule,
   and overlapping distinct objects are pushed apart. Only the box coordinates in the chain's text
   change; its prose stays.
3. **Drawing**: the image tokens are sampled with CFG, conditioned on the prompt and the chosen
   (repaired) chain, as the rollout's stage 2 is.

The result is a `Rollouts` batch like `Policy.rollout`'s, so every caller (the world benchmark,
`gotr1 generate`, the official layouts) handles it unchanged; its chain log-probs are not the
sampler's (the chain was chosen, not sampled), so it is for inference, not for GRPO. Each row's
record (`PlanRecord`) keeps the plan as sampled beside the one drawn.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from gotr1.boxes import relative_position
from gotr1.chain import BEGIN_OF_IMAGE, BOX_END, BOX_START, GRID, Chain, parse_chain
from gotr1.errors import ConfigError, UserError
from gotr1.eval.prompt_parsing import parse_spatial
from gotr1.policy.rollout import (
    Rollouts,
    chain_text,
    decode_images,
    generate_image_tokens,
    janus_parts,
    left_pad,
    sample_chains,
    special_ids,
)
from gotr1.rewards import DualStageReward, RewardConfig
from gotr1.world import parse_prompt

if TYPE_CHECKING:
    from gotr1.policy.policy import Policy
    from gotr1.policy.rollout import Rollouts, SamplingConfig

MIN_BOX = 60
"""The smallest side (grid units of 1000) a repaired box keeps."""

RELATION_WORDS = {
    "left": "left of",
    "right": "right of",
    "above": "above",
    "below": "below",
    "on the left of": "left of",
    "on the right of": "right of",
    "on the top of": "above",
    "on top of": "above",
    "on the bottom of": "below",
    "next to": "next to",
    "near": "next to",
    "on side of": "next to",
}
"""World relation keys and T2I-CompBench's phrases -> the relation a repair makes hold."""


@dataclass(frozen=True)
class PlanOptions:
    """How plans are chosen and repaired before drawing (the defaults: GoT-R1's own way)."""

    candidates: int = 1
    repair: bool = False
    judge_noise: float = 0.0
    """Standard deviation of the Gaussian noise added to each candidate's chain-stage score
    before the choice (0: the judge's own scores)."""

    def __post_init__(self) -> None:
        """Refuse unusable options (a `ConfigError` whose ``field`` is the option at fault)."""
        if self.candidates < 1:
            raise ConfigError(f"plan candidates must be >= 1, got {self.candidates}", "candidates")
        if not math.isfinite(self.judge_noise) or self.judge_noise < 0:
            raise ConfigError(
                f"plan judge noise must be a finite sigma >= 0, got {self.judge_noise}",
                "judge_noise",
            )
        if self.judge_noise > 0 and self.candidates < 2:
            raise ConfigError(
                "plan judge noise needs plan candidates > 1 (there is nothing to choose)",
                "judge_noise",
            )

    @property
    def active(self) -> bool:
        """Whether generation differs from sampling one chain and drawing it."""
        return self.candidates > 1 or self.repair

    def to_dict(self) -> dict[str, Any]:
        """The options as recorded beside generated images (judge_noise only when set, so the
        records of runs without it are unchanged)."""
        record = asdict(self)
        if not self.judge_noise:
            del record["judge_noise"]
        return record


NOISE_STREAM = 0x706C616E
"""Mixed into the evaluation seed for the judge-noise stream, so it never repeats sampling's."""


def judge_noise_generator(seed: int | None) -> np.random.Generator:
    """The random stream of the plan judge's noise for an evaluation seed (unseeded for None):
    a stream of its own, so adding noise leaves the sampled plans and images unchanged, and the
    same seed gives the same noise on any device."""
    if seed is None:
        return np.random.default_rng()
    return np.random.default_rng([int(seed) % 2**64, NOISE_STREAM])


@dataclass
class PlanRecord:
    """What happened to one row's plan: the chain as sampled, its chain-stage score (the judge's
    own), the repairs made (empty when none was needed or asked) and, with judge noise, the
    noised scores the choice was made by."""

    sampled_chain: str
    plan_score: float | None = None
    candidate_scores: list[float] = field(default_factory=list)
    candidate_index: int = 0
    repairs: list[str] = field(default_factory=list)
    noised_scores: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The record as written beside a generated image (noised_scores only with noise)."""
        record = asdict(self)
        if not self.noised_scores:
            del record["noised_scores"]
        return record


# ----------------------------------------------------------------------------------------------
# Repair
# ----------------------------------------------------------------------------------------------


def prompt_relations(prompt: str) -> list[tuple[str, str, str]]:
    """(first object, relation, second object) the prompt states, nouns as written: a world prompt
    by the world grammar, any other by T2I-CompBench's 2D-spatial parse; [] when none."""
    try:
        spec = parse_prompt(prompt)
    except ValueError:
        spec = None
    if spec is not None:
        if spec.relation is None or len(spec.objects) < 2:
            return []
        first, second = spec.objects[0], spec.objects[1]
        return [(first.shape, RELATION_WORDS[spec.relation], second.shape)]
    parsed = parse_spatial(prompt)
    if parsed is None or parsed.relation not in RELATION_WORDS:
        return []
    return [(parsed.obj1, RELATION_WORDS[parsed.relation], parsed.obj2)]


def _find(names: Sequence[str], noun: str, taken: set[int]) -> int | None:
    """The first planned object whose name holds `noun` as a word (not already used)."""
    noun = noun.lower()
    for index, name in enumerate(names):
        if index not in taken and noun in name.lower().split():
            return index
    return None


def _clamp(box: Sequence[float]) -> list[int]:
    """A box inside the grid, corners in order, no side below `MIN_BOX`."""
    x1, y1, x2, y2 = (min(max(int(round(v)), 0), GRID) for v in box)
    x1, x2 = sorted((x1, x2))
    y1, y2 = sorted((y1, y2))
    out = [x1, y1, x2, y2]
    for low, high in ((0, 2), (1, 3)):
        if out[high] - out[low] < MIN_BOX:
            centre = (out[low] + out[high]) / 2
            start = int(min(max(centre - MIN_BOX / 2, 0), GRID - MIN_BOX))
            out[low], out[high] = start, start + MIN_BOX
    return out


def _place(box: list[int], axis: int, low: float, high: float) -> list[int]:
    """`box` moved (and narrowed if needed) along `axis` (0: x, 1: y) into [low, high]."""
    size = min(box[axis + 2] - box[axis], int(high - low))
    centre = (box[axis] + box[axis + 2]) / 2
    start = int(min(max(centre - size / 2, low), high - size))
    moved = list(box)
    moved[axis], moved[axis + 2] = start, start + size
    return moved


def _relation_holds(relation: str, a: Sequence[int], b: Sequence[int]) -> bool:
    if relation == "next to":
        return bool(relative_position(a, b) & {"left of", "right of"})
    return relation in relative_position(a, b)


def _make_hold(relation: str, a: list[int], b: list[int]) -> tuple[list[int], list[int]]:
    """A and B moved so that A stands in `relation` to B: each into its half of the canvas
    along the relation's axis (next to: side by side, A where it already leans)."""
    half = GRID / 2
    if relation == "next to":
        relation = "left of" if (a[0] + a[2]) <= (b[0] + b[2]) else "right of"
    axis = 0 if relation in ("left of", "right of") else 1
    first_low = relation in ("left of", "above")
    a_range = (0, half) if first_low else (half, GRID)
    b_range = (half, GRID) if first_low else (0, half)
    return _place(a, axis, *a_range), _place(b, axis, *b_range)


def _overlap(a: Sequence[int], b: Sequence[int]) -> float:
    """Share of the smaller box covered by the other."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return width * height / max(smaller, 1)


def repair_boxes(
    names: Sequence[str],
    boxes: Sequence[Sequence[float]],
    relations: Sequence[tuple[str, str, str]],
) -> tuple[list[list[int]], list[str]]:
    """Repaired boxes for planned objects and what was repaired: clamped with a minimum size,
    the stated relations made to hold, then distinct objects covering more than half of one
    another moved apart along the axis they are furthest apart on (relations are not undone:
    a pair in a stated relation is not moved again)."""
    repairs: list[str] = []
    fixed = [_clamp(box) for box in boxes]
    for index, (before, after) in enumerate(zip(boxes, fixed, strict=True)):
        if [int(v) for v in before] != after:
            repairs.append(f"clamped {names[index]!r}")
    related: set[frozenset[int]] = set()
    for first, relation, second in relations:
        a = _find(names, first, set())
        b = _find(names, second, {a} if a is not None else set())
        if a is None or b is None:
            continue
        related.add(frozenset((a, b)))
        if not _relation_holds(relation, fixed[a], fixed[b]):
            fixed[a], fixed[b] = _make_hold(relation, fixed[a], fixed[b])
            repairs.append(f"made {names[a]!r} {relation} {names[b]!r}")
    for a in range(len(fixed)):
        for b in range(a + 1, len(fixed)):
            if frozenset((a, b)) in related or names[a] == names[b]:
                continue
            if _overlap(fixed[a], fixed[b]) > 0.5:
                dx = abs((fixed[a][0] + fixed[a][2]) - (fixed[b][0] + fixed[b][2]))
                dy = abs((fixed[a][1] + fixed[a][3]) - (fixed[b][1] + fixed[b][3]))
                relation = "left of" if dx >= dy else "above"
                if (
                    relation == "left of" and fixed[a][0] + fixed[a][2] > fixed[b][0] + fixed[b][2]
                ) or (
                    relation == "above" and fixed[a][1] + fixed[a][3] > fixed[b][1] + fixed[b][3]
                ):
                    relation = "right of" if relation == "left of" else "below"
                fixed[a], fixed[b] = _make_hold(relation, fixed[a], fixed[b])
                repairs.append(f"separated {names[a]!r} and {names[b]!r}")
    return fixed, repairs


def repair_chain(chain: Chain, prompt: str) -> tuple[str, list[str]]:
    """The chain's text with repaired box coordinates (`repair_boxes`) and the repairs made. A
    chain with parse errors is left as it is (its boxes cannot be matched to its markup)."""
    if chain.errors or not chain.objects:
        return chain.text, []
    boxes, repairs = repair_boxes(chain.names, chain.boxes, prompt_relations(prompt))
    if not repairs:
        return chain.text, []
    text, pieces, position = chain.text, [], 0
    for box in boxes:
        start = text.index(BOX_START, position)
        end = text.index(BOX_END, start)
        pieces.append(text[position : start + len(BOX_START)])
        pieces.append("({},{}),({},{})".format(*box))
        position = end
    pieces.append(text[position:])
    repaired = "".join(pieces)
    if parse_chain(repaired).boxes != [tuple(b) for b in boxes]:  # markup not as parsed: keep it
        return chain.text, []
    return repaired, repairs


# ----------------------------------------------------------------------------------------------
# Candidates and drawing
# ----------------------------------------------------------------------------------------------


def plan_scores(judge: Any, prompts: Sequence[str], chains: Sequence[Chain]) -> list[float]:
    """The chain stage of the dual reward for each (prompt, chain): R_sem + R_spa by `judge`
    (a failed judgement scores 0)."""
    reward = DualStageReward(judge, RewardConfig(components=("sem", "spa"), combination="sum"))
    scored = reward.score(list(prompts), list(chains), [None] * len(prompts))
    return [float(v) if v == v else 0.0 for v in scored.total]


def sample_plans(
    policy: Policy,
    prompts: Sequence[str],
    num_plans: int,
    sampling: SamplingConfig,
    generator: torch.Generator | None = None,
) -> tuple[list[str], list[bool]]:
    """`num_plans` chains per prompt (stage 1 only, no images), grouped by prompt: the texts and
    whether each was cut at the chain cap."""
    parts = janus_parts(policy.model)
    special = special_ids(policy.tokenizer)
    was_training = policy.model.training
    policy.model.eval()
    texts: list[str] = []
    truncated: list[bool] = []
    try:
        with torch.no_grad():
            per_pass = max(1, (sampling.max_batch_rows or 10**9) // num_plans)
            for start in range(0, len(prompts), per_pass):
                encoded = [policy.prompt_ids(p) for p in prompts[start : start + per_pass]]
                ids, mask = left_pad(encoded, special.pad)
                chains = sample_chains(
                    parts, ids.to(parts.device), mask.to(parts.device), num_plans, sampling,
                    special, generator,
                )  # fmt: skip
                for row, row_mask in zip(
                    chains.chain_ids.cpu(), chains.chain_mask.cpu(), strict=True
                ):
                    texts.append(chain_text(policy.tokenizer, row[row_mask.bool()].tolist()))
                truncated += chains.truncated.cpu().tolist()
                del chains
    finally:
        policy.model.train(was_training)
    return texts, truncated


def draw_from_chains(
    policy: Policy,
    prompts: Sequence[str],
    chains: Sequence[str],
    sampling: SamplingConfig,
    generator: torch.Generator | None = None,
    truncated: Sequence[bool] | None = None,
) -> Rollouts:
    """Images for given (prompt, chain text) rows, sampled as the rollout's stage 2 (CFG over the
    same unconditional row, and prompt-only row with a plan weight), as a `Rollouts` batch with one group per row; `truncated` flags the
    chains that were cut at the cap when sampled (default: none). Its chain log-probs are zero:
    the chains were given, not sampled."""
    parts = janus_parts(policy.model)
    special = special_ids(policy.tokenizer)
    prompt_rows = [policy.prompt_ids(p) for p in prompts]
    chain_rows = [
        policy.tokenizer.encode(text, add_special_tokens=False) + [special.begin_of_image]
        for text in chains
    ]
    mean, std = policy.image_normalisation()
    was_training = policy.model.training
    policy.model.eval()
    codes, logprobs = [], []
    try:
        with torch.no_grad():
            per_pass = sampling.max_batch_rows or len(prompts)
            for start in range(0, len(prompts), per_pass):
                rows = range(start, min(start + per_pass, len(prompts)))
                ids, mask = left_pad([prompt_rows[r] + chain_rows[r] for r in rows], special.pad)
                chain_start = torch.tensor([ids.shape[1] - len(chain_rows[r]) for r in rows])
                found, found_logprobs = generate_image_tokens(
                    parts,
                    ids.to(parts.device),
                    mask.to(parts.device),
                    sampling,
                    special,
                    generator,
                    chain_start.to(parts.device),
                )
                codes.append(found)
                logprobs.append(found_logprobs)
            image_ids = torch.cat(codes)
            images = decode_images(parts, image_ids, mean, std)
    finally:
        policy.model.train(was_training)
    prompt_ids, prompt_mask = left_pad(prompt_rows, special.pad)
    chain_ids, chain_mask = left_pad([list(reversed(r)) for r in chain_rows], special.pad)
    chain_ids, chain_mask = chain_ids.flip(1), chain_mask.flip(1)  # right-padded, as sampled
    clean = [t.replace(BEGIN_OF_IMAGE, "") for t in chains]
    device = parts.device
    return Rollouts(
        prompts=list(prompts),
        group_ids=torch.arange(len(prompts), device=device),
        prompt_ids=prompt_ids.to(device),
        prompt_mask=prompt_mask.to(device),
        chain_ids=chain_ids.to(device),
        chain_mask=chain_mask.to(device),
        chain_logprobs=torch.zeros(chain_ids.shape, device=device),
        image_ids=image_ids,
        image_logprobs=torch.cat(logprobs),
        truncated=torch.tensor(
            list(truncated or [False] * len(prompts)), dtype=torch.bool, device=device
        ),
        chain_texts=clean,
        chains=[parse_chain(t) for t in clean],
        images=images,
        sampling=sampling,
    )


def plan_aware_rollout(
    policy: Policy,
    prompts: Sequence[str],
    num_generations: int,
    sampling: SamplingConfig,
    generator: torch.Generator | None,
    options: PlanOptions,
    judge: Any = None,
    noise: np.random.Generator | None = None,
) -> tuple[Rollouts, list[PlanRecord]]:
    """`num_generations` images per prompt, each drawn from the best of `options.candidates`
    sampled plans (by `judge`'s chain stage; needed when there is more than one candidate; with
    `options.judge_noise`, by its scores plus Gaussian noise drawn from `noise`, see
    `judge_noise_generator`), repaired when `options.repair`; rows grouped by prompt as
    `Policy.rollout`'s, and one `PlanRecord` a row."""
    if options.candidates > 1 and judge is None:
        raise UserError("plan candidates need a judge to score the plans")
    k = options.candidates
    texts, truncated = sample_plans(policy, prompts, num_generations * k, sampling, generator)
    rows = [p for p in prompts for _ in range(num_generations)]
    scores: list[float] = []
    noised: list[float] = []
    if k > 1:  # every candidate of the batch in one call to the judge
        candidates = [p for p in rows for _ in range(k)]
        scores = plan_scores(judge, candidates, [parse_chain(t) for t in texts])
        noised = scores
        if options.judge_noise > 0:
            stream = noise if noise is not None else judge_noise_generator(None)
            draws = stream.normal(0.0, options.judge_noise, len(scores))
            noised = [s + float(d) for s, d in zip(scores, draws, strict=True)]
    chosen: list[str] = []
    records: list[PlanRecord] = []
    for row, prompt in enumerate(rows):
        record = PlanRecord(sampled_chain=texts[row * k])
        if k > 1:
            own, by = scores[row * k : (row + 1) * k], noised[row * k : (row + 1) * k]
            best = max(range(k), key=lambda i: (by[i], -i))
            record.sampled_chain, record.plan_score = texts[row * k + best], own[best]
            record.candidate_scores, record.candidate_index = own, best
            if options.judge_noise > 0:
                record.noised_scores = by
        text = record.sampled_chain
        if options.repair:
            text, record.repairs = repair_chain(parse_chain(text), prompt)
        chosen.append(text)
        records.append(record)
    picked = [truncated[row * k + record.candidate_index] for row, record in enumerate(records)]
    rollouts = draw_from_chains(policy, rows, chosen, sampling, generator, picked)
    rollouts.group_ids = rollouts.group_ids.div(num_generations, rounding_mode="floor")
    return rollouts, records


def sample_batch(
    policy: Policy,
    prompts: Sequence[str],
    num_generations: int,
    sampling: SamplingConfig,
    generator: torch.Generator | None,
    plans: PlanOptions | None = None,
    judge: Any = None,
    noise: np.random.Generator | None = None,
) -> tuple[Rollouts, list[PlanRecord] | None]:
    """A batch of samples as every generation command draws them: `Policy.rollout` when `plans`
    is None or inactive (and no plan records), else `plan_aware_rollout` with its records."""
    if plans is None or not plans.active:
        return policy.rollout(prompts, num_generations, sampling, generator), None
    return plan_aware_rollout(
        policy, prompts, num_generations, sampling, generator, plans, judge, noise
    )

"""The world benchmark of a policy, judged exactly, plus the world in the two official layouts.

    result = evaluate_world(policy, seed=0, num_generations=1, sampling=SamplingConfig())
    result["soft"]      # {"single_object": 0.71, ..., "overall": 0.55}: mean soft score
    result["accuracy"]  # {"single_object": 0.60, ..., "overall": 0.41}: share of fully right images
    result["samples"]   # per image: prompt, chain text, PIL image, score, reward components

Each image is scored with :func:`gotr1.world.score_image` (the world's pixel detector and the
prompt's requirements: objects present in number, colours, exact counts, the relation by
GenEval's rule). ``soft`` is the fraction of requirements met, ``correct`` all of them;
per-category means and "overall" (the mean of the category means, as GenEval reports it) come
from :func:`gotr1.world.summarize`. With ``with_rewards`` every sample also carries the four reward
components of the exact world judge (R_sem, R_spa, R_RI, R_PI) and their product.

:func:`write_world_results` writes ``summary.json``, ``summary.md``, ``samples.jsonl`` and the
images; ``gotr1 eval world`` is that, from a model folder.

:func:`world_compbench_prompts` and :func:`world_geneval_metadata` phrase world prompts as
T2I-CompBench prompt lists and GenEval metadata, so the official protocols (and their rules,
judged by :class:`gotr1.eval.scorers.WorldEvidenceScorer`) can run end to end on a world model.

Importing this module does not import torch; `evaluate_world` imports it, and the policy's
sampler, when called.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from gotr1.eval.geneval import validate_metadata
from gotr1.eval.layouts import write_jsonl, write_summary
from gotr1.rewards import DualStageReward, WorldJudge
from gotr1.world import benchmark_prompts, format_prompt, parse_prompt, score_image, summarize

if TYPE_CHECKING:
    from gotr1.eval.plans import PlanOptions
    from gotr1.policy.policy import Policy
    from gotr1.policy.rollout import SamplingConfig
    from gotr1.world import PromptSpec

__all__ = [
    "JUDGED_BY",
    "evaluate_world",
    "resolve_world_prompts",
    "world_compbench_prompts",
    "world_geneval_metadata",
    "world_result_record",
    "world_summary_markdown",
    "write_world_results",
]

JUDGED_BY = "world (exact pixel detector and prompt grammar)"
"""How world benchmark scores are judged (written into every summary)."""


def resolve_world_prompts(
    prompts: Sequence[str | tuple[str, PromptSpec]] | None,
    split: str = "test",
    num_prompts: int = 300,
    prompt_seed: int = 0,
) -> list[tuple[str, PromptSpec]]:
    """(text, spec) pairs: the given prompts (texts parsed with the world grammar), or the
    benchmark's ``num_prompts`` prompts of ``split``. A text outside the grammar raises
    ValueError naming it."""
    if prompts is None:
        return benchmark_prompts(split=split, n=num_prompts, seed=prompt_seed)
    resolved = []
    for entry in prompts:
        if isinstance(entry, str):
            try:
                resolved.append((entry, parse_prompt(entry)))
            except ValueError:
                raise ValueError(f"prompt {entry!r} is not a world prompt") from None
        else:
            text, spec = entry
            resolved.append((str(text), spec))
    return resolved


def evaluate_world(
    policy: Policy,
    prompts: Sequence[str | tuple[str, PromptSpec]] | None = None,
    seed: int = 0,
    num_generations: int = 1,
    sampling: SamplingConfig | None = None,
    prompts_per_batch: int = 64,
    with_rewards: bool = True,
    progress: bool = False,
    plans: PlanOptions | None = None,
) -> dict[str, Any]:
    """Generate ``num_generations`` images per world prompt and score them exactly.

    ``plans`` (`gotr1.eval.plans.PlanOptions`): draw each image from the best of several plans
    by the world judge's chain stage (perturbed by the options' judge noise, drawn from a stream
    seeded with ``seed``) and/or a repaired plan; each sample then records its plan (``plan``: as
    sampled, its score, the repairs) and the settings the options.

    ``prompts``: world prompt texts or (text, spec) pairs; None = the 300 test-split benchmark
    prompts (:func:`gotr1.world.benchmark_prompts`). ``sampling`` defaults to the paper's
    evaluation settings (CFG 5, temperature 1). Batches of ``prompts_per_batch`` prompts share one
    rollout; one ``torch.Generator`` seeded with ``seed`` drives them in order, so the same call
    gives the same samples on the same device.

    Returns a dict: ``soft`` and ``accuracy`` ({category: mean, ..., "overall": mean of the
    category means}), ``images`` (per category), ``chains`` (mean planned objects, share
    truncated, share with parse errors), ``rewards`` (mean reward components, with
    ``with_rewards``), ``samples`` (one dict per image: prompt_index, sample_index, prompt,
    category, chain, objects, truncated, image (PIL), correct, soft, requirements and, with
    ``with_rewards``, rewards {sem, spa, ri, pi, total}), ``settings``, ``judged_by``,
    ``seconds``.
    """
    import torch

    from gotr1.eval.plans import PlanOptions, judge_noise_generator, sample_batch
    from gotr1.policy.rollout import SamplingConfig

    if num_generations < 1:
        raise ValueError(f"num_generations must be >= 1, got {num_generations}")
    if prompts_per_batch < 1:
        raise ValueError(f"prompts_per_batch must be >= 1, got {prompts_per_batch}")
    start = time.perf_counter()
    pairs = resolve_world_prompts(prompts)
    sampling = sampling or SamplingConfig()
    generator = torch.Generator(device=policy.device).manual_seed(seed)
    noise = judge_noise_generator(seed)  # the plan judge's noise, drawn batch by batch
    reward = None
    if with_rewards:
        reward = DualStageReward(WorldJudge())
    bar = None
    if progress:
        bar = tqdm(total=len(pairs) * num_generations, desc="world bench", unit="img")
    samples: list[dict[str, Any]] = []
    for first in range(0, len(pairs), prompts_per_batch):
        chunk = pairs[first : first + prompts_per_batch]
        texts = [text for text, _ in chunk]
        rollouts, records = sample_batch(
            policy, texts, num_generations, sampling, generator, plans, WorldJudge(), noise
        )
        rewards = (
            reward.score(rollouts.prompts, rollouts.chains, rollouts.images) if reward else None
        )
        for row in range(len(rollouts)):
            offset, k = divmod(row, num_generations)
            text, spec = chunk[offset]
            score = score_image(spec, rollouts.images[row])
            chain = rollouts.chains[row]
            sample: dict[str, Any] = {
                "prompt_index": first + offset,
                "sample_index": k,
                "prompt": text,
                "category": spec.category,
                "chain": rollouts.chain_texts[row],
                "objects": [{"name": o.name, "box": list(o.box)} for o in chain.objects],
                "chain_errors": list(chain.errors),
                "truncated": bool(rollouts.truncated[row]),
                "image": rollouts.images[row],
                "correct": bool(score.correct),
                "soft": float(score.soft),
                "requirements": {name: float(value) for name, value in score.requirements},
            }
            if records is not None:
                sample["plan"] = records[row].to_dict()
            if rewards is not None:
                sample["rewards"] = {
                    name: _finite_or_none(rewards.component(name)[row])
                    for name in ("sem", "spa", "ri", "pi", "total")
                }
            samples.append(sample)
        if bar is not None:
            bar.update(len(rollouts))
    if bar is not None:
        bar.close()
    categories = [s["category"] for s in samples]
    counts: dict[str, int] = {}
    for category in categories:
        counts[category] = counts.get(category, 0) + 1
    result: dict[str, Any] = {
        "benchmark": "gotr1 world",
        "judged_by": JUDGED_BY,
        "soft": summarize(categories, [s["soft"] for s in samples]),
        "accuracy": summarize(categories, [float(s["correct"]) for s in samples]),
        "images": counts,
        "chains": _chain_stats(samples),
        "settings": {
            "prompts": len(pairs),
            "num_generations": num_generations,
            "seed": seed,
            "prompts_per_batch": prompts_per_batch,
            "text_temperature": sampling.text_temperature,
            "image_temperature": sampling.image_temperature,
            "top_p": sampling.top_p,
            "cfg_weight": sampling.cfg_weight,
            "plan_cfg_weight": sampling.plan_cfg_weight,
            "max_chain_tokens": sampling.max_chain_tokens,
            "device": str(policy.device),
            "plans": (plans or PlanOptions()).to_dict(),
        },
        "samples": samples,
    }
    if reward is not None:
        result["rewards"] = _mean_rewards(samples)
    result["seconds"] = time.perf_counter() - start
    return result


def paired_delta_standard_error(
    before: Sequence[dict[str, Any]], after: Sequence[dict[str, Any]]
) -> dict[str, float | None]:
    """The standard error of the soft-score difference ``after - before`` per category and
    overall, for two evaluations of the same prompts (samples of :func:`evaluate_world`).

    Paired by prompt: each prompt's difference of its mean soft score over its images; the error
    of a category is their standard deviation over the square root of its prompts, and overall
    (the mean of the category means) combines them. It measures the benchmark's sampling of
    prompts and images, not how much another training run would differ. None where a category
    has fewer than two prompts in both. Samples without a category, prompt index or finite
    soft score (a damaged samples.jsonl row) are left out."""
    per_prompt: dict[str, dict[tuple[str, int], list[list[float]]]] = {}
    for index, samples in enumerate((before, after)):
        for sample in samples:
            try:
                key = (str(sample["category"]), int(sample["prompt_index"]))
                soft = float(sample["soft"])
            except (KeyError, TypeError, ValueError):
                continue
            if not math.isfinite(soft):
                continue
            lists = per_prompt.setdefault(key[0], {}).setdefault(key, [[], []])
            lists[index].append(soft)
    errors: dict[str, float | None] = {}
    for category, prompts in per_prompt.items():
        diffs = [sum(b) / len(b) - sum(a) / len(a) for a, b in prompts.values() if a and b]
        if len(diffs) < 2:
            errors[category] = None
            continue
        mean = sum(diffs) / len(diffs)
        variance = sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1)
        errors[category] = math.sqrt(variance / len(diffs))
    known = [e for e in errors.values() if e is not None]
    complete = bool(known) and len(known) == len(errors)
    errors["overall"] = math.sqrt(sum(e * e for e in known)) / len(known) if complete else None
    return errors


def _finite_or_none(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _chain_stats(samples: Sequence[dict[str, Any]]) -> dict[str, float]:
    if not samples:
        return {"mean_objects": 0.0, "truncated": 0.0, "with_errors": 0.0}
    n = len(samples)
    return {
        "mean_objects": sum(len(s["objects"]) for s in samples) / n,
        "truncated": sum(s["truncated"] for s in samples) / n,
        "with_errors": sum(bool(s["chain_errors"]) for s in samples) / n,
    }


def _mean_rewards(samples: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    means: dict[str, float | None] = {}
    for name in ("sem", "spa", "ri", "pi", "total"):
        values = [s["rewards"][name] for s in samples if s["rewards"][name] is not None]
        means[name] = sum(values) / len(values) if values else None
    return means


def world_result_record(result: dict[str, Any]) -> dict[str, Any]:
    """The JSON summary of an :func:`evaluate_world` result (everything but the samples)."""
    return {key: value for key, value in result.items() if key != "samples"}


def world_summary_markdown(result: dict[str, Any], title: str = "World benchmark") -> str:
    """A markdown table of per-category soft score and accuracy, labelled with its judge."""
    soft, accuracy, images = result["soft"], result["accuracy"], result.get("images", {})
    lines = [
        f"## {title} — judged by {result.get('judged_by', JUDGED_BY)}",
        "",
        "soft = fraction of the prompt's requirements met (objects, colours, counts, relation, "
        "only asked objects drawn); "
        "accuracy = share of images meeting all of them.",
        "",
        "| category | soft | accuracy | images |",
        "| --- | --- | --- | --- |",
    ]
    for category in soft:
        if category == "overall":
            continue
        lines.append(
            f"| {category} | {soft[category]:.4f} | {accuracy[category]:.4f} | "
            f"{images.get(category, '')} |"
        )
    lines.append(
        f"| **overall** (mean of categories) | {soft['overall']:.4f} | "
        f"{accuracy['overall']:.4f} | {sum(images.values())} |"
    )
    rewards = result.get("rewards")
    if rewards:
        parts = ", ".join(
            f"{k} {v:.4f}" if v is not None else f"{k} n/a" for k, v in rewards.items()
        )
        lines += ["", f"Mean world-judge rewards: {parts}."]
    return "\n".join(lines) + "\n"


def write_world_results(result: dict[str, Any], out: str | Path) -> dict[str, Path]:
    """Write an :func:`evaluate_world` result: ``summary.json``, ``summary.md``,
    ``samples.jsonl`` (one line per image, without pixels) and ``images/PPPP_KK.png``."""
    folder = Path(out)
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    for sample in result["samples"]:
        name = f"{sample['prompt_index']:04d}_{sample['sample_index']:02d}.png"
        sample["image"].save(images / name)
        rows.append(
            {**{k: v for k, v in sample.items() if k != "image"}, "image": f"images/{name}"}
        )
    samples_path = write_jsonl(folder / "samples.jsonl", rows)
    json_path, md_path = write_summary(
        folder, world_result_record(result), world_summary_markdown(result), "summary"
    )
    return {"summary": json_path, "markdown": md_path, "samples": samples_path, "images": images}


# --------------------------------------------------------------------------- official layouts

_COMPBENCH_RELATION = {
    "left": "on the left of",
    "right": "on the right of",
    "above": "on the top of",
    "below": "on the bottom of",
}
"""World relations in T2I-CompBench's 2D-spatial vocabulary."""

_COMPBENCH_CATEGORY = {
    "single_object": "non_spatial",
    "two_objects": "non_spatial",
    "color_binding": "color",
    "counting": "numeracy",
    "spatial": "spatial",
    "complex": "complex",
}
"""Which T2I-CompBench category a world category is phrased into."""


def _article(obj: Any) -> str:
    return f"a {obj.name}"


def world_compbench_prompts(
    prompts: Sequence[str | tuple[str, PromptSpec]] | None = None,
) -> dict[str, list[str]]:
    """World prompts as T2I-CompBench prompt lists by category (relations in the official
    vocabulary: "on the left of", "on the top of", ...); duplicates dropped."""
    out: dict[str, list[str]] = {}
    for _, spec in resolve_world_prompts(prompts):
        if spec.relation is not None:
            text = (
                f"{_article(spec.objects[0])} {_COMPBENCH_RELATION[spec.relation]} "
                f"{_article(spec.objects[1])}"
            )
            if len(spec.objects) == 3:
                text += f", and {_article(spec.objects[2])}"
        else:
            text = format_prompt(spec)
        texts = out.setdefault(_COMPBENCH_CATEGORY[spec.category], [])
        if text not in texts:
            texts.append(text)
    return out


_GENEVAL_TAG = {
    "two_objects": "two_object",
    "color_binding": "color_attr",
    "counting": "counting",
    "spatial": "position",
}
_GENEVAL_RELATION = {"left": "left of", "right": "right of", "above": "above", "below": "below"}


def _clause(obj: Any) -> dict[str, Any]:
    # The class is the full name ("green circle"): a world prompt may ask for two objects of one
    # shape in different colours, which GenEval's per-class colour check cannot tell apart.
    clause: dict[str, Any] = {"class": obj.name, "count": obj.count}
    if obj.color:
        clause["color"] = obj.color
    return clause


def world_geneval_metadata(
    prompts: Sequence[str | tuple[str, PromptSpec]] | None = None,
) -> list[dict[str, Any]]:
    """World prompts as GenEval metadata records (include/exclude clauses, positions).

    Tags: single_object (colours when coloured), two_object, color_attr, counting (with GenEval's
    exclude clause at count + 1), position, complex (position plus a third object). Classes are
    the objects' full names ("green circle", with the colour clause kept). For
    "A left of B" the target B comes first and A carries ``"position": ["left of", 0]``, as in
    GenEval's own metadata.
    """
    records = []
    for text, spec in resolve_world_prompts(prompts):
        if spec.category == "single_object":
            tag = "colors" if spec.objects[0].color else "single_object"
        else:
            tag = _GENEVAL_TAG.get(spec.category, spec.category)
        include = [_clause(o) for o in spec.objects]
        if spec.relation is not None:
            first, second = include[0], include[1]
            first["position"] = [_GENEVAL_RELATION[spec.relation], 0]
            include = [second, first, *include[2:]]
        record: dict[str, Any] = {"tag": tag, "include": include, "prompt": text}
        if spec.category == "counting":
            obj = spec.objects[0]
            record["exclude"] = [{"class": obj.name, "count": obj.count + 1}]
        records.append(validate_metadata(record, f"world prompt {text!r}"))
    return records


def write_world_compbench_prompts(
    folder: str | Path, prompts: Sequence[str | tuple[str, PromptSpec]] | None = None
) -> dict[str, Path]:
    """Write :func:`world_compbench_prompts` as ``<category>_val.txt`` files (a ``--prompts-dir``
    for ``gotr1 eval compbench``)."""
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    paths = {}
    for category, texts in world_compbench_prompts(prompts).items():
        path = target / f"{category}_val.txt"
        path.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
        paths[category] = path
    return paths


def write_world_geneval_metadata(
    path: str | Path, prompts: Sequence[str | tuple[str, PromptSpec]] | None = None
) -> Path:
    """Write :func:`world_geneval_metadata` as a GenEval ``evaluation_metadata.jsonl``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r) for r in world_geneval_metadata(prompts)]
    target.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return target

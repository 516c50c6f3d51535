"""Sharded, resumable generation of benchmark images into the official folder layouts.

    items = compbench_items(out, "color", prompts, images_per_prompt=10)   # gotr1.eval.layouts
    report = generate_items(policy, items, sampling, process_index=rank, num_processes=world)

How the work is cut:

- items are grouped by prompt (a prompt's images stay together: one rollout samples them as one
  group, ``num_generations`` = the prompt's pending images);
- the prompt groups are sharded over processes (:func:`shard_groups`: every ``num_processes``-th
  group from ``process_index``), so under ``accelerate launch`` each process writes its own
  images and no image is written twice;
- images that already exist are skipped (resume); the remaining groups are batched,
  ``prompts_per_batch`` prompts with the same number of pending images per
  :meth:`gotr1.policy.policy.Policy.rollout` call;
- each batch is sampled with its own ``torch.Generator`` seeded with the seed of the batch's
  first item (``base_seed + index`` from :mod:`gotr1.eval.layouts`); every image's record (JSON
  beside its chain) holds that seed, the sampling settings, its own ``row`` and the whole batch
  in row order (``batch_items``: category, prompt index, sample index and prompt text of every
  row; see :func:`batch_item_record`). A batch may mix categories whose prompt indices collide,
  so the prompt text is what rebuilds it: :func:`rebuild_batch` turns any one record back into the
  ``Policy.rollout`` call that sampled it and :func:`resample_batch` runs that call, which gives
  the same samples on the same device and software. (A resumed or differently sharded run forms
  other batches, hence other samples; the records always say which.)

With plan options (:class:`gotr1.eval.plans.PlanOptions`, active) each batch goes through
:func:`gotr1.eval.plans.plan_aware_rollout` instead, with the plan judge handed in; every record
then also holds the options (``plans``) and the row's plan (``plan``: the chain as sampled, the
candidates' scores, the repairs), the drawn chain being the one written beside the image. The
judge's noise, if any, comes from a stream seeded with the batch's seed.

Images are written atomically (:func:`gotr1.eval.layouts.save_image_atomic`) after their chain
and record, so an existing image always has its chain and record.

Importing this module does not import torch; the functions that load or run a policy import it,
and the policy, when called.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image
from tqdm.auto import tqdm

from gotr1.errors import UserError
from gotr1.eval.layouts import (
    CompbenchItem,
    GenevalItem,
    geneval_prompt_dir,
    save_image_atomic,
    shard,
    write_geneval_grid,
    write_geneval_metadata,
    write_text_atomic,
)

if TYPE_CHECKING:
    import torch

    from gotr1.eval.plans import PlanOptions
    from gotr1.policy.policy import Policy
    from gotr1.policy.rollout import Rollouts, SamplingConfig

__all__ = [
    "BatchSpec",
    "GenerationReport",
    "batch_item_record",
    "generate_items",
    "item_prompt",
    "load_policy",
    "plan_batches",
    "prompt_groups",
    "rebuild_batch",
    "resample_batch",
    "sampling_record",
    "shard_groups",
    "write_item",
]

Item = CompbenchItem | GenevalItem


@dataclass
class GenerationReport:
    """What one process did: images generated and skipped, batches, time."""

    generated: int = 0
    skipped: int = 0
    batches: int = 0
    seconds: float = 0.0
    process_index: int = 0
    num_processes: int = 1
    truncated_chains: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return dataclasses.asdict(self)

    def add(self, other: GenerationReport) -> None:
        """Accumulate another report's counts (same process)."""
        self.generated += other.generated
        self.skipped += other.skipped
        self.batches += other.batches
        self.seconds += other.seconds
        self.truncated_chains += other.truncated_chains


def load_policy(
    model: str | Path,
    device: str | torch.device | None = None,
    dtype: str | None = None,
) -> Policy:
    """Load a policy folder (HF Janus / GoT-R1 folder, or a LoRA adapter folder) for generation.

    Missing or malformed folders raise :class:`gotr1.errors.UserError` naming the folder, as
    ``gotr1 generate`` does. ``dtype`` defaults to bfloat16 on CUDA, float32 elsewhere.
    """
    import torch

    from gotr1.policy.policy import Policy

    resolved = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device}: CUDA is not available")
    dtype = dtype or ("bfloat16" if resolved.type == "cuda" else "float32")
    try:
        return Policy.load(model, dtype=dtype, device=resolved)
    except UserError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as error:
        raise UserError(f"--model {model}: cannot load a policy from it ({error})") from None


def sampling_record(sampling: SamplingConfig) -> dict[str, Any]:
    """The sampling settings that decide the samples (recorded beside every image)."""
    return {
        "text_temperature": sampling.text_temperature,
        "image_temperature": sampling.image_temperature,
        "top_p": sampling.top_p,
        "cfg_weight": sampling.cfg_weight,
        "plan_cfg_weight": sampling.plan_cfg_weight,
        "max_chain_tokens": sampling.max_chain_tokens,
        "max_batch_rows": sampling.max_batch_rows,  # rows per pass change the random stream
    }


def item_prompt(item: Item) -> str:
    """The text prompt an item is generated from."""
    if isinstance(item, CompbenchItem):
        return item.prompt
    return str(item.metadata["prompt"])


def batch_item_record(item: Item) -> dict[str, Any]:
    """One row of a batch as the records store it (``batch_items``): category (None for GenEval,
    which has none), prompt index, sample index and the prompt text the row was sampled from."""
    return {
        "category": item.category if isinstance(item, CompbenchItem) else None,
        "prompt_index": item.prompt_index,
        "sample_index": item.sample_index,
        "prompt": item_prompt(item),
    }


@dataclass(frozen=True)
class BatchSpec:
    """The ``Policy.rollout`` call that sampled one batch, rebuilt from an image's record."""

    prompts: list[str]
    """One prompt per group, in row order."""
    num_generations: int
    """Rows per prompt."""
    seed: int
    """Seed of the batch's ``torch.Generator``."""
    sampling: dict[str, Any]
    """The recorded :func:`sampling_record` (keyword arguments of ``SamplingConfig``)."""
    rows: list[dict[str, Any]]
    """The batch's rows (:func:`batch_item_record`), in order."""


_ROW_KEYS = frozenset({"category", "prompt_index", "sample_index", "prompt"})


def rebuild_batch(record: dict[str, Any]) -> BatchSpec:
    """The batch an image's record (the JSON beside its chain) was sampled in, from that record
    alone. Raises ValueError when the record lacks what is needed (records written before the
    rows carried their category and prompt hold only [prompt_index, sample_index] pairs)."""
    rows = record.get("batch_items")
    if (
        not isinstance(rows, list)
        or not rows
        or not all(isinstance(r, dict) and r.keys() >= _ROW_KEYS for r in rows)
    ):
        raise ValueError(
            "record: batch_items must list {category, prompt_index, sample_index, prompt} per row "
            "(older records with [prompt_index, sample_index] pairs cannot rebuild their batch)"
        )
    if "seed" not in record or "sampling" not in record:
        raise ValueError("record: needs 'seed' and 'sampling' to rebuild its batch")
    # Rows come prompt by prompt (generate_items' order); a prompt is (category, prompt_index).
    groups: dict[tuple[Any, int], list[dict[str, Any]]] = {}
    last = None
    for row in rows:
        key = (row["category"], int(row["prompt_index"]))
        if key != last and key in groups:
            raise ValueError(f"record: the rows of prompt {key} are not contiguous")
        groups.setdefault(key, []).append(row)
        last = key
    sizes = {len(g) for g in groups.values()}
    if len(sizes) != 1:
        raise ValueError(f"record: prompts have different numbers of rows {sorted(sizes)}")
    return BatchSpec(
        prompts=[str(g[0]["prompt"]) for g in groups.values()],
        num_generations=sizes.pop(),
        seed=int(record["seed"]),
        sampling=dict(record["sampling"]),
        rows=[dict(r) for r in rows],
    )


def resample_batch(
    policy: Policy,
    record: dict[str, Any],
    device: str | torch.device | None = None,
    plan_judge: Any = None,
) -> Rollouts:
    """Re-run the rollout that sampled ``record``'s batch (see :func:`rebuild_batch`); the
    record's image is row ``record["row"]`` of the returned rollouts. A record with plan options
    (``plans``) is re-run through the plan path, its candidates scored by ``plan_judge``."""
    import torch

    from gotr1.eval.plans import PlanOptions, judge_noise_generator, sample_batch
    from gotr1.policy.rollout import SamplingConfig

    spec = rebuild_batch(record)
    plans = PlanOptions(**record["plans"]) if "plans" in record else None
    generator = torch.Generator(device=device or policy.device).manual_seed(spec.seed)
    sampling = SamplingConfig(**spec.sampling)
    rollouts, _ = sample_batch(
        policy, spec.prompts, spec.num_generations, sampling, generator, plans, plan_judge,
        judge_noise_generator(spec.seed),
    )  # fmt: skip
    return rollouts


def _group_key(item: Item) -> tuple[str, int]:
    return (getattr(item, "category", ""), item.prompt_index)


def prompt_groups(items: Sequence[Item]) -> list[list[Item]]:
    """Items grouped by prompt (category and prompt index), in order of first appearance."""
    groups: dict[tuple[str, int], list[Item]] = {}
    for item in items:
        groups.setdefault(_group_key(item), []).append(item)
    return list(groups.values())


def shard_groups(
    groups: Sequence[list[Item]], process_index: int, num_processes: int
) -> list[list[Item]]:
    """This process's prompt groups: every ``num_processes``-th group from ``process_index``."""
    return shard(groups, process_index, num_processes)


def plan_batches(groups: Sequence[list[Item]], prompts_per_batch: int) -> list[list[list[Item]]]:
    """Batches of pending work: each batch holds up to ``prompts_per_batch`` prompt groups of
    pending items (images not on disk yet), all with the same number of pending items."""
    if prompts_per_batch < 1:
        raise ValueError(f"prompts_per_batch must be >= 1, got {prompts_per_batch}")
    batches: list[list[list[Item]]] = []
    current: list[list[Item]] = []
    for group in groups:
        todo = [item for item in group if not Path(item.image_path).is_file()]
        if not todo:
            continue
        if current and (len(current) == prompts_per_batch or len(current[0]) != len(todo)):
            batches.append(current)
            current = []
        current.append(todo)
    if current:
        batches.append(current)
    return batches


def write_item(
    item: Item,
    image: Image.Image,
    chain: str,
    record: dict[str, Any],
) -> None:
    """Write one generated image where the official evaluators look for it, with its chain text
    and a JSON record beside the chain (outside ``samples/``); the image is written last."""
    if isinstance(item, CompbenchItem):
        base = {
            "category": item.category,
            "prompt": item.prompt,
            "prompt_index": item.prompt_index,
            "sample_index": item.sample_index,
            "index": item.index,
            "image": item.image_path.name,
        }
    else:
        out = item.image_path.parents[2]
        if not (geneval_prompt_dir(out, item.prompt_index) / "metadata.jsonl").is_file():
            write_geneval_metadata(out, item.prompt_index, item.metadata)
        base = {
            "prompt": item.metadata.get("prompt"),
            "prompt_index": item.prompt_index,
            "sample_index": item.sample_index,
            "image": f"samples/{item.image_path.name}",
        }
    full = {**base, **record, "chain": chain}
    write_text_atomic(Path(item.chain_path), chain)
    write_text_atomic(Path(item.chain_path).with_suffix(".json"), json.dumps(full) + "\n")
    save_image_atomic(image, item.image_path)


def _maybe_grid(group: Sequence[Item]) -> None:
    """GenEval's optional grid.png once every image of a prompt exists."""
    first = group[0]
    if not isinstance(first, GenevalItem):
        return
    paths = [Path(i.image_path) for i in group]
    if all(p.is_file() for p in paths):
        images = []
        for p in paths:
            with Image.open(p) as opened:
                images.append(opened.convert("RGB"))
        write_geneval_grid(first.image_path.parents[2], first.prompt_index, images)


def generate_items(
    policy: Policy,
    items: Sequence[Item],
    sampling: SamplingConfig,
    prompts_per_batch: int = 8,
    process_index: int = 0,
    num_processes: int = 1,
    progress: bool = False,
    writer: Callable[[Item, Image.Image, str, dict[str, Any]], None] = write_item,
    extra_record: dict[str, Any] | None = None,
    plans: PlanOptions | None = None,
    plan_judge: Any = None,
) -> GenerationReport:
    """Generate this process's share of ``items`` (see the module docstring); returns a report.

    ``extra_record`` is merged into every image's record (e.g. the model path). ``plans``: draw
    each image from a chosen and/or repaired plan, candidates scored by ``plan_judge``.
    """
    import torch

    from gotr1.eval.plans import judge_noise_generator, sample_batch

    start = time.perf_counter()
    groups = shard_groups(prompt_groups(items), process_index, num_processes)
    total = sum(len(g) for g in groups)
    batches = plan_batches(groups, prompts_per_batch)
    pending = sum(len(g) for batch in batches for g in batch)
    report = GenerationReport(
        skipped=total - pending, process_index=process_index, num_processes=num_processes
    )
    bar = None
    if progress and pending:
        bar = tqdm(total=pending, desc=f"generate[{process_index}]", unit="img")
    settings = sampling_record(sampling)
    device = policy.device
    group_of = {_group_key(g[0]): g for g in groups}
    for batch in batches:
        n = len(batch[0])
        prompts = [item_prompt(group[0]) for group in batch]
        rows = [item for group in batch for item in group]
        seed = int(rows[0].seed)
        generator = torch.Generator(device=device).manual_seed(seed)
        rollouts, plan_records = sample_batch(
            policy, prompts, n, sampling, generator, plans, plan_judge, judge_noise_generator(seed)
        )
        if len(rollouts) != len(rows):
            raise RuntimeError(f"rollout returned {len(rollouts)} samples for {len(rows)} images")
        indices = [batch_item_record(item) for item in rows]
        for row, item in enumerate(rows):
            truncated = bool(rollouts.truncated[row])
            record = {
                "seed": seed,
                "batch_items": indices,
                "row": row,
                "device": str(device),
                "process_index": process_index,
                "num_processes": num_processes,
                "truncated": truncated,
                "sampling": settings,
                **(extra_record or {}),
            }
            if plan_records is not None:
                record["plans"] = plans.to_dict()
                record["plan"] = plan_records[row].to_dict()
            writer(item, rollouts.images[row], rollouts.chain_texts[row], record)
            report.truncated_chains += int(truncated)
        for group in batch:
            _maybe_grid(group_of[_group_key(group[0])])
        report.generated += len(rows)
        report.batches += 1
        if bar is not None:
            bar.update(len(rows))
    if bar is not None:
        bar.close()
    report.seconds = time.perf_counter() - start
    return report

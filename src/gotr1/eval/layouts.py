"""Official benchmark folder layouts: the shipped prompts, paths, writers, readers, resume logic.

Images are written exactly where the official evaluators look, so those evaluators run on a gotr1
output folder unchanged:

T2I-CompBench (GORS_finetune/inference_eval.py layout; the evaluators read ``<dir>/samples``)::

    OUT/<category>/samples/<prompt>_<index:06d>.png     index = prompt_index * n + k
    OUT/<category>/chains/<prompt>_<index:06d>.txt      the GoT chain (kept out of samples/,
    OUT/<category>/chains/<prompt>_<index:06d>.json     whose every file the evaluators open)
    OUT/<category>/judged-by-<scorer>/annotation_blip/vqa_result.json, ...   (our scores)

GenEval (README "generated format"; evaluate_images.py reads ``<NNNNN>/metadata.jsonl`` and
``<NNNNN>/samples/<digits>.png``)::

    OUT/<index:05d>/metadata.jsonl       the prompt's metadata line, as one JSON object
    OUT/<index:05d>/samples/<k:04d>.png
    OUT/<index:05d>/grid.png             optional
    OUT/<index:05d>/chains/<k:04d>.txt / .json

Resuming: an image counts as done when its PNG exists; PNGs are written to a temporary name
outside ``samples/`` and renamed into place, so an interrupted write never leaves a half image
that the evaluators (or the resume logic) would take for a finished one.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from PIL import Image

from gotr1.eval.geneval import validate_metadata

__all__ = [
    "COMPBENCH_PROMPT_FILES",
    "CompbenchItem",
    "CompbenchSample",
    "GenevalItem",
    "GenevalPrompt",
    "compbench_image_name",
    "compbench_items",
    "compbench_result_dir",
    "geneval_items",
    "geneval_prompt_dir",
    "geneval_sample_path",
    "load_compbench_prompts",
    "load_complex_splits",
    "load_geneval_metadata",
    "pending",
    "read_compbench_samples",
    "read_geneval_folder",
    "read_jsonl",
    "save_image_atomic",
    "shard",
    "write_compbench_results",
    "write_geneval_grid",
    "write_geneval_metadata",
    "write_jsonl",
    "write_summary",
]

COMPBENCH_PROMPT_FILES: dict[str, str] = {
    "color": "color_val.txt",
    "shape": "shape_val.txt",
    "texture": "texture_val.txt",
    "spatial": "spatial_val.txt",
    "non_spatial": "non_spatial_val.txt",
    "complex": "complex_val.txt",
    "numeracy": "numeracy_val.txt",
    "3d_spatial": "3d_spatial_val.txt",
}
"""Shipped T2I-CompBench val prompt files (package data ``gotr1/data/t2i-compbench``)."""

_NAME_LIMIT = 255


def _data_file(*parts: str) -> Any:
    return resources.files("gotr1").joinpath("data", *parts)


def load_compbench_prompts(category: str) -> list[str]:
    """The shipped val prompts of a T2I-CompBench category, one per line, as the official
    inference script reads them (``splitlines()``, text before a tab, blank lines dropped)."""
    name = COMPBENCH_PROMPT_FILES.get(category)
    if name is None:
        raise ValueError(
            f"unknown T2I-CompBench category {category!r}; "
            f"expected one of {', '.join(COMPBENCH_PROMPT_FILES)}"
        )
    text = _data_file("t2i-compbench", name).read_text(encoding="utf-8")
    return [line.split("\t")[0] for line in text.splitlines() if line.strip()]


def load_complex_splits() -> tuple[list[str], list[str]]:
    """(complex_val_spatial prompts, complex_val_action prompts): the lists 3_in_1.py uses to
    decide which sub-scores a complex prompt averages (see compbench.complex_kind)."""
    out = []
    for name in ("complex_val_spatial.txt", "complex_val_action.txt"):
        text = _data_file("t2i-compbench", name).read_text(encoding="utf-8")
        out.append([line for line in text.splitlines() if line.strip()])
    return out[0], out[1]


def load_geneval_metadata(path: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """GenEval's prompt metadata (the shipped evaluation_metadata.jsonl unless ``path``), one
    validated record per line; a bad line raises ValueError naming the file and line."""
    if path is None:
        text = _data_file("geneval", "evaluation_metadata.jsonl").read_text(encoding="utf-8")
        where = "gotr1/data/geneval/evaluation_metadata.jsonl"
    else:
        text = Path(path).read_text(encoding="utf-8")
        where = str(path)
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{where}:{number}: not JSON ({error.msg})") from None
        records.append(validate_metadata(record, f"{where}:{number}"))
    return records


# --------------------------------------------------------------------------- writing helpers


def save_image_atomic(image: Image.Image, path: str | os.PathLike[str]) -> Path:
    """Save a PNG so it appears complete or not at all: write beside the ``samples`` folder under
    a hidden temporary name, then rename into place."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent.parent if target.parent.name == "samples" else target.parent
    fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=".partial", dir=staging)
    try:
        with os.fdopen(fd, "wb") as handle:
            image.save(handle, format="PNG")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def write_text_atomic(path: Path, text: str) -> None:
    """Write a text file so that it appears complete or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_jsonl(path: str | os.PathLike[str], rows: Iterable[Mapping[str, Any]]) -> Path:
    """Write rows as JSON lines (atomically)."""
    target = Path(path)
    write_text_atomic(target, "".join(json.dumps(dict(r)) + "\n" for r in rows))
    return target


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read JSON lines; a bad line raises ValueError naming the file and line number."""
    rows = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number}: not JSON ({error.msg})") from None
    return rows


def write_summary(
    directory: str | os.PathLike[str], record: Mapping[str, Any], markdown: str, stem: str
) -> tuple[Path, Path]:
    """Write ``<stem>.json`` and ``<stem>.md`` (the labelled summary and its table)."""
    folder = Path(directory)
    json_path, md_path = folder / f"{stem}.json", folder / f"{stem}.md"
    write_text_atomic(json_path, json.dumps(dict(record), indent=2) + "\n")
    write_text_atomic(md_path, markdown)
    return json_path, md_path


@dataclass(frozen=True)
class CompbenchItem:
    """One image to generate for T2I-CompBench."""

    category: str
    prompt: str
    prompt_index: int
    sample_index: int
    """k: which of the prompt's images (0 .. n-1)."""
    index: int
    """The file's running number, prompt_index * n + k (the official ``question_id``)."""
    seed: int
    image_path: Path
    chain_path: Path


@dataclass(frozen=True)
class GenevalItem:
    """One image to generate for GenEval."""

    prompt_index: int
    sample_index: int
    metadata: dict[str, Any]
    seed: int
    image_path: Path
    chain_path: Path


def shard(items: Sequence[Any], rank: int, world_size: int) -> list[Any]:
    """This process's share of the work: every ``world_size``-th item from ``rank``."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"shard: need 0 <= rank < world_size, got rank={rank}, {world_size=}")
    return list(items[rank::world_size])


def pending(items: Iterable[Any]) -> list[Any]:
    """The items whose image does not exist yet (resume: finished images are skipped)."""
    return [item for item in items if not Path(item.image_path).is_file()]


# --------------------------------------------------------------------------- T2I-CompBench


def compbench_image_name(prompt: str, index: int) -> str:
    """``{prompt}_{index:06d}.png``, the official file name (the evaluators recover the prompt as
    the text before the first "_", and the question id from the trailing number)."""
    if "_" in prompt or "/" in prompt or "\\" in prompt or "\x00" in prompt:
        raise ValueError(
            f"T2I-CompBench prompt {prompt!r} cannot be a file name the official evaluators "
            "read back (no '_', '/' or '\\' allowed)"
        )
    if index < 0:
        raise ValueError(f"image index must be >= 0, got {index}")
    name = f"{prompt}_{index:06d}.png"
    if len(name.encode("utf-8")) > _NAME_LIMIT:
        raise ValueError(f"T2I-CompBench prompt too long for a file name: {prompt[:60]!r}...")
    return name


def compbench_items(
    out: str | os.PathLike[str],
    category: str,
    prompts: Sequence[str],
    images_per_prompt: int = 10,
    base_seed: int = 42,
) -> list[CompbenchItem]:
    """Every image of a category, in the official order, with paths and seeds.

    Image k of prompt p has index p * n + k and seed ``base_seed + index``.
    """
    if images_per_prompt < 1:
        raise ValueError(f"images_per_prompt must be >= 1, got {images_per_prompt}")
    root = Path(out) / category
    items = []
    for p, prompt in enumerate(prompts):
        for k in range(images_per_prompt):
            index = p * images_per_prompt + k
            name = compbench_image_name(prompt, index)
            items.append(
                CompbenchItem(
                    category=category,
                    prompt=prompt,
                    prompt_index=p,
                    sample_index=k,
                    index=index,
                    seed=base_seed + index,
                    image_path=root / "samples" / name,
                    chain_path=root / "chains" / (name[: -len(".png")] + ".txt"),
                )
            )
    return items


@dataclass(frozen=True)
class CompbenchSample:
    """An image found in a category's ``samples`` folder."""

    question_id: int
    prompt: str
    path: Path


_COMPBENCH_FILE = re.compile(r"^(?P<prompt>[^_]*)_.*?(?P<index>\d+)\.png$")


def read_compbench_samples(out: str | os.PathLike[str], category: str) -> list[CompbenchSample]:
    """The images of ``OUT/<category>/samples`` sorted by their trailing number, each with the
    prompt read back from its name as the official scripts do (text before the first "_").
    Files that do not look like ``<prompt>_<number>.png`` raise ValueError (the official
    evaluators would crash on them)."""
    folder = Path(out) / category / "samples"
    if not folder.is_dir():
        return []
    samples = []
    for path in folder.iterdir():
        match = _COMPBENCH_FILE.match(path.name)
        if not match:
            raise ValueError(
                f"{path}: not a T2I-CompBench sample name '<prompt>_<number>.png'; "
                "the official evaluators read every file in samples/"
            )
        samples.append(CompbenchSample(int(match["index"]), match["prompt"], path))
    return sorted(samples, key=lambda s: s.question_id)


_RESULT_LAYOUT: dict[str, tuple[str, str | None]] = {
    "blip": ("annotation_blip", "blip_vqa_score.txt"),
    "spatial": ("labels/annotation_obj_detection_2d", "avg_score.txt"),
    "numeracy": ("annotation_num", "score.txt"),
    "clip": ("annotation_clip", None),
    "3_in_1": ("annotation_3_in_1", "vqa_score.txt"),
    # What 3_in_1.py reads as the spatial part of complex prompts (the 2D script writes the
    # labels/ path above; the official README has users pass the folder so both line up).
    "spatial_3_in_1": ("annotation_obj_detection", None),
}


def compbench_result_dir(out: str | os.PathLike[str], category: str, scorer: str) -> Path:
    """``OUT/<category>/judged-by-<scorer>``: where gotr1's scores go, apart from anything the
    official evaluators write into ``OUT/<category>`` themselves."""
    slug = re.sub(r"[^A-Za-z0-9.\-]+", "-", scorer).strip("-") or "scorer"
    return Path(out) / category / f"judged-by-{slug}"


def write_compbench_results(
    result_dir: str | os.PathLike[str],
    metric: str,
    answers: Sequence[float | str],
    question_ids: Sequence[int] | None = None,
    image_names: Sequence[str] | None = None,
) -> Path:
    """Write one metric's results in the official files under ``result_dir``.

    ``vqa_result.json`` = ``[{"question_id": id, "answer": a}]`` (BLIP answers are 4-decimal
    strings, as BLIP_vqa.py writes them), plus the metric's score text file in the official
    wording ("BLIP-VQA score:...", "score avg:...", "total:... num:... avg:...") and, for the 2D
    spatial metric, ``mapping.json`` ([{"image": name, "question_id": id}]).
    Returns the path of vqa_result.json.
    """
    if metric not in _RESULT_LAYOUT:
        raise ValueError(f"unknown metric {metric!r}; expected one of {', '.join(_RESULT_LAYOUT)}")
    ids = list(question_ids) if question_ids is not None else list(range(len(answers)))
    if len(ids) != len(answers):
        raise ValueError(f"{len(answers)} answers but {len(ids)} question ids")
    sub, score_file = _RESULT_LAYOUT[metric]
    folder = Path(result_dir) / sub
    records = [{"question_id": int(i), "answer": a} for i, a in zip(ids, answers, strict=True)]
    target = folder / "vqa_result.json"
    write_text_atomic(target, json.dumps(records))
    values = [float(a) for a in answers]
    total = 0.0
    for v in values:
        total += v
    mean = total / len(values) if values else 0.0
    if score_file == "blip_vqa_score.txt":
        write_text_atomic(folder / score_file, "BLIP-VQA score:" + str(mean))
    elif score_file in ("avg_score.txt", "vqa_score.txt"):
        write_text_atomic(folder / score_file, "score avg:" + str(mean))
    elif score_file == "score.txt":
        write_text_atomic(folder / score_file, f"total:{total} num:{len(values)} avg:{mean}")
    if metric == "spatial" and image_names is not None:
        if len(image_names) != len(ids):
            raise ValueError(f"{len(image_names)} image names but {len(ids)} question ids")
        mapping = [
            {"image": name, "question_id": int(i)} for name, i in zip(image_names, ids, strict=True)
        ]
        write_text_atomic(folder / "mapping.json", json.dumps(mapping))
    return target


# --------------------------------------------------------------------------- GenEval


def geneval_prompt_dir(out: str | os.PathLike[str], prompt_index: int) -> Path:
    """``OUT/<prompt_index:05d>``."""
    if prompt_index < 0:
        raise ValueError(f"prompt index must be >= 0, got {prompt_index}")
    return Path(out) / f"{prompt_index:05d}"


def geneval_sample_path(out: str | os.PathLike[str], prompt_index: int, sample_index: int) -> Path:
    """``OUT/<prompt_index:05d>/samples/<sample_index:04d>.png``."""
    if sample_index < 0:
        raise ValueError(f"sample index must be >= 0, got {sample_index}")
    return geneval_prompt_dir(out, prompt_index) / "samples" / f"{sample_index:04d}.png"


def write_geneval_metadata(
    out: str | os.PathLike[str], prompt_index: int, metadata: Mapping[str, Any]
) -> Path:
    """Write ``OUT/<NNNNN>/metadata.jsonl``: the prompt's metadata line as one JSON object (the
    official generator ``json.dump``s it; the evaluator ``json.load``s it)."""
    path = geneval_prompt_dir(out, prompt_index) / "metadata.jsonl"
    write_text_atomic(path, json.dumps(dict(metadata)))
    return path


def geneval_items(
    out: str | os.PathLike[str],
    metadatas: Sequence[Mapping[str, Any]],
    images_per_prompt: int = 4,
    base_seed: int = 42,
) -> list[GenevalItem]:
    """Every GenEval image to generate (4 per prompt by default), seed ``base_seed + p * n + k``."""
    if images_per_prompt < 1:
        raise ValueError(f"images_per_prompt must be >= 1, got {images_per_prompt}")
    items = []
    for p, metadata in enumerate(metadatas):
        for k in range(images_per_prompt):
            items.append(
                GenevalItem(
                    prompt_index=p,
                    sample_index=k,
                    metadata=dict(metadata),
                    seed=base_seed + p * images_per_prompt + k,
                    image_path=geneval_sample_path(out, p, k),
                    chain_path=geneval_prompt_dir(out, p) / "chains" / f"{k:04d}.txt",
                )
            )
    return items


def write_geneval_grid(
    out: str | os.PathLike[str], prompt_index: int, images: Sequence[Image.Image], padding: int = 2
) -> Path:
    """The optional ``grid.png``: the prompt's images in one row with a 2-px border."""
    if not images:
        raise ValueError("write_geneval_grid: no images")
    w, h = images[0].size
    grid = Image.new(
        "RGB", (len(images) * (w + padding) + padding, h + 2 * padding), color=(0, 0, 0)
    )
    for i, img in enumerate(images):
        grid.paste(img.convert("RGB").resize((w, h)), (padding + i * (w + padding), padding))
    path = geneval_prompt_dir(out, prompt_index) / "grid.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path


@dataclass(frozen=True)
class GenevalPrompt:
    """A prompt folder as the GenEval evaluator sees it."""

    prompt_index: int
    metadata: dict[str, Any]
    samples: tuple[Path, ...]


_GENEVAL_SAMPLE = re.compile(r"\d+\.png")


def read_geneval_folder(out: str | os.PathLike[str]) -> list[GenevalPrompt]:
    """Read a GenEval image folder the way evaluate_images.py does: digit-named subfolders,
    their ``metadata.jsonl`` (one JSON object) and the ``samples/<digits>.png`` files in them
    (``re.match``, as the evaluator does). Sorted by folder number and file name."""
    root = Path(out)
    prompts = []
    for sub in sorted(root.iterdir(), key=lambda p: p.name):
        if not sub.is_dir() or not sub.name.isdigit():
            continue
        meta_path = sub / "metadata.jsonl"
        try:
            metadata = json.loads(meta_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ValueError(f"{meta_path}: missing (every prompt folder needs it)") from None
        except json.JSONDecodeError as error:
            raise ValueError(f"{meta_path}: not one JSON object ({error.msg})") from None
        validate_metadata(metadata, str(meta_path))
        sample_dir = sub / "samples"
        samples = (
            tuple(
                sorted(
                    p for p in sample_dir.iterdir() if p.is_file() and _GENEVAL_SAMPLE.match(p.name)
                )
            )
            if sample_dir.is_dir()
            else ()
        )
        prompts.append(GenevalPrompt(int(sub.name), metadata, samples))
    return prompts

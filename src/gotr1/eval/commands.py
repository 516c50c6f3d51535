"""``gotr1 eval compbench|geneval|world``: generate benchmark images with a policy and score them.

    gotr1 eval compbench --model DIR --out OUT [--categories color spatial] [--images-per-prompt 10]
                         [--scorer official|clip|blip-vqa|owlv2|qwen|openai|world ...]
                         [--limit N]
    gotr1 eval geneval   --model DIR --out OUT [--scorer ...] [--limit N]
    gotr1 eval world     --model DIR [--out OUT]

Several processes (one per GPU) split the generation:

    accelerate launch --multi_gpu --num_processes 8 -m gotr1 eval compbench --model DIR --out OUT
    torchrun --nproc_per_node 2 -m gotr1 eval geneval --model DIR --out OUT   (also on CPU)

Generation writes the official folder layouts (:mod:`gotr1.eval.layouts`), sharded over the
processes of ``accelerate launch`` and resumable (:mod:`gotr1.eval.generation`); scoring runs on the
main process after all images exist, applying the official rules (:mod:`gotr1.eval.compbench`,
:mod:`gotr1.eval.geneval`) to evidence from the chosen scorers: the benchmarks' own models through
transformers (:mod:`gotr1.eval.hf_scorers`: CLIP, BLIP-VQA, OWLv2 standing in for UniDet and
Mask2Former, and ``official``, the closest of them per category), or a judge
(:mod:`gotr1.eval.scorers`: Qwen2.5-VL, the world detector). Every result file and summary names the
scorer that judged it ("judged-by-<scorer>"), says per category how close it is to the official
metric ("exact", "near: ...", "not comparable"), records which judge trained the model and flags a
scorer that is that judge (:mod:`gotr1.eval.provenance`).

Registration imports nothing heavy; handlers import torch/transformers when they run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from PIL import Image

from gotr1.errors import UserError
from gotr1.eval import hf_scorers
from gotr1.eval.compbench import (
    CATEGORIES,
    CATEGORY_METRIC,
    category_mean,
    complex_kind,
    missing_capabilities,
    score_image,
)
from gotr1.eval.compbench import summary_markdown as compbench_summary_markdown
from gotr1.eval.compbench import summary_record as compbench_summary_record
from gotr1.eval.evidence import CLASSIC_CAPABILITIES, EvidenceScorer, capabilities
from gotr1.eval.generate import (
    add_generate_parser,
    add_plan_args,
    add_plan_cfg_arg,
    plan_options,
    sampling_config,
)
from gotr1.eval.geneval import evaluate_image, summarize
from gotr1.eval.geneval import summary_markdown as geneval_summary_markdown
from gotr1.eval.geneval import summary_record as geneval_summary_record
from gotr1.eval.hf_scorers import HF_SCORERS, OFFICIAL_MODELS, HFScorerOptions, closeness
from gotr1.eval.judge_flags import (
    PLAN_JUDGES,
    add_judge_args,
    build_plan_judge,
    check_plan_judge,
    close_judge,
    openai_config,
    plan_judge_label,
    qwen_local_judge,
)
from gotr1.eval.layouts import (
    COMPBENCH_PROMPT_FILES,
    CompbenchItem,
    GenevalItem,
    compbench_items,
    compbench_result_dir,
    geneval_items,
    load_compbench_prompts,
    load_complex_splits,
    load_geneval_metadata,
    write_compbench_results,
    write_jsonl,
    write_summary,
)
from gotr1.eval.scorers import (
    LogprobOpenAIJudge,
    QwenEvidenceScorer,
    WorldEvidenceScorer,
    run_batched,
)
from gotr1.world import CATEGORIES as WORLD_CATEGORIES
from gotr1.world import benchmark_prompts

SCORERS: tuple[str, ...] = ("official", "clip", "blip-vqa", "owlv2", "qwen", "openai", "world")
"""Evidence scorers: the benchmarks' models through transformers (official = the closest per
category; clip, blip-vqa, owlv2), the local Qwen2.5-VL judge, an OpenAI-compatible server, the world
detector."""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``gotr1 generate``, ``gotr1 eval compbench``, ``gotr1 eval geneval`` and ``gotr1 eval
    world``."""
    add_generate_parser(subparsers)
    parser = subparsers.add_parser(
        "eval",
        help="benchmarks: T2I-CompBench and GenEval protocols, the world benchmark",
        description="Generate benchmark images with a policy in the official layouts and score "
        "them with the official rules over a chosen scorer's evidence.",
    )
    sub = parser.add_subparsers(dest="eval_command", metavar="BENCHMARK", required=True)

    compbench = sub.add_parser(
        "compbench",
        help="T2I-CompBench: images per category, official rules, judged by a scorer",
        description="Generate --images-per-prompt images per T2I-CompBench val prompt into "
        "OUT/<category>/samples/<prompt>_<index:06d>.png (chains in OUT/<category>/chains/), then "
        "score them with the official rules over the scorer's evidence: "
        "OUT/<category>/judged-by-<scorer>/.../vqa_result.json and "
        "OUT/summary.judged-by-<scorer>.json/.md.",
    )
    _add_model_args(compbench, default_seed=42)
    compbench.add_argument(
        "--categories",
        nargs="+",
        default=None,
        metavar="CATEGORY",
        help="categories to run (default: color shape texture spatial non_spatial complex numeracy)",
    )
    compbench.add_argument(
        "--images-per-prompt", type=int, default=10, help="images per prompt (official: 10)"
    )
    compbench.add_argument(
        "--prompts-dir",
        type=Path,
        default=None,
        help="folder of <category>_val.txt prompt files to use instead of the shipped val files",
    )
    _add_scorer_args(compbench)
    compbench.set_defaults(func=run_compbench)

    geneval = sub.add_parser(
        "geneval",
        help="GenEval: 4 images per prompt in GenEval's layout, its rules, judged by a scorer",
        description="Generate images into OUT/<00000>/samples/NNNN.png with "
        "OUT/<00000>/metadata.jsonl (the layout the official evaluator reads), then score them "
        "with GenEval's rules over the scorer's detections: OUT/judged-by-<scorer>/results.jsonl "
        "and OUT/summary.judged-by-<scorer>.json/.md.",
    )
    _add_model_args(geneval, default_seed=42)
    geneval.add_argument(
        "--images-per-prompt", type=int, default=4, help="images per prompt (official: 4)"
    )
    geneval.add_argument(
        "--metadata",
        type=Path,
        default=None,
        help="evaluation_metadata.jsonl to use instead of the shipped one",
    )
    _add_scorer_args(geneval)
    geneval.set_defaults(func=run_geneval)

    world = sub.add_parser(
        "world",
        help="the world benchmark per category, judged exactly",
        description="Generate images for the world benchmark prompts and score them with the "
        "exact world judge: per-category soft score and accuracy; writes summary.json, "
        "summary.md, samples.jsonl and images/ under --out.",
    )
    _add_model_args(world, default_seed=0, out_required=False, prompts_per_batch=64)
    world.add_argument("--split", choices=("test", "train"), default="test", help="prompt split")
    world.add_argument(
        "--num-prompts", type=int, default=300, help="benchmark prompts (balanced over categories)"
    )
    world.add_argument("--prompt-seed", type=int, default=0, help="seed of the prompt set")
    world.add_argument(
        "--categories", nargs="+", default=None, metavar="CATEGORY", help="world categories to run"
    )
    world.add_argument("--images-per-prompt", type=int, default=1, help="images per prompt")
    world.add_argument(
        "--no-rewards", action="store_true", help="skip the per-sample world-judge rewards"
    )
    world.set_defaults(func=run_world)


def _add_model_args(
    parser: argparse.ArgumentParser,
    default_seed: int,
    out_required: bool = True,
    prompts_per_batch: int = 8,
) -> None:
    parser.add_argument(
        "--model", default=None, help="policy folder: HF Janus-Pro / GoT-R1 folder or LoRA adapter"
    )
    if out_required:
        parser.add_argument("--out", type=Path, required=True, help="output folder")
    else:
        parser.add_argument(
            "--out",
            type=Path,
            default=Path("eval-world"),
            help="output folder (default eval-world)",
        )
    parser.add_argument("--limit", type=int, default=None, help="only the first N prompts (each)")
    parser.add_argument("--seed", type=int, default=default_seed, help="base sampling seed")
    parser.add_argument(
        "--cfg-weight", type=float, default=5.0, help="classifier-free guidance (default 5)"
    )
    add_plan_cfg_arg(parser)
    add_plan_args(parser)
    parser.add_argument("--temperature", type=float, default=1.0, help="chain temperature")
    parser.add_argument(
        "--image-temperature", type=float, default=1.0, help="image-token temperature"
    )
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling of the chain")
    parser.add_argument(
        "--max-chain-tokens", type=int, default=600, help="chain length cap (default 600)"
    )
    parser.add_argument(
        "--prompts-per-batch",
        type=int,
        default=prompts_per_batch,
        help=f"prompts per rollout call (default {prompts_per_batch}; rows = prompts x images)",
    )
    parser.add_argument(
        "--max-batch-rows",
        type=int,
        default=None,
        help="cap on samples per decoding pass inside a rollout (memory bound for 7B models)",
    )
    parser.add_argument(
        "--compile-decode",
        action="store_true",
        help="CUDA: torch.compile the image-token decode step (faster on long runs)",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: auto)")
    parser.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16"),
        default=None,
        help="policy dtype (default bfloat16 on CUDA, float32 on CPU)",
    )


KEPT_IMAGES_HINT = "generated images are kept: rerun with --skip-generation once the judge loads"
"""The end of a local judge's load error in `gotr1 eval`."""


def _add_scorer_args(parser: argparse.ArgumentParser) -> None:
    add_judge_args(parser, "the first of --scorer that is one of these, else qwen")
    parser.add_argument(
        "--scorer",
        nargs="+",
        default=["qwen"],
        metavar="SCORER",
        help="evidence scorers, each scored and summarised on its own: official (per category "
        "the closest of clip, blip-vqa and owlv2), clip (CLIPScore, non-spatial), blip-vqa "
        "(colour, shape, texture), owlv2 (boxes: spatial, numeracy, GenEval; colours by CLIP "
        "ViT-L/14), qwen (local Qwen2.5-VL, default), openai (an OpenAI-compatible server such as "
        "vLLM), world (world detector). A scorer scores the categories it has evidence for",
    )
    parser.add_argument(
        "--clip-model",
        default=OFFICIAL_MODELS["clip"],
        help="CLIP for CLIPScore: hub id or folder (clip, official)",
    )
    parser.add_argument(
        "--blip-model",
        default=OFFICIAL_MODELS["blip-vqa"],
        help="BlipForQuestionAnswering: hub id or folder (blip-vqa, official)",
    )
    parser.add_argument(
        "--owlv2-model",
        default=OFFICIAL_MODELS["owlv2"],
        help="Owlv2ForObjectDetection: hub id or folder (owlv2, official)",
    )
    parser.add_argument(
        "--colour-clip-model",
        default=OFFICIAL_MODELS["colour-clip"],
        help="CLIP for GenEval's colour classifier: hub id or folder (owlv2, official)",
    )
    parser.add_argument(
        "--owlv2-threshold",
        type=float,
        default=0.1,
        help="OWLv2 score above which an object is found; mapped to UniDet's 0.5 and GenEval's "
        "0.3 (default 0.1)",
    )
    parser.add_argument(
        "--owlv2-count-threshold",
        type=float,
        default=0.3,
        help="OWLv2 score above which GenEval counts an object; mapped to its 0.9 (default 0.3)",
    )
    parser.add_argument(
        "--owlv2-nms",
        type=float,
        default=0.5,
        help="IoU above which two same-name OWLv2 boxes are one object (default 0.5)",
    )
    parser.add_argument(
        "--score-chunk", type=int, default=64, help="images scored per batched round"
    )
    parser.add_argument(
        "--skip-generation", action="store_true", help="only score the images already in --out"
    )
    parser.add_argument(
        "--skip-scoring", action="store_true", help="only generate (score later, e.g. elsewhere)"
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="resume into an --out written with other settings (model, sampling, seed)",
    )


# --------------------------------------------------------------------------- shared helpers


def _check_common(args: argparse.Namespace) -> None:
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be at least 1, got {args.limit}")
    if args.images_per_prompt < 1:
        raise UserError(f"--images-per-prompt must be at least 1, got {args.images_per_prompt}")
    if args.prompts_per_batch < 1:
        raise UserError(f"--prompts-per-batch must be at least 1, got {args.prompts_per_batch}")
    if args.out.exists() and not args.out.is_dir():
        raise UserError(f"--out {args.out}: exists and is not a folder")
    if not getattr(args, "skip_generation", False) and not args.model:
        raise UserError("--model is required (unless --skip-generation)")
    plans = plan_options(args)  # a bad plan flag is refused before anything loads
    if hasattr(args, "plan_judge"):
        check_plan_judge(args, plans.candidates)
    scorers = getattr(args, "scorer", None)
    if scorers is not None:
        unknown = [s for s in scorers if s not in SCORERS]
        if unknown:
            raise UserError(
                f"unknown --scorer {', '.join(unknown)}; choose from {', '.join(SCORERS)}"
            )
        if getattr(args, "score_chunk", 1) < 1:
            raise UserError(f"--score-chunk must be at least 1, got {args.score_chunk}")
        if set(scorers) & set(HF_SCORERS):
            hf_options(args)  # checks the OWLv2 thresholds before anything is generated


def _processes(args: argparse.Namespace) -> tuple[int, int, str | None, Callable[[], None]]:
    """(process_index, num_processes, device, barrier): from accelerate under a multi-process
    launch, else a single process."""
    sizes = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
    if max(int(os.environ.get(name, "1") or 1) for name in sizes) <= 1:
        return 0, 1, args.device, lambda: None

    from accelerate import PartialState

    # The barrier before scoring waits for the slowest shard (hours on a full benchmark), far past
    # the default collective timeout.
    state = PartialState(cpu=args.device == "cpu", timeout=timedelta(hours=72))
    return (
        state.process_index,
        state.num_processes,
        args.device or str(state.device),
        (state.wait_for_everyone),
    )


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9.\-]+", "-", name).strip("-") or "scorer"


def _manifest(args: argparse.Namespace, benchmark: str) -> dict[str, Any]:
    """The settings that decide a benchmark folder's images (generation.json, checked on resume).
    plan_cfg_weight, the plan options (``plans``) and the plan judge are named only when set, so
    folders generated before they existed still match."""
    plan = {} if args.plan_cfg_weight is None else {"plan_cfg_weight": args.plan_cfg_weight}
    plans = plan_options(args)
    planning: dict[str, Any] = {}
    if plans.active:
        planning["plans"] = plans.to_dict()
    judge = plan_judge_name(args)
    if judge is not None:
        planning["plan_judge"] = plan_judge_label(judge, args)
    return {
        "benchmark": benchmark,
        "model": str(Path(args.model).expanduser().resolve())
        if Path(args.model).expanduser().exists()
        else str(args.model),
        "images_per_prompt": args.images_per_prompt,
        "seed": args.seed,
        "sampling": {
            "text_temperature": args.temperature,
            "image_temperature": args.image_temperature,
            "top_p": args.top_p,
            "cfg_weight": args.cfg_weight,
            **plan,
            "max_chain_tokens": args.max_chain_tokens,
        },
        **planning,
    }


def _check_manifest(out: Path, manifest: dict[str, Any], force: bool, write: bool) -> None:
    """Refuse to resume into a folder generated with other settings (unless ``force``)."""
    path = out / "generation.json"
    if path.is_file():
        try:
            previous = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise UserError(f"{path}: unreadable ({error}); remove it or use --force") from None
        keys = list(manifest) + [k for k in previous if k not in manifest]
        differs = [k for k in keys if previous.get(k) != manifest.get(k)]
        if differs and not force:
            raise UserError(
                f"{out} holds images generated with other settings ({', '.join(differs)} differ, "
                f"see {path}); use another --out, or --force to add to it anyway"
            )
        if not differs:
            return
    if write:
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def _progress() -> bool:
    return sys.stderr.isatty()


def hf_options(args: argparse.Namespace) -> Any:
    """The :class:`gotr1.eval.hf_scorers.HFScorerOptions` the scorer flags describe."""
    return HFScorerOptions(
        clip_model=args.clip_model,
        blip_model=args.blip_model,
        owlv2_model=args.owlv2_model,
        colour_clip_model=args.colour_clip_model,
        owlv2_found=args.owlv2_threshold,
        owlv2_count=args.owlv2_count_threshold,
        owlv2_nms=args.owlv2_nms,
        device=args.judge_device,
        dtype=args.judge_dtype,
        local_files_only=args.judge_local_files_only,
        batch_size=args.judge_batch_size,
    )


def scorer_provides(name: str) -> frozenset[str]:
    """What the scorer a ``--scorer`` name builds answers, known before it loads anything."""
    classes = {
        "clip": hf_scorers.ClipScoreScorer,
        "blip-vqa": hf_scorers.BlipVqaScorer,
        "owlv2": hf_scorers.Owlv2Scorer,
        "official": hf_scorers.OfficialScorer,
    }
    if name in classes:
        return frozenset(classes[name].provides)
    return CLASSIC_CAPABILITIES


def plan_judge_name(args: argparse.Namespace) -> str | None:
    """Which judge scores the plan candidates (one of `PLAN_JUDGES`): --plan-judge, else the
    first --scorer that is a judge, else qwen; None when there is one candidate (nothing to
    score) or the command has no judge flags (world: the world judge, always)."""
    if not hasattr(args, "scorer") or args.plan_candidates < 2:
        return None
    if args.plan_judge:
        return args.plan_judge
    return next((s for s in args.scorer if s in PLAN_JUDGES), "qwen")


def eval_plan_judge(args: argparse.Namespace) -> Any:
    """The judge that scores plan candidates (`plan_judge_name`), configured by the judge flags
    as the scorers' judge is; None when no plan is scored."""
    name = plan_judge_name(args)
    return None if name is None else build_plan_judge(name, args, KEPT_IMAGES_HINT)


def build_scorer(name: str, args: argparse.Namespace) -> EvidenceScorer:
    """The evidence scorer ``name`` (official, clip, blip-vqa, owlv2, qwen, openai, world)
    configured from the scorer and judge flags."""

    if name in HF_SCORERS:
        options = hf_options(args)
        benchmark = "geneval" if getattr(args, "eval_command", "") == "geneval" else "compbench"
        if name == "clip":
            return hf_scorers.ClipScoreScorer(options)
        if name == "blip-vqa":
            return hf_scorers.BlipVqaScorer(options)
        if name == "owlv2":
            return hf_scorers.Owlv2Scorer(options, benchmark)
        return hf_scorers.OfficialScorer(options, benchmark)
    if name == "world":
        return WorldEvidenceScorer()
    if name == "openai":
        return QwenEvidenceScorer(
            LogprobOpenAIJudge(openai_config(args)), name=f"{_slug(args.judge_model)}-http"
        )
    judge = qwen_local_judge(args, KEPT_IMAGES_HINT)
    try:
        return QwenEvidenceScorer(judge)
    except ValueError as error:
        raise UserError(f"--judge-model {args.judge_model}: {error}") from None


def provenance_markdown(record: dict[str, Any]) -> str:
    """The summary's closing lines: scorer models, skipped categories, which judge trained the
    model and whether this scorer is held out from it."""
    lines = [""]
    models = record.get("scorer_models") or {}
    if models:
        lines.append("Scorer models: " + ", ".join(f"{k} `{v}`" for k, v in models.items()) + ".")
    for category, why in (record.get("skipped_categories") or {}).items():
        lines.append(f"Not scored: {category} ({why}).")
    training = record.get("training_judge") or {}
    if training.get("judge"):
        trained = training["judge"] + (
            f" ({training['judge_model']})" if training.get("judge_model") else ""
        )
        lines.append(f"Trained with the {trained} judge (from `{training['source']}`).")
    elif training.get("source"):
        lines.append(f"Trained without a judge (from `{training['source']}`).")
    else:
        lines.append("The judge that trained this model is unknown (no run config.yaml found).")
    held = record.get("held_out")
    if held is False:
        lines.append(f"**Warning: {record['warning']}**")
    elif held:
        lines.append("This scorer is held out from training.")
    return "\n".join(lines) + "\n"


def _warn_judge(record: dict[str, Any]) -> None:
    if record.get("held_out") is False:
        print(f"warning: {record['warning']}", file=sys.stderr)


def _close(scorer: Any) -> None:
    close_judge(getattr(scorer, "judge", None))


def _require_images(items: Sequence[Any], out: Path) -> None:
    """Refuse to score when none of the expected images exists (nothing generated yet)."""
    if not any(Path(item.image_path).is_file() for item in items):
        raise UserError(
            f"{out}: none of the {len(items)} expected images exists; generate them first "
            "(drop --skip-generation)"
        )


def _open_rgb(path: Path) -> Any:
    with Image.open(path) as image:
        return image.convert("RGB")


# --------------------------------------------------------------------------- T2I-CompBench


def compbench_prompts(
    categories: Sequence[str], prompts_dir: Path | None = None, limit: int | None = None
) -> dict[str, list[str]]:
    """Prompts per category: the shipped val files (or ``prompts_dir/<category>_val.txt``),
    the first ``limit`` of each. Unknown categories and missing files raise UserError."""
    unknown = [c for c in categories if c not in CATEGORIES]
    if unknown:
        raise UserError(
            f"unknown T2I-CompBench categor{'y' if len(unknown) == 1 else 'ies'} "
            f"{', '.join(unknown)}; choose from {', '.join(CATEGORIES)}"
        )
    out: dict[str, list[str]] = {}
    for category in dict.fromkeys(categories):
        if prompts_dir is None:
            prompts = load_compbench_prompts(category)
        else:
            path = Path(prompts_dir) / COMPBENCH_PROMPT_FILES[category]
            if not path.is_file():
                raise UserError(f"--prompts-dir: {path} is missing")
            text = path.read_text(encoding="utf-8")
            prompts = [line.split("\t")[0] for line in text.splitlines() if line.strip()]
            if not prompts:
                raise UserError(f"{path}: no prompts")
        out[category] = prompts[:limit] if limit else prompts
    return out


def _complex_splits(prompts_dir: Path | None) -> tuple[list[str], list[str]]:
    spatial, action = load_complex_splits()
    if prompts_dir is not None:
        for name, target in (
            ("complex_val_spatial.txt", spatial),
            ("complex_val_action.txt", action),
        ):
            path = Path(prompts_dir) / name
            if path.is_file():
                target[:] = [t for t in path.read_text(encoding="utf-8").splitlines() if t.strip()]
    return spatial, action


def score_compbench_category(
    items: Sequence[CompbenchItem],
    scorer: EvidenceScorer,
    result_dir: Path,
    complex_splits: tuple[Sequence[str], Sequence[str]] | None = None,
    chunk: int = 64,
) -> dict[str, Any]:
    """Score one category's generated images with the official rule over ``scorer``'s evidence
    and write the official result files under ``result_dir``. Images not on disk are counted as
    missing and left out. Returns {"score", "images", "missing"}."""
    if not items:
        return {"score": 0.0, "images": 0, "missing": 0}
    category = items[0].category
    present = [item for item in items if Path(item.image_path).is_file()]
    results: list[Any] = []
    for start in range(0, len(present), chunk):
        part = present[start : start + chunk]
        jobs = []
        for item in part:
            image = _open_rgb(Path(item.image_path))
            kind = None
            if category == "complex":
                spatial, action = complex_splits or ([], [])
                kind = complex_kind(item.prompt, spatial, action)
            jobs.append(
                lambda s, image=image, prompt=item.prompt, kind=kind: score_image(
                    s, category, image, prompt, kind
                )
            )
        results.extend(run_batched(scorer, jobs))
    ids = [item.index for item in present]
    names = [Path(item.image_path).name for item in present]
    if category == "complex":
        blip = [f"{r.parts['attribute']:.4f}" for r in results]
        spatial_scores = [r.parts["spatial"] for r in results]
        write_compbench_results(result_dir, "blip", blip, ids)
        write_compbench_results(result_dir, "spatial", spatial_scores, ids, names)
        write_compbench_results(result_dir, "spatial_3_in_1", spatial_scores, ids)
        write_compbench_results(result_dir, "clip", [r.parts["action"] for r in results], ids)
        answers: list[Any] = [r.score for r in results]
        write_compbench_results(result_dir, "3_in_1", answers, ids)
    else:
        answers = [r.answer for r in results]
        metric = CATEGORY_METRIC[category]
        write_compbench_results(
            result_dir, metric, answers, ids, names if metric == "spatial" else None
        )
    return {
        "score": category_mean(answers),
        "images": len(present),
        "missing": len(items) - len(present),
    }


def run_compbench(args: argparse.Namespace) -> int:
    """Handler of ``gotr1 eval compbench``."""
    from gotr1.eval.provenance import provenance_record  # loads yaml

    _check_common(args)
    prompts = compbench_prompts(args.categories or list(CATEGORIES), args.prompts_dir, args.limit)
    try:
        items = {
            category: compbench_items(args.out, category, texts, args.images_per_prompt, args.seed)
            for category, texts in prompts.items()
        }
    except ValueError as error:
        raise UserError(str(error)) from None
    for name in args.scorer:
        lacking = [(c, missing_capabilities(c, scorer_provides(name))) for c in items]
        if all(m for _, m in lacking):
            what = "; ".join(f"{c} needs {' and '.join(m)}" for c, m in lacking)
            raise UserError(
                f"--scorer {name} has no evidence for the chosen categories ({what}); choose "
                "other categories or another scorer (official scores every category)"
            )
    rank, world, device, barrier = _processes(args)
    if not args.skip_generation:
        _generate(
            args,
            [i for group in items.values() for i in group],
            "T2I-CompBench",
            rank,
            world,
            device,
        )
    barrier()
    if rank != 0 or args.skip_scoring:
        return 0
    _require_images([i for group in items.values() for i in group], args.out)
    splits = _complex_splits(args.prompts_dir)
    for name in args.scorer:
        start = time.perf_counter()
        scorer = build_scorer(name, args)
        provides = capabilities(scorer)
        skipped = {c: missing_capabilities(c, provides) for c in items}
        skipped = {c: m for c, m in skipped.items() if m}
        try:
            per_category = {
                category: score_compbench_category(
                    category_items,
                    scorer,
                    compbench_result_dir(args.out, category, scorer.name),
                    splits,
                    args.score_chunk,
                )
                for category, category_items in items.items()
                if category not in skipped
            }
        finally:
            _close(scorer)
        scores = {c: r["score"] for c, r in per_category.items()}
        record = compbench_summary_record(
            scores,
            scorer.name,
            {c: r["images"] for c, r in per_category.items()},
            clip="clip_score" in provides,
            closeness=(
                {c: closeness(scorer, "compbench", c) for c in scores}
                if getattr(scorer, "models", None)
                else None
            ),
        )
        record.update(
            {
                "scorer": name,
                "scorer_models": dict(getattr(scorer, "models", {}) or {}),
                "skipped_categories": {
                    c: f"scorer {name} has no {', '.join(m)} evidence" for c, m in skipped.items()
                },
                **provenance_record(args.model, name, args.judge_model),
                "missing_images": {c: r["missing"] for c, r in per_category.items()},
                "model": args.model,
                "images_per_prompt": args.images_per_prompt,
                "limit": args.limit,
                "prompts_dir": str(args.prompts_dir) if args.prompts_dir else None,
                "scorer_stats": dict(getattr(scorer, "stats", {})),
                "scoring_seconds": time.perf_counter() - start,
            }
        )
        markdown = compbench_summary_markdown(record) + provenance_markdown(record)
        paths = write_summary(args.out, record, markdown, f"summary.judged-by-{_slug(scorer.name)}")
        _warn_judge(record)
        print(markdown)
        print(f"wrote {paths[0]} and {paths[1]}")
        if sum(record["missing_images"].values()):
            print(
                f"warning: {sum(record['missing_images'].values())} images were missing and not "
                "scored",
                file=sys.stderr,
            )
    return 0


def _generate(
    args: argparse.Namespace,
    items: Sequence[Any],
    benchmark: str,
    rank: int,
    world: int,
    device: str | None,
) -> None:
    """Load the policy and generate this process's share of ``items``."""
    from gotr1.eval.generation import generate_items, load_policy

    sampling = sampling_config(args)
    policy = load_policy(args.model, device=device, dtype=args.dtype)
    manifest = _manifest(args, benchmark)
    _check_manifest(args.out, manifest, args.force, write=rank == 0)
    extra = {"model": manifest["model"]}
    if "plan_judge" in manifest:
        extra["plan_judge"] = manifest["plan_judge"]
    judge = eval_plan_judge(args)
    try:
        report = generate_items(
            policy,
            items,
            sampling,
            prompts_per_batch=args.prompts_per_batch,
            process_index=rank,
            num_processes=world,
            progress=_progress(),
            extra_record=extra,
            plans=plan_options(args),
            plan_judge=judge,
        )
    finally:
        close_judge(judge)
    report_path = args.out / f"generation.process{rank}.json"
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    print(
        f"[process {rank}/{world}] generated {report.generated} images, skipped "
        f"{report.skipped} existing, {report.batches} batches, {report.seconds:.1f}s"
    )


# --------------------------------------------------------------------------- GenEval


def score_geneval_items(
    items: Sequence[GenevalItem], scorer: EvidenceScorer, chunk: int = 64
) -> tuple[list[dict[str, Any]], int]:
    """GenEval results rows (official results.jsonl format) of the generated images, scored with
    GenEval's rules over ``scorer``'s evidence; and how many images were missing."""
    present = [item for item in items if Path(item.image_path).is_file()]
    rows: list[dict[str, Any]] = []
    for start in range(0, len(present), chunk):
        jobs = []
        for item in present[start : start + chunk]:
            image = _open_rgb(Path(item.image_path))
            jobs.append(
                lambda s, image=image, item=item: evaluate_image(
                    s, image, item.metadata, str(item.image_path)
                )
            )
        rows.extend(run_batched(scorer, jobs))
    return rows, len(items) - len(present)


def run_geneval(args: argparse.Namespace) -> int:
    """Handler of ``gotr1 eval geneval``."""
    from gotr1.eval.provenance import provenance_record  # loads yaml

    _check_common(args)
    if args.metadata is not None and not args.metadata.is_file():
        raise UserError(f"--metadata {args.metadata}: no such file")
    try:
        metadata = load_geneval_metadata(args.metadata)
    except ValueError as error:
        raise UserError(str(error)) from None
    if not metadata:
        raise UserError(f"--metadata {args.metadata}: no prompts")
    metadata = metadata[: args.limit] if args.limit else metadata
    for name in args.scorer:
        if not {"detect", "colour"} <= scorer_provides(name):
            raise UserError(
                f"--scorer {name} cannot score GenEval (it needs boxes and colours): use owlv2 "
                "or official"
            )
    items = geneval_items(args.out, metadata, args.images_per_prompt, args.seed)
    rank, world, device, barrier = _processes(args)
    if not args.skip_generation:
        _generate(args, items, "GenEval", rank, world, device)
    barrier()
    if rank != 0 or args.skip_scoring:
        return 0
    _require_images(items, args.out)
    for name in args.scorer:
        start = time.perf_counter()
        scorer = build_scorer(name, args)
        try:
            rows, missing = score_geneval_items(items, scorer, args.score_chunk)
        finally:
            _close(scorer)
        slug = _slug(scorer.name)
        results_path = write_jsonl(args.out / f"judged-by-{slug}" / "results.jsonl", rows)
        models = dict(getattr(scorer, "models", {}) or {})
        record = geneval_summary_record(
            summarize(rows), scorer.name, closeness(scorer, "geneval") if models else None
        )
        record.update(
            {
                "scorer": name,
                "scorer_models": models,
                **provenance_record(args.model, name, args.judge_model),
                "missing_images": missing,
                "results": str(results_path),
                "model": args.model,
                "images_per_prompt": args.images_per_prompt,
                "limit": args.limit,
                "metadata": str(args.metadata) if args.metadata else None,
                "scorer_stats": dict(getattr(scorer, "stats", {})),
                "scoring_seconds": time.perf_counter() - start,
            }
        )
        markdown = geneval_summary_markdown(record) + provenance_markdown(record)
        paths = write_summary(args.out, record, markdown, f"summary.judged-by-{slug}")
        _warn_judge(record)
        print(markdown)
        print(f"wrote {paths[0]}, {paths[1]} and {results_path}")
        if missing:
            print(f"warning: {missing} images were missing and not scored", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------- world


def run_world(args: argparse.Namespace) -> int:
    """Handler of ``gotr1 eval world``."""
    from gotr1.eval.generation import load_policy
    from gotr1.eval.world_bench import evaluate_world, world_summary_markdown, write_world_results

    _check_common(args)
    if args.num_prompts < 1:
        raise UserError(f"--num-prompts must be at least 1, got {args.num_prompts}")
    categories = args.categories or list(WORLD_CATEGORIES)
    unknown = [c for c in categories if c not in WORLD_CATEGORIES]
    if unknown:
        raise UserError(
            f"unknown world categor{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)}; "
            f"choose from {', '.join(WORLD_CATEGORIES)}"
        )
    prompts = benchmark_prompts(args.split, args.num_prompts, args.prompt_seed)
    chosen: list[Any] = []
    taken: dict[str, int] = {}
    for text, spec in prompts:
        if spec.category in categories and taken.get(spec.category, 0) < (args.limit or 10**9):
            taken[spec.category] = taken.get(spec.category, 0) + 1
            chosen.append((text, spec))
    if not chosen:
        raise UserError("no prompts left after --categories/--limit/--num-prompts")
    sampling = sampling_config(args)
    policy = load_policy(args.model, device=args.device, dtype=args.dtype)
    result = evaluate_world(
        policy,
        chosen,
        seed=args.seed,
        num_generations=args.images_per_prompt,
        sampling=sampling,
        prompts_per_batch=args.prompts_per_batch,
        with_rewards=not args.no_rewards,
        progress=_progress(),
        plans=plan_options(args),
    )
    result["model"] = args.model
    result["settings"]["split"] = args.split
    result["settings"]["prompt_seed"] = args.prompt_seed
    paths = write_world_results(result, args.out)
    print(world_summary_markdown(result))
    print(f"wrote {paths['summary']}, {paths['markdown']} and {paths['samples']}")
    return 0

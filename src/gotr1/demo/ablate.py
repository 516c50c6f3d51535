"""`gotr1 ablate`: the paper's reward ablations in the world, from one SFT checkpoint.

    summary = run_ablation(DemoConfig.full(out="runs/ablate"))

Every arm starts GRPO from the same SFT model with the same seed, prompts and budget (the demo's
GRPO settings) and differs only in its reward: which components it computes and how it combines
them. Each arm's model is scored on the same held-out prompts with the same sampling seed.
Writes ``ablation.json`` and ``ablation.md`` (the layout of the paper's ablation table, plus a
comparison with the direction the paper reports, `PAPER_ABLATION`).

Folders: ``tokenizer/`` and ``sft/`` (or those of a demo run, ``from_demo``), then
``arms/<arm>/grpo`` and ``arms/<arm>/eval`` — all cached like the demo's stages.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gotr1.demo import pipeline as P
from gotr1.demo.config import DemoConfig
from gotr1.demo.report import read_eval_samples
from gotr1.errors import UserError
from gotr1.eval.world_bench import paired_delta_standard_error


@dataclass(frozen=True)
class Arm:
    """One reward setting of the ablation."""

    name: str
    label: str
    components: tuple[str, ...]
    combination: str


ARMS: tuple[Arm, ...] = (
    Arm(
        "product",
        "all four, product: R_PI·(R_sem+R_spa)·R_RI",
        ("sem", "spa", "ri", "pi"),
        "product",
    ),
    Arm("sum", "all four, sum instead of product", ("sem", "spa", "ri", "pi"), "sum"),
    Arm("no_sem", "without R_sem: R_PI·R_spa·R_RI", ("spa", "ri", "pi"), "product"),
    Arm("no_spa", "without R_spa: R_PI·R_sem·R_RI", ("sem", "ri", "pi"), "product"),
    Arm("pi_only", "R_PI only", ("pi",), "product"),
    Arm("ri_only", "R_RI only", ("ri",), "product"),
    Arm("sem_spa", "R_sem + R_spa only", ("sem", "spa"), "product"),
)
ARM_NAMES: tuple[str, ...] = tuple(a.name for a in ARMS)

PAPER_COLUMNS: tuple[str, ...] = (
    "Color",
    "Shape",
    "Texture",
    "2D-Spatial",
    "Non-Spatial",
    "Complex",
)
PAPER_ABLATION: dict[str, tuple[float, ...] | None] = {
    "sft": (0.6336, 0.4456, 0.5621, 0.2140, 0.3070, 0.3490),
    "ri_only": (0.3340, 0.2563, 0.3940, 0.0076, 0.2537, 0.2488),
    "pi_only": (0.7401, 0.5066, 0.6308, 0.2398, 0.3076, 0.3724),
    "sem_spa": (0.7050, 0.4671, 0.6075, 0.2283, 0.3089, 0.3619),
    "product": (0.7632, 0.5174, 0.6589, 0.2674, 0.3101, 0.3749),
    "sum": (0.7154, 0.4385, 0.5608, 0.2254, 0.3080, 0.3638),
    "no_sem": None,
    "no_spa": None,
}
"""GoT-R1-1B after 1000 GRPO steps on T2I-CompBench (PAPER.md); the paper has no rows without
R_sem or without R_spa alone."""

PAPER_CLAIMS: tuple[tuple[str, str, str], ...] = (
    ("product", "sum", "the product of the four rewards beats their sum"),
    ("product", "pi_only", "all four rewards beat R_PI alone"),
    ("product", "sem_spa", "all four rewards beat the chain rewards (R_sem + R_spa) alone"),
    ("pi_only", "sem_spa", "R_PI alone beats R_sem + R_spa alone"),
    ("sem_spa", "sft", "R_sem + R_spa alone still improves on SFT"),
    ("sft", "ri_only", "R_RI alone collapses below SFT"),
    ("product", "no_sem", "dropping R_sem hurts (not in the paper's table)"),
    ("product", "no_spa", "dropping R_spa hurts (not in the paper's table)"),
)


def resolve_arms(names: Sequence[str] | None) -> list[Arm]:
    """The arms to run, in the table's order; unknown names raise `UserError`."""
    if not names:
        return list(ARMS)
    unknown = [n for n in names if n not in ARM_NAMES]
    if unknown:
        raise UserError(f"--arms: unknown arm(s) {unknown}; choose from {', '.join(ARM_NAMES)}")
    return [a for a in ARMS if a.name in set(names)]


def paper_mean(name: str) -> float | None:
    """Mean of the paper's six T2I-CompBench columns for an arm (None when not reported)."""
    row = PAPER_ABLATION.get(name)
    return sum(row) / len(row) if row else None


def demo_tokenizer_folder(run: Path) -> Path:
    """The tokenizer stage a demo run used: its own ``tokenizer/``, or the shared one a
    ``--seeds`` run names in the seed folder's metrics.json."""
    own = run / "tokenizer"
    metrics = run / "metrics.json"
    if own.is_dir() or not metrics.is_file():
        return own
    try:
        shared = json.loads(metrics.read_text())["settings"]["tokenizer_dir"]
    except (ValueError, KeyError, TypeError):
        return own
    if not shared:
        return own
    # as recorded (relative to where the demo ran), else beside the seed folders
    return next((c for c in (Path(shared), run.parent / Path(shared).name) if c.is_dir()), own)


def run_ablation(
    config: DemoConfig,
    arms: Sequence[str] | None = None,
    from_demo: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the ablation arms from one SFT checkpoint; writes ablation.json / ablation.md."""
    P.check_settings(config)
    started, started_cpu = time.perf_counter(), P.cpu_seconds()
    chosen = resolve_arms(arms)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    P.apply_process_settings(config)
    config, _ = P.resolve_precision(config)
    stages = P.Stages(log)

    # The SFT checkpoint every arm starts from: a demo run's, or trained here.
    base = Path(from_demo) if from_demo is not None else out
    if from_demo is not None and not (base / "sft" / "final" / "config.json").is_file():
        raise UserError(f"--from-demo {base}: no finished SFT stage (sft/final) in that folder")
    preset_path = P.write_preset(config, out)
    tokenizer_folder = (
        Path(config.tokenizer_dir) if config.tokenizer_dir else demo_tokenizer_folder(base)
    )
    tokenizer = stages.run(
        "tokenizer",
        tokenizer_folder,
        P.tokenizer_settings(config),
        lambda folder: P.train_tokenizer(config, preset_path, folder),
    )
    sft_dir = base / "sft"
    sft_settings = P.stage_settings(
        tokenizer["fingerprint"],
        P.sft_config(config, preset_path, tokenizer_folder / "model", sft_dir),
    )
    if from_demo is not None:
        marker = P.read_marker(sft_dir)
        if not P.marker_matches(marker, sft_settings):
            raise UserError(
                f"--from-demo {base}: its SFT stage was run with other settings than this "
                "ablation's (e.g. --quick or --seed differ); run without --from-demo"
            )

    sft = stages.run(
        "sft",
        sft_dir,
        sft_settings,
        lambda folder: P.train_sft_stage(config, preset_path, tokenizer_folder / "model", folder),
    )
    sft_final = sft_dir / "final"
    eval_settings = P.eval_settings(config)
    results: dict[str, dict[str, Any]] = {}
    sft_eval = stages.run(
        "eval-sft",
        out / "arms" / "sft" / "eval",
        {**eval_settings, "upstream": sft["fingerprint"]},
        lambda folder: P.evaluate_model(config, sft_final, folder),
    )
    results["sft"] = _arm_result(sft_eval, None)
    samples = {"sft": read_eval_samples(out / "arms" / "sft" / "eval")}
    for arm in chosen:
        folder = out / "arms" / arm.name
        overrides = {
            "reward_components": list(arm.components),
            "reward_combination": arm.combination,
        }
        settings = P.grpo_stage_settings(
            config,
            sft["fingerprint"],
            P.grpo_config(config, sft_final, folder / "grpo", **overrides),
        )

        def run_grpo(target: Path, overrides: dict[str, Any] = overrides) -> dict[str, Any]:
            grpo = P.grpo_config(config, sft_final, target, **overrides)
            return P.train_grpo_stage(grpo, P.grpo_training_processes(config))

        log(f"--- arm {arm.name}: {arm.label}")
        grpo = stages.run("grpo", folder / "grpo", settings, run_grpo)
        evaluated = stages.run(
            "eval-grpo",
            folder / "eval",
            {**eval_settings, "upstream": grpo["fingerprint"]},
            lambda target, model=folder / "grpo" / "final": P.evaluate_model(config, model, target),
        )
        results[arm.name] = _arm_result(evaluated, grpo)
        samples[arm.name] = read_eval_samples(folder / "eval")
        results[arm.name]["delta_standard_error"] = paired_delta_standard_error(
            samples["sft"], samples[arm.name]
        )["overall"]

    summary = {
        "seed": config.seed,
        "quick": config.quick,
        "benchmark": {
            "split": "test",
            "prompts": config.eval_prompts,
            "prompt_seed": config.eval_prompt_seed,
            "sampling_seed": config.seed,
            "images_per_prompt": config.eval_images_per_prompt,
        },
        "budget": {
            "grpo_steps": config.grpo_steps,
            "num_prompts": config.grpo_num_prompts,
            "num_generations": config.grpo_num_generations,
            "learning_rate": config.grpo_learning_rate,
        },
        "arms": {
            a.name: {
                "label": a.label,
                "components": list(a.components),
                "combination": a.combination,
            }
            for a in chosen
        },
        "results": results,
        "paper": {
            "columns": list(PAPER_COLUMNS),
            "rows": {k: list(v) if v else None for k, v in PAPER_ABLATION.items()},
        },
        "comparison": compare_with_paper(results, samples),
        "seconds": time.perf_counter() - started,
        "cpu_seconds": P.cpu_seconds() - started_cpu,
    }
    (out / "ablation.json").write_text(json.dumps(summary, indent=2) + "\n")
    text = ablation_markdown(summary)
    (out / "ablation.md").write_text(text)
    log(text)
    return summary


def _arm_result(evaluated: dict[str, Any], grpo: dict[str, Any] | None) -> dict[str, Any]:
    record = evaluated["result"]
    out = {
        "soft": record["soft"],
        "accuracy": record["accuracy"],
        "rewards": record.get("rewards"),
        "eval_seconds": evaluated.get("seconds"),
    }
    if grpo is not None:
        out["grpo_seconds"] = grpo.get("seconds")
        out["grpo_cpu_seconds"] = grpo.get("cpu_seconds")
    return out


NOISE_ERRORS = 2.0
"""A world difference within this many standard errors of zero counts as noise."""


def compare_with_paper(
    results: dict[str, dict[str, Any]],
    samples: dict[str, Sequence[dict[str, Any]]] | None = None,
) -> list[dict[str, Any]]:
    """Each ordering the paper reports, checked in the world (overall soft score); claims whose
    arms were not run are left out. With the arms' evaluation `samples`, each difference gets
    its standard error (paired by prompt) and a verdict: agrees, disagrees or within noise
    (`NOISE_ERRORS`)."""
    rows = []
    for better, worse, claim in PAPER_CLAIMS:
        if better not in results or worse not in results:
            continue
        world = results[better]["soft"]["overall"] - results[worse]["soft"]["overall"]
        error = None
        if samples is not None and better in samples and worse in samples:
            error = paired_delta_standard_error(samples[worse], samples[better])["overall"]
        paper_better, paper_worse = paper_mean(better), paper_mean(worse)
        paper = (
            paper_better - paper_worse
            if paper_better is not None and paper_worse is not None
            else None
        )
        rows.append(
            {
                "claim": claim,
                "better": better,
                "worse": worse,
                "world_difference": world,
                "standard_error": error,
                "paper_difference": paper,
                "world_agrees": world > 0,
                "verdict": _verdict(world, error),
            }
        )
    return rows


def _verdict(difference: float, error: float | None) -> str:
    if error is not None and abs(difference) <= NOISE_ERRORS * error:
        return "within noise"
    return "agrees" if difference > 0 else "DISAGREES"


_ROW_ORDER = ("sft", "ri_only", "pi_only", "sem_spa", "product", "sum", "no_sem", "no_spa")
_ROW_LABELS = {"sft": "none (SFT only)", **{a.name: a.label for a in ARMS}}


def ablation_markdown(summary: dict[str, Any]) -> str:
    """The ablation table in the paper's layout (rows = rewards, columns = categories), the
    paper's own rows, and the comparison of directions."""
    results = summary["results"]
    categories = list(results["sft"]["soft"])
    lines = [
        "# Reward ablation in the world",
        "",
        f"GRPO from one SFT checkpoint, seed {summary['seed']}, the same budget per arm "
        f"({summary['budget']['grpo_steps']} steps x {summary['budget']['num_prompts']} prompts x "
        f"{summary['budget']['num_generations']} samples); held-out world benchmark "
        f"({summary['benchmark']['prompts']} test-split prompts x "
        f"{summary['benchmark'].get('images_per_prompt', 1)} images), soft score; s.e. = "
        "standard error of the difference (paired by prompt)"
        f"{' (quick mode: a smoke run)' if summary.get('quick') else ''}.",
        "",
        "| rewards | " + " | ".join(categories) + " | Δ overall vs SFT | s.e. |",
        "|" + " --- |" * (len(categories) + 3),
    ]
    for name in _ROW_ORDER:
        if name not in results:
            continue
        soft = results[name]["soft"]
        cells = " | ".join(f"{soft[c]:.4f}" for c in categories)
        delta = soft["overall"] - results["sft"]["soft"]["overall"]
        error = results[name].get("delta_standard_error")
        change = "" if name == "sft" else f"{delta:+.4f}"
        error_text = f"{error:.4f}" if isinstance(error, int | float) else ""
        lines.append(f"| {_ROW_LABELS[name]} | {cells} | {change} | {error_text} |")
    lines += [
        "",
        "The paper (GoT-R1-1B, T2I-CompBench, " + " / ".join(PAPER_COLUMNS) + "; mean):",
        "",
        "| rewards | scores | mean |",
        "| --- | --- | --- |",
    ]
    for name in _ROW_ORDER:
        row = PAPER_ABLATION.get(name)
        if row is None:
            continue
        lines.append(
            f"| {_ROW_LABELS[name]} | {' '.join(f'{v:.4f}' for v in row)} | {paper_mean(name):.4f} |"
        )
    lines += ["", "## Direction: the world vs the paper", ""]
    for row in summary["comparison"]:
        paper = (
            f"paper {row['paper_difference']:+.4f}"
            if row["paper_difference"] is not None
            else "paper: not reported"
        )
        error = row["standard_error"]
        error_text = f" ± {error:.4f}" if isinstance(error, int | float) else ""
        lines.append(
            f"- {row['claim']}: world {row['world_difference']:+.4f}{error_text} "
            f"({row['verdict']}); {paper}"
        )
    return "\n".join(lines) + "\n"

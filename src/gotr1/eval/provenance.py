"""Which judge trained a model, and whether an evaluation's scorer is that judge.

Scoring a policy with the judge it was trained against invites reward hacking to pass as progress:
the policy has learnt that judge's blind spots. ``gotr1 grpo`` (and ``gotr1 demo``, whose GRPO stage
is a ``gotr1 grpo`` run in ``<out>/grpo``) writes the run's whole config to
``<output_dir>/config.yaml`` and the policy to ``<output_dir>/final`` or
``<output_dir>/checkpoint-<step>/...``; :func:`training_judge` finds that config above a model
folder and reads its ``judge``, ``judge_model`` and ``reward_components``. :func:`held_out`
compares it with an evaluation's scorer; every evaluation summary records both
(:func:`provenance_record`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "DEFAULT_JUDGE_MODELS",
    "held_out",
    "provenance_record",
    "scorer_identity",
    "training_judge",
]

SEARCH_LEVELS = 3
"""How many folders up from the model folder a run's config.yaml is looked for (the model folder,
``final``'s run folder, a checkpoint's inner policy folder's run folder)."""

DEFAULT_JUDGE_MODELS: dict[str, str] = {
    "qwen": "Qwen/Qwen2.5-VL-7B-Instruct",
    "openai": "Qwen/Qwen2.5-VL-7B-Instruct",
}
"""The judge model a GRPO config with ``judge_model: null`` trains with."""

_VLM_SCORERS = ("qwen", "openai")


def training_judge(model: str | Path | None) -> dict[str, Any]:
    """What trained the policy at ``model``: ``{"judge", "judge_model", "reward_components",
    "source"}`` from the first ``config.yaml`` at or above the folder (up to
    :data:`SEARCH_LEVELS` folders). ``judge`` is None for a config without one (an SFT run) and
    for a model whose run folder is unknown (a hub id, or no config found); ``source`` says which."""
    unknown: dict[str, Any] = {
        "judge": None,
        "judge_model": None,
        "reward_components": None,
        "source": None,
    }
    if model is None:
        return unknown
    folder = Path(model).expanduser()
    if not folder.is_dir():
        return unknown
    folder = folder.resolve()
    for candidate in [folder, *folder.parents][:SEARCH_LEVELS]:
        path = candidate / "config.yaml"
        if not path.is_file():
            continue
        config = _read_yaml(path)
        if config is None:
            continue
        judge = config.get("judge")
        if judge is None:
            return {**unknown, "source": str(path), "note": "the run has no judge (no GRPO)"}
        judge_model = config.get("judge_model")
        if judge_model is None:
            judge_model = DEFAULT_JUDGE_MODELS.get(str(judge))
        return {
            "judge": str(judge),
            "judge_model": judge_model,
            "reward_components": config.get("reward_components"),
            "source": str(path),
        }
    return unknown


def _read_yaml(path: Path) -> dict[str, Any] | None:
    """A run config as a dict, None when unreadable (a stray config.yaml is not an error)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def scorer_identity(scorer_name: str, judge_model: str | None) -> dict[str, Any]:
    """What judges under the ``--scorer`` name: ``{"judge": "world" | "qwen" | "openai" | None,
    "judge_model": ...}`` (None for the benchmarks' own models, which no GRPO run trains with)."""
    if scorer_name == "world":
        return {"judge": "world", "judge_model": None}
    if scorer_name in _VLM_SCORERS:
        return {"judge": scorer_name, "judge_model": judge_model}
    return {"judge": None, "judge_model": None}


def _same_model(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return False
    return a.rstrip("/").split("/")[-1].lower() == b.rstrip("/").split("/")[-1].lower()


def held_out(training: dict[str, Any], scorer: dict[str, Any]) -> bool | None:
    """True when the scorer is not the judge that trained the model, False when it is (the world
    judge for the world detector; the same Qwen2.5-VL weights, locally or behind a server), None
    when the training judge is unknown."""
    trained_by = training.get("judge")
    if trained_by is None:
        return None if training.get("source") is None else True
    if scorer.get("judge") is None:
        return True
    if trained_by == "world" or scorer["judge"] == "world":
        return trained_by != scorer["judge"]
    return not _same_model(training.get("judge_model"), scorer.get("judge_model"))


def provenance_record(
    model: str | Path | None, scorer_name: str, judge_model: str | None
) -> dict[str, Any]:
    """The summary fields: ``training_judge``, ``held_out`` and, when the scorer is the training
    judge, ``warning``."""
    training = training_judge(model)
    verdict = held_out(training, scorer_identity(scorer_name, judge_model))
    record: dict[str, Any] = {"training_judge": training, "held_out": verdict}
    if verdict is False:
        record["warning"] = (
            f"scored by the judge that trained this model ({training['judge']}"
            + (f": {training['judge_model']}" if training.get("judge_model") else "")
            + f", from {training['source']}); reward hacking can pass as progress. Report a "
            "held-out scorer (official, clip, blip-vqa, owlv2) instead."
        )
    return record

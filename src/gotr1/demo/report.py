"""report.html of a demo run: SFT vs GRPO side by side, reward curves, categories, chain changes.

    write_report(run_dir, metrics)   # reads eval/{sft,grpo}/samples.jsonl and the train logs

- The category table (soft score and accuracy per category, both models, the difference).
- Reward-component curves over GRPO steps and the SFT losses, drawn with PIL as one PNG
  (`draw_curves`; no plotting library needed).
- How the chains changed after RL (`chain_statistics`): length, planned objects, box sizes and
  overlaps, planned relations that hold, parse errors, and the share of sentences that none of
  the world's chain templates (`gotr1.world.chains`) can produce (`template_sentence_pattern`).
- The same held-out prompts with the same sampling seed, SFT next to GRPO: image, drawn layout,
  chain text, per-component rewards.

Everything a model wrote is HTML-escaped.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from gotr1.chain import box_iou, parse_chain, render_layout
from gotr1.rewards.world_judge import detection_fits_name, parse_object_name, semantic_score
from gotr1.train.runlog import LOG_FILE
from gotr1.world import (
    HELD_OUT_PAIRS,
    chains,
    count_extra_objects,
    detect,
    grammar,
    parse_prompt,
    relation_holds,
)

REWARD_KEYS: tuple[tuple[str, str], ...] = (
    ("reward", "total (product)"),
    ("rewards/sem/mean", "R_sem"),
    ("rewards/spa/mean", "R_spa"),
    ("rewards/ri/mean", "R_RI"),
    ("rewards/pi/mean", "R_PI"),
)
CURVE_COLOURS: tuple[tuple[int, int, int], ...] = (
    (20, 20, 20),
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
)


# ----------------------------------------------------------------------------------------------
# Reading the run
# ----------------------------------------------------------------------------------------------


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSONL file (lines that do not parse are skipped; a missing file is empty)."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def read_eval_samples(folder: Path) -> list[dict[str, Any]]:
    """The per-image samples an evaluation stage wrote in `folder` (empty when missing)."""
    return read_jsonl(folder / "samples.jsonl")


# ----------------------------------------------------------------------------------------------
# Chain phrasing: sentences the world's templates can produce
# ----------------------------------------------------------------------------------------------

_OBJECT_MARKUP = r"<\|obj_start\|>[^<]*<\|obj_end\|>\s*<\|box_start\|>[^<]*<\|box_end\|>"


def template_sentence_pattern() -> re.Pattern[str]:
    """A regex matching every sentence the world's chain writer (`gotr1.world.chains`) can
    produce, with any object name and box inside the markup."""
    numbers = "|".join(grammar.NUMBER_WORDS)
    phrases = "|".join(
        sorted(
            (re.escape(p) for ps in grammar.RELATION_PHRASES.values() for p in ps),
            key=len,
            reverse=True,
        )
    )
    region = r"(?:centre|(?:upper|lower)(?: (?:left|right))? part|(?:left|right) part)"
    name = r"[a-z]+(?: [a-z]+)?"
    fills = {
        "count": rf"(?:{numbers}|\d+) shapes?",
        "object": _OBJECT_MARKUP,
        "region": region,
        "a": name,
        "b": name,
        "phrase": rf"(?:{phrases})",
    }
    templates: list[str] = []
    for attribute in ("_OPENINGS", "_OBJECT_SENTENCES", "_RELATION_SENTENCES", "_CLOSINGS"):
        templates.extend(t for t in getattr(chains, attribute, ()) if t)
    alternatives = []
    for template in templates:
        parts = re.split(r"(\{[a-z]+\})", template)
        regex = "".join(
            fills[part[1:-1]] if part.startswith("{") and part[1:-1] in fills else re.escape(part)
            for part in parts
        )
        alternatives.append(regex)
    return re.compile(r"^(?:" + "|".join(alternatives) + r")$")


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def split_sentences(chain: str) -> list[str]:
    """A chain's sentences (split after ., ! or ?; markup never holds those)."""
    text = " ".join(chain.split())
    return [s for s in _SENTENCE_END.split(text) if s.strip()]


# ----------------------------------------------------------------------------------------------
# Chain statistics
# ----------------------------------------------------------------------------------------------


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def chain_statistics(
    samples: Sequence[dict[str, Any]], pattern: re.Pattern[str] | None = None
) -> dict[str, Any]:
    """How a model's chains look over evaluation samples (rows of samples.jsonl).

    Length in words and characters, planned objects per chain, box width/height/area on the
    0-1000 grid, mean IoU of planned box pairs inside a chain, the share of relation prompts
    whose planned boxes satisfy the relation (GenEval's rule), the chains' R_sem (the world
    judge's `semantic_score`) and the share of the prompt's coloured objects that the chain names
    exactly (all, held-out colour–shape pairs, seen pairs), parse errors, truncation, and
    the share of sentences outside the world's chain templates (with a few examples).
    """
    pattern = pattern or template_sentence_pattern()
    words, chars, objects, widths, heights, areas, pair_ious = [], [], [], [], [], [], []
    relation_ok: list[float] = []
    semantic, named, held_out_named, seen_named = [], [], [], []
    sentences = novel = 0
    novel_examples: list[str] = []
    errors = truncated = 0
    for sample in samples:
        chain = str(sample.get("chain", ""))
        words.append(len(chain.split()))
        chars.append(len(chain))
        planned = [o for o in sample.get("objects", []) if isinstance(o, dict) and "box" in o]
        objects.append(len(planned))
        boxes = [tuple(o["box"]) for o in planned if len(o["box"]) == 4]
        for x1, y1, x2, y2 in boxes:
            widths.append(abs(x2 - x1))
            heights.append(abs(y2 - y1))
            areas.append(abs(x2 - x1) * abs(y2 - y1) / 1e6)
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                pair_ious.append(box_iou(boxes[i], boxes[j]))
        try:
            spec = parse_prompt(str(sample.get("prompt", "")))
        except ValueError:
            spec = None
        if spec is not None:
            names = [str(o.get("name", "")) for o in planned]
            semantic.append(semantic_score(spec, names))
            pairs = {parse_object_name(name) for name in names}
            for obj in spec.objects:
                if obj.color:
                    hit = float((obj.color, obj.shape) in pairs)
                    named.append(hit)
                    unseen = (obj.color, obj.shape) in HELD_OUT_PAIRS
                    (held_out_named if unseen else seen_named).append(hit)
        if spec is not None and spec.relation is not None:
            first = [tuple(o["box"]) for o in planned if o.get("name") == spec.objects[0].name]
            second = [tuple(o["box"]) for o in planned if o.get("name") == spec.objects[1].name]
            holds = any(relation_holds(spec.relation, a, b) for a in first for b in second)
            relation_ok.append(float(holds))
        errors += bool(sample.get("chain_errors"))
        truncated += bool(sample.get("truncated"))
        for sentence in split_sentences(chain):
            sentences += 1
            if not pattern.match(sentence):
                novel += 1
                if len(novel_examples) < 8 and sentence not in novel_examples:
                    novel_examples.append(sentence)
    count = max(len(samples), 1)
    return {
        "chains": len(samples),
        "mean_words": _mean(words),
        "mean_characters": _mean(chars),
        "mean_objects": _mean(objects),
        "mean_box_width": _mean(widths),
        "mean_box_height": _mean(heights),
        "mean_box_area": _mean(areas),
        "mean_pair_iou": _mean(pair_ious),
        "planned_relation_holds": _mean(relation_ok),
        "mean_semantic": _mean(semantic),
        "coloured_objects_named": _mean(named),
        "held_out_pairs_named": _mean(held_out_named),
        "seen_pairs_named": _mean(seen_named),
        "with_parse_errors": errors / count,
        "truncated": truncated / count,
        "sentences": sentences,
        "novel_sentence_fraction": novel / sentences if sentences else None,
        "novel_sentence_examples": novel_examples,
    }


def image_statistics(samples: Sequence[dict[str, Any]], folder: Path) -> dict[str, Any]:
    """What the pixel detector finds in a model's evaluation images (``folder/<image>``):
    objects per image, objects the prompt did not ask for, the share of images without any, and
    whether the planned objects were drawn at their planned boxes (any detection, and one of the
    planned name, at box IoU >= `AT_BOX_IOU`). Images that cannot be read are counted in
    ``unreadable``."""
    found, extra, at_box, named_at_box, unreadable = [], [], [], [], 0
    for sample in samples:
        try:
            spec = parse_prompt(str(sample.get("prompt", "")))
            with Image.open(folder / str(sample.get("image", ""))) as image:
                detections = detect(image.convert("RGB"))
        except (OSError, ValueError):
            unreadable += 1
            continue
        found.append(len(detections))
        extra.append(count_extra_objects(spec, detections))
        for planned in _planned_objects(sample):
            colour, shape = parse_object_name(planned["name"])
            ious = [(box_iou(d.box, planned["box"]), d) for d in detections]
            at_box.append(float(any(iou >= AT_BOX_IOU for iou, _ in ious)))
            named_at_box.append(
                float(
                    any(
                        iou >= AT_BOX_IOU and detection_fits_name(d, colour, shape)
                        for iou, d in ious
                    )
                )
            )
    return {
        "mean_detected_objects": _mean(found),
        "mean_extra_objects": _mean(extra),
        "images_without_extra_objects": _mean([float(e == 0) for e in extra]),
        "planned_objects_at_box": _mean(at_box),
        "planned_objects_named_at_box": _mean(named_at_box),
        "unreadable": unreadable,
    }


AT_BOX_IOU = 0.5
"""A planned object counts as drawn at its box when a detection overlaps the box this much."""


def _planned_objects(sample: dict[str, Any]) -> list[dict[str, Any]]:
    """The sample's planned objects with a well-formed name and four-number box."""
    return [
        obj
        for obj in sample.get("objects") or []
        if isinstance(obj, dict)
        and isinstance(obj.get("name"), str)
        and isinstance(obj.get("box"), list)
        and len(obj["box"]) == 4
        and all(isinstance(v, int | float) for v in obj["box"])
    ]


# ----------------------------------------------------------------------------------------------
# The curves, drawn with PIL
# ----------------------------------------------------------------------------------------------


def _font(pixels: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=pixels)
    except (TypeError, OSError):
        return ImageFont.load_default()


def _smooth(values: list[float], window: int) -> list[float]:
    if window <= 1:
        return values
    out = []
    for i in range(len(values)):
        chunk = values[max(0, i - window + 1) : i + 1]
        out.append(sum(chunk) / len(chunk))
    return out


def _nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    if high <= low:
        high = low + 1.0
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = min((m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw), default=raw)
    start = math.ceil(low / step) * step
    ticks = []
    value = start
    while value <= high + 1e-9:
        ticks.append(round(value, 10))
        value += step
    return ticks


def draw_panel(
    draw: ImageDraw.ImageDraw,
    box: tuple[int, int, int, int],
    title: str,
    series: Sequence[tuple[str, list[tuple[float, float]]]],
    x_label: str,
    y_range: tuple[float, float] | None = None,
) -> None:
    """One line chart inside `box` (left, top, right, bottom): axes, ticks, lines, legend."""
    left, top, right, bottom = box
    font, small = _font(15), _font(12)
    draw.text((left + 60, top + 2), title, fill=(0, 0, 0), font=font)
    plot = (left + 60, top + 28, right - 150, bottom - 40)
    points = [p for _, line in series for p in line if math.isfinite(p[1])]
    if not points:
        draw.text((plot[0] + 10, plot[1] + 10), "no data", fill=(120, 120, 120), font=font)
        return
    xs = [p[0] for p in points]
    x_low, x_high = min(xs), max(xs)
    if x_high == x_low:
        x_high = x_low + 1
    if y_range is None:
        ys = [p[1] for p in points]
        y_low, y_high = min(ys), max(ys)
        pad = 0.05 * (y_high - y_low or 1.0)
        y_low, y_high = y_low - pad, y_high + pad
    else:
        y_low, y_high = y_range

    def to_pixel(x: float, y: float) -> tuple[float, float]:
        px = plot[0] + (x - x_low) / (x_high - x_low) * (plot[2] - plot[0])
        py = plot[3] - (y - y_low) / (y_high - y_low) * (plot[3] - plot[1])
        return px, py

    draw.rectangle(plot, outline=(0, 0, 0))
    for tick in _nice_ticks(y_low, y_high):
        _, py = to_pixel(x_low, tick)
        draw.line((plot[0], py, plot[2], py), fill=(230, 230, 230))
        draw.text((plot[0] - 55, py - 7), f"{tick:.3g}", fill=(60, 60, 60), font=small)
    for tick in _nice_ticks(x_low, x_high, 6):
        px, _ = to_pixel(tick, y_low)
        draw.line((px, plot[3], px, plot[3] + 4), fill=(0, 0, 0))
        draw.text((px - 10, plot[3] + 6), f"{tick:g}", fill=(60, 60, 60), font=small)
    draw.text(((plot[0] + plot[2]) // 2 - 20, plot[3] + 22), x_label, fill=(0, 0, 0), font=small)
    for index, (label, line) in enumerate(series):
        colour = CURVE_COLOURS[index % len(CURVE_COLOURS)]
        pixels = [to_pixel(x, y) for x, y in line if math.isfinite(y)]
        if len(pixels) >= 2:
            draw.line(pixels, fill=colour, width=3 if index == 0 else 2)
        elif pixels:
            x, y = pixels[0]
            draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=colour)
        ly = plot[1] + 6 + index * 20
        draw.line((plot[2] + 12, ly + 7, plot[2] + 36, ly + 7), fill=colour, width=3)
        draw.text((plot[2] + 42, ly), label, fill=(0, 0, 0), font=small)


def draw_curves(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """The PNG of the training curves: GRPO reward components per step (raw and smoothed) and
    the SFT chain / image losses. `rows` are train_log.jsonl rows with a ``stage``."""
    grpo = [r for r in rows if r.get("stage") == "grpo" and "step" in r]
    sft = [r for r in rows if r.get("stage") == "sft" and "step" in r]
    width, height = 1100, 760
    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    window = max(1, len(grpo) // 10)
    series = []
    for key, label in REWARD_KEYS:
        line = [(float(r["step"]), float(r[key])) for r in grpo if _is_number(r.get(key))]
        if line:
            ys = _smooth([y for _, y in line], window)
            series.append((label, [(x, y) for (x, _), y in zip(line, ys, strict=True)]))
    title = "GRPO: mean reward components per step"
    if window > 1:
        title += f" (moving average over {window} steps)"
    draw_panel(draw, (10, 10, width - 10, 420), title, series, "GRPO step")
    loss_series = []
    for key, label in (("chain_loss", "chain tokens"), ("image_loss", "image tokens")):
        line = [(float(r["step"]), float(r[key])) for r in sft if _is_number(r.get(key))]
        if line:
            loss_series.append((label, line))
    draw_panel(
        draw, (10, 430, width - 10, height - 10), "SFT: cross-entropy", loss_series, "SFT step"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# ----------------------------------------------------------------------------------------------
# The page
# ----------------------------------------------------------------------------------------------

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1300px; color: #222; }
h1 { margin-bottom: .2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
.warning { background: #fff4e5; border-left: 4px solid #e08a00; padding: .4em 1em; margin: 1em 0; }
table { border-collapse: collapse; margin: .8em 0; }
th, td { border: 1px solid #ddd; padding: .3em .7em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
tr.overall td { font-weight: 600; background: #f4f4f4; }
.up { color: #0a7a20; } .down { color: #b00020; }
.pair { display: grid; grid-template-columns: 1fr 1fr; gap: 1em; margin: 1em 0 2em 0; }
.card { background: #fafafa; border: 1px solid #e4e4e4; border-radius: 6px; padding: .7em; }
.card h4 { margin: 0 0 .4em 0; }
.imgs { display: flex; gap: .6em; }
.imgs img { width: 160px; height: 160px; border: 1px solid #ccc; }
.imgs img.gen { image-rendering: pixelated; }
.prompt { font-size: 1.05em; font-weight: 600; margin-top: 1.5em; }
code { white-space: pre-wrap; word-break: break-word; font-size: 12px; background: #eee;
       display: block; padding: .4em; margin: .5em 0; }
.rewards { font-size: 13px; }
.ok { color: #0a7a20; font-weight: 600; } .bad { color: #b00020; font-weight: 600; }
.note { color: #555; font-size: .93em; }
"""


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return html.escape(str(value))


def _delta_cell(delta: float) -> str:
    css = "up" if delta > 0.005 else "down" if delta < -0.005 else ""
    return f'<td class="{css}">{delta:+.3f}</td>'


def seen_reward_totals(seen: dict[str, Any]) -> tuple[float, float] | None:
    """(SFT, GRPO) optimised reward on the seen-composition prompts of `seen_compositions`
    (`gotr1.demo.pipeline`), or None when either is missing or not a finite number."""
    totals = [((seen.get("rewards") or {}).get(m) or {}).get("total") for m in ("sft", "grpo")]
    return (totals[0], totals[1]) if all(_is_number(t) for t in totals) else None


def plan_settings_text(benchmark: dict[str, Any]) -> str:
    """How the benchmark's images were planned and guided where that differs from GoT-R1's own
    sampling (metrics.json's ``benchmark.plans`` and ``plan_cfg_weight``), e.g. "best of 4 plans
    by the world judge, repaired plans"; empty when it does not."""
    plans = benchmark.get("plans") or {}
    parts = []
    if plans.get("candidates", 1) > 1:
        noise = plans.get("judge_noise")
        noted = f" (its scores noised, sigma {noise})" if noise else ""
        parts.append(f"best of {plans['candidates']} plans by the world judge{noted}")
    if plans.get("repair"):
        parts.append("repaired plans")
    if benchmark.get("plan_cfg_weight") is not None:
        parts.append(f"two-condition guidance, plan weight {benchmark['plan_cfg_weight']}")
    return ", ".join(parts)


def _seen_paragraph(seen: dict[str, Any] | None) -> str:
    """One line on the train-split (seen compositions) scores, when the run has them."""
    if not seen:
        return ""
    totals = seen_reward_totals(seen)
    reward = f"; the optimised reward {_fmt(totals[0])} → {_fmt(totals[1])}" if totals else ""
    return (
        '<p class="note">On as many train-split prompts (compositions seen in training, not held '
        f"out): SFT {_fmt(seen['sft']['overall'])} → GRPO {_fmt(seen['grpo']['overall'])} "
        f"({seen['delta']['overall']:+.3f}){reward}.</p>"
    )


def category_table(metrics: dict[str, Any]) -> str:
    """The per-category table (soft score, accuracy, differences) as HTML."""
    sft, grpo = metrics["sft"], metrics["grpo"]
    sft_acc, grpo_acc = metrics["sft_accuracy"], metrics["grpo_accuracy"]
    images = (metrics.get("benchmark") or {}).get("images") or {}
    errors = metrics.get("delta_standard_error") or {}
    rows = []
    for key in sft:
        css = ' class="overall"' if key == "overall" else ""
        count = sum(images.values()) if key == "overall" else images.get(key, "")
        rows.append(
            f"<tr{css}><td>{html.escape(key)}</td><td>{_fmt(sft[key])}</td>"
            f"<td>{_fmt(grpo.get(key))}</td>{_delta_cell(grpo.get(key, 0) - sft[key])}"
            f"<td>{_fmt(errors.get(key))}</td>"
            f"<td>{_fmt(sft_acc.get(key))}</td><td>{_fmt(grpo_acc.get(key))}</td>"
            f"{_delta_cell(grpo_acc.get(key, 0) - sft_acc.get(key, 0))}"
            f"<td>{count}</td></tr>"
        )
    return (
        "<table><tr><th>category</th><th>SFT soft</th><th>GRPO soft</th><th>Δ soft</th>"
        "<th>s.e. of Δ soft</th><th>SFT accuracy</th><th>GRPO accuracy</th><th>Δ accuracy</th><th>images</th></tr>"
        + "".join(rows)
        + "</table>"
    )


_STAT_ROWS: tuple[tuple[str, str, int], ...] = (
    ("mean_words", "chain length (words)", 1),
    ("mean_characters", "chain length (characters)", 0),
    ("mean_objects", "planned objects per chain", 2),
    ("mean_box_width", "box width (0-1000 grid)", 0),
    ("mean_box_height", "box height (0-1000 grid)", 0),
    ("mean_box_area", "box area (fraction of the canvas)", 3),
    ("mean_pair_iou", "IoU of planned box pairs (overlap)", 3),
    ("planned_relation_holds", "relation prompts whose planned boxes satisfy it", 3),
    ("mean_semantic", "R_sem: the prompt's objects, colours and counts in the plan", 3),
    ("coloured_objects_named", "coloured prompt objects the chain names exactly", 3),
    ("held_out_pairs_named", "... those that are held-out colour-shape pairs", 3),
    ("seen_pairs_named", "... those that are colour-shape pairs seen in training", 3),
    ("with_parse_errors", "chains with parse errors", 3),
    ("truncated", "chains cut at the token cap", 3),
    ("novel_sentence_fraction", "sentences no world chain template produces", 3),
    ("mean_detected_objects", "image: objects the detector finds", 2),
    ("mean_extra_objects", "image: objects the prompt did not ask for", 2),
    ("images_without_extra_objects", "image: share without unasked objects", 3),
    ("planned_objects_at_box", "image: planned objects drawn at their box (any shape)", 3),
    ("planned_objects_named_at_box", "image: planned objects drawn at their box, as named", 3),
)


def chain_table(stats: dict[str, dict[str, Any]]) -> str:
    """SFT vs GRPO chain statistics as an HTML table."""
    rows = []
    for key, label, digits in _STAT_ROWS:
        a, b = stats["sft"].get(key), stats["grpo"].get(key)
        delta = f"{b - a:+.{digits}f}" if a is not None and b is not None else "n/a"
        rows.append(
            f"<tr><td>{html.escape(label)}</td><td>{_fmt(a, digits)}</td>"
            f"<td>{_fmt(b, digits)}</td><td>{delta}</td></tr>"
        )
    return (
        "<table><tr><th>chains and images</th><th>SFT</th><th>GRPO</th><th>Δ</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def _reward_line(sample: dict[str, Any]) -> str:
    rewards = sample.get("rewards") or {}
    parts = [
        f"{label} {_fmt(rewards.get(key), 2)}"
        for key, label in (
            ("sem", "R_sem"),
            ("spa", "R_spa"),
            ("ri", "R_RI"),
            ("pi", "R_PI"),
            ("total", "total"),
        )
    ]
    return " · ".join(parts)


def pick_examples(
    sft: Sequence[dict[str, Any]], grpo: Sequence[dict[str, Any]], count: int
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Pairs of samples for the same prompt and sampling index, spread over the categories
    (round robin, in benchmark order; each prompt's first image before any prompt's second)."""
    by_key = {(s["prompt_index"], s.get("sample_index", 0)): s for s in grpo}
    pairs = [
        (s, by_key[k])
        for s in sft
        if (k := (s["prompt_index"], s.get("sample_index", 0))) in by_key
    ]
    pairs.sort(key=lambda pair: (pair[0].get("sample_index", 0), pair[0]["prompt_index"]))
    queues: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = {}
    for pair in pairs:
        queues.setdefault(str(pair[0].get("category")), []).append(pair)
    chosen: list[tuple[dict[str, Any], dict[str, Any]]] = []
    while len(chosen) < count and any(queues.values()):
        for queue in queues.values():
            if queue and len(chosen) < count:
                chosen.append(queue.pop(0))
    return chosen


def draw_examples(
    run: Path, examples: Sequence[tuple[dict[str, Any], dict[str, Any]]], path: Path
) -> Path:
    """One picture of the side by side: a row per prompt, then SFT's plan (its boxes drawn on a
    blank canvas) and image, and GRPO's plan and image for the same prompt and sampling seed."""
    cell, gap, text_height = 160, 8, 26
    columns = ("SFT plan", "SFT image", "GRPO plan", "GRPO image")
    width = len(columns) * (cell + gap) + gap
    height = text_height + len(examples) * (text_height + cell + gap) + gap
    figure = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(figure)
    font = _font(14)
    for column, title in enumerate(columns):
        draw.text((gap + column * (cell + gap), 6), title, fill="black", font=font)
    for row, (sft, grpo) in enumerate(examples):
        top = text_height + row * (text_height + cell + gap)
        draw.text((gap, top + 6), str(sft.get("prompt", "")), fill="black", font=font)
        tiles = []
        for name, sample in (("sft", sft), ("grpo", grpo)):
            tiles.append(render_layout(parse_chain(str(sample.get("chain", ""))), cell))
            with Image.open(run / "eval" / name / str(sample.get("image", ""))) as image:
                tiles.append(image.convert("RGB").resize((cell, cell), Image.Resampling.NEAREST))
        for column, tile in enumerate(tiles):
            left = gap + column * (cell + gap)
            figure.paste(tile.convert("RGB"), (left, top + text_height))
            box = (left - 1, top + text_height - 1, left + cell, top + text_height + cell)
            draw.rectangle(box, outline="#bbbbbb")
    figure.save(path)
    return path


def _card(title: str, sample: dict[str, Any], image_src: str, layout_src: str) -> str:
    verdict = (
        '<span class="ok">all requirements met</span>'
        if sample.get("correct")
        else '<span class="bad">not all requirements met</span>'
    )
    requirements = sample.get("requirements") or {}
    missed = [name for name, value in requirements.items() if value < 1]
    missed_text = (
        f"<div class='note'>missed: {html.escape('; '.join(missed))}</div>" if missed else ""
    )
    return f"""<div class="card"><h4>{html.escape(title)}</h4>
<div class="imgs"><img class="gen" src="{html.escape(image_src)}" alt="generated image">
<img src="{html.escape(layout_src)}" alt="the chain's boxes drawn on a blank canvas"></div>
<div>benchmark soft score {_fmt(sample.get("soft"), 2)} — {verdict}</div>{missed_text}
<div class="rewards">{html.escape(_reward_line(sample))}</div>
<code>{html.escape(str(sample.get("chain", "")))}</code></div>"""


def write_report(run_dir: str | Path, metrics: dict[str, Any]) -> Path:
    """Write ``report.html`` (and ``report/``: curves.png, examples.png and the drawn layouts)
    for a demo run."""
    run = Path(run_dir)
    assets = run / "report"
    assets.mkdir(parents=True, exist_ok=True)
    rows = read_jsonl(run / LOG_FILE)
    curves = draw_curves(rows, assets / "curves.png")

    samples = {name: read_eval_samples(run / "eval" / name) for name in ("sft", "grpo")}
    pattern = template_sentence_pattern()
    stats = {
        name: {
            **chain_statistics(samples[name], pattern),
            **(
                (metrics.get("images") or {}).get(name)
                or image_statistics(samples[name], run / "eval" / name)
            ),
        }
        for name in samples
    }
    (assets / "chain_statistics.json").write_text(json.dumps(stats, indent=2) + "\n")

    settings = metrics.get("settings") or {}
    examples = pick_examples(
        samples["sft"], samples["grpo"], int(settings.get("report_examples", 24))
    )
    figure = draw_examples(run, examples[:4], assets / "examples.png")
    blocks = []
    for index, (sft_sample, grpo_sample) in enumerate(examples):
        cards = []
        for name, sample in (("SFT", sft_sample), ("GRPO", grpo_sample)):
            layout = assets / f"layout-{name.lower()}-{index:03d}.png"
            render_layout(parse_chain(str(sample.get("chain", ""))), 224).save(layout)
            image = f"eval/{name.lower()}/{sample.get('image', '')}"
            cards.append(_card(name, sample, image, f"report/{layout.name}"))
        blocks.append(
            f'<div class="prompt">{html.escape(str(sft_sample.get("prompt", "")))} '
            f'<span class="note">({html.escape(str(sft_sample.get("category", "")))}, held-out '
            f"prompt {int(sft_sample['prompt_index'])})</span></div>"
            f'<div class="pair">{"".join(cards)}</div>'
        )

    novel = stats["grpo"].get("novel_sentence_examples") or []
    novel_html = (
        "<p>Sentences in GRPO chains that no world chain template produces (first few):</p><code>"
        + html.escape("\n".join(novel))
        + "</code>"
        if novel
        else "<p>Every GRPO sentence is one the world's chain templates can produce.</p>"
    )
    bench = metrics.get("benchmark") or {}
    planning = plan_settings_text(bench)
    stage_rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{t['seconds']:.1f}</td><td>{t['cpu_seconds']:.1f}"
        f"</td><td>{'cached' if t.get('cached') else ''}</td></tr>"
        for name, t in (metrics.get("stages") or {}).items()
    )
    vq = metrics.get("image_tokenizer") or {}
    overall = metrics["grpo"]["overall"] - metrics["sft"]["overall"]
    overall_error = (metrics.get("delta_standard_error") or {}).get("overall")
    error_text = f" ± {overall_error:.3f} standard error" if _is_number(overall_error) else ""
    warnings = metrics.get("diagnosis") or []
    diagnosis_html = (
        '<div class="warning"><b>Read before the headline:</b><ul>'
        + "".join(f"<li>{html.escape(str(w))}</li>" for w in warnings)
        + "</ul></div>"
        if warnings
        else ""
    )
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>gotr1 demo report</title><style>{_STYLE}</style></head>
<body>
<h1>gotr1 demo: does GRPO teach the model to reason better?</h1>
<p class="note">Seed {_fmt(metrics.get("seed"))}{" · quick mode" if metrics.get("quick") else ""}
 · {_fmt(bench.get("prompts"))} held-out prompts (test split: every prompt holds a colour–shape pair
 or a relation never seen in training), {_fmt(bench.get("images_per_prompt"))} image(s) per prompt,
 the same sampling seed for both models{" · " + html.escape(planning) if planning else ""}
 · judged by {html.escape(str(metrics.get("judged_by")))}.
 {html.escape(str(bench.get("note", "")))}</p>
<p>Overall soft score: SFT {_fmt(metrics["sft"]["overall"])} → GRPO
 {_fmt(metrics["grpo"]["overall"])} (<b>{overall:+.3f}</b>{error_text}).</p>
{_seen_paragraph(metrics.get("seen_compositions"))}
{diagnosis_html}
<h2>Held-out benchmark by category</h2>
<p class="note">soft = fraction of the prompt's requirements met (objects present in number,
colours, exact counts, the relation by GenEval's rule, only asked objects drawn); accuracy = share
of images meeting all of them; overall = mean of the categories.</p>
{category_table(metrics)}

<h2>Training curves</h2>
<img src="report/{curves.name}" alt="reward components over GRPO steps and SFT losses"
 style="max-width:100%">

<h2>How the chains changed after RL</h2>
<p class="note">Over all evaluation chains. Boxes are on the 0–1000 grid; a "novel" sentence is
one that none of the templates in <code style="display:inline">gotr1/world/chains.py</code> (the
SFT data's only phrasings) can produce, with any object name and box.</p>
{chain_table(stats)}
{novel_html}

<h2>Side by side: the same prompts, the same sampling seed</h2>
<p class="note">Left: the SFT model; right: after GRPO. Each card: the generated image, the
chain's boxes drawn on a blank canvas (what R_spa judges), the benchmark score, the four reward
components, and the chain as the model wrote it.</p>
<img src="report/{figure.name}" alt="plans and images of SFT and GRPO for the first prompts"
 style="max-width:100%">
{"".join(blocks)}

<h2>Run</h2>
<table><tr><th>stage</th><th>wall s</th><th>CPU s</th><th></th></tr>{stage_rows}</table>
<p class="note">Image tokenizer: detector agreement on reconstructions
 {_fmt(vq.get("detector_agreement"))}, PSNR {_fmt(vq.get("psnr_db"), 1)} dB,
 {_fmt(vq.get("codebook_used"))} of {_fmt(vq.get("codebook_size"))} codes used.</p>
</body></html>
"""
    path = run / "report.html"
    path.write_text(page, encoding="utf-8")
    return path

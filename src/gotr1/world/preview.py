"""`gotr1 world preview`: an HTML page of sampled prompts with their scenes, chains and drawn layouts."""

from __future__ import annotations

import html
import json
from pathlib import Path

from gotr1.chain import parse_chain, render_layout
from gotr1.world.bench import sample_examples, score_image
from gotr1.world.grammar import CATEGORIES

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; }
.example { display: flex; gap: 1em; margin: 1em 0; padding: .8em; background: #fafafa; border-radius: 6px; }
.example img { width: 224px; height: 224px; border: 1px solid #ddd; }
.example img.scene { image-rendering: pixelated; }
.text { max-width: 60ch; font-size: 14px; }
.prompt { font-weight: 600; font-size: 16px; }
code { white-space: pre-wrap; word-break: break-word; font-size: 12px; background: #eee; display: block; padding: .4em; }
.score { color: #080; }
"""


def write_preview(
    out: Path, per_category: int = 4, seed: int = 0, size: int = 64, chain_colors: str = "drawn"
) -> Path:
    """Write `out/index.html` (and its images) showing world examples of every category, their
    chains naming objects as `chain_colors` says; returns the page path."""
    images_dir = out / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    sections = []
    for split in ("train", "test"):
        for category in CATEGORIES:
            examples = sample_examples(
                per_category, seed, split, categories=(category,), chain_colors=chain_colors
            )
            cards = []
            for index, example in enumerate(examples):
                stem = f"{split}-{category}-{index}"
                example.render(size).save(images_dir / f"{stem}-scene.png")
                chain = parse_chain(example.chain)
                render_layout(chain, 448).save(images_dir / f"{stem}-layout.png")
                score = score_image(example.spec, example.render(size))
                spec = {
                    "category": example.spec.category,
                    "objects": [o.__dict__ for o in example.spec.objects],
                    "relation": example.spec.relation,
                }
                cards.append(
                    f"""<div class="example">
<img class="scene" src="images/{stem}-scene.png" alt="rendered scene">
<img src="images/{stem}-layout.png" alt="drawn layout of the chain">
<div class="text"><div class="prompt">{html.escape(example.prompt)}</div>
<p>GoT chain:</p><code>{html.escape(example.chain)}</code>
<p>Spec: <code>{html.escape(json.dumps(spec))}</code></p>
<p class="score">Benchmark score of the scene: soft {score.soft:.2f}, correct {score.correct}</p>
</div></div>"""
                )
            sections.append(
                f"<h2>{html.escape(split)} · {html.escape(category)}</h2>\n" + "\n".join(cards)
            )
    page = out / "index.html"
    page.write_text(
        f"""<!doctype html>
<html><head><meta charset="utf-8"><title>gotr1 world preview</title><style>{_STYLE}</style></head>
<body><h1>The gotr1 world</h1>
<p>Sampled prompts of every category, the scene rendered at {size}px, its GoT chain, and the chain's
layout drawn as the judge sees it. Test-split prompts hold compositions never seen in training.</p>
{"".join(sections)}
</body></html>
""",
        encoding="utf-8",
    )
    return page

"""What a run shows and leaves behind: train_log.jsonl, accelerate trackers, sample dumps, a
progress bar.

- ``train_log.jsonl``: one JSON object per logged step, TRL's metric names where they exist
  (``reward``, ``reward_std``, ``frac_reward_zero_std``, ``kl``, ``clip_ratio/low_mean``, ...).
  A resumed run first drops the lines after its checkpoint's step, so the file always reads as one
  uninterrupted run.
- Trackers (TensorBoard, W&B, ...) through accelerate when ``report_to`` names them.
- ``samples/step-<step>/``: for a few samples, ``<i>-image.png``, ``<i>-layout.png`` (the chain's
  boxes drawn on a blank canvas) and one ``samples.jsonl`` line with prompt, chain, parsed objects
  and rewards.

(Named ``runlog`` rather than ``logging`` so it never shadows the standard library's module.)
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from gotr1.chain import parse_chain, render_layout

if TYPE_CHECKING:
    from accelerate import Accelerator
    from PIL import Image

LOG_FILE = "train_log.jsonl"


class RunLog:
    """train_log.jsonl (+ trackers) of a run; only the main process writes."""

    def __init__(
        self,
        output_dir: str | Path,
        accelerator: Accelerator,
        config: dict[str, Any],
        resume_step: int | None = None,
        project: str = "gotr1",
    ) -> None:
        self.accelerator = accelerator
        self.path = Path(output_dir) / LOG_FILE
        self.trackers = bool(accelerator.log_with)
        if not accelerator.is_main_process:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept: list[str] = []
        if resume_step is not None and self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    if json.loads(line).get("step", 0) <= resume_step:
                        kept.append(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a kill
        self.path.write_text("".join(line + "\n" for line in kept))
        if self.trackers:
            flat = {
                k: (v if isinstance(v, int | float | str | bool) else str(v))
                for k, v in config.items()
            }
            accelerator.init_trackers(project, config=flat)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Append one step's metrics (main process)."""
        if not self.accelerator.is_main_process:
            return
        row = {"step": step, **{k: _finite(v) for k, v in metrics.items()}}
        with self.path.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        if self.trackers:
            self.accelerator.log(
                {k: v for k, v in metrics.items() if _finite(v) is not None}, step=step
            )

    def close(self) -> None:
        """Flush trackers."""
        if self.trackers:
            self.accelerator.end_training()


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a train_log.jsonl (or of the one in a run folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / LOG_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def dump_samples(
    output_dir: str | Path,
    step: int,
    prompts: Sequence[str],
    chain_texts: Sequence[str],
    images: Sequence[Image.Image],
    extra: Sequence[dict[str, Any]] | None = None,
    layout_size: int = 256,
) -> Path:
    """Write prompts, chains, drawn layouts and images of a few samples under samples/step-<step>/."""
    folder = Path(output_dir) / "samples" / f"step-{step:06d}"
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "samples.jsonl").open("w") as handle:
        for index, (prompt, text, image) in enumerate(
            zip(prompts, chain_texts, images, strict=True)
        ):
            chain = parse_chain(text)
            image.save(folder / f"{index:03d}-image.png")
            render_layout(chain, layout_size).save(folder / f"{index:03d}-layout.png")
            row = {
                "index": index,
                "prompt": prompt,
                "chain": text,
                "objects": [{"name": o.name, "box": list(o.box)} for o in chain.objects],
                "chain_errors": list(chain.errors),
                "image": f"{index:03d}-image.png",
                "layout": f"{index:03d}-layout.png",
                **(dict(extra[index]) if extra else {}),
            }
            handle.write(json.dumps(row, default=_default) + "\n")
    return folder


def progress_bar(
    accelerator: Accelerator, total: int, initial: int, enabled: bool, desc: str
) -> Any:
    """A tqdm bar on the main process (a stand-in that does nothing elsewhere)."""
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        disable=not (enabled and accelerator.is_main_process),
        dynamic_ncols=True,
    )


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)

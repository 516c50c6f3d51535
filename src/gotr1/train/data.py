"""Training data: SFT examples (world generator or GoT-style JSONL), SFT batches, GRPO prompts.

Every source is indexed: example ``i`` is a pure function of (source, seed, i), so a run's data
position is one integer and a resumed run sees exactly the examples it would have seen. Processes
take disjoint slices of each global batch.

GoT-style JSONL: one JSON object per line with a prompt, a GoT chain (the prose with
``<|obj_start|>name<|obj_end|> <|box_start|>(x1,y1),(x2,y2)<|box_end|>`` markup) and an image path
(relative paths start at `image_root`, default the file's folder). Key names are configurable. A
bad row — not JSON, a missing or non-string key, a missing or unreadable image, a chain longer than
the limit — is reported with its file and line and skipped, or is fatal with ``on_bad_row="error"``.
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from gotr1.chain import BEGIN_OF_IMAGE
from gotr1.errors import UserError
from gotr1.policy.rollout import prompt_only_ids, unconditional_ids
from gotr1.policy.tokenizer import encode_prompt
from gotr1.policy.vq import encode_images
from gotr1.world import CATEGORIES, sample_examples, sample_prompt

WORLD_CHUNK = 256
"""World examples/prompts are generated in chunks of this many (one RNG stream per chunk)."""


class BadRowError(UserError):
    """A bad data row under ``on_bad_row="error"`` (the message names file and line)."""


@dataclass
class BadRows:
    """Bad data rows seen so far: a count and the first few messages (each names file and line)."""

    count: int = 0
    messages: list[str] = field(default_factory=list)
    policy: str = "skip"
    echo: int = 20  # print at most this many to stderr

    def report(self, message: str) -> None:
        """Record a bad row; raise `BadRowError` under the "error" policy."""
        if self.policy == "error":
            raise BadRowError(message)
        self.count += 1
        if len(self.messages) < 1000:
            self.messages.append(message)
        if self.count <= self.echo:
            print(f"warning: skipping bad row: {message}", file=sys.stderr)
        elif self.count == self.echo + 1:
            print("warning: more bad rows skipped (counted in data/bad_rows)", file=sys.stderr)


@dataclass
class SFTExample:
    """One SFT example: prompt, chain text and the target image (or where to read it)."""

    prompt: str
    chain: str
    image: Image.Image | None = None
    image_path: str | None = None
    where: str = ""  # "file:line" for JSONL rows, "world:<index>" for generated ones

    def load_image(self) -> Image.Image:
        """The target image as RGB (reads `image_path` when no image is held)."""
        if self.image is not None:
            return self.image.convert("RGB")

        with Image.open(self.image_path) as opened:
            return opened.convert("RGB")


# ----------------------------------------------------------------------------------------------
# SFT sources
# ----------------------------------------------------------------------------------------------


class WorldExamples:
    """Endless GoT examples from the world generator; example `i` depends only on (seed, i)."""

    def __init__(
        self,
        seed: int = 0,
        split: str = "train",
        image_size: int = 64,
        chain_colors: str = "prompt",
    ) -> None:
        self.seed, self.split, self.image_size = seed, split, image_size
        self.chain_colors = chain_colors
        self._chunk: tuple[int, list[Any]] | None = None

    def __len__(self) -> int:
        return sys.maxsize

    def __getitem__(self, index: int) -> SFTExample:
        chunk, offset = divmod(index, WORLD_CHUNK)
        if self._chunk is None or self._chunk[0] != chunk:
            examples = sample_examples(
                WORLD_CHUNK,
                seed=self.seed * 1_000_003 + chunk,
                split=self.split,
                chain_colors=self.chain_colors,
            )
            self._chunk = (chunk, examples)
        example = self._chunk[1][offset]
        return SFTExample(
            example.prompt, example.chain, example.render(self.image_size), where=f"world:{index}"
        )


class JsonlExamples:
    """GoT-style JSONL rows, read and checked up front (JSON, keys, image file present); the
    order is reshuffled each epoch from the seed. Images are opened when a batch needs them."""

    def __init__(
        self,
        paths: Sequence[str | Path],
        bad_rows: BadRows,
        prompt_field: str = "prompt",
        chain_field: str = "chain",
        image_field: str = "image",
        image_root: str | Path | None = None,
        seed: int = 0,
    ) -> None:
        self.rows: list[SFTExample] = []
        self.seed = seed
        for path in map(Path, paths):
            root = Path(image_root) if image_root is not None else path.parent
            try:
                handle = path.open(encoding="utf-8")
            except OSError as error:
                raise UserError(f"data: cannot open {path} ({error})") from None
            with handle:
                try:
                    for number, line in enumerate(handle, start=1):
                        if not line.strip():
                            continue
                        row = self._parse(
                            line,
                            f"{path}:{number}",
                            root,
                            bad_rows,
                            prompt_field,
                            chain_field,
                            image_field,
                        )
                        if row is not None:
                            self.rows.append(row)
                except UnicodeDecodeError as error:
                    raise UserError(f"data: {path} is not UTF-8 text ({error})") from None
        if not self.rows:
            raise UserError(f"data: no usable rows in {', '.join(map(str, paths))}")
        self._orders: dict[int, list[int]] = {}

    @staticmethod
    def _parse(
        line: str,
        where: str,
        root: Path,
        bad_rows: BadRows,
        prompt_field: str,
        chain_field: str,
        image_field: str,
    ) -> SFTExample | None:
        try:
            data = json.loads(line)
        except json.JSONDecodeError as error:
            bad_rows.report(f"{where}: not valid JSON ({error.msg})")
            return None
        if not isinstance(data, dict):
            bad_rows.report(f"{where}: expected a JSON object")
            return None
        values = {}
        for key in (prompt_field, chain_field, image_field):
            value = data.get(key)
            if not isinstance(value, str) or not value.strip():
                bad_rows.report(f"{where}: missing or empty string field {key!r}")
                return None
            values[key] = value
        image_path = Path(values[image_field])
        if not image_path.is_absolute():
            image_path = root / image_path
        if not image_path.is_file():
            bad_rows.report(f"{where}: image file not found: {image_path}")
            return None
        return SFTExample(
            values[prompt_field].strip(), values[chain_field].strip(), None, str(image_path), where
        )

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> SFTExample:
        epoch, offset = divmod(index, len(self.rows))
        order = self._orders.get(epoch)
        if order is None:
            order = list(range(len(self.rows)))
            random.Random(f"gotr1-sft-order-{self.seed}-{epoch}").shuffle(order)
            self._orders = {epoch: order}
        return self.rows[order[offset]]


def sft_source(config: Any, bad_rows: BadRows, image_size: int) -> WorldExamples | JsonlExamples:
    """The SFT example source an `SFTConfig` names."""
    if list(config.data) == ["world"]:
        return WorldExamples(config.seed, config.world_split, image_size, config.world_chain_colors)
    return JsonlExamples(
        config.data,
        bad_rows,
        config.prompt_field,
        config.chain_field,
        config.image_field,
        config.image_root,
        config.seed,
    )


# ----------------------------------------------------------------------------------------------
# SFT batches
# ----------------------------------------------------------------------------------------------


@dataclass
class SFTBatch:
    """A tokenised SFT batch.

    ``text_ids``/``text_mask`` [B, L]: BOS + prompt turn + chain + ``<begin_of_image>``, left-padded
    so every row's ``<begin_of_image>`` is the last column and the image codes follow at the same
    positions. ``labels`` [B, L]: the chain tokens (with ``<begin_of_image>``) as targets, -100 on
    prompt, padding and unconditional rows. ``image_ids`` [B, K]: VQ codes of the target images.
    ``unconditional`` [B]: rows whose condition was blanked (CFG dropout; image loss only).
    ``prompt_only`` [B] (None when prompt-only dropout is off): rows whose chain alone was blanked
    (image loss only).
    """

    text_ids: torch.Tensor
    text_mask: torch.Tensor
    labels: torch.Tensor
    image_ids: torch.Tensor
    unconditional: torch.Tensor
    prompts: list[str]
    chains: list[str]
    prompt_only: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.text_ids.shape[0])

    def to(self, device: Any) -> SFTBatch:
        """The batch with its tensors on `device`."""
        return SFTBatch(
            self.text_ids.to(device),
            self.text_mask.to(device),
            self.labels.to(device),
            self.image_ids.to(device),
            self.unconditional.to(device),
            self.prompts,
            self.chains,
            None if self.prompt_only is None else self.prompt_only.to(device),
        )

    def length_groups(self, groups: int) -> list[SFTBatch]:
        """The rows split into at most `groups` batches of similar text length, each trimmed to
        its own longest row: the same examples with less padding.

        Rows are ordered by their real (unmasked) text length and cut into contiguous groups of
        near-equal size; a group keeps only the right-hand columns its rows use. Positions come
        from the mask and padding is masked, so every row computes what it computed in the whole
        batch. ``groups`` 1 (or a batch of one row) returns ``[self]``.
        """
        rows = len(self)
        groups = max(1, min(int(groups), rows))
        if groups == 1:
            return [self]
        lengths = self.text_mask.sum(dim=1)
        order = torch.sort(lengths, stable=True).indices
        out = []
        for part in torch.tensor_split(order, groups):
            keep = int(lengths[part].max())
            columns = slice(self.text_ids.shape[1] - keep, None)
            picked = part.tolist()
            out.append(
                SFTBatch(
                    self.text_ids[part, columns],
                    self.text_mask[part, columns],
                    self.labels[part, columns],
                    self.image_ids[part],
                    self.unconditional[part],
                    [self.prompts[i] for i in picked],
                    [self.chains[i] for i in picked],
                    None if self.prompt_only is None else self.prompt_only[part],
                )
            )
        return out


def chain_token_ids(tokenizer: Any, chain: str) -> list[int]:
    """Token ids of a chain as the model writes it after ``Assistant:`` (a leading space), then
    ``<begin_of_image>``."""
    ids = list(tokenizer(" " + chain.strip(), add_special_tokens=False)["input_ids"])
    return ids + [tokenizer.convert_tokens_to_ids(BEGIN_OF_IMAGE)]


def _dropout_draw(seed: int, index: int) -> float:
    """The uniform draw in [0, 1) that decides example `index`'s condition dropout."""
    return random.Random(f"gotr1-cfg-{seed}-{index}").random()


def cfg_dropped(seed: int, index: int, probability: float) -> bool:
    """Whether example `index` has its condition blanked (deterministic in seed and index)."""
    return probability > 0 and _dropout_draw(seed, index) < probability


def prompt_only_dropped(seed: int, index: int, cfg_dropout: float, probability: float) -> bool:
    """Whether example `index` has only its chain blanked (prompt-only dropout).

    The same draw as `cfg_dropped`, in the interval [cfg_dropout, cfg_dropout + probability): the
    two never pick the same example, and cfg_dropout picks the same examples as without it.
    """
    return probability > 0 and cfg_dropout <= _dropout_draw(seed, index) < cfg_dropout + probability


def square_image(image: Image.Image, size: int) -> Image.Image:
    """Centre-crop to a square and resize to `size` (no-op for images already that size)."""
    if image.size == (size, size):
        return image
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return image.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)


def make_sft_batch(
    examples: Sequence[tuple[int, SFTExample]],
    tokenizer: Any,
    vq: Any,
    image_size: int,
    cfg_dropout: float,
    seed: int,
    max_chain_tokens: int,
    bad_rows: BadRows,
    prompt_only_dropout: float = 0.0,
) -> SFTBatch | None:
    """Tokenise (index, example) pairs, VQ-encode their images and apply CFG dropout (and
    prompt-only dropout, which blanks the chain alone, for two-condition guidance).

    Rows whose image cannot be read or whose chain is too long are reported and left out; returns
    None when no row is left.
    """
    rows, images = [], []
    for index, example in examples:
        chain = chain_token_ids(tokenizer, example.chain)
        if len(chain) > max_chain_tokens:
            bad_rows.report(
                f"{example.where}: chain has {len(chain)} tokens, more than max_chain_tokens="
                f"{max_chain_tokens}"
            )
            continue
        try:
            image = square_image(example.load_image(), image_size)
        except (OSError, ValueError) as error:
            bad_rows.report(f"{example.where}: cannot read image {example.image_path} ({error})")
            continue
        rows.append((index, example, encode_prompt(tokenizer, example.prompt), chain))
        images.append(image)
    if not rows:
        return None

    pad = tokenizer.pad_token_id
    width = max(len(p) + len(c) for _, _, p, c in rows)
    text_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    text_mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    unconditional = torch.zeros(len(rows), dtype=torch.bool)
    prompt_only = torch.zeros(len(rows), dtype=torch.bool)
    chain_start = torch.zeros(len(rows), dtype=torch.long)
    for row, (index, _, prompt, chain) in enumerate(rows):
        sequence = prompt + chain
        text_ids[row, width - len(sequence) :] = torch.tensor(sequence)
        text_mask[row, width - len(sequence) :] = 1
        labels[row, width - len(chain) :] = torch.tensor(chain)
        unconditional[row] = cfg_dropped(seed, index, cfg_dropout)
        prompt_only[row] = prompt_only_dropped(seed, index, cfg_dropout, prompt_only_dropout)
        chain_start[row] = width - len(chain)
    if prompt_only.any():
        # Exactly the sampler's prompt-only row of two-condition guidance: the chain -> pad,
        # BOS, prompt and <begin_of_image> kept, attention mask unchanged; image loss only.
        blank = prompt_only_ids(text_ids, text_mask, chain_start, pad)
        text_ids = torch.where(prompt_only[:, None], blank, text_ids)
        labels[prompt_only] = -100
    if unconditional.any():
        # Exactly the rollout's unconditional row: prompt and chain -> pad, BOS and
        # <begin_of_image> kept, attention mask unchanged; such rows train the image head only.
        blank = unconditional_ids(text_ids, text_mask, pad, tokenizer.bos_token_id)
        text_ids = torch.where(unconditional[:, None], blank, text_ids)
        labels[unconditional] = -100
    image_ids = encode_images(vq, images).cpu()
    return SFTBatch(
        text_ids,
        text_mask,
        labels,
        image_ids,
        unconditional,
        [e.prompt for _, e, _, _ in rows],
        [e.chain for _, e, _, _ in rows],
        prompt_only if prompt_only_dropout > 0 else None,
    )


def slice_for_process(position: int, batch_size: int, process: int) -> range:
    """Source indices of one process's share of the global batch that starts at `position`."""
    start = position + process * batch_size
    return range(start, start + batch_size)


# ----------------------------------------------------------------------------------------------
# GRPO prompts
# ----------------------------------------------------------------------------------------------


class PromptSource:
    """Indexed prompts for GRPO: the world grammar (endless, categories in rotation) or a file
    (.txt one per line, .jsonl with a 'prompt' key), reshuffled each epoch from the seed."""

    def __init__(self, prompts: str = "world", seed: int = 0, split: str = "train") -> None:
        self.kind, self.seed, self.split = prompts, seed, split
        self._chunk: tuple[int, list[str]] | None = None
        self._orders: dict[int, list[int]] = {}
        self.items: list[str] = []
        if prompts != "world":
            self.items = read_prompt_file(prompts)

    def __getitem__(self, index: int) -> str:
        if self.kind == "world":
            return self._world(index)
        epoch, offset = divmod(index, len(self.items))
        order = self._orders.get(epoch)
        if order is None:
            order = list(range(len(self.items)))
            random.Random(f"gotr1-grpo-order-{self.seed}-{epoch}").shuffle(order)
            self._orders = {epoch: order}
        return self.items[order[offset]]

    def _world(self, index: int) -> str:
        chunk, offset = divmod(index, WORLD_CHUNK)
        if self._chunk is None or self._chunk[0] != chunk:
            rng = random.Random(f"gotr1-grpo-prompts-{self.split}-{self.seed}-{chunk}")
            prompts = [
                sample_prompt(
                    rng, CATEGORIES[(chunk * WORLD_CHUNK + i) % len(CATEGORIES)], self.split
                )[0]
                for i in range(WORLD_CHUNK)
            ]
            self._chunk = (chunk, prompts)
        return self._chunk[1][offset]

    def take(self, start: int, count: int) -> list[str]:
        """Prompts `start` .. `start + count - 1`."""
        return [self[i] for i in range(start, start + count)]


def read_prompt_file(path: str | Path) -> list[str]:
    """Prompts from a .txt (one per line) or .jsonl ('prompt' key) file; errors name file:line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"prompts: cannot read {path} ({error})") from None
    prompts = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if path.suffix == ".jsonl":
            try:
                value = json.loads(line)
            except json.JSONDecodeError as error:
                raise UserError(f"{path}:{number}: not valid JSON ({error.msg})") from None
            prompt = value.get("prompt") if isinstance(value, dict) else None
            if not isinstance(prompt, str) or not prompt.strip():
                raise UserError(f"{path}:{number}: no string 'prompt' field")
            prompts.append(prompt.strip())
        else:
            prompts.append(line.strip())
    if not prompts:
        raise UserError(f"prompts: {path} holds no prompts")
    return prompts

"""Qwen2.5-VL as a local judge (transformers), batched greedy generation.

The model is ``Qwen2_5_VLForConditionalGeneration`` loaded from a folder or a hub id; the inputs
are built here from the checkpoint's tokenizer and image processor (``AutoTokenizer`` and
``AutoImageProcessor``) in Qwen2.5-VL's chat format, rather than through ``AutoProcessor``, which
also loads a video processor that needs torchvision. What the model saw of each image — its size
after the processor's ``smart_resize`` — comes from the processor's own ``image_grid_thw``
(``grid * patch_size`` pixels), so Qwen2.5-VL's absolute-pixel boxes are converted against the
real resize, not a guess.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from gotr1.rewards.vlm import ChatRequest, Reply, VLMJudge, VLMJudgeConfig

DEFAULT_SYSTEM = "You are a helpful assistant."
"""Qwen2.5-VL's chat template inserts this system turn when none is given; we do the same."""

IMAGE_PAD = "<|image_pad|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"


@dataclass
class QwenLocalConfig(VLMJudgeConfig):
    """Settings of the local Qwen2.5-VL judge."""

    model: str = field(
        default="Qwen/Qwen2.5-VL-7B-Instruct",
        metadata={"help": "folder or hub id of a Qwen2.5-VL checkpoint"},
    )
    device: str | None = field(
        default=None, metadata={"help": "torch device; None picks cuda when available, else cpu"}
    )
    dtype: str = field(
        default="auto",
        metadata={
            "help": "weights dtype: auto (bfloat16 on cuda, float32 on cpu), bfloat16, float16, float32"
        },
    )
    batch_size: int = field(default=16, metadata={"help": "requests per generate() call"})
    min_pixels: int | None = field(
        default=None, metadata={"help": "processor min_pixels override (None: the checkpoint's)"}
    )
    max_pixels: int | None = field(
        default=None, metadata={"help": "processor max_pixels override (None: the checkpoint's)"}
    )
    attn_implementation: str | None = field(
        default=None, metadata={"help": "attention backend (sdpa, flash_attention_2, eager)"}
    )
    local_files_only: bool = field(
        default=False, metadata={"help": "never download; load only from a folder or the cache"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")


def _torch_dtype(name: str, device: str) -> Any:
    import torch

    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    dtypes = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
    if name not in dtypes:
        raise ValueError(f"dtype {name!r} is not one of auto, {', '.join(dtypes)}")
    return dtypes[name]


class QwenLocalJudge(VLMJudge):
    """The four judge questions answered by a local Qwen2.5-VL (greedy, batched, left-padded)."""

    config: QwenLocalConfig

    def __init__(
        self,
        config: QwenLocalConfig | None = None,
        model: Any = None,
        tokenizer: Any = None,
        image_processor: Any = None,
    ) -> None:
        """Load the checkpoint named by ``config.model``, or use the given model/tokenizer/processor."""
        config = config or QwenLocalConfig()
        super().__init__(config)
        import torch

        device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
        if tokenizer is None or image_processor is None:
            from transformers import AutoImageProcessor, AutoTokenizer

            kwargs: dict[str, Any] = {"local_files_only": config.local_files_only}
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(config.model, **kwargs)
            image_processor = image_processor or AutoImageProcessor.from_pretrained(
                config.model, **kwargs
            )
        if model is None:
            from transformers import Qwen2_5_VLForConditionalGeneration

            load: dict[str, Any] = {
                "dtype": _torch_dtype(config.dtype, device),
                "local_files_only": config.local_files_only,
                "use_safetensors": True,
            }
            if config.attn_implementation:
                load["attn_implementation"] = config.attn_implementation
            model = Qwen2_5_VLForConditionalGeneration.from_pretrained(config.model, **load)
            model.to(device)
        model.eval()
        self.model = model
        self.device = next(model.parameters()).device
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.image_token_id = int(model.config.image_token_id)
        if tokenizer.convert_tokens_to_ids(IMAGE_PAD) != self.image_token_id:
            raise ValueError(
                f"tokenizer's {IMAGE_PAD} id {tokenizer.convert_tokens_to_ids(IMAGE_PAD)} differs from "
                f"the model's image_token_id {self.image_token_id}"
            )
        self.patch_size = int(getattr(image_processor, "patch_size", 14))
        self.merge_size = int(getattr(image_processor, "merge_size", 2))
        self.pad_token_id = tokenizer.pad_token_id
        if self.pad_token_id is None:
            self.pad_token_id = tokenizer.eos_token_id
        eos = [tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.eos_token_id]
        self.eos_token_ids = sorted({int(t) for t in eos if t is not None and t >= 0})
        self.timings: dict[str, float] = {"preprocess": 0.0, "generate": 0.0}

    def __repr__(self) -> str:
        return f"QwenLocalJudge(model={self.config.model!r}, device={str(self.device)!r})"

    def _image_kwargs(self) -> dict[str, Any]:
        size: dict[str, int] = {}
        if self.config.min_pixels is not None:
            size["shortest_edge"] = self.config.min_pixels
        if self.config.max_pixels is not None:
            size["longest_edge"] = self.config.max_pixels
        if size:
            current = dict(getattr(self.image_processor, "size", {}) or {})
            current.update(size)
            return {"size": current}
        return {}

    @staticmethod
    def chat_text(question: str, image_tokens: int) -> str:
        """One user turn in Qwen2.5-VL's chat format, ready for the assistant's answer."""
        vision = f"{VISION_START}{IMAGE_PAD * image_tokens}{VISION_END}" if image_tokens else ""
        return (
            f"<|im_start|>system\n{DEFAULT_SYSTEM}<|im_end|>\n"
            f"<|im_start|>user\n{vision}{question}<|im_end|>\n<|im_start|>assistant\n"
        )

    def generate(self, requests: Sequence[ChatRequest]) -> list[Reply]:
        """Answer requests in batches of ``config.batch_size`` (image and text-only ones apart).

        Never raises: a batch whose preprocessing or generation raises is answered again one
        request at a time, so one bad input (say, an image whose aspect ratio the processor
        refuses) fails only itself, as a reply without text that says why.
        """
        replies: list[Reply | None] = [None] * len(requests)
        with_image = [i for i, r in enumerate(requests) if r.image is not None]
        text_only = [i for i, r in enumerate(requests) if r.image is None]
        size = self.config.batch_size
        for group in (with_image, text_only):
            for start in range(0, len(group), size):
                chunk = group[start : start + size]
                for index, reply in zip(
                    chunk, self._generate_guarded([requests[i] for i in chunk]), strict=True
                ):
                    replies[index] = reply
        return [r if r is not None else Reply(None, None, "not generated") for r in replies]

    def _generate_guarded(self, requests: list[ChatRequest]) -> list[Reply]:
        """:meth:`_generate_batch`, or, when it raises, each request alone (failing only those
        that raise on their own)."""
        try:
            return self._generate_batch(requests)
        except Exception as error:  # noqa: BLE001 - a judge must never crash the trainer
            if len(requests) > 1:
                return [self._generate_guarded([r])[0] for r in requests]
            self._count("generate_errors")
            return [Reply(None, None, f"the judge raised {type(error).__name__}: {error}")]

    def _generate_batch(self, requests: list[ChatRequest]) -> list[Reply]:
        import torch

        start = time.perf_counter()
        images = [r.image for r in requests if r.image is not None]
        if images and len(images) != len(requests):
            raise ValueError("a batch mixes requests with and without an image")
        inputs: dict[str, Any] = {}
        sizes: list[tuple[int, int] | None] = [None] * len(requests)
        image_tokens = [0] * len(requests)
        if images:
            processed = self.image_processor(
                images=images, return_tensors="pt", **self._image_kwargs()
            )
            grid = processed["image_grid_thw"]
            for i, (t, h, w) in enumerate(grid.tolist()):
                sizes[i] = (int(w) * self.patch_size, int(h) * self.patch_size)
                image_tokens[i] = int(t * h * w) // (self.merge_size**2)
            inputs["pixel_values"] = processed["pixel_values"].to(self.device, self.model.dtype)
            inputs["image_grid_thw"] = grid.to(self.device)
        texts = [self.chat_text(r.text, n) for r, n in zip(requests, image_tokens, strict=True)]
        encoded = self.tokenizer(
            texts, padding=True, padding_side="left", return_tensors="pt", add_special_tokens=False
        )
        input_ids = encoded["input_ids"].to(self.device)
        inputs["input_ids"] = input_ids
        inputs["attention_mask"] = encoded["attention_mask"].to(self.device)
        inputs["mm_token_type_ids"] = (input_ids == self.image_token_id).to(torch.int32)
        self.timings["preprocess"] += time.perf_counter() - start
        start = time.perf_counter()
        with torch.inference_mode():
            output = self.model.generate(
                **inputs,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                max_new_tokens=max(r.max_new_tokens for r in requests),
                pad_token_id=self.pad_token_id,
                eos_token_id=self.eos_token_ids or None,
            )
        self.timings["generate"] += time.perf_counter() - start
        new_tokens = output[:, input_ids.shape[1] :]
        texts_out = self._decode(new_tokens)
        return [Reply(text, size) for text, size in zip(texts_out, sizes, strict=True)]

    def _decode(self, new_tokens: Any) -> list[str]:
        """Decode generated tokens to answer text (special tokens dropped)."""
        return self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)

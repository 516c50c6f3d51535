"""`Policy`: a Janus model and its processor, with rollouts, log-probs and reference log-probs.

policy = Policy.load("checkpoints/sft")            # plain HF folder (or a PEFT adapter folder)
rollouts = policy.rollout(prompts, num_generations=8, sampling=SamplingConfig(cfg_weight=5))
new = policy.logprobs(rollouts)                    # differentiable under grad mode
ref = policy.reference_logprobs(rollouts)          # no grad: adapters off, or a frozen copy
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from gotr1.errors import UserError
from gotr1.policy.io import load_pretrained, model_folder_problem, save_pretrained
from gotr1.policy.logprobs import TokenLogprobs, token_logprobs
from gotr1.policy.lora import is_lora, load_adapter, reference_mode, save_adapter
from gotr1.policy.rollout import Rollouts, SamplingConfig, rollout, special_ids
from gotr1.policy.tokenizer import encode_prompt

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence


class Policy:
    """A Janus model (optionally a peft/LoRA model) with its processor or tokenizer.

    `reference_model` is an optional frozen model for reference log-probs; without it a peft
    model's reference is the same model with its adapters disabled. `encode` overrides how a
    prompt becomes prefix token ids (default: BOS + the GoT chat template).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        processor: Any,
        reference_model: torch.nn.Module | None = None,
        encode: Callable[[str], list[int]] | None = None,
    ) -> None:
        self.model = model
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.reference_model = reference_model
        self.encode = encode
        self.special = special_ids(self.tokenizer)

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters."""
        return next(self.model.parameters()).device

    def prompt_ids(self, prompt: str) -> list[int]:
        """The prefix token ids of a prompt, as rollouts encode it (`encode`, or BOS + the GoT
        chat template)."""
        return (
            self.encode(prompt)
            if self.encode is not None
            else encode_prompt(self.tokenizer, prompt)
        )

    def image_normalisation(self) -> tuple[Sequence[float], Sequence[float]]:
        """The image processor's pixel mean and std (what decoded images are un-normalised by)."""
        image_processor = getattr(self.processor, "image_processor", None)
        mean = getattr(image_processor, "image_mean", None) or (0.5, 0.5, 0.5)
        std = getattr(image_processor, "image_std", None) or (0.5, 0.5, 0.5)
        return tuple(mean), tuple(std)

    def rollout(
        self,
        prompts: Sequence[str],
        num_generations: int,
        sampling: SamplingConfig | None = None,
        generator: torch.Generator | None = None,
    ) -> Rollouts:
        """Sample `num_generations` chains and images per prompt (no gradient graph)."""
        mean, std = self.image_normalisation()
        return rollout(
            self.model,
            self.tokenizer,
            prompts,
            num_generations,
            sampling or SamplingConfig(),
            generator,
            encode=self.encode,
            image_mean=mean,
            image_std=std,
        )

    def logprobs(
        self,
        rollouts: Rollouts,
        image_logprob: str = "guided",
        micro_batch_size: int | None = None,
        with_entropy: bool = False,
    ) -> TokenLogprobs:
        """Teacher-forced per-token log-probs under the current weights (differentiable)."""
        return token_logprobs(
            self.model,
            rollouts,
            self.special.pad,
            self.special.bos,
            image_logprob=image_logprob,
            micro_batch_size=micro_batch_size,
            with_entropy=with_entropy,
        )

    def reference_logprobs(
        self,
        rollouts: Rollouts,
        image_logprob: str = "guided",
        micro_batch_size: int | None = None,
        with_entropy: bool = False,
    ) -> TokenLogprobs:
        """Log-probs under the reference policy, without gradients.

        The reference is `reference_model` when given, else this peft model with its adapters
        (and modules_to_save) disabled, i.e. the frozen base weights.
        """
        kwargs = dict(
            pad_id=self.special.pad,
            bos_id=self.special.bos,
            image_logprob=image_logprob,
            micro_batch_size=micro_batch_size,
            with_entropy=with_entropy,
        )
        with torch.no_grad():
            if self.reference_model is not None:
                return token_logprobs(self.reference_model, rollouts, **kwargs)
            if is_lora(self.model):
                with reference_mode(self.model):
                    return token_logprobs(self.model, rollouts, **kwargs)
        raise ValueError(
            "no reference policy: the model has no LoRA adapters to disable and no "
            "reference_model was given"
        )

    def save(self, path: str | Path, state_dict: dict[str, torch.Tensor] | None = None) -> Path:
        """Save as a plain HF folder, or (peft model) as a PEFT adapter folder plus the processor.

        `state_dict` stands in for the model's own tensors (the full weights gathered from a
        ZeRO-3 / FSDP model); it is the model's (or the peft model's) state-dict layout.
        """
        path = Path(path)
        if is_lora(self.model):
            save_adapter(self.model, path, state_dict=state_dict)
            self.processor.save_pretrained(path)
            return path

        return save_pretrained(self.model, self.processor, path, state_dict=state_dict)

    @classmethod
    def load(
        cls,
        path: str | Path,
        dtype: str | torch.dtype | None = None,
        device: str | torch.device | None = None,
    ) -> Policy:
        """Load a policy folder: a plain HF Janus folder, or a PEFT adapter folder whose
        adapter_config.json names its base model (the reference is then the base weights).

        Missing or malformed folders raise `gotr1.errors.UserError` with the path in the message.
        """
        folder = Path(path).expanduser()
        if (folder / "adapter_config.json").is_file():
            return cls._load_adapter(folder, dtype, device)

        model, processor = load_pretrained(path, dtype=dtype, device=device)
        return cls(model, processor)

    @classmethod
    def _load_adapter(
        cls,
        folder: Path,
        dtype: str | torch.dtype | None,
        device: str | torch.device | None,
    ) -> Policy:
        problem = model_folder_problem(folder)  # a damaged adapter_config.json or weights file
        if problem:
            raise UserError(problem)
        try:
            base = json.loads((folder / "adapter_config.json").read_text())[
                "base_model_name_or_path"
            ]
        except (OSError, ValueError, KeyError) as error:
            raise UserError(
                f"{folder}/adapter_config.json: no readable base model ({error})"
            ) from None
        if not isinstance(base, str | None):
            raise UserError(f"{folder}/adapter_config.json: base_model_name_or_path is not text")
        if not base:
            raise UserError(f"{folder}/adapter_config.json: base_model_name_or_path is empty")
        model, processor = load_pretrained(base, dtype=dtype, device=device)
        try:
            model = load_adapter(model, folder, is_trainable=True)
        except (OSError, ValueError) as error:
            raise UserError(f"{folder}: cannot load the LoRA adapter ({error})") from None
        return cls(model, processor)

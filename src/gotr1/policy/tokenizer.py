"""Text side of the policy: the GoT prompt format, the world tokenizer and the Janus processor.

The prompt format is GoT-R1's own (its released inference code): the user turn
``Follow the caption to generate an image through a chain of thought process: {prompt}`` in the
DeepSeek chat format with an empty system prompt and the roles written ``User`` / ``Assistant``::

    User: Follow the caption to generate an image through a chain of thought process: {prompt}

    Assistant:

The tokenizer adds BOS in front, as DeepSeek's does. The model continues with the chain, then
``<begin_of_image>`` and the image tokens.

The world tokenizer is a byte-level BPE (any string round-trips; digits split one per token, as in
DeepSeek's tokenizer) trained locally on world prompts and chains. Its special tokens mirror
Janus-Pro's by name (BOS/EOS/pad, ``<begin_of_image>``, ``<end_of_image>``, ``<image_placeholder>``,
``<|User|>``, ``<|Assistant|>``); the GoT markup tokens are added afterwards the way GoT-R1 adds them
to Janus-Pro's tokenizer (plain added tokens, kept by ``decode(skip_special_tokens=True)``), so the
world model and a real checkpoint go through the same code.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

from gotr1.chain import BEGIN_OF_IMAGE, BOX_END, BOX_START, END_OF_IMAGE, OBJ_END, OBJ_START
from gotr1.world import sample_examples

if TYPE_CHECKING:
    from transformers import JanusProcessor, PreTrainedTokenizerBase

# DeepSeek / Janus-Pro token names (the world tokenizer uses the same strings).
BOS_TOKEN = "<｜begin▁of▁sentence｜>"
EOS_TOKEN = "<｜end▁of▁sentence｜>"
PAD_TOKEN = "<｜▁pad▁｜>"
IMAGE_TOKEN = "<image_placeholder>"
USER_ROLE_TOKEN = "<|User|>"
ASSISTANT_ROLE_TOKEN = "<|Assistant|>"
WORLD_SPECIAL_TOKENS: tuple[str, ...] = (
    BOS_TOKEN,  # id 0
    EOS_TOKEN,  # id 1
    PAD_TOKEN,  # id 2
    BEGIN_OF_IMAGE,  # id 3
    END_OF_IMAGE,  # id 4
    IMAGE_TOKEN,  # id 5
    USER_ROLE_TOKEN,  # id 6
    ASSISTANT_ROLE_TOKEN,  # id 7
)

# GoT-R1 adds its markup with `tokenizer.add_tokens([...])` in this order; keeping the order keeps
# the token ids of its released checkpoints.
GOT_R1_MARKUP_ORDER: tuple[str, ...] = (BOX_START, BOX_END, OBJ_START, OBJ_END)

GOT_USER_TEMPLATE = (
    "Follow the caption to generate an image through a chain of thought process: {prompt}"
)
USER_ROLE = "User"
ASSISTANT_ROLE = "Assistant"

# The DeepSeek "deepseek" conversation format as a Jinja chat template: optional system text + "\n\n",
# "User: <text>\n\n", "Assistant: <text><eos>", an empty assistant turn (or add_generation_prompt)
# renders "Assistant:". Message text is stripped as Janus' processor strips it.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}{%- set text = message['content'] -%}"
    "{%- else -%}{%- set ns = namespace(text='') -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'text' -%}{%- set ns.text = ns.text + part['text'] -%}"
    "{%- elif part['type'] == 'image' -%}{%- set ns.text = ns.text + '<image_placeholder>\n' -%}"
    "{%- endif -%}{%- endfor -%}{%- set text = ns.text -%}{%- endif -%}"
    "{%- set text = text | trim -%}"
    "{%- if message['role'] == 'system' -%}{%- if text -%}{{ text + '\n\n' }}{%- endif -%}"
    "{%- elif message['role'] == 'user' -%}"
    "{%- if text -%}{{ 'User: ' + text + '\n\n' }}{%- else -%}{{ 'User:' }}{%- endif -%}"
    "{%- else -%}"
    "{%- if text -%}{{ 'Assistant: ' + text + '<｜end▁of▁sentence｜>' }}"
    "{%- else -%}{{ 'Assistant:' }}{%- endif -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'Assistant:' }}{%- endif -%}"
)


def build_prompt_text(prompt: str) -> str:
    """The exact text the model continues for a prompt: the GoT user turn up to ``Assistant:``.

    Equal to GoT-R1's ``apply_sft_template_for_multi_turn_prompts`` output (and to this processor's
    chat template with ``add_generation_prompt=True``). BOS is not part of the text; the tokenizer
    adds it.
    """
    user = GOT_USER_TEMPLATE.format(prompt=prompt.strip())
    return f"{USER_ROLE}: {user}\n\n{ASSISTANT_ROLE}:"


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """Token ids of the prefix for one prompt: BOS + ``build_prompt_text(prompt)``.

    Guarantees exactly one leading BOS whether or not the tokenizer adds it itself.
    """
    ids = list(tokenizer(build_prompt_text(prompt), add_special_tokens=True)["input_ids"])
    bos = tokenizer.bos_token_id
    if bos is not None and (not ids or ids[0] != bos):
        ids.insert(0, bos)
    return ids


# --- the world tokenizer ------------------------------------------------------------------------


def world_corpus(num_examples: int = 3000, seed: int = 0) -> list[str]:
    """Texts the world tokenizer is trained on: prompt turns and chains of train-split examples."""
    texts: list[str] = []
    for example in sample_examples(num_examples, seed=seed, split="train"):
        texts.append(build_prompt_text(example.prompt))
        texts.append(example.chain)
    return texts


def train_world_tokenizer(
    texts: Iterable[str] | None = None,
    vocab_size: int = 508,
    model_max_length: int = 1024,
    add_markup: bool = True,
    whole_numbers: bool = False,
) -> PreTrainedTokenizerBase:
    """Train the world's byte-level BPE tokenizer and add the GoT markup tokens.

    `texts` defaults to `world_corpus()`. Markup strings are cut out of the training text (they
    become whole tokens afterwards, not merges). `vocab_size` counts the BPE vocabulary with the
    special tokens; the markup adds four more (unless ``add_markup=False``). Deterministic for a
    given corpus. Digits are one token each, as in DeepSeek's tokenizer; ``whole_numbers`` lets
    BPE merge the digits of a number instead, so frequent box coordinates become single tokens.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if texts is None:
        texts = world_corpus()
    # Markup becomes whole added tokens afterwards: train on the text between the markup, so the
    # pieces that follow a marker ("blue square" right after <|obj_start|>) learn their own merges.
    markup = re.compile("|".join(re.escape(token) for token in GOT_R1_MARKUP_ORDER))
    corpus = [piece for text in texts for piece in markup.split(text) if piece]
    if not corpus:
        raise ValueError("train_world_tokenizer: the training corpus is empty")
    if vocab_size < len(WORLD_SPECIAL_TOKENS) + 256:
        raise ValueError(f"vocab_size must be at least {len(WORLD_SPECIAL_TOKENS) + 256} (bytes)")

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"\d+" if whole_numbers else r"\d"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(WORLD_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(corpus, trainer)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A",
        pair=f"{BOS_TOKEN} $A $B",
        special_tokens=[(BOS_TOKEN, backend.token_to_id(BOS_TOKEN))],
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        padding_side="left",
        model_max_length=model_max_length,
        extra_special_tokens={
            "image_token": IMAGE_TOKEN,
            "boi_token": BEGIN_OF_IMAGE,
            "eoi_token": END_OF_IMAGE,
        },
    )
    if add_markup:
        add_markup_to_tokenizer(tokenizer)
    return tokenizer


def add_markup_to_tokenizer(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """Add the GoT markup tokens a tokenizer lacks (GoT-R1's way and order); return those added."""
    vocab = tokenizer.get_vocab()
    missing = [token for token in GOT_R1_MARKUP_ORDER if token not in vocab]
    if missing:
        tokenizer.add_tokens(missing)
    return missing


def ensure_janus_token_attributes(tokenizer: PreTrainedTokenizerBase) -> None:
    """Give a tokenizer the attributes `JanusProcessor` reads (image_token, boi_token, eoi_token)."""
    vocab = tokenizer.get_vocab()
    for attribute, token in (
        ("image_token", IMAGE_TOKEN),
        ("boi_token", BEGIN_OF_IMAGE),
        ("eoi_token", END_OF_IMAGE),
    ):
        if getattr(tokenizer, attribute, None) is None:
            if token not in vocab:
                raise ValueError(f"the tokenizer has no {token!r} token, which Janus needs")
            setattr(tokenizer, attribute, token)


def build_processor(
    tokenizer: PreTrainedTokenizerBase,
    image_size: int = 64,
    num_image_tokens: int = 64,
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5),
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5),
) -> JanusProcessor:
    """Wrap a tokenizer in a `JanusProcessor` with the PIL image processor and the GoT chat template.

    Janus normalises generation-side pixels to [-1, 1] (mean = std = 0.5), as set here by default.
    """
    from transformers import JanusProcessor
    from transformers.models.janus.image_processing_pil_janus import JanusImageProcessorPil

    ensure_janus_token_attributes(tokenizer)
    image_processor = JanusImageProcessorPil(
        size={"height": image_size, "width": image_size},
        image_mean=list(image_mean),
        image_std=list(image_std),
    )
    return JanusProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
        use_default_system_prompt=False,
        num_image_tokens=num_image_tokens,
    )


def build_world_processor(
    tokenizer: PreTrainedTokenizerBase | None = None,
    image_size: int = 64,
    num_image_tokens: int = 64,
) -> JanusProcessor:
    """The world's processor: a freshly trained world tokenizer (unless given) in a JanusProcessor."""
    if tokenizer is None:
        tokenizer = train_world_tokenizer()
    return build_processor(tokenizer, image_size=image_size, num_image_tokens=num_image_tokens)

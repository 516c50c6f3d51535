"""The embedded compositional world: coloured shapes, a prompt grammar, a pixel detector, exact scoring.

It is what the tiny models train on, what the programmatic judge scores, and what the demo and the
tests use. Nothing in it is a neural network, so every judgement it makes is exact and checkable.
"""

from gotr1.world.bench import (
    GoTExample,
    ImageScore,
    benchmark_prompts,
    clean_fraction,
    count_extra_objects,
    sample_examples,
    score_detections,
    score_image,
    summarize,
)
from gotr1.world.chains import CHAIN_COLORS, region_words, write_chain
from gotr1.world.detector import Detection, detect
from gotr1.world.grammar import (
    BACKGROUND,
    CATEGORIES,
    COLORS,
    HELD_OUT_PAIRS,
    HELD_OUT_RELATIONS,
    RELATION_PHRASES,
    RELATIONS,
    RL_ONLY_PAIRS,
    RL_ONLY_RELATIONS,
    SHAPES,
    ObjectSpec,
    PromptSpec,
    format_prompt,
    parse_prompt,
    sample_prompt,
)
from gotr1.world.scene import (
    Scene,
    SceneObject,
    random_scene,
    relation_holds,
    relative_position,
    render_scene,
    sample_scene,
)

__all__ = [
    "BACKGROUND",
    "CATEGORIES",
    "COLORS",
    "HELD_OUT_PAIRS",
    "HELD_OUT_RELATIONS",
    "RELATIONS",
    "RELATION_PHRASES",
    "RL_ONLY_PAIRS",
    "RL_ONLY_RELATIONS",
    "SHAPES",
    "Detection",
    "GoTExample",
    "ImageScore",
    "ObjectSpec",
    "PromptSpec",
    "Scene",
    "SceneObject",
    "benchmark_prompts",
    "clean_fraction",
    "count_extra_objects",
    "detect",
    "format_prompt",
    "parse_prompt",
    "random_scene",
    "region_words",
    "relation_holds",
    "relative_position",
    "render_scene",
    "sample_examples",
    "sample_prompt",
    "sample_scene",
    "score_detections",
    "score_image",
    "summarize",
    "write_chain",
    "CHAIN_COLORS",
]

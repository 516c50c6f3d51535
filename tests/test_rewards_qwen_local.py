"""The local Qwen2.5-VL judge end to end with a tiny random Qwen2.5-VL (no downloads).

The model is built from a config with random weights, the tokenizer trained here with the
`tokenizers` library, the image processor a real `Qwen2VLImageProcessorPil`; all three are saved to
a folder and loaded back the way a user's checkpoint is. Its answers are garbage, which must turn
into counted failures; valid answers injected after generation must score correctly, boxes included.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from gotr1.chain import box_iou, format_chain
from gotr1.rewards import DualStageReward, QwenLocalConfig, QwenLocalJudge, Reply, RewardConfig
from gotr1.rewards import qwen_prompts as qp

SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
MIN_PIXELS = 28 * 28 * 4
MAX_PIXELS = 28 * 28 * 48  # small, so most test images are really resized


def _train_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from gotr1.world import sample_examples

    corpus = [qp.semantic_question("a red circle", "plan"), qp.layout_question("a red circle")]
    corpus += [qp.image_question("x"), qp.ground_question("red circle"), '{"score": 7}']
    corpus += [e.chain + " " + e.prompt for e in sample_examples(40, seed=0)]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(corpus * 3, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matrices: one thread is faster than two fighting over shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny Qwen2.5-VL checkpoint folder: random weights, trained tokenizer, real image processor."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    folder = tmp_path_factory.mktemp("tiny-qwen25vl")
    tokenizer = _train_tokenizer()
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIALS}
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "max_position_embeddings": 4096,
            "rope_parameters": {
                "rope_type": "default",
                "mrope_section": [2, 3, 3],
                "rope_theta": 1e4,
            },
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
            "bos_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": 1,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": 32,
            "fullatt_block_indexes": [0],
            "window_size": 112,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(0)
    Qwen2_5_VLForConditionalGeneration(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    Qwen2VLImageProcessorPil(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def judge(checkpoint):
    config = QwenLocalConfig(
        model=str(checkpoint),
        device="cpu",
        local_files_only=True,
        batch_size=8,
        image_size=None,
        score_max_new_tokens=12,
        ground_max_new_tokens=16,
    )
    return QwenLocalJudge(config)


class InjectedJudge(QwenLocalJudge):
    """The real judge (processor, model, generation) with the answer text replaced afterwards."""

    def __init__(self, base: QwenLocalJudge, answer) -> None:
        super().__init__(base.config, base.model, base.tokenizer, base.image_processor)
        self.answer = answer

    def _generate_batch(self, requests):
        replies = super()._generate_batch(requests)
        return [
            Reply(self.answer(r), reply.image_size)
            for r, reply in zip(requests, replies, strict=True)
        ]


def test_resized_size_matches_the_processor(checkpoint):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    rng = random.Random(0)
    sizes = [(64, 64), (333, 517), (1000, 37), (29, 700), (448, 448), (1280, 720)]
    sizes += [(rng.randint(20, 900), rng.randint(20, 900)) for _ in range(24)]
    for min_pixels, max_pixels in ((MIN_PIXELS, MAX_PIXELS), (qp.QWEN_MIN_PIXELS, 28 * 28 * 1280)):
        processor = Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels)
        for width, height in sizes:
            grid = processor(images=[Image.new("RGB", (width, height))], return_tensors="pt")[
                "image_grid_thw"
            ]
            _, grid_h, grid_w = grid[0].tolist()
            expected = (grid_w * 14, grid_h * 14)
            assert qp.qwen_resized_size(width, height, min_pixels, max_pixels) == expected, (
                width,
                height,
            )


def _box_image(size, box, colour=(220, 30, 30)):
    """An image of `size` with a filled rectangle at a 0-1000 `box`."""
    image = Image.new("RGB", size, (240, 240, 240))
    w, h = size
    ImageDraw.Draw(image).rectangle(
        (box[0] * w / 1000, box[1] * h / 1000, box[2] * w / 1000 - 1, box[3] * h / 1000 - 1),
        fill=colour,
    )
    return image


def test_garbage_answers_become_counted_failures(judge):
    from gotr1.world import sample_examples

    examples = sample_examples(4, seed=7)
    prompts = [e.prompt for e in examples]
    chains = [e.chain for e in examples]
    images = [e.render() for e in examples]
    before = dict(judge.stats)
    rewards = DualStageReward(judge, RewardConfig(layout_size=112)).score(prompts, chains, images)
    assert rewards.failure_counts == {"sem": 4, "spa": 4, "ri": 4, "pi": 4}
    for name in ("sem", "spa", "ri", "pi"):
        assert np.isnan(rewards.component(name)).all()
    np.testing.assert_array_equal(rewards.total, 0.0)  # policy "zero"
    # three scoring questions per sample plus one grounding question per distinct planned name
    asked = 3 * len(examples) + sum(len({o.name for o in _objects(e)}) for e in examples)
    stats = {
        k: judge.stats[k] - before.get(k, 0)
        for k in ("requests", "unusable_answers", "retries", "failures")
    }
    assert stats == {
        "requests": 2 * asked,
        "unusable_answers": asked,
        "retries": asked,
        "failures": asked,
    }
    assert all(r and "unusable answer" in r for r in rewards.reasons["pi"])
    dropped = DualStageReward(judge, RewardConfig(on_failure="drop", components=("pi",))).score(
        prompts, chains, images
    )
    assert not dropped.keep.any() and np.isnan(dropped.total).all()


def _objects(example):
    from gotr1.chain import parse_chain

    return parse_chain(example.chain).objects


def test_batched_generation_is_left_padded_and_matches_single(judge):
    calls = []
    original = judge.model.generate

    def recording(**inputs):
        calls.append((inputs["input_ids"].shape[0], inputs["attention_mask"][:, 0].tolist()))
        return original(**inputs)

    judge.model.generate = recording
    try:
        prompts = ["a red circle", "a blue square to the left of a green triangle", "two circles"]
        images = [Image.new("RGB", (56, 56), c) for c in ("red", "blue", "green")]
        from gotr1.rewards.vlm import ChatRequest

        texts = [qp.image_question(p) for p in prompts]
        batch = judge.generate([ChatRequest(t, i, 8) for t, i in zip(texts, images, strict=True)])
        single = [
            judge.generate([ChatRequest(t, i, 8)])[0] for t, i in zip(texts, images, strict=True)
        ]
    finally:
        judge.model.generate = original
    assert calls[0][0] == 3 and [c[0] for c in calls[1:]] == [1, 1, 1]
    assert 0 in calls[0][1]  # shorter rows are padded on the left
    assert [r.text for r in batch] == [r.text for r in single]
    assert [r.image_size for r in batch] == [(56, 56)] * 3


def test_injected_valid_answers_score_correctly(judge):
    rng = random.Random(3)
    sizes = [(333, 517), (64, 64), (900, 300), (1200, 800)]
    boxes = []
    for _ in sizes:
        x, y = rng.randint(50, 500), rng.randint(50, 500)
        boxes.append((x, y, x + rng.randint(150, 450), y + rng.randint(150, 450)))
    images = [_box_image(s, b) for s, b in zip(sizes, boxes, strict=True)]
    names = ["red square", "red square", "red square", "red square"]
    chains = [format_chain([(n, b)]) for n, b in zip(names, boxes, strict=True)]
    prompts = [f"prompt {i}" for i in range(len(sizes))]

    def qwen_answer(request):
        text = request.text
        if text.startswith("Locate the "):
            # What Qwen2.5-VL answers: absolute pixels of the image as its processor resized it,
            # the resize read here from an independent processor call.
            grid = judge.image_processor(images=[request.image], return_tensors="pt")[
                "image_grid_thw"
            ][0]
            width, height = int(grid[2]) * 14, int(grid[1]) * 14
            index = next(i for i, img in enumerate(images) if img.size == request.image.size)
            x1, y1, x2, y2 = boxes[index]
            pixels = [x1 * width / 1000, y1 * height / 1000, x2 * width / 1000, y2 * height / 1000]
            return (
                "```json\n"
                + str([{"bbox_2d": [round(v) for v in pixels], "label": "red square"}])
                + "\n```"
            )
        if "Plan:" in text:
            return 'The plan is faithful. {"score": 9}'
        if "layout planned" in text:
            return "7"
        return "Score: 4"

    injected = InjectedJudge(judge, qwen_answer)
    rewards = DualStageReward(injected, RewardConfig(layout_size=112)).score(
        prompts, chains, images
    )
    assert rewards.failure_counts == {"sem": 0, "spa": 0, "ri": 0, "pi": 0}
    np.testing.assert_allclose(rewards.sem, 0.9)
    np.testing.assert_allclose(rewards.spa, 6 / 9)
    np.testing.assert_allclose(rewards.pi, 0.4)
    assert (rewards.ri > 0.95).all(), rewards.ri
    np.testing.assert_allclose(rewards.total, 0.4 * (0.9 + 6 / 9) * rewards.ri)
    # The test can tell: reading the same pixels against the original size is far off.
    grounded = injected.ground(images, [[n] for n in names])
    naive = []
    for image, box in zip(images, boxes, strict=True):
        grid = judge.image_processor(images=[image], return_tensors="pt")["image_grid_thw"][0]
        resized = (int(grid[2]) * 14, int(grid[1]) * 14)
        pixels = [
            box[0] * resized[0] / 1000,
            box[1] * resized[1] / 1000,
            box[2] * resized[0] / 1000,
            box[3] * resized[1] / 1000,
        ]
        naive.append(box_iou(qp.model_box_to_grid(pixels, "qwen2.5", image.size), box))
    assert min(naive) < 0.5
    assert all(box_iou(c[0][0], b) > 0.95 for c, b in zip(grounded.candidates, boxes, strict=True))


def test_pixel_bounds_override_changes_the_resize_and_the_reported_size(judge):
    from gotr1.rewards.vlm import ChatRequest

    config = QwenLocalConfig(**{**judge.config.__dict__, "max_pixels": 28 * 28 * 8})
    small = QwenLocalJudge(config, judge.model, judge.tokenizer, judge.image_processor)
    image = Image.new("RGB", (400, 300), "white")
    (reply,) = small.generate([ChatRequest("Locate the cat.", image, 2)])
    (default,) = judge.generate([ChatRequest("Locate the cat.", image, 2)])
    assert reply.image_size == qp.qwen_resized_size(400, 300, MIN_PIXELS, 28 * 28 * 8)
    assert default.image_size == qp.qwen_resized_size(400, 300, MIN_PIXELS, MAX_PIXELS)
    assert reply.image_size != default.image_size


def test_config_and_checkpoint_errors(checkpoint, judge):
    with pytest.raises(ValueError, match="batch_size"):
        QwenLocalConfig(batch_size=0)
    with pytest.raises(ValueError, match="dtype"):
        QwenLocalJudge(
            QwenLocalConfig(
                model=str(checkpoint), dtype="int3", device="cpu", local_files_only=True
            )
        )
    assert "QwenLocalJudge" in repr(judge)


def test_model_box_to_grid_formats():
    assert qp.model_box_to_grid([14, 28, 42, 56], "qwen2.5", (56, 112)) == (250, 250, 750, 500)
    assert qp.model_box_to_grid([500, 100, 200, 900], "grid1000") == (200, 100, 500, 900)
    assert qp.model_box_to_grid([0.1, 0.2, 1.5, -0.1], "unit") == (100, 0, 1000, 200)
    with pytest.raises(ValueError):
        qp.model_box_to_grid([1, 2, 3, 4], "qwen2.5", None)


# --------------------------------------------------------------------------- inputs that raise


def _score_answer(request):
    return "Score: 4"


def test_an_image_the_processor_refuses_fails_only_itself(judge):
    # Qwen2.5-VL's processor raises on an aspect ratio over 200: that sample is a counted
    # failure with the reason, the rest of its batch is still answered.
    images = [Image.new("RGB", (56, 56)), Image.new("RGB", (1000, 4)), Image.new("RGB", (84, 56))]
    prompts = ["a red circle", "a wide strip", "a blue square"]
    injected = InjectedJudge(judge, _score_answer)
    before = dict(injected.stats)
    result = injected.image(prompts, images)
    assert result.failed.tolist() == [False, True, False]
    np.testing.assert_allclose(result.scores[[0, 2]], 0.4)
    assert "the judge raised ValueError" in result.reasons[1] and "aspect" in result.reasons[1]
    assert injected.stats["generate_errors"] - before.get("generate_errors", 0) == 1
    # The whole reward, with the real (garbage-answering) judge: failures, no crash.
    rewards = DualStageReward(judge, RewardConfig(layout_size=112)).score(
        prompts, [format_chain([("red circle", (100, 100, 400, 400))])] * 3, images
    )
    assert rewards.failed["pi"].all() and rewards.failed["ri"].all()
    assert "aspect" in rewards.reasons["pi"][1] and "unusable answer" in rewards.reasons["pi"][0]
    np.testing.assert_array_equal(rewards.total, 0.0)


def test_an_exception_from_generate_is_a_counted_failure(judge):
    from gotr1.rewards.vlm import ChatRequest

    original = judge.model.generate
    calls = []

    def batch_only_fails(**inputs):
        calls.append(inputs["input_ids"].shape[0])
        if inputs["input_ids"].shape[0] > 1:
            raise RuntimeError("injected: out of memory for a batch")
        return original(**inputs)

    injected = InjectedJudge(judge, _score_answer)
    prompts = ["a red circle", "a blue square", "two circles"]
    images = [Image.new("RGB", (56, 56), c) for c in ("red", "blue", "green")]
    judge.model.generate = batch_only_fails
    try:
        # A batch that raises is answered again one request at a time.
        result = injected.image(prompts, images)
        assert calls == [3, 1, 1, 1] and not result.failed.any()
        np.testing.assert_allclose(result.scores, 0.4)
        # A model that always raises: every sample is a counted failure that says why.
        judge.model.generate = lambda **inputs: (_ for _ in ()).throw(RuntimeError("injected"))
        before = dict(injected.stats)
        failed = injected.semantic(prompts, ["plan"] * 3)
        assert failed.failed.all() and np.isnan(failed.scores).all()
        assert all(
            r == "no answer: the judge raised RuntimeError: injected" for r in failed.reasons
        )
        assert injected.stats["failures"] - before["failures"] == 3
        assert injected.stats["no_answer"] - before["no_answer"] == 3
    finally:
        judge.model.generate = original

    class Broken(QwenLocalJudge):
        def generate(self, requests):  # a judge whose whole generate() raises
            raise RuntimeError("device lost")

    broken = Broken(judge.config, judge.model, judge.tokenizer, judge.image_processor)
    grounded = broken.ground(images, [["red circle", "blue square"]] * 3)
    assert grounded.failed.all() and "device lost" in grounded.reasons[0]
    assert broken.stats["generate_errors"] == 1
    assert broken._generate_safely([ChatRequest("x"), None], [None, "bad"])[1].error == "bad"


def test_default_image_size_resizes_before_the_processor(judge):
    # image_size=448 (the default) resizes a 64x32 image to 448x224 before the processor, whose
    # own resize then starts from 448x224: the boxes are read against that, not 64x32.
    config = QwenLocalConfig(**{**judge.config.__dict__, "image_size": 448})
    assert QwenLocalConfig().image_size == 448
    seen = []
    true_box = (100, 250, 600, 750)

    class Recording(QwenLocalJudge):
        def _generate_batch(self, requests):
            replies = super()._generate_batch(requests)
            seen.extend(
                (r.image.size, reply.image_size) for r, reply in zip(requests, replies, strict=True)
            )
            out = []
            for reply in replies:
                w, h = reply.image_size
                box = [true_box[0] * w / 1000, true_box[1] * h / 1000]
                box += [true_box[2] * w / 1000, true_box[3] * h / 1000]
                answer = str([{"bbox_2d": [round(v) for v in box], "label": "red square"}])
                out.append(Reply(answer, reply.image_size))
            return out

    recording = Recording(config, judge.model, judge.tokenizer, judge.image_processor)
    image = _box_image((64, 32), true_box)
    grounded = recording.ground([image], [["red square"]])
    assert seen == [((448, 224), qp.qwen_resized_size(448, 224, MIN_PIXELS, MAX_PIXELS))]
    assert seen[0][1] != qp.qwen_resized_size(64, 32, MIN_PIXELS, MAX_PIXELS)  # it matters
    assert box_iou(grounded.candidates[0][0][0], true_box) > 0.95


# --------------------------------------------------------------------------- gotr1 score --judge qwen


def test_score_command_with_the_local_qwen_judge(checkpoint, tmp_path, capsys):
    import argparse
    import json

    from gotr1.rewards.commands import register
    from gotr1.world import sample_examples

    parser = argparse.ArgumentParser(prog="gotr1")
    register(parser.add_subparsers(dest="command"))
    example = sample_examples(1, seed=4)[0]
    (tmp_path / "chain.txt").write_text(example.chain)
    example.render().save(tmp_path / "image.png")
    argv = ["score", "--judge", "qwen", "--model", str(checkpoint), "--device", "cpu"]
    argv += [
        "--local-files-only",
        "--prompt",
        example.prompt,
        "--chain",
        str(tmp_path / "chain.txt"),
    ]
    argv += ["--image", str(tmp_path / "image.png"), "--layout-size", "112"]
    reports = {}
    for policy in ("zero", "drop"):
        args = parser.parse_args([*argv, "--on-failure", policy])
        assert args.func(args) == 0
        reports[policy] = json.loads(capsys.readouterr().out)
    zero, drop = reports["zero"], reports["drop"]
    # The tiny random model answers garbage: four counted failures, reported with reasons.
    assert zero["judge"] == "qwen" and sorted(zero["failed"]) == ["pi", "ri", "sem", "spa"]
    assert all(v is None for v in zero["components"].values())
    assert all("unusable answer" in r for r in zero["failure_reasons"].values())
    assert zero["total"] == 0.0 and zero["kept"] is True
    assert drop["total"] is None and drop["kept"] is False and drop["failed"] == zero["failed"]
    names = [o["name"] for o in zero["chain"]["objects"]]
    assert names and all(o["grounded"] == [] for o in zero["chain"]["objects"])
    from gotr1.errors import UserError

    with pytest.raises(UserError, match="--model: cannot load"):
        args = parser.parse_args([*argv[:4], str(tmp_path / "missing"), *argv[5:]])
        args.func(args)

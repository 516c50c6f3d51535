"""The transformers scorers (clip, blip-vqa, owlv2, official) on tiny random models built here.

Each model is a tiny random config of the real transformers class, saved with ``save_pretrained``
next to a tokenizer written here (tests/tiny_hf.py) and loaded back through the scorers' public
load path (a folder). Scores are checked against values computed with transformers directly from
the same weights, following the official scripts' steps; the commands run end to end on a tiny
policy into the official layouts.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gotr1.errors import UserError
from gotr1.eval import compbench, geneval
from gotr1.eval.commands import register
from gotr1.eval.hf_scorers import (
    GENEVAL_COLOUR_TEMPLATES,
    OFFICIAL_MODELS,
    BlipVqaScorer,
    ClipScoreScorer,
    HFScorerOptions,
    OfficialScorer,
    Owlv2Scorer,
    blip_question,
    closeness,
    confidence_map,
    is_official_model,
    nms,
)
from gotr1.eval.layouts import read_compbench_samples, read_geneval_folder, read_jsonl
from gotr1.eval.prompt_parsing import clip_text_without_adjectives
from gotr1.eval.provenance import held_out, provenance_record, training_judge
from gotr1.eval.scorers import run_batched
from gotr1.rewards.clip_model import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, clip_pixels
from test_eval_e2e import FAST, build_world_model_folder
from tiny_hf import build_blip, build_clip, build_owlv2

MEAN = np.array(OPENAI_CLIP_MEAN, dtype=np.float32)[:, None, None]
STD = np.array(OPENAI_CLIP_STD, dtype=np.float32)[:, None, None]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Tiny scorer models in folders named after the official hub ids (and one that is not)."""
    root = tmp_path_factory.mktemp("hf-scorers")
    return {
        "clip": build_clip(root / "clip-vit-base-patch32", seed=1),
        "colour-clip": build_clip(root / "clip-vit-large-patch14", seed=2),
        "blip": build_blip(root / "blip-vqa-capfilt-large", seed=3),
        "owlv2": build_owlv2(root / "owlv2-base-patch16-ensemble", seed=4),
        "other-clip": build_clip(root / "my-clip", seed=5),
    }


@pytest.fixture(scope="module")
def options(models) -> HFScorerOptions:
    return HFScorerOptions(
        clip_model=str(models["clip"]),
        blip_model=str(models["blip"]),
        owlv2_model=str(models["owlv2"]),
        colour_clip_model=str(models["colour-clip"]),
        device="cpu",
        local_files_only=True,
    )


def scorer_flags(models: dict[str, Path]) -> list[str]:
    return [
        "--clip-model",
        str(models["clip"]),
        "--blip-model",
        str(models["blip"]),
        "--owlv2-model",
        str(models["owlv2"]),
        "--colour-clip-model",
        str(models["colour-clip"]),
        "--judge-device",
        "cpu",
        "--judge-local-files-only",
    ]


def picture(seed: int, size: tuple[int, int] = (32, 32)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="gotr1")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(list(argv))
    return args.func(args)


# --------------------------------------------------------------------------- CLIPScore


def test_clip_score_is_the_cosine_transformers_computes(models, options):
    from transformers import CLIPModel, CLIPTokenizer

    scorer = ClipScoreScorer(options)
    model = CLIPModel.from_pretrained(models["clip"]).eval()
    tokenizer = CLIPTokenizer.from_pretrained(models["clip"])
    images = [picture(0), picture(1)]  # already 32 x 32: CLIP's transform only normalises
    prompts = ["a red apple", "a dog chasing a ball on the grass"]
    pixels = np.stack(
        [(np.asarray(i, np.float32).transpose(2, 0, 1) / 255 - MEAN) / STD for i in images]
    )
    encoded = tokenizer(prompts, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(
            input_ids=encoded["input_ids"],
            attention_mask=encoded["attention_mask"],
            pixel_values=torch.from_numpy(pixels),
        )
    # logits_per_image = exp(logit_scale) * cos(image, text): divide the scale back out.
    cosines = torch.diagonal(out.logits_per_image) / model.logit_scale.exp()
    got = scorer.clip_score_batch(images, prompts)
    assert got == pytest.approx(cosines.tolist(), abs=1e-5)
    assert scorer.clip_score(images[1], prompts[1]) == pytest.approx(got[1], abs=1e-6)
    assert all(-1 <= v <= 1 for v in got) and got[0] != pytest.approx(got[1])


def test_clip_transform_resizes_the_short_side_and_crops_the_centre():
    image = picture(3, (64, 40))  # short side 40 -> 32, long side int(32 * 64 / 40) = 51
    resized = image.resize((51, 32), Image.Resampling.BICUBIC)
    left = int(round((51 - 32) / 2.0))
    expected = np.asarray(resized.crop((left, 0, left + 32, 32)), np.float32).transpose(2, 0, 1)
    got = clip_pixels([image], 32)[0]
    assert got == pytest.approx((expected / 255 - MEAN) / STD, abs=1e-5)


def test_complex_prompts_lose_their_adjectives_before_clip():
    text = clip_text_without_adjectives("The fluffy white cat sat on the soft red cushion.")
    assert text == "The cat sat on the cushion ."
    assert clip_text_without_adjectives("a dog chasing a ball") == "a dog chasing a ball"


# --------------------------------------------------------------------------- BLIP-VQA


def test_blip_yes_ratio_follows_the_official_vqa_prob_steps(models, options):
    from transformers import BertTokenizer, BlipForQuestionAnswering

    scorer = BlipVqaScorer(options)
    model = BlipForQuestionAnswering.from_pretrained(models["blip"]).eval()
    tokenizer = BertTokenizer.from_pretrained(models["blip"])
    image = picture(5, (480, 480))  # already BLIP's 480 x 480: the transform only normalises
    question = "a green bench?"
    ids = tokenizer(question, return_tensors="pt")["input_ids"]
    ids[:, 0] = tokenizer.convert_tokens_to_ids("[ENC]")  # blip_vqa.py: enc_token_id
    pixels = torch.from_numpy(
        ((np.asarray(image, np.float32).transpose(2, 0, 1) / 255 - MEAN) / STD)[None]
    )
    with torch.no_grad():
        vision = model.vision_model(pixel_values=pixels, interpolate_pos_encoding=True)[0]
        states = model.text_encoder(
            input_ids=ids,
            encoder_hidden_states=vision,
            encoder_attention_mask=torch.ones(vision.shape[:-1], dtype=torch.long),
        )[0]
        dec = tokenizer.convert_tokens_to_ids("[DEC]")
        logits = model.text_decoder(
            input_ids=torch.tensor([[dec]]), encoder_hidden_states=states
        ).logits[0, 0]
    probs = torch.softmax(logits, dim=-1)
    yes, no = tokenizer.convert_tokens_to_ids("yes"), tokenizer.convert_tokens_to_ids("no")
    expected = float(probs[yes] / (probs[yes] + probs[no]))
    assert scorer.yes_prob(image, question) == pytest.approx(expected, abs=1e-5)
    # The ratio is a sigmoid of the two logits' difference: in (0, 1), and the batch agrees.
    assert expected == pytest.approx(float(torch.sigmoid(logits[yes] - logits[no])), abs=1e-5)
    batch = scorer.yes_prob_batch([image, picture(6, (64, 48))], [question, "a red car?"])
    assert batch[0] == pytest.approx(expected, abs=1e-5) and 0 < batch[1] < 1


def test_blip_questions_are_preprocessed_as_blip_does():
    assert blip_question('A "Green" Bench?') == "a green bench?"
    assert blip_question("a red car. (left)!  ") == "a red car left"
    assert blip_question(" ".join(["word"] * 60)).count("word") == 50


def test_blip_scorer_runs_the_official_product_rule(options):
    scorer = BlipVqaScorer(options)
    image = picture(7, (48, 48))
    prompt = "a green bench and a red car"
    answer = compbench.score_attribute(scorer, image, prompt)
    parts = [scorer.yes_prob(image, q) for q in ("a green bench?", "a red car?")]
    assert answer == compbench.blip_answer(parts)
    assert run_batched(scorer, [lambda s: compbench.score_attribute(s, image, prompt)]) == [answer]


# --------------------------------------------------------------------------- OWLv2


def test_confidence_maps_put_owlv2_operating_points_on_the_official_thresholds():
    cb = confidence_map("compbench", 0.1, 0.3)
    assert cb(0.1) == pytest.approx(0.5) and cb(0.55) == pytest.approx(0.75)
    assert cb(0.1 + 1e-6) > compbench.UNIDET_SCORE_THRESHOLD >= cb(0.1)
    assert cb(1.0) == pytest.approx(0.999)  # never exactly 1, as UniDet's
    ge = confidence_map("geneval", 0.1, 0.3)
    assert ge(0.1) == pytest.approx(geneval.THRESHOLD) and ge(0.2) == pytest.approx(0.6)
    assert ge(0.3) == pytest.approx(geneval.COUNTING_THRESHOLD)
    assert ge(0.3 + 1e-6) > geneval.COUNTING_THRESHOLD and ge(0.65) == pytest.approx(0.95)
    with pytest.raises(ValueError):
        confidence_map("drawbench", 0.1, 0.3)
    with pytest.raises(UserError, match="owlv2-threshold"):
        HFScorerOptions(owlv2_found=0.4, owlv2_count=0.3)


def test_nms_keeps_the_most_confident_of_overlapping_boxes():
    boxes = [(0, 0, 10, 10), (1, 0, 11, 10), (20, 20, 30, 30)]
    assert nms(boxes, [0.5, 0.9, 0.2], 0.5) == [1, 2]
    assert nms(boxes, [0.5, 0.9, 0.2], 1.0) == [1, 0, 2]


def test_owlv2_detections_from_known_logits_and_boxes(options):
    scorer = Owlv2Scorer(options, "compbench")
    image = Image.new("RGB", (200, 100))  # padded to a 200 x 200 square
    logit = float(np.log(0.55 / 0.45))  # sigmoid = 0.55
    low = float(np.log(0.05 / 0.95))  # sigmoid = 0.05: below the 0.1 found point
    logits = torch.tensor([[logit, low], [low, logit - 0.1], [low, low], [logit, low]])
    boxes = torch.tensor(
        [
            [0.25, 0.25, 0.2, 0.2],  # dog: (30, 30, 70, 70) in pixels of the padded square
            [0.75, 0.25, 0.1, 0.1],  # cat
            [0.5, 0.5, 0.5, 0.5],  # nothing above the found point
            [0.26, 0.25, 0.2, 0.2],  # a duplicate dog: suppressed by NMS
        ]
    )
    found = scorer._detections(image, ["dog", "cat"], logits, boxes)
    assert [d.label for d in found] == ["dog", "cat"]
    assert found[0].box == pytest.approx((30, 30, 70, 70), abs=1e-3)
    assert found[1].box == pytest.approx((140, 40, 160, 60), abs=1e-3)
    assert found[0].score == pytest.approx(0.75, abs=1e-4)  # 0.5 + 0.5 * (0.55 - 0.1) / 0.9
    cat = 1 / (1 + np.exp(-(logit - 0.1)))
    assert found[1].score == pytest.approx(0.5 + 0.5 * (cat - 0.1) / 0.9, abs=1e-4)


def test_owlv2_plumbing_and_geneval_clip_colours(models, options):
    from transformers import CLIPModel, CLIPTokenizer

    scorer = Owlv2Scorer(options, "geneval")
    image = picture(8, (64, 48))
    found = scorer.detect_batch([image, picture(9)], [["dog", "car"], ["bench"]])
    assert len(found) == 2 and {d.label for d in found[1]} <= {"bench"}
    for det in found[0]:
        assert det.label in ("dog", "car") and 0.3 < det.score <= 0.999
        assert 0 <= det.box[0] <= det.box[2] <= 64 and 0 <= det.box[1] <= det.box[3] <= 48
    assert found[0] == scorer.detect(image, ["dog", "car"])  # batched = one by one

    # GenEval's colour: normalised template embeddings averaged per colour, argmax of the crop.
    model = CLIPModel.from_pretrained(models["colour-clip"]).eval()
    tokenizer = CLIPTokenizer.from_pretrained(models["colour-clip"])
    box = (
        3.4,
        5.6,
        35.5,
        37.2,
    )  # PIL rounds: crop (3, 6, 36, 37) -> 33 x 31, then CLIP's transform
    crop = image.crop((3, 6, 36, 37))
    colours = list(geneval.COLORS)
    with torch.no_grad():
        feats = model.get_image_features(pixel_values=torch.from_numpy(clip_pixels([crop], 32)))
        feats = getattr(feats, "pooler_output", feats)
        feats = feats / feats.norm(dim=-1, keepdim=True)
        columns = []
        for colour in colours:
            texts = [t.format(c=colour, classname="car") for t in GENEVAL_COLOUR_TEMPLATES]
            enc = tokenizer(texts, padding=True, return_tensors="pt")
            text = model.get_text_features(**enc)
            text = getattr(text, "pooler_output", text)
            mean = (text / text.norm(dim=-1, keepdim=True)).mean(dim=0)
            columns.append(mean / mean.norm())
    expected = colours[int((feats[0] @ torch.stack(columns, dim=1)).argmax())]
    assert scorer.colour(image, box, colours, object_name="car") == expected


# --------------------------------------------------------------------------- closeness, errors


def test_closeness_labels_exact_only_for_the_official_weights(models, options):
    assert is_official_model("clip", "openai/clip-vit-base-patch32")
    assert is_official_model("clip", str(models["clip"]))
    assert not is_official_model("clip", str(models["other-clip"]))
    assert not is_official_model("blip-vqa", "Salesforce/blip-vqa-base")
    official = OfficialScorer(options, "compbench")
    assert closeness(official, "compbench", "color") == "exact"
    assert closeness(official, "compbench", "non_spatial") == "exact"
    assert closeness(official, "compbench", "spatial").startswith("near: OWLv2")
    assert closeness(official, "compbench", "complex").startswith("near:")
    assert closeness(official, "geneval").startswith("near: OWLv2")
    other = ClipScoreScorer(HFScorerOptions(clip_model=str(models["other-clip"]), device="cpu"))
    assert closeness(other, "compbench", "non_spatial").startswith("near: ")
    from gotr1.eval.scorers import WorldEvidenceScorer

    assert closeness(WorldEvidenceScorer(), "compbench", "color").startswith("not comparable")
    assert OFFICIAL_MODELS["blip-vqa"] == "Salesforce/blip-vqa-capfilt-large"


def test_partial_scorers_refuse_questions_they_cannot_answer(options, tmp_path):
    scorer = ClipScoreScorer(options)
    with pytest.raises(UserError, match="does not answer detect"):
        scorer.detect(picture(0), ["dog"])
    assert compbench.missing_capabilities("color", scorer.provides) == ["yes_prob"]
    assert compbench.missing_capabilities("non_spatial", scorer.provides) == []
    assert compbench.missing_capabilities("non_spatial", frozenset({"yes_prob"})) == []
    with pytest.raises(UserError, match=r"--clip-model .*nothing-here: cannot load a CLIP model"):
        ClipScoreScorer(
            HFScorerOptions(
                clip_model=str(tmp_path / "nothing-here"), device="cpu", local_files_only=True
            )
        )


# --------------------------------------------------------------------------- held-out judge


def test_training_judge_is_read_from_the_run_folder(tmp_path):
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    (run / "checkpoint-5" / "policy").mkdir(parents=True)
    (run / "config.yaml").write_text(
        "judge: qwen\njudge_model: null\nreward_components: [sem, pi]\n"
    )
    found = training_judge(run / "final")
    assert found["judge"] == "qwen" and found["judge_model"] == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert found["reward_components"] == ["sem", "pi"]
    assert training_judge(run / "checkpoint-5" / "policy")["source"] == str(run / "config.yaml")
    record = provenance_record(run / "final", "openai", "Qwen/Qwen2.5-VL-7B-Instruct")
    assert record["held_out"] is False and "reward hacking" in record["warning"]
    assert provenance_record(run / "final", "qwen", "other/Qwen2.5-VL-72B")["held_out"] is True
    assert provenance_record(run / "final", "official", None)["held_out"] is True
    sft = tmp_path / "sft"
    (sft / "final").mkdir(parents=True)
    (sft / "config.yaml").write_text("learning_rate: 0.001\n")
    assert provenance_record(sft / "final", "world", None)["held_out"] is True
    assert held_out(training_judge("some/hub-id"), {"judge": "world"}) is None


# --------------------------------------------------------------------------- end to end

PROMPTS = {
    "color": "a green bench and a red car",
    "shape": "a round ball and a square box",
    "texture": "a wooden box and a metal car",
    "spatial": "a dog on the left of a cat",
    "non_spatial": "a dog chasing a ball",
    "complex": "the fluffy cat sat on the left of a red car",
    "numeracy": "two dogs and one cat",
}


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    return build_world_model_folder(tmp_path_factory.mktemp("hf-policy"))


def test_compbench_official_end_to_end(tmp_path, models, options, policy_dir):
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    for category, text in PROMPTS.items():
        (prompts / f"{category}_val.txt").write_text(text + "\n")
    out = tmp_path / "cb"
    argv = ["eval", "compbench", "--model", str(policy_dir), "--out", str(out)]
    argv += ["--prompts-dir", str(prompts), "--images-per-prompt", "2", *FAST]
    argv += ["--scorer", "official", "clip", *scorer_flags(models)]
    assert run_cli(*argv) == 0

    summary = json.loads((out / "summary.judged-by-official.json").read_text())
    assert summary["judged_by"] == "official" and set(summary["scores"]) == set(PROMPTS)
    assert (
        summary["closeness"]["color"] == "exact" and summary["closeness"]["non_spatial"] == "exact"
    )
    assert summary["closeness"]["spatial"].startswith("near: OWLv2")
    assert summary["metrics"]["non_spatial"].startswith("clip: CLIP image-text cosine")
    assert summary["scorer_models"]["owlv2"] == str(models["owlv2"])
    assert summary["held_out"] is None and summary["training_judge"]["judge"] is None
    markdown = (out / "summary.judged-by-official.md").read_text()
    assert "| color | blip:" in markdown and "| exact |" in markdown and "unknown" in markdown

    # Every number recomputed from the saved images with the same models.
    reference = OfficialScorer(options, "compbench")
    result = out / "{}" / "judged-by-official"
    for category in PROMPTS:
        samples = read_compbench_samples(out, category)
        assert len(samples) == 2
        kind = compbench.complex_kind(PROMPTS[category], [], []) if category == "complex" else None
        expected = []
        for sample in samples:
            with Image.open(sample.path) as image:
                score = compbench.score_image(
                    reference, category, image.convert("RGB"), sample.prompt, kind
                )
            expected.append(score.score)
        assert summary["scores"][category] == pytest.approx(np.mean(expected), abs=1e-5)
    clip_rows = json.loads(
        (
            Path(str(result).format("non_spatial")) / "annotation_clip" / "vqa_result.json"
        ).read_text()
    )
    assert [r["question_id"] for r in clip_rows] == [0, 1]
    blip_rows = json.loads(
        (Path(str(result).format("color")) / "annotation_blip" / "vqa_result.json").read_text()
    )
    assert all(
        isinstance(r["answer"], str) and len(r["answer"].split(".")[1]) == 4 for r in blip_rows
    )
    for folder in (
        "annotation_blip",
        "annotation_clip",
        "annotation_3_in_1",
        "annotation_obj_detection",
    ):
        assert (Path(str(result).format("complex")) / folder / "vqa_result.json").is_file()
    assert (Path(str(result).format("numeracy")) / "annotation_num" / "vqa_result.json").is_file()

    # The clip scorer alone scores non-spatial only, with the same number, and says so.
    clip_summary = json.loads(
        (out / "summary.judged-by-clip-clip-vit-base-patch32.json").read_text()
    )
    assert list(clip_summary["scores"]) == ["non_spatial"]
    assert clip_summary["scores"]["non_spatial"] == pytest.approx(summary["scores"]["non_spatial"])
    assert set(clip_summary["skipped_categories"]) == set(PROMPTS) - {"non_spatial"}

    # A model trained with the world judge: the world scorer is flagged, official is held out.
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    (run / "config.yaml").write_text("judge: world\nreward_components: [sem, spa, ri, pi]\n")
    again = ["eval", "compbench", "--skip-generation", "--model", str(run / "final")]
    again += ["--out", str(out), "--prompts-dir", str(prompts), "--images-per-prompt", "2"]
    assert run_cli(*again, "--categories", "color", "--scorer", "world") == 0
    flagged = json.loads((out / "summary.judged-by-world-detector.json").read_text())
    assert flagged["held_out"] is False and "reward hacking" in flagged["warning"]
    assert flagged["closeness"]["color"].startswith("not comparable")
    assert "**Warning:" in (out / "summary.judged-by-world-detector.md").read_text()
    argv = [*again, "--categories", "color", "--scorer", "blip-vqa", *scorer_flags(models)]
    assert run_cli(*argv) == 0
    kept = json.loads((out / "summary.judged-by-blip-vqa-blip-vqa-capfilt-large.json").read_text())
    assert kept["held_out"] is True and kept["training_judge"]["judge"] == "world"
    assert kept["scores"]["color"] == pytest.approx(summary["scores"]["color"], abs=1e-6)


def test_geneval_official_end_to_end(tmp_path, models, options, policy_dir):
    metadata = [
        {
            "tag": "single_object",
            "include": [{"class": "dog", "count": 1}],
            "prompt": "a photo of a dog",
        },
        {
            "tag": "color_attr",
            "include": [
                {"class": "car", "count": 1, "color": "red"},
                {"class": "bench", "count": 1, "color": "green"},
            ],
            "prompt": "a photo of a red car and a green bench",
        },
        {
            "tag": "position",
            "include": [
                {"class": "dog", "count": 1},
                {"class": "cat", "count": 1, "position": ["left of", 0]},
            ],
            "prompt": "a photo of a cat left of a dog",
        },
        {
            "tag": "counting",
            "include": [{"class": "dog", "count": 2}],
            "exclude": [{"class": "dog", "count": 3}],
            "prompt": "a photo of two dogs",
        },
    ]
    path = tmp_path / "meta.jsonl"
    path.write_text("".join(json.dumps(m) + "\n" for m in metadata))
    out = tmp_path / "ge"
    argv = [
        "eval",
        "geneval",
        "--model",
        str(policy_dir),
        "--out",
        str(out),
        "--metadata",
        str(path),
    ]
    argv += ["--images-per-prompt", "2", *FAST, "--scorer", "official", *scorer_flags(models)]
    assert run_cli(*argv) == 0
    rows = read_jsonl(out / "judged-by-official" / "results.jsonl")
    assert len(rows) == 8 and set(rows[0]) == {
        "filename",
        "tag",
        "prompt",
        "correct",
        "reason",
        "metadata",
        "details",
    }
    summary = json.loads((out / "summary.judged-by-official.json").read_text())
    assert summary["closeness"].startswith("near: OWLv2") and summary["held_out"] is None
    assert summary["overall"] == pytest.approx(geneval.summarize(rows)["overall"])

    reference = OfficialScorer(options, "geneval")
    expected = []
    folders = read_geneval_folder(out)
    assert [f.metadata for f in folders] == metadata
    for folder in folders:
        for sample in folder.samples:
            with Image.open(sample) as image:
                rgb = image.convert("RGB")
            expected.append(geneval.evaluate_image(reference, rgb, folder.metadata, str(sample)))
    assert [(r["correct"], r["reason"], r["details"]) for r in rows] == [
        (r["correct"], r["reason"], r["details"]) for r in expected
    ]
    assert any(json.loads(r["details"]) for r in rows)  # the tiny detector finds boxes

    with pytest.raises(UserError, match="--scorer clip cannot score GenEval"):
        run_cli(
            "eval",
            "geneval",
            "--skip-generation",
            "--out",
            str(out),
            "--metadata",
            str(path),
            "--scorer",
            "clip",
        )
    with pytest.raises(UserError, match="blip-vqa has no evidence"):
        run_cli(
            "eval",
            "compbench",
            "--skip-generation",
            "--out",
            str(tmp_path / "x"),
            "--categories",
            "spatial",
            "--scorer",
            "blip-vqa",
            *scorer_flags(models),
        )

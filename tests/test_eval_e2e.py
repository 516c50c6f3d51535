"""`gotr1 eval compbench|geneval` end to end on a world-tiny-shaped model with random weights.

The model folder is built here (presets.build_model + a world tokenizer/processor, saved as a plain
HF folder) and loaded back through the commands, as a user's checkpoint is. Images go into the
official layouts, are scored by the stub-free world scorer with the official rules, and every
number the commands write is recomputed here from the saved images. Rendered ground-truth scenes
put into the same layouts check that the scorer and rules rate right images right.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gotr1.errors import UserError
from gotr1.eval import compbench, geneval
from gotr1.eval.commands import register
from gotr1.eval.generation import (
    generate_items,
    load_policy,
    plan_batches,
    prompt_groups,
    rebuild_batch,
    resample_batch,
    write_item,
)
from gotr1.eval.layouts import (
    compbench_items,
    geneval_items,
    load_complex_splits,
    read_compbench_samples,
    read_geneval_folder,
    read_jsonl,
)
from gotr1.eval.scorers import WorldEvidenceScorer
from gotr1.eval.world_bench import (
    world_compbench_prompts,
    world_geneval_metadata,
    write_world_compbench_prompts,
    write_world_geneval_metadata,
)
from gotr1.policy.io import configure_special_tokens, save_pretrained
from gotr1.policy.presets import WORLD_TINY, build_model
from gotr1.policy.rollout import SamplingConfig
from gotr1.policy.tokenizer import build_processor, build_prompt_text, train_world_tokenizer
from gotr1.world import benchmark_prompts, render_scene, sample_scene

# world-tiny's architecture, shrunk so a test generates in well under a second.
TINY = dataclasses.replace(
    WORLD_TINY,
    name="world-eval-test",
    text={
        **WORLD_TINY.text,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
    },
    vq={**WORLD_TINY.vq, "num_embeddings": 64, "latent_channels": 32},
)
CORPUS = [
    "a red circle to the left of a blue square",
    "<|obj_start|>red circle<|obj_end|> <|box_start|>(120,340),(560,780)<|box_end|>",
    build_prompt_text("three green triangles above a yellow circle"),
]
FAST = ["--max-chain-tokens", "8", "--cfg-weight", "3", "--device", "cpu"]


def build_world_model_folder(path: Path, seed: int = 0) -> Path:
    """A world-tiny-shaped policy with random weights, saved as a plain HF folder."""
    tokenizer = train_world_tokenizer(texts=CORPUS, vocab_size=300)
    processor = build_processor(tokenizer, image_size=64, num_image_tokens=64)
    model = build_model(TINY, vocab_size=len(tokenizer), seed=seed)
    configure_special_tokens(model, tokenizer)
    return save_pretrained(model.eval(), processor, path)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (and the CI machine's cores are shared)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, one_thread):
    return build_world_model_folder(tmp_path_factory.mktemp("world-policy"))


@pytest.fixture(scope="module")
def world_prompts():
    return benchmark_prompts("test", 12, seed=3)


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="gotr1")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(list(argv))
    return args.func(args)


def _open(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


# --------------------------------------------------------------------------- T2I-CompBench


def test_compbench_generates_official_layout_scores_and_resumes(tmp_path, model_dir, world_prompts):
    prompts_dir = tmp_path / "prompts"
    files = write_world_compbench_prompts(prompts_dir, world_prompts)
    categories = ["color", "spatial", "numeracy", "complex"]
    assert set(categories) <= set(files)
    out = tmp_path / "cb"
    argv = ["eval", "compbench", "--model", str(model_dir), "--out", str(out)]
    argv += ["--prompts-dir", str(prompts_dir), "--categories", *categories]
    argv += ["--images-per-prompt", "3", "--limit", "2", "--scorer", "world", *FAST]
    assert run_cli(*argv) == 0

    scorer = WorldEvidenceScorer()
    spatial_list, action_list = load_complex_splits()
    summary = json.loads((out / "summary.judged-by-world-detector.json").read_text())
    assert summary["judged_by"] == "world-detector"
    assert "not the official" in summary["note"]
    assert "judged by world-detector" in (out / "summary.judged-by-world-detector.md").read_text()
    for category in categories:
        prompts = files[category].read_text().splitlines()[:2]
        samples = read_compbench_samples(out, category)
        # exactly the official names, question ids p * n + k, prompts read back from the names
        assert [s.question_id for s in samples] == list(range(2 * 3))
        assert [s.prompt for s in samples] == [p for p in prompts for _ in range(3)]
        assert {p.name for p in (out / category / "samples").iterdir()} == {
            f"{p}_{i:06d}.png" for i, p in enumerate(x for x in prompts for _ in range(3))
        }
        for sample in samples:
            chain_txt = out / category / "chains" / (sample.path.stem + ".txt")
            record = json.loads(chain_txt.with_suffix(".json").read_text())
            assert record["chain"] == chain_txt.read_bytes().decode("utf-8")
            assert record["prompt"] == sample.prompt and record["index"] == sample.question_id
            assert record["sampling"]["cfg_weight"] == 3.0 and isinstance(record["truncated"], bool)
            seed_item = record["batch_items"][0]
            assert record["seed"] == 42 + seed_item["prompt_index"] * 3 + seed_item["sample_index"]
            assert record["batch_items"][record["row"]] == {
                "category": category,
                "prompt_index": record["prompt_index"],
                "sample_index": record["sample_index"],
                "prompt": sample.prompt,
            }
        # every number written is the official rule applied to the saved image
        metric = compbench.CATEGORY_METRIC[category]
        folder = out / category / "judged-by-world-detector"
        sub = {
            "blip": "annotation_blip",
            "spatial": "labels/annotation_obj_detection_2d",
            "numeracy": "annotation_num",
            "3_in_1": "annotation_3_in_1",
        }[metric]
        written = json.loads((folder / sub / "vqa_result.json").read_text())
        assert [r["question_id"] for r in written] == [s.question_id for s in samples]
        for row, sample in zip(written, samples, strict=True):
            kind = (
                compbench.complex_kind(sample.prompt, spatial_list, action_list)
                if category == "complex"
                else None
            )
            expected = compbench.score_image(
                scorer, category, _open(sample.path), sample.prompt, kind
            )
            assert row["answer"] == expected.answer
        assert summary["scores"][category] == pytest.approx(
            compbench.category_mean([r["answer"] for r in written])
        )
        assert summary["images"][category] == 6
    complex_dir = out / "complex" / "judged-by-world-detector"
    for sub in ("annotation_blip", "annotation_obj_detection", "annotation_clip"):
        assert len(json.loads((complex_dir / sub / "vqa_result.json").read_text())) == 6
    spatial_dir = (
        out / "spatial" / "judged-by-world-detector" / "labels/annotation_obj_detection_2d"
    )
    assert len(json.loads((spatial_dir / "mapping.json").read_text())) == 6

    # Resume: a second run generates nothing and leaves every image as it was.
    before = {p: p.read_bytes() for p in out.glob("*/samples/*.png")}
    assert run_cli(*argv) == 0
    report = json.loads((out / "generation.process0.json").read_text())
    assert report["generated"] == 0 and report["skipped"] == 4 * 6
    assert {p: p.read_bytes() for p in out.glob("*/samples/*.png")} == before
    # Deleting one image regenerates exactly that one.
    victim = sorted(before)[5]
    victim.unlink()
    assert run_cli(*argv) == 0
    report = json.loads((out / "generation.process0.json").read_text())
    assert report["generated"] == 1 and victim.is_file()
    # Other settings into the same folder are refused.
    with pytest.raises(UserError, match="sampling differ"):
        run_cli(*argv, "--cfg-weight", "4")


# --------------------------------------------------------------------------- GenEval


def test_geneval_generates_official_layout_and_scores(tmp_path, model_dir, world_prompts):
    metadata_path = write_world_geneval_metadata(tmp_path / "meta.jsonl", world_prompts)
    out = tmp_path / "ge"
    argv = ["eval", "geneval", "--model", str(model_dir), "--out", str(out)]
    argv += ["--metadata", str(metadata_path), "--limit", "5", "--scorer", "world"]
    argv += ["--prompts-per-batch", "2", *FAST]
    assert run_cli(*argv) == 0
    metadata = [json.loads(line) for line in metadata_path.read_text().splitlines()][:5]
    folder = read_geneval_folder(out)
    assert [p.prompt_index for p in folder] == list(range(5))
    scorer = WorldEvidenceScorer()
    expected_rows = []
    for prompt, meta in zip(folder, metadata, strict=True):
        assert prompt.metadata == meta  # metadata.jsonl holds the prompt's line as one object
        assert [s.name for s in prompt.samples] == [f"{k:04d}.png" for k in range(4)]
        assert (out / f"{prompt.prompt_index:05d}" / "grid.png").is_file()
        for k, sample in enumerate(prompt.samples):
            record = json.loads(
                (out / f"{prompt.prompt_index:05d}" / "chains" / f"{k:04d}.json").read_text()
            )
            assert record["prompt"] == meta["prompt"] and record["image"] == f"samples/{k:04d}.png"
            expected_rows.append(geneval.evaluate_image(scorer, _open(sample), meta, str(sample)))
    rows = read_jsonl(out / "judged-by-world-detector" / "results.jsonl")
    assert rows == expected_rows
    summary = json.loads((out / "summary.judged-by-world-detector.json").read_text())
    assert summary["judged_by"] == "world-detector" and summary["images"] == 20
    assert summary["overall"] == pytest.approx(geneval.summarize(rows)["overall"])


# --------------------------------------------------------------------------- plan-aware generation


def _plan_records(out: Path, chains: str = "*/chains/*.json") -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(out.glob(chains))]


def _check_plan_records(records: list[dict], candidates: int) -> None:
    """Every image names the plan settings and was drawn from the plan the world judge scores
    best of its candidates (repaired or as sampled)."""
    from gotr1.chain import parse_chain
    from gotr1.eval.plans import plan_scores
    from gotr1.rewards import WorldJudge

    assert records
    for record in records:
        assert record["plans"] == {"candidates": candidates, "repair": True}
        assert record["plan_judge"] == "world"
        plan = record["plan"]
        assert len(plan["candidate_scores"]) == candidates
        assert plan["plan_score"] == max(plan["candidate_scores"])
        assert plan["candidate_index"] == plan["candidate_scores"].index(plan["plan_score"])
        again = plan_scores(WorldJudge(), [record["prompt"]], [parse_chain(plan["sampled_chain"])])
        assert again == [plan["plan_score"]]  # the recorded score is the judge's own
        assert record["chain"] == plan["sampled_chain"] or plan["repairs"]


def test_compbench_draws_from_the_best_repaired_plan_and_records_it(
    tmp_path, model_dir, world_prompts
):
    prompts_dir = tmp_path / "prompts"
    write_world_compbench_prompts(prompts_dir, world_prompts)
    out = tmp_path / "cb"
    argv = ["eval", "compbench", "--model", str(model_dir), "--out", str(out)]
    argv += ["--prompts-dir", str(prompts_dir), "--categories", "spatial", "color"]
    argv += ["--images-per-prompt", "2", "--limit", "2", "--scorer", "world", *FAST]
    plan = ["--plan-candidates", "2", "--repair-plans"]
    assert run_cli(*argv, *plan) == 0
    records = _plan_records(out)
    assert len(records) == 8
    _check_plan_records(records, 2)
    manifest = json.loads((out / "generation.json").read_text())
    assert manifest["plans"] == {"candidates": 2, "repair": True}
    assert manifest["plan_judge"] == "world"
    # Resumes with the same settings; refuses to mix images drawn without plan selection.
    assert run_cli(*argv, *plan) == 0
    assert json.loads((out / "generation.process0.json").read_text())["generated"] == 0
    with pytest.raises(UserError, match="plans, plan_judge differ"):
        run_cli(*argv)
    # A record alone re-runs its batch through the plan path.
    record = records[5]
    policy = load_policy(model_dir, device="cpu")
    from gotr1.rewards import WorldJudge

    rollouts = resample_batch(policy, record, plan_judge=WorldJudge())
    assert rollouts.chain_texts[record["row"]] == record["chain"]
    image = out / record["category"] / "samples" / record["image"]
    np.testing.assert_array_equal(
        np.asarray(rollouts.images[record["row"]].convert("RGB")), np.asarray(_open(image))
    )

    # A noisy plan judge: the same seed repeats exactly, and the choice moves for some image.
    noisy = [*plan, "--plan-judge-noise", "5"]
    for folder in ("noisy", "noisy-again"):
        argv[argv.index("--out") + 1] = str(tmp_path / folder)
        assert run_cli(*argv, *noisy) == 0
    first, second = _plan_records(tmp_path / "noisy"), _plan_records(tmp_path / "noisy-again")
    assert first == second
    for noised, plain in zip(first, records, strict=True):
        assert noised["plans"]["judge_noise"] == 5.0
        assert noised["plan"]["candidate_scores"] == plain["plan"]["candidate_scores"]
        scores = noised["plan"]["noised_scores"]
        assert noised["plan"]["candidate_index"] == scores.index(max(scores))
    chosen = [r["plan"]["candidate_index"] for r in first]
    assert chosen != [r["plan"]["candidate_index"] for r in records]
    assert json.loads((tmp_path / "noisy" / "generation.json").read_text())["plans"] == {
        "candidates": 2,
        "repair": True,
        "judge_noise": 5.0,
    }


def test_geneval_draws_from_the_best_repaired_plan_and_records_it(
    tmp_path, model_dir, world_prompts
):
    metadata_path = write_world_geneval_metadata(tmp_path / "meta.jsonl", world_prompts)
    out = tmp_path / "ge"
    argv = ["eval", "geneval", "--model", str(model_dir), "--out", str(out)]
    argv += ["--metadata", str(metadata_path), "--limit", "3", "--scorer", "owlv2"]
    argv += ["--images-per-prompt", "2", "--skip-scoring", "--plan-judge", "world", *FAST]
    assert run_cli(*argv, "--plan-candidates", "3", "--repair-plans") == 0
    records = _plan_records(out)
    assert len(records) == 6 and {r["image"] for r in records} == {
        "samples/0000.png",
        "samples/0001.png",
    }
    _check_plan_records(records, 3)
    assert json.loads((out / "generation.json").read_text())["plan_judge"] == "world"


# --------------------------------------------------------------------------- right answers


def test_rendered_ground_truth_scores_right_through_both_protocols(tmp_path):
    """Scorer + rules on the true scenes of world prompts: all GenEval images correct, and the
    attribute, counting and CLIP-stand-in categories of T2I-CompBench at 1; blank images fail."""
    prompts = benchmark_prompts("test", 24, seed=5)
    rng = random.Random(0)
    truth = {text: render_scene(sample_scene(spec, rng), 64) for text, spec in prompts}
    blank = Image.new("RGB", (64, 64), (240, 240, 240))
    world_text = {}  # T2I-CompBench phrasing -> world prompt
    for text, spec in prompts:
        ((_, [phrased]),) = world_compbench_prompts([(text, spec)]).items()
        world_text[phrased] = text
    by_category = world_compbench_prompts(prompts)

    for name in ("truth", "blank"):
        out = tmp_path / name

        def picture(world_prompt: str, name: str = name) -> Image.Image:
            return truth[world_prompt] if name == "truth" else blank

        metadata = world_geneval_metadata(prompts)
        write_world_geneval_metadata(out / "meta.jsonl", prompts)
        for item in geneval_items(out / "ge", metadata, images_per_prompt=1):
            write_item(item, picture(item.metadata["prompt"]), "", {"seed": item.seed})
        argv = ["eval", "geneval", "--skip-generation", "--out", str(out / "ge")]
        assert run_cli(*argv, "--metadata", str(out / "meta.jsonl"), "--scorer", "world") == 0
        rows = read_jsonl(out / "ge" / "judged-by-world-detector" / "results.jsonl")
        assert len(rows) == 24
        assert [r["correct"] for r in rows] == [name == "truth"] * 24

        write_world_compbench_prompts(out / "prompts", prompts)
        for category, texts in by_category.items():
            for item in compbench_items(out / "cb", category, texts, images_per_prompt=1):
                write_item(item, picture(world_text[item.prompt]), "", {"seed": item.seed})
        argv = ["eval", "compbench", "--skip-generation", "--out", str(out / "cb"), "--scorer"]
        argv += ["world", "--prompts-dir", str(out / "prompts"), "--categories", *by_category]
        assert run_cli(*argv) == 0
        scores = json.loads((out / "cb" / "summary.judged-by-world-detector.json").read_text())
        for category in ("color", "numeracy", "non_spatial"):
            assert scores["scores"][category] == (1.0 if name == "truth" else 0.0), category
        if name == "truth":
            assert scores["scores"]["spatial"] > 0.5
        else:
            assert scores["scores"]["spatial"] == 0.0


# --------------------------------------------------------------------------- sharding


def test_two_processes_write_every_image_exactly_once(tmp_path, model_dir):
    policy = load_policy(model_dir, device="cpu")
    sampling = SamplingConfig(max_chain_tokens=6, cfg_weight=2.0)
    prompts = ["a red circle", "a blue square", "two green triangles", "a circle", "a square"]
    items = compbench_items(tmp_path, "color", prompts, images_per_prompt=2)
    reports = [
        generate_items(
            policy, items, sampling, prompts_per_batch=2, process_index=rank, num_processes=2
        )
        for rank in (0, 1)
    ]
    assert [r.generated for r in reports] == [6, 4]  # prompts 0, 2, 4 and 1, 3
    writers = {}
    for item in items:
        assert item.image_path.is_file()
        record = json.loads(item.chain_path.with_suffix(".json").read_text())
        writers[item.index] = record["process_index"]
        assert record["process_index"] == item.prompt_index % 2
    assert sorted(writers) == list(range(10))
    # Resumed, either process finds nothing left to do.
    again = [generate_items(policy, items, sampling, 2, rank, 2) for rank in (0, 1)]
    assert [r.generated for r in again] == [0, 0] and [r.skipped for r in again] == [6, 4]


def test_batches_group_prompts_and_the_recorded_seed_reproduces_a_batch(tmp_path, model_dir):
    policy = load_policy(model_dir, device="cpu")
    sampling = SamplingConfig(max_chain_tokens=6, cfg_weight=2.0)
    prompts = ["a red circle", "a blue square", "a yellow triangle"]
    items = compbench_items(tmp_path / "a", "color", prompts, images_per_prompt=2, base_seed=7)
    items[1].image_path.parent.mkdir(parents=True)
    items[1].image_path.write_bytes(b"exists")  # prompt 0 has one image left, the others two
    batches = plan_batches(prompt_groups(items), prompts_per_batch=8)
    assert [[len(g) for g in b] for b in batches] == [[1], [2, 2]]
    items[1].image_path.unlink()
    report = generate_items(policy, items, sampling, prompts_per_batch=3)
    assert report.batches == 1 and report.generated == 6
    record = json.loads(items[4].chain_path.with_suffix(".json").read_text())
    assert record["seed"] == 7 and record["row"] == 4
    assert [[r["prompt_index"], r["sample_index"]] for r in record["batch_items"]] == [
        [p, k] for p in range(3) for k in range(2)
    ]
    generator = torch.Generator().manual_seed(record["seed"])
    rollouts = policy.rollout(prompts, 2, sampling, generator)
    assert rollouts.chain_texts[4] == items[4].chain_path.read_bytes().decode("utf-8")
    saved = np.asarray(_open(items[4].image_path))
    np.testing.assert_array_equal(np.asarray(rollouts.images[4].convert("RGB")), saved)


def test_a_record_alone_rebuilds_a_batch_that_spans_categories(tmp_path, model_dir):
    """Two categories share prompt indices 0 and 1 (and seeds): [prompt_index, sample_index]
    alone is ambiguous, the recorded category and prompt text are not."""
    policy = load_policy(model_dir, device="cpu")
    sampling = SamplingConfig(max_chain_tokens=6, cfg_weight=2.0)
    color = compbench_items(tmp_path, "color", ["a red circle", "a blue square"], 2, base_seed=5)
    shape = compbench_items(tmp_path, "shape", ["a yellow triangle", "a green circle"], 2, 5)
    items = color + shape
    report = generate_items(policy, items, sampling, prompts_per_batch=4)
    assert report.batches == 1 and report.generated == 8
    target = shape[3]  # "a green circle", row 7 of the batch
    record = json.loads(target.chain_path.with_suffix(".json").read_text())
    assert record["row"] == 7
    keys = [(r["category"], r["prompt_index"], r["sample_index"]) for r in record["batch_items"]]
    assert len(set(keys)) == 8  # unambiguous across categories
    assert [(k[1], k[2]) for k in keys] == [(p, k) for p in (0, 1, 0, 1) for k in (0, 1)]
    assert record["batch_items"][7] == {
        "category": "shape",
        "prompt_index": 1,
        "sample_index": 1,
        "prompt": "a green circle",
    }
    spec = rebuild_batch(record)
    assert spec.prompts == ["a red circle", "a blue square", "a yellow triangle", "a green circle"]
    assert (spec.num_generations, spec.seed) == (2, 5)
    assert SamplingConfig(**spec.sampling) == sampling
    # Re-sampled from nothing but the record (in a fresh dict, as read from disk).
    rollouts = resample_batch(policy, json.loads(json.dumps(record)))
    assert rollouts.chain_texts[7] == target.chain_path.read_bytes().decode("utf-8")
    np.testing.assert_array_equal(
        np.asarray(rollouts.images[7].convert("RGB")), np.asarray(_open(target.image_path))
    )
    for broken in (
        {**record, "batch_items": [[0, 0], [0, 1]]},  # the old, ambiguous form
        {**record, "batch_items": record["batch_items"][:3]},  # unequal rows per prompt
        # prompt (color, 0) again after (color, 1): rows of a prompt are contiguous
        {**record, "batch_items": record["batch_items"][:4] + record["batch_items"][:2]},
        {k: v for k, v in record.items() if k != "seed"},
    ):
        with pytest.raises(ValueError, match="record"):
            rebuild_batch(broken)


# --------------------------------------------------------------------------- errors


def test_missing_and_malformed_model_folders_are_user_errors(tmp_path):
    base = ["eval", "compbench", "--out", str(tmp_path / "o"), "--categories", "color"]
    base += ["--limit", "1", "--images-per-prompt", "1", "--scorer", "world", *FAST]
    with pytest.raises(UserError, match="nope"):
        run_cli(*base, "--model", str(tmp_path / "nope"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="config.json"):
        run_cli(*base, "--model", str(empty))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="broken"):
        run_cli(*base, "--model", str(broken))
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text(json.dumps({"model_type": "janus"}))
    with pytest.raises(UserError, match="no_weights"):
        run_cli("eval", "geneval", "--model", str(no_weights), "--out", str(tmp_path / "g"), *FAST)
    with pytest.raises(UserError, match="--model is required"):
        run_cli("eval", "geneval", "--out", str(tmp_path / "g"))


def test_unknown_categories_and_bad_inputs_are_user_errors(tmp_path, model_dir):
    cb = ["eval", "compbench", "--model", str(model_dir), "--out", str(tmp_path / "o")]
    with pytest.raises(UserError, match="colour.*choose from color"):
        run_cli(*cb, "--categories", "colour")
    with pytest.raises(UserError, match="3d_spatial"):
        run_cli(*cb, "--categories", "3d_spatial")  # shipped, but no rule implemented
    with pytest.raises(UserError, match="--limit"):
        run_cli(*cb, "--limit", "0")
    with pytest.raises(UserError, match="--images-per-prompt"):
        run_cli(*cb, "--images-per-prompt", "0")
    with pytest.raises(UserError, match="unknown --scorer blip"):
        run_cli(*cb, "--scorer", "blip")
    with pytest.raises(UserError, match="spatial_val.txt is missing"):
        run_cli(*cb, "--prompts-dir", str(tmp_path), "--categories", "spatial")
    (tmp_path / "color_val.txt").write_text("a red_circle\n")
    with pytest.raises(UserError, match="red_circle"):
        run_cli(*cb, "--prompts-dir", str(tmp_path), "--categories", "color")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="not a folder"):
        run_cli("eval", "geneval", "--model", str(model_dir), "--out", str(tmp_path / "file"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"tag": "counting", "prompt": "x", "include": [{"class": "dog"}]}\n')
    with pytest.raises(UserError, match=r"bad.jsonl:1.*count"):
        run_cli(
            "eval",
            "geneval",
            "--model",
            str(model_dir),
            "--out",
            str(tmp_path / "g"),
            "--metadata",
            str(bad),
        )
    with pytest.raises(UserError, match="--cfg-weight|cfg_weight"):
        run_cli(*cb, "--categories", "color", "--cfg-weight", "-1", "--scorer", "world")


@pytest.mark.slow
def test_two_process_launch_shards_generation_and_scores_once(tmp_path, model_dir):
    """A real 2-process launch (torchrun, which `accelerate launch` uses for multi-process runs):
    each process writes its own prompts' images, the main process scores them once."""
    import os
    import subprocess
    import sys

    prompts_dir = tmp_path / "prompts"
    write_world_compbench_prompts(prompts_dir, benchmark_prompts("test", 12, seed=3))
    out = tmp_path / "cb"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command += ["-m", "gotr1", "eval", "compbench", "--model", str(model_dir), "--out", str(out)]
    command += ["--prompts-dir", str(prompts_dir), "--categories", "color", "numeracy"]
    command += ["--images-per-prompt", "2", "--limit", "2", "--scorer", "world", *FAST]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    reports = [json.loads((out / f"generation.process{r}.json").read_text()) for r in (0, 1)]
    assert [r["num_processes"] for r in reports] == [2, 2]
    groups = [(c, p) for c in ("color", "numeracy") for p in range(2)]
    assert sum(r["generated"] for r in reports) == 2 * len(groups)
    for index, (category, prompt_index) in enumerate(groups):
        for k in range(2):
            name = next((out / category / "chains").glob(f"*_{prompt_index * 2 + k:06d}.json"))
            assert json.loads(name.read_text())["process_index"] == index % 2
    summary = json.loads((out / "summary.judged-by-world-detector.json").read_text())
    assert summary["images"] == {"color": 4, "numeracy": 4}
    assert done.stdout.count("judged by world-detector") == 1  # scored once, on process 0

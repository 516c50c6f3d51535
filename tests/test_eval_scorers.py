"""Evidence scorers: the world detector adapter, batched rounds, and the Qwen2.5-VL scorer (a tiny
random local checkpoint, and a real chat-completions server on loopback)."""

from __future__ import annotations

import json
import math
import random
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler

import pytest
import torch
from PIL import Image, ImageDraw

from gotr1.eval import compbench, geneval
from gotr1.eval.evidence import grid_to_pixels
from gotr1.eval.scorers import (
    UNKNOWN_COLOUR,
    LogprobOpenAIJudge,
    QwenEvidenceScorer,
    WorldEvidenceScorer,
    _qwen_inputs,
    parse_colour,
    parse_yes_no,
    run_batched,
    yes_no_question,
)
from gotr1.eval.world_bench import world_geneval_metadata
from gotr1.rewards import OpenAIJudgeConfig, QwenLocalConfig, QwenLocalJudge, Reply
from gotr1.rewards import qwen_prompts as qp
from gotr1.rewards.vlm import ChatRequest
from gotr1.world import (
    BACKGROUND,
    Scene,
    SceneObject,
    benchmark_prompts,
    render_scene,
    sample_scene,
)
from test_rewards_http import QuietServer


def _scene(*objects) -> Image.Image:
    return render_scene(Scene(tuple(SceneObject(*o) for o in objects)), 64)


RED_CIRCLE = ("circle", "red", (100, 100, 400, 400))
BLUE_SQUARE = ("square", "blue", (550, 500, 900, 850))
GREEN_CIRCLE = ("circle", "green", (600, 80, 900, 380))


# --------------------------------------------------------------------------- world scorer


def test_world_detect_returns_pixel_boxes_for_asked_names():
    image = _scene(RED_CIRCLE, BLUE_SQUARE, GREEN_CIRCLE)
    scorer = WorldEvidenceScorer()
    found = scorer.detect(image, ["circle", "blue square", "bench", "circle"])
    labels = sorted(d.label for d in found)
    assert labels == ["blue square", "circle", "circle"]
    for det in found:
        assert det.score > 0.9
    square = next(d for d in found if d.label == "blue square")
    assert square.box == pytest.approx(grid_to_pixels(BLUE_SQUARE[2], 64, 64), abs=1.0)  # 1 px
    assert [d.label for d in scorer.detect(image, ["red circle"])] == ["red circle"]
    assert scorer.detect(image, ["purple circle", "person"]) == []
    assert scorer.stats["unknown_names"] == 2  # bench, person


def test_world_yes_prob_and_colour():
    image = _scene(RED_CIRCLE, BLUE_SQUARE)
    scorer = WorldEvidenceScorer()
    assert scorer.yes_prob(image, "a red circle?") == 1.0
    assert scorer.yes_prob(image, "a green circle?") == 0.5  # circle present, colour wrong
    assert scorer.yes_prob(image, "a triangle?") == 0.0
    assert scorer.yes_prob(image, "a red circle on the left of a blue square?") == 1.0
    assert scorer.yes_prob(image, "a red circle on the top of a blue square?") == 1.0  # above
    # objects and colours right (4 requirements), relation wrong (1)
    assert scorer.yes_prob(image, "a red circle on the bottom of a blue square?") == 0.8
    assert scorer.yes_prob(image, "two red circles?") == pytest.approx(2 / 3 * 0.5 + 1 / 3 * 0)
    assert scorer.yes_prob(image, "a green bench?") == 0.0
    assert scorer.stats["unknown_questions"] == 1
    # outside the grammar but naming world objects: the objects are still checked
    assert scorer.yes_prob(image, "a big red circle near a blue square?") == 1.0
    assert scorer.stats["partly_understood_questions"] == 1
    box = grid_to_pixels(BLUE_SQUARE[2], 64, 64)
    assert scorer.colour(image, box, geneval.COLORS) == "blue"
    # A colour the world has no word for: no detection, so the nearest named colour of the pixels.
    pink = Image.new("RGB", (64, 64), BACKGROUND)
    ImageDraw.Draw(pink).rectangle((10, 10, 30, 30), fill=(250, 110, 185))
    assert scorer.detections(pink) == []
    assert scorer.colour(pink, (10, 10, 31, 31), geneval.COLORS) == "pink"
    assert scorer.colour(pink, (40, 40, 60, 60), geneval.COLORS) == UNKNOWN_COLOUR  # background


class CountingWorldScorer(WorldEvidenceScorer):
    """The world scorer with batch entry points that count their calls."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: dict[str, int] = {}
        self.asked = 0

    def _batch(self, kind, method, *columns):
        self.calls[kind] = self.calls.get(kind, 0) + 1
        self.asked += len(columns[0])
        return [method(*row) for row in zip(*columns, strict=True)]

    def detect_batch(self, images, names):
        return self._batch("detect", self.detect, images, names)

    def yes_prob_batch(self, images, questions):
        return self._batch("yes", self.yes_prob, images, questions)

    def colour_batch(self, images, boxes, candidates):
        return self._batch("colour", self.colour, images, boxes, candidates)


def test_run_batched_equals_direct_scoring_in_few_batches():
    prompts = benchmark_prompts("test", 30, seed=4)
    rng = random.Random(3)
    images = [render_scene(sample_scene(spec, rng), 64) for _, spec in prompts]
    images += [_scene(RED_CIRCLE, GREEN_CIRCLE)] * 3
    metadata = world_geneval_metadata(prompts) + world_geneval_metadata(["a green circle"]) * 3
    direct = [
        geneval.evaluate_image(WorldEvidenceScorer(), image, meta)
        for image, meta in zip(images, metadata, strict=True)
    ]
    counting = CountingWorldScorer()
    jobs = [
        (lambda s, i=image, m=meta: geneval.evaluate_image(s, i, m))
        for image, meta in zip(images, metadata, strict=True)
    ]
    assert run_batched(counting, jobs) == direct
    # one detect round, then one colour round for the found objects
    assert counting.calls == {"detect": 1, "colour": 1}
    assert counting.asked > 40
    texts = ["a red circle and a blue square", "a red circle on the left of a blue square"]
    image = _scene(RED_CIRCLE, BLUE_SQUARE)
    jobs = [
        (lambda s, t=t, c=c: compbench.score_image(s, c, image, t, "spatialaction"))
        for t in texts
        for c in ("color", "spatial", "numeracy", "non_spatial", "complex")
    ]
    direct = [job(WorldEvidenceScorer()) for job in jobs]
    counting = CountingWorldScorer()
    assert run_batched(counting, jobs) == direct
    assert counting.calls == {"detect": 1, "yes": 1}


def test_run_batched_reraises_real_errors():
    def broken(scorer):
        raise KeyError("not from a placeholder")

    with pytest.raises(KeyError):
        run_batched(WorldEvidenceScorer(), [broken])


# --------------------------------------------------------------------------- answer parsing


def test_answer_parsing():
    assert parse_yes_no("Yes.") == 1.0 and parse_yes_no(" no, it is not") == 0.0
    assert parse_yes_no("**Yes**") == 1.0
    assert parse_yes_no("Yesterday") is None and parse_yes_no("maybe") is None
    assert parse_yes_no(None) is None
    assert parse_colour("The object is Red.", geneval.COLORS) == "red"
    assert parse_colour("blue-ish, not red", geneval.COLORS) == "blue"
    assert parse_colour("reddish", geneval.COLORS) is None
    assert (
        yes_no_question("a green bench?")
        == 'Does this image show "a green bench"? Answer with yes or no.'
    )


# --------------------------------------------------------------------------- local Qwen2.5-VL

SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]


@pytest.fixture(scope="module")
def qwen_folder(tmp_path_factory):
    """A tiny random Qwen2.5-VL checkpoint whose tokenizer has Yes/No/yes/no as single tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        PreTrainedTokenizerFast,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
    )
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    torch.set_num_threads(1)
    corpus = [
        yes_no_question("a red circle?"),
        "Yes yes No no red blue green",
        qp.ground_question("x"),
    ]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    backend.train_from_iterator(corpus * 20, trainer)
    backend.add_tokens(["Yes", "yes", "No", "no"])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIALS}
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
    folder = tmp_path_factory.mktemp("tiny-qwen")
    Qwen2_5_VLForConditionalGeneration(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    Qwen2VLImageProcessorPil(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 32).save_pretrained(
        folder
    )
    return folder


@pytest.fixture(scope="module")
def local_judge(qwen_folder):
    config = QwenLocalConfig(
        model=str(qwen_folder),
        device="cpu",
        local_files_only=True,
        batch_size=4,
        image_size=112,
        ground_max_new_tokens=8,
    )
    return QwenLocalJudge(config)


def _reference_yes_ratio(judge, ids, image, question):
    """P(yes)/(P(yes)+P(no)) of one unpadded request by a plain forward pass."""
    request = ChatRequest(yes_no_question(question), judge.prepare_image(image), 1)
    with torch.inference_mode():
        logits = judge.model(**_qwen_inputs(judge, [request])).logits[0, -1].float()
    probs = torch.softmax(logits, -1)
    p_yes, p_no = (float(probs[group].sum()) for group in ids)
    return p_yes / (p_yes + p_no)


def test_local_yes_prob_reads_first_token_logits_batched_and_padded(local_judge):
    scorer = QwenEvidenceScorer(local_judge)
    assert scorer.name == f"{local_judge.config.model.rstrip('/').split('/')[-1]}-local"
    tokens = local_judge.tokenizer.convert_tokens_to_ids
    assert set(scorer._yes_ids) >= {tokens("Yes"), tokens("yes")}
    assert set(scorer._no_ids) >= {tokens("No"), tokens("no")}
    images = [
        _scene(RED_CIRCLE),
        _scene(BLUE_SQUARE, GREEN_CIRCLE),
        Image.new("RGB", (80, 48), (10, 200, 30)),
        _scene(GREEN_CIRCLE),
        _scene(RED_CIRCLE, BLUE_SQUARE),
    ]
    questions = [
        "a red circle?",
        "a blue square on the left of a green circle?",
        "green?",
        "a circle?",
        "two red circles and a square next to a blue square?",
    ]
    batched = scorer.yes_prob_batch(images, questions)  # 5 requests: batches of 4 and 1
    ids = (scorer._yes_ids, scorer._no_ids)
    for value, image, question in zip(batched, images, questions, strict=True):
        assert 0.0 < value < 1.0
        reference = _reference_yes_ratio(local_judge, ids, image, question)
        assert value == pytest.approx(reference, abs=1e-4)
    assert scorer.stats["yes_no_questions"] == 5 and scorer.stats["yes_no_failures"] == 0
    # The answer follows the first token's logits: bias the head towards "Yes", then "No".
    model = local_judge.model
    old = model.lm_head
    head = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(old.weight)
        head.bias.zero_()
    try:
        model.lm_head = head
        with torch.no_grad():
            head.bias[tokens("Yes")] = 40.0
        assert min(scorer.yes_prob_batch(images, questions)) > 0.99
        with torch.no_grad():
            head.bias.zero_()
            head.bias[tokens("no")] = 40.0
        assert max(scorer.yes_prob_batch(images, questions)) < 0.01
    finally:
        model.lm_head = old


class InjectedJudge(QwenLocalJudge):
    """The real local judge with answer text replaced after generation (grounding, colour)."""

    def __init__(self, base: QwenLocalJudge, answer: Callable[[ChatRequest], str]) -> None:
        super().__init__(base.config, base.model, base.tokenizer, base.image_processor)
        self.answer = answer

    def _generate_batch(self, requests):
        replies = super()._generate_batch(requests)
        return [
            Reply(self.answer(r), rep.image_size) for r, rep in zip(requests, replies, strict=True)
        ]


def test_local_grounding_and_colour_from_answers(local_judge):
    image = _scene(RED_CIRCLE, BLUE_SQUARE)  # 64 px, judged at 112 px

    def answer(request):
        if "Locate the red circle" in request.text:
            w, h = request.image.size
            return json.dumps([{"bbox_2d": [0.1 * w, 0.1 * h, 0.4 * w, 0.4 * h], "label": "x"}])
        if "Locate" in request.text:
            return "I cannot tell."
        return "It is Blue."

    scorer = QwenEvidenceScorer(InjectedJudge(local_judge, answer), detection_score=0.8)
    found = scorer.detect(image, ["red circle", "dog"])
    assert [d.label for d in found] == ["red circle"]
    assert found[0].box == pytest.approx((6.4, 6.4, 25.6, 25.6), abs=0.1)
    assert found[0].score == 0.8
    assert scorer.stats["ground_failures"] == 1  # "dog": unusable answer after the retry
    assert scorer.colour(image, (35, 32, 58, 55), geneval.COLORS) == "blue"
    garbage = QwenEvidenceScorer(InjectedJudge(local_judge, lambda r: "%%%"))
    assert garbage.colour(image, (35, 32, 58, 55), geneval.COLORS) == UNKNOWN_COLOUR
    assert garbage.stats["colour_failures"] == 1
    # The rules run on this evidence: spatial 2D rule with both objects found.
    meta = {
        "tag": "single_object",
        "prompt": "a red circle",
        "include": [{"class": "red circle", "count": 1}],
    }
    assert geneval.evaluate_image(scorer, image, meta)["correct"] is True


def test_a_tokenizer_without_yes_no_tokens_is_refused(local_judge):
    class NoYes:
        def encode(self, word, add_special_tokens=False):
            return [1, 2]

    judge = InjectedJudge(local_judge, lambda r: "")
    judge.tokenizer = NoYes()
    with pytest.raises(ValueError, match="single-token spelling of yes and no"):
        QwenEvidenceScorer(judge)


# --------------------------------------------------------------------------- HTTP judge


class Server:
    """A chat-completions server on loopback; ``respond(body) -> (status, json-able)``."""

    def __init__(self, respond: Callable[[dict], tuple[int, object]]) -> None:
        self.respond = respond
        self.bodies: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.bodies.append(body)
                status, payload = outer.respond(body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = QuietServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _completion(content: str, top: list[tuple[str, float]] | None = None) -> dict:
    choice: dict = {"index": 0, "message": {"role": "assistant", "content": content}}
    if top is not None:
        choice["logprobs"] = {
            "content": [
                {
                    "token": top[0][0],
                    "logprob": top[0][1],
                    "top_logprobs": [{"token": t, "logprob": lp} for t, lp in top],
                }
            ]
        }
    return {"choices": [choice]}


def _text(body: dict) -> str:
    return next(p["text"] for p in body["messages"][0]["content"] if p["type"] == "text")


@pytest.fixture
def server():
    servers = []

    def start(respond):
        servers.append(Server(respond))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def _http_scorer(url: str) -> QwenEvidenceScorer:
    config = OpenAIJudgeConfig(
        base_url=url, model="qwen-test", api_key_env=None, max_retries=0, timeout=5.0
    )
    return QwenEvidenceScorer(LogprobOpenAIJudge(config))


def test_http_yes_prob_from_top_logprobs(server):
    def respond(body):
        assert body["logprobs"] is True and body["top_logprobs"] == 20 and body["max_tokens"] == 1
        if "red" in _text(body):
            return 200, _completion(
                "Yes",
                [
                    ("Yes", math.log(0.6)),
                    (" yes", math.log(0.2)),
                    ("No", math.log(0.1)),
                    ("Maybe", math.log(0.05)),
                ],
            )
        return 200, _completion("No", [("No", math.log(0.7)), ("Yes", math.log(0.1))])

    s = server(respond)
    scorer = _http_scorer(s.url)
    image = _scene(RED_CIRCLE)
    values = scorer.yes_prob_batch([image, image], ["a red circle?", "a blue square?"])
    assert values == pytest.approx([0.8 / 0.9, 0.1 / 0.8])
    assert scorer.stats["yes_no_from_text"] == 0 and scorer.name == "qwen-test-http"
    scorer.judge.close()


def test_http_without_logprobs_falls_back_to_the_answer_and_counts(server):
    answers = {"a red circle": "Yes, there is.", "a blue square": "No.", "a dog": "I am not sure"}

    def respond(body):
        text = _text(body)
        return 200, _completion(next(a for q, a in answers.items() if f'"{q}"' in text))

    s = server(respond)
    scorer = _http_scorer(s.url)
    image = _scene(RED_CIRCLE)
    values = scorer.yes_prob_batch([image] * 3, ["a red circle?", "a blue square?", "a dog?"])
    assert values == [1.0, 0.0, 0.0]
    assert scorer.stats["yes_no_from_text"] == 2 and scorer.stats["yes_no_failures"] == 1
    scorer.judge.close()


def test_http_grounding_colour_and_failures(server):
    def respond(body):
        text = _text(body)
        if "Locate the blue square" in text:
            return 200, _completion('```json\n[{"bbox_2d": [0.55, 0.5, 0.9, 0.85]}]\n```')
        if "Locate" in text:
            return 500, {"error": "down"}
        return 200, _completion("purple")

    s = server(respond)
    config = OpenAIJudgeConfig(
        base_url=s.url, model="m", api_key_env=None, max_retries=0, box_format="unit"
    )
    scorer = QwenEvidenceScorer(LogprobOpenAIJudge(config))
    image = _scene(BLUE_SQUARE)
    found = scorer.detect(image, ["blue square", "cat"])
    assert [d.label for d in found] == ["blue square"]
    assert found[0].box == pytest.approx(grid_to_pixels((550, 500, 900, 850), 64, 64), abs=0.07)
    assert scorer.stats["ground_failures"] == 1
    assert scorer.colour(image, found[0].box, ["red", "purple"]) == "purple"
    assert "logprobs" not in s.bodies[-1]  # only yes/no questions ask for logprobs
    scorer.judge.close()


def test_spatial_rule_over_http_evidence(server):
    """The 2D-spatial rule end to end on grounded boxes (default confidence 0.95 each): the right
    relation scores 0.25 * 0.95 * 2 + 1 / 2, the wrong one falls under the 0.5 cutoff."""
    boxes = {"circle": [0.1, 0.1, 0.4, 0.4], "square": [0.55, 0.5, 0.9, 0.85]}

    def respond(body):
        text = _text(body)
        name = next(n for n in boxes if f"Locate the {n}" in text)
        return 200, _completion(json.dumps([{"bbox_2d": boxes[name]}]))

    s = server(respond)
    config = OpenAIJudgeConfig(base_url=s.url, model="m", api_key_env=None, box_format="unit")
    scorer = QwenEvidenceScorer(LogprobOpenAIJudge(config))
    image = _scene(RED_CIRCLE, BLUE_SQUARE)
    left = compbench.score_image(scorer, "spatial", image, "a circle on the left of a square")
    right = compbench.score_image(scorer, "spatial", image, "a circle on the right of a square")
    assert left.score == pytest.approx(0.975) and right.score == 0.0
    scorer.judge.close()

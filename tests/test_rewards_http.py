"""The OpenAI-compatible HTTP judge against a real chat-completions server on loopback, with faults."""

from __future__ import annotations

import base64
import io
import json
import logging
import socket
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from gotr1.chain import format_chain, parse_chain
from gotr1.rewards import DualStageReward, OpenAIJudge, OpenAIJudgeConfig, RewardConfig
from gotr1.rewards.qwen_prompts import qwen_resized_size

SECRET = "sk-test-d0-not-leak-7f3a9c"
KEY_ENV = "GOTR1_TEST_JUDGE_KEY"


class QuietServer(ThreadingHTTPServer):
    """A loopback server that stays silent when a client hangs up before its answer is written
    (a judge that timed out and retried): socketserver would print the traceback to stderr, where
    it lands in whichever test is capturing stderr at the time."""

    def handle_error(self, request, client_address):  # noqa: ANN001 - socketserver's signature
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


class ChatServer:
    """A chat-completions server; ``respond(text, image, attempt)`` says what to do per request.

    ``respond`` returns ("ok", answer_text) | ("status", code[, headers]) | ("sleep", seconds,
    answer_text) | ("malformed", body) | ("truncate", answer_text) | ("drip", seconds,
    answer_text, chunk): the whole response (status line, headers, body) ``chunk`` bytes at a
    time, ``seconds`` apart.
    ``attempt`` counts requests with the same text; ``times[text]`` lists when each arrived.
    """

    def __init__(self) -> None:
        self.respond: Callable[[str, Image.Image | None, int], tuple] = lambda t, i, a: ("ok", "5")
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        self.requests = 0
        self.attempts: dict[str, int] = {}
        self.times: dict[str, list[float]] = {}
        self.auth_headers: list[str | None] = []
        self.bodies: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):  # noqa: N802 - http.server's naming
                with server.lock:
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                    server.requests += 1
                try:
                    self._handle()
                finally:
                    with server.lock:
                        server.in_flight -= 1

            def _handle(self):
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
                assert self.path == "/v1/chat/completions"
                content = body["messages"][0]["content"]
                image = None
                if isinstance(content, str):
                    text = content
                else:
                    text = next(p["text"] for p in content if p["type"] == "text")
                    urls = [p["image_url"]["url"] for p in content if p["type"] == "image_url"]
                    if urls:
                        assert urls[0].startswith("data:image/png;base64,")
                        raw = base64.b64decode(urls[0].split(",", 1)[1])
                        image = Image.open(io.BytesIO(raw))
                        image.load()
                with server.lock:
                    attempt = server.attempts.get(text, 0)
                    server.attempts[text] = attempt + 1
                    server.times.setdefault(text, []).append(time.monotonic())
                    server.auth_headers.append(self.headers.get("Authorization"))
                    server.bodies.append(body)
                action = server.respond(text, image, attempt)
                kind = action[0]
                if kind == "sleep":
                    time.sleep(action[1])
                    kind, action = "ok", ("ok", action[2])
                if kind == "status":
                    extra = action[2] if len(action) > 2 else {}
                    self._send(action[1], b'{"error": {"message": "injected"}}', extra)
                elif kind == "malformed":
                    self._send(200, action[1].encode())
                elif kind == "drip":
                    self._drip(self._completion(action[2]), action[1], action[3])
                elif kind == "truncate":
                    payload = self._completion(action[1])
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload[: len(payload) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                else:
                    self._send(200, self._completion(action[1]))

            def _completion(self, answer: str) -> bytes:
                return json.dumps(
                    {
                        "id": "chatcmpl-test",
                        "object": "chat.completion",
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": answer},
                                "finish_reason": "stop",
                            }
                        ],
                    }
                ).encode()

            def _drip(self, payload: bytes, interval: float, chunk: int) -> None:
                raw = (
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(payload)}\r\n\r\n".encode()
                    + payload
                )
                try:
                    for start in range(0, len(raw), chunk):
                        self.wfile.write(raw[start : start + chunk])
                        self.wfile.flush()
                        time.sleep(interval)
                except OSError:  # the client gave up and closed the connection
                    self.close_connection = True

            def _send(self, status: int, payload: bytes, extra: dict | None = None) -> None:
                self.send_response(status)
                for name, value in (extra or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = QuietServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    chat = ChatServer()
    yield chat
    chat.close()


@pytest.fixture
def secret_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    return SECRET


def make_judge(base_url: str, **overrides) -> OpenAIJudge:
    settings = dict(
        base_url=base_url,
        api_key_env=KEY_ENV,
        max_concurrency=4,
        timeout=0.5,
        max_retries=3,
        backoff_base=0.01,
        backoff_max=0.04,
        image_size=None,
    )
    settings.update(overrides)
    return OpenAIJudge(OpenAIJudgeConfig(**settings))


def caption_of(text: str) -> str:
    """The quoted caption inside one of our scoring questions."""
    return text.split('"')[1]


def _chains(n: int) -> list:
    return [parse_chain(format_chain([("red circle", (100, 100, 400, 400))])) for _ in range(n)]


def test_valid_replies_score_right_and_the_key_is_sent(server, secret_key):
    answers = {
        "p0": '{"score": 7}',
        "p1": '```json\n{"score": 10}\n```',
        "p2": "Score: 3/10",
        "p3": "15",
    }
    server.respond = lambda text, image, attempt: ("ok", answers[caption_of(text)])
    with make_judge(server.base_url) as judge:
        result = judge.semantic(list(answers), _chains(4))
    np.testing.assert_allclose(result.scores, [0.7, 1.0, 0.3, 1.0])  # 15 clamped to 10
    assert not result.failed.any() and result.retried == 0
    assert server.auth_headers == [f"Bearer {SECRET}"] * 4
    assert all(body["temperature"] == 0.0 for body in server.bodies)


def test_layout_on_canvas_and_as_text(server):
    seen = []

    def respond(text, image, attempt):
        seen.append(
            (image is not None, "0-1000 grid, where x grows" in text, "(100,100),(400,400)" in text)
        )
        return ("ok", '{"score": 7}')

    server.respond = respond
    from gotr1.chain import render_layout

    chains = _chains(2)
    with make_judge(server.base_url) as judge:
        canvas = judge.layout(["a", "b"], chains, [render_layout(c, 224) for c in chains])
        text = judge.layout(["a", "b"], chains, None)
    np.testing.assert_allclose(canvas.scores, (7 - 1) / 9)  # R_spa's band is 1-10
    np.testing.assert_allclose(text.scores, (7 - 1) / 9)
    assert seen[:2] == [(True, False, False)] * 2
    assert seen[2:] == [(False, True, True)] * 2


@pytest.mark.parametrize("size", [(300, 200), (64, 64), (1000, 37)])
def test_grounding_boxes_convert_from_the_resized_image(server, size):
    true_box = (100, 200, 500, 800)  # 0-1000 grid of the original image

    def respond(text, image, attempt):
        assert image.size == qwen_resized_size(*size)  # sent already at the server's own size
        w, h = image.size
        pixels = [
            true_box[0] * w / 1000,
            true_box[1] * h / 1000,
            true_box[2] * w / 1000,
            true_box[3] * h / 1000,
        ]
        answer = json.dumps([{"bbox_2d": [round(v) for v in pixels], "label": "red circle"}])
        return ("ok", f"```json\n{answer}\n```")

    server.respond = respond
    with make_judge(server.base_url) as judge:
        result = judge.ground([Image.new("RGB", size, "white")], [["red circle"]])
    (box,) = result.candidates[0][0]
    assert (
        max(abs(a - b) for a, b in zip(box, true_box, strict=True)) <= 30
    )  # rounding of tiny images
    assert not result.failed.any()


def test_unusable_answer_is_retried_once_then_counted(server):
    def respond(text, image, attempt):
        if caption_of(text) == "fixable" and "could not be read" in text:
            return ("ok", '{"score": 9}')
        return ("ok", "The picture is lovely.")

    server.respond = respond
    with make_judge(server.base_url) as judge:
        result = judge.image(["fixable", "hopeless"], [Image.new("RGB", (56, 56))] * 2)
        stats = dict(judge.stats)
    assert result.scores[0] == pytest.approx(0.9)
    assert np.isnan(result.scores[1]) and result.failed.tolist() == [False, True]
    assert result.retried == 2
    assert stats["unusable_answers"] == 2 and stats["failures"] == 1
    assert server.requests == 4  # each asked twice, never more
    assert "unusable answer" in result.reasons[1]


def test_server_errors_are_retried_with_backoff(server):
    # p0: two 500s then fine; p1: 503 forever; p2: 400 (not retried); p3: 429 once.
    def respond(text, image, attempt):
        caption = caption_of(text)
        if caption == "p0":
            return ("status", 500) if attempt < 2 else ("ok", '{"score": 6}')
        if caption == "p1":
            return ("status", 503)
        if caption == "p2":
            return ("status", 400)
        return ("status", 429) if attempt < 1 else ("ok", '{"score": 4}')

    server.respond = respond
    with make_judge(server.base_url, max_retries=3) as judge:
        result = judge.semantic(["p0", "p1", "p2", "p3"], _chains(4))
        stats, errors = dict(judge.stats), dict(judge.error_counts)
    np.testing.assert_allclose(result.scores[[0, 3]], [0.6, 0.4])
    assert result.failed.tolist() == [False, True, True, False]
    # p0: 3 tries, p1: 1 + 3 retries, p2: 1, p3: 2 -> 10 requests; retries 2 + 3 + 0 + 1
    assert server.requests == 10
    assert (
        stats["http_requests"] == 10 and stats["http_retries"] == 6 and stats["http_failures"] == 2
    )
    assert errors == {"HTTP 500": 2, "HTTP 503": 4, "HTTP 400": 1, "HTTP 429": 1}
    assert "HTTP 503" in result.reasons[1] and "HTTP 400" in result.reasons[2]


def test_timeouts_slow_replies_malformed_and_truncated_bodies(server):
    def respond(text, image, attempt):
        caption = caption_of(text)
        if caption == "timeout-once":
            return ("sleep", 1.2, '{"score": 1}') if attempt == 0 else ("ok", '{"score": 8}')
        if caption == "slow":
            return ("sleep", 0.15, '{"score": 5}')  # slower than usual, inside the timeout
        if caption == "malformed-once":
            return ("malformed", "{'choices': [") if attempt == 0 else ("ok", '{"score": 2}')
        if caption == "truncated-once":
            return ("truncate", '{"score": 0}') if attempt == 0 else ("ok", '{"score": 3}')
        if caption == "always-timeout":
            return ("sleep", 1.2, '{"score": 9}')
        return ("malformed", "<html>bad gateway</html>")

    server.respond = respond
    captions = [
        "timeout-once",
        "slow",
        "malformed-once",
        "truncated-once",
        "always-timeout",
        "always-malformed",
    ]
    start = time.perf_counter()
    with make_judge(server.base_url, timeout=0.5, max_retries=1) as judge:
        result = judge.image(captions, [Image.new("RGB", (56, 56))] * len(captions))
        errors = dict(judge.error_counts)
        stats = dict(judge.stats)
    elapsed = time.perf_counter() - start
    np.testing.assert_allclose(result.scores[:4], [0.8, 0.5, 0.2, 0.3])
    assert result.failed.tolist() == [False, False, False, False, True, True]
    assert "timeout" in result.reasons[4] and "malformed" in result.reasons[5]
    assert errors["timeout"] == 3  # timeout-once once, always-timeout twice
    assert stats["http_failures"] == 2 and stats["no_answer"] == 2
    assert sum(v for k, v in errors.items() if "malformed" in k) == 3
    assert sum(v for k, v in errors.items() if k not in ("timeout",) and "malformed" not in k) == 1
    assert elapsed < 5.0


def test_a_drip_fed_answer_times_out_as_a_whole(server):
    # Every byte arrives 0.1 s after the last, well inside the 0.5 s timeout, but the whole
    # answer (~250 bytes) would take ~25 s: each attempt must end at its 0.5 s deadline.
    def respond(text, image, attempt):
        caption = caption_of(text)
        if caption == "drip-forever" or (caption == "drip-once" and attempt == 0):
            return ("drip", 0.1, '{"score": 9}', 1)
        if caption == "drip-fast":  # a chunked answer that does finish inside the deadline
            return ("drip", 0.02, '{"score": 6}', 40)
        return ("ok", '{"score": 4}')

    server.respond = respond
    start = time.perf_counter()
    with make_judge(server.base_url, timeout=0.5, max_retries=2) as judge:
        result = judge.semantic(["drip-forever", "drip-once", "drip-fast"], _chains(3))
        stats, errors = dict(judge.stats), dict(judge.error_counts)
    elapsed = time.perf_counter() - start
    assert result.failed.tolist() == [True, False, False]
    np.testing.assert_allclose(result.scores[1:], [0.4, 0.6])
    assert "timeout" in result.reasons[0]
    assert errors == {"timeout": 4}  # drip-forever 3 attempts, drip-once 1
    assert stats["http_failures"] == 1 and stats["http_retries"] == 3
    assert server.attempts[[t for t in server.attempts if "drip-forever" in t][0]] == 3
    # Three attempts of 0.5 s each (plus tiny backoffs); without the deadline it took minutes.
    assert 1.5 <= elapsed < 4.0, elapsed


def test_backoff_waits_double_up_to_the_max(server, monkeypatch):
    from gotr1.rewards import openai_http

    assert [openai_http.backoff_ceiling(a, 0.5, 8.0) for a in range(7)] == [
        0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0
    ]  # fmt: skip
    waits = []

    def sleep(seconds):
        waits.append(seconds)
        time.sleep(seconds)

    monkeypatch.setattr(openai_http, "_sleep", sleep)
    monkeypatch.setattr(openai_http, "_jitter", lambda low, high: high)  # always the ceiling
    server.respond = lambda text, image, attempt: ("status", 503)
    with make_judge(
        server.base_url, max_retries=5, backoff_base=0.05, backoff_max=0.2, max_concurrency=1
    ) as judge:
        result = judge.semantic(["p"], _chains(1))
    assert result.failed.all()
    assert waits == pytest.approx([0.05, 0.1, 0.2, 0.2, 0.2])
    # The server saw the same spacing (each gap is at least the wait before it).
    (times,) = server.times.values()
    gaps = np.diff(times)
    assert len(gaps) == 5 and all(g >= w * 0.95 for g, w in zip(gaps, waits, strict=True)), gaps
    # With the real jitter every wait lies in [0, ceiling] and the schedule still doubles.
    waits.clear()
    monkeypatch.setattr(openai_http, "_jitter", openai_http.random.uniform)
    with make_judge(
        server.base_url, max_retries=5, backoff_base=0.01, backoff_max=0.04, max_concurrency=1
    ) as judge:
        judge.semantic(["q"], _chains(1))
    ceilings = [0.01, 0.02, 0.04, 0.04, 0.04]
    assert len(waits) == 5 and all(0 <= w <= c for w, c in zip(waits, ceilings, strict=True))


def test_an_image_of_extreme_aspect_ratio_is_a_counted_failure(server):
    # Qwen2.5-VL's resize refuses an aspect ratio over 200; that sample fails, the rest go on.
    requests_with = []

    def respond(text, image, attempt):
        requests_with.append(image.size if image is not None else None)
        if text.startswith("Locate the "):
            return ("ok", '[{"bbox_2d": [0, 0, 28, 28], "label": "red circle"}]')
        return ("ok", '{"score": 7}')

    server.respond = respond
    images = [Image.new("RGB", (1000, 4)), Image.new("RGB", (56, 56)), np.zeros((4, 1000, 3))]
    with make_judge(server.base_url) as judge:
        scored = judge.image(["wide", "fine", "tall"], images)
        grounded = judge.ground(images, [["red circle"]] * 3)
        stats, sent = dict(judge.stats), list(requests_with)
        rewards = DualStageReward(judge).score(["wide", "fine", "tall"], _chains(3), images)
    assert scored.failed.tolist() == [True, False, True]
    assert scored.scores[1] == pytest.approx(0.7)
    assert "aspect ratio" in scored.reasons[0] and "cannot prepare the image" in scored.reasons[0]
    assert grounded.failed.tolist() == [True, False, True] and grounded.candidates[0] == [[]]
    assert "aspect ratio" in grounded.reasons[2]
    assert stats["bad_inputs"] == 4 and stats["failures"] == 4
    assert sent == [(56, 56), (56, 56)]  # the odd images were never sent
    assert rewards.failure_counts == {"sem": 0, "spa": 0, "ri": 2, "pi": 2}
    assert rewards.total[0] == 0.0 and rewards.total[1] > 0  # policy "zero"


def test_refused_connection_is_counted_not_raised():
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    with make_judge(f"http://127.0.0.1:{port}/v1", max_retries=2) as judge:
        result = judge.semantic(["a", "b", "c"], _chains(3))
        stats = dict(judge.stats)
    assert result.failed.all() and np.isnan(result.scores).all()
    assert (
        stats["http_requests"] == 9 and stats["http_retries"] == 6 and stats["http_failures"] == 3
    )
    assert all("ConnectionRefusedError" in r for r in result.reasons)


def test_requests_in_flight_never_exceed_the_bound(server):
    server.respond = lambda text, image, attempt: ("sleep", 0.03, '{"score": 5}')
    prompts = [f"p{i}" for i in range(24)]
    with make_judge(server.base_url, max_concurrency=3) as judge:
        result = judge.semantic(prompts, _chains(len(prompts)))
    assert not result.failed.any()
    assert server.max_in_flight == 3  # reached (so requests do overlap) and never exceeded
    server.max_in_flight = 0
    with make_judge(server.base_url, max_concurrency=1) as judge:
        judge.semantic(prompts[:6], _chains(6))
    assert server.max_in_flight == 1


def test_the_api_key_never_leaks(server, secret_key, caplog):
    def respond(text, image, attempt):
        return ("status", 401) if caption_of(text) == "denied" else ("malformed", "nope")

    server.respond = respond
    caplog.set_level(logging.DEBUG)
    with make_judge(server.base_url, max_retries=1) as judge:
        result = judge.semantic(["denied", "broken"], _chains(2))
        texts = [repr(judge), repr(judge.config), str(judge.stats), str(judge.error_counts)]
    assert result.failed.all()
    texts += [str(r) for r in result.reasons] + [caplog.text]
    assert "HTTP 401" in result.reasons[0]
    for text in texts:
        assert SECRET not in text
    assert server.auth_headers[0] == f"Bearer {SECRET}"  # it was sent, only to the server


def test_no_key_variable_sends_no_authorization(server, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    server.respond = lambda text, image, attempt: ("ok", '{"score": 5}')
    with make_judge(server.base_url) as judge:
        judge.semantic(["x"], _chains(1))
    assert server.auth_headers == [None]


def test_dual_stage_reward_over_http_on_world_samples(server):
    from gotr1.chain import box_iou, parse_chain
    from gotr1.world import sample_examples

    examples = sample_examples(6, seed=5)

    def respond(text, image, attempt):
        if text.startswith("Locate the "):  # every object "found" filling the left 3/4
            return ("ok", '[{"bbox_2d": [0, 0, 336, 448], "label": "it"}]')
        if "Plan:" in text:
            return ("ok", '{"score": 8}')
        if "layout planned" in text:
            assert image is not None and image.size == (448, 448)
            return ("ok", '{"score": 10}')
        return ("ok", '{"score": 6}')

    server.respond = respond
    with make_judge(server.base_url, image_size=448) as judge:
        prompts = [e.prompt for e in examples]
        images = [e.render() for e in examples]
        chains = [e.chain for e in examples]
        product = DualStageReward(judge).score(prompts, chains, images)
        planning = DualStageReward(judge, RewardConfig(components=("pi", "sem", "spa"))).score(
            prompts, chains, images
        )
    np.testing.assert_allclose(product.sem, 0.8)
    np.testing.assert_allclose(product.spa, 1.0)
    np.testing.assert_allclose(product.pi, 0.6)
    # R_RI: one candidate box a name, (0,0),(750,1000) on the grid of the 448 px image the judge
    # saw, given to the planned object of that name it overlaps most; the others of it get 0.
    expected_ri = []
    for chain in map(parse_chain, chains):
        best: dict[str, float] = {}
        for obj in chain.objects:
            iou = box_iou(obj.box, (0, 0, 750, 1000))
            best[obj.name] = max(best.get(obj.name, 0.0), iou)
        expected_ri.append(sum(best.values()) / len(chain.objects))
    assert min(expected_ri) > 0
    np.testing.assert_allclose(product.ri, expected_ri, atol=1e-6)
    np.testing.assert_allclose(product.total, 0.6 * (0.8 + 1.0) * np.array(expected_ri), atol=1e-6)
    np.testing.assert_allclose(planning.total, 0.6 * 1.8)
    assert np.isnan(planning.ri).all()
    assert set(product.timings) >= {"sem", "spa", "ri", "pi", "layout_render"}


def test_text_coordinates_mode_sends_coordinates_not_a_canvas(server):
    from gotr1.world import sample_examples

    examples = sample_examples(3, seed=6)
    layout_requests = []

    def respond(text, image, attempt):
        if "layout planned" in text:
            layout_requests.append((image, text))
            return ("ok", '{"score": 4}')
        return ("ok", '{"score": 5}')

    server.respond = respond
    config = RewardConfig(components=("sem", "spa"), spatial_input="text")
    with make_judge(server.base_url) as judge:
        rewards = DualStageReward(judge, config).score(
            [e.prompt for e in examples],
            [e.chain for e in examples],
            [e.render() for e in examples],
        )
    np.testing.assert_allclose(rewards.spa, 3 / 9)
    np.testing.assert_allclose(rewards.total, 0.5 + 3 / 9)
    assert "layout_render" not in rewards.timings
    assert len(layout_requests) == 3
    by_caption = {caption_of(text): (image, text) for image, text in layout_requests}
    for example in examples:  # requests run concurrently: match them by caption
        image, text = by_caption[example.prompt]
        assert image is None
        first = parse_chain(example.chain).objects[0]
        box = first.box
        assert f"- {first.name}: ({box[0]},{box[1]}),({box[2]},{box[3]})" in text


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="base_url"):
        OpenAIJudgeConfig(base_url="localhost:8000")
    with pytest.raises(ValueError, match="max_concurrency"):
        OpenAIJudgeConfig(max_concurrency=0)
    with pytest.raises(ValueError, match="box_format"):
        OpenAIJudgeConfig(box_format="pixels")

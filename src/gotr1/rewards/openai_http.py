"""Qwen2.5-VL (or any vision LLM) as a judge behind an OpenAI-compatible chat-completions server.

The production case is ``vllm serve Qwen/Qwen2.5-VL-7B-Instruct``; anything that speaks
``POST {base_url}/chat/completions`` works. Only the standard library is used (``http.client``):

- images travel as base64 PNG data URLs; with ``box_format="qwen2.5"`` each image is first resized
  to the size Qwen2.5-VL's processor would give it (:func:`qwen_resized_size`), so the server's own
  resize is the identity and the pixel boxes it answers refer to an image size we know;
- at most ``max_concurrency`` requests are in flight (a thread pool of that size, one kept-alive
  connection per thread);
- every attempt has one deadline, ``timeout`` seconds for the whole exchange (connect, send,
  status line, headers and body), so a server that drip-feeds its answer a byte at a time times
  out like one that never answers; refused connections, timeouts, HTTP 429/5xx, malformed or
  truncated bodies are retried up to ``max_retries`` times with exponential backoff and full
  jitter (:func:`backoff_ceiling`), or after the wait a 429/503 asks for in its ``Retry-After``
  header (seconds or an HTTP date, :func:`parse_retry_after`); other HTTP errors (400, 401, ...)
  are not retried. What still fails becomes a Reply without text, which the shared judge logic
  counts as a failure — nothing raises;
- a batch has one deadline (:class:`BatchDeadline`): every request of one :meth:`generate` call,
  or of every call inside :meth:`OpenAIJudge.batch_deadline` (the reward asks its four questions
  at once in one such scope), stops being tried when it passes, so a server that hangs costs one
  deadline per batch, not one per question; a retry whose wait would end past it is not made;
- the API key is read from the environment variable named by ``api_key_env`` at request time,
  surrounding whitespace stripped (a key with a control character inside is refused); it is never
  stored on the judge, logged, or written into an error message or a repr, escaped or not
  (:func:`scrub_secret`).
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import functools
import http.client
import io
import json
import logging
import os
import random
import threading
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from gotr1.rewards import qwen_prompts as qp
from gotr1.rewards.vlm import ChatRequest, Reply, VLMJudge, VLMJudgeConfig

logger = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


@dataclass
class OpenAIJudgeConfig(VLMJudgeConfig):
    """Settings of the judge behind an OpenAI-compatible server."""

    base_url: str = field(
        default="http://127.0.0.1:8000/v1",
        metadata={"help": "server root; requests go to {base_url}/chat/completions"},
    )
    model: str = field(
        default="Qwen/Qwen2.5-VL-7B-Instruct",
        metadata={"help": "model name sent with each request"},
    )
    api_key_env: str | None = field(
        default="OPENAI_API_KEY",
        metadata={"help": "environment variable holding the API key (unset or empty: no key sent)"},
    )
    max_concurrency: int = field(default=8, metadata={"help": "requests in flight at most"})
    timeout: float = field(
        default=60.0,
        metadata={
            "help": "seconds one attempt may take in all (connect, send, wait, read the whole "
            "answer); a slower attempt counts as a timeout and is retried"
        },
    )
    max_retries: int = field(
        default=4, metadata={"help": "retries of a request after a transport error or HTTP 429/5xx"}
    )
    backoff_base: float = field(
        default=0.5, metadata={"help": "first backoff ceiling, seconds; doubles on each retry"}
    )
    backoff_max: float = field(default=8.0, metadata={"help": "largest backoff ceiling, seconds"})
    batch_timeout: float | None = field(
        default=None,
        metadata={
            "help": "seconds a whole batch of judge questions (all four reward components) may "
            "take; past it nothing more is sent or retried and what is unanswered fails. None: "
            "what one request may take with all its retries ((max_retries + 1) * timeout plus "
            "the backoff ceilings), plus timeout for each further max_concurrency requests"
        },
    )
    min_pixels: int = field(
        default=qp.QWEN_MIN_PIXELS, metadata={"help": "the server processor's min_pixels"}
    )
    max_pixels: int = field(
        default=qp.QWEN_MAX_PIXELS, metadata={"help": "the server processor's max_pixels"}
    )
    seed: int | None = field(default=0, metadata={"help": "sampling seed sent to the server"})

    def __post_init__(self) -> None:
        super().__post_init__()
        parsed = urllib.parse.urlsplit(self.base_url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"base_url {self.base_url!r} is not an http(s) URL")
        if self.max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {self.max_concurrency}")
        if self.timeout <= 0:
            raise ValueError(f"timeout must be positive, got {self.timeout}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be non-negative, got {self.max_retries}")
        if self.batch_timeout is not None and self.batch_timeout <= 0:
            raise ValueError(f"batch_timeout must be positive or None, got {self.batch_timeout}")


def backoff_ceiling(attempt: int, base: float, maximum: float) -> float:
    """The longest wait before retry ``attempt + 1`` (attempt 0 is the first retry's wait):
    ``base * 2**attempt``, capped at ``maximum``. The wait itself is drawn uniformly below it."""
    return min(maximum, base * 2.0 ** min(attempt, 64))


def request_budget(config: OpenAIJudgeConfig) -> float:
    """The most one request may take with all its retries: ``max_retries + 1`` attempts of
    ``timeout`` seconds and the backoff ceilings between them."""
    waits = sum(
        backoff_ceiling(a, config.backoff_base, config.backoff_max)
        for a in range(config.max_retries)
    )
    return (config.max_retries + 1) * config.timeout + waits


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delay-seconds or an HTTP date (RFC 9110);
    None when absent or unreadable (the normal backoff applies then). A date in the past is 0."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class BatchDeadline:
    """One deadline for every request of a batch (``time.monotonic``).

    ``config.batch_timeout`` seconds from the start; by default :func:`request_budget` plus
    ``timeout`` for each further round of ``max_concurrency`` requests registered with
    :meth:`add`, so a well-behaved server (every answer inside ``timeout``) never meets it while
    one that hangs costs about one request's budget per batch.
    """

    def __init__(self, config: OpenAIJudgeConfig) -> None:
        self.config = config
        self.start = time.monotonic()
        self.requests = 0
        self._lock = threading.Lock()

    def add(self, count: int) -> None:
        """Register `count` more requests of the batch."""
        with self._lock:
            self.requests += count

    @property
    def deadline(self) -> float:
        """When the batch's time is up (``time.monotonic``)."""
        config = self.config
        if config.batch_timeout is not None:
            return self.start + config.batch_timeout
        rounds = max(1, -(-self.requests // config.max_concurrency))
        return self.start + request_budget(config) + (rounds - 1) * config.timeout

    def left(self) -> float:
        """Seconds until the deadline (negative once it has passed)."""
        return self.deadline - time.monotonic()


# Looked up at call time, so a test can pin the jitter and record the waits.
_sleep = time.sleep
_jitter = random.uniform


def _time_left(deadline: float) -> float:
    """Seconds until `deadline` (``time.monotonic``); TimeoutError once it has passed."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the attempt's deadline passed")
    return left


class _DeadlineReader(io.RawIOBase):
    """The reading side of a socket where every read ends by one deadline (``time.monotonic``).

    A socket timeout bounds each read, so a server sending one byte just inside it could stretch
    one answer without limit; here each read may wait only for what is left of the attempt.
    """

    def __init__(self, sock: Any, deadline: float) -> None:
        super().__init__()
        self._sock = sock
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        self._sock.settimeout(_time_left(self._deadline))
        return self._sock.recv_into(buffer)


class _DeadlineSocket:
    """Hands http.client's response a deadline-bound reader instead of ``socket.makefile``."""

    def __init__(self, sock: Any, deadline: float) -> None:
        self._sock = sock
        self._deadline = deadline

    def makefile(self, mode: str = "rb", *args: Any, **kwargs: Any) -> io.BufferedReader:
        return io.BufferedReader(_DeadlineReader(self._sock, self._deadline))


class _DeadlineResponse(http.client.HTTPResponse):
    """An HTTP response whose status line, headers and body are all read by ``deadline``."""

    def __init__(self, sock: Any, *args: Any, deadline: float, **kwargs: Any) -> None:
        super().__init__(_DeadlineSocket(sock, deadline), *args, **kwargs)  # type: ignore[arg-type]


class _TransportError(Exception):
    """A failed exchange with the server; ``retryable`` says whether trying again may help and
    ``retry_after`` how long the server asked to wait first (seconds), if it said."""

    def __init__(self, message: str, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


def encode_png_data_url(image: Image.Image) -> str:
    """The image as a ``data:image/png;base64,...`` URL."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class OpenAIJudge(VLMJudge):
    """The four judge questions answered by an OpenAI-compatible chat-completions server."""

    config: OpenAIJudgeConfig
    concurrent_questions = True
    """The four questions may be asked at once (from several threads): requests share one pool
    of ``max_concurrency`` workers."""

    def __init__(self, config: OpenAIJudgeConfig | None = None) -> None:
        """Prepare the connection pool; nothing is sent until a question is asked."""
        super().__init__(config or OpenAIJudgeConfig())
        parsed = urllib.parse.urlsplit(self.config.base_url)
        self._https = parsed.scheme == "https"
        self._host = parsed.hostname or "127.0.0.1"
        self._port = parsed.port or (443 if self._https else 80)
        self._path = parsed.path.rstrip("/") + "/chat/completions"
        self._local = threading.local()
        self._executor: ThreadPoolExecutor | None = None
        self._batch: BatchDeadline | None = None
        for key in ("http_requests", "http_retries", "http_failures"):
            self.stats[key] = 0
        self.error_counts: dict[str, int] = {}

    def __repr__(self) -> str:
        return (
            f"OpenAIJudge(base_url={self.config.base_url!r}, model={self.config.model!r}, "
            f"max_concurrency={self.config.max_concurrency})"
        )

    def close(self) -> None:
        """Stop the worker threads (connections close with them)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    @contextlib.contextmanager
    def batch_deadline(self) -> Iterator[BatchDeadline]:
        """Give every request sent inside (from any thread) one `BatchDeadline`: the reward
        asks its four questions in one such scope. A scope inside another shares the outer one."""
        with self._lock:
            outer = self._batch
            if outer is None:
                self._batch = BatchDeadline(self.config)
            batch = self._batch
        try:
            yield batch
        finally:
            if outer is None:
                with self._lock:
                    self._batch = None

    def __enter__(self) -> OpenAIJudge:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- images ----------------------------------------------------------------------------------
    def prepare_image(self, image: Any) -> Image.Image:
        """Resize as the shared judge does, then (qwen2.5 boxes) to the server processor's size."""
        prepared = super().prepare_image(image)
        if self.config.box_format != "qwen2.5":
            return prepared
        size = qp.qwen_resized_size(
            prepared.width, prepared.height, self.config.min_pixels, self.config.max_pixels
        )
        if size != prepared.size:
            prepared = prepared.resize(size, Image.Resampling.BICUBIC)
        return prepared

    # -- transport -------------------------------------------------------------------------------
    def _count_error(self, kind: str) -> None:
        with self._lock:
            self.error_counts[kind] = self.error_counts.get(kind, 0) + 1

    def _scrub(self, message: str) -> str:
        """An error message with the API key (should one ever appear in it, in any escaped
        form) blotted out."""
        name = self.config.api_key_env
        raw = os.environ.get(name) if name else None
        return scrub_secret(message, raw) if raw and raw.strip() else message

    def _api_key(self) -> str | None:
        """The API key from the environment, surrounding whitespace (a stray ``\r`` or ``\n``)
        stripped; None when unset or empty. A key with a control character inside raises a
        _TransportError whose message does not hold it."""
        name = self.config.api_key_env
        if not name:
            return None
        key = (os.environ.get(name) or "").strip()
        if any(ord(c) < 32 or ord(c) == 127 for c in key):
            raise _TransportError(
                f"the API key in ${name} holds a control character; set it without one", False
            )
        return key or None

    def _connection(self) -> http.client.HTTPConnection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            connection = cls(self._host, self._port, timeout=self.config.timeout)
            self._local.connection = connection
        return connection

    def _drop_connection(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None

    def _payload(self, request: ChatRequest) -> bytes:
        if request.image is not None:
            content: Any = [
                {"type": "image_url", "image_url": {"url": encode_png_data_url(request.image)}},
                {"type": "text", "text": request.text},
            ]
        else:
            content = request.text
        body: dict[str, Any] = {
            "model": self.config.model,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": request.max_new_tokens,
            "temperature": 0.0,
        }
        if self.config.seed is not None:
            body["seed"] = self.config.seed
        return json.dumps(body).encode("utf-8")

    def _exchange(self, payload: bytes, batch_deadline: float | None = None) -> str:
        """One POST; the answer text, or a _TransportError."""
        return choice_text(self._post(payload, batch_deadline))

    def _post(self, payload: bytes, batch_deadline: float | None = None) -> dict[str, Any]:
        """One POST that ends ``timeout`` seconds from now or at `batch_deadline`, whichever
        comes first; the first choice of the decoded reply, or a _TransportError."""
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = self._api_key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        connection = self._connection()
        deadline = time.monotonic() + self.config.timeout
        if batch_deadline is not None:
            deadline = min(deadline, batch_deadline)
        try:
            # One deadline for the whole attempt: connect, send (sendall's timeout is its total),
            # then every read of the answer (_DeadlineResponse).
            if connection.sock is None:
                connection.timeout = _time_left(deadline)
                connection.connect()
            connection.sock.settimeout(_time_left(deadline))
            deadline_response = functools.partial(_DeadlineResponse, deadline=deadline)
            connection.response_class = deadline_response  # type: ignore[assignment]
            connection.request("POST", self._path, body=payload, headers=headers)
            response = connection.getresponse()
            status = response.status
            retry_after = response.getheader("Retry-After")
            raw = response.read()
            if response.will_close:
                self._drop_connection()
        except TimeoutError as error:
            self._drop_connection()
            raise _TransportError(f"timeout after {self.config.timeout:g}s", True) from error
        except (ConnectionError, http.client.HTTPException, OSError) as error:
            self._drop_connection()
            raise _TransportError(f"{type(error).__name__}: {error}", True) from error
        if status != 200:
            retryable = status in RETRYABLE_STATUS
            wait = parse_retry_after(retry_after) if retryable else None
            raise _TransportError(f"HTTP {status}", retryable, wait)
        try:
            choice = json.loads(raw.decode("utf-8"))["choices"][0]
        except (ValueError, UnicodeDecodeError, KeyError, IndexError, TypeError) as error:
            raise _TransportError(
                f"malformed response body ({type(error).__name__})", True
            ) from error
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(message, dict) or "content" not in message:
            raise _TransportError("malformed response body (no message content)", True)
        return choice

    def _fail(self, size: tuple[int, int] | None, tries: int, message: str) -> Reply:
        """Count a request that gets no answer and say why."""
        self._count("http_failures")
        logger.warning("judge request failed after %d tries: %s", tries, message)
        return Reply(None, size, message)

    def _send(self, request: ChatRequest, batch: BatchDeadline | None = None) -> Reply:
        """POST with retries, all inside `batch`'s deadline (a batch of its own when None);
        never raises."""
        batch = batch or BatchDeadline(self.config)
        payload = self._payload(request)
        size = request.image.size if request.image is not None else None
        attempt = 0
        while True:
            if batch.left() <= 0:
                self._count_error("batch deadline")
                return self._fail(
                    size, attempt, "batch deadline passed before the request could be sent"
                )
            self._count("http_requests")
            try:
                return Reply(self._exchange(payload, batch.deadline), size)
            except _TransportError as error:
                message = self._scrub(str(error))
                self._count_error(message.split(":")[0].split(" after")[0])
                if not error.retryable or attempt >= self.config.max_retries:
                    return self._fail(size, attempt + 1, message)
                retry_after = error.retry_after
            except Exception as error:  # noqa: BLE001 - a judge must never crash the trainer
                self._drop_connection()
                message = self._scrub(f"{type(error).__name__}: {error}")
                self._count_error(type(error).__name__)
                self._count("http_failures")
                logger.warning("judge request failed: %s", message)
                return Reply(None, size, message)
            if retry_after is not None:  # the server said when: honour it
                wait, why = retry_after, f"Retry-After {retry_after:g}s"
            else:
                ceiling = backoff_ceiling(
                    attempt, self.config.backoff_base, self.config.backoff_max
                )
                wait, why = _jitter(0.0, ceiling), f"backoff {ceiling:g}s"
            if wait >= batch.left():
                return self._fail(
                    size, attempt + 1, f"{message}; its {why} wait ends past the batch deadline"
                )
            _sleep(wait)
            attempt += 1
            self._count("http_retries")

    def generate(self, requests: Sequence[ChatRequest]) -> list[Reply]:
        """Send every request, at most ``max_concurrency`` at a time (across threads calling
        this at once, too); replies in request order. The requests join the batch of an open
        :meth:`batch_deadline` scope, else form a batch of their own."""
        if not requests:
            return []
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    max_workers=self.config.max_concurrency, thread_name_prefix="gotr1-judge"
                )
            executor = self._executor
            batch = self._batch or BatchDeadline(self.config)
        batch.add(len(requests))
        return list(executor.map(functools.partial(self._send, batch=batch), requests))


def secret_forms(secret: str) -> list[str]:
    """Every way `secret` may be written into a message: as is, stripped of surrounding
    whitespace, and each of those escaped as Python (str and bytes repr), JSON and URLs
    (percent-encoding) write it, once or twice over; longest first."""
    escapes = (
        lambda s: repr(s)[1:-1],
        lambda s: repr(s.encode("utf-8", "backslashreplace"))[2:-1],
        lambda s: json.dumps(s)[1:-1],
        lambda s: json.dumps(s, ensure_ascii=False)[1:-1],
        lambda s: urllib.parse.quote(s, safe=""),
        lambda s: urllib.parse.quote_plus(s, safe=""),
    )
    forms = {secret, secret.strip()}
    for _ in range(2):
        forms |= {escape(form) for form in forms for escape in escapes}
    return sorted((f for f in forms if f), key=len, reverse=True)


def scrub_secret(message: str, secret: str) -> str:
    """`message` with every form of `secret` (`secret_forms`) replaced by ``***``."""
    for form in secret_forms(secret):
        message = message.replace(form, "***")
    return message


def choice_text(choice: dict[str, Any]) -> str:
    """The answer text of a chat-completions choice (joining content parts), or a _TransportError."""
    content = choice["message"]["content"]
    if isinstance(content, list):  # some servers return content parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if not isinstance(content, str):
        raise _TransportError("response content is not text", True)
    return content

"""Slow and hostile HTTP servers, and hostile call input (issue 18), against ``tools/http.py``.

A raw-socket server on 127.0.0.1 (nothing else is contacted) plays each case: headers or body
trickled at 1 byte/s, a connection that never closes, redirects to another (loopback) host,
huge and non-UTF-8 bodies, 429 with Retry-After. Every call must end within its deadline (wall
time asserted), be counted (``requests_sent``) and fail with a recorded reason. Then model-written
input (``../``, ``?x=``, ``#``, ``@evil``, CRLF, full URLs, percent-encodings) must never change the
request's host, path or other parameters. Every server loop is bounded (at most ``SERVER_MAX_S``)
and stops at teardown.

    python -m pytest -q -s tests/reliability/test_hostile_servers.py
"""

from __future__ import annotations

import json
import socket
import threading
import time
from email.utils import formatdate
from urllib.parse import urlencode

import pytest

from tools.base import ToolError
from tools.executor import ToolExecutor
from tools.http import HttpClient, HttpEndpoint

SERVER_MAX_S = 8.0  # no server script runs longer than this
DEADLINE_S = 1.0
SLACK_S = 0.5  # allowed past the deadline (scheduling on a loaded 2-core box)
FIGURES: dict[str, dict] = {}


class RawServer:
    """Accepts on 127.0.0.1; each connection runs ``script(conn, request_bytes)`` from ``scripts``
    (the last one repeats). Records every raw request head."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/api/v1/search"
        self.scripts: list = [ok]
        self.requests: list[bytes] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket):
        conn.settimeout(SERVER_MAX_S)
        with conn:
            head = b""
            try:
                while b"\r\n\r\n" not in head and len(head) < 1 << 20:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    head += chunk
            except OSError:
                return
            self.requests.append(head)
            script = self.scripts.pop(0) if len(self.scripts) > 1 else self.scripts[0]
            try:
                script(self, conn, head)
            except OSError:
                pass  # the client gave up on us: that is the point of most cases

    def bounded(self) -> float:
        return time.monotonic() + SERVER_MAX_S

    def close(self):
        self.stop.set()
        self.thread.join(2)
        self.sock.close()


def response(status: int, body: bytes, headers: tuple = (), length: bool = True) -> bytes:
    # One request per connection (the handler closes it after its script): say so, or the client
    # may reuse the closed connection for its next call and fail it as "connect" (a race).
    lines = [f"HTTP/1.1 {status} X", "Connection: close"] + [f"{k}: {v}" for k, v in headers]
    if length:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def ok(server, conn, head):
    conn.sendall(response(200, b'{"result": "ok"}', (("Content-Type", "application/json"),)))


def trickle_body(server, conn, head):
    conn.sendall(response(200, b"", (("Content-Length", "100"),), length=False))
    end = server.bounded()
    while time.monotonic() < end and not server.stop.is_set():
        conn.sendall(b" ")
        time.sleep(1.0)


def trickle_head(server, conn, head):
    end = server.bounded()
    for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 1000:
        if time.monotonic() > end or server.stop.is_set():
            return
        conn.sendall(bytes([byte]))
        time.sleep(0.2)  # under any idle timeout: only a total deadline stops this


def never_close(server, conn, head):
    # Headers without a length: the body runs "until the connection closes", which never happens.
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{\"result\": ")
    server.stop.wait(SERVER_MAX_S)


def silent(server, conn, head):
    server.stop.wait(SERVER_MAX_S)  # accepts, reads the request, never answers


def endless(server, conn, head):
    conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
    block, end = b"x" * 65536, server.bounded()
    while time.monotonic() < end and not server.stop.is_set():
        conn.sendall(block)


def declared_huge(server, conn, head):
    conn.sendall(response(200, b"", (("Content-Length", str(10**12)),), length=False))
    server.stop.wait(SERVER_MAX_S)


@pytest.fixture
def server():
    s = RawServer()
    yield s
    s.close()


def client(server, **config) -> HttpClient:
    cfg = dict(connect_timeout_s=0.5, read_timeout_s=5.0, deadline_s=DEADLINE_S, retries=2,
               backoff_factor=0.1, max_bytes=64 * 1024)  # fmt: skip
    cfg.update(config)
    return HttpClient(HttpEndpoint(server.url, **cfg))


def timed_failure(c: HttpClient, query: str = "q") -> tuple[ToolError, float]:
    t0 = time.monotonic()
    with pytest.raises(ToolError) as info:
        c.answer(query)
    return info.value, time.monotonic() - t0


def record(case: str, err: ToolError | None, wall: float, c: HttpClient) -> None:
    reason = err.reason if err else "ok"
    FIGURES[case] = {"reason": reason, "wall_s": round(wall, 2), "requests": c.requests_sent}
    print("FIGURES hostile_server", case, json.dumps(FIGURES[case]))


@pytest.mark.parametrize(
    "case, script, reason, requests",
    [
        ("trickle_body_1_byte_per_s", trickle_body, "timeout", 1),
        ("trickle_headers", trickle_head, "timeout", 1),
        ("never_closing_connection", never_close, "timeout", 1),
        ("silent_after_accept", silent, "timeout", 1),
        ("endless_body", endless, "bad_response", 1),
        ("declared_1_TB_body", declared_huge, "bad_response", 1),
    ],
)
def test_slow_or_endless_replies_end_within_the_deadline(server, case, script, reason, requests):
    server.scripts = [script]
    c = client(server)
    err, wall = timed_failure(c)
    record(case, err, wall, c)
    assert err.reason == reason, err
    assert wall < DEADLINE_S + SLACK_S
    assert c.requests_sent == requests == len(server.requests)
    assert "\n" not in err.message and len(err.message) < 300


def test_read_retries_stay_inside_the_deadline(server):
    """Even allowed to retry read timeouts, a trickling server costs one deadline in all."""
    server.scripts = [trickle_head]
    c = client(server, read_retries=5, retries=5, read_timeout_s=0.3)
    err, wall = timed_failure(c)
    record("trickle_headers_with_read_retries", err, wall, c)
    assert err.reason == "timeout" and wall < DEADLINE_S + SLACK_S


def redirect_to(location: str, status: int = 302):
    def script(server, conn, head):
        conn.sendall(response(status, b"", (("Location", location),)))

    return script


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_to_another_host_is_not_followed(server, status):
    other = RawServer()  # "another host": a second loopback server that must never be asked
    try:
        for location in (other.url, f"//127.0.0.1:{other.port}/x", f"http://user@127.0.0.1:{other.port}/"):
            server.requests.clear()
            server.scripts = [redirect_to(location, status)]
            c = client(server)
            err, wall = timed_failure(c)
            assert err.reason == f"http_{status}" and wall < DEADLINE_S
            assert c.requests_sent == 1 and len(server.requests) == 1
        time.sleep(0.1)
        assert other.requests == []
        record(f"redirect_{status}", err, wall, c)
    finally:
        other.close()


UTF8_JSON = (("Content-Type", "application/json; charset=utf-8"),)


@pytest.mark.parametrize(
    "case, body, headers",
    [
        ("latin1_body", '{"result": "caf\xe9"}'.encode("latin-1"), ()),
        ("random_bytes", bytes(range(256)) * 4, ()),
        ("utf8_declared_latin1", b'{"result": "\xff\xfe\xfd"}', UTF8_JSON),
        ("lone_surrogate_escape", b'{"result": "\\ud800 x"}', ()),
        ("nul_and_controls", b'{"result": "\\u0000\\u001b[31m"}', ()),
        ("truncated_utf8", b'{"result": "\xe2\x82"}', ()),
    ],
)
def test_non_utf8_or_garbage_bodies_are_bad_responses(server, case, body, headers):
    def script(server, conn, head):
        conn.sendall(response(200, body, headers))

    server.scripts = [script]
    c = client(server)
    err, wall = timed_failure(c)
    record(case, err, wall, c)
    assert err.reason == "bad_response" and wall < DEADLINE_S and c.requests_sent == 1
    assert "\n" not in err.message
    err.message.encode("utf-8")  # the recorded reason is itself valid text


def test_a_utf16_json_body_is_valid_json_and_accepted(server):
    """Not hostile, just unusual: JSON in UTF-16 (RFC 8259 readers may accept it). The answer is text."""

    def script(server, conn, head):
        conn.sendall(response(200, '{"result": "ok"}'.encode("utf-16")))

    server.scripts = [script]
    assert client(server).answer("q") == "ok"


def too_many(retry_after: str):
    def script(server, conn, head):
        conn.sendall(response(429, b"slow down", (("Retry-After", retry_after),)))

    return script


def test_429_with_a_short_retry_after_is_waited_for_and_then_answered(server):
    server.scripts = [too_many("1"), ok]
    c = client(server, deadline_s=3.0)
    t0 = time.monotonic()
    assert c.answer("q") == "ok"
    wall = time.monotonic() - t0
    record("429_retry_after_1s_then_200", None, wall, c)
    # waited the Retry-After (>= 1 s) and answered before the deadline (3 s) ran out; one retry, no
    # more (the request counts below). The upper bound is the deadline, not a wall-clock guess: on a
    # busy machine a 1 s wait plus two local requests can pass 2 s without any backoff added.
    assert wall >= 1.0, wall
    assert wall < 3.0, wall
    assert c.requests_sent == 2, c.requests_sent
    assert len(server.requests) == 2, server.requests


@pytest.mark.parametrize(
    "case, value, max_wall",
    [
        ("429_retry_after_past_deadline", "5", 0.5),  # waiting would pass the 1 s deadline: fail now
        ("429_retry_after_huge", "86400", 0.5),
        ("429_retry_after_http_date", None, 0.5),  # a date an hour ahead
        ("429_retry_after_garbage", "soon", DEADLINE_S + SLACK_S),  # backoff instead, then out of retries
        ("429_retry_after_negative", "-5", DEADLINE_S + SLACK_S),
    ],
)
def test_429_retry_after_is_bounded_by_the_deadline(server, case, value, max_wall):
    if value is None:
        value = formatdate(time.time() + 3600, usegmt=True)
    server.scripts = [too_many(value)]
    c = client(server)
    err, wall = timed_failure(c)
    record(case, err, wall, c)
    assert err.reason == "http_429" and wall < max_wall
    assert c.requests_sent == len(server.requests) <= 3


def test_the_executor_counts_and_records_hostile_replies(server):
    """Through the pipeline's executor: every failure is an outcome with its reason, nothing raises."""
    from tools.qa import QA

    scripts = [trickle_body, never_close, redirect_to("http://127.0.0.1:1/"), endless, too_many("86400")]
    server.scripts = list(scripts) + [ok]
    qa = QA(endpoint=server.url)
    qa.http = client(server, retries=0)
    ex = ToolExecutor({"QA": qa})
    t0 = time.monotonic()
    outcomes = [ex.execute("QA", f"question {i}") for i in range(len(scripts) + 1)]
    wall = time.monotonic() - t0
    reasons = [o.error for o in outcomes]
    print("FIGURES hostile_executor", json.dumps({"reasons": reasons, "wall_s": round(wall, 2)}))
    assert reasons == ["timeout", "timeout", "http_302", "bad_response", "http_429", None]
    assert outcomes[-1].result == "ok" and wall < len(scripts) * (DEADLINE_S + SLACK_S)


# --- Model-written input never changes the endpoint ---------------------------------------------

HOSTILE_INPUTS = [
    "../../etc/passwd",
    "..%2f..%2fadmin",
    "%2e%2e/%2e%2e/",
    "?x=1",
    "a&query=other&k=2",
    "k=2",
    "#fragment",
    "x#/../../admin",
    "@evil.example",
    "user:pass@evil.example/path",
    "http://evil.example/steal",
    "https://169.254.169.254/latest/meta-data/",
    "//evil.example/x",
    "\r\nHost: evil.example\r\nX-Injected: 1",
    "a\r\n\r\nGET /admin HTTP/1.1\r\nHost: evil",
    "\nX-Injected: 1",
    "%0d%0aX-Injected:%201",
    "a b+c%20d",
    "\x00nul",
    "\\..\\..\\windows",
    "évil ünïcode 𝔘 \u202e",
    ";rm -rf /",
    "q" * 2000,
]


def request_target(head: bytes) -> tuple[str, list[bytes]]:
    lines = head.split(b"\r\n")
    method, target, version = lines[0].split(b" ")
    assert method == b"GET" and version == b"HTTP/1.1"
    return target.decode("ascii"), [ln for ln in lines[1:] if ln]


@pytest.mark.parametrize("query", HOSTILE_INPUTS)
def test_model_input_never_changes_host_path_or_parameters(server, query):
    c = client(server, fixed_params=(("k", "1"),), retries=0)
    assert c.answer(query) == "ok"
    [head] = server.requests
    target, headers = request_target(head)
    # Exactly the configured path and the fixed parameter, then the input, percent-encoded.
    assert target == "/api/v1/search?" + urlencode([("k", "1"), ("query", query)])
    assert target.count("?") == 1 and "#" not in target and " " not in target
    names = sorted(h.split(b":", 1)[0].lower() for h in headers)
    assert names == [b"accept", b"accept-encoding", b"connection", b"host", b"user-agent"]
    hosts = [h for h in headers if h.lower().startswith(b"host:")]
    assert hosts == [f"Host: 127.0.0.1:{server.port}".encode()]


def test_input_that_cannot_be_encoded_is_a_tool_error_not_a_crash(server):
    c = client(server, retries=0)
    with pytest.raises(ToolError) as info:
        c.answer("lone \ud800 surrogate")
    assert info.value.reason in ("bad_request", "parse", "bad_response")
    assert server.requests == []


def test_hostile_inputs_through_the_executor_reach_only_the_endpoint(server):
    from tools.qa import QA

    qa = QA(endpoint=server.url)
    qa.http = client(server, retries=0)
    ex = ToolExecutor({"QA": qa})
    outcomes = [ex.execute("QA", q) for q in HOSTILE_INPUTS]
    targets = [request_target(h)[0] for h in server.requests]
    paths = {t.split("?", 1)[0] for t in targets}
    limited = [o for o in outcomes if o.error == "limit"]  # QA refuses questions over 1,000 characters
    print("FIGURES hostile_inputs", json.dumps({"inputs": len(HOSTILE_INPUTS), "requests": len(targets),
                                                "paths": sorted(paths), "ok": sum(o.ok for o in outcomes),
                                                "refused_by_the_tool": len(limited)}))  # fmt: skip
    assert paths == {"/api/v1/search"} and len(targets) == len(HOSTILE_INPUTS) - len(limited)
    assert all(o.ok or o.error == "limit" for o in outcomes)

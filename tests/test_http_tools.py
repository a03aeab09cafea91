"""HTTP-backed tools against a loopback server with scripted faults (TESTPLAN section D, and C23).

Run: python -m pytest -q tests/test_http_tools.py

The server listens on 127.0.0.1 only. Backoff and Retry-After waits use an injected sleep and
clock, so those tests take milliseconds; the timeout tests use real time with sub-second limits.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from tools.base import CallContext, Tool, ToolError
from tools.calculator import Calculator
from tools.executor import ToolExecutor
from tools.http import HttpClient, HttpEndpoint
from tools.qa import QA
from tools.wikisearch import WikiSearch


class ScriptedServer:
    """Each request takes the next scripted action (the last one repeats)."""

    def __init__(self):
        self.actions: list[tuple] = [("json", 200, {"result": "ok"})]
        self.seen: list[tuple[str, dict]] = []  # (path, query params) of each request
        self.release = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out as separate writes: avoid 40 ms stalls

            def log_message(self, *args):
                pass

            def do_GET(self):
                parts = urlsplit(self.path)
                outer.seen.append((parts.path, parse_qs(parts.query)))
                action = outer.actions.pop(0) if len(outer.actions) > 1 else outer.actions[0]
                getattr(self, "_" + action[0])(*action[1:])

            def _send(self, status, body: bytes, headers=(), length=True):
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                if length:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _json(self, status, obj, headers=()):
                self._send(status, json.dumps(obj).encode(), [("Content-Type", "application/json"), *headers])

            def _raw(self, status, body, headers=()):
                self._send(status, body, headers)

            def _hang(self):
                outer.release.wait(10)

            def _drip(self, interval):
                self.send_response(200)
                self.send_header("Content-Length", "1000")
                self.end_headers()
                while not outer.release.is_set():
                    try:
                        self.wfile.write(b" ")
                        self.wfile.flush()
                    except OSError:
                        return
                    time.sleep(interval)

            def _endless(self):
                # No Content-Length, body until the connection closes: only our cap stops it.
                self.send_response(200)
                self.send_header("Connection", "close")
                self.end_headers()
                block = b"x" * 65536
                try:
                    for _ in range(1600):  # 100 MB
                        self.wfile.write(block)
                except OSError:
                    return

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        # A client that stops reading (size cap, timeout) is the point of several tests, not an error.
        self.httpd.handle_error = lambda request, client_address: None
        self.httpd.block_on_close = False
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/search"

    def close(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = ScriptedServer()
    yield s
    s.close()


class FakeTime:
    """Virtual clock: sleeping advances it instantly."""

    def __init__(self):
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def client_for(server, fake: FakeTime | None = None, **config) -> HttpClient:
    endpoint = HttpEndpoint(server.url, **config)
    if fake is None:
        return HttpClient(endpoint)
    return HttpClient(endpoint, sleep=fake.sleep, clock=fake.clock)


def tool_error(fn, *args) -> ToolError:
    with pytest.raises(ToolError) as info:
        fn(*args)
    return info.value


def test_success_and_only_the_query_parameter_is_from_the_model(server):
    client = client_for(server, fixed_params=(("k", "1"),))
    for hostile in ("http://169.254.169.254/latest", "../../admin", "?q=x&k=1000", "a b&c=d#e"):
        assert client.answer(hostile) == "ok"
        path, params = server.seen[-1]
        assert path == "/search"
        assert params == {"k": ["1"], "query": [hostile]}


def test_hang_gives_timeout_within_the_read_timeout(server):
    server.actions = [("hang",)]
    client = client_for(server, connect_timeout_s=1.0, read_timeout_s=0.5, deadline_s=5.0)
    start = time.perf_counter()
    err = tool_error(client.answer, "q")
    elapsed = time.perf_counter() - start
    assert err.reason == "timeout"
    assert elapsed < 0.5 + 0.5
    assert len(server.seen) == 1  # read timeouts are not retried by default


def test_hang_is_bounded_by_the_deadline_even_with_read_retries(server):
    server.actions = [("hang",)]
    client = client_for(
        server, read_timeout_s=0.4, deadline_s=1.0, read_retries=5, retries=5, backoff_factor=0
    )
    start = time.perf_counter()
    assert tool_error(client.answer, "q").reason == "timeout"
    assert time.perf_counter() - start < 1.0 + 0.5


def test_slow_drip_is_stopped_by_the_total_deadline(server):
    server.actions = [("drip", 0.1)]
    client = client_for(server, read_timeout_s=1.0, deadline_s=1.0)
    start = time.perf_counter()
    err = tool_error(client.answer, "q")
    assert err.reason == "timeout"
    assert time.perf_counter() - start < 1.0 + 0.5


def test_503_503_200_retries_with_urllib3_backoff_schedule(server):
    server.actions = [("json", 503, {}), ("json", 503, {}), ("json", 200, {"result": "third time"})]
    fake = FakeTime()
    client = client_for(server, fake, retries=2, backoff_factor=0.5)
    assert client.answer("q") == "third time"
    assert len(server.seen) == 3
    assert fake.sleeps == [1.0]  # urllib3: no wait before the first retry, then 2 * 0.5


def test_429_retry_after_is_honoured(server):
    server.actions = [("json", 429, {}, [("Retry-After", "1")]), ("json", 200, {"result": "ok"})]
    fake = FakeTime()
    assert client_for(server, fake).answer("q") == "ok"
    assert fake.sleeps == [1.0]
    assert len(server.seen) == 2


def test_huge_retry_after_fails_fast(server):
    server.actions = [("json", 429, {}, [("Retry-After", "3600")])]
    fake = FakeTime()
    start = time.perf_counter()
    err = tool_error(client_for(server, fake, max_retry_after_s=10).answer, "q")
    assert (err.reason, fake.sleeps, len(server.seen)) == ("http_429", [], 1)
    assert "3600" in err.message
    assert time.perf_counter() - start < 0.5


def test_always_500_fails_after_total_plus_one_attempts(server):
    server.actions = [("json", 500, {"error": "boom"})]
    fake = FakeTime()
    err = tool_error(client_for(server, fake, retries=3, backoff_factor=0.1).answer, "q")
    assert err.reason == "http_500"
    assert len(server.seen) == 4
    assert fake.sleeps == pytest.approx([0.2, 0.4])  # urllib3's schedule: 0, 2f, 4f


def test_backoff_never_sleeps_past_the_deadline(server):
    server.actions = [("json", 503, {})]
    fake = FakeTime()
    err = tool_error(client_for(server, fake, retries=10, backoff_factor=1.0, deadline_s=5.0).answer, "q")
    assert err.reason == "http_503"
    assert sum(fake.sleeps) < 5.0


@pytest.mark.parametrize("status", [400, 404, 403])
def test_4xx_is_not_retried(server, status):
    server.actions = [("json", status, {})]
    err = tool_error(client_for(server, FakeTime()).answer, "q")
    assert err.reason == f"http_{status}"
    assert len(server.seen) == 1


def test_redirects_are_not_followed(server):
    server.actions = [("raw", 302, b"", [("Location", "http://169.254.169.254/")])]
    assert tool_error(client_for(server).answer, "q").reason == "http_302"
    assert len(server.seen) == 1


def test_connection_refused_is_a_fast_connect_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    fake = FakeTime()
    client = HttpClient(
        HttpEndpoint(f"http://127.0.0.1:{port}/x", retries=2, backoff_factor=0.5),
        sleep=fake.sleep,
        clock=fake.clock,
    )
    start = time.perf_counter()
    err = tool_error(client.answer, "q")
    assert err.reason == "connect"
    assert client.requests_sent == 3  # connection errors are retried
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize(
    "action, reason",
    [
        (
            ("raw", 200, b"<html><body>Service error</body></html>", [("Content-Type", "text/html")]),
            "bad_response",
        ),
        (("raw", 200, b'{"result": ', []), "bad_response"),
        (("json", 200, {"answer": "wrong field"}), "bad_response"),
        (("json", 200, {"result": ["not", "text"]}), "bad_response"),
        (("json", 200, {"result": "   "}), "bad_response"),
        (("json", 200, ["a", "list"]), "bad_response"),
    ],
)
def test_bad_responses(server, action, reason):
    server.actions = [action]
    assert tool_error(client_for(server).answer, "q").reason == reason


def test_numbers_in_the_reply_are_text(server):
    server.actions = [("json", 200, {"result": 42})]
    assert client_for(server).answer("q") == "42"


def test_declared_huge_body_is_refused_without_reading(server):
    server.actions = [("raw", 200, b"x" * 3_000_000, [])]
    err = tool_error(client_for(server, max_bytes=1 << 20).answer, "q")
    assert err.reason == "bad_response"
    assert "3000000" in err.message


def test_undeclared_huge_body_is_capped_while_streaming(server):
    import resource

    server.actions = [("endless",)]
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    err = tool_error(client_for(server, max_bytes=1 << 20).answer, "q")
    assert err.reason == "bad_response"
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) * 1024 < 2 * (1 << 20) + (
        8 << 20
    )


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_repeated_hangs_leak_no_threads_or_connections(server):
    server.actions = [("json", 200, {"result": "warm"}), ("hang",)]
    client = client_for(server, read_timeout_s=0.05, deadline_s=1.0)
    assert client.answer("q") == "warm"  # the session and its pool exist before we count
    threads, fds = threading.active_count(), _open_fds()
    for _ in range(30):
        assert tool_error(client.answer, "q").reason == "timeout"
    server.release.set()  # let the server's handler threads finish
    time.sleep(0.2)
    client.close()
    assert threading.active_count() <= threads
    assert _open_fds() <= fds


# ---------------------------------------------------------------- tools backed by HTTP, and caching


def test_wikisearch_and_qa_can_use_an_endpoint(server):
    server.actions = [("json", 200, {"result": "The Brown Act is a California law."})]
    assert WikiSearch(endpoint=server.url, max_chars=20)("Brown Act", CallContext()) == "The Brown Act is a"
    server.actions = [("json", 200, {"answer": "Warsaw"})]
    assert (
        QA(endpoint=server.url, response_field="answer")("Where was Marie Curie born?", CallContext())
        == "Warsaw"
    )
    assert server.seen[-1][1] == {"query": ["Where was Marie Curie born?"]}


def test_cache_one_hit_for_a_repeat_and_transient_failures_are_not_cached(server):
    fake = FakeTime()
    search = WikiSearch(endpoint=server.url, retries=0)
    search.http.sleep, search.http.clock = fake.sleep, fake.clock
    executor = ToolExecutor({"WikiSearch": search, "Calculator": Calculator(isolate=False)})

    server.actions = [("json", 200, {"result": "cached answer"})]
    first = executor.execute("WikiSearch", "Brown Act")
    second = executor.execute("WikiSearch", "Brown Act")
    assert (first.result, first.cached, second.result, second.cached) == (
        "cached answer",
        False,
        "cached answer",
        True,
    )
    assert len(server.seen) == 1

    server.actions = [("json", 503, {}), ("json", 200, {"result": "recovered"})]
    failed = executor.execute("WikiSearch", "Steel City")
    assert (failed.result, failed.error) == (None, "http_503")
    again = executor.execute("WikiSearch", "Steel City")
    assert (again.result, again.cached) == ("recovered", False)
    assert len(server.seen) == 3

    rejected = executor.execute("Calculator", "9**9**9")
    assert rejected.error == "limit"
    assert executor.execute("Calculator", "9**9**9") == dataclasses.replace(rejected, cached=True)


class _Echo(Tool):
    name = "Echo"

    def __init__(self, http: HttpClient):
        self.http = http

    def __call__(self, input, context):
        return self.http.answer(input)


def test_client_and_tools_are_picklable(server):
    import pickle

    client = client_for(server)
    assert client.answer("q") == "ok"
    clone = pickle.loads(pickle.dumps(_Echo(client)))
    assert clone("q", CallContext()) == "ok"
    assert pickle.loads(pickle.dumps(QA(endpoint=server.url)))("q", CallContext()) == "ok"


def test_endpoint_config_is_validated():
    with pytest.raises(ValueError, match="http"):
        HttpEndpoint("file:///etc/passwd")
    with pytest.raises(ValueError, match="http"):
        HttpEndpoint("localhost:8080")


def test_client_side_rate_limit_paces_requests(server):
    """D33: with max_rps = 10, 200 calls are spread over 19.9 virtual seconds, each within budget."""
    fake = FakeTime()
    client = client_for(server, fake, max_rps=10.0)
    sent_at = []
    for i in range(200):
        assert client.answer(f"q{i}") == "ok"
        sent_at.append(fake.now)
    assert len(server.seen) == 200
    assert sent_at[-1] - sent_at[0] == pytest.approx(19.9)
    # never more than 10 requests in any 1-second window
    assert all(sent_at[i + 10] - sent_at[i] >= 1.0 - 1e-9 for i in range(len(sent_at) - 10))

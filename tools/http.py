"""HTTP-backed tools: one GET to a configured endpoint, bounded in time and size, retried with care.

Any tool can answer through a remote service (``WikiSearch(endpoint=URL)``, ``QA(endpoint=URL)``)::

    client = HttpClient(HttpEndpoint("http://127.0.0.1:8080/search", response_field="result"))
    client.answer("Brown Act")   # GET /search?query=Brown+Act -> {"result": "..."} -> "..."

What a call guarantees (tests/test_http_tools.py runs each case against a loopback server):

* The model's text goes only into the ``query`` parameter: scheme, host, path and every other
  parameter are fixed by configuration, and redirects are not followed (no SSRF through a call).
* A **total deadline** per call (``deadline_s``) covering connects, retries, backoff, the status
  line and headers, and the body. requests' ``timeout=`` is only an idle timeout (a slow-drip reply
  with ``timeout=1`` took 5.5 s, observed; headers trickled a byte every 0.2 s held a call with a
  1 s deadline for as long as the server liked, 8 s in tests/reliability/test_hostile_servers.py),
  so each attempt gets ``min(timeout, time left)``, the body is read piece by piece with a deadline
  check after each piece, and a watchdog shuts the connection's socket down when the deadline
  passes, which ends any read in progress (the call then fails with ``timeout``). Name resolution
  happens before a socket exists and is not covered: configure endpoints by IP or a local resolver.
* Retries follow a urllib3 :class:`~urllib3.util.Retry` policy (its counters, status list,
  backoff schedule and Retry-After parsing) on connection errors and on 429/500/502/503/504; no
  retry on other 4xx, nor by default on read timeouts (a server that hung once is likely to hang
  again). We run the loop ourselves rather than mounting the Retry on the adapter so that sleeps
  are injectable and never pass the deadline. A Retry-After above ``max_retry_after_s`` fails fast.
* The body is streamed and capped at ``max_bytes``; a non-JSON body, a JSON body without the
  configured string field, an HTML page with status 200, or a field that is not valid text (a lone
  surrogate, NUL or another control character) give ``ToolError("bad_response")``. A
  ``Retry-After`` that is neither seconds nor a date (``soon``, ``-5``) falls back to the backoff.
* The model's input must be valid text: one that cannot be encoded as UTF-8 (a lone surrogate)
  is ``ToolError("parse")``, never sent.
* Failures are :class:`ToolError` with reason ``timeout``, ``connect``, ``http_<status>`` or
  ``bad_response`` and a one-line message.
"""

from __future__ import annotations

import dataclasses
import json
import re
import socket
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import (
    ConnectTimeoutError,
    InvalidHeader,
    MaxRetryError,
    ProtocolError,
    ReadTimeoutError,
)
from urllib3.util import Retry

from tools.base import ToolError

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # C0 controls but tab, newline, CR; DEL

# --- The deadline watchdog: which connection a call is using, so it can be cut at the deadline ---

_CURRENT = threading.local()  # .call: the _Watch of the call running in this thread


class _Watch:
    """One call's deadline: the connection it currently uses, and whether the deadline cut it."""

    def __init__(self):
        self.conn = None
        self.fired = False
        self.lock = threading.Lock()

    def use(self, conn) -> None:
        with self.lock:
            self.conn = conn
            if self.fired:
                self._cut()

    def fire(self) -> None:
        with self.lock:
            self.fired = True
            self._cut()

    def _cut(self) -> None:
        sock = getattr(self.conn, "sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # a blocked recv returns at once
            except OSError:
                pass


class _Watched:
    """Mixin: a connection registers with the current call's deadline watchdog before each request."""

    def request(self, *args, **kwargs):
        watch = getattr(_CURRENT, "call", None)
        if watch is not None:
            watch.use(self)
        return super().request(*args, **kwargs)


class _WatchedHTTPConnection(_Watched, HTTPConnection):
    pass


class _WatchedHTTPSConnection(_Watched, HTTPSConnection):
    pass


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


class _WatchedAdapter(HTTPAdapter):
    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}


@dataclasses.dataclass(frozen=True)
class HttpEndpoint:
    """Where and how to ask. Only ``query`` comes from the model; everything else is config."""

    url: str
    param: str = "query"
    fixed_params: tuple[tuple[str, str], ...] = ()
    response_field: str = "result"
    connect_timeout_s: float = 2.0
    read_timeout_s: float = 5.0
    deadline_s: float = 10.0
    retries: int = 2  # total retries after the first attempt
    read_retries: int = 0
    backoff_factor: float = 0.5  # urllib3's schedule: 0, 2f, 4f, ... between attempts
    max_retry_after_s: float = 10.0
    max_bytes: int = 1 << 20
    max_rps: float | None = None  # client-side pacing: at most this many requests per second

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"endpoint must be an http(s) URL with a host, got {self.url!r}")
        if self.deadline_s <= 0 or self.max_bytes <= 0:
            raise ValueError("deadline_s and max_bytes must be positive")


def _one_line(text: str, limit: int = 160) -> str:
    return " ".join(str(text).split())[:limit]


class HttpClient:
    """Runs calls against one :class:`HttpEndpoint`. ``sleep`` and ``clock`` are injectable."""

    def __init__(
        self,
        endpoint: HttpEndpoint,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.endpoint = endpoint
        self.sleep = sleep
        self.clock = clock
        self._session: requests.Session | None = None
        self.requests_sent = 0
        self._next_slot = float("-inf")  # earliest time the next request may go (max_rps)
        self._pace_lock = threading.Lock()

    def __getstate__(self) -> dict:
        # Sessions hold sockets and locks cannot be pickled: make new ones after unpickling.
        return dict(self.__dict__, _session=None, _pace_lock=None)

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._pace_lock = threading.Lock()

    @property
    def session(self) -> requests.Session:
        if self._session is None:
            self._session = requests.Session()
            self._session.trust_env = False  # no proxies or .netrc credentials from the environment
            for prefix in ("http://", "https://"):  # connections the deadline watchdog can cut
                self._session.mount(prefix, _WatchedAdapter())
        return self._session

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    def _policy(self) -> Retry:
        e = self.endpoint
        return Retry(
            total=e.retries,
            connect=e.retries,
            read=e.read_retries,
            status=e.retries,
            other=0,
            redirect=0,
            allowed_methods={"GET"},
            status_forcelist=RETRY_STATUSES,
            backoff_factor=e.backoff_factor,
            respect_retry_after_header=True,
            raise_on_status=False,
        )

    def _wait(self, seconds: float, deadline: float, failure: ToolError) -> None:
        if seconds <= 0:
            return
        if self.clock() + seconds >= deadline:
            raise failure  # waiting would pass the deadline: fail now instead
        self.sleep(seconds)

    def _pace(self, deadline: float, host: str) -> None:
        """Space requests ``1 / max_rps`` apart (retries included), so a service's rate limit is
        respected before it has to answer 429."""
        if not self.endpoint.max_rps:
            return
        with self._pace_lock:
            now = self.clock()
            start = max(now, self._next_slot)
            if start >= deadline:
                raise ToolError(
                    "timeout", f"rate limit of {self.endpoint.max_rps}/s for {host} leaves no time"
                )
            self._next_slot = start + 1.0 / self.endpoint.max_rps
        if start > now:
            self.sleep(start - now)

    def get(self, query: str) -> bytes:
        """The body of a successful reply to ``GET url?param=query``; :class:`ToolError` otherwise."""
        e = self.endpoint
        try:
            query.encode("utf-8")
        except UnicodeEncodeError:
            raise ToolError("parse", "the input is not valid text (it holds a lone surrogate)") from None
        host = urlsplit(e.url).netloc
        deadline = self.clock() + e.deadline_s
        watch = _Watch()
        timer = threading.Timer(e.deadline_s, watch.fire)
        timer.daemon = True
        timer.start()
        _CURRENT.call = watch
        try:
            return self._get(query, host, deadline, watch)
        except ToolError as err:
            if watch.fired and err.reason != "timeout":  # the watchdog cut it: say so
                raise ToolError(
                    "timeout", f"{host} did not finish within the {e.deadline_s} s deadline"
                ) from None
            raise
        finally:
            _CURRENT.call = None
            timer.cancel()

    def _get(self, query: str, host: str, deadline: float, watch: _Watch) -> bytes:
        e = self.endpoint
        params = [*e.fixed_params, (e.param, query)]
        retry = self._policy()
        while True:
            remaining = deadline - self.clock()
            if remaining <= 0:
                raise ToolError("timeout", f"no reply from {host} within the {e.deadline_s} s deadline")
            self._pace(deadline, host)
            remaining = deadline - self.clock()
            timeout = (min(e.connect_timeout_s, remaining), min(e.read_timeout_s, remaining))
            self.requests_sent += 1
            try:
                resp = self.session.get(
                    e.url, params=params, timeout=timeout, stream=True, allow_redirects=False
                )
            except requests.RequestException as exc:
                if watch.fired:
                    raise ToolError(
                        "timeout", f"{host} did not answer within the {e.deadline_s} s deadline"
                    ) from None
                failure, error = self._classify(exc, host)
                try:
                    retry = retry.increment("GET", e.url, error=error)
                except (MaxRetryError, ConnectTimeoutError, ReadTimeoutError, ProtocolError):
                    raise failure from None
                self._wait(retry.get_backoff_time(), deadline, failure)
                continue
            with resp:
                status = resp.status_code
                if status in RETRY_STATUSES:
                    failure = ToolError(
                        f"http_{status}", f"{host} answered {status} {_one_line(resp.reason, 60)}"
                    )
                    try:
                        retry = retry.increment("GET", e.url, response=resp.raw)
                    except MaxRetryError:
                        raise failure from None
                    try:
                        wait = retry.get_retry_after(resp.raw)
                    except InvalidHeader:  # neither seconds nor a date ("soon", "-5"): back off instead
                        wait = None
                    if wait is None:
                        wait = retry.get_backoff_time()
                    elif wait > e.max_retry_after_s:
                        raise ToolError(
                            f"http_{status}",
                            f"{host} asked to retry after {wait:.0f} s (more than {e.max_retry_after_s} s)",
                        )
                    self._wait(wait, deadline, failure)
                    continue
                if status >= 300:
                    raise ToolError(
                        f"http_{status}", f"{host} answered {status} {_one_line(resp.reason, 60)}"
                    )
                body = self._read_body(resp, deadline, host)
                if watch.fired:  # the cut socket ended the body early: not a complete reply
                    raise ToolError("timeout", f"{host} did not finish its reply within {e.deadline_s} s")
                return body

    def _classify(self, exc: requests.RequestException, host: str) -> tuple[ToolError, Exception]:
        """The ToolError to raise if no retry is left, and the urllib3 error that tells ``Retry``
        which counter to use. A read timeout can arrive as ``ConnectionError`` (observed)."""
        text = _one_line(exc)
        if isinstance(exc, requests.ConnectTimeout):
            return ToolError("timeout", f"connecting to {host} timed out"), ConnectTimeoutError(text)
        if isinstance(exc, requests.Timeout) or "timed out" in text.lower():
            return ToolError("timeout", f"{host} did not answer in time"), ReadTimeoutError(None, "", text)
        if isinstance(exc, requests.ConnectionError):
            return ToolError("connect", f"cannot connect to {host}: {text}"), ConnectTimeoutError(text)
        return ToolError("bad_response", f"{host}: {text}"), ProtocolError(text)

    def _read_body(self, resp: requests.Response, deadline: float, host: str) -> bytes:
        cap = self.endpoint.max_bytes
        declared = resp.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > cap:
            raise ToolError("bad_response", f"{host} sent {declared} bytes (cap {cap})")
        body = bytearray()
        while True:
            if self.clock() >= deadline:
                raise ToolError(
                    "timeout", f"{host} did not finish its reply within {self.endpoint.deadline_s} s"
                )
            try:
                # read1 returns what one socket read gives, so a slow drip reaches the deadline check.
                chunk = resp.raw.read1(65536)
            except (ReadTimeoutError, requests.Timeout):
                raise ToolError("timeout", f"{host} stopped sending its reply") from None
            except (ProtocolError, requests.RequestException, OSError) as exc:
                raise ToolError("connect", f"{host} broke off its reply: {_one_line(exc)}") from None
            if not chunk:
                return bytes(body)
            body += chunk
            if len(body) > cap:
                raise ToolError("bad_response", f"{host} sent more than {cap} bytes")

    def get_json(self, query: str) -> Any:
        body = self.get(query)
        try:
            return json.loads(body)
        except ValueError:
            raise ToolError(
                "bad_response", f"reply is not JSON: {_one_line(body[:60].decode('utf-8', 'replace'))!r}"
            )

    def answer(self, query: str) -> str:
        """The configured field of the JSON reply, as text."""
        data = self.get_json(query)
        field = self.endpoint.response_field
        value = data.get(field) if isinstance(data, dict) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or not value.strip():
            raise ToolError("bad_response", f"reply has no non-empty string field {field!r}")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ToolError(
                "bad_response", f"reply field {field!r} is not valid text (a lone surrogate)"
            ) from None
        if _CONTROL.search(value):
            raise ToolError("bad_response", f"reply field {field!r} holds control characters")
        return value

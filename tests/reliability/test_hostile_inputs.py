"""Hostile input files for ``toolformer augment`` (issue 18, "hostile input files").

Every case runs through the real pipeline (FnApiRunner, the scripted tiny model, the stub tool of
tests/test_pipeline.py), and the assertions are on the run's records: each bad record is exactly
one dead letter naming its file and line, counted in ``stats.json["bad_records"]``, and every good
record of the same file is written. Cases: random bytes (as JSONL and as ``.gz``), latin-1 lines
among UTF-8 lines (JSONL and text, a byte-order mark on line 1), a truncated ``.gz``, a ``.gz``
with a bad CRC, a gzip bomb cut at the file cap, over-long lines (one byte under and over the cap).
The fast run lowers the caps through the environment (``TOOLFORMER_MAX_INPUT_BYTES`` = 2 MiB,
``TOOLFORMER_MAX_LINE_BYTES`` = 64 KiB); the slow one uses the defaults (4 GiB, 16 MiB) on a
100 MB single line (plain and gzipped) and a 4.5 GiB gzip bomb, and measures peak RSS.

    python -m pytest -q tests/reliability/test_hostile_inputs.py
    python -m pytest -q -s -m slow tests/reliability/test_hostile_inputs.py
"""

from __future__ import annotations

import gzip
import json
import random
import subprocess
import sys
import zlib
from collections import Counter
from pathlib import Path

import pytest

from tests.reliability.conftest import REPO, subprocess_env
from tests.test_pipeline import read_kind, run, scripted_dir, settings, write_jsonl  # noqa: F401 (fixture)
from toolformer.call_format import strip_calls

pytestmark = pytest.mark.usefixtures("one_thread")

FILE_CAP, LINE_CAP = 2 << 20, 64 << 10  # the fast run's caps (environment overrides)


def doc(doc_id: str, text: str | None = None) -> dict:
    """A good record; no comma, so the stub tool is not routed to it (cheap) unless asked."""
    return {"doc_id": doc_id, "text": text or f"Document {doc_id} is fine."}


def exact_line(doc_id: str, size: int) -> bytes:
    """A valid JSONL record of exactly ``size`` bytes (without its newline)."""
    head = json.dumps({"doc_id": doc_id, "text": ""}).encode()
    return head[:-2] + b"a" * (size - len(head)) + b'"}'


def random_lines(rng: random.Random, first_line: int, blobs: int, size: int) -> tuple[list[bytes], list[int]]:
    """``blobs`` random byte strings, each its own line(s), and the numbers of the lines among them
    that are not blank (each must be one dead letter; a blank line is skipped, as in any JSONL)."""
    rows, bad, n = [], [], first_line
    for _ in range(blobs):
        blob = rng.randbytes(size)
        rows.append(blob)
        for segment in blob.split(b"\n"):
            if segment.strip():
                bad.append(n)
            n += 1
    return rows, bad


def gzip_with_flush_points(lines: list[bytes]) -> tuple[bytes, list[int]]:
    """A gzip of ``lines`` (each + newline) and, per line, the byte offset after which every line
    up to it decompresses (a sync flush after each line)."""
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    out, ends = b"", []
    for line in lines:
        out += c.compress(line + b"\n") + c.flush(zlib.Z_SYNC_FLUSH)
        ends.append(len(out))
    return out + c.flush(), ends


@pytest.fixture(scope="module")
def hostile(scripted_dir, tmp_path_factory) -> dict:  # noqa: F811 (the imported fixture)
    """One run over every fast hostile file, the expected dead letters (reason, file, line) and the
    ids of every good record."""
    tmp = tmp_path_factory.mktemp("hostile")
    rng = random.Random(18)
    good: set[str] = set()
    bad: list[tuple[str, str, int]] = []

    def good_rows(prefix: str, k: int, commas: int = 0) -> list[dict]:
        rows = [doc(f"{prefix}{i}", f"Item {i}, then {i + 1}." if i < commas else None) for i in range(k)]
        good.update(r["doc_id"] for r in rows)
        return rows

    # Random bytes between good lines, one file; and random bytes named .gz.
    blobs, bad_lines = random_lines(rng, 3, 6, 4096)
    write_jsonl(tmp / "random.jsonl", [*good_rows("r", 2, commas=1), *blobs, *good_rows("r-after", 2)])
    bad += [("", "random.jsonl", n) for n in bad_lines]  # any read reason: JSON, UTF-8, not an object
    (tmp / "noise.jsonl.gz").write_bytes(rng.randbytes(8192))
    bad.append(("corrupt_gzip", "noise.jsonl.gz", 1))

    # Mixed encodings: latin-1 lines among UTF-8 ones; a byte-order mark before line 1.
    utf8 = [doc("m-bom", "Caf\u00e9 au lait, bitte."), doc("m-cjk", "\u4e2d\u6587 text \U0001f600 ok")]
    latin1 = [json.dumps(doc("m-latin1-a", "caf\u00e9 cr\u00e8me"), ensure_ascii=False).encode("latin-1"),
              "na\u00efve \u00fcber r\u00e9sum\u00e9".encode("latin-1")]
    good.update(["m-bom", "m-cjk", "m-last"])
    rows = [b"\xef\xbb\xbf" + json.dumps(utf8[0], ensure_ascii=False).encode(), latin1[0],
            json.dumps(utf8[1], ensure_ascii=False).encode(), latin1[1], json.dumps(doc("m-last")).encode()]
    write_jsonl(tmp / "mixed.jsonl", rows)
    bad += [("invalid_utf8", "mixed.jsonl", 2), ("invalid_utf8", "mixed.jsonl", 4)]
    text_lines = [
        "\ufeffPremi\u00e8re ligne, en UTF-8.".encode(),
        "Zweite Zeile f\u00fcr Latin-1".encode("latin-1"),
        "Third line \u2603 snowman".encode(),
        b"",
        "Fifth line, \u00e9t\u00e9".encode("cp1252"),
    ]
    write_jsonl(tmp / "mixed.txt", text_lines)
    good.update(["mixed.txt:1", "mixed.txt:3"])
    bad += [("invalid_utf8", "mixed.txt", 2), ("invalid_utf8", "mixed.txt", 5)]

    # A truncated .gz: 300 lines, cut 5 bytes into line 201's compressed bytes.
    lines = [json.dumps(r).encode() for r in good_rows("t", 300, commas=1)]
    data, ends = gzip_with_flush_points(lines)
    (tmp / "truncated.jsonl.gz").write_bytes(data[: ends[199] + 5])
    good.difference_update(f"t{i}" for i in range(200, 300))  # never written: the file ends in line 201
    bad.append(("truncated_gzip", "truncated.jsonl.gz", 201))

    # A .gz whose CRC trailer is wrong: all 20 lines decompress, then the check fails.
    crc = bytearray(gzip.compress(b"".join(json.dumps(r).encode() + b"\n" for r in good_rows("c", 20))))
    crc[-8] ^= 0xFF
    (tmp / "crc.jsonl.gz").write_bytes(bytes(crc))
    bad.append(("corrupt_gzip", "crc.jsonl.gz", 21))

    # A gzip bomb: 5 good lines, then 16 MiB of zeros (~16 KB compressed), then a line past the cap.
    bomb = b"".join(json.dumps(r).encode() + b"\n" for r in good_rows("b", 5, commas=1))
    zeros = zlib.compressobj(9, zlib.DEFLATED, 31)
    bomb_gz = gzip.compress(bomb) + zeros.compress(b"\0" * (16 << 20)) + zeros.flush()
    after_cap = gzip.compress(json.dumps(doc("b-after-cap")).encode() + b"\n")
    (tmp / "bomb.jsonl.gz").write_bytes(bomb_gz + after_cap)
    bad.append(("input_too_large", "bomb.jsonl.gz", 6))  # line 6 onwards is not read (by design)

    # Over-long lines: exactly the cap (kept), one byte over, 200 KB (JSON and text), 1 MB last line.
    long_rows = [*good_rows("l", 2), exact_line("l-at-cap", LINE_CAP), exact_line("l-over", LINE_CAP + 1),
                 json.dumps(doc("l-huge", "word " * 40_000)).encode(), *good_rows("l-after", 2),
                 b'{"doc_id": "l-last", "text": "' + b"x" * (1 << 20)]  # no newline, no closing quote
    write_jsonl(tmp / "long.jsonl", long_rows)
    (tmp / "long.jsonl").write_bytes((tmp / "long.jsonl").read_bytes()[:-1])
    good.add("l-at-cap")
    bad += [("line_too_long", "long.jsonl", n) for n in (4, 5, 8)]
    write_jsonl(tmp / "long.txt", [b"short line one", b"y" * (200 << 10), b"short line three"])
    good.update(["long.txt:1", "long.txt:3"])
    bad.append(("line_too_long", "long.txt", 2))

    sizes = {p.name: p.stat().st_size for p in tmp.iterdir()}
    assert max(sizes.values()) < FILE_CAP  # only the bomb goes past the file cap, once decompressed
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TOOLFORMER_MAX_INPUT_BYTES", str(FILE_CAP))
        mp.setenv("TOOLFORMER_MAX_LINE_BYTES", str(LINE_CAP))
        stats = run(settings(scripted_dir), sorted(tmp.glob("*.*")), tmp / "run")
    return {"out": tmp / "run", "stats": stats, "good": good, "bad": bad}


def where(e: dict) -> tuple[str, int]:
    name, _, rest = e["detail"].partition(" line ")
    return name, int(rest.split(":")[0])


def test_every_bad_record_is_one_dead_letter_naming_file_and_line(hostile):
    errors = [e for e in read_kind(hostile["out"], "errors") if e["stage"] == "read"]
    got = sorted(where(e) for e in errors)
    assert got == sorted((name, n) for _, name, n in hostile["bad"])  # exactly these, none twice
    expected = Counter(reason for reason, _, _ in hostile["bad"] if reason)
    reasons = Counter(e["reason"] for e in errors if not e["detail"].startswith("random.jsonl"))
    assert reasons == expected
    stats = hostile["stats"]
    assert sum(stats["bad_records"].values()) == stats["documents"]["docs_bad"] == len(hostile["bad"])
    random_reasons = Counter(e["reason"] for e in errors if e["detail"].startswith("random.jsonl"))
    assert set(random_reasons) <= {"invalid_utf8", "invalid_json", "not_an_object"}
    assert stats["bad_records"] == dict(sorted((expected + random_reasons).items()))
    figures = {"bad_records": stats["bad_records"], "random_jsonl": dict(random_reasons), **stats["documents"]}
    print("FIGURES hostile_inputs", json.dumps(figures))
    latin1 = next(e["detail"] for e in errors if where(e) == ("mixed.jsonl", 2))
    assert latin1 == "mixed.jsonl line 2: not UTF-8 (invalid continuation byte at byte 37)"


def test_every_good_record_is_written(hostile):
    texts = {t["doc_id"]: t for t in read_kind(hostile["out"], "texts")}
    assert set(texts) == hostile["good"]
    stats = hostile["stats"]["documents"]
    assert stats["docs_read"] == stats["texts_written"] == len(hostile["good"]) == 241
    plain = {k: strip_calls(t["text"]) for k, t in texts.items()}  # without the inserted calls
    assert plain["m-bom"] == "Caf\u00e9 au lait, bitte."  # the byte-order mark is dropped
    assert plain["mixed.txt:1"] == "Premi\u00e8re ligne, en UTF-8."
    assert texts["m-cjk"]["text"] == "\u4e2d\u6587 text \U0001f600 ok"
    assert len(texts["l-at-cap"]["text"]) == LINE_CAP - len('{"doc_id": "l-at-cap", "text": ""}')
    # the documents with a comma went through the model and the tool as usual
    assert {t["doc_id"] for t in texts.values() if t["calls"]} == {"r0", "t0", "b0", "m-bom", "mixed.txt:1"}
    assert "b-after-cap" not in texts and "t200" not in texts  # past the cap / past the truncation


def test_caps_come_from_the_environment_or_the_caller():
    from pipelines.augment import ParseFileFn
    from pipelines.documents import MAX_FILE_BYTES, MAX_LINE_BYTES, InputLimits, input_limits
    from toolformer.errors import UserError

    assert input_limits() == InputLimits(MAX_FILE_BYTES, MAX_LINE_BYTES) == InputLimits(4 << 30, 16 << 20)
    assert ParseFileFn("text", InputLimits(10, 5)).limits == (10, 5)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TOOLFORMER_MAX_INPUT_BYTES", "1_000")
        assert input_limits() == ParseFileFn("text").limits == (1000, MAX_LINE_BYTES)
        assert input_limits(max_file_bytes=7) == (7, MAX_LINE_BYTES)
        for bad in ("lots", "0", "-1"):
            mp.setenv("TOOLFORMER_MAX_LINE_BYTES", bad)
            with pytest.raises(UserError, match="MAX_LINE_BYTES|max_line_bytes"):
                input_limits()


class Recording:
    """A binary stream that records every read size; ``read()`` of the whole stream fails."""

    def __init__(self, data: bytes):
        self.data, self.pos, self.sizes = data, 0, []

    def read(self, size: int = -1) -> bytes:
        assert size is not None and size > 0, "read the whole stream"
        self.sizes.append(size)
        out = self.data[self.pos : self.pos + size]
        self.pos += len(out)
        return out


@pytest.mark.parametrize("gz", [False, True])
def test_files_are_read_in_chunks_never_whole(gz):
    from pipelines.documents import CHUNK_BYTES, read_records

    raw = b"".join(json.dumps(doc(f"d{i}", "x" * 1000)).encode() + b"\n" for i in range(5000))  # 5 MB
    stream = Recording(gzip.compress(raw) if gz else raw)
    records = list(read_records("big.jsonl.gz" if gz else "big.jsonl", stream))
    assert [r["doc_id"] for _, r in records] == [f"d{i}" for i in range(5000)]
    assert max(stream.sizes) <= CHUNK_BYTES and len(stream.sizes) >= (2 if gz else 5)


# --- Slow: a 100 MB single line and a 4.5 GiB bomb at the default caps; peak RSS ------------------

CHILD = r"""
import json, resource, sys
import torch
torch.set_num_threads(1)
from pipelines.augment import run_augment
from pipelines.documents import read_records
from tests.test_pipeline import settings

def peak_mb():
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)

def hwm_mb():  # the same peak from /proc, as a cross-check
    status = open("/proc/self/status").read()
    return round(int(status.split("VmHWM:")[1].split()[0]) / 1024, 1)

model, control, hostile, out = sys.argv[1:]
figures = {"after_imports_mb": peak_mb()}
for path in hostile.split(","):  # the reader alone, first: nothing else has raised the peak yet
    figures[path.rsplit("/", 1)[1]] = [r["reason"] for kind, r in read_records(path) if kind == "error"]
figures["after_reading_mb"] = peak_mb()
s = settings(model)
run_augment(s, [control], out + "/control", False, [])
figures["after_control_mb"] = peak_mb()
stats = run_augment(s, hostile.split(","), out + "/hostile", False, [])[1]
figures["after_hostile_mb"] = peak_mb()
figures["vmhwm_mb"] = hwm_mb()
print("RESULT " + json.dumps({"figures": figures, "stats": stats}))
"""


@pytest.mark.slow
def test_100mb_line_and_gzip_bomb_at_default_caps_bounded_memory(scripted_dir, tmp_path):  # noqa: F811
    """Peak RSS (``ru_maxrss`` of a fresh process): of read_records alone over these files, against
    the process after its imports; and of a pipeline run over them, against a run of the same
    process over the good records alone just before."""
    from pipelines.documents import MAX_FILE_BYTES, MAX_LINE_BYTES

    good = [json.dumps(doc(f"g{i}", "Item 0, then 1." if i == 0 else None)).encode() for i in range(3)]
    control = write_jsonl(tmp_path / "control.jsonl", good)
    huge = b'{"doc_id": "huge", "text": "' + b"word " * 20_000_000 + b'"}'  # 100 MB, one line
    lines = [*good[:2], huge, good[2]]
    write_jsonl(tmp_path / "line.jsonl", lines)
    with gzip.open(tmp_path / "line.jsonl.gz", "wb", compresslevel=6) as f:
        for line in lines:
            f.write(line.replace(b'"g', b'"z') + b"\n")
    member = gzip.compress(b"\0" * (64 << 20), compresslevel=9)  # 64 MiB of zeros, ~64 KB
    bomb = gzip.compress(b"".join(g.replace(b'"g', b'"b') + b"\n" for g in good)) + member * 72  # 4.5 GiB
    (tmp_path / "bomb.jsonl.gz").write_bytes(bomb)
    files = [tmp_path / n for n in ("line.jsonl", "line.jsonl.gz", "bomb.jsonl.gz")]
    # Through sh, which forks: Linux carries the peak of the image a process was exec'd from into
    # its ru_maxrss, and a child exec'd straight from pytest would start at pytest's ~570 MB.
    proc = subprocess.run(
        ["sh", "-c", '"$@"; exit $?', "sh", sys.executable, "-c", CHILD, str(scripted_dir), str(control)]
        + [",".join(map(str, files)), str(tmp_path)],
        cwd=REPO,
        env={**subprocess_env(), "TOOLFORMER_MAX_INPUT_BYTES": "", "TOOLFORMER_MAX_LINE_BYTES": ""},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    out = tmp_path / "hostile"
    errors = sorted((e["reason"], e["detail"]) for e in read_kind(out, "errors"))
    assert [(r, d.split(":")[0]) for r, d in errors] == [
        ("input_too_large", "bomb.jsonl.gz line 4"),
        ("line_too_long", "line.jsonl line 3"),
        ("line_too_long", "line.jsonl.gz line 3"),
    ]
    assert f"more than {MAX_FILE_BYTES:,} bytes" in errors[0][1]
    assert f"100,000,030 bytes, above the {MAX_LINE_BYTES:,}-byte line cap" in errors[1][1]
    texts = {t["doc_id"] for t in read_kind(out, "texts")}
    assert texts == {f"{p}{i}" for p in "gzb" for i in range(3)}  # every good record, of all three files
    assert result["stats"]["bad_records"] == {"input_too_large": 1, "line_too_long": 2}
    figures = result["figures"]
    assert figures["line.jsonl"] == figures["line.jsonl.gz"] == ["line_too_long"]
    assert figures["bomb.jsonl.gz"] == ["input_too_large"]
    figures["reader_extra_mb"] = round(figures["after_reading_mb"] - figures["after_imports_mb"], 1)
    figures["extra_mb"] = round(figures["after_hostile_mb"] - figures["after_control_mb"], 1)
    figures["hostile_wall_s"] = result["stats"]["wall_seconds"]
    figures["read_s"] = result["stats"]["stage_seconds"].get("read")
    print("FIGURES hostile_files", json.dumps(figures))
    # a 16 MiB line buffer and 1 MiB chunks: neither the 100 MB line nor the 4 GiB are ever held
    assert figures["reader_extra_mb"] < 64 and figures["extra_mb"] < 64
    assert abs(figures["vmhwm_mb"] - figures["after_hostile_mb"]) < 16

"""Input in splits (issue #15, item 2): a large file is cut into byte ranges / row groups that
several workers read (pipelines/documents.py ``file_splits``, ``read_split``; pipelines/inputs.py).

The reader: for many split sizes (1 byte to the whole file) and chunk sizes, random files (CRLF,
empty and blank lines, a final line without a newline, lines longer than a split, bad JSON and
UTF-8, lines over the line cap, a file cap inside the file) give exactly the records of reading
the file as one split, every line once, with positions named by line number where known and by
byte offset elsewhere. ``.gz`` is one split; Parquet one per row group. The pipeline: a 3-split
file gives the same texts, candidates, dead letters and counts as the same file read as one split
(ids and positions aside, as documented), and the launcher's unit count (pipelines/totals.py)
reads the same documents.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import random
import re
from pathlib import Path

import pytest

from pipelines.documents import (
    BYTES,
    ROW_GROUP,
    WHOLE,
    InputLimits,
    Split,
    file_splits,
    read_records,
    read_split,
)
from tests.test_pipeline import (  # noqa: F401  (scripted_dir, reset_stub: fixtures used here)
    BAD_LINES,
    DOCS,
    MANY,
    read_kind,
    reset_stub,
    run,
    scripted_dir,
    settings,
    without_timings,
)

BIG = InputLimits(1 << 40, 1 << 40)


def line_numbers(data: bytes) -> dict[int, int]:
    """Byte offset of each line's first byte -> its line number (from 1)."""
    starts, pos = {0: 1}, 0
    for n, piece in enumerate(data.split(b"\n")[:-1], start=2):
        pos += len(piece) + 1
        starts[pos] = n
    return starts


def by_line(record: dict, name: str, starts: dict[int, int]) -> dict:
    """``record`` with byte-offset positions (``name at byte B``, ``name@B``) as line numbers."""
    record = dict(record)
    if record.get("detail"):
        detail = re.sub(rf"^{re.escape(name)} at byte (\d+)", lambda m: f"{name} line {starts[int(m[1])]}",
                        record["detail"])
        record["detail"] = re.sub(r"reading stopped at byte (\d+)$",
                                  lambda m: f"reading stopped at line {starts[int(m[1])]}", detail)
    if str(record.get("doc_id", "")).startswith(f"{name}@"):
        record["doc_id"] = f"{name}:{starts[int(record['doc_id'].split('@')[1])]}"
    return record


def split_read(name: str, data: bytes, split_size: int, limits: InputLimits, chunk: int):
    """The splits of ``data`` and their records, each split read on its own stream (as by a worker)."""
    splits = file_splits(name, len(data), limits, split_size)
    out = []
    for split in splits:
        out += list(read_split(split, io.BytesIO(data), "text", limits, chunk))
    return splits, out


def random_file(rng: random.Random, text: bool) -> bytes:
    rows = []
    for i in range(rng.randint(1, 25)):
        kind = rng.choice(["good"] * 5 + ["empty", "blank", "badjson", "latin1", "long", "notobj"])
        if kind == "good":
            body = "x" * rng.choice([0, 1, 5, 30, 90])
            record = {"doc_id": f"r{i}", "text": f"t{i} {body}"}
            row = (f"line {i} {body}" if text else json.dumps(record)).encode()
        elif kind == "empty":
            row = b""
        elif kind == "blank":
            row = b"  \t "
        elif kind == "badjson":
            row = b"{oops " + str(i).encode()
        elif kind == "latin1":
            row = f'{{"doc_id": "l{i}", "text": "caf\u00e9"}}'.encode("latin-1")
        elif kind == "long":
            row = (json.dumps({"doc_id": f"g{i}", "text": "y" * 150}) if not text else "z" * 150).encode()
        else:
            row = b"[1, 2]"
        if rng.random() < 0.3:
            row += b"\r"  # CRLF
        rows.append(row)
    data = b"\n".join(rows)
    if rng.random() < 0.6:
        data += b"\n"  # else the last line has no newline
    if rng.random() < 0.2:
        data = b"\xef\xbb\xbf" + data  # a byte-order mark on line 1
    return data


@pytest.mark.parametrize("text", [False, True], ids=["jsonl", "txt"])
def test_splits_give_every_line_once_for_any_split_size(text):
    """Random files, split sizes 1..len+1, chunk sizes 1..64: the records of the splits, in split
    order, are the one-split records (positions mapped back to line numbers)."""
    rng = random.Random(15 + text)
    name = "f.txt" if text else "f.jsonl"
    checked = 0
    for trial in range(40):
        data = random_file(rng, text)
        caps = [BIG, InputLimits(1 << 40, 100)]  # a line cap below the "long" lines
        if trial % 4 == 0 and len(data) > 10:  # a file cap inside the file
            caps.append(InputLimits(rng.randint(1, len(data) - 1), 100))
        for limits in caps:
            whole = list(read_records(name, io.BytesIO(data), "text", limits, split_size=len(data) + 1))
            starts = line_numbers(data)
            sizes = sorted({*range(1, min(len(data), 40) + 1), len(data) - 1, len(data), len(data) + 1,
                            *rng.sample(range(1, len(data) + 2), min(10, len(data)))} - {0})
            for size in sizes:
                splits, got = split_read(name, data, size, limits, rng.choice([1, 3, 7, 64]))
                assert [(k, by_line(r, name, starts)) for k, r in got] == whole, (data, size, limits)
                span = min(len(data), limits.max_file_bytes + 1)  # ranges start at the cap at most
                if size < span:
                    assert len(splits) > 1 and {s.kind for s in splits} == {BYTES}
                    assert splits[0].start == 0 and splits[-1].end == span
                    assert all(a.end == b.start for a, b in zip(splits, splits[1:]))
                checked += 1
            # read_records reads a file above the split size through its splits: the same records
            again = read_records(name, data, "text", limits, 7)
            assert [(k, by_line(r, name, starts)) for k, r in again] == whole
    assert checked > 2000


def test_positions_are_line_numbers_in_the_first_range_and_byte_offsets_after():
    rows = [b"first line", b"\xff bad utf-8", b"", b"fourth line", b"\xfe bad again", b"sixth line"]
    data = b"\n".join(rows) + b"\n"
    got = list(read_records("a.txt", data, split_size=20))
    offset = data.index(b"\xfe")
    assert [(k, r["doc_id"] if k == "doc" else r["detail"].split(":")[0]) for k, r in got] == [
        ("doc", "a.txt:1"),
        ("error", "a.txt line 2"),  # the first range (bytes 0-19) knows its line numbers
        ("doc", f"a.txt@{data.index(b'fourth')}"),  # the next ranges do not: byte offsets
        ("error", f"a.txt at byte {offset}"),
        ("doc", f"a.txt@{data.index(b'sixth')}"),
    ]
    assert data[offset:].startswith(b"\xfe")  # the offset is the line's first byte
    # one split (the file is no larger than the split size): today's ids and details
    assert [r.get("doc_id") or r["detail"][:12] for _, r in read_records("a.txt", data)] == [
        "a.txt:1", "a.txt line 2", "a.txt:4", "a.txt line 5", "a.txt:6"]


def test_a_line_longer_than_several_splits_is_one_dead_letter_and_the_bom_only_leaves_line_one():
    data = b"\xef\xbb\xbf" + json.dumps({"doc_id": "a", "text": "\ufeffkept"}).encode() + b"\n"
    data += b'{"doc_id": "huge", "text": "' + b"w" * 5000 + b'"}\n'
    data += json.dumps({"doc_id": "b", "text": "end"}).encode()  # no newline
    limits = InputLimits(1 << 40, 1000)
    splits, got = split_read("l.jsonl", data, 300, limits, 64)
    assert len(splits) == 18
    assert [r.get("doc_id") or r["reason"] for _, r in got] == ["a", "line_too_long", "b"]
    assert got[0][1]["text"] == "\ufeffkept"  # only the file's own byte-order mark is dropped
    assert got[1][1]["detail"].startswith("l.jsonl line 2: 5,030 bytes, above the 1,000-byte line cap")


def test_a_file_cap_inside_a_split_file_is_one_dead_letter():
    rows = [json.dumps({"doc_id": f"d{i}", "text": "t" * 20}).encode() for i in range(100)]
    data = b"\n".join(rows) + b"\n"
    cap = len(data) // 2
    limits = InputLimits(cap, 1 << 20)
    splits, got = split_read("c.jsonl", data, 256, limits, 64)
    assert splits[-1].end == cap + 1 < len(data)  # nothing past the cap is read
    whole = list(read_records("c.jsonl", data, "text", limits, split_size=len(data)))
    assert [(k, by_line(r, "c.jsonl", line_numbers(data))) for k, r in got] == whole
    assert [r["reason"] for k, r in got if k == "error"] == ["input_too_large"]
    in_progress = data.rindex(b"\n", 0, cap) + 1  # the line going past the cap: named, not read
    assert got[-1][1]["detail"] == (f"c.jsonl at byte {in_progress}: more than {cap:,} bytes (decompressed), "
                                    f"the file cap; reading stopped at byte {in_progress}")


def test_compressed_files_are_one_split_and_the_launcher_says_so(tmp_path, caplog):
    from pipelines.inputs import split_inputs

    raw = b"".join(json.dumps({"doc_id": f"z{i}", "text": f"{i} " * 50}).encode() + b"\n" for i in range(400))
    path = tmp_path / "big.jsonl.gz"
    path.write_bytes(gzip.compress(raw, compresslevel=1))
    size = path.stat().st_size
    assert file_splits(str(path), size, BIG, 100) == [Split(str(path), WHOLE)]
    got = list(read_records(str(path), None, "text", InputLimits(1 << 40, 50)))  # every line too long
    assert {r["detail"].split(":")[0] for _, r in got} == {f"big.jsonl.gz line {n}" for n in range(1, 401)}
    with pytest.MonkeyPatch.context() as mp, caplog.at_level(logging.WARNING, logger="pipelines.inputs"):
        mp.setenv("TOOLFORMER_SPLIT_BYTES", "100")
        split_inputs([str(path), str(tmp_path / "*.gz")])
    [message] = [r.getMessage() for r in caplog.records if "cannot be split" in r.getMessage()]
    assert "big.jsonl.gz" in message and "read whole by one worker" in message


def test_a_stream_that_cannot_seek_is_one_split():
    class Forward(io.RawIOBase):
        def __init__(self, data):
            self.inner = io.BytesIO(data)

        def readable(self):
            return True

        def readinto(self, b):
            chunk = self.inner.read(len(b))
            b[: len(chunk)] = chunk
            return len(chunk)

    data = b"one\ntwo\nthree\n"
    got = [r["doc_id"] for _, r in read_records("s.txt", Forward(data), split_size=4)]
    assert got == ["s.txt:1", "s.txt:2", "s.txt:3"]


def write_parquet(path: Path, rows: list[dict], group: int) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=group)
    return path


def parquet_rows() -> list[dict]:
    rows = [{"doc_id": f"p{i}", "text": f"Parquet row {i}, here." if i % 3 else f"Row {i}", "n": i}
            for i in range(35)]
    rows[22]["text"] = None  # row 23: no text
    return rows


def test_parquet_is_one_split_per_row_group(tmp_path):
    path = write_parquet(tmp_path / "p.parquet", parquet_rows(), group=10)
    size = path.stat().st_size
    splits = file_splits(str(path), size, BIG, 100)
    assert [(s.kind, s.start, s.end, s.first_row) for s in splits] == [
        (ROW_GROUP, 0, 10, 0), (ROW_GROUP, 1, 10, 10), (ROW_GROUP, 2, 10, 20), (ROW_GROUP, 3, 5, 30)]
    whole = list(read_records(str(path), None, split_size=size))
    assert file_splits(str(path), size, BIG, size) == [Split(str(path))]  # not above the split size
    got = []
    for split in splits:
        with open(path, "rb") as f:
            got += list(read_split(split, f))
    assert got == whole == list(read_records(str(path), None, split_size=100))
    assert [r["detail"] for k, r in got if k == "error"] == ["p.parquet row 23: no 'text' field"]
    # above the file cap: refused whole, as before, without reading it
    assert file_splits(str(path), size, InputLimits(size - 1, 1 << 20), 100) == [Split(str(path))]
    [(kind, dead)] = read_records(str(path), None, "text", InputLimits(size - 1, 1 << 20), 100)
    assert dead["reason"] == "input_too_large"
    # an unreadable footer: one split, whose read names the error
    (tmp_path / "bad.parquet").write_bytes(b"PAR1" + b"\0" * 500)
    assert file_splits(str(tmp_path / "bad.parquet"), 504, BIG, 100) == [Split(str(tmp_path / "bad.parquet"))]
    assert [r["reason"] for _, r in read_records(str(tmp_path / "bad.parquet"), None, split_size=100)] == [
        "invalid_parquet"]


# --- The pipeline: 3 splits against 1 ------------------------------------------------------------


def pipeline_inputs(folder: Path) -> tuple[list[Path], dict[str, bytes]]:
    """A JSONL file (tests/test_pipeline.py's good, bad and routed-out records, then 30 more), a
    text file (a bad UTF-8 line in each of 40 groups; two lines with a comma, so routed) and a
    Parquet file of three row groups (one row without text)."""
    folder.mkdir()
    rows = [json.dumps(d).encode() for d in DOCS] + BAD_LINES + [json.dumps(d).encode() for d in MANY]
    rows += [json.dumps({"doc_id": f"q{i}", "text": f"Plain note number {i}"}).encode() for i in range(30)]
    jsonl = b"\n".join(rows) + b"\n"
    groups = [[b"Plain line one", b"\xff not utf-8", b"", b"Another plain line\r"] for _ in range(40)]
    groups[0][0] = groups[30][0] = b"A line, with a comma."
    text = b"\n".join(line for group in groups for line in group) + b"\n"
    (folder / "docs.jsonl").write_bytes(jsonl)
    (folder / "notes.txt").write_bytes(text)
    write_parquet(folder / "rows.parquet", parquet_rows(), group=12)
    return sorted(folder.iterdir()), {"docs.jsonl": jsonl, "notes.txt": text}


def positions_as_lines(records: list[dict], data: dict[str, bytes]) -> list[dict]:
    out = []
    for r in records:
        for name, raw in data.items():
            r = by_line(r, name, line_numbers(raw))
        out.append(r)
    return sorted(out, key=lambda r: json.dumps(r, sort_keys=True))


@pytest.fixture(scope="module")
def split_runs(scripted_dir, tmp_path_factory):  # noqa: F811 (the imported fixture)
    """The inputs read as one split each, then with a split size of a third of the JSONL file."""
    tmp = tmp_path_factory.mktemp("splits")
    inputs, data = pipeline_inputs(tmp / "in")
    runs = {}
    for label, split_size in (("one", 1 << 30), ("three", len(data["docs.jsonl"]) // 3 + 1)):
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("TOOLFORMER_SPLIT_BYTES", str(split_size))
            splits = {p.name: file_splits(str(p), p.stat().st_size) for p in inputs}
            stats = run(settings(scripted_dir), inputs, tmp / label)
            from pipelines.totals import _documents

            counted = sorted(d["doc_id"] for d in _documents([str(tmp / "in" / "*")], [], "text"))
        runs[label] = {"out": tmp / label, "stats": stats, "splits": splits, "counted": counted}
    return runs, data


def test_a_three_split_file_gives_the_one_split_records(split_runs):
    from toolformer.call_format import strip_calls

    runs, data = split_runs
    one, three = runs["one"], runs["three"]
    assert [len(one["splits"][n]) for n in ("docs.jsonl", "notes.txt", "rows.parquet")] == [1, 1, 1]
    assert [len(three["splits"][n]) for n in ("docs.jsonl", "rows.parquet")] == [3, 3]
    assert len(three["splits"]["notes.txt"]) > 1
    # Dead letters: the same, positions past the first range named by byte offset.
    errors = read_kind(three["out"], "errors")
    assert positions_as_lines(errors, data) == read_kind(one["out"], "errors")
    assert any(" at byte " in e["detail"] for e in errors) and any(" line " in e["detail"] for e in errors)
    # JSONL and Parquet documents keep their ids: the same texts and candidates.
    def not_notes(rows):
        return [r for r in rows if "notes.txt" not in r["doc_id"]]

    for kind in ("texts", "candidates"):
        assert not_notes(read_kind(three["out"], kind)) == not_notes(read_kind(one["out"], kind)), kind
    # Text lines past the first range are "notes.txt@<offset>": the same lines (their calls are
    # sampled under their own ids, so they may differ).
    starts = line_numbers(data["notes.txt"])
    texts_one = {t["doc_id"]: strip_calls(t["text"]) for t in read_kind(one["out"], "texts")}
    ids_three = [t["doc_id"] for t in read_kind(three["out"], "texts")]
    texts_three = {by_line({"doc_id": t["doc_id"]}, "notes.txt", starts)["doc_id"]: strip_calls(t["text"])
                   for t in read_kind(three["out"], "texts")}
    assert texts_three == texts_one
    assert any(i.startswith("notes.txt@") for i in ids_three) and "notes.txt:1" in ids_three
    s1, s3 = without_timings(one["stats"]), without_timings(three["stats"])
    assert s1["documents"] == s3["documents"] and s1["bad_records"] == s3["bad_records"]
    assert s1["documents"]["docs_bad"] == len(BAD_LINES) + 40 + 1  # + the bad UTF-8 lines + row 23
    assert s1["tools"]["Calc"]["docs_routed"] == s3["tools"]["Calc"]["docs_routed"]


def test_the_launchers_count_reads_the_pipelines_documents(split_runs):
    runs, _ = split_runs
    for run_ in runs.values():
        assert run_["counted"] == sorted(t["doc_id"] for t in read_kind(run_["out"], "texts"))


@pytest.mark.slow  # ~90 s on a busy 2-core machine, most of it the cluster's start
def test_the_dask_runner_reads_the_same_splits(split_runs, scripted_dir, tmp_path):  # noqa: F811
    """The split steps are plain ParDos and a GroupByKey: ``--runner dask`` (a 2-worker local
    cluster) gives the in-process runner's records for the same split size."""
    pytest.importorskip("distributed")
    from pipelines.augment import run_augment

    runs, data = split_runs
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TOOLFORMER_SPLIT_BYTES", str(len(data["docs.jsonl"]) // 3 + 1))
        inputs = [str(runs["three"]["out"].parent / "in" / "*")]
        _, stats = run_augment(settings(scripted_dir, "threads=1"), inputs, str(tmp_path / "dask"), False,
                               ["--runner", "dask"], dask_workers=2)
    for kind in ("texts", "candidates", "errors"):
        assert read_kind(tmp_path / "dask", kind) == read_kind(runs["three"]["out"], kind), kind
    assert without_timings(stats)["documents"] == without_timings(runs["three"]["stats"])["documents"]

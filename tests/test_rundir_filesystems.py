"""The run directory on a Beam file system other than the local one (``--output gs://b/run``).

``FakeObjectStore`` is a Beam file system for the scheme ``fakeobj://`` with an object store's
semantics (the ones that matter here, as gs:// and s3:// have them), kept in a temporary folder:
an object appears, whole, only when its upload is closed; there are no folders (a "folder" is a
key prefix, empty and missing are the same, ``mkdirs`` does nothing); listing is by prefix;
``rename`` is copy + delete. Beam picks a file system by the URL's scheme among the subclasses of
``FileSystem``, so defining the class (at module level: the pipeline's DoFns may be pickled) is
enough for the launcher and for the in-process FnApiRunner's workers to use it.

Unit tests of pipelines.rundir on ``fakeobj://`` paths, then one ``toolformer augment`` run on
``fakeobj://bucket/run`` against the same run on a local directory (the scripted tiny model and
stub tool of tests/test_pipeline.py), its ``--resume`` (a no-op) and ``refilter`` on the store.
"""

from __future__ import annotations

import io
import os
import shutil
import uuid
from typing import ClassVar

import pytest
from apache_beam.io.filesystem import BeamIOError, CompressedFile, CompressionTypes, FileMetadata, FileSystem
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.localfilesystem import LocalFileSystem

from pipelines import rundir
from tests.test_pipeline import (  # noqa: F401  (scripted_dir, reset_stub: fixtures used here)
    DOCS,
    MANY,
    STUB,
    StubCalc,
    read_kind,
    reset_stub,
    run,
    scripted_dir,
    settings,
    without_timings,
    write_jsonl,
)
from toolformer.errors import UserError

ROOT_ENV = "FAKEOBJ_ROOT"  # the folder holding the store (set per test by the ``store`` fixture)
PREFIX = "fakeobj://"

# Tiny models are latency-bound: extra threads only contend on a 2-core machine.
pytestmark = pytest.mark.usefixtures("one_thread")


class _Upload(io.BufferedWriter):
    """A write channel whose object appears at ``final`` only when it is closed."""

    def __init__(self, final: str):
        staging = os.path.join(os.environ[ROOT_ENV], "uploads", uuid.uuid4().hex)
        os.makedirs(os.path.dirname(staging), exist_ok=True)
        super().__init__(io.FileIO(staging, "wb"))
        self._staging, self._final = staging, final

    def close(self):
        if self.closed:
            return
        super().close()
        os.makedirs(os.path.dirname(self._final), exist_ok=True)
        os.replace(self._staging, self._final)
        FakeObjectStore.commits.append(FakeObjectStore.url(self._final))


class FakeObjectStore(LocalFileSystem):
    """``fakeobj://BUCKET/KEY`` kept as ``$FAKEOBJ_ROOT/objects/BUCKET/KEY`` (see the module doc)."""

    commits: ClassVar[list[str]] = []  # object URLs in the order they appeared

    @classmethod
    def scheme(cls):
        return "fakeobj"

    @staticmethod
    def objects() -> str:
        return os.path.join(os.environ[ROOT_ENV], "objects")

    @classmethod
    def url(cls, local: str) -> str:
        return PREFIX + os.path.relpath(local, cls.objects()).replace(os.sep, "/")

    def _local(self, url: str) -> str:
        assert url.startswith(PREFIX), url
        return os.path.join(self.objects(), *url[len(PREFIX) :].split("/"))

    def has_dirs(self):
        return False

    def join(self, basepath, *paths):
        path = basepath
        for p in paths:
            path = path.rstrip("/") + "/" + p.lstrip("/")
        return path

    def split(self, path):
        head, _, tail = path.rpartition("/")
        return (head, tail) if len(head) > len(PREFIX) else (path, "")

    def mkdirs(self, path):
        pass

    def exists(self, path):
        return os.path.isfile(self._local(path))

    def _list(self, prefix):
        for dirpath, _, files in os.walk(self.objects()):
            for name in files:
                local = os.path.join(dirpath, name)
                if self.url(local).startswith(prefix):
                    yield FileMetadata(self.url(local), os.path.getsize(local), os.path.getmtime(local))

    def create(self, path, mime_type="application/octet-stream", compression_type=CompressionTypes.AUTO):
        upload = _Upload(self._local(path))
        kind = FileSystem._get_compression_type(path, compression_type)
        return upload if kind == CompressionTypes.UNCOMPRESSED else CompressedFile(upload, kind)

    def open(self, path, mime_type="application/octet-stream", compression_type=CompressionTypes.AUTO):
        kind = FileSystem._get_compression_type(path, compression_type)
        f = open(self._local(path), "rb")  # noqa: SIM115 (the caller closes it)
        return f if kind == CompressionTypes.UNCOMPRESSED else CompressedFile(f, kind)

    def copy(self, source_file_names, destination_file_names):
        for src, dst in zip(source_file_names, destination_file_names):
            os.makedirs(os.path.dirname(self._local(dst)), exist_ok=True)
            shutil.copyfile(self._local(src), self._local(dst))
            self.commits.append(dst)

    def rename(self, source_file_names, destination_file_names):
        self.copy(source_file_names, destination_file_names)
        self.delete(source_file_names)

    def delete(self, paths):
        """As GCS: ``PREFIX/`` deletes the objects under it; a missing object is no error."""
        for path in paths:
            if path.endswith("/"):
                for m in list(self._list(path)):
                    os.remove(self._local(m.path))
            elif self.exists(path):
                os.remove(self._local(path))

    def metadata(self, path):
        if not self.exists(path):
            raise BeamIOError(f"Path does not exist: {path}")
        local = self._local(path)
        return FileMetadata(path, os.path.getsize(local), os.path.getmtime(local))

    def size(self, path):
        return self.metadata(path).size_in_bytes

    def last_updated(self, path):
        return self.metadata(path).last_updated_in_seconds

    def checksum(self, path):
        return str(self.size(path))


@pytest.fixture
def store(tmp_path, monkeypatch):
    """An empty fake object store; returns the local folder of bucket ``bucket``."""
    monkeypatch.setenv(ROOT_ENV, str(tmp_path / "store"))
    monkeypatch.setattr(FakeObjectStore, "commits", [])
    return tmp_path / "store" / "objects" / "bucket"


OUT = "fakeobj://bucket/run"


def objects(prefix: str = OUT) -> list[str]:
    """Object names under ``prefix`` (relative to it)."""
    return [p[len(prefix) + 1 :] for p in rundir.match(prefix + "/**")]


def put(name: str, data: bytes = b"x\n") -> str:
    path = f"{OUT}/{name}"
    rundir.write_bytes(path, data)
    return path


def test_the_fake_store_is_an_object_store(store):
    assert isinstance(FileSystems.get_filesystem(OUT), FakeObjectStore)
    f = FileSystems.create(f"{OUT}/a/b.txt")
    f.write(b"hello")
    assert not rundir.exists(f"{OUT}/a/b.txt") and not rundir.has_files(OUT)  # not yet closed
    f.close()
    assert rundir.read_bytes(f"{OUT}/a/b.txt") == b"hello" and FakeObjectStore.commits == [f"{OUT}/a/b.txt"]
    assert not rundir.exists(f"{OUT}/a") and rundir.has_files(f"{OUT}/a")  # a prefix, not an object
    assert rundir.match(f"{OUT}/*") == [] and objects() == ["a/b.txt"]  # * stays in one level
    rundir.delete_folder(f"{OUT}/a")
    assert objects() == []


def test_prepare_fresh_refuse_and_resume_on_an_object_store(store):
    assert rundir.prepare(OUT, {"seed": 0}, False, 2) == [0, 1]
    assert rundir.read_json(f"{OUT}/run.json") == {"seed": 0}
    assert FakeObjectStore.commits == [f"{OUT}/run.json"]  # written in place: no .tmp, no rename
    with pytest.raises(UserError, match="already holds an unfinished run or other files; pass --resume"):
        rundir.prepare(OUT, {"seed": 0}, False, 2)
    with pytest.raises(UserError, match=f"settings differ from the run in {OUT}: seed"):
        rundir.prepare(OUT, {"seed": 1}, True, 2)
    assert rundir.prepare(OUT, {"seed": 0}, True, 2) == [0, 1]
    other = "fakeobj://bucket/other"
    rundir.write_bytes(f"{other}/notes.txt", b"mine")
    with pytest.raises(UserError, match="has no run.json, it is not an augment run directory"):
        rundir.prepare(other, {"seed": 0}, True, 1)
    assert rundir.prepare("fakeobj://bucket/ru", {"seed": 0}, False, 1) == [0]  # a prefix of run/


def test_markers_verify_parts_and_resume_deletes_torn_and_orphaned_files(store):
    rundir.prepare(OUT, {"seed": 0}, False, 2)
    shard = put("texts-p0000-00000-of-00001.jsonl", b'{"doc_id": "a"}\n')
    put("candidates-p0000-00000-of-00001.jsonl")
    put("texts-p0001-00000-of-00001.jsonl")  # part 1 never got its marker
    rundir.mark_done(OUT, 0, {"docs_read": 3})
    marker = rundir.read_json(f"{OUT}/.parts/p0000.done")
    assert sorted(marker["files"]) == [
        "candidates-p0000-00000-of-00001.jsonl",
        "texts-p0000-00000-of-00001.jsonl",
    ]
    assert marker["stats"] == {"docs_read": 3}
    assert rundir.part_done(OUT, 0) and not rundir.part_done(OUT, 1)
    put("beam-temp-texts-p0001-0123abcd/uid.jsonl")  # a killed runner's temporary shard
    assert rundir.prepare(OUT, {"seed": 0}, True, 2) == [1]
    assert sorted(objects()) == [
        ".parts/p0000.done",
        "candidates-p0000-00000-of-00001.jsonl",
        "run.json",
        "texts-p0000-00000-of-00001.jsonl",
    ]
    rundir.write_bytes(shard, b'{"doc_id": "b"}\n')  # torn: same name and size, other bytes
    assert not rundir.part_done(OUT, 0)
    assert rundir.prepare(OUT, {"seed": 0}, True, 2) == [0, 1]
    assert sorted(objects()) == [".parts/p0000.done", "run.json"]  # a stale marker is overwritten later


def test_finish_writes_stats_then_success_and_a_finished_run_is_a_no_op(store):
    rundir.prepare(OUT, {"seed": 0}, False, 2)
    for part in (0, 1):
        put(f"texts-p000{part}-00000-of-00001.jsonl")
        rundir.mark_done(OUT, part, {"docs_read": part + 1})
    assert rundir.part_stats(OUT, 2) == [{"docs_read": 1}, {"docs_read": 2}]
    rundir.finish(OUT, {"documents": 3})
    assert FakeObjectStore.commits[-3:] == [f"{OUT}/stats.json", f"{OUT}/README.md", f"{OUT}/_SUCCESS"]
    assert rundir.read_json(f"{OUT}/stats.json") == {"documents": 3}
    assert not any(c.endswith(".tmp") for c in FakeObjectStore.commits)
    assert rundir.prepare(OUT, {"seed": 0}, True, 2) == []
    with pytest.raises(UserError, match="already holds a complete run; pass --resume"):
        rundir.prepare(OUT, {"seed": 0}, False, 2)


def test_resume_keeps_an_unfinished_parts_journal_and_drops_a_done_ones(store):
    assert rundir.prepare(OUT, {"seed": 0}, False, 2) == [0, 1]
    for part in (0, 1):
        folder = rundir.journal_dir(OUT, part)
        assert folder == f"{OUT}/.journal/p000{part}"
        rundir.write_bytes(f"{folder}/u.jsonl", b"{}\n")
        assert rundir.journal_files(OUT, part) == [f"{folder}/u.jsonl"]
    rundir.mark_done(OUT, 0, {})  # killed after part 0's marker, before its journal was deleted
    assert rundir.prepare(OUT, {"seed": 0}, True, 2) == [1]
    assert rundir.journal_files(OUT, 0) == [] and len(rundir.journal_files(OUT, 1)) == 1
    rundir.drop_journal(OUT, 1)
    assert not rundir.has_files(f"{OUT}/.journal")


def test_augment_on_an_object_store_equals_a_local_run_and_resume_is_a_no_op(
    scripted_dir,  # noqa: F811 (the fixture imported from tests.test_pipeline)
    store,
    tmp_path,
    capsys,
):
    from commands.cli import main

    inp = write_jsonl(tmp_path / "docs.jsonl", DOCS + MANY[:3])
    s = settings(scripted_dir)
    local = run(s, [inp], tmp_path / "local")
    calls, StubCalc.calls = StubCalc.calls, 0
    remote = run(s, [inp], OUT + "/")  # a trailing / names the same run
    assert StubCalc.calls == calls > 0
    for kind in ("texts", "candidates", "errors"):
        assert read_kind(store / "run", kind) == read_kind(tmp_path / "local", kind), kind
    assert without_timings(remote) == without_timings(local)
    assert rundir.read_json(f"{OUT}/stats.json") == remote
    names = objects()
    assert "_SUCCESS" in names and ".parts/p0000.done" in names
    assert not [n for n in names if n.startswith((".journal", "beam-temp-")) or n.endswith(".tmp")]
    assert FakeObjectStore.commits[-1] == f"{OUT}/_SUCCESS"

    before = {n: rundir.read_bytes(f"{OUT}/{n}") for n in names}
    StubCalc.calls = 0
    assert run(s, [inp], OUT, resume=True) == remote  # complete: nothing redone or rewritten
    assert StubCalc.calls == 0 and {n: rundir.read_bytes(f"{OUT}/{n}") for n in objects()} == before

    capsys.readouterr()
    assert main(["augment", "--input", str(inp), "--output", OUT, "--tools", STUB]) == 2
    assert f"--output {OUT} already holds a complete run" in capsys.readouterr().err
    assert main(["augment", "--input", str(inp), "--output", "nosuch://b/run"]) == 2
    assert "no Beam file system for nosuch:// is installed" in capsys.readouterr().err

    # refilter reads and writes the store the same way
    assert main(["refilter", OUT, "fakeobj://bucket/strict", "--tau-f", "Calc=100"]) == 0
    assert main(["refilter", str(tmp_path / "local"), str(tmp_path / "strict"), "--tau-f", "Calc=100"]) == 0
    for kind in ("texts", "candidates"):
        assert read_kind(store / "strict", kind) == read_kind(tmp_path / "strict", kind), kind
    assert rundir.exists("fakeobj://bucket/strict/_SUCCESS")
    assert main(["refilter", OUT, "fakeobj://bucket/strict"]) == 2
    assert "already exists and is not empty" in capsys.readouterr().err

    # report and finetune's reader take the run where it is, and read what they read locally
    from finetune.data import read_texts
    from commands.report import load_run, write_report

    here, there = load_run(tmp_path / "local"), load_run(OUT)
    assert there.complete and there.documents == here.documents > 0
    assert {t: (s.candidates, s.kept, s.deltas) for t, s in there.tools.items()} == {
        t: (s.candidates, s.kept, s.deltas) for t, s in here.tools.items()}
    assert there.examples == here.examples and there.dead_letters == here.dead_letters
    with pytest.raises(UserError, match="is not a local folder: pass --output DIR"):
        write_report(OUT)
    assert main(["report", OUT, "--output", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "index.html").is_file()
    assert read_texts([OUT]).texts == read_texts([str(tmp_path / "local")]).texts
    assert read_texts([f"{OUT}/{next(n for n in objects() if n.startswith('texts-') and n.endswith('.jsonl'))}"]).texts
    with pytest.raises(UserError, match="pipeline run is incomplete"):
        rundir.delete([f"{OUT}/_SUCCESS"])
        read_texts([OUT])
    with pytest.raises(UserError, match="no texts-\\*.jsonl shards of a run there"):
        read_texts(["fakeobj://bucket/nothing"])

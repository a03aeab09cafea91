"""The BM25 index behind WikiSearch (and QA): built once from passages, loaded fast.

Scoring is rank-bm25's ``BM25Okapi`` exactly (k1 = 1.5, b = 0.75, idf floored at
``epsilon * mean idf`` for terms in more than half of the passages; tests compare the scores), but
stored as a term -> passages inverted index in numpy arrays: rank-bm25 keeps one Python dict per
passage and scans every passage for every query term, which is too slow and too large at 1M
passages. The index directory holds only ``.npy``, ``.json`` and raw UTF-8 ``.bin`` files (loaded
with ``allow_pickle=False``; the arrays are memory-mapped), never a pickle.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import itertools
import json
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from toolformer.errors import raise_if_storage_full
from tools.passages import InputError, Passage

FORMAT_VERSION = 1

_TOKEN = re.compile(r"\w+")


def tokenize(text: str) -> list[str]:
    """Lower-cased word tokens; the same function is used for passages and queries."""
    return _TOKEN.findall(text.lower())


@contextlib.contextmanager
def _writing(path: Path):
    """A write of ``path`` that fails for lack of room (disk full, file too large) raises
    :class:`~toolformer.errors.StorageFull` naming it, not numpy's or the OS's bare message."""
    try:
        yield
    except Exception as e:
        raise_if_storage_full(e, path, "free space (or raise the file-size limit), then build the index again")
        raise


def _save(path: Path, array: np.ndarray) -> None:
    with _writing(path):
        np.save(path, array)


def _save_strings(out: Path, name: str, strings: list[bytes]) -> None:
    offsets = np.zeros(len(strings) + 1, dtype=np.int64)
    np.cumsum([len(s) for s in strings], out=offsets[1:])
    _save(out / f"{name}.offsets.npy", offsets)
    with _writing(out / f"{name}.bin"), open(out / f"{name}.bin", "wb") as f:
        f.writelines(strings)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"broken index: {path} is missing (rebuild it with `toolformer index`)") from None
    except (OSError, ValueError) as e:
        raise InputError(f"broken index file {path}: {' '.join(str(e).split())[:160]}") from None


def _load_array(path: Path) -> np.ndarray:
    """A ``.npy`` array memory-mapped, never unpickled; a missing, truncated or object array is
    an :class:`InputError` naming the file."""
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise InputError(f"broken index: {path} is missing (rebuild it with `toolformer index`)") from None
    except (OSError, ValueError, EOFError) as e:  # truncated header or data, object arrays, garbage
        raise InputError(f"broken index file {path}: {' '.join(str(e).split())[:160]}") from None
    if arr.ndim != 1 or arr.dtype.kind not in "iuf":
        raise InputError(
            f"broken index file {path}: expected a 1-d numeric array, got {arr.dtype} {arr.shape}"
        )
    return arr


def _check_index(d: Path, index: BM25Index, n_terms: int) -> None:
    """The arrays fit together (cheap checks: lengths and end points, not every posting)."""
    checks = [
        ("postings.indptr.npy", len(index.indptr) == n_terms + 1, f"{n_terms + 1} entries (vocab + 1)"),
        ("postings.docs.npy", len(index.indptr) and int(index.indptr[-1]) == len(index.docs),
         "as many postings as postings.indptr ends with"),
        ("postings.tf.npy", len(index.tf) == len(index.docs), "as many entries as postings.docs"),
        ("ids.offsets.npy", len(index.ids) == len(index.doc_len), "one id per passage"),
        ("titles.offsets.npy", len(index.titles) == len(index.doc_len), "one title per passage"),
        ("texts.offsets.npy", len(index.texts) == len(index.doc_len), "one text per passage"),
    ]  # fmt: skip
    for name, ok, what in checks:
        if not ok:
            raise InputError(f"broken index file {d / name}: expected {what}")
    if index.n == 0:
        raise InputError(f"broken index file {d / 'doc_len.npy'}: no passages")


class _StringColumn:
    """Strings stored as UTF-8 bytes plus offsets, read through a memory map."""

    def __init__(self, directory: Path, name: str):
        self.offsets = _load_array(directory / f"{name}.offsets.npy")
        path = directory / f"{name}.bin"
        if not path.is_file():
            raise InputError(f"broken index: {path} is missing (rebuild it with `toolformer index`)")
        size = path.stat().st_size
        if len(self.offsets) == 0 or int(self.offsets[-1]) != size:
            raise InputError(
                f"broken index file {path}: {size} bytes, {directory / (name + '.offsets.npy')} says "
                f"{int(self.offsets[-1]) if len(self.offsets) else '?'} (truncated?)"
            )
        self.data = np.memmap(path, dtype=np.uint8, mode="r") if size else np.zeros(0, np.uint8)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> str:
        return bytes(self.data[self.offsets[i] : self.offsets[i + 1]]).decode("utf-8")


class IndexBuilder:
    """Builds an index directory from a stream of passages in bounded chunks.

    Postings are collected per chunk as (term, passage, tf) arrays sorted by term, then placed
    into one term-major array with a counting sort (no global argsort: peak memory stays about
    twice the postings). Texts are written to disk as they arrive.
    """

    def __init__(self, output: str | Path, chunk_size: int = 20_000):
        self.out = Path(output)
        self.chunk_size = chunk_size
        # A missing word gets the next id from inside the C lookup (the trick sklearn's
        # CountVectorizer uses): about twice as fast as setdefault(word, len(vocab)) per token.
        self.vocab: collections.defaultdict[str, int] = collections.defaultdict()
        self.vocab.default_factory = self.vocab.__len__
        self._chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._doc_len: list[int] = []
        self._pending: list[list[int]] = []
        self._ids: list[bytes] = []
        self._titles: list[bytes] = []
        self._text_lens: list[int] = []
        self.out.mkdir(parents=True, exist_ok=True)
        self._texts = open(self.out / "texts.bin.tmp", "wb")  # noqa: SIM115 - written across add() calls

    def add(self, passage: Passage) -> None:
        ids = list(map(self.vocab.__getitem__, tokenize(passage.title + " " + passage.text)))
        self._pending.append(ids)
        self._doc_len.append(len(ids))
        self._ids.append(passage.id.encode("utf-8"))
        self._titles.append(passage.title.encode("utf-8"))
        data = passage.text.encode("utf-8")
        with _writing(self.out / "texts.bin.tmp"):
            self._texts.write(data)
        self._text_lens.append(len(data))
        if len(self._pending) >= self.chunk_size:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        first = len(self._doc_len) - len(self._pending)
        lens = np.fromiter((len(x) for x in self._pending), dtype=np.int64, count=len(self._pending))
        terms = np.fromiter(
            itertools.chain.from_iterable(self._pending), dtype=np.int64, count=int(lens.sum())
        )
        local = np.repeat(np.arange(len(self._pending), dtype=np.int64), lens)
        # One key per (term, passage) occurrence; sorting orders by term, then passage, and the runs
        # of equal keys are the term frequencies. (An explicit sort: np.unique may hash instead.)
        keys = np.sort(terms * len(self._pending) + local)
        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
        tf = np.diff(np.r_[starts, len(keys)])
        keys = keys[starts]
        self._chunks.append(
            (
                (keys // len(self._pending)).astype(np.int32),
                (keys % len(self._pending) + first).astype(np.int32),
                np.minimum(tf, np.iinfo(np.uint16).max).astype(np.uint16),
            )
        )
        self._pending = []

    def finish(self, k1: float = 1.5, b: float = 0.75, epsilon: float = 0.25, source: str = "") -> Path:
        self._flush()
        with _writing(self.out / "texts.bin.tmp"):
            self._texts.close()
        n_docs, n_terms = len(self._doc_len), len(self.vocab)
        if n_docs == 0:
            (self.out / "texts.bin.tmp").unlink()
            raise InputError("no passages to index")
        df = np.zeros(n_terms, dtype=np.int64)
        for terms, _, _ in self._chunks:
            df += np.bincount(terms, minlength=n_terms)
        indptr = np.zeros(n_terms + 1, dtype=np.int64)
        np.cumsum(df, out=indptr[1:])
        docs = np.empty(int(indptr[-1]), dtype=np.int32)
        tfs = np.empty(int(indptr[-1]), dtype=np.uint16)
        cursor = indptr[:-1].copy()
        while self._chunks:
            terms, chunk_docs, chunk_tf = self._chunks.pop(0)
            counts = np.bincount(terms, minlength=n_terms)
            starts = np.cumsum(counts) - counts  # where each term's run begins inside this chunk
            pos = cursor[terms] + (np.arange(len(terms)) - starts[terms])
            docs[pos] = chunk_docs
            tfs[pos] = chunk_tf
            cursor += counts
        out = self.out
        _save(out / "postings.indptr.npy", indptr)
        _save(out / "postings.docs.npy", docs)
        _save(out / "postings.tf.npy", tfs)
        _save(out / "doc_len.npy", np.asarray(self._doc_len, dtype=np.int32))
        text_offsets = np.zeros(n_docs + 1, dtype=np.int64)
        np.cumsum(self._text_lens, out=text_offsets[1:])
        _save(out / "texts.offsets.npy", text_offsets)
        (out / "texts.bin.tmp").replace(out / "texts.bin")
        _save_strings(out, "ids", self._ids)
        _save_strings(out, "titles", self._titles)
        terms_sorted = sorted(self.vocab, key=self.vocab.__getitem__)
        with _writing(out / "vocab.json"):
            (out / "vocab.json").write_text(json.dumps(terms_sorted, ensure_ascii=False), encoding="utf-8")
        meta = {
            "format": "toolformer-bm25",
            "version": FORMAT_VERSION,
            "passages": n_docs,
            "terms": n_terms,
            "postings": int(indptr[-1]),
            "k1": k1,
            "b": b,
            "epsilon": epsilon,
            "source": source,
        }
        # Written last, whole or not at all (through a .tmp renamed into place): a directory
        # without meta.json is an unfinished build.
        with _writing(out / "meta.json.tmp"):
            (out / "meta.json.tmp").write_text(json.dumps(meta, indent=1), encoding="utf-8")
        (out / "meta.json.tmp").replace(out / "meta.json")
        return out


def build_index(
    passages: Iterable[Passage],
    output: str | Path,
    *,
    k1: float = 1.5,
    b: float = 0.75,
    epsilon: float = 0.25,
    source: str = "",
    chunk_size: int = 20_000,
) -> Path:
    builder = IndexBuilder(output, chunk_size)
    for p in passages:
        builder.add(p)
    return builder.finish(k1, b, epsilon, source)


class BM25Index:
    """A saved index, memory-mapped. ``search(query, k)`` -> [(passage number, score)]."""

    def __init__(self, directory: str | Path):
        d = Path(directory)
        meta_path = d / "meta.json"
        if not meta_path.is_file():
            raise InputError(
                f"{d} is not a WikiSearch index (no meta.json; build one with `toolformer index`)"
            )
        meta = _read_json(meta_path)
        if not isinstance(meta, dict) or meta.get("format") != "toolformer-bm25" or meta.get("version") != FORMAT_VERSION:
            raise InputError(f"{d}: unsupported index format {meta.get('format')!r} v{meta.get('version')}")
        self.directory, self.meta = d, meta
        try:
            self.k1, self.b, self.epsilon = float(meta["k1"]), float(meta["b"]), float(meta["epsilon"])
        except (KeyError, TypeError, ValueError):
            raise InputError(f"broken index file {meta_path}: no numeric k1, b and epsilon") from None

        def load(name: str) -> np.ndarray:
            return _load_array(d / f"{name}.npy")

        self.indptr = load("postings.indptr")
        self.docs = load("postings.docs")
        self.tf = load("postings.tf")
        self.doc_len = np.asarray(load("doc_len"), dtype=np.float64)
        terms = _read_json(d / "vocab.json")
        if not isinstance(terms, list):
            raise InputError(f"broken index file {d / 'vocab.json'}: not a list of terms")
        self.vocab = dict(zip(terms, range(len(terms))))
        self.ids, self.titles, self.texts = (_StringColumn(d, n) for n in ("ids", "titles", "texts"))
        self.n = len(self.doc_len)
        _check_index(d, self, len(terms))
        self.avgdl = float(self.doc_len.mean())
        self.idf = self._idf(np.diff(np.asarray(self.indptr)))
        self._norm = self.k1 * (1 - self.b + self.b * self.doc_len / self.avgdl)

    def _idf(self, df: np.ndarray) -> np.ndarray:
        # rank-bm25's BM25Okapi: log((N - df + 0.5) / (df + 0.5)), negatives floored at
        # epsilon * mean idf (the mean over all terms, taken before flooring).
        idf = np.log(self.n - df + 0.5) - np.log(df + 0.5)
        idf[idf < 0] = self.epsilon * (idf.sum() / len(idf)) if len(idf) else 0.0
        return idf

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every passage for ``query`` (a repeated query word counts again, as in
        rank-bm25)."""
        scores = np.zeros(self.n)
        for term, count in Counter(tokenize(query)).items():
            t = self.vocab.get(term)
            if t is None:
                continue
            lo, hi = int(self.indptr[t]), int(self.indptr[t + 1])
            docs = np.asarray(self.docs[lo:hi])
            tf = np.asarray(self.tf[lo:hi], dtype=np.float64)
            scores[docs] += count * self.idf[t] * tf * (self.k1 + 1) / (tf + self._norm[docs])
        return scores

    def search(self, query: str, k: int = 1) -> list[tuple[int, float]]:
        """The ``k`` best passages containing a query word, best first (ties: lower number first)."""
        terms = [self.vocab[t] for t in set(tokenize(query)) if t in self.vocab]
        if not terms:
            return []
        scores = self.scores(query)
        touched = np.zeros(self.n, dtype=bool)  # a mask, not np.unique: that took 230 ms per query
        for t in terms:
            touched[self.docs[self.indptr[t] : self.indptr[t + 1]]] = True
        candidates = np.flatnonzero(touched)
        if len(candidates) > k:
            # Keep everything scoring at least the k-th best, so ties are broken by number below.
            kth = np.partition(scores[candidates], len(candidates) - k)[len(candidates) - k]
            candidates = candidates[scores[candidates] >= kth]
        order = np.lexsort((candidates, -scores[candidates]))[:k]
        return [(int(candidates[i]), float(scores[candidates[i]])) for i in order]

    def passage(self, i: int) -> Passage:
        return Passage(self.ids[i], self.titles[i], self.texts[i])


@functools.lru_cache(maxsize=4)
def load_index(directory: str) -> BM25Index:
    """One loaded index per directory and process (WikiSearch and QA share it)."""
    return BM25Index(directory)

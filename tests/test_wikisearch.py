"""WikiSearch: BM25 scores equal rank-bm25's, ranking, safe save/load, corpus readers, the tool.

Run: python -m pytest -q tests/test_wikisearch.py
"""

from __future__ import annotations

import gzip
import json
import pickle
import random

import numpy as np
import pytest
from rank_bm25 import BM25Okapi

from tools.base import CallContext, ToolError
from tools.wikisearch import (
    BM25Index,
    InputError,
    Passage,
    WikiSearch,
    build_index,
    cut_to_budget,
    read_passages,
    tokenize,
)

CORPUS = [
    Passage("p0", "Pittsburgh", "Pittsburgh is a city in Pennsylvania known as the Steel City."),
    Passage("p1", "Steel", "Steel is an alloy of iron and carbon used in buildings and bridges."),
    Passage(
        "p2", "Brown Act", "The Brown Act is a California law that guarantees public access to meetings."
    ),
    Passage("p3", "Turtle", "The name derives from la tortuga, the Spanish word for turtle."),
    Passage("p4", "Iron", "Iron is a chemical element; iron ore is mined in many countries."),
    Passage("p5", "City", "A city is a large human settlement; the city of Paris is in France."),
]


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory):
    return build_index(CORPUS, tmp_path_factory.mktemp("idx") / "index", chunk_size=2)


def test_scores_equal_rank_bm25(index_dir):
    """Same scores as BM25Okapi (incl. its epsilon floor for common words), several chunk sizes."""
    rng = random.Random(0)
    words = [f"w{i}" for i in range(40)] + ["the"] * 30  # "the" is in most passages: negative idf
    passages = [
        Passage(str(i), "", " ".join(rng.choice(words) for _ in range(rng.randint(3, 30))))
        for i in range(200)
    ]
    reference = BM25Okapi([tokenize(" " + p.text) for p in passages])
    for chunk in (7, 1000):
        index = BM25Index(build_index(passages, index_dir.parent / f"rand-{chunk}", chunk_size=chunk))
        for query in ("w1 w2", "the w3 w3", "w39 unknownword", "the", "w0 w1 w2 w3 w4 w5"):
            expected = reference.get_scores(tokenize(query))
            np.testing.assert_allclose(index.scores(query), expected, rtol=1e-9, atol=1e-12)
    # the small handmade corpus too (titles are indexed with the text)
    reference = BM25Okapi([tokenize(p.title + " " + p.text) for p in CORPUS])
    index = BM25Index(index_dir)
    np.testing.assert_allclose(
        index.scores("steel city iron"), reference.get_scores(["steel", "city", "iron"])
    )


def test_ranking_on_small_corpus(index_dir):
    index = BM25Index(index_dir)
    assert [index.ids[i] for i, _ in index.search("Brown Act", 3)] == ["p2"]  # only p2 has these words
    hits = index.search("iron", 2)
    assert [index.ids[i] for i, _ in hits] == ["p4", "p1"]  # p4 says iron three times
    assert hits[0][1] > hits[1][1] > 0
    assert [index.ids[i] for i, _ in index.search("steel city", 3)] == ["p0", "p5", "p1"]
    assert index.search("zebra", 3) == []
    assert index.passage(3) == CORPUS[3]


def test_ties_are_broken_by_passage_number(tmp_path):
    same = [Passage(str(i), "", "alpha beta") for i in range(5)]
    index = BM25Index(build_index(same, tmp_path / "i"))
    assert [i for i, _ in index.search("alpha", 3)] == [0, 1, 2]


def test_index_files_are_safe_formats(index_dir):
    names = sorted(p.name for p in index_dir.iterdir())
    assert all(n.endswith((".npy", ".json", ".bin")) for n in names), names
    for npy in index_dir.glob("*.npy"):
        np.load(npy, allow_pickle=False)  # raises if an array needed pickle
    meta = json.loads((index_dir / "meta.json").read_text())
    assert (meta["passages"], meta["k1"], meta["b"], meta["epsilon"]) == (6, 1.5, 0.75, 0.25)


def test_unfinished_index_is_refused(tmp_path):
    (tmp_path / "half").mkdir()
    with pytest.raises(InputError, match="no meta.json"):
        BM25Index(tmp_path / "half")


def test_read_passages_formats_filter_and_bad_records(tmp_path):
    rows = [
        {"id": "a", "title": "A", "text": "first passage", "split": "store"},
        {"id": "b", "title": "B", "text": "second passage", "split": "input"},
        {"id": "c", "text": "", "split": "store"},
        {"id": "d", "body": "no text field", "split": "store"},
    ]
    with gzip.open(tmp_path / "part-0.jsonl.gz", "wt") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
        f.write("{not json\n")
    problems: list[str] = []
    got = list(read_passages(str(tmp_path / "*.jsonl.gz"), where=("split", "store"), problems=problems))
    assert got == [Passage("a", "A", "first passage")]
    assert [p.split(": ", 1)[1] for p in problems] == [
        "empty field 'text'",
        "no string field 'text'",
        problems[2].split(": ", 1)[1],
    ]
    assert problems[2].startswith(f"{tmp_path / 'part-0.jsonl.gz'}:5: invalid JSON")

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"pid": 7, "body": "parquet passage"}]), tmp_path / "x.parquet")
    assert list(read_passages(str(tmp_path / "x.parquet"), text_field="body", id_field="pid")) == [
        Passage("7", "", "parquet passage")
    ]

    (tmp_path / "t.txt").write_text("line one\n\nline two\n")
    assert [p.text for p in read_passages(str(tmp_path / "t.txt"))] == ["line one", "line two"]

    import datasets

    datasets.Dataset.from_list([{"id": "h", "text": "from a dataset"}]).save_to_disk(str(tmp_path / "ds"))
    assert list(read_passages(str(tmp_path / "ds"))) == [Passage("h", "", "from a dataset")]

    with pytest.raises(InputError, match="no input matches"):
        list(read_passages(str(tmp_path / "missing-*.jsonl")))


def test_cut_to_budget():
    assert cut_to_budget("one two three four", 9) == "one two"
    assert cut_to_budget("  spaced\n out  ", 50) == "spaced out"
    assert cut_to_budget("x" * 20, 5) == "xxxxx"


def test_tool_returns_top_passage_cut_to_budget(index_dir):
    tool = WikiSearch(index=str(index_dir), max_chars=40)
    assert tool("Brown Act", CallContext()) == "The Brown Act is a California law that"
    two = WikiSearch(index=str(index_dir), top_k=2, max_chars=500)("iron", CallContext())
    assert two == f"{CORPUS[4].text} | {CORPUS[1].text}"


@pytest.mark.parametrize(
    "query, reason",
    [
        ("", "parse"),
        ("   ", "parse"),
        ("zebra", "no_result"),
        ("x" * 1001, "limit"),
        (" ".join(f"w{i}" for i in range(100)), "limit"),
        ("a" * 1_000_000, "limit"),
    ],
)
def test_tool_errors(index_dir, query, reason):
    with pytest.raises(ToolError) as info:
        WikiSearch(index=str(index_dir))(query, CallContext())
    assert info.value.reason == reason


def test_tool_without_index_is_unavailable_and_tool_is_picklable(index_dir):
    with pytest.raises(ToolError) as info:
        WikiSearch()("Brown Act", CallContext())
    assert info.value.reason == "unavailable"
    tool = pickle.loads(pickle.dumps(WikiSearch(index=str(index_dir))))
    assert tool("Spanish turtle", CallContext()).startswith("The name derives")
    with pytest.raises(ToolError) as info:
        WikiSearch(index=str(index_dir / "nope"))("Brown Act", CallContext())
    assert info.value.reason == "unavailable"

"""QA (retrieve + read) and MT (local seq2seq model, or a clear "unavailable").

Run: python -m pytest -q tests/test_qa.py
"""

from __future__ import annotations

import pickle

import pytest
import torch

from tools.base import CallContext, ToolError
from tools.mt import MT
from tools.qa import QA, READER_PROMPT, LMReader
from tools.wikisearch import Passage, build_index

PASSAGES = [
    Passage("1", "Marie Curie", "Marie Curie was born in Warsaw, in the Kingdom of Poland, in 1867."),
    Passage("2", "Pittsburgh", "Pittsburgh is a city in Pennsylvania known as the Steel City."),
    Passage("3", "Turtle", "Tortuga is the Spanish word for turtle."),
]


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory):
    return str(build_index(PASSAGES, tmp_path_factory.mktemp("qa") / "index"))


class FakeReader:
    """Answers with the passage's first capitalised word after 'in', and records what it read."""

    def __init__(self):
        self.seen: list[tuple[str, str]] = []

    def __call__(self, question: str, passage: str) -> str:
        self.seen.append((question, passage))
        words = passage.split()
        return words[words.index("in") + 1].rstrip(",.") + "."


def test_qa_reads_the_top_passage(index_dir):
    reader = FakeReader()
    qa = QA(index=index_dir, reader=reader)
    assert qa("Where was Marie Curie born?", CallContext()) == "Warsaw"  # trailing "." dropped
    assert reader.seen == [("Where was Marie Curie born?", PASSAGES[0].text)]
    assert qa("  Which state is Pittsburgh\n in? ", CallContext()) == "Pennsylvania"
    assert reader.seen[-1][0] == "Which state is Pittsburgh in?"


@pytest.mark.parametrize(
    "question, reason",
    [
        ("", "parse"),
        ("  ", "parse"),
        ("q" * 1_000_000, "limit"),
        ("zzz qqq?", "no_result"),
    ],
)
def test_qa_errors(index_dir, question, reason):
    with pytest.raises(ToolError) as info:
        QA(index=index_dir, reader=FakeReader())(question, CallContext())
    assert info.value.reason == reason


def test_qa_without_index_or_with_an_empty_answer(index_dir):
    with pytest.raises(ToolError) as info:
        QA(reader=FakeReader())("Where was Marie Curie born?", CallContext())
    assert info.value.reason == "unavailable"
    with pytest.raises(ToolError) as info:
        QA(index=index_dir, reader=lambda q, p: " \n ")("Where was Marie Curie born?", CallContext())
    assert info.value.reason == "no_result"


def test_lm_reader_is_greedy_generation_of_the_reader_prompt(tiny_model_dir, tiny_model):
    model, tokenizer = tiny_model
    reader = LMReader(str(tiny_model_dir), max_new_tokens=6)
    passage, question = PASSAGES[0].text, "Where was Marie Curie born?"
    prompt = READER_PROMPT.replace("{passage}", passage).replace("{question}", question)
    enc = tokenizer(prompt, return_tensors="pt")
    ids = enc["input_ids"]
    for _ in range(6):  # greedy by hand
        with torch.no_grad():
            next_id = model(input_ids=ids).logits[0, -1].argmax()
        ids = torch.cat([ids, next_id.view(1, 1)], dim=1)
        if next_id.item() == tokenizer.eos_token_id:
            break
    expected = tokenizer.decode(ids[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    assert reader(question, passage) == expected.strip().split("\n")[0].strip()
    # picklable, with the model dropped (it is loaded again where it runs)
    clone = pickle.loads(pickle.dumps(reader))
    assert clone._loaded is None and clone.model_spec == str(tiny_model_dir)


@pytest.mark.real_model
def test_qa_with_the_default_model_answers_in_a_few_words(real_model_dir, index_dir):
    answer = QA(index=index_dir, model=str(real_model_dir))("Where was Marie Curie born?", CallContext())
    assert 0 < len(answer.split()) <= 3
    assert answer in PASSAGES[0].text  # observed: "Poland" (a span of the passage)


# ---------------------------------------------------------------- MT


def test_mt_without_a_model_is_unavailable():
    with pytest.raises(ToolError) as info:
        MT()("la tortuga", CallContext())
    assert info.value.reason == "unavailable"
    assert "model_dir" in info.value.message
    with pytest.raises(ToolError) as info:
        MT(model_dir="/nonexistent/model")("la tortuga", CallContext())
    assert info.value.reason == "unavailable"


@pytest.fixture(scope="module")
def tiny_mt_dir(tiny_model_dir, tmp_path_factory):
    """A tiny random T5 using the tiny tokenizer; EOS and PAD can never win, so it always writes."""
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    config = T5Config(
        vocab_size=len(tok),
        d_model=16,
        d_ff=32,
        d_kv=4,
        num_layers=1,
        num_decoder_layers=1,
        num_heads=2,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        decoder_start_token_id=tok.pad_token_id,
    )
    model = T5ForConditionalGeneration(config)
    with torch.no_grad():
        model.lm_head.weight[[tok.eos_token_id, tok.pad_token_id, tok.unk_token_id]] = 0.0
        model.lm_head.weight[tok.convert_tokens_to_ids("Ġthe")] *= 0  # keep some variety away
    out = tmp_path_factory.mktemp("tiny-mt")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_mt_translates_with_a_local_model(tiny_mt_dir):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    mt = MT(model_dir=str(tiny_mt_dir), max_new_tokens=5)
    got = mt("la  tortuga", CallContext())
    tok = AutoTokenizer.from_pretrained(tiny_mt_dir)
    model = AutoModelForSeq2SeqLM.from_pretrained(tiny_mt_dir).eval()
    out = model.generate(**tok("la tortuga", return_tensors="pt"), max_new_tokens=5, do_sample=False)
    assert got == tok.decode(out[0], skip_special_tokens=True).strip()
    assert got
    with pytest.raises(ToolError) as info:
        mt("x" * 401, CallContext())
    assert info.value.reason == "limit"


@pytest.mark.parametrize(
    "text, accepted",
    [
        ("He said 'la tortuga es verde' twice.", False),  # Latin script, ASCII letters only
        ("The sign read «Закрыто на обед сегодня» in red.", True),
        ("Ein schönes Café, süße Brötchen überall", True),
        ("Café au lait", False),  # one foreign word is not enough
    ],
)
def test_mt_heuristic(text, accepted):
    import random

    assert MT().accepts({"text": text}, random.Random(0)) is accepted


def test_qa_and_wikisearch_see_every_document_unless_configured(index_dir):
    import random

    from tools.wikisearch import WikiSearch

    rng = random.Random(0)
    short, long = {"text": "Hi."}, {"text": "A longer document with quite a few words in it."}
    assert QA(index=index_dir).accepts(short, rng) and WikiSearch(index=index_dir).accepts(short, rng)
    assert not QA(index=index_dir, min_words=5).accepts(short, rng)
    assert QA(index=index_dir, min_words=5).accepts(long, rng)
    assert not WikiSearch(index=index_dir, min_words=5).accepts(short, rng)

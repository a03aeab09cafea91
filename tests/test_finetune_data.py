"""Fine-tuning data: reading --data, the train/dev split, result masking and marker tokens (no training)."""

import json

import pytest

from finetune.data import mix_original, read_texts, split_train_dev
from finetune.features import IGNORE_INDEX, encode_texts, masked_labels, result_spans
from finetune.markers import MARKER_FORMAT, load_call_format, save_call_format, to_marker_format
from toolformer.call_format import DEFAULT_FORMAT, parse_calls
from toolformer.errors import UserError

CALC = "Out of 1400 participants, 400 (or [Calculator(400 / 1400) -> 0.29] 29%) passed the test."


def write_jsonl(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def test_reads_pipeline_run_dir_shards_in_order(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    write_jsonl(run / "texts-00001-of-00002.jsonl", [{"doc_id": "b", "text": "second", "calls": []}])
    write_jsonl(run / "texts-00000-of-00002.jsonl", [{"doc_id": "a", "text": "first", "calls": []}])
    (run / "_SUCCESS").write_text("")
    corpus = read_texts([str(run)])
    assert corpus.texts == ["first", "second"]
    assert corpus.skipped == 0


def test_incomplete_run_dir_is_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    write_jsonl(run / "texts-00000-of-00001.jsonl", [{"text": "a"}])
    with pytest.raises(UserError, match=r"incomplete \(no _SUCCESS\)"):
        read_texts([str(run)])


def test_bad_records_are_skipped_and_named(tmp_path, caplog):
    f = write_jsonl(tmp_path / "d.jsonl", [{"text": "good one"}, "{not json", {"body": "x"}, {"text": 3},
                                           {"text": "  "}, {"text": "good two"}])
    corpus = read_texts([str(f)])
    assert corpus.texts == ["good one", "good two"]
    assert corpus.skipped == 4
    assert f"{f}:2: invalid JSON" in caplog.text
    assert f"{f}:3: no field 'text' (fields: body)" in caplog.text
    assert f"{f}:4: field 'text' is a int, not a string" in caplog.text
    assert f"{f}:5: field 'text' is empty" in caplog.text


def test_missing_text_field_everywhere_is_an_error(tmp_path):
    f = write_jsonl(tmp_path / "d.jsonl", [{"body": "a"}, {"body": "b"}])
    with pytest.raises(UserError,
                       match=r"no usable texts in .*d.jsonl: .*:1: no field 'text' .*--text-field"):
        read_texts([str(f)])


def test_text_field_option(tmp_path):
    f = write_jsonl(tmp_path / "d.jsonl", [{"body": "a"}, {"body": "b"}])
    assert read_texts([str(f)], text_field="body").texts == ["a", "b"]


def test_empty_data_is_an_error(tmp_path):
    f = tmp_path / "empty.jsonl"
    f.write_text("")
    with pytest.raises(UserError, match="no texts found"):
        read_texts([str(f)])
    with pytest.raises(UserError, match="no such file"):
        read_texts([str(tmp_path / "missing.jsonl")])
    with pytest.raises(UserError, match="unsupported file type '.txt'"):
        (tmp_path / "a.txt").write_text("x")
        read_texts([str(tmp_path / "a.txt")])


def test_parquet_and_saved_hf_dataset(tmp_path):
    import datasets

    ds = datasets.Dataset.from_dict({"text": ["p1", "", "p2"], "doc_id": ["1", "2", "3"]})
    ds.to_parquet(str(tmp_path / "t.parquet"))
    ds.save_to_disk(str(tmp_path / "saved"))
    assert read_texts([str(tmp_path / "t.parquet")]).texts == ["p1", "p2"]
    corpus = read_texts([str(tmp_path / "saved")])
    assert (corpus.texts, corpus.skipped) == (["p1", "p2"], 1)
    with pytest.raises(UserError, match=r"no column 'body' \(columns: text, doc_id\)"):
        read_texts([str(tmp_path / "t.parquet")], text_field="body")


def test_split_is_seeded_and_disjoint():
    texts = [f"t{i}" for i in range(20)]
    train, dev = split_train_dev(texts, 0.1, seed=3)
    assert len(dev) == 2 and len(train) == 18
    assert sorted(train + dev) == sorted(texts)
    assert split_train_dev(texts, 0.1, seed=3) == (train, dev)
    assert split_train_dev(texts, 0.0, seed=3) == (dev + train, [])  # same shuffle, nothing held out
    with pytest.raises(UserError, match="leave nothing to train on"):
        split_train_dev(["only"], 0.5, seed=0)


def test_mix_original_adds_call_free_copies():
    texts = [CALC, "no calls here"]
    mixed = mix_original(texts, 1.0, seed=0)
    assert mixed == [CALC, "no calls here", "Out of 1400 participants, 400 (or 29%) passed the test."]
    assert mix_original(texts, 0.0, seed=0) == texts


def test_result_spans_cover_result_only():
    spans = result_spans(CALC)
    assert [CALC[a:b] for a, b in spans] == [" 0.29"]
    text = ("Today [Calendar() -> Today is Monday.] and [QA(x)] and [Calculator(2 + 3) → 5] "
            "[Calculator(1 → 2) -> 3].")
    # Only well-formed calls with results (an arrow inside the input is malformed); → is accepted.
    assert [text[a:b] for a, b in result_spans(text)] == [" Today is Monday.", " 5"]


def test_masked_labels_by_offsets():
    ids = [10, 11, 12, 13]
    offsets = [(0, 3), (3, 6), (6, 9), (9, 12)]
    assert masked_labels(ids, offsets, [(4, 7)]) == [10, IGNORE_INDEX, IGNORE_INDEX, 13]
    assert masked_labels(ids, offsets, []) == ids


def test_encode_masks_exactly_the_result_tokens(tiny_model):
    _, tok = tiny_model
    enc = encode_texts([CALC], tok, max_length=512, mask_results=True)
    ids, labels = enc["input_ids"][0], enc["labels"][0]
    assert ids[-1] == tok.eos_token_id and labels[-1] == tok.eos_token_id
    masked = [i for i, x in zip(ids, labels) if x == IGNORE_INDEX]
    assert tok.decode(masked) == " 0.29"
    kept = [x for x in labels if x != IGNORE_INDEX]
    assert tok.decode(kept[:-1]) == CALC.replace(" 0.29]", "]")
    plain = encode_texts([CALC], tok, max_length=512)
    assert plain["labels"][0] == plain["input_ids"][0] == ids


def test_encode_truncates_and_counts(tiny_model):
    from finetune.features import EncodeStats

    _, tok = tiny_model
    stats = EncodeStats()
    enc = encode_texts([CALC, "short"], tok, max_length=8, stats=stats)
    short = len(tok("short", add_special_tokens=False).input_ids)
    assert [len(x) for x in enc["input_ids"]] == [8, short + 1]
    assert stats.truncated == 1


def test_marker_format_rewrites_calls_and_neutralises_text():
    text = "See <API>x</API> → y; " + CALC + " [1] [QA(who?)]"
    out = to_marker_format(text)
    assert out == ("See (x) => y; Out of 1400 participants, 400 "
                   "(or <API>Calculator(400 / 1400) → 0.29</API> 29%) "
                   "passed the test. [1] <API>QA(who?)</API>")
    calls = parse_calls(out, MARKER_FORMAT)
    assert [(c.tool, c.input, c.result) for c in calls] == [("Calculator", "400 / 1400", "0.29"),
                                                            ("QA", "who?", None)]


def test_call_format_file_round_trip(tmp_path):
    assert load_call_format(tmp_path) is DEFAULT_FORMAT
    save_call_format(tmp_path, MARKER_FORMAT)
    assert load_call_format(tmp_path) == MARKER_FORMAT


@pytest.mark.real_model
def test_result_masking_with_the_default_tokenizer(real_model_dir):
    from toolformer.models import load_tokenizer

    tok = load_tokenizer(str(real_model_dir))
    enc = encode_texts([CALC], tok, max_length=512, mask_results=True)
    ids, labels = enc["input_ids"][0], enc["labels"][0]
    assert tok.convert_ids_to_tokens([i for i, x in zip(ids, labels) if x == IGNORE_INDEX]) == \
        ["Ġ", "0", ".", "2", "9"]
    assert tok.convert_tokens_to_ids("Ġ[") in labels  # the call itself stays in the loss


def test_only_with_calls_keeps_the_texts_that_hold_a_call(tmp_path):
    from finetune.train import FinetuneConfig, read_split

    data = tmp_path / "d.jsonl"
    rows = ["plain text one", "It is [Calculator(2 + 2) -> 4] 4 now.", "plain two",
            "Today [Calendar() -> Today is Monday, January 30, 2023.] we met.", "an open [Calculator(1 + 1)] call"]
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in rows))
    cfg = FinetuneConfig(data=[str(data)], output=str(tmp_path / "o"), only_with_calls=True,
                         dev_data=[str(data)])
    train, _, counts = read_split(cfg)
    assert train == [rows[1], rows[3]] and counts["train_calls"] == 2
    (tmp_path / "none.jsonl").write_text(json.dumps({"text": "no calls"}) + "\n")
    with pytest.raises(UserError, match="--only-with-calls \\(the default\\): no text"):
        read_split(FinetuneConfig(data=[str(tmp_path / "none.jsonl")], output="o"))
    # plain_share: one plain text per two with calls (seeded draw among the three plain ones)
    cfg = FinetuneConfig(data=[str(data)], output=str(tmp_path / "o"), plain_share=0.5, dev_data=[str(data)])
    train, _, _ = read_split(cfg)
    assert len(train) == 3 and rows[1] in train and rows[3] in train
    assert len([t for t in train if t in (rows[0], rows[2], rows[4])]) == 1
    cfg = FinetuneConfig(data=[str(data)], output=str(tmp_path / "o"), only_with_calls=False, dev_data=[str(data)])
    assert read_split(cfg)[0] == rows

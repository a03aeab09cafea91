"""Loaders for the published formats (evaluation/datasets.py), on small inline fixtures."""

import gzip
import json

import pytest

from toolformer.errors import UserError
from evaluation.datasets import detect_format, load_examples, load_text

SVAMP = [
    {"ID": "chal-1", "Body": "Each pack of dvds costs 76 dollars. If there is a discount of 25 dollars on each pack",
     "Question": "How much do you have to pay to buy each pack?", "Equation": "( 76.0 - 25.0 )", "Answer": 51.0,
     "Type": "Subtraction"},
    {"ID": "chal-2", "Body": "Dan had $ 3 left with him after he bought a candy bar.",
     "Question": " If he had $ 4 at the start, how much did the candy bar cost?", "Equation": "( 4.0 - 3.0 )",
     "Answer": 1.0, "Type": "Subtraction"},
]

ASDIV = """<?xml version="1.0" encoding="utf-8"?>
<Machine-Reading-Corpus-File>
  <ProblemSet>
    <Problem ID="nluds-0001" Grade="1" Source="http://www.k5learning.com">
      <Body>Seven red apples and two green apples are in the basket.</Body>
      <Question>How many apples are in the basket?</Question>
      <Solution-Type>Addition</Solution-Type>
      <Answer>9 (apples)</Answer>
      <Formula>7+2=9</Formula>
    </Problem>
    <Problem ID="nluds-0002" Grade="1" Source="http://www.k5learning.com">
      <Body>Ellen has 6 more balls than Marin. Marin has 9 balls.</Body>
      <Question>What is the ratio of Marin's balls to Ellen's?</Question>
      <Solution-Type>Ratio</Solution-Type>
      <Answer>3:5</Answer>
      <Formula>9:15=3:5</Formula>
    </Problem>
    <Problem ID="nluds-0003" Grade="2" Source="x">
      <Body>A box holds 1,200 pens.</Body>
      <Question>How many pens are in two boxes?</Question>
      <Solution-Type>Multiplication</Solution-Type>
      <Answer>2,400 (pens)</Answer>
      <Formula>1200*2=2400</Formula>
    </Problem>
  </ProblemSet>
</Machine-Reading-Corpus-File>
"""

MAWPS_JSON = [
    {"iIndex": 5, "sQuestion": "Joan found 70 seashells. She has 27 left. How many did she give away?",
     "lEquations": ["X=(70.0-27.0)"], "lSolutions": [43.0]},
    {"iIndex": 6, "sQuestion": "Two numbers add to 10 and differ by 2. Find them.",
     "lEquations": ["x+y=10", "x-y=2"], "lSolutions": [6.0, 4.0]},
]


def write_jsonl(path, records, gz=False):
    text = "".join(json.dumps(r) + "\n" for r in records)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


def test_svamp(tmp_path):
    path = tmp_path / "SVAMP.json"
    path.write_text(json.dumps(SVAMP))
    assert detect_format(path, "math") == "svamp"
    data = load_examples(path, "math")
    assert data.format == "svamp" and data.skipped == []
    assert [(e.id, e.gold_number) for e in data.examples] == [("chal-1", 51.0), ("chal-2", 1.0)]
    assert data.examples[1].question == ("Dan had $ 3 left with him after he bought a candy bar. "
                                         "If he had $ 4 at the start, how much did the candy bar cost?")
    assert data.examples[0].meta == {"type": "Subtraction"}


def test_asdiv_reads_units_and_skips_non_numeric_answers(tmp_path):
    path = tmp_path / "ASDiv.xml"
    path.write_text(ASDIV)
    assert detect_format(path, "math") == "asdiv"
    data = load_examples(path, "math")
    assert [(e.id, e.gold_number, e.answers) for e in data.examples] == [
        ("nluds-0001", 9.0, ("9 (apples)",)), ("nluds-0003", 2400.0, ("2,400 (pens)",))]
    assert data.examples[0].question == ("Seven red apples and two green apples are in the basket. "
                                         "How many apples are in the basket?")
    assert data.skipped == ["Problem 2 (ID=nluds-0002): answer '3:5' is not a single number"]


def test_mawps_original_json(tmp_path):
    path = tmp_path / "mawps.json"
    path.write_text(json.dumps(MAWPS_JSON))
    assert detect_format(path, "math") == "mawps"
    data = load_examples(path, "math")
    assert [(e.id, e.gold_number) for e in data.examples] == [("5", 43.0)]
    assert data.skipped == ["record 2: 2 solutions, expected one"]


def test_mawps_jsonl_gz(tmp_path):
    path = write_jsonl(tmp_path / "test.jsonl.gz", [
        {"input": "Joan found 70 seashells. How many?", "target": 43.0, "type": "singleeq", "idx": 0},
        {"input": "Each person paid 45 dollars. Total?", "target": 135.0, "type": "singleop", "idx": 1},
    ], gz=True)
    assert detect_format(path, "math") == "mawps"
    data = load_examples(path, "math")
    assert [(e.id, e.question, e.gold_number, e.meta["type"]) for e in data.examples] == [
        ("0", "Joan found 70 seashells. How many?", 43.0, "singleeq"),
        ("1", "Each person paid 45 dollars. Total?", 135.0, "singleop")]


def test_gsm8k(tmp_path):
    path = write_jsonl(tmp_path / "test.jsonl", [
        {"question": "Janet sells eggs. How much?", "answer": "16 - 3 = <<16-3=13>>13\n#### 18"},
        {"question": "A house costs a lot. Profit?", "answer": "so\n#### 70,000"},
    ])
    assert detect_format(path, "math") == "gsm8k"
    data = load_examples(path, "math")
    assert [e.gold_number for e in data.examples] == [18.0, 70000.0]


def test_generic_jsonl_with_named_fields(tmp_path):
    path = write_jsonl(tmp_path / "mine.jsonl", [{"q": "What is 2 + 2?", "a": "4"}, {"q": "Half of 9?", "a": 4.5}])
    assert detect_format(path, "math") == "jsonl"
    data = load_examples(path, "math", question_field="q", answer_field="a")
    assert [(e.question, e.gold_number) for e in data.examples] == [("What is 2 + 2?", 4.0), ("Half of 9?", 4.5)]


def test_generic_jsonl_cloze_with_answer_lists(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": "The capital of France is", "answer": ["Paris"]}])
    data = load_examples(path, "cloze", format="jsonl")
    assert data.examples[0].answers == ("Paris",)


def test_lama_cloze_file_keeps_final_masks_only(tmp_path):
    path = write_jsonl(tmp_path / "lama_cloze_all.jsonl.gz", [
        {"subset": "T-REx", "relation": "P101", "id": "a", "sub_label": "Alan Turing", "obj_label": "logic",
         "statement": "Alan Turing works in the field of [MASK] .", "prefix": "Alan Turing works in the field of",
         "suffix": " .", "mask_is_final": True},
        {"subset": "Google_RE", "relation": "date_of_birth", "id": "b", "obj_label": "1912",
         "statement": "Alan Turing (born [MASK]).", "prefix": "Alan Turing (born", "suffix": ").",
         "mask_is_final": False},
    ], gz=True)
    assert detect_format(path, "cloze") == "lama"
    data = load_examples(path, "cloze")
    assert [(e.id, e.question, e.answers, e.meta["subset"]) for e in data.examples] == [
        ("a", "Alan Turing works in the field of", ("logic",), "T-REx")]
    assert data.skipped == ["record 2: the mask is not the final token"]


def test_lama_raw_masked_sentences(tmp_path):
    path = write_jsonl(tmp_path / "test.jsonl", [
        {"masked_sentences": ["Von Miller plays in [MASK] position for the Denver Broncos."],
         "obj_label": "linebacker", "id": "x"},
        {"masked_sentences": ["The color used was [MASK]."], "obj_label": "gold", "id": "y"},
        {"masked_sentences": ["Luther said that [MASK]ians must follow [MASK]."], "obj_label": "Christ"},
    ])
    data = load_examples(path, "cloze")
    assert [(e.id, e.question) for e in data.examples] == [("y", "The color used was")]
    assert data.skipped == ["record 1: the mask is not the final token", "record 3: 2 masks, expected one"]


def test_saved_dates(tmp_path):
    path = write_jsonl(tmp_path / "dates.jsonl", [
        {"question": "What year is it today?", "answer": "2017", "kind": "year", "today": "2017-04-12"}])
    data = load_examples(path, "dates")
    ex = data.examples[0]
    assert (ex.question, ex.answers, ex.kind, ex.today.isoformat()) == (
        "What year is it today?", ("2017",), "year", "2017-04-12")


def test_load_text_plain_and_jsonl(tmp_path):
    (tmp_path / "wiki.test.raw").write_text(" = Title = \n Some text .\n")
    assert load_text(tmp_path / "wiki.test.raw") == " = Title = \n Some text .\n"
    path = write_jsonl(tmp_path / "docs.jsonl", [{"text": "First doc."}, {"text": "Second doc."}])
    assert load_text(path) == "First doc.\n\nSecond doc."


@pytest.mark.parametrize("name, content, message", [
    ("bad.jsonl", '{"input": "a", "target": 1}\n{"input": "b", "target": \n',
     "bad.jsonl: record 2: invalid JSON"),
    ("missing.jsonl", '{"input": "a", "target": 1}\n\n{"input": "b"}\n',
     "missing.jsonl: record 3: missing field 'target'"),
    ("wrongtype.jsonl", '{"input": "a", "target": 1}\n{"input": ["b"], "target": 2}\n',
     "wrongtype.jsonl: record 2: field 'input' should be str, got list"),
    ("list.jsonl", '{"input": "a", "target": 1}\n[1, 2]\n', "list.jsonl: record 2: expected a JSON object"),
    ("svamp.json", json.dumps([SVAMP[0], {"ID": "z", "Body": "b", "Answer": 1}]),
     "svamp.json: record 2: missing field 'Question'"),
    ("broken.json", '[{"Body": ', "broken.json: invalid JSON"),
    ("ASDiv.xml", "<Problem><Body>x</Body>", "ASDiv.xml: invalid XML"),
    ("nq.xml", ASDIV.replace("<Question>How many pens are in two boxes?</Question>", ""),
     "nq.xml: Problem 3 (ID=nluds-0003): missing <Question>"),
])
def test_malformed_files_name_the_file_and_record(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(UserError) as err:
        load_examples(path, "math")
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_gsm8k_without_final_answer(tmp_path):
    path = write_jsonl(tmp_path / "g.jsonl", [{"question": "q", "answer": "#### 1"}, {"question": "q", "answer": "2"}])
    with pytest.raises(UserError, match=r"g.jsonl: record 2: answer has no final '#### n' line"):
        load_examples(path, "math")


def test_wrong_format_for_task_and_missing_file(tmp_path):
    path = tmp_path / "SVAMP.json"
    path.write_text(json.dumps(SVAMP))
    with pytest.raises(UserError, match="--format svamp does not fit --task cloze"):
        load_examples(path, "cloze")
    with pytest.raises(UserError, match="data file not found: .*nope.jsonl"):
        load_examples(tmp_path / "nope.jsonl", "math")
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(UserError, match="cannot detect the format of .*data.csv"):
        load_examples(tmp_path / "data.csv", "math")


def test_webquestions_both_formats(tmp_path):
    common = tmp_path / "main_test.json"
    common.write_text(json.dumps([{"qId": "wqs000001", "qText": "what did james k polk do before he was president?",
                                   "answers": ["Lawyer", " Farmer "]}]))
    data = load_examples(common, "qa")
    assert (data.format, len(data.examples)) == ("webquestions", 1)
    assert (data.examples[0].id, data.examples[0].question, data.examples[0].answers) == (
        "wqs000001", "what did james k polk do before he was president?", ("Lawyer", "Farmer"))
    original = tmp_path / "webquestions.examples.test.json"
    original.write_text(json.dumps([{"url": "http://www.freebase.com/view/en/jamaica",
                                     "targetValue": '(list (description "Jamaican Creole English Language") '
                                                    '(description Jamaican English) (description "The \\"Big\\" One"))',
                                     "utterance": "what does jamaican people speak?"}]))
    data = load_examples(original, "qa")
    assert data.format == "webquestions"
    assert data.examples[0].answers == ("Jamaican Creole English Language", "Jamaican English", 'The "Big" One')


def test_nq_open_is_jsonl_with_answer_lists_for_qa(tmp_path):
    path = write_jsonl(tmp_path / "NQ-open.dev.jsonl", [
        {"question": "when was the last time anyone was on the moon", "answer": ["14 December 1972 UTC", "December 1972"]}])
    data = load_examples(path, "qa")
    assert data.format == "jsonl"
    assert data.examples[0].answers == ("14 December 1972 UTC", "December 1972")


@pytest.mark.parametrize("records, message", [
    ([{"qText": "who?", "answers": []}], "record 1: no answers"),
    ([{"qText": "who?", "answers": ["x"]}, {"qText": "who?"}], "record 2: missing field 'answers'"),
    ([{"utterance": "who?", "targetValue": "(list)"}], "record 1: no answers"),
])
def test_webquestions_bad_records_name_the_record(tmp_path, records, message):
    path = tmp_path / "wq.json"
    path.write_text(json.dumps(records))
    with pytest.raises(UserError, match=message):
        load_examples(path, "qa", format="webquestions")


def test_webquestions_is_not_a_math_format(tmp_path):
    path = tmp_path / "wq.json"
    path.write_text(json.dumps([{"qText": "who?", "answers": ["x"]}]))
    with pytest.raises(UserError, match="--format webquestions does not fit --task math"):
        load_examples(path, "math")

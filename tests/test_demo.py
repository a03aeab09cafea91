"""The README's main flow, quick, on the tiny model: every step runs and leaves its artefacts."""

import json

from commands.demo import demo


def test_demo_flow_on_the_tiny_model(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "demo"
    args = dict(output=str(out), model=str(tiny_model_dir), limit=4, finetune_steps=2, eval_limit=2,
                # a random model keeps no calls: train on all texts so the flow runs through
                only_with_calls=False)
    assert demo(**args) == 0
    printed = capsys.readouterr().out
    assert (out / "index" / "meta.json").exists()
    assert (out / "augment" / "_SUCCESS").exists()
    stats = json.loads((out / "augment" / "stats.json").read_text())
    assert stats["documents"]["docs_read"] == 4 and stats["documents"]["texts_written"] == 4
    assert (out / "report" / "index.html").exists() and (out / "report" / "report.md").exists()
    assert json.loads((out / "finetuned" / "finetune.json").read_text())
    results = json.loads((out / "eval" / "results.json").read_text())
    assert results
    assert "The demo finished" in printed and str(out / "report" / "index.html") in printed
    # a re-run skips every finished step (no second pipeline run into the same directory)
    assert demo(**args) == 0
    assert "The demo finished" in capsys.readouterr().out

import json

import pytest
from rich.console import Console

from mmtransfer.demo import run_demo


@pytest.mark.slow  # three runs through the study engine
def test_demo_one_seed_shows_a_positive_gain_through_the_study_engine(tmp_path):
    console = Console(record=True, width=120)
    result = run_demo(tmp_path, seeds=1, progress=False, console=console, workers=1)
    for name in ("report.md", "metrics.json", "demo.png", "graft_report_seed0.json", "study/report.html"):
        assert (tmp_path / name).is_file(), name
    row = result["per_seed"][0]
    assert row["source_cnn_accuracy"] > 0.95
    assert row["transfer_accuracy"] > row["scratch_accuracy"] + 0.05
    assert row["transfer_before_finetune_accuracy"] > 0.8  # the distilled GRU with the CNN's head, no target label
    assert row["graft_counts"] == {"copied": 2, "adapted": 0, "skipped": 6, "new": 0}
    assert json.loads((tmp_path / "metrics.json").read_text())["summary"]["gain"]["mean"] == row["gain"]
    # one study: the source on one half of the non-test images, both GRUs on 100 labels of the other half
    cells = [json.loads(line) for line in (tmp_path / "study" / "cells.jsonl").read_text().splitlines()]
    assert [c.get("source") or c["arm"] for c in cells] == ["cnn", "scratch", "transfer"]
    assert cells[1]["labels"]["total"] == 100 and cells[0]["labels"]["total"] == 718
    assert result["setup"]["target_labels"] == {"train": 80, "selection": 20, "total": 100}
    text = console.export_text()
    assert "graft report" in text and "gain (transfer - scratch)" in text and str(tmp_path) in text
    # the terminal table shows the transferred GRU before fine-tuning, and what fine-tuning added
    before = f"{100 * row['transfer_before_finetune_accuracy']:.1f} ± 0.0 %"
    assert any("GRU transfer, before fine-tuning" in line and before in line for line in text.splitlines())
    assert row["finetune_gain"] == row["transfer_accuracy"] - row["transfer_before_finetune_accuracy"]
    assert result["summary"]["finetune_gain"]["mean"] == row["finetune_gain"]
    assert "fine-tuning's part" in text
    assert "| GRU from scratch |" in (tmp_path / "report.md").read_text()

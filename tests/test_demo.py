import json

from rich.console import Console

from mmtransfer.demo import run_demo


def test_demo_one_seed_shows_a_positive_gain(tmp_path):
    console = Console(record=True, width=120)
    result = run_demo(tmp_path, seeds=1, progress=False, console=console)
    for name in ("report.md", "metrics.json", "demo.png", "graft_report_seed0.json"):
        assert (tmp_path / name).is_file(), name
    row = result["per_seed"][0]
    assert row["source_cnn_accuracy"] > 0.95
    assert row["transfer_accuracy"] > row["scratch_accuracy"] + 0.05
    assert row["graft_counts"] == {"copied": 2, "adapted": 0, "skipped": 6, "new": 0}
    assert json.loads((tmp_path / "metrics.json").read_text())["summary"]["gain"]["mean"] == row["gain"]
    text = console.export_text()
    assert "graft report" in text and "gain (transfer - scratch)" in text and str(tmp_path) in text
    assert "| GRU from scratch |" in (tmp_path / "report.md").read_text()

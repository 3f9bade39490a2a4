"""mmtransfer study: the grid of cells, the report files, resuming, failures, the statistics, --auto, workers, Ray."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from mmtransfer import study as engine
from mmtransfer.config import ConfigError

BASE = {
    "data": {"dataset": "digits"},
    "model": {"embed_dim": 16, "encoders": {"image": {"type": "cnn", "channels": [8, 16]}}},
    "train": {"epochs": 3, "batch_size": 32, "lr": 5e-3},
}


def write_study(folder: Path, **changes) -> Path:
    (folder / "base.yaml").write_text(yaml.safe_dump(BASE))
    spec = {
        "base": "base.yaml",
        "budgets": [5, "all"],
        "seeds": 2,
        "reference": "scratch",
        "arms": {"scratch": {}, "probe": {"train.strategy.name": "linear_probe"}},
        **changes,
    }
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def cli(*args, cwd, timeout=600, **env_vars):
    env = {**os.environ, "COLUMNS": "160", **env_vars}
    return subprocess.run(
        [sys.executable, "-m", "mmtransfer", *map(str, args)], cwd=cwd, capture_output=True, text=True,
        timeout=timeout, env=env,
    )  # fmt: skip


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "cells.jsonl").read_text().splitlines()]


def test_paired_interval_equals_a_hand_computation():
    # differences 0.20, 0.05, 0.25: mean 1/6, sd sqrt(0.0325 / 3) = 0.104083, t(0.975, 2) = 4.302653
    ci = engine.paired_interval([0.90, 0.80, 0.85], [0.70, 0.75, 0.60])
    half = 4.302653 * 0.1040833 / np.sqrt(3)
    assert ci["n"] == 3
    assert ci["mean"] == pytest.approx(1 / 6)
    assert ci["std"] == pytest.approx(0.1040833, rel=1e-6)
    assert ci["low"] == pytest.approx(1 / 6 - half, rel=1e-5)
    assert ci["high"] == pytest.approx(1 / 6 + half, rel=1e-5)
    assert engine.paired_interval([0.9], [0.8])["low"] is None  # one pair: no interval


@pytest.mark.slow  # a study of several runs (processes)
def test_a_tiny_study_writes_the_tables_json_and_a_self_contained_html(tmp_path):
    path = write_study(tmp_path, budgets=["all", 5])  # the confusion matrices are of the largest, wherever listed
    result = cli("study", path, "--out", tmp_path / "s", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "s"
    cells = records(out)
    assert len(cells) == 8 and {c["status"] for c in cells} == {"ok"}
    assert {(c["arm"], c["budget_name"], c["seed"]) for c in cells} == {
        (a, b, s) for a in ("scratch", "probe") for b in ("k5", "all") for s in (0, 1)
    }
    results = json.loads((out / "results.json").read_text())
    assert results["study"]["seeds"] == 2 and results["base_config"]["data"]["dataset"] == "digits"
    assert results["versions"]["packages"]["torch"] and results["versions"]["machine"]["cpus"] >= 1
    cell = next(c for c in results["cells"] if c["arm"] == "scratch" and c["budget_name"] == "k5" and c["seed"] == 1)
    assert cell["config"]["data"]["k_per_class"] == 5 and cell["config"]["data"]["seed"] == 1
    assert cell["config"]["train"]["seed"] == 1 and cell["splits"]["labels_sha256"]["test"]
    assert cell["labels"]["total"] == 50 and cell["test"]["n"] == 360  # the budget counts the selection labels
    # the summary's numbers are the cells' numbers
    k5 = results["summary"]["k5"]
    accs = {(c["arm"], c["seed"]): c["test"]["accuracy"] for c in results["cells"] if c["budget_name"] == "k5"}
    assert k5["scratch"]["accuracy"]["mean"] == pytest.approx((accs["scratch", 0] + accs["scratch", 1]) / 2)
    gain = k5["probe"]["gain"]["accuracy"]
    assert gain["mean"] == pytest.approx(k5["probe"]["accuracy"]["mean"] - k5["scratch"]["accuracy"]["mean"])
    assert gain["low"] < gain["mean"] < gain["high"]
    md = (out / "report.md").read_text()
    assert "gain over scratch" in md and "paired t interval" in md and "| probe |" in md
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3  # learning curves + one confusion matrix per arm
    assert "<script" not in page and "http" not in page.replace("http-equiv", "")  # nothing fetched
    for png in ("learning_curves.png", "confusion_scratch.png", "confusion_probe.png"):
        assert (out / png).stat().st_size > 5000
    assert "probe" in result.stdout and "gain over scratch" in result.stdout


@pytest.mark.slow  # a study of several runs (processes)
def test_a_killed_study_computes_only_the_remaining_cells(tmp_path):
    path = write_study(tmp_path)
    out = tmp_path / "s"
    proc = subprocess.Popen([sys.executable, "-m", "mmtransfer", "study", str(path), "--out", str(out)], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    log = out / "cells.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (log.is_file() and log.read_text().count("\n") >= 1):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = records(out)
    assert 1 <= len(before) < 8, "the kill should land after the first cell and before the last"
    result = cli("study", path, "--out", out, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"{len(before)} finished before, {8 - len(before)} to run" in result.stdout
    after = records(out)
    assert after[: len(before)] == before  # the finished cells are kept as they were
    keys = [(c["arm"], c["budget_name"], c["seed"]) for c in after]
    assert len(keys) == 8 == len(set(keys))  # each cell computed once


@pytest.mark.slow  # a study of several runs (processes)
def test_a_failing_arm_is_reported_and_the_others_finish(tmp_path):
    arms = {"scratch": {}, "broken": {"model.encoders.image": {"type": "attention", "max_len": 4}}}  # 8 rows > 4
    path = write_study(tmp_path, arms=arms, budgets=[5])
    result = cli("study", path, "--out", tmp_path / "s", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    cells = records(tmp_path / "s")
    assert [c["status"] for c in cells if c["arm"] == "scratch"] == ["ok", "ok"]
    failed = [c for c in cells if c["arm"] == "broken"]
    assert [c["status"] for c in failed] == ["failed", "failed"] and "more than max_len=4" in failed[0]["error"]
    md = (tmp_path / "s" / "report.md").read_text()
    assert "failed cells" in md and "broken/k5/seed0" in md
    assert (tmp_path / "s" / "cells" / "broken" / "k5" / "seed0.log").read_text().count("Traceback") == 1


@pytest.mark.parametrize(
    "change, message",
    [
        ({"budgets": [0]}, "data.k_per_class=0 trains with no label: only a teacher can"),
        ({"reference": "nope"}, "reference 'nope' is not an arm"),
        ({"arms": {"a b": {}}}, "arm name 'a b'"),
        ({"arms": {"scratch": {}, "fast": {"train.lr": "fast"}}}, "arm fast, budget k=5, seed 0"),
        ({"base": "missing.yaml"}, "config file not found"),
        ({"arms": {"scratch": {}, "t": {"transfer.source": "no-such-run"}}}, "arm t, budget k=5, seed 0: transfer"),
    ],
)
def test_bad_study_files_are_one_error_line_before_any_work(tmp_path, change, message):
    path = write_study(tmp_path, **change)
    result = cli("study", path, "--out", tmp_path / "s", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("error:") and message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "s" / "cells.jsonl").exists()


@pytest.mark.slow  # a study of several runs (processes)
def test_two_workers_give_the_same_numbers_as_one(tmp_path):
    path = write_study(tmp_path, budgets=[5])
    one, two = tmp_path / "one", tmp_path / "two"
    assert cli("study", path, "--out", one, "--threads", "1", cwd=tmp_path).returncode == 0
    result = cli("study", path, "--out", two, "--workers", "2", "--threads", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "2 workers" in result.stdout

    def numbers(out):
        return {(c["arm"], c["seed"]): (c["test"]["accuracy"], c["test"]["loss"]) for c in records(out)}

    assert numbers(one) == numbers(two) and len(numbers(one)) == 4


@pytest.mark.slow  # a study of several runs (processes)
def test_auto_never_reads_the_test_split_and_recommends_a_strategy(tmp_path, monkeypatch):
    from mmtransfer import runs

    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(BASE))
    real = runs.load_dataset
    scored = []

    class Untouchable:
        def __getattr__(self, name):
            raise AssertionError(f"the test split was read ({name})")

        def __len__(self):
            raise AssertionError("the test split was read (len)")

    def without_test(*args, **kwargs):
        data = real(*args, **kwargs)
        scored.append(len(data.val))
        data.test = Untouchable()
        return data

    monkeypatch.setattr(runs, "load_dataset", without_test)
    spec, base, folder = engine.auto_study(config, seeds=2)
    assert set(spec.arms) == {"linear_probe", "full", "freeze_then_unfreeze", "gradual_unfreeze", "discriminative"}
    results = engine.Study(spec, base, folder, tmp_path / "auto", selection_only=True).run()
    assert all(c["status"] == "ok" for c in results["cells"]) and len(results["cells"]) == 10
    assert {c["test"]["n"] for c in results["cells"]} == {216} == set(scored)  # the validation split, scored
    best = engine.recommend(results, spec)
    accs = {a: e["accuracy"]["mean"] for a, e in results["summary"]["all"].items()}
    assert best["arm"] == max(accs, key=accs.get) and best["runner_up"] in accs
    assert best["margin"]["low"] is not None


@pytest.mark.slow  # a study of several runs (processes)
def test_auto_apply_fits_the_recommended_strategy(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(BASE))
    result = cli("study", "--auto", config, "--seeds", "2", "--apply", tmp_path / "run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    best = json.loads((tmp_path / "run-auto" / "recommendation.json").read_text())
    assert f"recommended: {best['arm']}" in result.stdout
    fitted = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert fitted["train"]["strategy"]["name"] == best["arm"]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["test"]["n"] == 360


@pytest.mark.slow  # a study of several runs (processes)
def test_per_input_ablation_finds_the_input_that_carries_the_label(tmp_path):
    """A number column holds the label, the pictures are noise: masking the number costs the accuracy,
    masking the picture costs nothing much."""
    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    rows = []
    for i in range(90):
        Image.fromarray((rng.random((8, 8)) * 255).astype(np.uint8)).save(tmp_path / "img" / f"{i}.png")
        rows.append({"picture": f"img/{i}.png", "signal": float(i % 3) + rng.normal(0, 0.1), "label": f"c{i % 3}"})
    pd.DataFrame(rows).to_csv(tmp_path / "t.csv", index=False)
    base = {
        "data": {"table": "t.csv", "test_fraction": 0.3, "columns": {"picture": {"modality": "image", "size": [8, 8]}}},
        "model": {"embed_dim": 16},
        "train": {"epochs": 40, "batch_size": 16, "lr": 1e-2},
    }
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    spec = {"base": "base.yaml", "budgets": ["all"], "seeds": 2, "arms": {"scratch": {}}}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(spec))
    result = cli("study", tmp_path / "study.yaml", "--out", tmp_path / "s", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    entry = json.loads((tmp_path / "s" / "results.json").read_text())["summary"]["all"]["scratch"]
    assert entry["accuracy"]["mean"] > 0.9
    ablation = entry["ablation"]
    assert set(ablation) == {"picture", "tabular"}  # number columns are one input
    assert ablation["tabular"]["drop"]["mean"] > 0.4  # without the number, little better than chance (1/3)
    assert ablation["picture"]["drop"]["mean"] < 0.15
    assert "input masked" in (tmp_path / "s" / "report.md").read_text()


@pytest.mark.slow  # a study of several runs (processes)
def test_ray_backend_runs_a_tiny_study(tmp_path):
    pytest.importorskip("ray")
    path = write_study(tmp_path, budgets=[5], seeds=2, arms={"scratch": {}})
    result = cli("study", path, "--out", tmp_path / "s", "--backend", "ray", "--threads", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    cells = records(tmp_path / "s")
    assert len(cells) == 2 and {c["status"] for c in cells} == {"ok"} and "ray" in result.stdout


def test_study_config_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match="budgets"):
        engine.load_study(write_study(tmp_path, budgets=[1.5]))


def test_the_readme_study_file_is_a_valid_study():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"```yaml\n(# study\.yaml:.*?)```", readme, re.S).group(1)
    spec = engine.StudyConfig.model_validate(yaml.safe_load(block))
    assert spec.budgets == [5, 20, 100] and spec.reference_arm == "scratch" and len(spec.arms) == 3
    demo = re.search(r"```yaml\n(base: \{data: \{dataset: digits.*?)```", readme, re.S).group(1)
    spec = engine.StudyConfig.model_validate(yaml.safe_load(demo))  # the demo's study, as the README shows it
    assert list(spec.sources) == ["cnn"] and engine._placeholders(spec.arms["transfer"]) == {"cnn"}
    cfg = engine.cell_config(spec.base, engine.fill(spec.arms["transfer"], 1, {"cnn": "/runs/cnn1"}), 10, 1,
                             Path("."), "transfer")  # fmt: skip
    assert cfg.transfer.source == "/runs/cnn1" and cfg.data.pool == "second_half" and cfg.data.k_per_class == 10


def test_an_arm_can_set_a_whole_section_and_the_budget_and_seed_are_the_cells(tmp_path):
    arm = {"model.encoders.image": {"type": "rnn", "cell": "gru", "hidden_size": 8}, "train.lr": 1e-3}
    cfg = engine.cell_config(BASE, arm, 5, 2, tmp_path, "arm gru")
    assert cfg.model.encoders["image"].type == "rnn" and cfg.model.encoders["image"].hidden_size == 8
    assert cfg.train.lr == 1e-3 and cfg.train.seed == 2 and cfg.data.seed == 2
    assert cfg.data.k_per_class == 5 and cfg.data.label_fraction is None
    assert engine.cell_config(BASE, {}, 0.25, 0, tmp_path, "x").data.label_fraction == 0.25
    assert engine.cell_config({**BASE, "data": {"dataset": "digits", "k_per_class": 3}}, {}, "all", 0, tmp_path,
                              "x").data.k_per_class is None  # fmt: skip


@pytest.mark.slow  # a study of several runs (processes)
def test_arms_that_share_a_frozen_encoder_reuse_its_cached_features(tmp_path):
    arms = {"probe": {"train.strategy.name": "linear_probe"},
            "probe_slow": {"train.strategy.name": "linear_probe", "train.lr": 1e-3}}  # fmt: skip
    path = write_study(tmp_path, arms=arms, budgets=[5], seeds=1, reference="probe")
    result = cli("study", path, "--out", tmp_path / "s", cwd=tmp_path, MMTRANSFER_CACHE=str(tmp_path / "cache"))
    assert result.returncode == 0, result.stderr
    first = (tmp_path / "s" / "cells" / "probe" / "k5" / "seed0.log").read_text()
    second = (tmp_path / "s" / "cells" / "probe_slow" / "k5" / "seed0.log").read_text()
    for split in ("train", "val", "test"):
        assert f"{split} features" in first and "computed" in first
        assert any(f"{split} features" in line and "read from cache" in line for line in second.splitlines())


@pytest.mark.slow  # a study of several runs (processes)
def test_sources_are_made_per_seed_before_the_arms_that_transfer_from_them(tmp_path):
    # The demo's shape: a source per seed on one half of the rows, arms on the other half, {source.NAME} and {seed}.
    sources = {"cnn": {"data.pool": "first_half", "train.epochs": 2}}
    arms = {"scratch": {"data.pool": "second_half"},
            "graft": {"data.pool": "second_half", "transfer.source": "{source.cnn}", "transfer.select": ["encoders.*"],
                      "transfer.score_before_training": True, "train.epochs": "{seed}"}}  # fmt: skip
    with pytest.raises(ConfigError, match=r"(?s)arm graft, budget k=5, seed 0: .*train.epochs"):  # {seed} = 0 < 1
        engine.Study(*engine.load_study(write_study(tmp_path, sources=sources, arms=arms, budgets=[5])), tmp_path)
    arms["graft"]["train.epochs"] = 2
    later = tmp_path / "later"
    later.mkdir()
    later_arm = {"transfer.source": "{source.cnn}/model.safetensors"}  # a file inside a source run: made later too
    engine.Study(*engine.load_study(write_study(later, sources=sources, arms={"t": later_arm}, reference=None)), later)
    filled = engine.fill({"a": "runs/s{seed}", "b": ["{source.cnn}/x"], "c": "{seed}", "d": 1.5}, 3, {"cnn": "/p"})
    assert filled == {"a": "runs/s3", "b": ["/p/x"], "c": 3, "d": 1.5}
    path = write_study(tmp_path, sources=sources, arms=arms, budgets=[5])
    result = cli("study", path, "--out", tmp_path / "s", "--workers", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "+ 2 source runs" in result.stdout
    cells = records(tmp_path / "s")
    order = [c.get("source") or c["arm"] for c in cells]
    for seed in (0, 1):  # each seed's source ends before the arm that transfers from it
        src = next(i for i, c in enumerate(cells) if c.get("source") == "cnn" and c["seed"] == seed)
        arm = next(i for i, c in enumerate(cells) if c.get("arm") == "graft" and c["seed"] == seed)
        assert src < arm, order
    results = json.loads((tmp_path / "s" / "results.json").read_text())
    graft = {c["seed"]: c for c in results["cells"] if c["arm"] == "graft"}
    assert graft[1]["config"]["transfer"]["source"] == str(tmp_path / "s" / "cells" / "sources" / "cnn" / "seed1")
    metrics = json.loads((Path(graft[0]["folder"]) / "metrics.json").read_text())
    assert 0 <= metrics["before_training"]["accuracy"] <= 1 and metrics["before_training"]["n"] == 360
    report = json.loads((Path(graft[0]["folder"]) / "transfer_report.json").read_text())["graft"]["records"]
    state = {r["target"]: (r["state"], r["reason"]) for r in report}
    assert state["encoders.image.blocks.0.0.weight"][0] == "copied"  # transfer.select: the encoder only
    assert state["head.out.weight"] == ("skipped", "not in transfer.select: newly initialised")
    assert set(results["source_summary"]) == {"cnn"} and len(results["sources"]) == 2
    # the score before training, carried from metrics.json into the records, the summary and the report
    assert graft[0]["before_training"] == {k: v for k, v in metrics["before_training"].items()
                                           if k in ("n", "loss", *engine.METRICS)}  # fmt: skip
    assert results["summary"]["k5"]["graft"]["before_training"]["accuracy"]["n"] == 2
    assert "| graft, before training |" in (tmp_path / "s" / "report.md").read_text()
    # a cell's log is whole: the graft table's reasons are not wrapped or cut at a console width
    log = (tmp_path / "s" / "cells" / "graft" / "k5" / "seed0.log").read_text().splitlines()
    assert any("head.out.weight" in line and line.endswith("not in transfer.select: newly initialised") for line in log)
    assert "source runs (one per seed, before the arms)" in (tmp_path / "s" / "report.md").read_text()
    # the source's rows and the arms' rows are disjoint halves of the non-test rows, the test split the same
    from mmtransfer.config import DataConfig
    from mmtransfer.data import load_dataset

    src = load_dataset(DataConfig(dataset="digits", seed=1, pool="first_half"))
    tgt = load_dataset(DataConfig(dataset="digits", seed=1, pool="second_half", k_per_class=5))

    def rows(*splits):
        return {s.inputs["image"][i].numpy().tobytes() for s in splits for i in range(len(s))}

    assert len(rows(src.train, src.val)) == 718 and not rows(src.train, src.val) & rows(tgt.train, tgt.val)
    assert bool((src.test.labels == tgt.test.labels).all()) and len(tgt.train_pool) == 1437


@pytest.mark.slow  # a study of several runs (processes)
def test_a_failed_source_fails_only_the_arms_that_need_it(tmp_path):
    sources = {"bad": {"model.encoders.image": {"type": "attention", "max_len": 4}}}  # 8 rows > 4: fails
    arms = {"scratch": {}, "t": {"transfer.source": "{source.bad}"}}
    path = write_study(tmp_path, sources=sources, arms=arms, budgets=[5], seeds=1)
    result = cli("study", path, "--out", tmp_path / "s", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    status = {(c.get("source") or c["arm"]): (c["status"], c.get("error", "")) for c in records(tmp_path / "s")}
    assert status["scratch"][0] == "ok" and status["bad"][0] == "failed"
    assert status["t"][0] == "failed" and status["t"][1].startswith("source bad of seed 0 failed: ")
    assert not (tmp_path / "s" / "cells" / "t").exists()  # never started


@pytest.mark.parametrize(
    "sources, arms, message",
    [
        ({}, {"t": {"transfer.source": "{source.cnn}"}}, "{source.cnn} names no source (sources: none)"),
        ({"a": {}, "b": {"transfer.source": "{source.a}"}}, {"t": {}}, "sources.b: a source cannot transfer"),
        ({"k5": {}}, {"sources": {}}, "arm name 'sources' is taken"),
    ],
)
def test_a_placeholder_must_name_a_source(tmp_path, sources, arms, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        engine.load_study(write_study(tmp_path, sources=sources, arms=arms, reference=None))


def fake_results(spec, accuracies: dict, before: dict | None = None, classes=("a", "b")) -> dict:
    """results as Study.report makes them, from {(arm, budget): [accuracy per seed]} (no training)."""
    records = []
    for (arm, b), accs in accuracies.items():
        for seed, acc in enumerate(accs):
            per_class = b if isinstance(b, int) else 90
            record = {"arm": arm, "budget": b, "budget_name": engine.budget_name(b), "seed": seed, "seconds": 1.0,
                      "labels": {"total": per_class * len(classes)}, "classes": list(classes),
                      "test": {"n": 100, "accuracy": acc, "confusion": [[50, 0], [0, 50]]}}  # fmt: skip
            if before and (arm, b) in before:
                record["before_training"] = {"n": 100, "accuracy": before[arm, b][seed]}
            records.append(record)
    return {"summary": engine.summarise(records, spec), "scored_split": "test", "records": records}


def test_the_report_states_its_conclusions_in_words_decided_by_the_interval():
    from mmtransfer import study_report

    arms = {"scratch": {}, "probe": {"train.strategy.name": "linear_probe"},
            "transfer": {"transfer.source": "runs/x", "model.encoders.image": {"type": "rnn"}}}  # fmt: skip
    spec = engine.StudyConfig(base={}, budgets=[5, "all"], seeds=3, reference="scratch", arms=arms)
    results = fake_results(
        spec,
        {("scratch", 5): [0.50, 0.55, 0.52], ("probe", 5): [0.78, 0.82, 0.795],
         ("transfer", 5): [0.53, 0.51, 0.56], ("scratch", "all"): [0.90, 0.92, 0.91],
         ("probe", "all"): [0.85, 0.86, 0.855], ("transfer", "all"): [0.99, 1.0, 0.96]},
        before={("transfer", 5): [0.52, 0.52, 0.55]},
    )  # fmt: skip
    lines = study_report.conclusions(results, spec)
    gain = results["summary"]["k5"]["probe"]["gain"]["accuracy"]
    assert lines[0] == (f"At 5 labels per class, probe beats scratch by {100 * gain['mean']:.1f} points of accuracy, "
                        f"95 % interval [{100 * gain['low']:.1f}, {100 * gain['high']:.1f}] (3 seeds).")  # fmt: skip
    assert lines[1].startswith("At 5 labels per class, transfer is within noise of scratch: +1.0 points of accuracy")
    assert "holds 0" in lines[1]
    assert lines[2].startswith("At 5 labels per class, transfer scores 53.0 % accuracy before training; training on "
                               "the budget changes it by +0.3 points of accuracy")  # fmt: skip
    assert lines[2].endswith("within noise, it adds nothing measurable.")
    assert lines[3].startswith("With all labels, probe is behind scratch by 5.5 points of accuracy, 95 % interval [")
    # intervals stay where an accuracy can lie: [0.96, 1.0] over three seeds would reach past 1 otherwise
    top = results["summary"]["all"]["transfer"]["accuracy"]
    assert top["high"] == 1.0 and top["low"] > 0.9
    assert engine.mean_interval([0.99, 1.0, 0.96], bounds=(0.0, 1.0))["high"] == 1.0
    assert engine.mean_interval([0.99, 1.0, 0.96])["high"] > 1.0
    # arms as the settings a reader writes; the score before training carried into the tables
    assert study_report.settings(spec.arms["transfer"]) == "transfer.source=runs/x, model.encoders.image.type=rnn"
    assert study_report.settings({}) == "the base config"
    machine = {"platform": "p", "cpus": 2, "gpu": None}
    results |= {"command": "", "statistics": "s", "failed": [], "plots": [],
                "versions": {"machine": machine, "packages": {"torch": "2"}}}  # fmt: skip
    md = study_report.markdown(results, spec)
    assert "probe (train.strategy.name=linear_probe)" in md and "{" not in md.split("## Conclusions")[0]
    assert "| transfer, before training | 53.0 ± 1.7 (3) | - |" in md
    assert "## Conclusions" in md and lines[0] in md


def test_plots_show_whole_titles_and_the_budgets_studied():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mmtransfer import study_report

    spec = engine.StudyConfig(base={}, budgets=[5, 20], seeds=2, arms={"scratch": {}, "probe": {}})
    results = fake_results(spec, {(a, b): [0.5, 0.6] for a in ("scratch", "probe") for b in (5, 20)})
    fig = study_report.learning_curve_figure(results["summary"], spec)
    ax = fig.axes[0]
    assert ax.get_xscale() == "linear" and [t.get_text() for t in ax.get_xticklabels()] == ["5", "20"]
    assert not ax.xaxis.get_minor_ticks()  # no 6x10^0
    plt.close(fig)
    wide = engine.StudyConfig(base={}, budgets=[5, 20, "all"], seeds=2, arms={"scratch": {}})
    results = fake_results(wide, {("scratch", b): [0.5, 0.6] for b in (5, 20, "all")})
    fig = study_report.learning_curve_figure(results["summary"], wide)
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert fig.axes[0].get_xscale() == "log" and labels == ["5", "20", "all labels\n(90 per class)"]
    plt.close(fig)
    title = "a_rather_long_arm_name_for_two_classes, all labels: confusion summed over 3 seeds"
    fig = study_report.confusion_figure(np.array([[5, 1], [2, 7]]), ["ham", "spam"], title)
    fig.canvas.draw()
    box = fig.axes[0].title.get_window_extent(fig.canvas.get_renderer())
    assert fig.axes[0].title.get_text().replace("\n", " ") == title  # whole, wrapped
    assert box.x0 >= 0 and box.x1 <= fig.bbox.x1 and box.y1 <= fig.bbox.y1
    plt.close(fig)


def test_a_cell_silences_third_party_progress_bars_and_keeps_stderr_in_its_log(tmp_path):
    import io

    hf_logging = pytest.importorskip("transformers.utils.logging")
    enabled = hf_logging.is_progress_bar_enabled()
    log = io.StringIO()
    with engine._quiet_libraries(log):
        assert not hf_logging.is_progress_bar_enabled()  # transformers' "Loading weights" bars
        assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"  # read by a worker's first import
        print("a library's warning", file=sys.stderr)
    assert log.getvalue() == "a library's warning\n"
    assert hf_logging.is_progress_bar_enabled() == enabled  # as it was: a cell may run in the study's own process


def test_auto_compares_lp_ft_where_the_model_starts_from_pretrained_features(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("data: {table: t.csv}\nmodel: {preset: auto}\n")  # a table's photos get a pretrained backbone
    assert "lp_ft" in engine.auto_study(config)[0].arms
    config.write_text("data: {table: t.csv}\nmodel: {preset: scratch}\n")
    assert "lp_ft" not in engine.auto_study(config)[0].arms
    config.write_text("model: {encoders: {image: {type: efficientnet_lite, pretrained: false}}}\n")
    assert "lp_ft" not in engine.auto_study(config)[0].arms  # digits, and an EfficientNet without its weights


def test_a_cell_runs_the_config_its_arm_gives_with_the_settings_left_to_the_encoder(tmp_path):
    """A study cell's config reaches its process with only the fields it sets, so what a column leaves to its
    encoder (an audio column under aisfx: 44.1 kHz waveforms) is resolved as a fit of the same config does."""
    from mmtransfer.config import RunConfig

    (tmp_path / "t.csv").write_text("audio,label\na.wav,x\n")
    base = {"data": {"table": "t.csv", "columns": {"audio": {"modality": "audio", "seconds": 5.0}}}}
    spec = engine.StudyConfig(base=base, budgets=[5], seeds=1, arms={"a": {"model.encoders.audio": {"type": "aisfx"}}})
    study = engine.Study(spec, base, tmp_path, tmp_path / "s")
    cfg_json = study._job({"arm": "a", "budget": 5, "budget_name": "k5", "seed": 0}, 1)[0]
    column = RunConfig.model_validate(cfg_json).data.columns["audio"]
    assert column.model_fields_set == {"modality", "seconds"}
    resolved = column.resolved({"sample_rate": 44100, "features": "waveform", "seconds": 2.0})
    assert (resolved.sample_rate, resolved.features, resolved.seconds) == (44100, "waveform", 5.0)


def test_confusion_matrices_of_seeds_with_different_classes_add_up_by_name():
    from mmtransfer.study.report import summed_confusion

    runs = [
        {"classes": ["a", "b"], "test": {"confusion": [[3, 1], [0, 4]]}},
        {"classes": ["a", "c", "b"], "test": {"confusion": [[1, 0, 0], [0, 2, 1], [0, 0, 5]]}},
    ]
    classes, matrix = summed_confusion(runs)
    assert classes == ["a", "b", "c"]
    assert matrix.tolist() == [[4, 1, 0], [0, 9, 0], [0, 1, 2]]

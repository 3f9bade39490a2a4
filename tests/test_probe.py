"""The solved linear probe: against scikit-learn, its cross-validation, and in a run (linear_probe, lp_ft, auto)."""

import json

import numpy as np
import pytest
import torch

from mmtransfer.config import validate
from mmtransfer.display import make_console
from mmtransfer.runs import fit_run, load_run
from mmtransfer.transfer import auto, probe
from mmtransfer.transfer.probe import solve_probe


def blobs(n_per_class=20, classes=4, dim=12, seed=0, spread=1.0):
    """Gaussian blobs around fixed centres, one per class: features [N, dim], labels [N]; ``seed`` draws the rows."""
    centres = np.random.default_rng(100).normal(size=(classes, dim)) * 1.5
    y = np.repeat(np.arange(classes), n_per_class)
    return centres[y] + np.random.default_rng(seed).normal(size=(len(y), dim)) * spread, y


def test_the_solved_probe_is_scikit_learns_logistic_regression_at_the_chosen_c():
    from sklearn.linear_model import LogisticRegression

    x, y = blobs(seed=0, spread=2.5)  # overlapping classes: a C inside the grid
    x_test, y_test = blobs(n_per_class=50, seed=1, spread=2.5)
    result = solve_probe(torch.tensor(x, dtype=torch.float32), torch.tensor(y))
    c = result.record["C"]
    x32 = torch.tensor(x, dtype=torch.float32).double().numpy()  # what the probe saw: float32 features in float64
    reference = LogisticRegression(C=c, tol=1e-10, max_iter=100_000).fit(x32, y)
    ours = (x_test @ result.weight.T + result.bias).argmax(1)
    assert abs((ours == y_test).mean() - (reference.predict(x_test) == y_test).mean()) <= 1e-3
    scale = np.abs(reference.coef_).max()
    assert np.abs(result.weight - reference.coef_).max() < 1e-3 * scale
    assert np.abs(result.bias - reference.intercept_).max() < 1e-3 * scale
    assert 1e-3 < c < 1e3
    r = result.record
    assert r["converged"] and 0 < r["n_iter"] < probe.MAX_ITER and r["solver"] == "lbfgs" and r["n_labels"] == 80
    assert r["cv"]["folds"] == 5 and set(r["cv"]["accuracy"]) >= {"0.001", "1", "1000"}
    assert r["cv"]["log_loss_at_c"] == min(r["cv"]["log_loss"].values()) == r["cv"]["log_loss"][f"{c:g}"]
    assert r["cv"]["accuracy_at_c"] == r["cv"]["accuracy"][f"{c:g}"]
    assert result.line().startswith(f"linear probe solved (L-BFGS, converged in {r['n_iter']} iterations): C={c:g}")


def test_two_classes_give_two_head_rows_with_scikit_learns_probabilities():
    from sklearn.linear_model import LogisticRegression

    x, y = blobs(classes=2, seed=3, spread=2.0)
    result = solve_probe(x, y, cs=(0.1,))
    assert result.weight.shape == (2, 12) and result.bias.shape == (2,)
    reference = LogisticRegression(C=result.record["C"], tol=1e-10, max_iter=100_000).fit(x, y)
    p = torch.softmax(torch.tensor(x @ result.weight.T + result.bias), 1).numpy()
    assert np.allclose(p, reference.predict_proba(x), atol=1e-4)


def test_the_folds_follow_the_smallest_class_and_one_label_per_class_fixes_c():
    x, y = blobs(n_per_class=3, seed=2)
    assert solve_probe(x, y).record["cv"]["folds"] == 3  # min(5, the smallest class's count)
    one = solve_probe(x[::3], y[::3])
    assert one.record["cv"] is None and one.record["C"] == probe.FIXED_C and one.record["converged"]
    assert "fixed on 4 labels (a class has a single label" in one.line()
    grouped = solve_probe(*blobs(n_per_class=10, seed=2), groups=np.arange(40) // 2)  # rows in pairs
    assert grouped.record["cv"]["grouped"] and "5-fold grouped CV" in grouped.line()


def test_a_class_without_labels_is_never_predicted():
    x, y = blobs(classes=3, seed=4)
    result = solve_probe(x, y, num_classes=5)
    logits = x @ result.weight.T + result.bias
    assert result.weight.shape == (5, 12) and not result.weight[3:].any()
    assert (logits[:, 3:].max(1) < logits[:, :3].max(1) - 10 + 1e-9).all()
    assert result.record["classes_without_labels"] == [3, 4]


def test_regression_is_ridge_with_alpha_by_cross_validation():
    from sklearn.linear_model import Ridge

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 8))
    y = 50 + 10 * (x @ rng.normal(size=8)) + rng.normal(size=60)
    result = solve_probe(x, y, task="regression")
    alpha, (mean, std) = result.record["alpha"], (y.mean(), y.std())
    reference = Ridge(alpha=alpha).fit(x, (y - mean) / std)
    assert np.allclose(x @ result.weight.T + result.bias, reference.predict(x)[:, None] * std + mean)
    assert result.record["cv"]["best_r2"] > 0.95 and result.record["converged"]


def test_the_probe_goes_into_the_head_in_the_models_units_and_only_where_it_can_be_solved():
    from mmtransfer.config import ModelConfig
    from mmtransfer.model import build_model

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6))
    y = 20 + 5 * x[:, 0] + rng.normal(size=40) * 0.1
    model = build_model(ModelConfig(encoders={"v": {"type": "mlp", "hidden": [6]}}, embed_dim=6), {"v": (3,)}, 1)
    model.task, model.target_mean, model.target_std = "regression", 18.0, 4.0  # the run's own standardisation
    result = solve_probe(x, y, task="regression")
    probe.put_in_head(model, result)
    z = torch.tensor(x, dtype=torch.float32)
    out = model.head(z)[:, 0].detach().numpy() * 4.0 + 18.0  # what forward() gives for embedding z
    assert np.allclose(out, (x @ result.weight.T + result.bias)[:, 0], atol=1e-4)
    assert probe.solvable(model, "regression") is None
    assert "multilabel target" in probe.solvable(model, "multilabel")
    hidden = build_model(ModelConfig(head_hidden=4, embed_dim=6), {"v": (3,)}, 2)
    assert "hidden layer (model.head_hidden)" in probe.solvable(hidden, "classification")
    gated = build_model(ModelConfig(fusion="gated", embed_dim=6), {"v": (3,), "w": (2,)}, 2)
    assert "needs model.fusion: concat" in probe.solvable(gated, "classification")


# ---------------------------------------------------------------- in a run

PROBE_YAML = {
    "data": {"dataset": "digits", "k_per_class": 10},
    "model": {"embed_dim": 16, "encoders": {"image": {"type": "cnn", "channels": [8], "stride": 1}}},
    # nothing of a gradient loop can leave the solved probe unconverged: one epoch, a tiny rate, batches of 1
    "train": {"epochs": 1, "lr": 1e-7, "batch_size": 1, "progress": False, "strategy": {"name": "linear_probe"}},
}


def test_linear_probe_is_solved_on_every_label_and_the_test_features_come_after(tmp_path, monkeypatch):
    monkeypatch.setenv("MMTRANSFER_CACHE", str(tmp_path / "cache"))
    events, seen = [], {}
    real_cache, real_solve = auto.add_cached_features, probe.solve_probe

    def cache(model, splits, **kw):
        events.append(sorted(splits))
        return real_cache(model, splits, **kw)

    def solve(features, labels, **kw):
        events.append("solve")
        seen.update(features=features.clone(), labels=labels.clone())
        return real_solve(features, labels, **kw)

    monkeypatch.setattr(auto, "add_cached_features", cache)
    monkeypatch.setattr(probe, "solve_probe", solve)
    metrics = fit_run(validate(PROBE_YAML), tmp_path / "run", make_console(quiet=True))
    assert events == [["train", "val"], "solve", ["test"]]  # the test rows only once the probe is solved
    # the 8 train and 2 selection labels per class all train the probe; none is spent on a validation split
    assert len(seen["labels"]) == 100 and metrics["labels"]["train"] == 100 and metrics["labels"]["selection"] == 0
    assert "5-fold cross-validation on the same labels" in metrics["labels"]["note"]
    assert metrics["val"] is None and (metrics["best_epoch"], metrics["epochs_run"]) == (1, 1)
    record = metrics["probe"]
    assert record["converged"] and record["n_labels"] == 100 and record["cv"]["folds"] == 5
    # the head is the probe that scikit-learn solves on the fused embeddings of those rows
    _, model, _ = load_run(tmp_path / "run")
    again = real_solve(seen["features"], seen["labels"], num_classes=10)
    assert torch.allclose(model.head.out.weight, torch.tensor(again.weight, dtype=torch.float32), atol=1e-5)
    test_rows = {tuple(r) for r in model.eval().embed({"image": _digits_test()}).detach().numpy().round(5)}
    assert not test_rows & {tuple(r) for r in seen["features"].numpy().round(5)}  # no test row among them
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert len(history) == 1 and history[0]["solved"] == "lbfgs" and np.isfinite(history[0]["train_loss"])
    splits = json.loads((tmp_path / "run" / "splits.json").read_text())
    assert set(splits["labels_sha256"]) == {"train", "test"} and splits["validation"] == "none"


def _digits_test() -> torch.Tensor:
    from mmtransfer.config import DataConfig
    from mmtransfer.data import load_dataset

    return load_dataset(DataConfig(dataset="digits", k_per_class=10)).test.inputs["image"]


def test_a_probe_that_cannot_be_solved_trains_and_says_why(tmp_path, capsys):
    cfg = validate({**PROBE_YAML, "model": {**PROBE_YAML["model"], "head_hidden": 8},
                    "train": {**PROBE_YAML["train"], "batch_size": 32}})  # fmt: skip
    metrics = fit_run(cfg, tmp_path / "run", make_console())
    assert "probe" not in metrics and metrics["labels"]["selection"] == 20
    assert "not solved: the head has a hidden layer (model.head_hidden)" in capsys.readouterr().out


# ---------------------------------------------------------------- LP-FT and auto, on a tiny pretrained BERT

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "film", "plot", "great", "awful", "the"]


@pytest.fixture(scope="module")
def reviews(tmp_path_factory):
    """A review table (good / bad words say the class) and a config with a tiny BERT as its pretrained encoder."""
    import pandas as pd

    transformers = pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("reviews")
    (root / "bert").mkdir()
    (root / "bert" / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    transformers.BertTokenizer(vocab_file=str(root / "bert" / "vocab.txt")).save_pretrained(str(root / "bert"))
    config = transformers.BertConfig(
        vocab_size=len(WORDS), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(str(root / "bert"))
    texts = [("the good film", "pos"), ("great plot", "pos"), ("the bad film", "neg"), ("awful plot", "neg"),
             ("good plot the", "pos"), ("awful film", "neg")]  # fmt: skip
    pd.DataFrame([{"review": t, "label": y} for t, y in texts * 8]).to_csv(root / "r.csv", index=False)
    return {
        "data": {"table": str(root / "r.csv"), "k_per_class": 12,
                 "columns": {"review": {"modality": "text", "tokenizer": str(root / "bert"), "max_length": 8}}},
        "model": {"embed_dim": 16, "encoders": {"review": {"type": "hf", "path": str(root / "bert")}}},
        "train": {"epochs": 2, "batch_size": 8, "progress": False},
    }  # fmt: skip


def with_strategy(raw: dict, **strategy) -> dict:
    return {**raw, "train": {**raw["train"], "strategy": strategy}}


def test_lp_ft_starts_fine_tuning_from_the_solved_probe_at_ft_lr(tmp_path, monkeypatch, reviews):
    monkeypatch.setenv("MMTRANSFER_CACHE", str(tmp_path / "cache"))
    started = {}
    real_fit = auto.fit

    def fit(model, train, val, cfg, **kw):
        started.update(head=model.head.out.weight.detach().clone(), lr=cfg.lr, strategy=cfg.strategy.name,
                       trainable=sum(p.requires_grad for p in model.parameters()), n_train=len(train))  # fmt: skip
        return real_fit(model, train, val, cfg, **kw)

    monkeypatch.setattr(auto, "fit", fit)
    metrics = fit_run(validate(with_strategy(reviews, name="lp_ft", ft_lr=3e-4)), tmp_path / "run", make_console())
    assert started["lr"] == 3e-4 and started["strategy"] == "lp_ft"
    assert started["trainable"] == sum(1 for _ in load_run(tmp_path / "run")[1].parameters()) - 2  # all but pooler
    record = metrics["probe"]
    assert record["fitted_on"] == "train rows" and record["n_labels"] == started["n_train"] == 20
    assert not torch.equal(started["head"], torch.zeros_like(started["head"]))
    assert metrics["labels"]["selection"] == 4 and metrics["epochs_run"] == 2  # selecting: the budget's 4


class Guarded:
    """A split that logs every read of its inputs, to show when a run first reads the test rows."""

    def __init__(self, split, log):
        self.split, self.log = split, log

    def __len__(self):
        return len(self.split)

    def __getattr__(self, name):
        return getattr(self.split, name)

    def batch(self, indices):
        self.log.append("test rows read")
        return self.split.batch(indices)

    def with_features(self, name, features):
        self.log.append("test rows read")
        return self.split.with_features(name, features)


@pytest.mark.parametrize("limit", [1e9, 0.0])
def test_auto_chooses_on_the_selection_labels_and_never_reads_the_test_rows_first(tmp_path, monkeypatch, reviews,
                                                                                   limit):  # fmt: skip
    import mmtransfer.runs as runs

    monkeypatch.setenv("MMTRANSFER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(auto, "DEFAULT_TIME_LIMIT", limit)  # train.time_limit none: this many seconds
    log = []
    real_load, real_say = runs.load_dataset, auto._say

    def load(*args, **kw):
        data = real_load(*args, **kw)
        data.test = Guarded(data.test, log)
        return data

    monkeypatch.setattr(runs, "load_dataset", load)
    monkeypatch.setattr(auto, "_say", lambda console, text: (log.append(text), real_say(console, text)))
    metrics = fit_run(validate(reviews), tmp_path / "run", make_console(quiet=True))  # strategy auto by default
    choice = metrics["strategy"]
    decided = next(i for i, line in enumerate(log) if line.startswith("strategy auto: ") and "kept" in line) \
        if limit else next(i for i, line in enumerate(log) if "over the limit" in line)  # fmt: skip
    assert "test rows read" not in log[:decided] and "test rows read" in log[decided:]
    assert choice["pretrained"] == ["review"] and choice["lp_ft_estimate_s"] > 0
    if limit:  # LP-FT ran and was compared with the probe on the 4 selection labels
        assert choice["chose"] in ("lp_ft", "linear_probe") and choice["selection_labels"] == 4
        assert set(choice["probe_val"]) >= {"accuracy", "loss"} and set(choice["lp_ft_val"]) >= {"accuracy", "loss"}
        kept = choice["lp_ft_val"] if choice["chose"] == "lp_ft" else choice["probe_val"]
        assert kept["accuracy"] >= min(choice["lp_ft_val"]["accuracy"], choice["probe_val"]["accuracy"])
    else:  # over the limit: the probe on every label, LP-FT never ran
        assert choice["chose"] == "linear_probe" and "probe_val" not in choice
        assert metrics["labels"]["train"] == 24 and metrics["probe"]["n_labels"] == 24


def test_auto_without_a_pretrained_encoder_is_full_fine_tuning(tmp_path, small_run):
    auto_run = fit_run(small_run, tmp_path / "auto", make_console(quiet=True))
    assert small_run.train.strategy.name == "auto"
    full = small_run.model_copy(deep=True)
    full.train.strategy.name = "full"
    full_run = fit_run(full, tmp_path / "full", make_console(quiet=True))
    choice = auto_run["strategy"]
    assert choice["chose"] == "full" and "no encoder starts from pretrained" in choice["why"]
    assert auto_run["test"] == full_run["test"] and auto_run["best_epoch"] == full_run["best_epoch"]

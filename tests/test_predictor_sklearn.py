"""Predictor as a scikit-learn estimator: get_params / set_params mirror __init__, clone, fit leaves the
parameters as they were, score by task (accuracy, R^2, subset accuracy) and a GridSearchCV over one parameter."""

import joblib
import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import GridSearchCV
from sklearn.utils.validation import check_is_fitted
from torch import nn

from mmtransfer import Predictor
from mmtransfer.predictor import NotFitted

FAST = {"train": {"epochs": 2, "batch_size": 16, "progress": False}, "model__embed_dim": 8, "verbose": False}


def numbers(n: int = 60, seed: int = 0) -> pd.DataFrame:
    """Two number columns; the class is the sign of the first (rows in random order, so any fold holds both)."""
    x = np.random.default_rng(seed).normal(size=(n, 2))
    return pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "label": np.where(x[:, 0] > 0, "up", "down")})


class Doubler(nn.Module):
    """A user's own encoder for the number columns."""

    def __init__(self):
        super().__init__()
        self.output_dim = 4
        self.linear = nn.Linear(2, 4)

    def forward(self, x):
        return self.linear(x)


def test_get_params_mirror_init_and_set_params_takes_every_one():
    config = {"data": {"val_fraction": 0.3}}
    p = Predictor("y", config=config, path="runs/a", verbose=False, train={"epochs": 3}, train__lr=0.01)
    params = p.get_params()
    assert list(params) == ["label", "config", "encoders", "path", "verbose", "train", "train__lr"]
    assert params["config"] is config and params["path"] == "runs/a" and params["encoders"] is None
    assert p.get_params(deep=False) == params
    assert Predictor(**params).get_params() == params

    assert p.set_params(train__epochs=7, label="z", model={"embed_dim": 4}) is p
    cfg = p._config()  # a field wins over its section whatever the order they were set in
    assert (cfg.train.epochs, cfg.train.lr, cfg.data.label, cfg.model.embed_dim) == (7, 0.01, "z", 4)
    assert cfg.data.val_fraction == 0.3
    with pytest.raises(ValueError, match="Invalid parameter 'epochs' for Predictor"):
        p.set_params(epochs=2)
    assert "epochs" not in p.get_params()


def test_clone_round_trips_the_parameters_and_drops_the_fitted_run():
    module = Doubler()
    p = Predictor("label", encoders={"tabular": module}, **FAST)
    twin = clone(p)
    params, again = p.get_params(), twin.get_params()
    assert set(again) == set(params) and again["train"] == params["train"] and again["train"] is not params["train"]
    assert again["model__embed_dim"] == 8 and again["verbose"] is False
    copied = again["encoders"]["tabular"]  # a copy of the module, weights and all
    assert isinstance(copied, Doubler) and copied is not module
    assert torch.equal(copied.linear.weight, module.linear.weight)

    p.fit(numbers())
    check_is_fitted(p)
    fresh = clone(p)
    assert fresh.run_ is None and not hasattr(fresh, "classes_")
    with pytest.raises(NotFitted, match="not fitted yet") as raised:
        fresh.predict(numbers(4))
    assert isinstance(raised.value, RuntimeError) and isinstance(
        raised.value, NotFittedError
    )  # as before, and sklearn's
    with pytest.raises(NotFittedError):
        check_is_fitted(fresh)


def test_fit_leaves_the_constructor_arguments_as_they_were():
    module, train = Doubler(), {"epochs": 2, "batch_size": 16, "progress": False}
    before = module.linear.weight.detach().clone()
    p = Predictor("label", encoders={"tabular": module}, train=train, model__embed_dim=8, verbose=False)
    params, digest = p.get_params(), joblib.hash(p.get_params())
    p.fit(numbers())
    after = p.get_params()
    assert joblib.hash(after) == digest and all(after[k] is params[k] for k in params)
    assert after["path"] is None and p.path == p.run_.path and (p.path / "metrics.json").is_file()
    assert train == {"epochs": 2, "batch_size": 16, "progress": False}
    assert torch.equal(module.linear.weight, before)  # a copy trained: the module given is untouched
    trained = p.run_.model.encoders["tabular"]
    assert isinstance(trained, Doubler) and not torch.equal(trained.linear.weight, before)

    first = p.path
    p.fit(numbers(seed=1))  # no path given: each fit has a folder of its own
    assert p.path != first and p.get_params()["path"] is None


def test_fit_and_score_take_labels_as_y():
    df = numbers()
    p = Predictor("label", **FAST).fit(df.drop(columns="label"), df["label"])
    assert p.classes_ == ["down", "up"]
    x, y = numbers(40, seed=2).drop(columns="label"), numbers(40, seed=2)["label"]
    accuracy = accuracy_score(y, p.predict(x))
    assert p.score(x, y) == pytest.approx(accuracy) == pytest.approx(p.score(numbers(40, seed=2)))
    assert p.score(x, y) == p.evaluate(x.assign(label=y))["accuracy"]
    with pytest.raises(TypeError, match="give validation rows as valid="):
        Predictor("label", **FAST).fit(df.iloc[:40], df.iloc[40:])
    with pytest.raises(ValueError, match="has a column 'label' and y is given too"):
        p.score(df, df["label"])
    with pytest.raises(ValueError, match="3 labels in y for 40 rows"):
        p.score(x, y[:3])


def test_score_of_a_regression_run_is_r2_in_the_targets_units():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 2))
    df = pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "price": np.round(100 + 30 * x[:, 0] + rng.normal(size=120), 3)})
    p = Predictor("price", train={"epochs": 10, "lr": 0.01, "progress": False}, verbose=False).fit(df)
    assert p.run_.model.task == "regression"
    r2 = r2_score(df["price"], p.predict(df.drop(columns="price")))
    assert p.score(df) == pytest.approx(r2, abs=1e-5)
    assert p.score(df.drop(columns="price"), df["price"]) == pytest.approx(r2, abs=1e-5)
    assert 0.9 < r2 <= 1  # it learned the line (0.987 here)


def test_score_of_a_multilabel_run_is_subset_accuracy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 3))
    tags = [";".join(t for t, on in (("red", r[0] > 0), ("round", r[1] > 0), ("big", r[2] > 0)) if on) or "plain"
            for r in x]  # fmt: skip
    df = pd.DataFrame(x, columns=list("abc")).assign(tags=tags)
    p = Predictor("tags", **FAST).fit(df)
    assert p.run_.model.task == "multilabel"
    predicted = p.predict(df.drop(columns="tags"))
    subset = np.mean([set(pred) == set(true.split(";")) for pred, true in zip(predicted, tags, strict=True)])
    assert p.score(df) == pytest.approx(subset)
    as_lists = [t.split(";") for t in tags]  # label sets as lists, as predict gives them
    assert p.score(df.drop(columns="tags"), as_lists) == pytest.approx(subset)


def test_a_grid_search_over_one_parameter_runs_on_a_dataframe():
    df = numbers(60)
    base = Predictor("label", **FAST)
    search = GridSearchCV(base, {"train__lr": [1e-3, 3e-2]}, cv=2).fit(df)
    assert base.run_ is None and "train__lr" not in base.get_params()  # the estimator given is never fitted
    scores = search.cv_results_["mean_test_score"]
    assert scores.shape == (2,) and np.all((scores >= 0) & (scores <= 1))
    for split in ("split0_test_score", "split1_test_score"):  # accuracy on a fold of 30 rows
        assert np.allclose(search.cv_results_[split] * 30, np.round(search.cv_results_[split] * 30))
    assert search.best_params_["train__lr"] in (1e-3, 3e-2)
    best = search.best_estimator_
    assert best.get_params()["train__lr"] == search.best_params_["train__lr"]
    assert best.run_.cfg.train.lr == search.best_params_["train__lr"] and best.run_.cfg.train.epochs == 2
    assert search.score(df) == best.score(df)
    assert list(search.predict(df.head(3))) == list(best.predict(df.head(3)))

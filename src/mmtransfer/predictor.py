"""An estimator in the scikit-learn manner over the whole path: fit, predict, evaluate, embed, save, load.

>>> from mmtransfer import Predictor
>>> p = Predictor(label="label", train={"epochs": 5}).fit("reviews.csv")  # doctest: +SKIP
>>> p.predict_proba(new_rows).head()  # doctest: +SKIP
>>> p.save("runs/reviews"); Predictor.load("runs/reviews").predict(new_rows)  # doctest: +SKIP

``data`` everywhere is a pandas DataFrame, a table path (CSV / TSV / Parquet), a folder of class folders, or a
built-in dataset name (``digits``, ``mnist1d``: predictions are then made on its test split). A fitted
predictor is a verified run folder (:mod:`mmtransfer.artifact`) loaded in memory: ``save`` copies that folder.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError
from torch import nn

from mmtransfer import artifact
from mmtransfer.config import RunConfig, load_config, validate
from mmtransfer.data import load_dataset
from mmtransfer.data.sources import AUDIO_SUFFIXES, IMAGE_SUFFIXES, open_source
from mmtransfer.display import make_console
from mmtransfer.errors import BadArgument, UserError
from mmtransfer.inference import probabilities, read_rows
from mmtransfer.outputs import write_error
from mmtransfer.runs import fit_run
from mmtransfer.tasks import TASKS, Task
from mmtransfer.train import evaluate
from mmtransfer.transfer.distill import embed_all

BUILTIN = ("digits", "mnist1d")
SECTIONS = ("data", "model", "train", "transfer")
NAMED = ("label", "config", "encoders", "path", "verbose")  # __init__'s named arguments, in order
SCORES = {name: task.score for name, task in TASKS.items()}  # score's metric by task, as each task says


class NotFitted(NotFittedError, RuntimeError):
    """A fitted predictor's method called before ``fit``: a RuntimeError as it always was, and scikit-learn's
    NotFittedError (an AttributeError too, so ``hasattr(p, "classes_")`` is False before ``fit``)."""


class Predictor(BaseEstimator):
    """Fit a model on labelled data, then use it.

    ``config`` is a :class:`~mmtransfer.config.RunConfig`, a dict of sections or a YAML path. Keyword overrides
    are sections (``train={"epochs": 5}``) or single fields with ``__`` for the dots (``train__lr=1e-3``); a
    field is applied after the sections, whatever their order.
    ``encoders`` maps input names to your own ``nn.Module`` (with an int ``output_dim``, returning [B, D]); ``fit``
    trains copies of them (the fitted ones are ``run_.model.encoders``).
    ``path`` is where the run folder goes (default: a new temporary folder per ``fit``; ``save`` copies it).
    ``verbose``: print what ``mmtransfer fit`` prints (the column binding, the encoders, each epoch) and what
    the rows were used for; ``False``: nothing.

    A scikit-learn estimator: ``get_params`` gives these arguments, overrides included, as they were given
    (``Predictor(**p.get_params())`` builds the same predictor), ``set_params`` takes any of them, so ``clone``
    and ``GridSearchCV(p, {"train__lr": [1e-3, 3e-3]})`` work; ``fit`` changes none of them. The fitted run is
    ``run_``; ``path`` names its folder once fitted.
    """

    def __init__(
        self,
        label: str | None = None,
        *,
        config: RunConfig | dict | str | Path | None = None,
        encoders: dict[str, nn.Module] | None = None,
        path: str | Path | None = None,
        verbose: bool = True,
        **overrides,
    ):
        self.label = label
        self.config = config
        self.encoders = encoders
        self.path = path
        self.verbose = verbose
        self.overrides = overrides
        self.run_ = None

    # ------------------------------------------------------------ parameters (scikit-learn)

    @property
    def path(self) -> Path | None:
        """The run folder once fitted; before, the ``path`` given (None: a temporary folder)."""
        if self.run_ is not None:
            return self.run_.path
        return None if self._path is None else Path(self._path)

    @path.setter
    def path(self, value: str | Path | None) -> None:
        self._path = value

    def get_params(self, deep: bool = True) -> dict:
        """``__init__``'s arguments as given, each override its own key (``train``, ``train__lr``)."""
        named = {name: getattr(self, "_path" if name == "path" else name) for name in NAMED}
        return {**named, **self.overrides}

    def set_params(self, **params) -> Predictor:
        """Set any argument of ``__init__``; a section (``train={...}``) or a field (``train__epochs=2``) is an
        override, as in ``__init__``."""
        for key, value in params.items():
            if key in NAMED:
                setattr(self, key, value)
            elif _override_key(key):
                self.overrides[key] = value
            else:
                raise UserError(
                    f"Invalid parameter {key!r} for Predictor: give one of {', '.join(NAMED)}, a section "
                    f"({', '.join(SECTIONS)}) or a field as section__field"
                )
        return self

    def __sklearn_is_fitted__(self) -> bool:
        return self.run_ is not None

    # ------------------------------------------------------------ fitting

    def _config(self) -> RunConfig:
        if isinstance(self.config, (str, Path)):
            raw = load_config(self.config).model_dump(mode="json")
        elif isinstance(self.config, RunConfig):
            raw = self.config.model_dump(mode="json")
        else:
            raw = RunConfig.model_validate(self.config or {}).model_dump(mode="json")
        if self.label is not None:  # otherwise the config's (default "label")
            raw["data"]["label"] = self.label
        # sections first, then fields: a field set on a clone (GridSearchCV) wins over its section
        for key, value in sorted(self.overrides.items(), key=lambda item: "__" in item[0]):
            if key in SECTIONS and isinstance(value, dict):
                raw[key] = {**raw.get(key, {}), **value}
            elif _override_key(key) and key not in SECTIONS:
                *parents, last = key.split("__")
                node = raw
                for part in parents:
                    node = node.setdefault(part, {})
                node[last] = value
            else:
                raise BadArgument(
                    f"Predictor: unknown argument {key!r}; give a section ({', '.join(SECTIONS)}) or "
                    "a field as section__field"
                )
        return validate(raw, "Predictor config")

    def fit(self, train, y=None, *, valid=None) -> Predictor:
        """Train and select on the rows given: no row of ``train`` is held out for test (score held-out data of
        your own with :meth:`evaluate`). The rows that select the model (early stopping, the best epoch, the
        temperature) are ``valid`` if given, else a stratified part of ``train`` (``data.val_fraction``; under a
        label budget, of the budget); ``metrics.json`` scores them as its "test" and says so. A built-in dataset
        (``"digits"``) keeps its own test split. ``y``, as scikit-learn gives it, is the label column of a
        ``train`` DataFrame that lacks one; the constructor's arguments stay as they were."""
        cfg = self._config()
        if valid is not None and (cfg.train.validation == "none" or cfg.data.k_per_class or cfg.data.label_fraction):
            raise UserError(
                "Predictor.fit: valid rows are given, but with train.validation none or a label budget they would "
                "not select the model (a budget selects with its own labels); drop valid, or set validation: split"
            )
        source, data = _source(_with_labels(train, y, cfg.data.label, cfg.data.label_separator), valid, cfg)
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update=data)})
        # fitting again into a folder given replaces the previous run there; else each fit has a folder of its own
        out = Path(self._path) if self._path is not None else Path(tempfile.mkdtemp(prefix="mmtransfer-predictor-"))
        console = make_console(quiet=not self.verbose)
        if not self.verbose:
            cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"progress": False})})
        modules = copy.deepcopy(dict(self.encoders or {}))  # the modules given stay as given (scikit-learn's clone)
        metrics = fit_run(cfg, out, console, source=source, modules=modules, overwrite=self._path is not None,
                          test=False)  # fmt: skip
        self.run_ = artifact.load(out, modules=modules)
        labels = metrics["labels"]
        held = ("no rows held out for test: score held-out data with evaluate(data)" if "scored" in metrics
                else f"{metrics['test']['n']} rows of its own test split scored")  # fmt: skip
        console.print(
            f"Predictor: trained on {labels['train']} rows, {labels['selection']} selected the model; {held}; "
            f"run folder {out}",
            markup=False,
            highlight=False,
        )
        return self

    # ------------------------------------------------------------ using

    @property
    def classes_(self) -> list[str]:
        return self._fitted().classes

    def _fitted(self) -> artifact.Run:
        if self.run_ is None:
            raise NotFitted("this Predictor is not fitted yet: call fit(data) or Predictor.load(path)")
        return self.run_

    def _task(self) -> Task:
        return self._fitted().model.task

    def _split(self, data, need_labels: bool = False):
        """(split, row ids) of ``data`` through the fitted preprocessing."""
        run = self._fitted()
        if isinstance(data, str) and data in BUILTIN:
            cfg = run.cfg.data.model_copy(update={"dataset": data, "table": None, "folder": None})
            test = load_dataset(cfg, validation=run.cfg.train.validation).test
            return test, list(range(len(test)))
        rows = read_rows(run, data, need_labels=need_labels)
        ids = rows.ids
        if isinstance(data, pd.DataFrame):  # the caller's own index, so the result joins back onto their frame
            ids = list(data.index[np.asarray(rows.ids, dtype=np.int64)])
        return rows.split, ids

    def predict_proba(self, data) -> pd.DataFrame:
        """One row per row of ``data`` (indexed by its row id), one probability column per class (per label for
        a multi-label run, each its own sigmoid)."""
        if self._task().probabilities is not None:  # a task whose outputs are not probabilities says why
            raise UserError(self._task().probabilities)
        probs, ids = self._outputs(data)
        probs = probs if probs is not None else np.zeros((0, len(self.classes_)))
        return pd.DataFrame(probs, index=pd.Index(ids, name="row"), columns=self.classes_)

    def _outputs(self, data) -> tuple[np.ndarray | None, list]:
        """The model's outputs for ``data`` as ``probabilities`` gives them (None for no rows), and the row ids."""
        split, ids = self._split(data)
        chunks = [p for _, p in probabilities(self._fitted().model, split)]
        return (torch.cat(chunks).numpy() if chunks else None), ids

    def predict(self, data) -> np.ndarray:
        """The predicted class name of every row of ``data``; for a regression run the number (in the target's
        units); for a multi-label run the list of labels at or above their thresholds."""
        values, _ = self._outputs(data)
        values = values if values is not None else np.zeros((0, len(self.classes_)))
        return self._task().predictions(values, self.classes_)

    def evaluate(self, data) -> dict:
        """Accuracy, macro-F1, loss, confusion matrix and per-class precision / recall / F1 on labelled ``data``
        (a regression run: RMSE, MAE, R^2; a multi-label run: micro- and macro-F1, subset accuracy, mAP)."""
        split, _ = self._split(data, need_labels=True)
        return evaluate(self._fitted().model, split)

    def embed(self, data) -> np.ndarray:
        """The fused embedding that the head reads, [N, D], for every row of ``data``."""
        split, _ = self._split(data)
        return embed_all(self._fitted().model, split).numpy()

    def score(self, data, y=None) -> float:
        """scikit-learn's ``score`` on labelled ``data`` (or ``data`` and its labels ``y``), by the run's task:
        accuracy; R^2 for a regression run (as ``RegressorMixin``); subset accuracy (every label of the set right)
        for a multi-label run."""
        run = self._fitted()
        data = _with_labels(data, y, run.cfg.data.label, run.cfg.data.label_separator)
        return float(self.evaluate(data)[self._task().score])

    # ------------------------------------------------------------ saving

    def save(self, path: str | Path) -> Path:
        """Copy the run folder (a self-contained artifact) to ``path``: to a temporary folder beside it, renamed
        once complete, so a full disk or a kill never leaves half a run folder under ``path``."""
        run = self._fitted()
        path = Path(path)
        if path.resolve() != run.path.resolve():
            if path.exists():
                raise FileExistsError(f"{path} exists; save into a new folder")
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            try:
                shutil.copytree(run.path, tmp)
                os.rename(tmp, path)
            except OSError as err:  # shutil.Error too
                raise write_error(path, err) from None
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return path

    @classmethod
    def load(cls, path: str | Path, *, encoders: dict[str, nn.Module] | None = None) -> Predictor:
        """A fitted predictor from a run folder (verified); ``encoders`` supplies modules it was given in Python."""
        run = artifact.load(path, modules=encoders)
        predictor = cls(label=run.cfg.data.label, config=run.cfg, encoders=encoders, path=path)
        predictor.run_ = run
        return predictor


def _override_key(key: str) -> bool:
    """Whether ``key`` names a section (``train``) or a field in one (``train__lr``, ``model__encoders__image``)."""
    return key in SECTIONS or ("__" in key and key.split("__")[0] in SECTIONS)


def _with_labels(data, y, label: str, separator: str):
    """``data`` as it is without ``y``; with it, a copy of the DataFrame ``data`` with ``y`` as its ``label``
    column (a label set given as a list is joined with the run's separator, as a table holds it)."""
    if y is None:
        return data
    if isinstance(y, (pd.DataFrame, str, Path)):
        raise BadArgument("Predictor: the second argument is y, the labels; give validation rows as valid=...")
    if not isinstance(data, pd.DataFrame):
        raise BadArgument("Predictor: with y given, the data must be a DataFrame of the inputs")
    if label in data.columns:
        raise UserError(f"Predictor: the data has a column {label!r} and y is given too; give the labels once")
    if len(y) != len(data):
        raise UserError(f"Predictor: {len(y)} labels in y for {len(data)} rows of data")
    values = [separator.join(v) if isinstance(v, (list, tuple, set, np.ndarray)) else v for v in y]
    return data.assign(**{label: values})


def _source(train, valid, cfg: RunConfig) -> tuple[pd.DataFrame | None, dict]:
    """(a table given in memory or None, the data fields that say where the rows are) for ``fit``."""
    if isinstance(train, str) and train in BUILTIN:
        return None, {"dataset": train, "table": None, "folder": None}
    if valid is not None or isinstance(train, pd.DataFrame):
        split = {"split_column": "_split"} if valid is not None else {}
        return _table(train, valid, cfg), {"table": None, "folder": None} | split
    # a path: recorded in the run folder, with which of its rows trained and selected (splits.json)
    where = Path(train).resolve()
    return None, {"folder": str(where), "table": None} if where.is_dir() else {"table": str(where), "folder": None}


def _table(train, valid, cfg: RunConfig):
    """The training table as a DataFrame (or a path as it is); with ``valid``, both in one with a split column
    (train rows: train; valid rows: val)."""
    if valid is None:
        return train

    def frame(data) -> pd.DataFrame:
        found = open_source(data, cfg.data)
        if found.kind == "frame":
            return found.df
        df = found.df.drop(columns=["split"], errors="ignore") if found.kind == "folder" else found.df
        return _absolute_paths(df, found.base)  # train and valid decide the splits here, not split folders

    train_df, valid_df = frame(train), frame(valid)
    return pd.concat([train_df.assign(_split="train"), valid_df.assign(_split="val")], ignore_index=True)


def _absolute_paths(df: pd.DataFrame, base: Path) -> pd.DataFrame:
    """Relative file paths made absolute against ``base`` (tables from two folders are joined into one)."""
    suffixes = IMAGE_SUFFIXES | AUDIO_SUFFIXES
    out = df.copy()
    for col in out.columns:
        values = out[col]
        if (
            values.dtype == object
            and values.dropna().astype(str).map(lambda v: Path(v).suffix.lower()).isin(suffixes).mean() > 0.5
        ):
            out[col] = values.map(lambda v: v if not isinstance(v, str) or Path(v).is_absolute() else str(base / v))
    return out

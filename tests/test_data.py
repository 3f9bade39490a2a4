import numpy as np
import pytest
import torch

from mmtransfer.config import DataConfig
from mmtransfer.data import k_per_class, load_dataset, make_loader, stratified_halves


def test_digits_splits_are_disjoint_stratified_and_seeded():
    d = load_dataset(DataConfig(dataset="digits", seed=3))
    assert (len(d.train), len(d.val), len(d.test)) == (1221, 216, 360)
    assert d.input_shapes == {"image": (1, 8, 8)}
    x = d.train.inputs["image"]
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert len(d.train) + len(d.val) + len(d.test) == 1797
    counts = np.bincount(d.test.labels.numpy())
    assert counts.min() >= 35 and counts.max() <= 37  # stratified: 360 / 10 per class, +-1
    again = load_dataset(DataConfig(dataset="digits", seed=3))
    assert torch.equal(again.test.labels, d.test.labels)
    other = load_dataset(DataConfig(dataset="digits", seed=4))
    assert not torch.equal(other.test.labels, d.test.labels)


def test_mnist1d_uses_its_own_test_set():
    d = load_dataset(DataConfig(dataset="mnist1d"))
    assert (len(d.train), len(d.val), len(d.test)) == (3400, 600, 1000)
    assert d.input_shapes == {"signal": (1, 40)}


def test_k_per_class():
    d = load_dataset(DataConfig(dataset="digits", k_per_class=5, seed=1), validation="none")
    assert len(d.train) == 50 and d.val is None
    assert np.bincount(d.train.labels.numpy()).tolist() == [5] * 10
    assert d.labels.to_dict() == {
        "train": 50,
        "selection": 0,
        "validation": "none",
        "budget": "k_per_class=5",
        "note": "",
        "total": 50,
    }
    with pytest.raises(ValueError, match="class '0' has only 5 labelled examples"):
        k_per_class(d.train, 6, classes=d.classes)


def _rows(split) -> set[bytes]:
    return {x.numpy().tobytes() for x in split.inputs["image"]}


def test_a_label_budget_counts_the_labels_that_select_the_model():
    """k = 10 per class: by default 2 of each class's 10 select the model and 8 train it; 100 labels in all."""
    d = load_dataset(DataConfig(dataset="digits", k_per_class=10, seed=2))
    assert np.bincount(d.train.labels.numpy()).tolist() == [8] * 10
    assert np.bincount(d.val.labels.numpy()).tolist() == [2] * 10  # round(0.15 * 10) = 2 per class
    assert (d.labels.train, d.labels.selection, d.labels.total, d.labels.validation) == (80, 20, 100, "budget")
    assert "2 per class select it (data.val_fraction=0.15" in d.labels.note
    assert not _rows(d.train) & _rows(d.val)  # disjoint
    assert (_rows(d.train) | _rows(d.val)) <= _rows(d.train_pool)  # both from the train split
    assert len(d.train_pool) == 1437  # every digit not in the test split: the budget draws from them all
    sentence = d.labels.sentence()
    assert "80 train the model, 20 select it (out of the same budget)" in sentence
    assert "100 labelled examples in all, budget k_per_class=10" in sentence

    # the same k with the old behaviour on request: the 216-image validation split selects, and says so
    split = load_dataset(DataConfig(dataset="digits", k_per_class=10, seed=2), validation="split")
    assert (split.labels.train, split.labels.selection, split.labels.validation) == (100, 216, "split")

    # k = 1 leaves nothing to select with: no selection, stated
    one = load_dataset(DataConfig(dataset="digits", k_per_class=1))
    assert one.val is None and (one.labels.train, one.labels.selection) == (10, 0)
    assert "a single label" in one.labels.note


def test_label_fraction_is_a_budget_too():
    d = load_dataset(DataConfig(dataset="digits", label_fraction=0.1, seed=0))
    assert d.labels.budget == "label_fraction=0.1"
    assert d.labels.total == sum(round(0.1 * n + 1e-9) for n in np.bincount(d.train_pool.labels.numpy()))
    assert d.labels.selection >= 10 and d.labels.validation == "budget"
    with pytest.raises(Exception, match="k_per_class or label_fraction, not both"):
        DataConfig(k_per_class=3, label_fraction=0.1)


def test_no_validation_without_a_budget_trains_on_the_validation_rows_too():
    d = load_dataset(DataConfig(dataset="digits"), validation="none")
    assert d.val is None and len(d.train) == 1221 + 216 and len(d.test) == 360


def test_a_split_too_small_for_the_classes_is_refused_in_our_words():
    with pytest.raises(ValueError) as err:
        load_dataset(DataConfig(dataset="digits", val_fraction=0.003))
    assert str(err.value).startswith(
        "the validation split would hold 5 row(s) (data.val_fraction=0.003 of 1437 train pool rows) but there are "
        "10 classes"
    )


def test_stratified_halves_partition():
    d = load_dataset(DataConfig(dataset="digits"))
    a, b = stratified_halves(d.train, 0.5, seed=0)
    assert len(a) + len(b) == len(d.train)
    assert abs(len(a) - len(b)) <= 1


def test_loader_batches_and_avoids_a_lone_example():
    d = load_dataset(DataConfig(dataset="digits", k_per_class=3), validation="none")  # 30 examples
    sizes = [len(y) for _, y in make_loader(d.train, 29, shuffle=True)]
    assert sizes == [29]  # the 30th would have been a batch of one
    sizes = [len(y) for _, y in make_loader(d.train, 29)]
    assert sizes == [29, 1]  # evaluation keeps every example
    inputs, labels = next(iter(make_loader(d.train, 8)))
    assert inputs["image"].shape == (8, 1, 8, 8) and labels.dtype == torch.long

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
    d = load_dataset(DataConfig(dataset="digits", k_per_class=5, seed=1))
    assert len(d.train) == 50
    assert np.bincount(d.train.labels.numpy()).tolist() == [5] * 10
    with pytest.raises(ValueError, match="class 0 has only"):
        k_per_class(d.train, 6)


def test_stratified_halves_partition():
    d = load_dataset(DataConfig(dataset="digits"))
    a, b = stratified_halves(d.train, 0.5, seed=0)
    assert len(a) + len(b) == len(d.train)
    assert abs(len(a) - len(b)) <= 1


def test_loader_batches_and_avoids_a_lone_example():
    d = load_dataset(DataConfig(dataset="digits", k_per_class=3))  # 30 examples
    sizes = [len(y) for _, y in make_loader(d.train, 29, shuffle=True)]
    assert sizes == [29]  # the 30th would have been a batch of one
    sizes = [len(y) for _, y in make_loader(d.train, 29)]
    assert sizes == [29, 1]  # evaluation keeps every example
    inputs, labels = next(iter(make_loader(d.train, 8)))
    assert inputs["image"].shape == (8, 1, 8, 8) and labels.dtype == torch.long

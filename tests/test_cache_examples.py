"""The frozen-feature path: features cached per example, cached inputs never decoded, cheap image checks."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from rich.console import Console

from mmtransfer.cache import add_cached_features, entries
from mmtransfer.config import CNNConfig, DataConfig, ImageColumn, ModelConfig
from mmtransfer.data import load_dataset, make_loader
from mmtransfer.modalities.image import ImageModality
from mmtransfer.model import build_model
from mmtransfer.tables import DataError
from mmtransfer.transfer.freeze import freeze

MODEL = ModelConfig(encoders={"photo": CNNConfig(channels=[4])}, embed_dim=8)
COLUMN = ImageColumn(size=(16, 16), resize="crop", crop_pct=0.875)


def write_photos(folder, n=24, size=(40, 30)):
    """n JPEG photos of 3 classes, and a table of them (relative paths, a split column: every 4th a test row)."""
    (folder / "img").mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        pixels = (rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / "img" / f"{i}.jpg", quality=90)
        rows.append({"photo": f"img/{i}.jpg", "label": "abc"[i % 3], "split": "test" if i % 4 == 3 else "train"})
    pd.DataFrame(rows).to_csv(folder / "photos.csv", index=False)
    return folder / "photos.csv"


def photos(table, **kw):
    cfg = DataConfig(table=str(table), split_column="split", columns={"photo": COLUMN}, **kw)
    return load_dataset(cfg, validation="none")


def probe(data):
    model = build_model(MODEL, data.specs, data.classes, seed=0)
    freeze(model, ["encoders.*"])
    return model


def counting(model):
    """The number of examples the frozen encoder has been run on."""
    seen = []
    model.encoders["photo"].register_forward_hook(lambda module, args, out: seen.append(len(args[0])))
    return seen


def test_an_overlapping_subset_computes_only_its_new_examples(tmp_path):
    data = photos(write_photos(tmp_path))
    model = probe(data)
    seen = counting(model)
    first = add_cached_features(model, {"train": data.train.subset(range(10))}, directory=tmp_path / "c")
    assert sum(seen) == 10
    # rows 5-14: 5 of them cached by the first call; the test split shares no photo with train
    console = Console(record=True, width=200)
    second = add_cached_features(
        model, {"train": data.train.subset(range(5, 15)), "test": data.test}, directory=tmp_path / "c", console=console
    )
    assert sum(seen) == 10 + 5 + len(data.test)
    text = console.export_text()
    assert "train features [10, 8] computed for 5 new examples, the other 5 read from cache" in text
    assert "test features [6, 8] computed" in text
    torch.testing.assert_close(second["train"].extra["photo.features"][:5], first["train"].extra["photo.features"][5:])
    assert len(entries(tmp_path / "c")) == 3  # one file per computation

    # another seed's budget of the same table: only the photos not seen yet are computed
    again = photos(tmp_path / "photos.csv", k_per_class=3, seed=1)
    new = set(again.train.rows) - set(data.train.rows[:15])
    assert 0 < len(new) < len(again.train)
    third = add_cached_features(model, {"train": again.train, "test": again.test}, directory=tmp_path / "c")
    assert sum(seen) == 10 + 5 + len(data.test) + len(new)
    # every row's features are the encoder's output on that row, wherever they were computed
    model.eval()
    with torch.no_grad():
        direct = model.encoders["photo"](again.train.to_memory().inputs["photo"])
    torch.testing.assert_close(third["train"].extra["photo.features"], direct)


def test_a_changed_file_or_preprocessing_is_computed_again(tmp_path):
    table = write_photos(tmp_path)
    data = photos(table)
    model = probe(data)
    seen = counting(model)
    add_cached_features(model, {"train": data.train}, directory=tmp_path / "c")
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(tmp_path / "img" / "0.jpg")  # another photo, same name
    data = photos(table)
    add_cached_features(model, {"train": data.train}, directory=tmp_path / "c")
    assert seen == [len(data.train), 1]
    other = load_dataset(
        DataConfig(table=str(table), split_column="split", columns={"photo": COLUMN.model_copy(update={"mean": 0.4})}),
        validation="none",
    )
    add_cached_features(model, {"train": other.train}, directory=tmp_path / "c")
    assert seen[-1] == len(data.train)


def test_in_memory_rows_are_keyed_by_their_bytes(tmp_path):
    data = load_dataset(DataConfig(dataset="digits", k_per_class=10))
    model = build_model(ModelConfig(encoders={"image": CNNConfig(channels=[4])}, embed_dim=8), data.specs, 10, seed=0)
    freeze(model, ["encoders.*"])
    seen = []
    model.encoders["image"].register_forward_hook(lambda module, args, out: seen.append(len(args[0])))
    add_cached_features(model, {"train": data.train}, directory=tmp_path)
    half = data.train.subset(np.arange(0, len(data.train), 2))
    both = half.concat(data.test)
    assert sum(seen) == len(data.train)
    out = add_cached_features(model, {"train": both}, directory=tmp_path)
    new = set(data.test.example_keys("image")) - set(data.train.example_keys("image"))  # digits repeat a few
    assert len(new) > 0.9 * len(data.test)
    assert sum(seen) == len(data.train) + len(new)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(out["train"].inputs["image.features"], model.encoders["image"](both.inputs["image"]))


def test_train_features_are_computed_before_the_test_features(tmp_path):
    data = photos(write_photos(tmp_path))
    console = Console(record=True, width=200)
    out = add_cached_features(
        probe(data), {"test": data.test, "train": data.train}, directory=tmp_path, console=console
    )
    text = console.export_text()
    assert text.index("train features") < text.index("test features")
    assert list(out) == ["test", "train"]  # the caller's order kept


def test_a_cached_input_is_never_decoded(tmp_path, monkeypatch):
    data = photos(write_photos(tmp_path))
    cached = add_cached_features(probe(data), {"train": data.train}, directory=tmp_path / "c")["train"]
    loads = []
    original = ImageModality.load
    monkeypatch.setattr(ImageModality, "load", lambda self, *a: loads.append(1) or original(self, *a))
    batch = cached.batch([0, 1, 2])
    assert loads == [] and set(batch) == {"photo.present", "photo.features"}
    assert cached.names() == ["photo.present", "photo.features"]
    assert batch["photo.present"].tolist() == [True, True, True]
    assert set(data.train.batch([0, 1])) == {"photo", "photo.present"} and len(loads) == 2
    # its batches are slices of features: no worker process is started for them
    assert make_loader(cached, 4, num_workers=2).num_workers == 0 and cached.reads_files is False
    assert make_loader(data.train, 4, num_workers=2).num_workers == 2 and data.train.reads_files


def test_the_check_catches_a_truncated_jpeg_by_row(tmp_path):
    table = write_photos(tmp_path)
    whole = (tmp_path / "img" / "5.jpg").read_bytes()
    (tmp_path / "img" / "5.jpg").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match=r"row 5, column 'photo': unreadable or corrupt image.*truncated"):
        photos(table)


def test_a_large_jpeg_is_decoded_at_the_scale_the_resize_needs(tmp_path):
    # a smooth 1600x1200 photo: decoded at 1/4 (400x300 still covers the 256x192 a 224 crop needs)
    y, x = np.mgrid[0:1200, 0:1600]
    pixels = np.stack([x / 1600 * 255, y / 1200 * 255, (x + y) / 2800 * 255], -1).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "big.jpg", quality=95)
    cfg = ImageColumn(size=(224, 224), resize="crop", crop_pct=0.875)
    fast = ImageModality("p", cfg).load("big.jpg", tmp_path)
    decoded = []
    with Image.open(tmp_path / "big.jpg") as img:
        img.draft("RGB", (256, 192))
        decoded.append(img.size)
        from mmtransfer.modalities.image import fit_image

        full = np.asarray(fit_image(Image.open(tmp_path / "big.jpg").convert("RGB"), cfg)).transpose(2, 0, 1)
    assert decoded == [(400, 300)]
    assert fast.shape == (3, 224, 224) and fast.dtype == torch.uint8
    assert np.abs(fast.numpy().astype(int) - full.astype(int)).mean() < 2  # the same picture, to a level or two


@pytest.mark.slow
def test_importing_the_cache_does_not_import_torch():
    code = "import sys, mmtransfer.cache; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_damaged_file_is_recomputed_with_a_warning_and_an_old_entry_ignored(tmp_path):
    from safetensors.torch import save_file

    from mmtransfer.cache import encoder_key

    data = photos(write_photos(tmp_path))
    model = probe(data)
    first = add_cached_features(model, {"train": data.train}, directory=tmp_path / "c")
    (entry,) = entries(tmp_path / "c")
    raw = bytearray(entry.read_bytes())
    raw[-3] ^= 0xFF  # one byte of the features flipped: the file still reads, its checksum does not match
    entry.write_bytes(bytes(raw))
    old = tmp_path / "c" / f"photo-{encoder_key(model.encoders['photo'])}-0123.safetensors"
    save_file({"features": torch.zeros(3, 8)}, str(old))  # the cache's format before it was per example
    console = Console(record=True, width=300)
    again = add_cached_features(model, {"train": data.train}, directory=tmp_path / "c", console=console)
    text = console.export_text()
    assert (
        text.count("is damaged") == 1
        and "checksum does not match" in text
        and "train features [18, 8] computed" in text
    )
    torch.testing.assert_close(again["train"].extra["photo.features"], first["train"].extra["photo.features"])
    assert entry.read_bytes() != bytes(raw)  # written anew (the same features: the same name)
    assert old.exists()  # the old entry waits for eviction or cache clear


def test_the_same_files_through_another_table_are_read_from_the_cache(tmp_path):
    table = write_photos(tmp_path)
    data = photos(table)
    model = probe(data)
    seen = counting(model)
    add_cached_features(model, {"train": data.train, "test": data.test}, directory=tmp_path / "c")
    df = pd.read_csv(table)
    df["photo"] = [str(tmp_path / p) for p in df["photo"]]  # absolute paths, rows in another order
    other = tmp_path / "elsewhere" / "other.csv"
    other.parent.mkdir()
    df.iloc[::-1].to_csv(other, index=False)
    again = photos(other)
    out = add_cached_features(model, {"train": again.train, "test": again.test}, directory=tmp_path / "c")
    assert sum(seen) == len(data.train) + len(data.test)
    model.eval()
    with torch.no_grad():
        direct = model.encoders["photo"](again.test.to_memory().inputs["photo"])
    torch.testing.assert_close(out["test"].extra["photo.features"], direct)


def test_a_file_that_breaks_after_the_check_is_named_while_features_are_computed(tmp_path):
    data = photos(write_photos(tmp_path, n=80))  # 60 train photos: two batches of 32, decoded one ahead
    (tmp_path / "img" / "41.jpg").write_bytes(b"gone bad")
    with pytest.raises(DataError, match=r"row 41, column 'photo': unreadable or corrupt image"):
        add_cached_features(probe(data), {"train": data.train}, directory=tmp_path / "c")
    assert entries(tmp_path / "c") == []


def test_batches_come_in_order_the_next_made_ahead(tmp_path):
    from mmtransfer.data import batches

    data = photos(write_photos(tmp_path, n=40))
    got = list(batches(data.train, 7))
    assert [list(index) for index, _ in got] == [list(range(i, min(i + 7, 30))) for i in range(0, 30, 7)]
    for index, inputs in got:
        assert torch.equal(inputs["photo"], data.train.batch(index)["photo"])
    (tmp_path / "img" / "20.jpg").write_bytes(b"gone bad")  # train row 15: the third batch
    stream = batches(data.train, 7)
    assert len(next(stream)[0]) == 7
    with pytest.raises(DataError, match="row 20, column 'photo'"):
        list(stream)

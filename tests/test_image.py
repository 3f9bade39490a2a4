"""Image columns: stretch, pad (aspect kept, filled border) and centre crop, with hand-checkable pixels."""

import numpy as np
import pytest
import torch
from PIL import Image

from mmtransfer.config import DataConfig, ImageColumn
from mmtransfer.modalities.image import ImageModality

# a 4-wide, 2-high grayscale image; every pixel distinct
WIDE = np.array([[10, 20, 30, 40], [50, 60, 70, 80]], dtype=np.uint8)


def load(tmp_path, pixels, **cfg):
    Image.fromarray(pixels).save(tmp_path / "x.png")
    return ImageModality("x", ImageColumn(channels=1, **cfg)).load("x.png", tmp_path)[0].numpy()


def test_pad_keeps_the_aspect_and_fills_the_border(tmp_path):
    # 4 x 2 into 4 x 4: scale min(4/4, 4/2) = 1, so the image is pasted as it is, one row of fill above and below
    out = load(tmp_path, WIDE, size=(4, 4), resize="pad", fill=255)
    expected = np.array([[255] * 4, [10, 20, 30, 40], [50, 60, 70, 80], [255] * 4])
    assert out.tolist() == expected.tolist()


def test_pad_with_a_margin_frames_like_mnist(tmp_path):
    # a 2 x 2 block of 200 into 6 x 6 with a margin of 1: scaled to 4 x 4, a border of 0 one pixel wide
    out = load(tmp_path, np.full((2, 2), 200, np.uint8), size=(6, 6), resize="pad", margin=1)
    expected = np.zeros((6, 6), int)
    expected[1:5, 1:5] = 200
    assert out.tolist() == expected.tolist()
    # stretch ignores the margin and fills the whole size
    assert (load(tmp_path, np.full((2, 2), 200, np.uint8), size=(6, 6)) == 200).all()


def test_crop_cuts_the_centre(tmp_path):
    # 4 x 2 to 2 x 2: scale max(2/4, 2/2) = 1, so the centre two columns are kept
    out = load(tmp_path, WIDE, size=(2, 2), resize="crop")
    assert out.tolist() == [[20, 30], [60, 70]]


def test_stretch_fills_the_size_and_changes_the_aspect(tmp_path):
    out = load(tmp_path, WIDE, size=(4, 4))
    assert out.shape == (4, 4) and out[0, 0] == 10 and out[-1, -1] == 80


def test_rgb_pad_fills_every_channel(tmp_path):
    rgb = np.zeros((2, 4, 3), np.uint8)
    rgb[..., 0] = 100
    Image.fromarray(rgb).save(tmp_path / "c.png")
    out = ImageModality("c", ImageColumn(size=(4, 4), resize="pad", fill=7)).load("c.png", tmp_path).numpy()
    assert out.shape == (3, 4, 4)
    assert (out[:, 0] == 7).all() and (out[:, 3] == 7).all()
    assert (out[0, 1:3] == 100).all() and (out[1:, 1:3] == 0).all()


def test_a_margin_that_leaves_no_room_is_a_config_error():
    from mmtransfer.config import ConfigError, validate

    message = r"data.columns.x.image: margin 2 on each side leaves no room in size \[4, 4\]"
    with pytest.raises(ConfigError, match=message):
        validate({"data": {"columns": {"x": {"modality": "image", "size": [4, 4], "resize": "pad", "margin": 2}}}})


def test_resize_is_stored_with_the_preprocessing(tmp_path):
    import pandas as pd

    from mmtransfer.tables import load_table_dataset

    rows = []
    for i in range(12):
        Image.fromarray(np.full((5, 3), 20 * i, np.uint8)).save(tmp_path / f"{i}.png")
        rows.append({"picture": f"{i}.png", "label": "abc"[i % 3]})
    pd.DataFrame(rows).to_csv(tmp_path / "t.csv", index=False)
    cfg = DataConfig(
        table=str(tmp_path / "t.csv"),
        columns={"picture": ImageColumn(size=(8, 8), channels=1, resize="pad", margin=1)},
        test_fraction=0.25,
        val_fraction=0.34,
    )
    data = load_table_dataset(cfg)
    column = data.preprocessing["columns"]["picture"]
    assert (column["resize"], column["fill"], column["margin"]) == ("pad", 0, 1)
    # 5 high x 3 wide in 6 x 6 (8 less the margins): scaled by 1.2 to 6 x 4, pasted at column 2, row 1.
    x = data.train.to_memory().inputs["picture"]  # normalised: the fill 0 becomes (0 - 0.5) / 0.5 = -1
    assert x.shape[1:] == (1, 8, 8) and torch.all(x[:, :, 0] == -1) and torch.all(x[:, :, :, :2] == -1)

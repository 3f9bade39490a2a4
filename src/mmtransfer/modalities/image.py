"""Image cells: a path to a PNG/JPEG/BMP/... file, read with Pillow, brought to one size (stretched, padded or
centre-cropped), as [C, H, W] in [0, 1]."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from mmtransfer.config import ImageColumn
from mmtransfer.modalities.base import BadValue, InputSpec, resolve_path


class ImageModality:
    """Loads and resizes once; ``collate`` normalises to (x - mean) / std. Augmentation is ``augment``."""

    def __init__(self, name: str, cfg: ImageColumn | None = None):
        self.name = name
        self.cfg = (cfg or ImageColumn()).resolved()  # settings left auto: the modality's defaults

    @classmethod
    def from_state(cls, name: str, cfg: ImageColumn | None, state: dict) -> ImageModality:
        return cls(name, cfg)  # nothing is learned: size, resize and normalisation are all configuration

    def load(self, value: Any, base: Path) -> torch.Tensor:
        """The image at ``value`` as uint8 [C, H, W] of ``size``. A JPEG is decoded at the smallest of 1/1, 1/2, 1/4
        or 1/8 of its size that still covers what the resize needs (never less), which is several times cheaper
        for photos much larger than ``size``."""
        array = np.asarray(self._open(value, base, lambda img: fit_image(img, self.cfg, draft=True)))
        if array.ndim == 2:
            array = array[None]
        else:
            array = array.transpose(2, 0, 1)
        return torch.from_numpy(array.copy())  # uint8 [C, H, W]: a quarter of the memory of float

    def check(self, value: Any, base: Path) -> None:
        """Raise :class:`BadValue` if the file is not a readable image. Every byte is still decoded (a truncated
        or corrupt file fails), a JPEG at 1/8 of its size, and nothing is resized."""

        def small(img):
            img.draft(img.mode, (max(1, img.width // 8), max(1, img.height // 8)))
            img.load()
            return img

        self._open(value, base, small)

    def _open(self, value: Any, base: Path, then):
        """``then(image)`` on the opened file, converted to the column's channels; a bad file is a BadValue."""
        path = resolve_path(value, base)
        mode = "L" if self.cfg.channels == 1 else "RGB"
        try:
            with Image.open(path) as img:
                img = then(img)
                return img if img.mode == mode else img.convert(mode)
        except Image.DecompressionBombError as err:
            raise BadValue(f"image too large to decode safely (a decompression bomb?): {err}", file=str(path)) from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
            reason = str(err).replace(f"'{path}'", "").replace(str(path), "").strip().rstrip(":")  # the path is named
            raise BadValue(f"unreadable or corrupt image: {reason}", file=str(path)) from None

    def fit(self, examples) -> None:
        pass

    def placeholder(self) -> torch.Tensor:
        """The mean image: after normalisation, zeros."""
        mean = channel_values(self.cfg.mean, self.cfg.channels)
        return (mean * 255).round().to(torch.uint8).expand(self.cfg.channels, *self.cfg.size).clone()

    def collate(self, examples: list[torch.Tensor]) -> torch.Tensor:
        x = torch.stack(examples).float() / 255.0
        c = self.cfg.channels
        return (x - channel_values(self.cfg.mean, c)) / channel_values(self.cfg.std, c)

    def spec(self) -> InputSpec:
        return InputSpec("image", (self.cfg.channels, *self.cfg.size))

    def state(self) -> dict:
        return {}

    def augment(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The column's training augmentation (``augment``): random shifts, or random crops and flips."""
        if self.cfg.augment == "crop_flip":
            return crop_flip(batch, self.cfg.crop_scale, self.cfg.flip, generator)
        return shift(batch, generator)


def channel_values(value, channels: int) -> torch.Tensor:
    """A mean or std, one value or one per channel, as [C, 1, 1]."""
    values = value if isinstance(value, (tuple, list)) else (value,) * channels
    return torch.tensor(values, dtype=torch.float32).view(channels, 1, 1)


def crop_flip(
    batch: torch.Tensor,
    scale: tuple[float, float] = (0.35, 1.0),
    flip: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Random resized crop and horizontal flip, per example, in one ``grid_sample`` over the batch: a window of
    a random share of the area (in ``scale``) and aspect ratio (3/4 to 4/3), at a random place, stretched back
    to the full size (bilinear); then mirrored left to right with probability 1/2 if ``flip``."""
    n = batch.shape[0]
    area = torch.empty(n).uniform_(scale[0], scale[1], generator=generator)
    log_ratio = torch.empty(n).uniform_(math.log(3 / 4), math.log(4 / 3), generator=generator)
    ratio = log_ratio.exp() if scale[0] < 1 else torch.ones(n)  # the whole image keeps its shape
    w = (area * ratio).sqrt().clamp(max=1.0)  # the window's width and height, as shares of the image's
    h = (area / ratio).sqrt().clamp(max=1.0)
    cx = (torch.rand(n, generator=generator) * 2 - 1) * (1 - w)  # its centre, in [-1, 1] coordinates
    cy = (torch.rand(n, generator=generator) * 2 - 1) * (1 - h)
    sign = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0) if flip else torch.ones(n)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = w * sign, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    theta = theta.to(batch.device, batch.dtype)
    grid = torch.nn.functional.affine_grid(theta, list(batch.shape), align_corners=False)
    return torch.nn.functional.grid_sample(batch, grid, mode="bilinear", padding_mode="border", align_corners=False)


def shift(batch: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random translation of up to 1/8 of each side, per example; the border pixels fill the gap."""
    n, c, h, w = batch.shape
    max_dy, max_dx = max(1, h // 8), max(1, w // 8)
    dy = torch.randint(-max_dy, max_dy + 1, (n, 1), generator=generator)
    dx = torch.randint(-max_dx, max_dx + 1, (n, 1), generator=generator)
    padded = torch.nn.functional.pad(batch, (max_dx, max_dx, max_dy, max_dy), mode="replicate")
    rows = (max_dy + dy + torch.arange(h)).to(batch.device)  # [n, h]: the rows each example keeps
    cols = (max_dx + dx + torch.arange(w)).to(batch.device)  # [n, w]
    # One gather for the whole batch: example i, channel k, pixel (y, x) <- padded[i, k, rows[i, y], cols[i, x]]
    i = torch.arange(n, device=batch.device)[:, None, None, None]
    k = torch.arange(c, device=batch.device)[None, :, None, None]
    return padded[i, k, rows[:, None, :, None], cols[:, None, None, :]]


def fit_image(img, cfg: ImageColumn, draft: bool = False):
    """A Pillow image brought to ``cfg.size`` (height, width) as ``cfg.resize`` says.

    - ``stretch``: resized to exactly the size; the aspect ratio is lost.
    - ``pad``: scaled (up or down) to fit inside the size less ``margin`` on each side, aspect kept, centred on a
      canvas of ``fill`` (where the leftover is odd, the extra pixel goes right / below).
    - ``crop``: scaled to cover the size divided by ``crop_pct``, aspect kept, then the centre of the size cut
      out (the usual resize + centre crop: 0.875 scales the shorter side of a 224 crop to 256).

    ``draft``: ``img`` is a file not yet decoded; a JPEG is decoded at the smallest scale (1/2, 1/4, 1/8) whose
    image still covers the resize's target on both sides, so the resize only ever shrinks what it would have.
    """
    h, w = cfg.size
    iw, ih = img.size
    mode = "L" if cfg.channels == 1 else "RGB"
    if cfg.resize == "stretch":
        target = (w, h)
    elif cfg.resize == "pad":
        inner_w, inner_h = w - 2 * cfg.margin, h - 2 * cfg.margin
        if inner_w < 1 or inner_h < 1:
            raise BadValue(f"margin {cfg.margin} leaves no room in size {list(cfg.size)}")
        scale = min(inner_w / iw, inner_h / ih)
        target = (max(1, round(iw * scale)), max(1, round(ih * scale)))
    else:
        scale = max(w / iw, h / ih) / cfg.crop_pct
        target = (max(w, round(iw * scale)), max(h, round(ih * scale)))
    if draft:
        img.draft(mode, target)  # only JPEG decoders act on it; the others decode at full size
    img = img if img.mode == mode else img.convert(mode)
    if cfg.resize == "stretch":
        return img.resize(target, Image.BILINEAR)
    if cfg.resize == "pad":
        fill = cfg.fill if img.mode == "L" else (cfg.fill,) * len(img.getbands())
        canvas = Image.new(img.mode, (w, h), fill)
        canvas.paste(img.resize(target, Image.BILINEAR), ((w - target[0]) // 2, (h - target[1]) // 2))
        return canvas
    left, top = (target[0] - w) // 2, (target[1] - h) // 2
    return img.resize(target, Image.BILINEAR).crop((left, top, left + w, top + h))

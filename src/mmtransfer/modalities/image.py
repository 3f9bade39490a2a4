"""Image cells: a path to a PNG/JPEG/BMP/... file, read with Pillow, brought to one size (stretched, padded or
centre-cropped), as [C, H, W] in [0, 1]."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmtransfer.config import ImageColumn
from mmtransfer.modalities.base import BadValue, InputSpec, resolve_path


class ImageModality:
    """Loads and resizes once; ``collate`` normalises to (x - mean) / std. Augmentation is ``augment``."""

    def __init__(self, name: str, cfg: ImageColumn | None = None):
        self.name = name
        self.cfg = cfg or ImageColumn()

    @classmethod
    def from_state(cls, name: str, cfg: ImageColumn | None, state: dict) -> ImageModality:
        return cls(name, cfg)  # nothing is learned: size, resize and normalisation are all configuration

    def load(self, value: Any, base: Path) -> torch.Tensor:
        from PIL import Image, UnidentifiedImageError

        path = resolve_path(value, base)
        try:
            with Image.open(path) as img:
                array = np.asarray(fit_image(img.convert("L" if self.cfg.channels == 1 else "RGB"), self.cfg))
        except Image.DecompressionBombError as err:
            raise BadValue(f"image too large to decode safely (a decompression bomb?): {err}", file=str(path)) from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
            reason = str(err).replace(f"'{path}'", "").replace(str(path), "").strip().rstrip(":")  # the path is named
            raise BadValue(f"unreadable or corrupt image: {reason}", file=str(path)) from None
        if array.ndim == 2:
            array = array[None]
        else:
            array = array.transpose(2, 0, 1)
        return torch.from_numpy(array.copy())  # uint8 [C, H, W]: a quarter of the memory of float

    def fit(self, examples) -> None:
        pass

    def placeholder(self) -> torch.Tensor:
        return torch.full((self.cfg.channels, *self.cfg.size), int(round(self.cfg.mean * 255)), dtype=torch.uint8)

    def collate(self, examples: list[torch.Tensor]) -> torch.Tensor:
        x = torch.stack(examples).float() / 255.0
        return (x - self.cfg.mean) / self.cfg.std

    def spec(self) -> InputSpec:
        return InputSpec("image", (self.cfg.channels, *self.cfg.size))

    def state(self) -> dict:
        return {}

    def augment(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
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


def fit_image(img, cfg: ImageColumn):
    """A Pillow image brought to ``cfg.size`` (height, width) as ``cfg.resize`` says.

    - ``stretch``: resized to exactly the size; the aspect ratio is lost.
    - ``pad``: scaled (up or down) to fit inside the size less ``margin`` on each side, aspect kept, centred on a
      canvas of ``fill`` (where the leftover is odd, the extra pixel goes right / below).
    - ``crop``: scaled to cover the size, aspect kept, then the centre cut out (the usual resize + centre crop).
    """
    from PIL import Image

    h, w = cfg.size
    if cfg.resize == "stretch":
        return img.resize((w, h), Image.BILINEAR)
    iw, ih = img.size
    if cfg.resize == "pad":
        inner_w, inner_h = w - 2 * cfg.margin, h - 2 * cfg.margin
        if inner_w < 1 or inner_h < 1:
            raise BadValue(f"margin {cfg.margin} leaves no room in size {list(cfg.size)}")
        scale = min(inner_w / iw, inner_h / ih)
        nw, nh = max(1, round(iw * scale)), max(1, round(ih * scale))
        fill = cfg.fill if img.mode == "L" else (cfg.fill,) * len(img.getbands())
        canvas = Image.new(img.mode, (w, h), fill)
        canvas.paste(img.resize((nw, nh), Image.BILINEAR), ((w - nw) // 2, (h - nh) // 2))
        return canvas
    scale = max(w / iw, h / ih)
    nw, nh = max(w, round(iw * scale)), max(h, round(ih * scale))
    left, top = (nw - w) // 2, (nh - h) // 2
    return img.resize((nw, nh), Image.BILINEAR).crop((left, top, left + w, top + h))

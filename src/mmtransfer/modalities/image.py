"""Image cells: a path to a PNG/JPEG/BMP/... file, read with Pillow, resized, as [C, H, W] in [0, 1]."""

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

    def load(self, value: Any, base: Path) -> torch.Tensor:
        from PIL import Image, UnidentifiedImageError

        path = resolve_path(value, base)
        try:
            with Image.open(path) as img:
                img = img.convert("L" if self.cfg.channels == 1 else "RGB")
                h, w = self.cfg.size
                img = img.resize((w, h), Image.BILINEAR)
                array = np.asarray(img, dtype=np.uint8)
        except (UnidentifiedImageError, OSError, SyntaxError) as err:
            raise BadValue(f"unreadable or corrupt image: {err}", file=str(path)) from None
        if array.ndim == 2:
            array = array[None]
        else:
            array = array.transpose(2, 0, 1)
        return torch.from_numpy(array.copy())  # uint8 [C, H, W]: a quarter of the memory of float

    def fit(self, examples: list[Any]) -> None:
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
        n, _, h, w = batch.shape
        max_dy, max_dx = max(1, h // 8), max(1, w // 8)
        dy = torch.randint(-max_dy, max_dy + 1, (n,), generator=generator).tolist()
        dx = torch.randint(-max_dx, max_dx + 1, (n,), generator=generator).tolist()
        padded = torch.nn.functional.pad(batch, (max_dx, max_dx, max_dy, max_dy), mode="replicate")
        out = torch.empty_like(batch)
        for i in range(n):
            y0, x0 = max_dy + dy[i], max_dx + dx[i]
            out[i] = padded[i, :, y0 : y0 + h, x0 : x0 + w]
        return out

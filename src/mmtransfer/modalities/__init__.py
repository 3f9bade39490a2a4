"""Modalities, one file each: load one cell, learn preprocessing on train, collate a batch.

``MODALITIES`` maps the ``modality`` a user writes in a column config to its class; each class is built as
``cls(name, column_config)``. The contract is in :mod:`mmtransfer.modalities.base`.
"""

from __future__ import annotations

from mmtransfer.modalities.audio import AudioModality
from mmtransfer.modalities.base import BadValue, InputSpec, Modality, resolve_path
from mmtransfer.modalities.image import ImageModality
from mmtransfer.modalities.tabular import TabularModality
from mmtransfer.modalities.text import TextModality

MODALITIES = {
    "image": ImageModality,
    "text": TextModality,
    "audio": AudioModality,
    "tabular": TabularModality,
}

__all__ = ["MODALITIES", "BadValue", "InputSpec", "Modality", "resolve_path"]

"""Modalities, one file each: load one cell, learn preprocessing on train, collate a batch.

The contract is in :mod:`mmtransfer.modalities.base`; the registry ``MODALITIES`` (the ``modality`` a user
writes in a column config -> its class) is in :mod:`mmtransfer.data.preprocess`, the one place that builds them, so
that importing the contract does not import Pillow, soundfile or transformers.
"""

"""mmtransfer: transfer learning on multimodal data."""

from mmtransfer.version import __version__ as __version__


def __getattr__(name: str):
    # Imported on first use: `import mmtransfer` (and the command line) stays free of torch until needed.
    if name == "Predictor":
        from mmtransfer.predictor import Predictor

        return Predictor
    raise AttributeError(f"module 'mmtransfer' has no attribute {name!r}")

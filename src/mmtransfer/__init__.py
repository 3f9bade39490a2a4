"""mmtransfer: transfer learning on multimodal data."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Imported on first use: `import mmtransfer` (and the command line) stays free of torch until needed.
    if name == "Predictor":
        from mmtransfer.predictor import Predictor

        return Predictor
    raise AttributeError(f"module 'mmtransfer' has no attribute {name!r}")

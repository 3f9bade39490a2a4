"""mmtransfer: transfer learning on multimodal data."""

__version__ = "0.1.0"

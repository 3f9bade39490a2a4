"""mmtransfer's version, in a module of its own: a run folder records it (:func:`mmtransfer.artifact.versions`)
without importing the package's root, whose lazy ``Predictor`` would make it depend on every layer."""

__version__ = "0.1.0"

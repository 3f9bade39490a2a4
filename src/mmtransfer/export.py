"""Export a run's model as ONNX: every encoder and the fusion, taking the preprocessed tensors, checked against
PyTorch with onnxruntime on real rows of the run's data.

The ONNX graph takes one input per batch tensor (the names ``predict`` would feed the model: each input, its
``name.present`` mask for tables, ``tabular`` for the number columns), each with a dynamic batch axis, and
returns ``logits`` [batch, classes]. A JSON file beside it describes the inputs, the classes and the
preprocessing that makes the tensors. LoRA adapters are merged into their base weights first.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mmtransfer.data import load_dataset
from mmtransfer.errors import MissingFile, MissingPackage, UserError
from mmtransfer.inference import read_rows
from mmtransfer.outputs import atomic_path, write_json
from mmtransfer.runfolder import RunFolder


class _Positional(nn.Module):
    """The model with its batch dict spelled out as positional tensors, in a fixed order (ONNX has no dicts)."""

    def __init__(self, model: nn.Module, names: list[str]):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.model(dict(zip(self.names, tensors, strict=True)))


def merge_lora(model: nn.Module) -> int:
    """Merge every LoRA adapter into its base layer (W + scale * B @ A) and put the base layer back in its
    place; returns how many were merged."""
    merged = 0
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if hasattr(child, "merge") and hasattr(child, "base_layer") and hasattr(child, "lora_A"):
                child.merge()
                setattr(parent, child_name, child.base_layer)
                merged += 1
    return merged


def sample_batch(run, data=None, rows: int = 16) -> dict[str, torch.Tensor]:
    """Real inputs for the check: the first test rows of the run's own data, or of ``data`` (a table)."""
    if run.preprocessor is not None:
        record = RunFolder(run.path).splits()
        if data is None and record.get("table") is None:
            raise UserError(f"{run.path}: trained on a DataFrame given in Python; give --data TABLE to check on")
        source = data if data is not None else record["table"]
        if data is None and not Path(source).exists():
            raise MissingFile(
                f"{run.path}: the run's own table {source} (its test rows check the export) is not there any more; "
                "give --data TABLE with the run's input columns"
            )
        own = record["rows"].get("test") or record["rows"]["train"]  # Predictor.fit holds no test rows out
        chosen = None if data is not None else own[:rows]
        split = read_rows(run, source, rows=chosen, on_bad_rows="skip").split
    else:
        split = load_dataset(run.cfg.data, validation=run.cfg.train.validation).test
    n = min(rows, len(split))
    if n == 0:
        raise UserError("no readable rows to check the export with")
    return split.batch(np.arange(n))


def export_onnx(run, out: str | Path, *, data=None, opset: int = 17, atol: float = 1e-4) -> dict:
    """Write ``out`` (.onnx) and ``out``.json; return the description, with the largest difference between
    onnxruntime's logits and PyTorch's on real rows (an error above ``atol``)."""
    try:
        import onnxruntime  # noqa: F401 (checked before any work; _export_checked uses it)
    except ImportError:
        raise MissingPackage("export needs onnx and onnxruntime: pip install 'mmtransfer[onnx]'") from None
    final = Path(out)
    model = run.model.eval()
    merged = merge_lora(model)
    batch = sample_batch(run, data)
    names = sorted(batch)
    wrapped = _Positional(model, names).eval()
    example = tuple(batch[n] for n in names)
    with atomic_path(final) as out:  # renamed over ``final`` only once the check has passed
        diff, checked = _export_checked(wrapped, example, names, out, opset)
        if not diff <= atol:
            raise UserError(
                f"{final}: onnxruntime differs from PyTorch by {diff:.2e} (more than {atol:g}); not written"
            )
    description = {
        "format": "onnx",
        "opset": opset,
        "file": final.name,
        "inputs": [
            {"name": n, "dtype": str(batch[n].dtype).removeprefix("torch."), "shape": ["batch", *batch[n].shape[1:]]}
            for n in names
        ],
        "outputs": None,
        "classes": run.classes,
        # the task's decoding: "task", "temperature" (already applied in the graph: the logits are divided by
        # it), "thresholds" (multilabel: sigmoid(logit) >= threshold, per label) and what "outputs" are
        **run.model.task.describe(run.classes),
        "preprocessing": RunFolder(run.path).preprocessing() or {"dataset": run.cfg.data.dataset},
        "lora_merged": merged,
        "checked_rows": checked,
        "max_abs_diff": diff,
    }
    write_json(final.with_suffix(".json"), description)
    return description


def _export_checked(wrapped: nn.Module, example: tuple, names: list[str], out: Path, opset: int) -> tuple[float, int]:
    """Write the ONNX graph to ``out``; return the largest difference from PyTorch's logits on ``example`` and on
    a batch of half its size (the batch axis really is dynamic), and the number of rows checked."""
    import onnxruntime as ort

    batch = dict(zip(names, example, strict=True))
    dynamic = {n: {0: "batch"} for n in names} | {"logits": {0: "batch"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on shapes it takes as constant, and the deprecation
        torch.onnx.export(
            wrapped,
            example,
            str(out),
            input_names=names,
            output_names=["logits"],
            dynamic_axes=dynamic,
            opset_version=opset,
            dynamo=False,
        )
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = wrapped(*example).numpy()
    got = session.run(None, {n: batch[n].numpy() for n in names})[0]
    # a second batch of another size: the batch axis really is dynamic
    half = {n: batch[n][: max(1, len(got) // 2)] for n in names}
    with torch.no_grad():
        expected_half = wrapped(*(half[n] for n in names)).numpy()
    got_half = session.run(None, {n: half[n].numpy() for n in names})[0]
    diff = float(max(np.abs(got - expected).max(), np.abs(got_half - expected_half).max()))
    return diff, int(len(got))

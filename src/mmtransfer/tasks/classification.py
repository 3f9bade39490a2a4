"""Classification: one class per row, softmax over one logit per class, cross-entropy (class weights where
``train.class_weights: balanced``). After training one temperature is fitted on the validation split
(:mod:`mmtransfer.calibration`); the model's logits are divided by it."""

from __future__ import annotations

from torch import nn

from mmtransfer import calibration as cal
from mmtransfer.tasks.base import Task, TaskStateError, finite
from mmtransfer.tasks.metrics import classification_metrics
from mmtransfer.tasks.objectives import Classification as CrossEntropy
from mmtransfer.tasks.objectives import balanced_weights


class Classification(Task):
    name = "classification"
    probe = "logistic"
    plot_kind = "confusion"
    one_class_per_row = True
    fields = ("task", "label", "calibration")

    def __init__(self, label: str = "label", calibration: dict | None = None, **_):
        super().__init__(label)
        self.calibration = calibration  # the record of temperature scaling, None until (unless) it is fitted
        self.temperature = float(calibration["temperature"]) if calibration else 1.0

    def objective(self, labels, width, class_weights):
        weight = balanced_weights(labels, width) if class_weights == "balanced" else None
        objective = CrossEntropy(weight)
        objective.task = self
        return objective

    def batch_loss(self, objective=None) -> nn.Module:
        """Cross-entropy batch by batch; validation uses the training criterion's own class weights."""
        return nn.CrossEntropyLoss(weight=getattr(objective, "weight", None))

    def output(self, logits):
        return logits if self.temperature == 1.0 else logits / self.temperature

    def raw(self, outputs):
        return outputs * self.temperature

    def metrics(self, outputs, labels, *, loss=None, objective=None, detail=False):
        return classification_metrics(outputs.numpy(), labels.numpy(), loss, detail)

    def after_fit(self, outputs_of, data, cfg, out, console, write):
        record = calibrate(outputs_of, data, cfg, out, console, write)
        if record is None:
            return {}
        self.calibration, self.temperature = record, record["temperature"]
        return {"calibration": record}

    def info(self, classes):
        return f"task: classification; classes ({len(classes)}): {', '.join(classes)}"

    def notes(self):
        c = self.calibration
        if c is None:
            return ["calibrated: no (probabilities as the model gives them)"]
        before, after = (100 * c.get("test", {}).get(k, float("nan")) for k in ("ece_before", "ece_after"))
        return [f"calibrated: temperature {c['temperature']:.4f}, fitted on {c.get('n_val')} validation labels; "
                f"test ECE {before:.2f} % -> {after:.2f} %"]  # fmt: skip

    def summary(self, test):
        scores = f"test accuracy {test.get('accuracy', float('nan')):.4f}, macro-F1 "
        scores += f"{test.get('macro_f1', float('nan')):.4f}"
        if "balanced_accuracy" in test:
            scores += f", balanced accuracy {test['balanced_accuracy']:.4f}"
        return scores + f" (n={test.get('n')})"

    def describe(self, classes):
        return {**super().describe(classes), "temperature": self.temperature}  # already applied in the graph

    def state(self):
        return {**super().state(), **({"calibration": self.calibration} if self.calibration else {})}

    @classmethod
    def from_state(cls, state, classes):
        cls.check_fields(state)
        record = state.get("calibration")
        if record is not None:
            value = record.get("temperature") if isinstance(record, dict) else None
            t, (low, high) = finite(value), cal.TEMPERATURE_RANGE
            if t is None or not low <= t <= high:
                raise TaskStateError(
                    f"calibration: temperature is {value!r:.60}; expected a finite number in [{low:g}, {high:g}]"
                )
        return cls(state.get("label", "label"), record)


def calibrate(outputs_of, data, cfg, out, console, write: bool) -> dict | None:
    """Temperature scaling on the validation split: the record, and ``reliability.png`` in ``out`` (where
    ``write``: the main process). None when it is off or there is no validation split. Every process computes it
    (the logits are gathered from all of them)."""
    if not cfg.train.calibrate:
        return None
    if data.val is None:
        console.print("calibration: skipped (no validation split to fit a temperature on)", markup=False)
        return None
    val_logits, val_labels = outputs_of(data.val)
    if bool((val_logits.argmax(-1) == val_labels).all()):  # nothing wrong to calibrate against: any T < 1 wins
        console.print(f"calibration: skipped (all {len(val_labels)} validation rows are classified right, so they "
                      "cannot say how sure the model should be)", markup=False, highlight=False)  # fmt: skip
        return None
    test_logits, test_labels = outputs_of(data.test)
    t = cal.fit_temperature(val_logits, val_labels)
    record = {"temperature": t, "method": "temperature scaling: one scalar, fitted on the validation split by "
              "minimising its negative log-likelihood", "fitted_on": "val", "n_val": len(val_labels)}  # fmt: skip
    for split, logits, labels in (("val", val_logits, val_labels), ("test", test_logits, test_labels)):
        before, after = cal.reliability(cal.softmax(logits), labels), cal.reliability(cal.softmax(logits, t), labels)
        record[split] = {"nll_before": cal.nll(logits, labels), "nll_after": cal.nll(logits, labels, t),
                         "ece_before": before["ece"], "ece_after": after["ece"]}  # fmt: skip
        if split == "test" and write:
            cal.plot_reliability(before, after, t, "test", out.figure("reliability"))
    v, s = record["val"], record["test"]
    few = len(val_labels) < 50
    console.print(
        f"calibration: temperature {t:.3f} fitted on {len(val_labels)} validation labels (NLL {v['nll_before']:.4f} "
        f"-> {v['nll_after']:.4f}); test ECE {100 * s['ece_before']:.2f} % -> {100 * s['ece_after']:.2f} % "
        f"(reliability.png)"
        + (f"; note: {len(val_labels)} labels are few to fit it on, so it may help little or hurt" if few else ""),
        markup=False,
        highlight=False,
    )
    return record

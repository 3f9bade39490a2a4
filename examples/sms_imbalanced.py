"""Imbalanced classes: SMS spam (13 % spam) with and without class weights, over label budgets, ranked by
balanced accuracy, with each class's recall and the calibration of the probabilities.

    python examples/sms_imbalanced.py ../shared/data [--out runs/sms_imbalanced] [--budgets 0.02 0.1 all]
        [--seeds 3] [--workers 2]

The table: ``sms_spam/SMSSpamCollection`` (5,574 messages: 4,827 ham, 747 spam), one fixed stratified test
split of 20 % (1,115 messages). A label budget is a share of the train labels (stratified, so it keeps the
13 % spam; the labels that select the best epoch come out of it). The model: the default text encoder (word
vocabulary, phrase detectors, max over the message). Arms: ``plain`` (the base config) and ``balanced``
(``train.class_weights: balanced``: each class's loss weighted by n / (2 * its count), spam about 3.7). The
study writes ``report.md``, ``report.html`` and ``results.json`` into --out; this script adds each class's
recall (from the confusion matrices) and the expected calibration error before and after temperature scaling
("not fitted" for the seeds whose validation labels were all classified right: nothing to fit a temperature on).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from _common import command, console, need
from sklearn.model_selection import train_test_split

from mmtransfer import study as engine
from mmtransfer.display import Grid


def sms_table(data: Path, out: Path) -> Path:
    df = pd.read_csv(data / "sms_spam" / "SMSSpamCollection", sep="\t", header=None, names=["label", "text"],
                     quoting=3, encoding="utf-8")  # fmt: skip
    train, _ = train_test_split(df.index, test_size=0.2, stratify=df.label, random_state=0)
    df["split"] = "test"
    df.loc[train, "split"] = "train"
    path = out / "sms.csv"
    df.to_csv(path, index=False)
    return path


def budget(value: str):
    return "all" if value == "all" else float(value) if "." in value else int(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="the shared data folder (holding sms_spam/)")
    parser.add_argument("--out", type=Path, default=Path("runs/sms_imbalanced"))
    parser.add_argument("--budgets", nargs="+", type=budget, default=[0.02, 0.1, "all"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    need(parser, args.data, "sms_spam/SMSSpamCollection")
    console.print(f"command: {command()}")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    base = {
        "data": {"table": str(sms_table(args.data, out)), "split_column": "split"},
        "train": {"epochs": 20, "batch_size": 32, "lr": 3e-3, "patience": 5},
    }
    spec = engine.StudyConfig(
        base=base, budgets=args.budgets, seeds=args.seeds, reference="plain", metric="balanced_accuracy",
        arms={"plain": {}, "balanced": {"train.class_weights": "balanced"}},
    )  # fmt: skip
    runner = engine.Study(spec, base, out, out, console=console, command=command(), source="sms_imbalanced")
    results = runner.run(workers=args.workers)
    engine.print_summary(results, spec, console, out)

    rows, ece = [], []
    for b in spec.budgets:
        for arm in spec.arms:
            cells = [c for c in results["cells"] if c["arm"] == arm and c["budget"] == b]
            if not cells:
                continue
            classes = cells[0]["classes"]
            recalls = np.array([np.diag(m) / np.asarray(m).sum(1) for m in (np.asarray(c["test"]["confusion"])
                                                                           for c in cells)])  # fmt: skip
            rows.append([engine.budget_label(b), arm, f"{cells[0]['labels']['total']}",
                         *[f"{100 * recalls[:, i].mean():.1f} ± {100 * recalls[:, i].std(ddof=1):.1f}"
                           for i in range(len(classes))]])  # fmt: skip
            # no calibration where the validation labels were all classified right: nothing to fit T on
            states = [json.loads((Path(c["folder"]) / "task.json").read_text()) for c in cells]
            calibration = [s["calibration"] for s in states if "calibration" in s]
            missing = len(states) - len(calibration)
            if not calibration:
                ece.append([engine.budget_label(b), arm, "not fitted", "-", "-", f"{missing} of {len(states)}"])
                continue
            before = [100 * c["test"]["ece_before"] for c in calibration]
            after = [100 * c["test"]["ece_after"] for c in calibration]
            temps = [c["temperature"] for c in calibration]
            ece.append([engine.budget_label(b), arm, f"{np.mean(temps):.2f}", f"{np.mean(before):.2f}",
                        f"{np.mean(after):.2f}", f"{missing} of {len(states)}"])  # fmt: skip
    console.print(Grid("test recall per class (%), mean ± std over seeds", ["budget", "arm", "labels",
                       *[f"recall {c}" for c in classes]], rows))  # fmt: skip
    console.print(Grid("calibration on the test split: temperature fitted on the validation labels; expected "
                       "calibration error (%, 15 bins), mean over the seeds that fitted one (not fitted: every "
                       "validation label classified right, so nothing to fit a temperature on)",
                       ["budget", "arm", "temperature", "ECE before", "ECE after", "seeds not fitted"],
                       ece))  # fmt: skip
    (out / "per_class.json").write_text(json.dumps({"recall": rows, "calibration": ece}, indent=1))


if __name__ == "__main__":
    main()

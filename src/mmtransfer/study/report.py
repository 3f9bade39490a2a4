"""A study's report: its conclusions in words, its tables, ``report.md``, a self-contained ``report.html`` and
the plots (learning curves, confusion matrices), from the records :mod:`mmtransfer.study` keeps.

Each conclusion is worded by its interval: an arm "beats" the reference where the whole paired interval of
its gain lies on the better side of 0, "is behind" where it lies on the worse side, and "is within noise of"
it where the interval holds 0; one seed gives no interval and so no conclusion.
"""

from __future__ import annotations

import base64
import html
import json
import textwrap
from pathlib import Path

import numpy as np

from mmtransfer.display import Grid
from mmtransfer.metrics import METRICS
from mmtransfer.study.plan import FRACTIONS, LOWER_BETTER, Budget, StudyConfig, budget_label, budget_name, cell_id


def _value(metric: str, x: float | None) -> str:
    """A metric as the tables show it: fractions in percent, R² as it is, errors in the target's units."""
    if x is None:
        return "-"
    return f"{100 * x:.1f}" if metric in FRACTIONS else format(x, METRICS[metric].fmt)


def _cell(entry: dict | None, metric: str) -> str:
    if entry is None or metric not in entry:
        return "-"
    s = entry[metric]
    return f"{_value(metric, s['mean'])} ± {_value(metric, s['std'])} ({s['n']})"


def _seconds(entry: dict | None) -> str:
    return "-" if entry is None else f"{entry['seconds']['mean']:.1f} ± {entry['seconds']['std']:.1f}"


def _signed(x: float) -> str:
    return "0.0" if abs(x) < 0.05 else f"{x:+.1f}"


def _gain(entry: dict | None, metric: str) -> str:
    if entry is None or metric not in entry.get("gain", {}):
        return "-"
    g = entry["gain"][metric]
    ci = (
        f" [{_value(metric, g['low'])}, {_value(metric, g['high'])}]"
        if g["low"] is not None
        else " (one seed: no interval)"
    )
    sign = "+" if g["mean"] >= 0 else ""
    return f"{sign}{_value(metric, g['mean'])}{ci}"


def settings(overrides: dict) -> str:
    """An arm's overrides as a reader writes them: ``train.strategy.name=linear_probe, transfer.source=runs/x``
    (a section given whole is spelt field by field); {} is the base config."""
    if not overrides:
        return "the base config"
    return ", ".join(f"{key}={_setting(value)}" for key, value in _flat(overrides).items())


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out |= _flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def _setting(value) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "[" + ", ".join(_setting(v) for v in value) + "]"
    return json.dumps(value)  # true, false, null, numbers, {}


def budget_phrase(b: Budget) -> str:
    """A budget inside a sentence: "at 5 labels per class", "at 2 % of the train labels", "with all labels"."""
    if b == "all":
        return "with all labels"
    return (
        f"at {b} label{'s' if b != 1 else ''} per class"
        if isinstance(b, int)
        else f"at {100 * b:g} % of the train labels"
    )


def _amount(metric: str, x: float) -> str:
    """The size of a difference: points of a fraction, else in the metric's own terms."""
    if metric in FRACTIONS:
        return f"{100 * abs(x):.1f} points of {metric}"
    return f"{abs(x):.3g} in {metric}" + (" (lower is better)" if metric in LOWER_BETTER else "")


def _interval(metric: str, g: dict, level: int) -> str:
    if metric in FRACTIONS:  # in points, as the gain
        return f"{level} % interval [{100 * g['low']:.1f}, {100 * g['high']:.1f}]"
    return f"{level} % interval [{g['low']:.3g}, {g['high']:.3g}]"


def _side(g: dict, metric: str) -> str:
    """better, worse or noise: where the paired interval of a difference lies (one seed: by its mean, 'one')."""
    better = (lambda x: x < 0) if metric in LOWER_BETTER else (lambda x: x > 0)
    if g["low"] is None:
        return "one"
    if better(g["low"]) and better(g["high"]):
        return "better"
    if better(-g["low"]) and better(-g["high"]):
        return "worse"
    return "noise"


def _signed_amount(metric: str, x: float) -> str:
    return f"{100 * x:+.1f} points of {metric}" if metric in FRACTIONS else f"{x:+.3g} in {metric}"


def verdict(arm: str, ref: str, g: dict, metric: str, level: int) -> str:
    """``arm`` against ``ref`` from the paired gain ``g`` (arm - ref): the interval decides the wording."""
    side, seeds = _side(g, metric), f"({g['n']} seeds)"
    if side == "one":
        return f"{arm} - {ref}: {_signed_amount(metric, g['mean'])} on one seed, which gives no interval: no conclusion"
    if side == "better":
        return f"{arm} beats {ref} by {_amount(metric, g['mean'])}, {_interval(metric, g, level)} {seeds}"
    if side == "worse":
        return f"{arm} is behind {ref} by {_amount(metric, g['mean'])}, {_interval(metric, g, level)} {seeds}"
    return (
        f"{arm} is within noise of {ref}: {_signed_amount(metric, g['mean'])}, {_interval(metric, g, level)} "
        f"holds 0 {seeds}"
    )


def _training_verdict(g: dict, metric: str, level: int) -> str:
    """What training on the budget did to a transferred model (after - before, paired by seed)."""
    side = _side(g, metric)
    if side == "one":
        return f"training changed it by {_signed_amount(metric, g['mean'])} on one seed (no interval)"
    words = {"better": "adds", "worse": "costs"}.get(side)
    if words:
        return f"training on the budget {words} {_amount(metric, g['mean'])}, {_interval(metric, g, level)}"
    return (
        f"training on the budget changes it by {_signed_amount(metric, g['mean'])}, {_interval(metric, g, level)}: "
        "within noise, it adds nothing measurable"
    )


def conclusions(results: dict, study: StudyConfig) -> list[str]:
    """The study's findings in words: per budget, each arm against the reference, and each arm scored before
    training (transfer.score_before_training) against itself after."""
    summary, metric, ref = results["summary"], study.metric, study.reference_arm
    level = round(100 * study.confidence)
    lines = []
    for b in study.budgets:
        section = summary.get(budget_name(b), {})
        where = budget_phrase(b)
        where = where[0].upper() + where[1:]
        for arm in study.arms:
            entry = section.get(arm)
            if entry is None:
                continue
            if arm != ref and metric in entry.get("gain", {}):
                lines.append(f"{where}, {verdict(arm, ref, entry['gain'][metric], metric, level)}.")
            if metric in entry.get("training_gain", {}):
                before = _value(metric, entry["before_training"][metric]["mean"]) + (
                    " %" if metric in FRACTIONS else ""
                )
                after = _training_verdict(entry["training_gain"][metric], metric, level)
                lines.append(f"{where}, {arm} scores {before} {metric} before training; {after}.")
    if results["scored_split"].startswith("val"):
        lines.append("These are scores on the validation split: the test split was not read.")
    return lines


def tables(results: dict, study: StudyConfig) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of each table, for the Markdown and the HTML report alike."""
    summary, metric, ref = results["summary"], study.metric, study.reference_arm
    level = round(100 * study.confidence)
    names = [budget_name(b) for b in study.budgets]
    labels = [budget_label(b) for b in study.budgets]
    scored = "validation" if results["scored_split"].startswith("val") else "test"
    unit = " (%)" if metric in FRACTIONS else ""
    gain_unit = " (percentage points)" if metric in FRACTIONS else f" (difference in {metric})"
    out = [
        (
            f"{metric} on the {scored} split{unit}, mean ± std (seeds)",
            ["arm", *labels],
            [row for arm in study.arms for row in _metric_rows(summary, names, arm, metric)],
        ),
        (
            f"gain over {ref}{gain_unit} with its {level} % paired t interval",
            ["arm", *labels],
            [[arm, *[_gain(summary[n].get(arm), metric) for n in names]] for arm in study.arms if arm != ref],
        ),
        (
            "wall time per cell (s), mean ± std: fit, evaluation and writing the run folder",
            ["arm", *labels],
            [[arm, *[_seconds(summary[n].get(arm)) for n in names]] for arm in study.arms],
        ),
    ]  # fmt: skip
    rows = []
    for n, label in zip(names, labels, strict=True):
        for arm in study.arms:
            e = summary[n].get(arm)
            if e and "ablation" in e:
                for inp, a in e["ablation"].items():
                    change = -a["drop"]["mean"]
                    shown = _signed(100 * change) if metric in FRACTIONS else f"{change:+.4g}"
                    rows.append([arm, label, inp, _value(metric, a[metric]["mean"]), shown])
    if rows:
        out.append((f"each input masked at test time: {metric}{unit} and the change it causes",
                    ["arm", "budget", "input masked", metric, "change"], rows))  # fmt: skip
    if results.get("source_summary"):
        out.append((f"source runs (one per seed, before the arms): {metric} on their own test split{unit}",
                    ["source", metric, "seeds", "time (s)"],
                    [[name, f"{_value(metric, s[metric]['mean'])} ± {_value(metric, s[metric]['std'])}",
                      str(s[metric]["n"]),
                      f"{s['seconds']['mean']:.1f}"] for name, s in results["source_summary"].items()]))  # fmt: skip
    if results["failed"]:
        out.append(("failed cells (run the study again to retry them; the log is beside each cell's folder)",
                    ["cell", "error"], [[cell_id(r), r["error"]] for r in results["failed"]]))  # fmt: skip
    return out


def _metric_rows(summary: dict, names: list[str], arm: str, metric: str) -> list[list[str]]:
    """An arm's row of the metric table, and its row before training where transfer.score_before_training."""
    rows = [[arm, *[_cell(summary[n].get(arm), metric) for n in names]]]
    before = [(summary[n].get(arm) or {}).get("before_training") for n in names]
    if any(before):
        rows.append([f"{arm}, before training", *[_cell(b, metric) for b in before]])
    return rows


def _setup_lines(results: dict, study: StudyConfig) -> list[str]:
    arms = "; ".join(f"{a} ({settings(o)})" for a, o in study.arms.items())
    if study.sources:
        arms += ". Sources, one run per seed: " + "; ".join(f"{a} ({settings(o)})" for a, o in study.sources.items())
    return [
        f"Base config: {study.base if isinstance(study.base, str) else 'inline'}; budgets: "
        f"{', '.join(budget_label(b) for b in study.budgets)}; seeds: {study.seed_list}; reference: "
        f"{study.reference_arm}.",
        f"Arms: {arms}.",
        "Every cell is one fit and evaluation; each label budget counts the labels that select the best epoch. "
        f"Statistics: {results['statistics']}.",
        f"Machine: {results['versions']['machine']['platform']}, {results['versions']['machine']['cpus']} CPUs, "
        f"GPU {results['versions']['machine']['gpu'] or 'none'}; torch {results['versions']['packages']['torch']}.",
    ]


def markdown(results: dict, study: StudyConfig) -> str:
    lines = ["# mmtransfer study", ""]
    if results["command"]:
        lines += [f"`{results['command']}`", ""]
    for line in _setup_lines(results, study):
        lines += [line, ""]
    found = conclusions(results, study)
    if found:
        lines += ["## Conclusions", "", *[f"- {c}" for c in found], ""]
    for title, header, rows in tables(results, study):
        lines += [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in rows] + [""]
    for p in results["plots"]:
        lines += [f"![{p}]({p})", ""]
    return "\n".join(lines)


def to_html(results: dict, study: StudyConfig, plots: list[Path]) -> str:
    """One file: inline CSS, the PNGs as data URIs, no scripts, nothing fetched."""
    e = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>mmtransfer study</title><style>"
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:4px 8px;"
        "text-align:right}td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}"
        "code{background:#f5f5f5;padding:2px 4px}img{max-width:100%;border:1px solid #eee;margin:.5em 0}"
        "</style></head><body><h1>mmtransfer study</h1>"
    ]
    if results["command"]:
        parts.append(f"<p><code>{e(results['command'])}</code></p>")
    parts += [f"<p>{e(line)}</p>" for line in _setup_lines(results, study)]
    found = conclusions(results, study)
    if found:
        parts.append("<h2>Conclusions</h2><ul>" + "".join(f"<li>{e(c)}</li>" for c in found) + "</ul>")
    for title, header, rows in tables(results, study):
        parts.append(f"<h2>{e(title)}</h2><table><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows]
        parts.append("</table>")
    for p in plots:
        data = base64.b64encode(p.read_bytes()).decode()
        parts.append(
            f"<h2>{e(p.stem.replace('_', ' '))}</h2><img alt='{e(p.name)}' src='data:image/png;base64,{data}'>"
        )
    parts.append("</body></html>")
    return "\n".join(parts)


def write_plots(records: list[dict], summary: dict, study: StudyConfig, out: Path) -> list[Path]:
    """learning_curves.png and, per arm, confusion_ARM.png (at the largest budget, summed over seeds)."""
    if not records:
        return []
    # matplotlib is heavy (about a second to import) and needed only once a figure is drawn: imported here on purpose
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig = learning_curve_figure(summary, study)
    paths.append(out / "learning_curves.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    sizes = {budget_name(b): max((e["labels_per_class"] for e in summary[budget_name(b)].values()), default=-1.0)
             for b in study.budgets}  # fmt: skip
    largest = max(study.budgets, key=lambda b: sizes[budget_name(b)])  # the most labels, in whatever order given
    for arm in study.arms:  # each arm's confusion matrix at its largest budget, summed over seeds
        runs = [r for r in records if r["arm"] == arm and r["budget_name"] == budget_name(largest)]
        if not runs or any("confusion" not in r["test"] for r in runs):  # a regression target: no classes
            continue
        classes, matrix = summed_confusion(runs)
        title = f"{arm}, {budget_label(largest)}: confusion summed over {len(runs)} seeds"
        fig = confusion_figure(matrix, classes, title)
        paths.append(out / f"confusion_{arm}.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


def summed_confusion(runs: list[dict]) -> tuple[list[str], np.ndarray]:
    """(classes, matrix): the runs' test confusion matrices summed class by class, by name; a run whose table
    lacks a class (a seed's own table) adds nothing to that class's row and column. Classes come in the order
    first seen, run by run, so the order does not depend on hashing."""
    classes = list(dict.fromkeys(c for r in runs for c in r["classes"]))  # first seen, run by run
    where = {c: i for i, c in enumerate(classes)}
    matrix = np.zeros((len(classes), len(classes)), dtype=np.int64)
    for r in runs:
        index = np.array([where[c] for c in r["classes"]])
        matrix[np.ix_(index, index)] += np.asarray(r["test"]["confusion"], dtype=np.int64)
    return classes, matrix


def _tick(b: Budget, per_class: float) -> str:
    """A budget under the learning curves' axis: k itself, or a share / all with the labels per class it gave."""
    if isinstance(b, int) and b != "all":
        return str(b)
    return f"{budget_label(b)}\n({per_class:.0f} per class)"


def learning_curve_figure(summary: dict, study: StudyConfig):
    """Each arm's mean metric per budget with its interval; the budget axis is ticked at the budgets studied,
    labelled with their own values (log-spaced only where they span more than a factor of 8)."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    metric = study.metric
    scale = 100 if metric in FRACTIONS else 1
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for arm in study.arms:
        pts = sorted((summary[budget_name(b)][arm] for b in study.budgets if arm in summary[budget_name(b)]),
                     key=lambda e: e["labels_per_class"])  # fmt: skip
        if not pts:
            continue
        x = [e["labels_per_class"] for e in pts]
        y = np.array([scale * e[metric]["mean"] for e in pts])
        (line,) = ax.plot(x, y, marker="o", label=arm)
        lo = [scale * (e[metric]["mean"] if e[metric]["low"] is None else e[metric]["low"]) for e in pts]
        hi = [scale * (e[metric]["mean"] if e[metric]["high"] is None else e[metric]["high"]) for e in pts]
        ax.fill_between(x, lo, hi, alpha=0.15, color=line.get_color())
    ticks = {}  # labels per class -> the budget's label
    for b in study.budgets:
        section = summary[budget_name(b)]
        if section:
            per_class = float(np.mean([e["labels_per_class"] for e in section.values()]))
            ticks[per_class] = _tick(b, per_class)
    if ticks and max(ticks) / max(min(ticks), 1e-9) > 8:
        ax.set_xscale("log")
    ax.set_xticks(list(ticks), list(ticks.values()))
    ax.xaxis.set_minor_locator(NullLocator())  # no 6x10^0 between the budgets
    ax.set_xlabel("label budget: labelled examples per class (train + selection)")
    ax.set_ylabel(f"{metric} (%)" if metric in FRACTIONS else metric)
    ax.set_title(f"learning curves: mean and {round(100 * study.confidence)} % t interval over seeds", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def confusion_figure(matrix: np.ndarray, classes: list[str], title: str):
    """A confusion matrix (true rows, predicted columns) under its whole title, wrapped to the figure's width."""
    import matplotlib.pyplot as plt

    width = min(10.0, max(4.5, 2.5 + 0.45 * len(classes)))
    fig, ax = plt.subplots(figsize=(width, width * 0.85))
    ax.imshow(matrix, cmap="Blues")
    if len(classes) <= 20:
        ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(classes)), classes, fontsize=8)
        for i in range(len(classes)):
            for j in range(len(classes)):
                color = "white" if matrix[i, j] > matrix.max() / 2 else "black"
                ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=7, color=color)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    # about 12 characters of 9-point text per inch; the title may be longer than the plot is wide
    ax.set_title(textwrap.fill(title, width=int(width * 12)), fontsize=9)
    fig.tight_layout()
    return fig


def print_summary(results: dict, study: StudyConfig, console, out: Path) -> None:
    """The report's tables and conclusions on ``console``, and where the files are."""
    for title, header, rows in tables(results, study):
        console.print(Grid(title, header, rows))
    found = conclusions(results, study)
    if found:
        console.print("conclusions:\n" + "\n".join(f"  {line}" for line in found), markup=False, highlight=False)
    console.print(
        f"wrote {out / 'report.md'}, {out / 'report.html'}, {out / 'results.json'}, "
        + ", ".join(str(out / p) for p in results["plots"]),
        markup=False,
        highlight=False,
    )

"""Cross-modal distillation (transfer.distill.teacher_column): a teacher run that reads one column of a paired
table teaches a student that reads another column of the same rows, without a student label."""

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import run_cli
from PIL import Image

from mmtransfer.config import (
    CNNConfig,
    ConfigError,
    DataConfig,
    DistillConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    TransferConfig,
    load_config,
    validate,
)
from mmtransfer.errors import UserError
from mmtransfer.runfolder import RunFolder
from mmtransfer.runs import fit_run
from mmtransfer.train.objectives import SoftTargets

CLASSES = ["blue", "green", "red"]


def _picture(path, k: int, rng) -> str:
    pixels = (rng.random((16, 16, 3)) * 60).astype(np.uint8)
    pixels[..., 2 - k] = 200 + rng.integers(0, 50)
    Image.fromarray(pixels).save(path)
    return path.name


@pytest.fixture(scope="module")
def paired(tmp_path_factory):
    """A teacher run on a number column (the class is its value, 0, 5 or 10, give or take noise), and a table of
    pairs: that number and a picture of the same class (one colour channel strong). The train rows' labels are
    shuffled, so a student that read them would learn nothing."""
    root = tmp_path_factory.mktemp("paired")
    rng = np.random.default_rng(0)
    k = np.repeat(np.arange(3), 20)
    teacher_table = pd.DataFrame({"x": 5.0 * k + rng.normal(0, 1, len(k)), "label": [CLASSES[i] for i in k]})
    teacher_table.to_csv(root / "teacher.csv", index=False)
    teacher_cfg = RunConfig(
        data=DataConfig(table=str(root / "teacher.csv")),
        train=TrainConfig(epochs=40, lr=1e-2, progress=False, validation="none"),
    )
    metrics = fit_run(teacher_cfg, root / "teacher")
    assert metrics["test"]["accuracy"] == 1.0

    pairs = np.tile(np.arange(3), 30)  # 90 pairs: 60 train, 30 test
    split = np.where(np.arange(len(pairs)) < 60, "train", "test")
    labels = [CLASSES[i] for i in pairs]
    shuffled = rng.permutation(np.flatnonzero(split == "train"))
    for a, b in zip(np.flatnonzero(split == "train"), shuffled, strict=True):
        labels[a] = CLASSES[pairs[b]]
    wrong = np.mean([labels[i] != CLASSES[pairs[i]] for i in np.flatnonzero(split == "train")])
    assert wrong > 0.5  # most train labels are wrong: only the teacher can tell the student
    (root / "pictures").mkdir()
    table = pd.DataFrame(
        {
            "reading": 5.0 * pairs + rng.normal(0, 1, len(pairs)),
            "picture": [f"pictures/{_picture(root / 'pictures' / f'{i}.png', c, rng)}" for i, c in enumerate(pairs)],
            "label": labels,
            "split": split,
        }
    )
    table.to_csv(root / "pairs.csv", index=False)
    return root


def _student(root, **distill) -> RunConfig:
    return RunConfig(
        data=DataConfig(table=str(root / "pairs.csv"), split_column="split", k_per_class=0),
        model=ModelConfig(encoders={"picture": CNNConfig(channels=[8, 16])}),
        train=TrainConfig(progress=False),
        transfer=TransferConfig(
            source=str(root / "teacher"),
            distill=DistillConfig(teacher_column="reading", epochs=15, lr=1e-2, batch_size=16, **distill),
        ),
    )


def test_a_teacher_reading_numbers_teaches_a_student_reading_pictures_without_a_label(paired, tmp_path):
    out = tmp_path / "student"
    metrics = fit_run(_student(paired, student_column="picture"), out)

    assert metrics["labels"]["total"] == 0
    assert metrics["epochs_run"] == 0  # nothing trained after the teacher's lesson
    assert metrics["test"]["accuracy"] >= 0.9  # chance is 1/3; the shuffled train labels were never read
    transfer = RunFolder(out).transfer_record()
    taught = transfer["distill"]
    assert taught["teacher_column"] == "reading" and taught["student_inputs"] == ["picture"]
    assert taught["pairs"] == 60 and taught["left_out"] == 0 and taught["match"] == "probs"
    assert taught["agreement_after"] >= 0.9 > taught["agreement_before"]
    assert taught["kl_after"] < 0.5 * taught["kl_before"]
    # the head was trained, not grafted: the report says so for every tensor
    assert {r["state"] for r in transfer["graft"]["records"]} == {"skipped"}
    assert all("distillation" in r["reason"] for r in transfer["graft"]["records"])
    # the run reads only the picture: the teacher's column is ignored in the config it records
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert list(cfg["data"]["columns"]) == ["picture"]
    assert "reading" in cfg["data"]["ignore"]
    new = pd.read_csv(paired / "pairs.csv").drop(columns=["reading", "label", "split"]).iloc[60:]
    new.to_csv(paired / "pictures_only.csv", index=False)
    done = run_cli("predict", out, paired / "pictures_only.csv", "--out", tmp_path / "p.csv", cwd=paired)
    assert done.returncode == 0, done.stderr
    predicted = pd.read_csv(tmp_path / "p.csv")
    truth = np.tile(np.arange(3), 30)[60:]
    assert (predicted["prediction"].map(CLASSES.index).to_numpy() == truth).mean() >= 0.9


def test_the_student_reads_every_column_but_the_teachers_when_none_is_named(paired, tmp_path):
    cfg = _student(paired)
    cfg.data.k_per_class = 2  # and a few labels on top: it trains after the lesson
    cfg.train.epochs = 2
    metrics = fit_run(cfg, tmp_path / "s")
    assert metrics["labels"]["total"] == 6
    assert metrics["epochs_run"] == 2
    recorded = yaml.safe_load((tmp_path / "s" / "config.yaml").read_text())
    assert list(recorded["data"]["columns"]) == ["picture"]


def test_embedding_match_grafts_the_teachers_head_by_label_name(paired, tmp_path):
    with pytest.raises(UserError, match="student's embedding has 16 values, the teacher's 64"):
        cfg = _student(paired, match="both")
        cfg.model.embed_dim = 16
        fit_run(cfg, tmp_path / "a")
    cfg = _student(paired, match="both", student_column="picture")
    fit_run(cfg, tmp_path / "b")
    records = RunFolder(tmp_path / "b").transfer_record()["graft"]["records"]
    copied = sorted(r["target"] for r in records if r["state"] == "copied")
    assert "head.out.weight" in copied and all(name.startswith("head.") for name in copied)


def test_soft_targets_loss_is_zero_when_the_student_gives_the_teachers_probabilities():
    scores, objective = torch.randn(4, 3), SoftTargets(temperature=2.0, classes=3)
    teacher = torch.softmax(scores / 2, -1)
    assert abs(float(objective.loss(lambda x: x["s"], {"s": scores}, teacher))) < 1e-6
    assert float(objective.loss(lambda x: x["s"], {"s": -scores}, teacher)) > 0.1


def test_a_config_that_cannot_be_taught_is_refused_before_any_work():
    with pytest.raises(ConfigError, match="teacher_column and student_column are both 'a'"):
        load_config(None, ["transfer.distill.teacher_column=a", "transfer.distill.student_column=a"])
    with pytest.raises(ConfigError, match="data.k_per_class=0 trains with no label: only a teacher can"):
        load_config(None, ["data.k_per_class=0"])
    with pytest.raises(ConfigError, match="teacher_column: set transfer.source"):
        load_config(None, ["transfer.distill.teacher_column=a", "data.table=t.csv"])


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["transfer.distill.teacher_column=readng"], "no teacher column 'readng' (transfer.distill.teacher_column)"),
        (["transfer.distill.student_column=pictur"], "no student column 'pictur' (transfer.distill.student_column)"),
        (["transfer.distill.teacher_column=label"], "teacher_column 'label' is the label"),
    ],
)
def test_a_bad_column_is_one_error_line_and_nothing_is_written(paired, tmp_path, sets, message):
    base = ["data.table=pairs.csv", "data.split_column=split", "data.k_per_class=0", "transfer.source=teacher",
            "transfer.distill.teacher_column=reading", "train.progress=false"]  # fmt: skip
    args = [a for s in base + sets for a in ("--set", s)]
    done = run_cli("fit", *args, "--out", tmp_path / "run", cwd=paired)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr
    assert done.stderr.count("error:") == 1
    assert not (tmp_path / "run").exists()


def test_a_teacher_must_know_the_students_classes(paired, tmp_path):
    table = pd.read_csv(paired / "pairs.csv")
    table.loc[59, "label"] = "purple"  # a train row's
    table.to_csv(tmp_path / "pairs.csv", index=False)
    cfg = _student(paired)
    cfg.data.table = str(tmp_path / "pairs.csv")
    for p in (paired / "pictures").iterdir():
        (tmp_path / "pictures").mkdir(exist_ok=True)
        (tmp_path / "pictures" / p.name).write_bytes(p.read_bytes())
    with pytest.raises(UserError, match=r"does not know the class\(es\) \['purple'\]"):
        fit_run(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "weights.safetensors").exists()


def test_the_readme_student_config_is_valid():
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    body = re.search(r"```text\n(# student\.yaml:.*?)```", readme, re.S).group(1)
    cfg = validate(yaml.safe_load(body))
    assert cfg.data.k_per_class == 0 and cfg.transfer.distill.teacher_column == "image"
    assert cfg.transfer.distill.resolved_match() == "probs"

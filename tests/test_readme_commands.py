"""Every command and config the README shows works as written: read from README.md when the tests run, so a new
block is checked as soon as it is written.

- every ```yaml block validates: a run config (sections data, model, train, transfer) with ``validate``, a study
  (base, arms) cell by cell, a rules file with ``read_rules_file``;
- every ``mmtransfer ...`` line of a ```bash block (and the command in a YAML block's first comment) parses with
  the command line: its subcommand, options and arguments, without running it; a ``fit`` or ``graft`` of a
  config file the repository holds also validates that config with the line's ``--set`` overrides;
- the first screen's ``mmtransfer fit --data ...`` commands run, on generated data (the demo is left to
  tests/test_demo.py: it takes a minute).

A block opts out with a ``# not run:`` comment in it (say why after the colon).
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import typer
import yaml

from mmtransfer.cli import app
from mmtransfer.config import read_rules_file, validate

ROOT = Path(__file__).resolve().parents[1]
UsageError = typer.BadParameter.__mro__[1]  # typer carries its own click: its UsageError
README = ROOT / "README.md"
SECTIONS = {"data", "model", "train", "transfer"}


def blocks(language: str, text: str | None = None) -> list[tuple[int, str]]:
    """(line number, body) of each fenced block in ``language``, but those holding ``# not run:``."""
    text = README.read_text() if text is None else text
    found = []
    for match in re.finditer(r"^```(\w*)[^\n]*\n(.*?)^```", text, re.S | re.M):
        if match.group(1) == language and "# not run:" not in match.group(2):
            found.append((text.count("\n", 0, match.start()) + 1, match.group(2)))
    return found


def commands(body: str) -> list[list[str]]:
    """The ``mmtransfer`` command lines of a shell block (continuations joined, comments dropped) as argument
    lists without the program name; ``torchrun ... -m mmtransfer ...`` and ``python -m mmtransfer`` count."""
    found = []
    for line in body.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if "-m" in words and words[words.index("-m") + 1 : words.index("-m") + 2] == ["mmtransfer"]:
            words = words[words.index("-m") + 1 :]
        for start in [i for i, w in enumerate(words) if w == "mmtransfer"][:1]:
            rest = words[start + 1 :]
            if "&&" in rest:  # `pip install ... && mmtransfer demo && ...`
                rest = rest[: rest.index("&&")]
            found.append(rest)
    return found


def parse(args: list[str]) -> dict:
    """The parameters click would call the command with; a usage mistake raises click's UsageError."""
    command = typer.main.get_command(app)
    context = command.make_context("mmtransfer", list(args))
    while hasattr(command, "resolve_command"):  # mmtransfer, mmtransfer cache: down to the command named
        rest = [*getattr(context, "_protected_args", []), *context.args]  # click keeps the name apart
        name, command, rest = command.resolve_command(context, rest)
        context = command.make_context(name, rest, parent=context)
    return context.params


def readme_commands() -> list[tuple[str, list[str]]]:
    found = [(f"README.md:{line}", args) for line, body in blocks("bash") for args in commands(body)]
    for line, body in blocks(""):  # a shown session: `$ mmtransfer fit bad.yaml`, then what it prints
        prompts = "\n".join(t[2:] for t in body.splitlines() if t.startswith("$ mmtransfer "))
        found += [(f"README.md:{line}", args) for args in commands(prompts)]
    for line, body in blocks("yaml"):  # `# flowers.yaml: mmtransfer fit flowers.yaml --out runs/flowers`
        first = body.splitlines()[0] if body.strip() else ""
        if first.startswith("#") and "mmtransfer " in first:
            command = first.split(":", 1)[1].split(" (", 1)[0]  # an aside in brackets is no argument
            found += [(f"README.md:{line}", args) for args in commands(command)]
    return found


def test_the_readme_has_commands_and_configs_to_check():
    assert len(readme_commands()) >= 10 and len(blocks("yaml")) >= 3


@pytest.mark.parametrize("where,args", readme_commands(), ids=lambda v: v if isinstance(v, str) else " ".join(v))
def test_each_readme_command_parses(where, args, monkeypatch):
    monkeypatch.chdir(ROOT)
    params = parse(args)
    if not args or args[0] not in ("fit", "graft"):
        return
    config = params.get("config") or params.get("target_config")
    if config is None or not Path(config).is_file():  # a file the README only names (big.yaml, my_text.yaml)
        return
    from mmtransfer.config import load_config

    validate_with = [*(params.get("set_") or [])]
    load_config(config, validate_with)  # a repository config, with the line's overrides


def substitute(value, folder: Path):
    """A study's placeholders made concrete: {source.NAME} a folder, {seed} 0."""
    if isinstance(value, str):
        return re.sub(r"\{source\.\w+\}", str(folder / "source"), value).replace("{seed}", "0")
    if isinstance(value, dict):
        return {k: substitute(v, folder) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, folder) for v in value]
    return value


@pytest.mark.parametrize("line,body", blocks("yaml"), ids=lambda v: f"README.md:{v}" if isinstance(v, int) else "")
def test_each_readme_yaml_block_is_a_valid_config(line, body, tmp_path):
    raw = yaml.safe_load(body)
    assert isinstance(raw, dict), f"README.md:{line}: not a YAML mapping"
    if "arms" in raw or "base" in raw:  # a study: the base, every arm and every source, as a cell would be
        from mmtransfer.study import cell_config, load_study

        if isinstance(raw.get("base"), str):
            (tmp_path / raw["base"]).write_text("{}\n")  # the base file it names: the defaults
        (tmp_path / "study.yaml").write_text(body)
        study, base, folder = load_study(tmp_path / "study.yaml")
        budget = study.budgets[0] if study.budgets else None
        for kind, overrides in [
            *(("arm", a) for a in study.arms.items()),
            *(("source", s) for s in study.sources.items()),
        ]:
            name, values = overrides
            cell_config(base, substitute(values, tmp_path), budget if kind == "arm" else None, 0, folder,
                        f"README.md:{line}: {kind} {name}")  # fmt: skip
    elif set(raw) & SECTIONS and set(raw) <= SECTIONS:  # a run config
        validate(raw, f"README.md:{line}")
    else:  # a rules file: source prefix -> target prefix, exclude
        (tmp_path / "rules.yaml").write_text(body)
        rules, exclude = read_rules_file(tmp_path / "rules.yaml")
        assert rules or exclude


def test_the_data_readme_configs_name_exists():
    """A run config's table or folder is in the repository (relative to its root, where the README's commands
    run), or is the project's shared data (../shared/data, which tests do not need)."""
    missing = []
    for line, body in blocks("yaml"):
        raw = yaml.safe_load(body)
        data = raw.get("data") if isinstance(raw, dict) and isinstance(raw.get("data"), dict) else {}
        for key in ("table", "folder"):
            path = data.get(key)
            if isinstance(path, str) and not path.startswith("../shared/") and not (ROOT / path).exists():
                missing.append(f"README.md:{line}: data.{key} {path}")
    assert not missing, missing


def first_screen() -> str:
    """The README up to its first section heading: what a new user reads and types first."""
    return README.read_text().split("\n## ", 1)[0]


def first_screen_fits() -> list[list[str]]:
    return [
        a for _, body in blocks("bash", first_screen()) for a in commands(body) if a[:1] == ["fit"] and "--data" in a
    ]


@pytest.mark.skipif(not first_screen_fits(), reason="the README's first screen has no `mmtransfer fit --data` yet")
def test_the_first_screens_fit_commands_run_on_generated_data(tmp_path, monkeypatch):
    """The data a command names (e.g. ../shared/data/flower_photos) becomes a generated folder of photos, or a
    table of them; the run goes to a folder here and trains briefly (--set train.epochs=2)."""
    from typer.testing import CliRunner

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MMTRANSFER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MMTRANSFER_PRESET", "auto")  # what a new user gets: the pretrained encoder where installed
    from conftest import write_photos

    photos = write_photos(tmp_path / "photos", per_class=18, size=(36, 44), suffix=".jpg")
    for number, args in enumerate(first_screen_fits()):
        args = list(args)
        data = args[args.index("--data") + 1]
        label = args[args.index("--label") + 1] if "--label" in args else "label"
        if Path(data).suffix.lower() in (".csv", ".tsv", ".parquet"):
            table = tmp_path / f"table{number}.csv"
            rows = [(f"photos/{p.parent.name}/{p.name}", p.parent.name) for p in sorted(photos.rglob("*.jpg"))]
            split = ["test" if i % 3 == 2 else "train" for i in range(len(rows))]  # 12 train photos per class
            table.write_text(
                f"image,{label},split\n" + "".join(f"{p},{c},{s}\n" for (p, c), s in zip(rows, split, strict=True))
            )
            args[args.index("--data") + 1] = str(table)
        else:
            args[args.index("--data") + 1] = str(photos)
        out = tmp_path / f"run{number}"
        if "--out" in args:
            args[args.index("--out") + 1] = str(out)
        else:
            args += ["--out", str(out)]
        args += ["--set", "train.epochs=2", "--set", "train.progress=false"]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, f"mmtransfer {shlex.join(args)}\n{result.output}"
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["classes"] == ["blue", "green", "red"]


def test_the_checks_find_what_the_readme_could_get_wrong(tmp_path):
    """The checks themselves: a wrong option, an unknown field, a block that opts out, and the fixture text."""
    with pytest.raises(UsageError):
        parse(["fit", "cfg.yaml", "--epochs", "3"])
    with pytest.raises(UsageError):
        parse(["predcit", "runs/mine", "new.csv"])
    assert parse(["cache", "info"]) == {}
    assert parse(["fit", "--data", "photos", "--label", "kind", "--out", "runs/x"])["label"] == "kind"
    text = (
        "intro\n```bash\nmmtransfer fit a.yaml \\\n    --out runs/a   # a comment\n"
        "pip install x && mmtransfer demo\n```\n```yaml\n# not run: needs a GPU\ntrain: {precision: fp16}\n```\n"
        "```yaml\ntrain: {epochs: 2}\n```\n"
    )
    assert [commands(b) for _, b in blocks("bash", text)] == [[["fit", "a.yaml", "--out", "runs/a"], ["demo"]]]
    assert blocks("yaml", text) == [(11, "train: {epochs: 2}\n")]  # the line of its fence
    from mmtransfer.config import ConfigError

    with pytest.raises(ConfigError, match="train.learning_rate: unknown field; did you mean lr"):
        test_each_readme_yaml_block_is_a_valid_config(1, "train: {learning_rate: 0.1}\n", tmp_path)

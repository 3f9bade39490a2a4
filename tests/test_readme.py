"""The README's Python example runs as written and prints what it says it prints."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_python_example_prints_the_graft_table(capsys):
    section = README.read_text().split("## In Python", 1)[1]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    code = next(b for b in blocks if "transfer_across" in b)  # the building blocks, one by one
    exec(compile(code, str(README), "exec"), {})
    out = capsys.readouterr().out
    assert "rich.table.Table object" not in out
    lines = out.splitlines()
    assert any(line.startswith("head.out.weight") and "copied" in line for line in lines)
    assert any(line.startswith("encoders.image.rnn.weight_hh_l0") and "feature distillation" in line for line in lines)
    accuracy = float(lines[-1])
    assert accuracy > 0.8  # the GRU with the grafted head, before any fine-tuning

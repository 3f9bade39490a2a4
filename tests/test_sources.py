"""transfer/sources.py: a graft source read as one state dict, whatever holds it (a module, a mapping, a run
folder with its class names, a safetensors or PyTorch file); anything else is refused naming it."""

import pytest
import torch
from torch import nn

from mmtransfer.checkpoint import load_weights, save_weights
from mmtransfer.transfer.sources import Source, load_source


def test_a_module_or_a_mapping_in_memory_is_its_state_dict():
    module = nn.Linear(3, 2)
    module.classes = ["a", "b"]
    got = load_source(module)
    assert got.name == "Linear" and got.classes == ["a", "b"] and set(got.state) == {"weight", "bias"}
    assert torch.equal(got.state["weight"], module.weight)
    mapping = load_source({"w": torch.ones(2)})
    assert (mapping.name, mapping.classes, list(mapping.state)) == ("state dict", None, ["w"])
    given = Source({"w": torch.zeros(1)}, "mine")
    assert load_source(given) is given


def test_weight_files_are_read_by_their_suffix(tmp_path):
    module = nn.Linear(2, 2)
    save_weights(module, tmp_path / "w.safetensors")
    torch.save(module.state_dict(), tmp_path / "w.pth")
    for name in ("w.safetensors", "w.pth"):
        got = load_source(tmp_path / name)
        assert got.name == str(tmp_path / name) and got.classes is None
        assert torch.equal(got.state["bias"], module.bias.detach())


def test_a_run_folder_gives_its_weights_and_class_names(fitted_runs):
    got = load_source(fitted_runs["cnn"])
    assert got.classes == ["cat", "dog", "owl"] and got.name == str(fitted_runs["cnn"])
    expected = load_weights(fitted_runs["cnn"])
    assert set(got.state) == set(expected) and all(torch.equal(got.state[k], expected[k]) for k in expected)


def test_anything_else_is_refused_naming_it(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=r"notes.txt: not a run folder, Hugging Face folder, .safetensors or"):
        load_source(tmp_path / "notes.txt")
    with pytest.raises(ValueError, match="not a run folder"):
        load_source(tmp_path)  # a folder without config.yaml or config.json
    with pytest.raises(FileNotFoundError, match=r"graft source not found: .*absent \(use hf:ID for a cached hub id"):
        load_source(tmp_path / "absent")

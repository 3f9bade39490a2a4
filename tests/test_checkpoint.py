"""checkpoint.py: safetensors written atomically and read back exactly; PyTorch state-dict files read without
running code; a state dict that does not fit a model is refused naming every tensor that does not fit."""

import pickle

import pytest
import torch
from torch import nn

from mmtransfer.checkpoint import load_into, load_state_file, load_weights, save_tensors, save_weights


def test_weights_round_trip_exactly_and_leave_no_temporary_file(tmp_path):
    model = nn.Linear(3, 2)
    path = save_weights(model, tmp_path / "run" / "model.safetensors")  # the folder is made
    assert path == tmp_path / "run" / "model.safetensors"
    state = load_weights(tmp_path / "run")  # a run folder reads its model.safetensors
    assert set(state) == {"weight", "bias"}
    for name, tensor in model.state_dict().items():
        assert torch.equal(state[name], tensor)
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["model.safetensors"]


def test_a_failed_write_names_the_file_and_leaves_nothing_under_it(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(OSError, match="file"):
        save_tensors({"w": torch.zeros(2)}, tmp_path / "file" / "model.safetensors")
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


def test_unreadable_weights_are_refused_with_the_file_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no weights at"):
        load_weights(tmp_path / "missing.safetensors")
    (tmp_path / "w.pt").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"w.pt: expected a .safetensors file or a run folder"):
        load_weights(tmp_path / "w.pt")
    (tmp_path / "bad.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")  # a header cut short
    with pytest.raises(ValueError, match=r"bad.safetensors: not a readable safetensors file"):
        load_weights(tmp_path / "bad.safetensors")


def test_a_torch_state_dict_file_is_read_without_running_code(tmp_path):
    weights = {"a": torch.arange(3.0), "b": torch.ones(2, 2)}
    torch.save({"state_dict": weights, "epoch": 3}, tmp_path / "ckpt.pt")  # a training checkpoint: its weights
    state = load_state_file(tmp_path / "ckpt.pt")
    assert set(state) == {"a", "b"} and torch.equal(state["a"], weights["a"])
    torch.save({"steps": 3, "name": "x"}, tmp_path / "none.pt")
    with pytest.raises(ValueError, match="holds no tensors by name"):
        load_state_file(tmp_path / "none.pt")
    with open(tmp_path / "code.pt", "wb") as f:
        pickle.dump(nn.Linear(2, 2), f, protocol=2)  # a whole module: a pickle of more than tensors
    with pytest.raises(ValueError, match="code.pt"):
        load_state_file(tmp_path / "code.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(ValueError, match="not a plain state dict of tensors"):
        load_state_file(tmp_path / "text.pt")
    with pytest.raises(OSError, match="cannot read it"):
        load_state_file(tmp_path / "absent.pt")


def test_a_state_dict_that_does_not_fit_names_every_tensor():
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))
    state = dict(model.state_dict())
    state["0.weight"] = torch.zeros(4, 3)
    del state["1.bias"]
    state["extra"] = torch.zeros(1)
    with pytest.raises(ValueError) as err:
        load_into(model, state, where="run/model.safetensors")
    message = str(err.value)
    assert message.startswith("run/model.safetensors do not fit the model:")
    assert "missing: ['1.bias']" in message and "unexpected: ['extra']" in message
    assert "0.weight: file [4, 3] vs model [2, 3]" in message
    fitting = {k: torch.full_like(v, 0.5) for k, v in model.state_dict().items()}
    load_into(model, fitting)
    assert all(torch.all(p == 0.5) for p in model.parameters())

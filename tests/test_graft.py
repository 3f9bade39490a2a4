import json

import pytest
import torch
from torch import nn

from mmtransfer.checkpoint import save_weights
from mmtransfer.config import CNNConfig, ModelConfig
from mmtransfer.model import build_model
from mmtransfer.transfer.graft import graft

SHAPES = {"image": (1, 8, 8)}
DIGITS = [str(i) for i in range(10)]


def test_round_trip_copies_every_tensor_and_outputs_match():
    cfg = ModelConfig(encoders={"image": CNNConfig(channels=[4, 8])}, embed_dim=8)
    src, dst = build_model(cfg, SHAPES, DIGITS), build_model(cfg, SHAPES, DIGITS)
    src.eval(), dst.eval()
    x = {"image": torch.rand(3, 1, 8, 8)}
    assert not torch.allclose(src(x), dst(x))
    report = graft(src, dst)
    assert report.counts() == {"copied": len(src.state_dict()), "adapted": 0, "skipped": 0, "new": 0}
    torch.testing.assert_close(dst(x), src(x), rtol=0, atol=0)
    assert report.unused_source == []


def test_copied_skipped_and_new_on_models_built_to_differ():
    # source: CNN [4, 8], D=8, 10 classes; target: CNN [4, 8, 16], D=8, 5 classes
    src = build_model(ModelConfig(encoders={"image": CNNConfig(channels=[4, 8])}, embed_dim=8), SHAPES, 10)
    dst = build_model(ModelConfig(encoders={"image": CNNConfig(channels=[4, 8, 16])}, embed_dim=8), SHAPES, 5)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    report = graft(src.state_dict(), dst)
    states = {r.target: r for r in report.records}
    assert set(states) == set(dst.state_dict())  # every target tensor has exactly one record

    assert states["encoders.image.blocks.0.0.weight"].state == "copied"
    name = "encoders.image.blocks.1.0.weight"
    assert torch.equal(dst.state_dict()[name], src.state_dict()[name])
    skipped = states["encoders.image.proj.weight"]
    # the proj reads a 2x2 grid of 8 channels in the source, 1x1 of 16 in the target
    assert skipped.state == "skipped" and skipped.reason == "shape [8, 32] vs [8, 16]"
    # a bare state dict names no classes: the head is never copied by position, whatever the shapes
    assert states["head.out.weight"].reason.startswith("the source's label names are unknown")
    assert torch.equal(dst.state_dict()["head.out.weight"], before["head.out.weight"])  # untouched
    new = states["encoders.image.blocks.2.0.weight"]
    assert new.state == "new" and new.source is None
    assert torch.equal(dst.state_dict()["encoders.image.blocks.2.0.weight"], before["encoders.image.blocks.2.0.weight"])

    counts = report.counts()
    # 6 tensors per block (conv + BN weight, bias, mean, var, count): blocks 0-1 copied, block 2 new. proj.bias
    # is [8] on both sides, so it is copied although proj.weight is not: the rule is name and shape, tensor by tensor.
    assert states["encoders.image.proj.bias"].state == "copied"
    assert counts == {"copied": 13, "adapted": 0, "skipped": 3, "new": 6}
    assert report.parameter_counts()["new"] == 16 * 8 * 9 + 4 * 16 + 1


def test_select_limits_copying_and_says_why():
    cfg = ModelConfig(encoders={"image": CNNConfig(channels=[4])}, embed_dim=8)
    src, dst = build_model(cfg, SHAPES, ["a", "b", "c"]), build_model(cfg, SHAPES, ["a", "b", "c"])
    report = graft(src, dst, select=["head.*"], unselected_reason="kept fresh")
    assert report.by_state("copied") == ["head.out.weight", "head.out.bias"]
    assert {r.reason for r in report.records if r.state == "skipped"} == {"kept fresh"}


def test_report_json_and_table(tmp_path):
    src, dst = nn.Linear(4, 2), nn.Linear(4, 3)
    report = graft(src, dst)
    data = json.loads(report.save(tmp_path / "r.json").read_text())
    assert data["counts"] == {"copied": 0, "adapted": 0, "skipped": 2, "new": 0}
    assert data["records"][0] == {
        "target": "weight",
        "state": "skipped",
        "shape": [3, 4],
        "source": "weight",
        "source_shape": [2, 4],
        "reason": "shape [2, 4] vs [3, 4]",
        "matched_by": "name",
        "excluded_by": None,
    }
    assert "| `weight` | skipped | [3, 4] | weight: shape [2, 4] vs [3, 4] |" in (tmp_path / "r.md").read_text()
    table = report.table()
    assert len(table.rows) == 2
    assert "skipped: 2 tensors, 15 values (100.0%)" in table.caption


def test_graft_from_files(tmp_path):
    src, dst = nn.Linear(4, 2), nn.Linear(4, 2)
    path = save_weights(src, tmp_path / "w.safetensors")
    assert graft(path, dst).counts()["copied"] == 2
    assert torch.equal(dst.weight, src.weight)
    torch.save({"state_dict": nn.Linear(4, 2).state_dict()}, tmp_path / "ckpt.pt")  # a training checkpoint
    assert graft(tmp_path / "ckpt.pt", dst).counts()["copied"] == 2
    with pytest.raises(ValueError, match="not a plain state dict"):
        (tmp_path / "w.pt").write_bytes(b"x")
        graft(tmp_path / "w.pt", dst)


class Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_loading_a_pickle_never_runs_its_code(tmp_path, capsys):
    torch.save({"weight": torch.zeros(2, 4), "payload": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="weights_only=True"):
        graft(tmp_path / "evil.pt", nn.Linear(4, 2))
    assert "this must never run" not in capsys.readouterr().out


SOUNDS = ["dog", "rain", "siren", "bird", "engine", "crowd", "drum", "bell", "wind", "clock"]


def test_a_head_with_no_shared_label_name_is_skipped_never_copied_by_position():
    """A 10-class spoken-digit source into a 10-class sound target: same shapes, no shared name."""
    cfg = ModelConfig(encoders={"image": CNNConfig(channels=[4, 8])}, embed_dim=8)
    src, dst = build_model(cfg, SHAPES, DIGITS, seed=0), build_model(cfg, SHAPES, SOUNDS, seed=1)
    head_before = dst.head.out.weight.detach().clone()
    report = graft(src, dst)
    states = {r.target: r for r in report.records}
    for name in ("head.out.weight", "head.out.bias"):
        assert states[name].state == "skipped"
        assert states[name].reason == (
            "no label name shared between source (0, 1, 2, 3, 4, ... 10 in all) and target (dog, rain, siren, "
            "bird, engine, ... 10 in all); a head is never copied by position"
        )
    assert torch.equal(dst.head.out.weight, head_before)
    assert report.counts() == {"copied": len(dst.state_dict()) - 2, "adapted": 0, "skipped": 2, "new": 0}

    # one shared name: that row moves by name, the other nine keep their initialisation
    mixed = build_model(cfg, SHAPES, ["7", *SOUNDS[1:]], seed=1)
    fresh = mixed.head.out.weight.detach().clone()
    rec = {r.target: r for r in graft(src, mixed).records}["head.out.weight"]
    assert rec.state == "adapted" and rec.reason == "rows of 1 classes kept by label name, 9 newly initialised"
    assert torch.equal(mixed.head.out.weight[0], src.head.out.weight[7])
    assert torch.equal(mixed.head.out.weight[1:], fresh[1:])

    # the same names in another order: rows follow the names
    shuffled = build_model(cfg, SHAPES, DIGITS[::-1], seed=1)
    graft(src, shuffled)
    assert torch.equal(shuffled.head.out.weight, src.head.out.weight.flip(0))


def test_exclude_patterns_leave_tensors_untouched_and_say_which_pattern():
    cfg = ModelConfig(encoders={"image": CNNConfig(channels=[4, 8])}, embed_dim=8)
    src, dst = build_model(cfg, SHAPES, DIGITS, seed=0), build_model(cfg, SHAPES, DIGITS, seed=1)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    report = graft(src, dst, exclude=["encoders.image.blocks.0.*", "head.*"])
    excluded = {r.target: r.excluded_by for r in report.records if r.excluded_by}
    assert excluded == {
        **{
            f"encoders.image.blocks.0.{k}": "encoders.image.blocks.0.*"
            for k in ("0.weight", "1.weight", "1.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked")
        },
        "head.out.weight": "head.*",
        "head.out.bias": "head.*",
    }
    for name in excluded:
        assert torch.equal(dst.state_dict()[name], before[name])
        rec = next(r for r in report.records if r.target == name)
        assert rec.state == "skipped" and rec.reason == f"excluded by pattern {excluded[name]!r}"
    assert torch.equal(
        dst.state_dict()["encoders.image.blocks.1.0.weight"], src.state_dict()["encoders.image.blocks.1.0.weight"]
    )
    assert "excluded by pattern 'head.\\*'" in report.markdown()  # * escaped: not Markdown emphasis
    # overlapping patterns: each counts as used; the first one is reported
    again = graft(src, dst, exclude=["head.*", "head.out.weight"])
    assert {r.target: r.excluded_by for r in again.records if r.excluded_by} == {
        "head.out.weight": "head.*",
        "head.out.bias": "head.*",
    }
    with pytest.raises(ValueError, match=r"exclude pattern\(s\) \['hed.\*'\] match no tensor"):
        graft(src, dst, exclude=["hed.*"])


def test_a_rule_decides_where_a_source_tensor_goes_never_its_own_name_as_well():
    cfg = ModelConfig(encoders={"image": CNNConfig(channels=[4, 8])}, embed_dim=8)
    src, dst = build_model(cfg, SHAPES, DIGITS, seed=0), build_model(cfg, SHAPES, DIGITS, seed=1)
    report = graft(src, dst, rules={"encoders.image.proj": "elsewhere.proj"})  # a target that does not exist
    states = {r.target: r.state for r in report.records}
    assert states["encoders.image.proj.weight"] == "new" and states["encoders.image.proj.bias"] == "new"
    assert "encoders.image.proj.weight" in report.unused_source


def test_the_graft_table_prints_whole_with_print():
    cfg = ModelConfig(encoders={"image": CNNConfig(channels=[4, 8])}, embed_dim=8)
    src, dst = build_model(cfg, SHAPES, DIGITS), build_model(cfg, SHAPES, SOUNDS)
    text = str(graft(src, dst).table("graft report"))
    assert "rich.table" not in text and text.startswith("graft report\ntarget tensor")
    lines = text.splitlines()
    assert any(line.startswith("encoders.image.blocks.1.1.num_batches_tracked  copied") for line in lines)
    assert any("a head is never copied by position" in line for line in lines)


def test_plan_touches_no_module_and_apply_does_what_graft_does():
    from mmtransfer.transfer.adapt import Context
    from mmtransfer.transfer.graft import apply, plan_graft

    src = build_model(ModelConfig(encoders={"image": CNNConfig(channels=[4, 8])}, embed_dim=8), SHAPES, DIGITS)
    cfg = ModelConfig(encoders={"image": CNNConfig(channels=[4, 8, 16])}, embed_dim=8)
    dst, twin = build_model(cfg, SHAPES, DIGITS, seed=1), build_model(cfg, SHAPES, DIGITS, seed=1)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    names = Context(source_classes=DIGITS, target_classes=DIGITS)  # graft takes them from the models
    updates, report = plan_graft(src.state_dict(), dst.state_dict(), context=names, source_name="cnn [4, 8]")
    assert all(torch.equal(v, before[k]) for k, v in dst.state_dict().items())  # a plan changes nothing
    assert sorted(updates) == sorted(report.by_state("copied") + report.by_state("adapted"))
    assert report.counts() == graft(src, twin).counts() == {"copied": 15, "adapted": 0, "skipped": 1, "new": 6}
    assert report.source == "cnn [4, 8]" and names.first_convs == frozenset()  # the caller's context is not changed
    apply(dst, updates)
    for name, value in twin.state_dict().items():
        assert torch.equal(dst.state_dict()[name], value), name
    assert torch.equal(
        dst.state_dict()["encoders.image.blocks.0.0.weight"], src.state_dict()["encoders.image.blocks.0.0.weight"]
    )

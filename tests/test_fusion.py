import pytest
import torch

from mmtransfer.fusion import AttentionFusion, ConcatFusion, GatedFusion, drop_inputs

DIMS = {"b": 4, "a": 4, "c": 4}


def embeddings(n=3):
    return {k: torch.randn(n, 4) for k in DIMS}


def test_concat_sorted_and_missing_is_zero():
    e = embeddings()
    present = {"b": torch.tensor([True, False, True])}
    out = ConcatFusion(DIMS)(e, present)
    torch.testing.assert_close(out[0], torch.cat([e["a"][0], e["b"][0], e["c"][0]]))
    assert torch.equal(out[1, 4:8], torch.zeros(4))


@pytest.mark.parametrize("cls", [AttentionFusion, GatedFusion])
def test_missing_input_does_not_change_the_output(cls):
    fusion = cls(DIMS).eval()
    e = embeddings()
    present = {"a": torch.tensor([True, True, True]), "b": torch.tensor([False, True, True]), "c": None}
    out = fusion(e, present)
    changed = {k: v.clone() for k, v in e.items()}
    changed["b"][0] = 100.0  # row 0 lacks b: whatever sits there must not matter
    again = fusion(changed, present)
    torch.testing.assert_close(again[0], out[0])
    assert not torch.allclose(again[1], fusion({**changed, "b": e["b"] + 1}, present)[1])
    assert out.shape == (3, 4) and torch.isfinite(out).all()


def test_gated_fusion_formula():
    fusion = GatedFusion({"a": 2, "b": 2})
    e = {"a": torch.tensor([[1.0, 0.0]]), "b": torch.tensor([[0.0, 2.0]])}
    g = torch.cat([fusion.gates[k](e[k]) for k in ("a", "b")], 1)
    z = torch.softmax(g, 1)
    h = [torch.tanh(fusion.transforms[k](e[k])) for k in ("a", "b")]
    torch.testing.assert_close(fusion(e), z[:, :1] * h[0] + z[:, 1:] * h[1])
    only_a = fusion(e, {"b": torch.tensor([False])})
    torch.testing.assert_close(only_a, h[0])  # the one present input gets weight 1


def test_unequal_sizes_rejected():
    with pytest.raises(ValueError, match="equal embedding sizes"):
        GatedFusion({"a": 2, "b": 3})


def test_modality_dropout_never_empties_a_row():
    torch.manual_seed(0)
    present = {"a": torch.ones(1000, dtype=torch.bool), "b": torch.rand(1000) > 0.5}
    out = drop_inputs(present, ["a", "b"], 0.3, 1000, torch.device("cpu"))
    kept = torch.stack([out["a"], out["b"]], 1)
    assert kept.any(1).all()
    assert not (out["b"] & ~present["b"]).any()  # never brings back a missing input
    # a is dropped with p = 0.3 where b is there (half the rows), minus half of the rows that lost both:
    # 0.5 * (0.3 - 0.09 / 2) = 0.1275; where b is missing, a is all the row has and stays
    assert 0.09 < 1 - out["a"].float().mean() < 0.17
    assert out["a"][~present["b"]].all()
    assert drop_inputs(present, ["a", "b"], 0.0, 1000, torch.device("cpu")) is present

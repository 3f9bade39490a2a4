"""graft: rules, structure matching, dry run, strict mode, shape adaptations, Hugging Face equivalence."""

import pytest
import torch
from torch import nn

from mmtransfer.config import HFConfig, ModelConfig
from mmtransfer.modalities.base import InputSpec
from mmtransfer.model import build_model
from mmtransfer.transfer.graft import GraftError, compile_rules, graft, rename


class Old(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(4, 4) for _ in range(3))
        self.out = nn.Linear(4, 2)


class New(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(nn.Linear(4, 4) for _ in range(3))
        self.classifier = nn.Linear(4, 2)


def test_rules_rename_with_numbered_placeholders():
    rules = compile_rules({"layers.{i}": "blocks.{i}", "out": "classifier"})
    assert rename("layers.12.weight", rules)[0] == "blocks.12.weight"
    assert rename("outer.weight", rules) is None  # a prefix ends at a dot: "out" does not match "outer"
    src, dst = Old(), New()
    report = graft(src, dst, rules={"layers.{i}": "blocks.{i}", "out": "classifier"})
    assert report.counts() == {"copied": 8, "adapted": 0, "skipped": 0, "new": 0}
    assert torch.equal(dst.blocks[2].weight, src.layers[2].weight)
    assert torch.equal(dst.classifier.bias, src.out.bias)
    assert {r.matched_by.split(" ")[0] for r in report.records} == {"rule"}


def test_structure_matching_pairs_same_shaped_tensors_in_order():
    src, dst = Old(), New()
    report = graft(src, dst, structure=True)
    assert report.counts()["copied"] == 8
    x = torch.randn(3, 4)
    for a, b in zip(src.layers, dst.blocks, strict=True):
        torch.testing.assert_close(b(x), a(x))
    rec = next(r for r in report.records if r.target == "classifier.weight")
    assert rec.source == "out.weight" and rec.matched_by.startswith("structure")


def test_dry_run_copies_nothing_and_reports_the_same():
    src, dst = Old(), New()
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    dry = graft(src, dst, structure=True, dry_run=True)
    assert all(torch.equal(v, dst.state_dict()[k]) for k, v in before.items())
    real = graft(src, dst, structure=True)
    assert dry.counts() == real.counts() and dry.dry_run and "dry run" in dry.markdown()


def test_strict_lists_unexpected_skips_and_copies_nothing():
    src, dst = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2)), nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 5))
    before = dst[0].weight.clone()
    with pytest.raises(GraftError, match=r"2 tensor\(s\) matched but not transferred:\n  1.weight <- 1.weight: shape"):
        graft(src, dst, strict=True)
    assert torch.equal(dst[0].weight, before)


def test_first_conv_to_one_channel_sums_the_rgb_kernels():
    rgb, gray = nn.Conv2d(3, 8, 3), nn.Conv2d(1, 8, 3)
    report = graft(rgb, gray)
    torch.testing.assert_close(gray.weight, rgb.weight.sum(1, keepdim=True))
    assert report.records[0].state == "adapted" and report.records[0].reason == "3 input channels summed into 1"
    five = nn.Conv2d(5, 8, 3)
    graft(rgb, five)
    expected = torch.cat([rgb.weight, rgb.weight[:, :2]], 1) * 3 / 5  # repeated, then scaled by 3/5
    torch.testing.assert_close(five.weight, expected)


def test_head_keeps_rows_of_matching_label_names():
    src, dst = nn.Linear(4, 3), nn.Linear(4, 4)
    before = dst.weight.detach().clone()
    src_head = nn.Module()
    src_head.head = nn.Module()
    src_head.head.out = src
    dst_head = nn.Module()
    dst_head.head = nn.Module()
    dst_head.head.out = dst
    report = graft(
        src_head, dst_head, source_classes=["cat", "dog", "owl"], target_classes=["dog", "emu", "cat", "fox"]
    )
    torch.testing.assert_close(dst.weight[0], src.weight[1])  # dog
    torch.testing.assert_close(dst.weight[2], src.weight[0])  # cat
    torch.testing.assert_close(dst.weight[[1, 3]], before[[1, 3]])  # emu, fox: as initialised
    torch.testing.assert_close(dst.bias[2], src.bias[0])
    assert report.records[0].reason == "rows of 2 classes kept by label name, 2 newly initialised"
    no_names = graft(src_head, dst_head)  # without class names the head is skipped, not guessed
    assert no_names.counts()["skipped"] == 2


def test_embedding_rows_of_shared_tokens():
    src, dst = nn.Embedding(4, 3), nn.Embedding(5, 3)
    before = dst.weight.detach().clone()
    graft(src, dst, source_vocab=["[PAD]", "a", "b", "c"], target_vocab=["[PAD]", "c", "x", "a", "y"])
    torch.testing.assert_close(dst.weight[[0, 1, 3]], src.weight[[0, 3, 1]])
    torch.testing.assert_close(dst.weight[[2, 4]], before[[2, 4]])


def test_position_table_is_interpolated():
    src, dst = nn.Module(), nn.Module()
    src.pos = nn.Embedding(3, 2)
    dst.pos = nn.Embedding(5, 2)
    with torch.no_grad():
        src.pos.weight.copy_(torch.tensor([[0.0, 10.0], [2.0, 20.0], [4.0, 30.0]]))
    report = graft(src, dst)
    torch.testing.assert_close(dst.pos.weight, torch.tensor([[0.0, 10], [1, 15], [2, 20], [3, 25], [4, 30]]))
    assert report.records[0].reason == "3 positions interpolated to 5"


def test_partial_copy_only_when_asked():
    src, dst = nn.Linear(4, 3), nn.Linear(6, 2)
    assert graft(src, dst).counts()["skipped"] == 2
    graft(src, dst, adapt_with=["partial"])
    torch.testing.assert_close(dst.weight[:, :4], src.weight[:2])


def tiny_bert(folder, seed):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    model = transformers.BertModel(cfg).eval()
    model.save_pretrained(str(folder))
    return model


def test_hugging_face_bert_grafted_into_our_wrapper_gives_the_same_outputs(tmp_path):
    original = tiny_bert(tmp_path / "a", seed=0)
    tiny_bert(tmp_path / "b", seed=1)  # our model starts from other weights
    spec = {"text": InputSpec("tokens", (8,), vocab_size=50, pad_id=0, tokenizer="tiny")}
    ours = build_model(ModelConfig(encoders={"text": HFConfig(path=str(tmp_path / "b"))}, embed_dim=16), spec, 3)
    ids = torch.tensor([[2, 7, 9, 4, 0, 0, 0, 0], [2, 5, 3, 8, 11, 12, 6, 4]])
    report = graft(str(tmp_path / "a"), ours, rules={"": "encoders.text.backbone."}, strict=True)
    assert report.counts()["new"] == 2  # the head: ours alone
    assert report.counts()["copied"] == len(original.state_dict())
    ours.eval()
    hidden = original(input_ids=ids, attention_mask=(ids != 0).long()).last_hidden_state
    mask = (ids != 0).unsqueeze(-1).float()
    torch.testing.assert_close(ours.encoders["text"](ids), (hidden * mask).sum(1) / mask.sum(1))


def test_hugging_face_vit_grafted_into_our_wrapper_gives_the_same_outputs(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.ViTConfig(
        image_size=16,
        patch_size=4,
        num_channels=3,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
    )
    for name, seed in (("a", 0), ("b", 1)):
        torch.manual_seed(seed)
        transformers.ViTModel(cfg).save_pretrained(str(tmp_path / name))
    original = transformers.ViTModel.from_pretrained(str(tmp_path / "a")).eval()
    spec = {"image": InputSpec("image", (3, 16, 16))}
    cfg_b = HFConfig(path=str(tmp_path / "b"), pooling="cls")
    ours = build_model(ModelConfig(encoders={"image": cfg_b}, embed_dim=16), spec, 3).eval()
    graft(f"hf:{tmp_path / 'a'}", ours, rules={"": "encoders.image.backbone."}, strict=True)
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(ours.encoders["image"](x), original(pixel_values=x).last_hidden_state[:, 0])

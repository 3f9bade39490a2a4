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


def with_embedding(rows: int, dtype=torch.float32) -> nn.Module:
    m = nn.Module()
    m.embedding = nn.Embedding(rows, 3).to(dtype)
    return m


def test_embedding_rows_of_shared_tokens():
    src, dst = with_embedding(4, torch.float16), with_embedding(5)  # another dtype too
    before = dst.embedding.weight.detach().clone()
    graft(src, dst, source_vocab=["[PAD]", "a", "b", "c"], target_vocab=["[PAD]", "c", "x", "a", "y"])
    torch.testing.assert_close(dst.embedding.weight[[0, 1, 3]], src.embedding.weight[[0, 3, 1]].float())
    torch.testing.assert_close(dst.embedding.weight[[2, 4]], before[[2, 4]])


def test_rows_follow_names_even_when_the_shapes_agree():
    src, dst = with_embedding(3), with_embedding(3)
    graft(src, dst, source_vocab=["[PAD]", "a", "b"], target_vocab=["[PAD]", "b", "a"])
    torch.testing.assert_close(dst.embedding.weight, src.embedding.weight[[0, 2, 1]])
    heads = [nn.Module(), nn.Module()]
    for h in heads:
        h.head = nn.Module()
        h.head.out = nn.Linear(4, 2)
    report = graft(heads[0], heads[1], source_classes=["cat", "dog"], target_classes=["dog", "cat"])
    torch.testing.assert_close(heads[1].head.out.weight, heads[0].head.out.weight[[1, 0]])
    assert report.counts()["adapted"] == 2
    linear = nn.Module()
    linear.proj = nn.Linear(3, 3)  # 3 rows like the vocabulary, but not an embedding table: copied as it is
    target = nn.Module()
    target.proj = nn.Linear(3, 3)
    assert graft(linear, target, source_vocab=["a", "b", "c"], target_vocab=["c", "b", "a"]).counts()["copied"] == 2


def test_only_first_convolutions_adapt_their_channels():
    from mmtransfer.config import CNNConfig

    shapes = {"image": (3, 8, 8)}
    src = build_model(ModelConfig(encoders={"image": CNNConfig(channels=[16, 32])}), shapes, 2)
    dst = build_model(ModelConfig(encoders={"image": CNNConfig(channels=[8, 32])}), {"image": (1, 8, 8)}, 2)
    states = {r.target: r for r in graft(src, dst).records}
    assert states["encoders.image.blocks.0.0.weight"].state == "skipped"  # 16 vs 8 output channels: no rule
    assert states["encoders.image.blocks.1.0.weight"].reason == "shape [32, 16, 3, 3] vs [32, 8, 3, 3]"
    src1 = build_model(ModelConfig(encoders={"image": CNNConfig(channels=[8, 32])}), shapes, 2)
    states = {r.target: r for r in graft(src1, dst).records}
    assert states["encoders.image.blocks.0.0.weight"].reason == "3 input channels summed into 1"


def test_position_table_is_interpolated():
    src, dst = nn.Module(), nn.Module()
    src.pos = nn.Embedding(3, 2)
    dst.pos = nn.Embedding(5, 2)
    with torch.no_grad():
        src.pos.weight.copy_(torch.tensor([[0.0, 10.0], [2.0, 20.0], [4.0, 30.0]]))
    report = graft(src, dst)
    torch.testing.assert_close(dst.pos.weight, torch.tensor([[0.0, 10], [1, 15], [2, 20], [3, 25], [4, 30]]))
    assert report.records[0].reason == "3 positions interpolated to 5"


def test_only_position_tables_are_interpolated():
    src, dst = nn.Module(), nn.Module()
    src.post = nn.Embedding(10, 2)  # a column called "post": not positions
    dst.post = nn.Embedding(12, 2)
    src.pos_embed = nn.Parameter(torch.zeros(1, 5, 4))  # ViT-style [1, 1 + 2x2, D] ...
    dst.pos_embed = nn.Parameter(torch.zeros(1, 8, 4))  # ... into 8 positions: no square grid
    report = graft(src, dst)
    assert {r.target: r.state for r in report.records} == {"post.weight": "skipped", "pos_embed": "skipped"}


def test_structure_pairs_whole_modules_in_order():
    src = nn.Module()
    src.a, src.b = nn.Linear(3, 3), nn.Linear(3, 4)
    dst = nn.Module()
    dst.extra = nn.Parameter(torch.zeros(3))  # same shape as a.bias, but a module of its own
    dst.x, dst.y = nn.Linear(3, 3), nn.Linear(3, 4)
    report = graft(src, dst, structure=True)
    states = {r.target: (r.state, r.source) for r in report.records}
    assert states["x.weight"] == ("copied", "a.weight") and states["y.bias"] == ("copied", "b.bias")
    assert states["extra"] == ("new", None)


def test_strict_refuses_a_graft_that_moves_nothing():
    src, dst = nn.Module(), nn.Module()
    src.enc, dst.encoder = nn.Linear(2, 2), nn.Linear(2, 2)
    with pytest.raises(GraftError, match="nothing transferred"):
        graft(src, dst, strict=True)
    assert graft(src, dst, rules={"enc": "encoder"}, strict=True).counts()["copied"] == 2


def test_bad_rules_are_named():
    with pytest.raises(ValueError, match=r"graft rule 'a' -> 'b.\{i\}'"):
        compile_rules({"a": "b.{i}"})
    with pytest.raises(ValueError, match="may appear once"):
        compile_rules({"x.{i}.y.{i}": "z.{i}"})
    assert rename("layers.3.w", compile_rules({"layers.{i}": "blocks.{i}"})) == (
        "blocks.3.w",
        "rule 'layers.{i} -> blocks.{i}'",
    )


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


def test_a_vit_position_grid_is_interpolated_in_2d_keeping_the_class_token():
    src, dst = nn.Module(), nn.Module()
    src.pos_embed = nn.Parameter(torch.zeros(1, 1 + 6 * 6, 2))  # a class token, then a 6x6 grid
    dst.pos_embed = nn.Parameter(torch.zeros(1, 1 + 3 * 3, 2))
    with torch.no_grad():
        src.pos_embed[0, 0] = torch.tensor([7.0, -7.0])  # the class token
        x = torch.arange(6.0).repeat(6)  # channel 0: the column (0..5), the same in every row
        y = torch.arange(6.0).repeat_interleave(6)  # channel 1: the row
        src.pos_embed[0, 1:] = torch.stack([x, y], dim=1)
    report = graft(src, dst)
    assert report.records[0].reason == "6x6 position grid interpolated to 3x3 (bicubic), class token kept"
    out = dst.pos_embed[0].detach()
    torch.testing.assert_close(out[0], torch.tensor([7.0, -7.0]))  # copied unchanged
    grid = out[1:].reshape(3, 3, 2)
    # cell (1, 1) samples the source at (2.5, 2.5), between 4 inner neighbours: a ramp is reproduced exactly
    torch.testing.assert_close(grid[1, 1], torch.tensor([2.5, 2.5]))
    torch.testing.assert_close(grid[:, :, 0], grid[:1, :, 0].expand(3, 3))  # columns stay columns
    torch.testing.assert_close(grid[:, :, 1], grid[:, :1, 1].expand(3, 3))  # rows stay rows
    assert bool((grid[0, :, 0].diff() > 0).all()) and bool((grid[:, 0, 1].diff() > 0).all())


def test_a_hugging_face_vit_grafts_into_another_image_size(tmp_path):
    transformers = pytest.importorskip("transformers")
    tiny = dict(num_channels=3, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    transformers.ViTModel(transformers.ViTConfig(image_size=16, patch_size=4, **tiny)).save_pretrained(
        str(tmp_path / "small")
    )  # 4x4 patches
    transformers.ViTModel(transformers.ViTConfig(image_size=32, patch_size=4, **tiny)).save_pretrained(
        str(tmp_path / "big")
    )  # 8x8 patches
    source = transformers.ViTModel.from_pretrained(str(tmp_path / "small"))
    cfg = ModelConfig(encoders={"image": HFConfig(path=str(tmp_path / "big"), pooling="cls")}, embed_dim=16)
    ours = build_model(cfg, {"image": InputSpec("image", (3, 32, 32))}, 3)
    report = graft(f"hf:{tmp_path / 'small'}", ours, rules={"": "encoders.image.backbone."})
    name = "encoders.image.backbone.embeddings.position_embeddings"
    record = {r.target: r for r in report.records}[name]
    assert record.state == "adapted"
    assert record.reason == "4x4 position grid interpolated to 8x8 (bicubic), class token kept"
    table = ours.state_dict()[name]
    assert table.shape == (1, 65, 16)
    torch.testing.assert_close(table[0, 0], source.embeddings.position_embeddings[0, 0].detach())
    assert ours.encoders["image"](torch.randn(2, 3, 32, 32)).shape == (2, 16)

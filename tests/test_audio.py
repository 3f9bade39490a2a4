import numpy as np
import pytest
import soundfile as sf
import torch
from torch.testing import assert_close

from mmtransfer.config import AudioColumn
from mmtransfer.modalities.audio import AudioModality, mel_filter_bank
from mmtransfer.modalities.base import BadValue

SMALL = dict(sample_rate=8000, seconds=1.0, n_mels=40, n_fft=256, hop_length=80)


def tone(freq: float, rate: int, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write(path, data, rate, subtype="FLOAT"):
    sf.write(path, data, rate, subtype=subtype)
    return path


# --- load: resample, down-mix, pad, crop --------------------------------------------------------------------------


def test_resample_keeps_frequency_and_gives_exact_length(tmp_path):
    write(tmp_path / "a.wav", tone(440, 8000, 1.0), 8000)
    modality = AudioModality("a", AudioColumn(sample_rate=16000, seconds=1.0))
    wave = modality.load("a.wav", tmp_path)
    assert wave.dtype == torch.float32 and wave.shape == (16000,)
    spectrum = np.abs(np.fft.rfft(wave.numpy()))  # 1 s of signal: bin k is k Hz
    assert abs(int(spectrum.argmax()) - 440) <= 1
    assert np.sqrt(np.mean(wave.numpy()[100:-100] ** 2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.01)


def test_resample_from_44100_to_16000_gives_exact_length(tmp_path):
    # 44100 / 16000 reduce to 441 / 160; a 0.7 s clip resamples to 11200 samples, padded to 16000
    write(tmp_path / "a.flac", tone(1000, 44100, 0.7), 44100, subtype="PCM_16")
    wave = AudioModality("a", AudioColumn(sample_rate=16000, seconds=1.0)).load(tmp_path / "a.flac", tmp_path)
    assert wave.shape == (16000,)
    assert abs(int(np.abs(np.fft.rfft(wave.numpy()[:11200])).argmax()) * 16000 / 11200 - 1000) <= 16000 / 11200
    assert torch.all(wave[11200:] == 0)


def test_stereo_down_mixes_to_channel_mean(tmp_path):
    stereo = np.array([[0.5, -0.25], [0.25, 0.25], [-1.0, 0.5]], dtype=np.float32)
    write(tmp_path / "s.wav", stereo, 8000)
    modality = AudioModality("s", AudioColumn(sample_rate=8000, seconds=4 / 8000, features="waveform"))
    assert modality.load("s.wav", tmp_path).tolist() == [0.125, 0.25, -0.25, 0.0]


def test_pad_and_crop_to_exact_length(tmp_path):
    rng = np.random.default_rng(0)
    short, long = rng.uniform(-1, 1, 2000).astype(np.float32), rng.uniform(-1, 1, 12000).astype(np.float32)
    write(tmp_path / "short.wav", short, 8000)
    write(tmp_path / "long.wav", long, 8000)
    modality = AudioModality("a", AudioColumn(sample_rate=8000, seconds=0.5))

    padded = modality.load("short.wav", tmp_path)
    assert padded.shape == (4000,)
    assert torch.equal(padded[:2000], torch.from_numpy(short))
    assert torch.all(padded[2000:] == 0)

    cropped = modality.load("long.wav", tmp_path)
    assert torch.equal(cropped, torch.from_numpy(long[:4000]))  # keeps the start
    assert torch.equal(modality.placeholder(), torch.zeros(4000))


def test_relative_path_resolves_against_base(tmp_path):
    (tmp_path / "clips").mkdir()
    write(tmp_path / "clips" / "a.wav", tone(440, 8000, 0.1), 8000)
    modality = AudioModality("a", AudioColumn(**SMALL))
    assert torch.equal(modality.load("clips/a.wav", tmp_path), modality.load(tmp_path / "clips" / "a.wav", tmp_path))


# --- bad files ----------------------------------------------------------------------------------------------------


def test_missing_file_names_resolved_path(tmp_path):
    with pytest.raises(BadValue) as err:
        AudioModality("a").load("clips/nope.wav", tmp_path)
    assert err.value.reason == "file not found"
    assert err.value.file == str(tmp_path / "clips" / "nope.wav")


@pytest.mark.parametrize("content", ["hello, this is not audio\n", ""])
def test_not_audio_is_unreadable(tmp_path, content):
    (tmp_path / "fake.wav").write_text(content)
    with pytest.raises(BadValue) as err:
        AudioModality("a").load("fake.wav", tmp_path)
    assert err.value.reason.startswith("unreadable or corrupt audio")
    assert err.value.file == str(tmp_path / "fake.wav")


def test_zero_sample_wav_is_empty_audio(tmp_path):
    write(tmp_path / "empty.wav", np.zeros((0, 1), dtype=np.float32), 8000)
    with pytest.raises(BadValue) as err:
        AudioModality("a").load("empty.wav", tmp_path)
    assert err.value.reason == "empty audio"
    assert err.value.file == str(tmp_path / "empty.wav")


# --- features -----------------------------------------------------------------------------------------------------


def test_waveform_collate_and_spec():
    modality = AudioModality("a", AudioColumn(**{**SMALL, "features": "waveform"}))
    waves = [torch.randn(8000), torch.randn(8000)]
    modality.fit(waves)
    assert modality.state() == {"mean": 0.0, "std": 1.0}
    batch = modality.collate(waves)
    spec = modality.spec()
    assert (spec.kind, spec.shape, spec.sample_rate) == ("waveform", (1, 8000), 8000)
    assert batch.shape == (2, *spec.shape)
    assert torch.equal(batch[1, 0], waves[1])


def test_filter_bank_matches_transformers_htk():
    audio_utils = pytest.importorskip("transformers.audio_utils")
    expected = audio_utils.mel_filter_bank(129, 40, 0.0, 4000.0, 8000, norm=None, mel_scale="htk")
    assert_close(mel_filter_bank(256, 40, 8000), torch.from_numpy(expected).float())


def test_log_mel_of_tone_peaks_in_its_band():
    modality = AudioModality("a", AudioColumn(**SMALL))
    # the tone sits at the centre of band 15: HTK centres are evenly spaced in mel between 0 and Nyquist
    top = 2595 * np.log10(1 + 4000 / 700)
    freq = 700 * (10 ** (top * 16 / 41 / 2595) - 1)
    batch = modality.collate([torch.from_numpy(tone(freq, 8000, 1.0))])
    assert batch.shape == (1, *modality.spec().shape) == (1, 1, 40, 101)
    assert modality.spec().kind == "spectrogram" and modality.spec().sample_rate == 8000
    assert torch.all(batch[0, 0, :, 2:-2].argmax(dim=0) == 15)  # every frame away from the reflect-padded edges


def test_log_mel_matches_numpy_reference():
    cfg = AudioColumn(**SMALL)
    rng = np.random.default_rng(0)
    wave = rng.standard_normal(8000).astype(np.float32) * 0.1
    got = AudioModality("a", cfg).collate([torch.from_numpy(wave)])[0, 0]  # unfitted: mean 0, std 1

    # center=True: reflect-pad by n_fft/2, frame t starts at t * hop; periodic Hann as torch.hann_window
    padded = np.pad(wave.astype(np.float64), cfg.n_fft // 2, mode="reflect")
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(cfg.n_fft) / cfg.n_fft)
    fb = mel_filter_bank(cfg.n_fft, cfg.n_mels, cfg.sample_rate).double().numpy()
    for t in (0, 50, 100):
        frame = padded[t * cfg.hop_length : t * cfg.hop_length + cfg.n_fft] * window
        expected = np.log(np.abs(np.fft.rfft(frame)) ** 2 @ fb + 1e-6)
        assert_close(got[:, t], torch.from_numpy(expected).float(), rtol=1e-4, atol=1e-4)


def test_fit_standardises_train_batch_and_state_round_trips():
    cfg = AudioColumn(**SMALL)
    rng = np.random.default_rng(0)
    noise = 0.01 * rng.standard_normal(6400).astype(np.float32)
    # tones with trailing silence, as padding gives: log-mel values far from standard before fit
    train = [torch.nn.functional.pad(torch.from_numpy(tone(f, 8000, 0.8) + noise), (0, 1600)) for f in (300, 700, 1500)]
    modality = AudioModality("a", cfg)
    modality.fit(train)
    batch = modality.collate(train)
    assert float(batch.mean()) == pytest.approx(0.0, abs=1e-4)
    assert float(batch.std(unbiased=False)) == pytest.approx(1.0, abs=1e-4)

    assert_close(modality.log_mels(train, chunk=1), modality.log_mels(train))  # chunking changes nothing

    restored = AudioModality.from_state("a", cfg, modality.state())
    assert torch.equal(restored.collate(train), batch)
    assert torch.isfinite(modality.collate([modality.placeholder()])).all()


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(seconds=1e-5), "expected at least 1"),
        (dict(seconds=0.01), "too short for n_fft=256"),
        (dict(n_mels=128), "6 mel bands get no FFT bin"),
    ],
)
def test_bad_field_combinations_fail_at_construction(fields, message):
    with pytest.raises(ValueError, match=message):
        AudioModality("a", AudioColumn(**{**SMALL, **fields}))


def test_waveform_features_skip_spectrogram_checks():
    modality = AudioModality("a", AudioColumn(**{**SMALL, "seconds": 0.01, "n_mels": 128, "features": "waveform"}))
    assert modality.spec().shape == (1, 80)


def test_a_cached_column_decodes_each_file_once_and_again_when_it_changes(tmp_path, monkeypatch):
    import os

    from mmtransfer import store
    from mmtransfer.modalities import audio as audio_module

    monkeypatch.setenv("MMTRANSFER_CACHE", str(tmp_path / "cache"))
    path = write(tmp_path / "a.wav", tone(440, 22050, 0.5), 22050)
    column = AudioModality("clip", AudioColumn(sample_rate=16000, seconds=1.0, features="waveform", cache=True))
    plain = AudioModality("clip", AudioColumn(sample_rate=16000, seconds=1.0, features="waveform"))
    decoded = []
    real = AudioModality._decode
    monkeypatch.setattr(AudioModality, "_decode", lambda self, *a: decoded.append(1) or real(self, *a))
    first = column.load(path.name, tmp_path)
    again = column.load(path.name, tmp_path)
    assert len(decoded) == 1 and torch.equal(first, again)  # the second epoch reads the kept clip
    assert torch.equal(first, plain.load(path.name, tmp_path))  # the same samples as decoding
    kept = [p for p in store.entries() if p.name.startswith("audio-")]
    assert len(kept) == 1
    write(path, tone(880, 22050, 0.5), 22050)  # the file changes in place: a new key
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    changed = column.load(path.name, tmp_path)
    assert len(decoded) == 3 and not torch.equal(changed, first)
    kept[0].write_bytes(b"not safetensors")  # a damaged entry is never used: removed, decoded again
    assert audio_module._read_stored(kept[0]) is None and not kept[0].exists()


def test_the_decoded_clips_stay_within_the_cache_bound(tmp_path, monkeypatch):
    from mmtransfer import store
    from mmtransfer.modalities import audio as audio_module

    monkeypatch.setenv("MMTRANSFER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MMTRANSFER_CACHE_MAX_GB", str(3 * 16000 * 4 / 1e9))  # room for about three clips
    monkeypatch.setattr(audio_module, "_writes", iter(range(0, 10**6, 64)))  # bring it within bound every write
    column = AudioModality("clip", AudioColumn(sample_rate=16000, seconds=1.0, features="waveform", cache=True))
    for i in range(6):
        write(tmp_path / f"{i}.wav", tone(200 + 50 * i, 16000, 1.0), 16000)
        column.load(f"{i}.wav", tmp_path)
    assert 1 <= len(store.entries()) <= 3
    assert sum(p.stat().st_size for p in store.entries()) <= store.max_bytes()

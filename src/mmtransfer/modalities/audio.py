"""Audio cells: a path to a WAV/FLAC/OGG file, read with soundfile, as mono float32 at a fixed rate and length.

``collate`` gives the waveform [N, 1, samples] or a standardised log-mel spectrogram [N, 1, n_mels, frames].
The mel filter bank is HTK-scale triangles without area normalisation (torchaudio's ``melscale_fbanks`` default).
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmtransfer import store
from mmtransfer.config import AudioColumn
from mmtransfer.errors import MissingFile, MissingPackage, UserError
from mmtransfer.hub import from_pretrained, offline, resolve_model_path
from mmtransfer.modalities.base import BadValue, InputSpec, resolve_path
from mmtransfer.outputs import atomic_path

LOG_FLOOR = 1e-6  # keeps log() finite on digital silence (padding, placeholders)
# Float audio lies within ±1 (a mix clipping a little past it is fine); 1e6 squared and summed over a frame stays
# far below float32's 3.4e38, while a sample of 1e20 makes the power spectrum inf.
MAX_SAMPLE = 1e6
# How a file's first bytes say what it holds, for a message when libsndfile cannot read it.
MAGIC = (
    (b"RIFF", "WAV"), (b"RIFX", "WAV"), (b"RF64", "WAV"), (b"fLaC", "FLAC"), (b"OggS", "Ogg"),
    (b"ID3", "MP3 (an ID3 tag)"),
    (b"FORM", "AIFF"), (b"\x89PNG", "PNG image"), (b"\xff\xd8\xff", "JPEG image"), (b"PK\x03\x04", "zip archive"),
)  # fmt: skip
SUFFIX_FORMATS = {".wav": "WAV", ".flac": "FLAC", ".ogg": "Ogg"}


def hz_to_mel(hz: np.ndarray) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def mel_filter_bank(n_fft: int, n_mels: int, sample_rate: int) -> torch.Tensor:
    """HTK mel filters from 0 Hz to Nyquist, [n_fft // 2 + 1, n_mels]; ``power_spectrum @ fb`` gives mel energies."""
    freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(0.0, hz_to_mel(sample_rate / 2), n_mels + 2))
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (freqs[:, None] - lower) / (centre - lower)
    falling = (upper - freqs[:, None]) / (upper - centre)
    return torch.from_numpy(np.maximum(0.0, np.minimum(rising, falling))).float()


def _mpeg(head: bytes) -> bool:
    """An MPEG audio frame's sync word: eleven bits set."""
    return len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0


@contextmanager
def _quiet_stderr(path: Path) -> Iterator[None]:
    """libsndfile's MPEG decoder (mpg123) prints its notes on a broken stream straight to file descriptor 2; a
    file that starts like MPEG is read with that descriptor pointed at /dev/null, so they cannot break the one
    line an error is."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        head = b""
    if not (head.startswith(b"ID3") or _mpeg(head)):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def unreadable(path: Path, err: Exception) -> str:
    """Why libsndfile could not read ``path``, in our words: libsndfile's reason, and what the file's first bytes
    hold where they are not what its suffix says (an MP3 renamed ``.wav``). libsndfile's reason for a stream it
    takes for MPEG and cannot decode, "File does not exist or is not a regular file", is misleading: not repeated."""
    reason = str(getattr(err, "error_string", err)).rstrip(".")  # libsndfile's reason without the path
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError as os_err:
        return f"unreadable or corrupt audio: cannot open it ({os_err.strerror or os_err})"
    if not head:
        return "unreadable or corrupt audio: an empty file (0 bytes)"
    found = next((kind for magic, kind in MAGIC if head.startswith(magic)), None)
    if found is None and _mpeg(head):
        found = "MP3"
    expected = SUFFIX_FORMATS.get(path.suffix.lower())
    if "does not exist or is not a regular file" in reason:
        reason = "it does not decode"
    if found is None:
        return f"unreadable or corrupt audio: {reason}" + (
            f" (its first bytes are not {expected}'s)" if expected else ""
        )
    if expected and not found.startswith(expected):
        return f"unreadable or corrupt audio: a {path.suffix} file whose bytes begin like {found}; {reason}"
    return f"unreadable or corrupt audio: {reason}"


class AudioModality:
    """Loads, down-mixes, resamples and pads/crops once; ``collate`` computes features for the whole batch.

    >>> cfg = AudioColumn(sample_rate=8000, seconds=1.0, n_mels=40, n_fft=256, hop_length=80)
    >>> AudioModality("clip", cfg).spec().shape
    (1, 40, 101)
    """

    def __init__(self, name: str, cfg: AudioColumn | None = None):
        self.name = name
        self.cfg = cfg or AudioColumn()
        self.samples = round(self.cfg.seconds * self.cfg.sample_rate)
        self.frames = 1 + self.samples // self.cfg.hop_length  # torch.stft with center=True
        self.mean, self.std = 0.0, 1.0
        self._extractor = None
        self._fb = mel_filter_bank(self.cfg.n_fft, self.cfg.n_mels, self.cfg.sample_rate)
        self._window = torch.hann_window(self.cfg.n_fft)
        # AudioColumn checks each field alone; these combinations would fail (or go silently flat) only at collate
        if self.samples < 1:
            raise UserError(f"column {name!r}: seconds * sample_rate = {self.samples} samples; expected at least 1")
        if self.cfg.features == "logmel" and not self.cfg.extractor:
            if self.samples <= self.cfg.n_fft // 2:  # torch.stft's reflect padding needs this
                raise UserError(
                    f"column {name!r}: {self.samples} samples is too short for n_fft={self.cfg.n_fft}; "
                    f"expected more than n_fft / 2 samples"
                )
            empty = int((self._fb.sum(0) == 0).sum())
            if empty:
                raise UserError(
                    f"column {name!r}: n_mels={self.cfg.n_mels} is too many for n_fft={self.cfg.n_fft} at "
                    f"{self.cfg.sample_rate} Hz ({empty} mel bands get no FFT bin); lower n_mels or raise n_fft"
                )

    @classmethod
    def from_state(cls, name: str, cfg: AudioColumn | None, state: dict) -> AudioModality:
        if state.get("files"):  # a run folder's own copy of the feature extractor's settings
            cfg = (cfg or AudioColumn()).model_copy(update={"extractor": state["files"]})
        modality = cls(name, cfg)
        modality.mean, modality.std = float(state["mean"]), float(state["std"])
        return modality

    def load(self, value: Any, base: Path) -> torch.Tensor:
        # Imported here, on purpose: soundfile and scipy.signal are slow to import and only audio columns need them.
        import soundfile as sf
        from scipy.signal import resample_poly

        path = resolve_path(value, base)
        stored = _stored_path(path, self.cfg.sample_rate) if self.cfg.cache else None
        wave = _read_stored(stored) if stored is not None else None
        if wave is None:
            wave = self._decode(path, sf, resample_poly)
            if stored is not None:
                _store(stored, wave)
        out = np.zeros(self.samples, dtype=np.float32)
        n = min(len(wave), self.samples)
        out[:n] = wave[:n]  # crop keeps the start: spoken words and events usually begin near it
        return torch.from_numpy(out)

    def _decode(self, path: Path, sf, resample_poly) -> np.ndarray:
        """The whole clip, mono, at the column's sample rate (its file checked: readable, finite, not too loud)."""
        try:
            with _quiet_stderr(path):
                data, rate = sf.read(path, dtype="float32", always_2d=True)
        except (sf.SoundFileError, OSError) as err:  # LibsndfileError for bad headers and 0-byte files
            raise BadValue(unreadable(path, err), file=str(path)) from None
        if data.shape[0] == 0:
            raise BadValue("empty audio", file=str(path))
        if not np.isfinite(data).all():  # a float WAV can hold them; every feature of the clip would be NaN
            bad = np.flatnonzero(~np.isfinite(data).all(axis=1))
            raise BadValue(
                f"{len(bad)} of {len(data)} samples are NaN or infinite (the first at sample {bad[0]}, "
                f"{bad[0] / rate:.3f} s)",
                file=str(path),
            )
        loudest = float(np.abs(data).max())
        if loudest > MAX_SAMPLE:
            raise BadValue(
                f"a sample of {loudest:.3g}: float audio lies within ±1, and a level beyond ±{MAX_SAMPLE:g} "
                "overflows the spectrogram",
                file=str(path),
            )
        wave = data.mean(axis=1)  # down-mix before resampling: one channel to resample instead of several
        if rate != self.cfg.sample_rate:
            g = math.gcd(rate, self.cfg.sample_rate)
            wave = resample_poly(wave, self.cfg.sample_rate // g, rate // g).astype(np.float32)
        return np.ascontiguousarray(wave, dtype=np.float32)

    def log_mel(self, waves: torch.Tensor) -> torch.Tensor:
        """[N, samples] -> unstandardised log-mel [N, n_mels, frames]."""
        spec = torch.stft(
            waves, self.cfg.n_fft, self.cfg.hop_length, window=self._window, center=True, return_complex=True
        )
        power = spec.real.square() + spec.imag.square()  # [N, freqs, frames]
        mel = torch.einsum("nft,fm->nmt", power, self._fb)
        return torch.log(mel + LOG_FLOOR)

    def log_mels(self, examples: list[torch.Tensor], chunk: int = 256) -> torch.Tensor:
        """Examples -> [N, n_mels, frames], in chunks: the loader collates whole splits, and the complex STFT of
        all of them at once would need ~(n_fft / n_mels) times the memory of the result (and runs slower)."""
        out = torch.empty(len(examples), self.cfg.n_mels, self.frames)
        for i in range(0, len(examples), chunk):
            out[i : i + chunk] = self.log_mel(torch.stack(examples[i : i + chunk]).float())
        return out

    def fit(self, examples, chunk: int = 256) -> None:
        """The log-mel mean and standard deviation over every train clip, read ``chunk`` clips at a time."""
        if self.cfg.extractor:
            self.extract([self.placeholder()])  # load it now: a missing extractor fails before training
            return
        if self.cfg.features != "logmel":
            return
        total, square, count = 0.0, 0.0, 0
        pending: list[torch.Tensor] = []
        for example in itertools.chain(examples, [None]):  # None: flush the last chunk
            if example is not None:
                pending.append(example)
            if pending and (example is None or len(pending) == chunk):
                x = self.log_mels(pending).double()
                total, square, count = total + float(x.sum()), square + float(x.square().sum()), count + x.numel()
                pending = []
        if count:
            self.mean = total / count
            self.std = max(square / count - self.mean**2, 0.0) ** 0.5 or 1.0

    def placeholder(self) -> torch.Tensor:
        return torch.zeros(self.samples)

    def extract(self, examples: list[torch.Tensor]) -> torch.Tensor:
        """The pretrained model's own feature extractor, loaded offline once, on a list of clips."""
        if self._extractor is None:
            try:
                from transformers import AutoFeatureExtractor  # imported here: transformers takes seconds to import
            except ImportError:  # the hf extra is not installed
                raise MissingPackage(
                    f"audio column {self.name}: the extractor needs transformers, which is not installed: "
                    "pip install 'mmtransfer[hf]'"
                ) from None

            folder = resolve_model_path(self.cfg.extractor)
            try:
                with offline():
                    self._extractor = from_pretrained(AutoFeatureExtractor, folder, what="audio extractor")
            except (OSError, ValueError) as err:
                raise MissingFile(f"audio column {self.name}: no feature extractor at {folder!r}: {err}") from None
            rate = getattr(self._extractor, "sampling_rate", self.cfg.sample_rate)
            if rate != self.cfg.sample_rate:
                raise UserError(
                    f"audio column {self.name}: the extractor of {folder} expects {rate} Hz, set sample_rate: {rate}"
                )
        waves = [e.numpy() for e in examples]
        out = self._extractor(waves, sampling_rate=self.cfg.sample_rate, return_tensors="pt")
        return out["input_values"].float()

    def collate(self, examples: list[torch.Tensor]) -> torch.Tensor:
        if self.cfg.extractor:
            return self.extract(examples)
        if self.cfg.features == "waveform":
            return torch.stack(examples).float()[:, None]
        return ((self.log_mels(examples) - self.mean) / self.std)[:, None]

    def spec(self) -> InputSpec:
        if self.cfg.extractor:  # the extractor decides the shape: wav2vec2 [samples], AST [frames, mel bins]
            shape = tuple(self.extract([self.placeholder()]).shape[1:])
            return InputSpec("audio_features", shape, sample_rate=self.cfg.sample_rate)
        if self.cfg.features == "waveform":
            return InputSpec("waveform", (1, self.samples), sample_rate=self.cfg.sample_rate)
        return InputSpec("spectrogram", (1, self.cfg.n_mels, self.frames), sample_rate=self.cfg.sample_rate)

    def state(self) -> dict:
        return {"mean": self.mean, "std": self.std}


# ---------------------------------------------------------------- decoded clips on disk (a column's ``cache``)

STORE_VERSION = "audio-v1"  # part of every key: a change to decoding or resampling makes new entries
_writes = itertools.count()


def _stored_path(path: Path, rate: int) -> Path | None:
    """Where ``path`` decoded at ``rate`` is kept: a key of its resolved path, size, modification time and the
    rate (a file changed in place gets a new key). None where the file cannot be stat'ed (decoding reports it)."""
    try:
        st = path.resolve().stat()
    except OSError:
        return None
    key = f"{STORE_VERSION}|{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{rate}"
    return store.cache_dir() / f"audio-{hashlib.sha256(key.encode()).hexdigest()[:32]}.safetensors"


def _read_stored(stored: Path) -> np.ndarray | None:
    """The kept clip, or None (not there yet; or damaged, then removed and decoded again)."""
    if not stored.is_file():
        return None
    from safetensors.numpy import load_file  # the cache is opt-in: its reader loads only where it is used

    try:
        wave = load_file(str(stored))["wave"]
        os.utime(stored)  # recently used: evicted last
    except Exception:  # truncated or not safetensors: never used, decoded again
        stored.unlink(missing_ok=True)
        return None
    return wave if wave.dtype == np.float32 and wave.ndim == 1 else None


def _store(stored: Path, wave: np.ndarray) -> None:
    """Keep a decoded clip (whole or not at all); every 64 writes, the cache is brought within its bound. A full
    disk or a read-only cache folder only means the clip is decoded again next time."""
    from safetensors.numpy import save_file

    try:
        with atomic_path(stored) as tmp:
            save_file({"wave": wave}, str(tmp))
    except Exception:  # noqa: BLE001 (a cache that cannot be written is no error of the run)
        return
    if next(_writes) % 64 == 0:
        store.evict(stored.parent, keep=stored)

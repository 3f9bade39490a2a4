"""The aisfx sound-effects encoder and its pretrained weights, read offline from the ``aisfx`` package.

aisfx 0.1.2 (Ma & Lerch, ISMIR 2022, arXiv 2208.09096; model CC BY 4.0) is a 9-layer CNN trained on nine sound-effects
libraries by cross-dataset metric learning. Its input is a 44.1 kHz log-mel spectrogram in blocks of 100 frames (about
2.3 s, one block every 50 frames), its output a 512-d embedding per block. The architecture is written here with the
package's module names, so its ``checkpoint.pth`` loads with ``strict=True``; only that file is read from the package
(no code of it runs), with exactly the NumPy types its pickle holds allow-listed. The nine dataset heads of the
checkpoint are not part of the encoder.

The features follow the package's default path (the Essentia one the paper used), computed with torch: frames of
2048 samples every 1024, the first centred on sample 0; a symmetric Hann window; the power spectrum through 96
HTK-mel triangles of unit sum from 0 Hz to 22.05 kHz; ``log10(1e4 * x + 1)``; divided by the paper's cross-dataset
maximum 9.4578. The column gives waveforms at 44.1 kHz (``preprocessing()``); the encoder computes the features.
"""

from __future__ import annotations

import importlib.util
import math
import pickle
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmtransfer.config import AisfxConfig
from mmtransfer.encoders.info import NO_WEIGHTS, EncoderInfo, Preset, pretrained_or_file
from mmtransfer.errors import MissingFile, UserError
from mmtransfer.modalities.base import InputSpec

SAMPLE_RATE = 44100
N_FFT = 2048  # the package's SPEC_BLOCK_LENGTH
HOP = 1024  # SPEC_HOP_LENGTH
N_MELS = 96
BLOCK = 100  # frames per block (EMB_BLOCK_LENGTH)
BLOCK_HOP = 50  # frames between blocks: the package's default emb_hop_size 0.5
SPEC_MAX = 9.457798957824707  # spec_norm "original": the maximum over every Essentia spectrogram of the paper
EMBED_DIM = 512
BLOCK_SECONDS = (BLOCK - 1) * HOP / SAMPLE_RATE  # 2.30 s: the centres of one block's first and last frames
# Only the checkpoint is read: the package's pins (numpy==1.23.0, librosa==0.9.2, tqdm) are not needed, nor installed.
INSTALL = "pip install --no-deps aisfx==0.1.2"


def numpy_globals() -> list:
    """What the checkpoint's pickle holds besides tensors, and nothing more: ds_dict's dataset indices are NumPy
    int64 scalars, which name the scalar constructor, ``numpy.dtype`` and (NumPy >= 1.25) its int64 class."""
    core = getattr(np, "_core", None) or np.core  # NumPy 2 moved numpy.core; the pickle says numpy.core
    allowed = [(core.multiarray.scalar, "numpy.core.multiarray.scalar"), np.dtype]
    dtypes = getattr(np, "dtypes", None)
    return allowed + ([dtypes.Int64DType] if dtypes is not None else [])


class AisfxError(UserError):
    """The aisfx package is missing, or its checkpoint is not what it should be."""


def preprocessing() -> dict:
    """The audio-column settings the pretrained weights expect (a column's own settings win): waveforms at 44.1 kHz,
    5 s (an ESC-50 clip: three blocks, starting at frames 0, 50 and 100 of its 217)."""
    return {"sample_rate": SAMPLE_RATE, "features": "waveform", "seconds": 5.0}


# ---------------------------------------------------------------- features


def hz_to_mel(hz: np.ndarray) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def mel_filter_bank(n_fft: int = N_FFT, n_mels: int = N_MELS, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Essentia's MelBands (htkMel, weighting "warping", normalize "unit_sum"), [n_fft // 2 + 1, n_mels].

    The triangles are linear in mel between edges spaced evenly in mel from 0 Hz to Nyquist; a band covers the
    bins from its lower edge to its upper edge, each rounded to the nearest bin; each band's
    weights sum to 1. Built in float32 as Essentia does, so a bin on an edge falls on the same side."""
    bins = n_fft // 2 + 1
    scale = np.float32(sample_rate / 2 / (bins - 1))
    edges = mel_to_hz(np.linspace(0.0, hz_to_mel(sample_rate / 2), n_mels + 2)).astype(np.float32)
    fb = np.zeros((bins, n_mels), dtype=np.float64)
    for i in range(n_mels):
        lo, mid, hi = edges[i], edges[i + 1], edges[i + 2]
        mlo, mmid, mhi = hz_to_mel([lo, mid, hi])
        for j in range(int(lo / scale + 0.5), int(hi / scale + 0.5) + 1):
            freq = np.float32(j * scale)
            if lo <= freq < mid:
                fb[j, i] = (hz_to_mel(freq) - mlo) / (mmid - mlo)
            elif mid <= freq < hi:
                fb[j, i] = (mhi - hz_to_mel(freq)) / (mhi - mmid)
        total = fb[:, i].sum()
        if total > 0:
            fb[:, i] /= total
    return torch.from_numpy(fb).float()


def frame_count(samples: int) -> int:
    """Essentia's FrameCutter (startFromZero false): frames centred on 0, HOP, 2 HOP, ... up to the first centre at
    or past the last sample."""
    return math.ceil(samples / HOP) + 1


def block_starts(frames: int, hop: int = BLOCK_HOP) -> list[int]:
    """The first frame of each block, as the package's ``blocking`` with ``drop_partial_block`` (its default): blocks
    that fit, every ``hop`` frames, one padded block when the clip is shorter than a block."""
    count = math.ceil((frames - BLOCK) / hop + 1)
    if (frames - BLOCK) % hop != 0:
        count -= 1
    return [i * hop for i in range(max(count, 1))]


def short_clip_note(samples: int) -> str | None:
    """What to tell a user once when clips of ``samples`` samples are shorter than one block, else None."""
    if frame_count(samples) >= BLOCK:
        return None
    return (
        f"aisfx: clips of {samples / SAMPLE_RATE:.2f} s are shorter than one block ({BLOCK_SECONDS:.2f} s at "
        f"{SAMPLE_RATE} Hz); they are padded with silence"
    )


class AisfxFeatures(nn.Module):
    """Waveforms at 44.1 kHz [B, samples] -> normalised log-mel [B, frames, 96]; no parameters (the window and the
    filter bank are buffers left out of the state dict)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("window", torch.hann_window(N_FFT, periodic=False), persistent=False)
        self.register_buffer("fb", mel_filter_bank(), persistent=False)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        samples = wave.shape[-1]
        frames = frame_count(samples)
        # frame i covers samples [i HOP - N_FFT/2, i HOP + N_FFT/2), zeros outside the clip
        padded = F.pad(wave, (N_FFT // 2, (frames - 1) * HOP + N_FFT // 2 - samples))
        spec = torch.stft(padded, N_FFT, HOP, window=self.window, center=False, return_complex=True)
        power = spec.real.square() + spec.imag.square()  # [B, bins, frames]
        mel = torch.einsum("bft,fm->btm", power, self.fb)
        return torch.log10(mel * 1e4 + 1.0) / SPEC_MAX


def to_blocks(features: torch.Tensor, hop: int = BLOCK_HOP) -> torch.Tensor:
    """[B, frames, 96] -> [B, blocks, 100, 96]; a clip shorter than a block is padded with zeros (silence)."""
    frames = features.shape[1]
    if frames < BLOCK:
        features = F.pad(features, (0, 0, 0, BLOCK - frames))
    return torch.stack([features[:, s : s + BLOCK] for s in block_starts(frames, hop)], dim=1)


# ---------------------------------------------------------------- the network (the package's names and shapes)


class ConvBlock(nn.Module):
    """Two 3x3 convolutions without bias, each with BatchNorm and ReLU, then max pooling."""

    def __init__(self, in_channels: int, out_channels: int, pool: tuple[int, int]):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return F.max_pool2d(x, self.pool) if self.pool != (1, 1) else x


class EmbeddingNet(nn.Module):
    """aisfx's ``EmbeddingNet('max', 3, 1, 64)`` (the DCASE cross-task 9-layer CNN): blocks [N, 100, 96] -> [N, 512],
    the last feature map averaged over frequency and its maximum taken over time."""

    def __init__(self, width: int = 64):
        super().__init__()
        self.conv_block1 = ConvBlock(1, width, (2, 2))
        self.conv_block2 = ConvBlock(width, width * 2, (2, 2))
        self.conv_block3 = ConvBlock(width * 2, width * 4, (2, 2))
        self.conv_block4 = ConvBlock(width * 4, width * 8, (1, 1))

    def forward(self, blocks: torch.Tensor) -> torch.Tensor:
        x = blocks[:, None]  # [N, 1, time, mel]
        for block in (self.conv_block1, self.conv_block2, self.conv_block3, self.conv_block4):
            x = block(x)
        return x.mean(dim=3).amax(dim=2)


# ---------------------------------------------------------------- the weights


def checkpoint_path() -> Path:
    """The installed package's ``models/checkpoint.pth``, found without importing the package (its ``__init__``
    imports librosa and tqdm, which it pins to old versions)."""
    spec = importlib.util.find_spec("aisfx")
    if spec is None or not spec.submodule_search_locations:
        raise AisfxError(f"aisfx: the pretrained sound encoder is not installed; {INSTALL}")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "models" / "checkpoint.pth"
        if path.is_file():
            return path
    raise AisfxError(f"aisfx: the package is installed but has no models/checkpoint.pth; reinstall it: {INSTALL}")


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """``(state_dict, ds_dict)`` of an aisfx checkpoint, read with ``weights_only=True`` and exactly the NumPy types
    it holds allowed; a pickle naming anything else is refused, naming it, and nothing in it runs."""
    path = Path(path)
    if not hasattr(torch.serialization, "safe_globals"):
        raise AisfxError(f"aisfx: reading {path} safely needs torch >= 2.5 (torch.serialization.safe_globals)")
    try:
        with torch.serialization.safe_globals(numpy_globals()):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        what = f"it names {found.group(1)}, which an aisfx checkpoint does not hold" if found else "it is damaged"
        raise AisfxError(f"aisfx: {path}: refused ({what}); nothing in it was run") from None
    except OSError as err:
        raise AisfxError(f"aisfx: {path}: cannot read it ({err.strerror or err})") from None
    except Exception as err:  # not a torch file: a zip or pickle error
        raise AisfxError(f"aisfx: {path}: not a PyTorch checkpoint ({type(err).__name__})") from None
    ok = isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[0], dict) and isinstance(obj[1], dict)
    if not ok or not all(isinstance(v, torch.Tensor) for v in obj[0].values()):
        raise AisfxError(f"aisfx: {path}: expected (state_dict, ds_dict), as aisfx 0.1.2 ships")
    return obj


def encoder_state(state: dict[str, torch.Tensor], path: str | Path) -> dict[str, torch.Tensor]:
    """The ``embedding_net.`` tensors without their prefix; the nine dataset heads (``fc.*``) are left out on
    purpose (they classify the paper's training libraries); any other tensor is refused by name."""
    prefix = "embedding_net."
    other = sorted(k for k in state if not k.startswith((prefix, "fc.")))
    if other:
        raise AisfxError(f"aisfx: {path}: holds tensor {other[0]}, which aisfx 0.1.2 has not")
    return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}


def pretrained_net(path: str | Path | None = None) -> EmbeddingNet:
    """An :class:`EmbeddingNet` holding the packaged weights (or those of ``path``), loaded with ``strict=True``."""
    path = Path(path) if path is not None else checkpoint_path()
    state, _ = load_checkpoint(path)
    net = EmbeddingNet()
    try:
        net.load_state_dict(encoder_state(state, path), strict=True)
    except RuntimeError as err:  # a missing, extra or mis-shaped tensor
        raise AisfxError(f"aisfx: {path}: {str(err).splitlines()[1].strip()}") from None
    return net.eval()


# ---------------------------------------------------------------- the encoder


class AisfxEncoder(nn.Module):
    """Waveforms at 44.1 kHz [B, 1, samples] (or [B, samples]) -> [B, output_dim].

    Each block of 100 frames gives a 512-d embedding; ``pool`` "meanmax" concatenates their mean and maximum over
    the blocks (1024), "mean" averages them (512); a linear projection maps that to ``output_dim`` (none when
    ``output_dim`` is None or equal). ``tokens`` gives one token per block for attention fusion."""

    def __init__(self, net: EmbeddingNet, output_dim: int | None = None, pool: str = "meanmax", hop: int = BLOCK_HOP):
        super().__init__()
        if pool not in ("meanmax", "mean"):
            raise ValueError(f"aisfx: pool {pool!r} unknown; allowed: meanmax, mean")
        if not 1 <= hop <= BLOCK:
            raise ValueError(f"aisfx: hop {hop} frames; expected 1 to {BLOCK}")
        self.features = AisfxFeatures()
        self.net = net
        self.pool, self.hop = pool, hop
        hidden = EMBED_DIM * (2 if pool == "meanmax" else 1)
        output_dim = output_dim or hidden
        self.proj = nn.Identity() if hidden == output_dim else nn.Linear(hidden, output_dim)
        self.output_dim = output_dim

    def blocks(self, wave: torch.Tensor) -> torch.Tensor:
        """[B, (1,) samples] -> the network's input [B, blocks, 100, 96]."""
        if wave.dim() == 3:
            wave = wave[:, 0]
        return to_blocks(self.features(wave.float()), self.hop)

    def block_embeddings(self, wave: torch.Tensor) -> torch.Tensor:
        """[B, blocks, 512]: the package's embeddings, block by block."""
        blocks = self.blocks(wave)
        b, n = blocks.shape[:2]
        return self.net(blocks.flatten(0, 1)).view(b, n, EMBED_DIM)

    def pooled(self, emb: torch.Tensor) -> torch.Tensor:
        if self.pool == "mean":
            return emb.mean(dim=1)
        return torch.cat([emb.mean(dim=1), emb.amax(dim=1)], dim=-1)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.proj(self.pooled(self.block_embeddings(wave)))

    def tokens(self, wave: torch.Tensor) -> torch.Tensor:
        """One token per block [B, blocks, output_dim]: each block pooled alone (its mean and max are itself), so a
        clip of one block gives ``forward(x)`` as its one token."""
        emb = self.block_embeddings(wave)
        return self.proj(torch.cat([emb, emb], dim=-1) if self.pool == "meanmax" else emb)

    def layer_groups(self) -> list[nn.Module]:
        """The four convolution blocks (input side first), then the projection."""
        n = self.net
        return [n.conv_block1, n.conv_block2, n.conv_block3, n.conv_block4, self.proj]


def embed_clips(
    encoder: AisfxEncoder, waves: list[np.ndarray], rate: int, on_short: Callable[[str], None] | None = None
) -> torch.Tensor:
    """Pooled embeddings [N, hidden] (on the CPU) of clips of their own lengths (a probe's path: no padding to one
    length), resampled to 44.1 kHz first; ``on_short`` hears once that clips shorter than a block were padded."""
    told = False
    out = []
    device = next(encoder.parameters()).device
    with torch.no_grad():
        for wave in waves:
            wave = resample(np.asarray(wave, dtype=np.float32), rate)
            note = short_clip_note(len(wave))
            if note and not told:
                (on_short or (lambda m: warnings.warn(m, stacklevel=3)))(note)
                told = True
            out.append(encoder.pooled(encoder.block_embeddings(torch.from_numpy(wave)[None].to(device)))[0].cpu())
    return torch.stack(out)


def resample(wave: np.ndarray, rate: int) -> np.ndarray:
    """A mono clip at ``rate`` -> 44.1 kHz, by polyphase filtering (scipy's ``resample_poly``, as the audio column)."""
    if rate == SAMPLE_RATE:
        return wave
    from scipy.signal import resample_poly  # scipy is a dependency; loaded only when a clip needs it

    g = math.gcd(rate, SAMPLE_RATE)
    return resample_poly(wave, SAMPLE_RATE // g, rate // g).astype(np.float32)


def build_aisfx(
    spec: InputSpec,
    output_dim: int | None,
    *,
    pretrained: bool = True,
    weights: str | None = None,
    pool: str = "meanmax",
    hop: int = BLOCK_HOP,
) -> AisfxEncoder:
    """The encoder for an audio column of waveforms at 44.1 kHz; ``weights``: another aisfx checkpoint file."""
    if spec.kind != "waveform" or len(spec.shape) != 2 or spec.shape[0] != 1:
        raise UserError(
            f"aisfx: expects waveforms [1, samples] (the audio column's features: waveform), got {spec.kind} "
            f"{list(spec.shape)}"
        )
    rate = getattr(spec, "sample_rate", None)
    if rate not in (None, SAMPLE_RATE):
        raise UserError(f"aisfx: the audio column is at {rate} Hz; the pretrained weights need sample_rate: 44100")
    if spec.shape[1] <= N_FFT // 2:
        raise UserError(f"aisfx: clips of {spec.shape[1]} samples; expected more than {N_FFT // 2}")
    if weights is not None and not Path(weights).is_file():
        raise MissingFile(f"aisfx: no weights file {weights}")
    net = pretrained_net(weights) if (pretrained or weights) else EmbeddingNet()
    return AisfxEncoder(net, output_dim, pool=pool, hop=hop)


def _weights_from(cfg) -> str:
    return f"aisfx ({cfg.weights or 'sound-effects weights, package aisfx 0.1.2, CC BY 4.0'})"


def _audio_settings(cfg) -> tuple[dict, str] | None:
    """An audio column read by it: waveforms at 44.1 kHz, 5 s, unless the column sets its own."""
    return (preprocessing(), "aisfx's settings") if pretrained_or_file(cfg) else None


INFO = EncoderInfo(
    build_aisfx,
    backbone=True,
    pretrained=pretrained_or_file,
    without_weights=NO_WEIGHTS,
    describe=lambda cfg: "aisfx",
    weights_from=_weights_from,
    preprocessing=_audio_settings,
    portable=lambda cfg, folder: dict(NO_WEIGHTS),  # the architecture is code; the weights are the run's
    column_note=lambda cfg, column: short_clip_note(round(column.seconds * SAMPLE_RATE)),
    presets=(
        Preset(
            "audio",
            lambda: AisfxConfig(),
            requires=("aisfx",),
            chosen="model.preset auto: the aisfx sound-effects encoder (pretrained)",
            missing=(
                f"model.preset auto: the aisfx sound encoder is not installed ({INSTALL}), so a small CNN trains "
                "from scratch"
            ),
        ),
    ),
)

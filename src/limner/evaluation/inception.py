"""The standard FID Inception-v3 (pool3, 2048-d), loaded from a weights file the user supplies.

Architecture: Inception-v3 of Szegedy et al. (2016, "Rethinking the Inception Architecture for
Computer Vision", https://arxiv.org/abs/1512.00567) as frozen in TensorFlow's
``inception-2015-12-05`` graph, the network of the original FID (Heusel et al. 2017, "GANs
Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium",
https://arxiv.org/abs/1706.08500) and the Inception Score (Salimans et al. 2016,
https://arxiv.org/abs/1606.03498). That graph differs from the paper's (and torchvision's) net in
three places, and FID values are only comparable with them:

- the average pools of the A, C and first E blocks do not count the zero padding;
- the last E block (``Mixed_7c``) max-pools in its pool branch;
- the classifier has 1008 outputs (1000 ImageNet classes + 8 unused), so ``logits`` are 1008-way.

Parameter names follow the PyTorch port distributed by pytorch-fid as
``pt_inception-2015-12-05-6726825d.pth`` (94 conv+BN units and ``fc``: 472 tensors, plus a
``num_batches_tracked`` per BN where a file carries them), so that file loads with
``strict=True``. limner never downloads it: see ``WEIGHTS_HELP``. Written for limner from the
paper and the published description of the FID port; no code is taken from other projects.

Preprocessing (``InceptionExtractor.preprocess``), the pytorch-fid convention:
uint8 -> float in [0, 1] -> grayscale repeated to 3 channels -> bilinear resize to 299x299
(``F.interpolate(mode="bilinear", align_corners=False)``) -> scaled to [-1, 1]. clean-fid
(Parmar et al. 2022, https://arxiv.org/abs/2104.11222) resizes with PIL bicubic instead; FID
numbers are only comparable when computed with the same resize.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from limner.errors import CheckpointError
from limner.evaluation.features import FeatureExtractor
from limner.runs.layout import sha256_file

__all__ = ["WEIGHTS_FILE_NAME", "WEIGHTS_HELP", "FIDInceptionV3", "InceptionExtractor", "load_inception_weights"]

WEIGHTS_FILE_NAME = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_HELP = (
    f"limner does not download the FID Inception weights. Get {WEIGHTS_FILE_NAME} (the PyTorch "
    "port of TensorFlow's inception-2015-12-05 graph; '6726825d' in the name is a prefix of its "
    "hash) from the releases of the pytorch-fid GitHub repository (mseitzer/pytorch-fid, release "
    "'fid_weights'), or a .safetensors file with the same tensor names, and pass it with "
    "--inception PATH."
)
INPUT_SIZE = 299
NUM_CLASSES = 1008
POOL3_DIM = 2048


# ---------------------------------------------------------------- primitives


class BasicConv2d(nn.Module):
    """conv (no bias) -> BatchNorm (eps 0.001, as in the TF graph) -> ReLU."""

    def __init__(self, cin: int, cout: int, kernel_size: int | tuple[int, int],
                 stride: int = 1, padding: int | tuple[int, int] = 0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_3x3(x: Tensor) -> Tensor:
    """3x3 stride-1 average pool that ignores the zero padding (the TF graph's behaviour)."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


def _max_pool_3x3_s2(x: Tensor) -> Tensor:
    return F.max_pool2d(x, kernel_size=3, stride=2)


# ---------------------------------------------------------------- blocks (paper Figs. 5-7, 10)


class InceptionA(nn.Module):
    """35x35 block (paper Fig. 5): 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1 -> 224 + pool_features."""

    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, 1)
        self.branch5x5_1 = BasicConv2d(cin, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, 1)

    def forward(self, x: Tensor) -> Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(_avg_pool_3x3(x))
        return torch.cat([self.branch1x1(x), b5, b3, bp], dim=1)


class InceptionB(nn.Module):
    """35 -> 17 grid reduction (paper Fig. 10): 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2 -> 480 + cin."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, _max_pool_3x3_s2(x)], dim=1)


class InceptionC(nn.Module):
    """17x17 block with factorised 7x7 convolutions (paper Fig. 6) -> 768 channels."""

    def __init__(self, cin: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(cin, 192, 1)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = self.branch7x7dbl_1(x)
        for conv in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            d = conv(d)
        bp = self.branch_pool(_avg_pool_3x3(x))
        return torch.cat([self.branch1x1(x), b7, d, bp], dim=1)


class InceptionD(nn.Module):
    """17 -> 8 grid reduction: 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool/2 -> 512 + cin."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_1(x)
        for conv in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b7 = conv(b7)
        return torch.cat([b3, b7, _max_pool_3x3_s2(x)], dim=1)


class InceptionE(nn.Module):
    """8x8 block with expanded 1x3/3x1 outputs (paper Fig. 7) -> 2048 channels.

    ``pool="avg"`` (``Mixed_7b``) averages without counting padding; ``pool="max"``
    (``Mixed_7c``) max-pools, as the TF graph does.
    """

    def __init__(self, cin: int, pool: str):
        super().__init__()
        self.pool = pool
        self.branch1x1 = BasicConv2d(cin, 320, 1)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        s = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(s), self.branch3x3_2b(s)], dim=1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], dim=1)
        if self.pool == "max":
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        else:
            pooled = _avg_pool_3x3(x)
        return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(pooled)], dim=1)


# ---------------------------------------------------------------- network


class FIDInceptionV3(nn.Module):
    """FID Inception-v3: float [B, 3, 299, 299] in [-1, 1] -> (pool3 [B, 2048], logits [B, 1008])."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)      # 299 -> 149
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)               # -> 147
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)    # -> 147, maxpool -> 73
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)              # -> 71, maxpool -> 35
        self.Mixed_5b = InceptionA(192, pool_features=32)         # 35x35x256
        self.Mixed_5c = InceptionA(256, pool_features=64)         # 35x35x288
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)                           # 17x17x768
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)                           # 8x8x1280
        self.Mixed_7b = InceptionE(1280, pool="avg")              # 8x8x2048
        self.Mixed_7c = InceptionE(2048, pool="max")
        self.fc = nn.Linear(POOL3_DIM, NUM_CLASSES)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        h = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(_max_pool_3x3_s2(h)))
        h = _max_pool_3x3_s2(h)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            h = getattr(self, f"Mixed_{name}")(h)
        pool3 = h.mean(dim=(2, 3))  # [B, 2048]
        return pool3, self.fc(pool3)


# ---------------------------------------------------------------- loading


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    """Tensors of a .pth (weights_only unpickling) or .safetensors file; CheckpointError otherwise."""
    if not path.is_file():
        raise CheckpointError(f"Inception weights file {path} not found. {WEIGHTS_HELP}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling refusals, truncated files, foreign formats
        raise CheckpointError(f"{path} cannot be read as a weights file "
                              f"(only plain tensors are accepted): {type(e).__name__}: {e}") from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state dict (name -> tensor); got {type(state).__name__}")
    return state


def _check_state_dict(state: dict[str, Tensor], expected: dict[str, Tensor], path: Path) -> None:
    """CheckpointError naming the file for missing/unexpected names and shape mismatches."""
    optional = {k for k in expected if k.endswith("num_batches_tracked")}
    missing = sorted(set(expected) - set(state) - optional)
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{path} is not an FID Inception-v3 state dict: {len(missing)} missing tensors "
            f"(e.g. {missing[:4]}), {len(unexpected)} unexpected (e.g. {unexpected[:4]}). {WEIGHTS_HELP}")
    wrong = [f"{k}: {tuple(v.shape)} != {tuple(expected[k].shape)}"
             for k, v in state.items() if v.shape != expected[k].shape]
    if wrong:
        raise CheckpointError(f"{path}: {len(wrong)} tensors have the wrong shape, e.g. {wrong[:3]}")


def load_inception_weights(path: str | os.PathLike) -> FIDInceptionV3:
    """Build ``FIDInceptionV3`` and load ``path`` (.pth or .safetensors) strictly, in eval mode."""
    path = Path(path)
    state = _read_state_dict(path)
    net = FIDInceptionV3()
    _check_state_dict(state, net.state_dict(), path)
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=True)
    return net.eval().requires_grad_(False)


# ---------------------------------------------------------------- extractor


def preprocess(images: Tensor) -> Tensor:
    """uint8 [B, C, H, W] (C = 1 or 3) -> float [B, 3, 299, 299] in [-1, 1] (module docstring)."""
    if images.shape[1] not in (1, 3):
        raise ValueError(f"Inception expects 1 or 3 channels, got {images.shape[1]}")
    x = images.float() / 255.0
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
    return 2.0 * x - 1.0


class InceptionExtractor(FeatureExtractor):
    """FID Inception-v3: pool3 features (2048-d) and 1008-way logits (for the Inception Score).

    Args:
        path: the weights file (``WEIGHTS_HELP`` says where to get it); its sha256 is the digest.
        device: "cpu", "cuda", "cuda:1", ... where the network runs.
        max_batch: images per forward pass, whatever batch the caller hands in (a 299 px
            Inception batch of 64 needs ~1 GB of activations on the CPU).
    """

    name = "inception-v3-fid"
    version = "1"
    dim = POOL3_DIM
    num_classes = NUM_CLASSES

    def __init__(self, path: str | os.PathLike, *, device: str | torch.device = "cpu", max_batch: int = 64):
        self.path = Path(path)
        self.device = torch.device(device)
        self.max_batch = max_batch
        self.net = load_inception_weights(self.path).to(self.device)
        self.digest = sha256_file(self.path)

    def preprocess(self, images: Tensor) -> Tensor:
        """uint8 [B, C, H, W] -> float [B, 3, 299, 299] in [-1, 1]; see the module docstring."""
        return preprocess(images)

    def _forward(self, batch: Tensor) -> tuple[Tensor, Tensor]:
        outs = [self.net(self.preprocess(chunk.to(self.device))) for chunk in batch.split(self.max_batch)]
        return torch.cat([f for f, _ in outs]), torch.cat([l for _, l in outs])

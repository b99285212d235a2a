"""A small 3D-conv video network for Fréchet / kernel distances on the toy world (docs/evaluation.md).

Inception features know nothing about 32×32, 12-frame toy videos, so the project trains its own feature
network: four strided 3D convolutions give a ``num_features``-dim vector per video, the log spread of the
first filters' responses (``width`` dims: how the video is rendered) beside the average pool of the last
block (``num_features - width`` dims: what it shows). Linear heads on that vector classify the first
object's toy attributes (colour, shape, direction, size, speed), which is what makes the features mean
something. A content classifier alone is blind to rendering (flicker and blur barely moved its features),
so a sixth head classifies a random degradation applied during training ("none", "blur", "noise",
"flicker", "frozen", random strengths). Shipped net (0.61 M parameters): the features see flicker, frozen
motion and colour shifts strongly, blur weakly, and mild per-frame noise not at all (its head never learnt
"noise"); ``metrics.sharpness_ratio`` and ``metrics.temporal_consistency`` cover those. Trained by
``oneforcing.toy.feature_net_module.FeatureNetModule``; shipped as
``assets/toy_video_features.safetensors`` and loaded with ``load_feature_net``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as nnf
from safetensors.torch import load_file
from torch import nn

from oneforcing.models.wan import safetensors_metadata
from oneforcing.toy.vocabulary import COLOURS, DIRECTIONS, SHAPES, SIZES, SPEEDS

DEFAULT_WEIGHTS = Path(__file__).resolve().parents[2] / "assets" / "toy_video_features.safetensors"

# attribute name -> class names, in head output order
ATTRIBUTE_CLASSES: dict[str, tuple[str, ...]] = {
    "colour": tuple(COLOURS),
    "shape": SHAPES,
    "direction": tuple(DIRECTIONS),
    "size": tuple(SIZES),
    "speed": tuple(SPEEDS),
}
DEGRADATIONS: tuple[str, ...] = ("none", "blur", "noise", "flicker", "frozen")


def _block(c_in: int, c_out: int, stride: tuple[int, int, int], norm: bool = True) -> nn.Sequential:
    """3×3×3 conv (stride over (F, H, W)) → GroupNorm → SiLU; GroupNorm keeps features batch-independent."""
    return nn.Sequential(
        nn.Conv3d(c_in, c_out, kernel_size=3, stride=stride, padding=1),
        nn.GroupNorm(8, c_out) if norm else nn.Identity(),
        nn.SiLU(),
    )


class VideoFeatureNet(nn.Module):
    """Videos (B, F, 3, H, W) in [-1, 1] → features (B, ``num_features``); ``classify`` adds attribute logits.

    Args:
        num_features: width of the last conv layer = dimension of the feature vector.
        width: channels of the first conv layer (then 2×, 4×, and ``num_features - width``).
    """

    def __init__(self, num_features: int = 128, width: int = 32) -> None:
        super().__init__()
        self.num_features = num_features  # torchmetrics reads this instead of probing with a dummy image
        self.width = width
        self.body = nn.Sequential(
            # no normalisation on the pixels' first filters: their energy is what blur lowers and noise raises
            _block(3, width, (1, 2, 2), norm=False),  # (B, w, F, H/2, W/2)
            _block(width, 2 * width, (2, 2, 2)),  # (B, 2w, F/2, H/4, W/4)
            _block(2 * width, 4 * width, (2, 2, 2)),  # (B, 4w, F/4, H/8, W/8)
            _block(4 * width, num_features - width, (1, 2, 2)),  # (B, D - w, F/4, H/16, W/16)
        )
        classes = {**ATTRIBUTE_CLASSES, "degradation": DEGRADATIONS}
        self.heads = nn.ModuleDict({name: nn.Linear(num_features, len(c)) for name, c in classes.items()})

    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        """Features (B, D) of videos (B, F, 3, H, W) in [-1, 1]."""
        assert videos.ndim == 5 and videos.shape[2] == 3, f"expected (B, F, 3, H, W), got {tuple(videos.shape)}"
        x = videos.float().permute(0, 2, 1, 3, 4)  # (B, 3, F, H, W): Conv3d's layout
        response = self.body[0][0](x)  # (B, w, F, H/2, W/2): the first filters, before normalisation
        # how the video is rendered (sharpness, grain, flicker) lies in the spread of the first filters'
        # responses, which the normalised deeper layers discard; what it shows lies in the last block
        texture = response.flatten(2).std(dim=2).clamp_min(1e-4).log()  # (B, w)
        content = self.body[1:](self.body[0][1:](response)).mean(dim=(2, 3, 4))  # (B, D - w)
        return torch.cat([texture, content], dim=1)  # (B, D)

    def classify(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits {name: (B, K_name)} of the attributes and of "degradation", from features (B, D)."""
        return {name: head(features) for name, head in self.heads.items()}

    def config(self) -> dict[str, int]:
        """Constructor arguments, stored beside the weights."""
        return {"num_features": self.num_features, "width": self.width}


def attribute_targets(attributes: list[dict]) -> dict[str, torch.Tensor]:
    """Class indices {name: (B,)} of each video's first object, from the toy world's attribute dicts."""
    firsts = [a["objects"][0] for a in attributes]
    return {name: torch.tensor([classes.index(obj[name]) for obj in firsts])
            for name, classes in ATTRIBUTE_CLASSES.items()}


def _uniform(low: float, high: float, generator: torch.Generator) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def degrade(video: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    """One video (F, 3, H, W) in [-1, 1] with a degradation of random strength (training augmentation).

    blur: Gaussian, σ ∈ [0.5, 1.5] px; noise: Gaussian, std ∈ [0.02, 0.1], re-drawn per frame; flicker:
    per-frame brightness offset ~ N(0, s²), s ∈ [0.03, 0.15]; frozen: one random frame repeated.
    """
    F, C = video.shape[:2]
    if kind == "none":
        return video
    if kind == "blur":
        sigma = _uniform(0.5, 1.5, generator)
        taps = torch.arange(-3, 4, dtype=torch.float32)
        kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
        kernel = (kernel / kernel.sum()).to(video)
        x = nnf.pad(video, (3, 3, 3, 3), mode="replicate")  # (F, 3, H+6, W+6)
        x = nnf.conv2d(x, kernel.view(1, 1, 1, 7).expand(C, 1, 1, 7), groups=C)  # (F, 3, H+6, W)
        return nnf.conv2d(x, kernel.view(1, 1, 7, 1).expand(C, 1, 7, 1), groups=C)  # (F, 3, H, W)
    if kind == "noise":
        std = _uniform(0.02, 0.1, generator)
        return (video + std * torch.randn(video.shape, generator=generator).to(video)).clamp(-1, 1)
    if kind == "flicker":
        std = _uniform(0.03, 0.15, generator)
        offset = std * torch.randn(F, 1, 1, 1, generator=generator).to(video)
        return (video + offset).clamp(-1, 1)
    if kind == "frozen":
        frame = int(torch.randint(F, (), generator=generator))
        return video[frame: frame + 1].expand_as(video).clone()
    raise ValueError(f"Unknown degradation {kind!r}; known: {DEGRADATIONS}.")


def load_feature_net(path: str | Path = DEFAULT_WEIGHTS) -> VideoFeatureNet:
    """The trained feature net from a safetensors file (written by ``export_feature_net``), in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"No feature-net weights at {path}; train them with "
            "`oneforcing fit --config configs/toy/feature_net.yaml` (see that file's header)."
        )
    net = VideoFeatureNet(**json.loads(safetensors_metadata(path).get("config", "{}")))
    net.load_state_dict(load_file(str(path)))
    return net.eval().requires_grad_(False)

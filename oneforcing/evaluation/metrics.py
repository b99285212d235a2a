"""Video metrics: distribution distances in a feature network's space, sharpness, motion, flicker, drift.

Videos are float tensors (B, F, 3, H, W) in [-1, 1]. "fake" are generated, "real" are reference videos of
the same length and size (e.g. ``make_video``), ideally as many as the fake ones and never the same
videos that trained the generator. Each metric's docstring gives its definition, its ideal value and which
way is worse. Values are comparable between runs only at equal video counts (FD and KID are biased at
small N) and carry meaning only as mean ± std over several seeds (docs/evaluation.md).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as nnf
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 greyscale weights
LAPLACIAN = ((0.0, 1.0, 0.0), (1.0, -4.0, 1.0), (0.0, 1.0, 0.0))
RANGE_TOLERANCE = 0.5  # values beyond [-1.5, 1.5] are not [-1, 1] videos (uint8 or [0, 255] floats, most likely)
DRIFT_SHARPNESS_WEIGHT = 0.1  # halving the sharpness (ln 2) counts like a 0.07 shift of the mean colour


# --- input checks -----------------------------------------------------------------------------------------
def check_videos(videos: torch.Tensor, name: str = "videos", min_frames: int = 2) -> None:
    """Raise ValueError naming every problem of ``videos`` as a (B, F, 3, H, W) float video batch in [-1, 1]."""
    problems = []
    if not torch.is_tensor(videos):
        raise ValueError(f"{name} must be a torch.Tensor (B, F, 3, H, W) in [-1, 1], got {type(videos).__name__}.")
    if videos.ndim != 5 or videos.shape[2] != 3:
        problems.append(f"shape {tuple(videos.shape)} is not (B, F, 3, H, W); add the batch axis with "
                        "video[None] or move channels with permute (frames first, then RGB)")
    elif videos.shape[1] < min_frames or min(videos.shape[-2:]) < 3:
        problems.append(f"shape {tuple(videos.shape)} has fewer than {min_frames} frames or a side under 3 "
                        "pixels; these metrics compare frames over time and need a 3×3 Laplacian")
    if not videos.is_floating_point():
        problems.append(f"dtype {videos.dtype} is not floating point; convert uint8 with x.float() / 127.5 - 1")
    elif videos.numel() and not torch.isfinite(videos).all():
        problems.append("it holds NaN or inf values; check the generator's output")
    elif videos.numel() and videos.abs().amax() > 1 + RANGE_TOLERANCE:
        problems.append(f"values span [{float(videos.amin()):.3g}, {float(videos.amax()):.3g}], far outside "
                        "[-1, 1]; [0, 255] pixels convert with x / 127.5 - 1")
    if problems:
        raise ValueError(f"{name}: " + "; ".join(problems) + ".")


def check_pair(fake: torch.Tensor, real: torch.Tensor) -> None:
    """Check both batches, then that they have the same frame count and frame size."""
    check_videos(fake, "fake")
    check_videos(real, "real")
    if fake.shape[1:] != real.shape[1:]:
        raise ValueError(
            f"fake {tuple(fake.shape)} and real {tuple(real.shape)} differ in frames or frame size; compare "
            "videos of the same (F, 3, H, W): generate at the real videos' length and size, or crop the longer."
        )


# --- distribution distances -------------------------------------------------------------------------------
class _VideoFeatures(nn.Module):
    """Adapter for torchmetrics: videos (N, F, 3, H, W) → features (N, D), in chunks, without gradients.

    torchmetrics reads ``num_features`` instead of probing the module with a dummy image (which would
    be a (1, 3, 299, 299) image, not a video), and passes ``update``'s input straight to ``forward``.
    """

    def __init__(self, net: nn.Module, batch_size: int = 64) -> None:
        super().__init__()
        self.net = net
        self.num_features = net.num_features
        self.batch_size = batch_size

    @torch.no_grad()
    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        was_training = self.net.training
        self.net.eval()
        features = torch.cat([self.net(chunk) for chunk in videos.split(self.batch_size)])  # (N, D)
        self.net.train(was_training)
        return features


def frechet_and_kid(
    fake: torch.Tensor, real: torch.Tensor, net: nn.Module, subset_size: int = 100, subsets: int = 50,
    seed: int = 0,
) -> dict[str, float]:
    """Fréchet distance and kernel distance between feature distributions of fake and real videos.

    Features φ (``net.num_features`` dims) are ``net``'s outputs, (N, F, 3, H, W) -> (N, D): on the toy world the
    trained feature net's pooled activations (``oneforcing.toy.feature_net``).
    - "fd" = ‖μ_f − μ_r‖² + Tr(Σ_f + Σ_r − 2 (Σ_f Σ_r)^½) (FID's formula on φ; torchmetrics).
    - "kid" = unbiased MMD² with the cubic kernel k(x, y) = (x·y / D + 1)³, averaged over ``subsets``
      random subsets of ``subset_size`` videos per side; "kid_std" its std over subsets. The subset size is
      clamped to half the smaller side (at least 2), so that subsets differ and kid_std means something.
    Ideal 0 for both (same distribution); higher is worse. Both are biased upwards at small N (FD more,
    as 128-dim covariances from tens of videos are rank-deficient), so compare values at equal N only.
    Needs at least 2 videos per side; ``seed`` fixes KID's subset draws.
    """
    check_pair(fake, real)
    if min(len(fake), len(real)) < 2:
        raise ValueError(
            f"FD/KID need at least 2 videos per side (got {len(fake)} fake, {len(real)} real) to estimate a "
            "covariance; pass more videos (tens at least for meaningful values)."
        )
    subset_size = max(2, min(subset_size, min(len(fake), len(real)) // 2))
    features = _VideoFeatures(net)
    # the videos given are the whole set: no all-gather across ranks (torchmetrics' default when a process group
    # exists), which would hang when rank 0 alone evaluates (DDP) and double the set when every rank does (FSDP2)
    local = dict(sync_on_compute=False)
    fid = FrechetInceptionDistance(feature=features, normalize=True, **local)
    with warnings.catch_warnings():  # it keeps every feature vector: 128 floats per video here, harmless
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        kid = KernelInceptionDistance(feature=features, subsets=subsets, subset_size=subset_size, normalize=True,
                                      **local)
    for metric in (fid, kid):
        metric.update(real.float(), real=True)
        metric.update(fake.float(), real=False)
    with torch.random.fork_rng(devices=[]):  # KID draws subsets from the global RNG: fix it, leave it as it was
        torch.manual_seed(seed)
        kid_mean, kid_std = kid.compute()
    return {"fd": float(fid.compute()), "kid": float(kid_mean), "kid_std": float(kid_std)}


# --- per-frame statistics -----------------------------------------------------------------------------------
def greyscale(videos: torch.Tensor) -> torch.Tensor:
    """Luma (B, F, H, W) of videos (B, F, 3, H, W)."""
    weights = torch.tensor(LUMA, dtype=torch.float32, device=videos.device)
    return torch.einsum("bfchw,c->bfhw", videos.float(), weights)


def laplacian_variance(videos: torch.Tensor) -> torch.Tensor:
    """Per-frame variance of the greyscale 3×3 Laplacian (valid part, no padding), (B, F)."""
    B, F, _, H, W = videos.shape
    grey = greyscale(videos).reshape(B * F, 1, H, W)  # (B·F, 1, H, W)
    kernel = torch.tensor(LAPLACIAN, dtype=torch.float32, device=videos.device)[None, None]  # (1, 1, 3, 3)
    response = nnf.conv2d(grey, kernel)  # (B·F, 1, H-2, W-2)
    return response.flatten(1).var(dim=1).reshape(B, F)


EDGE_FRACTION = 0.1  # the pixels of a frame with the strongest gradient: the object's edge band on the toy


def edge_sharpness(videos: torch.Tensor, fraction: float = EDGE_FRACTION) -> torch.Tensor:
    """Per frame, the mean squared greyscale Laplacian over the ``fraction`` of pixels with the largest
    gradient magnitude (central differences), (B, F).

    Measured where the edges are, so that a flat background (Laplacian 0 almost everywhere) does not shrink
    the real videos' value and let faint background grain dominate a ratio; blur lowers it (edges spread
    and soften), noise raises it.
    """
    B, F, _, H, W = videos.shape
    grey = greyscale(videos).reshape(B * F, H, W)
    kernel = torch.tensor(LAPLACIAN, dtype=torch.float32, device=videos.device)[None, None]  # (1, 1, 3, 3)
    laplacian = nnf.conv2d(grey[:, None], kernel)[:, 0]  # (B·F, H-2, W-2)
    gx = (grey[:, 1:-1, 2:] - grey[:, 1:-1, :-2]) / 2
    gy = (grey[:, 2:, 1:-1] - grey[:, :-2, 1:-1]) / 2  # (B·F, H-2, W-2), the same pixels as the Laplacian
    magnitude = (gx.square() + gy.square()).flatten(1)
    k = max(1, int(fraction * magnitude.shape[1]))
    edges = magnitude.topk(k, dim=1).indices  # (B·F, k)
    return laplacian.flatten(1).square().gather(1, edges).mean(dim=1).reshape(B, F)


def frame_differences(videos: torch.Tensor) -> torch.Tensor:
    """Mean absolute change between consecutive frames, (B, F-1): mean over (3, H, W) of |x_{t+1} − x_t|."""
    return (videos[:, 1:].float() - videos[:, :-1].float()).abs().mean(dim=(2, 3, 4))


def flicker(videos: torch.Tensor) -> torch.Tensor:
    """Per step, the median over pixels of the RGB distance ‖x_{t+1} − x_t‖₂, (B, F-1), [-1, 1] units.

    A moving object changes only the pixels it enters or leaves, a minority of the frame, so the median
    ignores smooth object motion; flicker (brightness or colour changing frame to frame, noise re-drawn
    each frame) changes most pixels and raises the median. Camera motion would count as flicker; the toy
    world has none.
    """
    distance = (videos[:, 1:].float() - videos[:, :-1].float()).norm(dim=2)  # (B, F-1, H, W)
    return distance.flatten(2).median(dim=2).values


def sharpness_ratio(fake: torch.Tensor, real: torch.Tensor) -> float:
    """Mean ``edge_sharpness`` (the Laplacian's energy on each frame's strongest-gradient pixels), fake / real.

    Ideal 1; < 1: blurrier than real (over-smoothed), > 1: noisier or over-sharpened than real. On the
    default flat-background world the whole-frame Laplacian variance is tiny on real videos (edges are a
    few % of the pixels), so faint background grain read as large ratios; at the edges it does not
    (measured: grain of std 0.1 reads 1.22 here, 3.48 on the whole frame; a σ = 1 px blur 0.05 for both).
    """
    check_pair(fake, real)
    return float(edge_sharpness(fake).mean() / edge_sharpness(real).mean().clamp_min(1e-12))


def dynamics_ratio(fake: torch.Tensor, real: torch.Tensor) -> float:
    """Mean |x_{t+1} − x_t| over all steps, pixels and videos, fake / real.

    Ideal 1; 0 for frozen videos, < 1 too static, > 1 too much change (jumps, flicker or noise also count).
    """
    check_pair(fake, real)
    return float(frame_differences(fake).mean() / frame_differences(real).mean().clamp_min(1e-12))


def temporal_consistency(fake: torch.Tensor, real: torch.Tensor) -> float:
    """Flicker excess: mean ``flicker`` of fake minus that of real, in [-1, 1] RGB-distance units.

    ``flicker`` is the median over pixels of the frame-to-frame change: blind to smooth object motion,
    raised by per-frame jitter. Ideal 0 (as steady as real videos, whose flicker is ≈ 0); higher is worse:
    a per-frame brightness jitter of ±a over the whole frame gives ≈ 2a·√3 at most. Frozen videos score
    ≤ 0 (a difference, not a ratio, because real flicker is ≈ 0); ``dynamics_ratio`` catches them.
    """
    check_pair(fake, real)
    return float(flicker(fake).mean() - flicker(real).mean())


# --- drift over long roll-outs --------------------------------------------------------------------------
def frame_statistics(videos: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-frame statistics: "colour" mean RGB (B, F, 3), "contrast" std of greyscale (B, F),
    "log_sharpness" ln of the Laplacian variance (B, F)."""
    return {
        "colour": videos.float().mean(dim=(3, 4)),
        "contrast": greyscale(videos).flatten(2).std(dim=2),
        "log_sharpness": laplacian_variance(videos).clamp_min(1e-12).log(),
    }


def drift_curve(videos: torch.Tensor, window: int = 12) -> torch.Tensor:
    """Distance of each frame's statistics from the first ``window`` frames' average, mean over videos, (F,).

    d_t = ‖c_t − c̄‖₂ + |s_t − s̄| + 0.1·|ln L_t − ln L̄|, with c mean RGB, s greyscale std, L the Laplacian
    variance of frame t, and the bar the mean over frames 0..window-1 of the same video ([-1, 1] units).
    """
    check_videos(videos, "long videos", min_frames=window + 1)
    stats = frame_statistics(videos)
    reference = {name: value[:, :window].mean(dim=1, keepdim=True) for name, value in stats.items()}
    d = ((stats["colour"] - reference["colour"]).norm(dim=2)  # (B, F)
         + (stats["contrast"] - reference["contrast"]).abs()
         + DRIFT_SHARPNESS_WEIGHT * (stats["log_sharpness"] - reference["log_sharpness"]).abs())
    return d.mean(dim=0)


def drift(videos: torch.Tensor, window: int = 12) -> float:
    """Drift score of long roll-outs (B, F ≥ 4·window, 3, H, W): mean of ``drift_curve`` over frames ≥ window.

    How far later frames' colour, contrast and sharpness wander from the first (training-length) window.
    Ideal 0 (real toy videos are stationary: ≈ 0.01 or less); higher is worse.
    """
    if videos.ndim == 5 and videos.shape[1] < 4 * window:
        raise ValueError(
            f"drift needs roll-outs of at least 4 × window = {4 * window} frames, got {videos.shape[1]}; "
            "generate longer videos (e.g. streaming) or pass a smaller window."
        )
    return float(drift_curve(videos, window)[window:].mean())


# --- curves ------------------------------------------------------------------------------------------------
def per_frame_curves(
    fake: torch.Tensor, real: torch.Tensor, long_fake: torch.Tensor | None = None, window: int = 12,
) -> dict[str, list[float]]:
    """Curves against frame index, for plots: "sharpness_ratio" (F,) fake/real edge sharpness at frame t,
    "dynamics_ratio" (F-1,) fake/real |x_{t+1} − x_t| at step t, "flicker_fake" and "flicker_real" (F-1,),
    and "drift" (F_long,) from ``drift_curve`` when ``long_fake`` is given. Means are over videos."""
    check_pair(fake, real)
    curves = {
        "sharpness_ratio": edge_sharpness(fake).mean(0) / edge_sharpness(real).mean(0).clamp_min(1e-12),
        "dynamics_ratio": frame_differences(fake).mean(0) / frame_differences(real).mean(0).clamp_min(1e-12),
        "flicker_fake": flicker(fake).mean(0),
        "flicker_real": flicker(real).mean(0),
    }
    if long_fake is not None:
        curves["drift"] = drift_curve(long_fake, window)
    return {name: curve.tolist() for name, curve in curves.items()}

"""Trains the toy-world feature network for Fréchet / kernel distances (docs/evaluation.md).

Each training video is degraded with probability ``degrade_prob`` by one of ``DEGRADATIONS[1:]`` (random
strength). Loss: the cross-entropy of the "degradation" head (all videos) plus the sum over attributes
a ∈ {colour, shape, direction, size, speed} of the cross-entropy between the head's logits and the first
object's attribute, on the undegraded videos; each a per-batch mean. Validation degrades with a generator
seeded by the batch index, so val numbers are comparable across runs. The features (the pooled vector the heads
read) are what ``oneforcing.evaluation.metrics`` compares; the heads only give them meaning.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as nnf
from safetensors.torch import save

from oneforcing.toy.feature_net import DEGRADATIONS, VideoFeatureNet, attribute_targets, degrade
from oneforcing.video_io import atomic_write_bytes


def export_feature_net(module: FeatureNetModule, path: str | Path) -> Path:
    """Write ``module.net``'s weights to ``path`` (safetensors), its constructor arguments as metadata.

    ``ExportWeights`` saves the whole LightningModule (keys prefixed ``net.``); ``load_feature_net`` wants
    the bare ``VideoFeatureNet``, so the net is written on its own.
    """
    state = {k: v.detach().contiguous().cpu() for k, v in module.net.state_dict().items()}
    atomic_write_bytes(path, save(state, metadata={"config": json.dumps(module.net.config())}))
    return Path(path)


class FeatureNetModule(L.LightningModule):
    """Attribute classification of toy videos with ``VideoFeatureNet``.

    Args:
        num_features, width: the network (see ``VideoFeatureNet``).
        lr, weight_decay: AdamW; ``warmup_steps`` of linear warm-up, then a cosine down to 0 at
            ``trainer.max_steps`` (constant when max_steps is -1).
        degrade_prob: probability that a video is degraded (blur, noise, flicker, frozen) for the
            "degradation" head.
        export_path: where the net's weights go at the end of fit (None: not exported).
    """

    def __init__(
        self,
        num_features: int = 128,
        width: int = 32,
        lr: float = 2e-3,
        weight_decay: float = 0.01,
        warmup_steps: int = 100,
        degrade_prob: float = 0.5,
        export_path: str | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= degrade_prob <= 1.0:
            raise ValueError(f"degrade_prob={degrade_prob} must be a probability in [0, 1].")
        self.save_hyperparameters()
        self.net = VideoFeatureNet(num_features=num_features, width=width)

    def degraded(self, pixels: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(videos (B, F, 3, H, W), degradation index (B,)): each degraded with probability degrade_prob."""
        B = pixels.shape[0]
        hit = torch.rand(B, generator=generator) < self.hparams.degrade_prob  # (B,)
        kind = torch.where(hit, torch.randint(1, len(DEGRADATIONS), (B,), generator=generator), 0)  # (B,)
        videos = torch.stack([degrade(v, DEGRADATIONS[int(k)], generator) for v, k in zip(pixels, kind)])
        return videos, kind.to(pixels.device)

    def losses(self, batch: dict, generator: torch.Generator
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(total loss, per-head cross-entropy, per-head accuracy) of a batch, after random degradation."""
        videos, kind = self.degraded(batch["pixels"], generator)
        logits = self.net.classify(self.net(videos))  # {name: (B, K)}
        targets = {k: v.to(self.device) for k, v in attribute_targets(batch["attributes"]).items()}  # {name: (B,)}
        clean = kind == 0  # attributes are scored on undegraded videos only (frozen ones have no direction)
        ce = {"degradation": nnf.cross_entropy(logits["degradation"].float(), kind)}
        accuracy = {"degradation": (logits["degradation"].argmax(dim=1) == kind).float().mean()}
        if clean.any():
            for name, target in targets.items():
                ce[name] = nnf.cross_entropy(logits[name][clean].float(), target[clean])
                accuracy[name] = (logits[name][clean].argmax(dim=1) == target[clean]).float().mean()
        return sum(ce.values()), ce, accuracy

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(int(torch.randint(2**62, ())))  # from Lightning's seeded RNG
        loss, _, accuracy = self.losses(batch, generator)
        B = batch["pixels"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=B)
        for name, value in accuracy.items():
            self.log(f"train/acc_{name}", value, batch_size=B)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        loss, ce, accuracy = self.losses(batch, torch.Generator().manual_seed(batch_idx))
        B = batch["pixels"].shape[0]
        self.log("val/loss", loss, prog_bar=True, batch_size=B)
        for name in ce:
            self.log(f"val/loss_{name}", ce[name], batch_size=B)
            self.log(f"val/acc_{name}", accuracy[name], batch_size=B)

    def on_train_end(self) -> None:
        if self.hparams.export_path and self.trainer.is_global_zero:
            print(f"[oneforcing] feature net written to {export_feature_net(self, self.hparams.export_path)}")

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.net.parameters(), lr=self.hparams.lr,
                                      weight_decay=self.hparams.weight_decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, self._lr_factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def _lr_factor(self, step: int) -> float:
        """Learning-rate multiplier at optimizer step ``step``: linear warm-up, then cosine to 0 at max_steps."""
        warmup, end = max(self.hparams.warmup_steps, 1), self.trainer.max_steps
        factor = min(1.0, (step + 1) / warmup)
        if end > warmup and step > warmup:
            factor *= 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / (end - warmup))))
        return factor

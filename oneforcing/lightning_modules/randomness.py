"""The distillation step's random streams: one shared by the ranks (what they must agree on, e.g. the exit step) and
one per rank (noise and σ), seeded from the config and checkpointed so that a resumed run draws what it would have."""

from __future__ import annotations

import torch


class StepRandomness:
    """``shared`` and ``rank`` generators; ``seed(rank)`` starts them, or restores the states of a checkpoint."""

    def __init__(self, seed: int) -> None:
        self.seed_value = seed
        self.shared = torch.Generator().manual_seed(seed)
        self.rank = torch.Generator().manual_seed(seed)
        self._restored: dict | None = None

    def seed(self, rank: int) -> None:
        """Per-rank noise and rank-shared draws from the seed, or the states restored from a checkpoint."""
        self.rank.manual_seed(self.seed_value + 1000 * rank + 1)
        self.shared.manual_seed(self.seed_value)
        if self._restored is not None:
            self.shared.set_state(self._restored["shared"])
            self.rank.set_state(self._restored["rank"][rank % len(self._restored["rank"])])

    def state(self, world_size: int) -> dict:
        """The states to checkpoint: the shared one and every rank's (a collective when ``world_size`` > 1)."""
        states = [self.rank.get_state()]
        if world_size > 1 and torch.distributed.is_initialized():
            states = [None] * world_size
            torch.distributed.all_gather_object(states, self.rank.get_state())
        return {"shared": self.shared.get_state(), "rank": states}

    def restore(self, state: dict | None) -> None:
        """Keep a checkpoint's states (or None: none saved) for the next ``seed``."""
        self._restored = state

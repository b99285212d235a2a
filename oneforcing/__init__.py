"""oneforcing: One-Forcing and the causal video distillation baselines on one Lightning harness."""

__version__ = "0.1.0"

"""The live page (``oneforcing serve``): a causal student streamed to the browser."""

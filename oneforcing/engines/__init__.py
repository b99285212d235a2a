"""Training engines beyond Lightning's DDP: FSDP2 sharding of every role (docs/engines.md).

A module opts in by listing its FSDP units (``shard_units()``: inner modules first, each role's root last); the
engine shards them, so the module's code is the same under every engine.
"""

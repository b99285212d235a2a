"""The built-in toy world: the testbed on which every method trains on two CPU cores and is measured exactly.

Everything specific to it lives here, apart from the real-model path (Wan2.1, umT5, users' videos):
``world`` (the procedural text-to-video world) and ``vocabulary``, ``codec`` (exact space-to-depth) and
``text_encoder`` (one-hot words), ``shards`` (its videos as webdataset samples), ``exact_teacher`` (the closed-form
score over a bank of clean videos) and ``exact_bank`` (that bank for the world's captions), ``attributes`` (the
attribute reader), ``feature_net`` and ``feature_net_module`` (the feature network behind FD/KID and how it is
trained), ``bank_metrics`` and ``evaluation`` (the held-out sets and their scoring), ``evaluation_callback``
(``ToyEvaluation``, in-training curves). docs/toy_world.md describes the world.
"""

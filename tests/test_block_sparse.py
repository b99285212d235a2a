"""Block-sparse attention (flex attention's BlockMask) for the full-sequence paths, against the dense token mask."""

import warnings

import pytest
import torch
from torch.nn.attention.flex_attention import create_block_mask

from conftest import TINY_WAN
from oneforcing.engines.memory import traced_peak
from oneforcing.models.block_layout import BlockLayout, expand_to_tokens, frame_visibility, teacher_forcing_visibility
from oneforcing.models.block_sparse import block_sparse_mask, resolve_backend
from oneforcing.models.causal_wan import CausalWanBackbone
from oneforcing.models.wan import WanConfig

CFG = WanConfig(**TINY_WAN)
B, F, C, H, W = 2, 12, 12, 10, 10  # 25 tokens per frame: frames straddle the 128-token tiles, the last tile is cut
LAYOUTS = {"framewise": dict(block_size=1), "chunkwise": dict(block_size=3),
           "first4then1": dict(block_size=1, first_block_size=4),
           "rolling window": dict(block_size=1, window_frames=4, sink_frames=1),
           "chunkwise window": dict(block_size=3, window_frames=6, sink_frames=3)}

pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")


def pair(name: str) -> tuple[CausalWanBackbone, CausalWanBackbone]:
    torch.manual_seed(0)
    dense = CausalWanBackbone(CFG, attention="dense", **LAYOUTS[name]).eval()
    sparse = CausalWanBackbone(CFG, attention="block_sparse", **LAYOUTS[name]).eval()
    sparse.load_state_dict(dense.state_dict())
    return dense, sparse


def inputs():
    g = torch.Generator().manual_seed(1)
    return (torch.randn(B, F, C, H, W, generator=g), torch.rand(B, F, generator=g),
            torch.randn(B, 5, CFG.text_dim, generator=g), torch.randn(B, F, C, H, W, generator=g))


@pytest.mark.parametrize("name", LAYOUTS)
def test_block_sparse_equals_dense_on_every_full_sequence_path(name):
    dense, sparse = pair(name)
    x, sigma, context, clean = inputs()
    with torch.no_grad():
        for path in ("full sequence", "teacher forcing"):
            args = (x, sigma, context) if path == "full sequence" else (x, sigma, context, clean)
            call = "forward" if path == "full sequence" else "forward_teacher_forcing"
            a, b = getattr(dense, call)(*args), getattr(sparse, call)(*args)
            assert (a - b).abs().max() <= 1e-5, f"{name}, {path}"
    assert all(k[1] == "block_sparse" for k in sparse._masks) and all(k[1] == "dense" for k in dense._masks)


def tiles(mask):
    """Per query tile: the set of partial and the set of full key tiles."""
    n, idx = mask.kv_num_blocks[0, 0], mask.kv_indices[0, 0]
    fn, fidx = mask.full_kv_num_blocks[0, 0], mask.full_kv_indices[0, 0]
    return [(set(idx[i, :n[i]].tolist()), set(fidx[i, :fn[i]].tolist())) for i in range(len(n))]


@pytest.mark.parametrize("tokens_per_frame", [7, 48, 200])
@pytest.mark.parametrize("name", LAYOUTS)
def test_tiles_match_flex_attentions_own_constructor(name, tokens_per_frame):
    """Built from frame prefix sums, the tiles are those create_block_mask finds by evaluating every token pair."""
    kw = LAYOUTS[name]
    layout = BlockLayout(12, kw["block_size"], kw.get("first_block_size"))
    window = dict(window_frames=kw.get("window_frames"), sink_frames=kw.get("sink_frames", 0))
    for visibility in (frame_visibility(layout, **window), teacher_forcing_visibility(layout, **window)):
        S = visibility.shape[0] * tokens_per_frame
        dense = expand_to_tokens(visibility, tokens_per_frame)
        reference = create_block_mask(lambda b, h, q, k: dense[q, k], None, None, S, S, device="cpu")
        assert tiles(block_sparse_mask(visibility, tokens_per_frame)) == tiles(reference)


def test_the_mask_at_wan_length_is_megabytes_not_gigabytes():
    """Teacher forcing at the Wan recipes' length: 2 × 21 latent frames × 1 560 tokens = 65 520 tokens."""
    visibility = teacher_forcing_visibility(BlockLayout(21, 1))
    mask = block_sparse_mask(visibility, 1560)
    sparse_bytes = sum(t.nbytes for t in (mask.kv_num_blocks, mask.kv_indices, mask.full_kv_num_blocks,
                                          mask.full_kv_indices, mask.q_num_blocks, mask.q_indices,
                                          mask.full_q_num_blocks, mask.full_q_indices))
    dense_bytes = (42 * 1560) ** 2  # bool
    assert dense_bytes > 4e9 and sparse_bytes < 8e6
    assert 0.6 < mask.sparsity() / 100 < 0.8, "about 3/4 of the tiles are skipped"


def test_auto_is_dense_on_the_cpu_and_block_sparse_elsewhere():
    assert resolve_backend("auto", torch.device("cpu")) == "dense"
    assert resolve_backend("auto", torch.device("meta")) == "block_sparse"  # the plan traces the GPU's step
    assert resolve_backend("dense", torch.device("meta")) == "dense"
    with pytest.raises(ValueError, match="'flash'.*'auto', 'dense', 'block_sparse'"):
        CausalWanBackbone(CFG, attention="flash")


def test_training_block_sparse_on_the_cpu_fails_clearly():
    _, sparse = pair("framewise")
    x, sigma, context, _ = inputs()
    with pytest.raises(RuntimeError, match="no backward.*attention='auto'"):
        sparse(x, sigma, context)


def test_the_memory_plan_counts_the_dense_mask_and_not_a_block_sparse_one():
    """The plan's trace of one training step at 40 frames × 100 tokens: the dense run's peak exceeds the
    block-sparse run's by the (S, S) bool mask (16 MB), give or take the sparse mask's own kilobytes."""
    peaks = {}
    for backend in ("dense", "block_sparse"):
        with torch.device("meta"):
            model = CausalWanBackbone(CFG, attention=backend)
        x = torch.empty(1, 40, C, 20, 20, device="meta")
        sigma, context = torch.empty(1, 40, device="meta"), torch.empty(1, 5, CFG.text_dim, device="meta")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            peaks[backend] = traced_peak(lambda: model(x, sigma, context).sum().backward(), list(model.parameters()))
    mask_bytes = (40 * 100) ** 2
    assert abs((peaks["dense"] - peaks["block_sparse"]) - mask_bytes) < 0.02 * mask_bytes, peaks

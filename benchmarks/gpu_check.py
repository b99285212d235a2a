"""The GPU check, in one call: what the real path does on a CUDA device, as JSON (docs/benchmarks.md).

Four sections, each timed and reported on its own (a failing section records its traceback; the exit code is 1):

- ``chain``: the tiny random Wan2.1 folder (``oneforcing tiny-wan``), its prompts cached (``data prompts``), a
  2-iteration Self-Forcing DMD fit of the shrunk Wan recipe on the device in ``bf16-mixed``, its export, and a
  streamed sample from the export on the device;
- ``attention``: the teacher-forcing full-sequence attention of a Wan2.1-1.3B layer (12 heads of 128, framewise
  layout, the clean half included), dense mask + SDPA against block-sparse flex attention (compiled), forward and
  backward, time and peak memory, from 3 latent frames up to 21 or until a backend runs out of memory;
- ``streaming``: a Wan2.1-1.3B-shaped random student at 480×832 (60 × 104 latents, 1 560 tokens per frame)
  streaming 21 latent frames 1-step framewise in bf16: time to the first frame, steady per-frame latency, frames
  per second, eager and with ``torch.compile`` of the per-block call;
- ``training``: one generator and one critic step of the One-Forcing framewise recipe with 1.3B-shaped generator,
  critic and teacher at 3 latent frames, bf16 autocast, on one device: time and peak memory beside the memory
  plan's prediction for the same module (``oneforcing plan``'s trace, DDP on one device).

    python benchmarks/gpu_check.py --out gpu_check.json        # on a CUDA machine: about 5 minutes on one H100
    python benchmarks/gpu_check.py --cpu-smoke --out smoke.json # the same code at toy sizes on the CPU (the suite)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from contextlib import nullcontext
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
WAN_1_3B = dict(num_layers=30, num_attention_heads=12, attention_head_dim=128, ffn_dim=8960, in_channels=16,
                out_channels=16, text_dim=4096)
SMOKE = dict(WAN_1_3B, num_attention_heads=1, attention_head_dim=12, ffn_dim=16)  # 30 thin layers, umT5-wide text


class Clock:
    """Wall time that waits for the device's queued work."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __call__(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def is_oom(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


# --- sections ----------------------------------------------------------------------------------------------
def check_chain(device: torch.device, smoke: bool, work: Path) -> dict:
    from oneforcing.cli import OneForcingCLI, main
    from oneforcing.lightning_modules.checkpoints import load_trained_module
    from oneforcing.models.tiny_wan import tiny_recipe, write_tiny_wan

    clock, times = Clock(device), {}
    start = clock()
    folder = write_tiny_wan(work / "tiny-wan")
    prompts = work / "prompts.txt"
    prompts.write_text("a cat walks on the beach at sunset\na drone flies over a snowy mountain\n")
    for split in ("train", "val"):
        main(["data", "prompts", "--prompts", str(prompts), "--model-dir", str(folder), "--out",
              str(work / "prompts" / split)])
    times["folder_and_prompts_s"] = clock() - start
    recipe = tiny_recipe(REPO / "configs" / "wan2.1" / "self_forcing_dmd_1step.yaml", folder, work / "prompts",
                         work / "fit", accelerator="cpu" if smoke else "gpu",
                         precision="32-true" if smoke else "bf16-mixed")
    start = clock()
    cli = OneForcingCLI(args=["fit", "--config", str(recipe)])
    times["fit_2_iterations_s"] = clock() - start
    export = Path(cli.trainer.log_dir) / "weights.safetensors"
    module = load_trained_module(export).to(device)
    start = clock()
    with torch.no_grad():
        videos = module.generate(["a cat walks on the beach at sunset"])
    times["sample_s"] = clock() - start
    return dict(**times, iterations=int(cli.trainer.global_step), export=export.is_file(),
                sample_shape=list(videos.shape), sample_finite=bool(torch.isfinite(videos).all()))


def check_attention(device: torch.device, smoke: bool) -> dict:
    from oneforcing.models.block_layout import BlockLayout, expand_to_tokens, teacher_forcing_visibility
    from oneforcing.models.block_sparse import block_sparse_attention, block_sparse_mask

    heads, dim, tokens = (2, 16, 48) if smoke else (12, 128, 1560)
    dtype = torch.float32 if smoke else torch.bfloat16
    backward = not smoke  # flex attention has no backward on the CPU
    clock, rows, out_of_memory = Clock(device), [], set()
    for frames in ((2, 4) if smoke else (3, 6, 9, 12, 15, 18, 21)):
        visibility = teacher_forcing_visibility(BlockLayout(frames, 1))  # (2F, 2F)
        S = visibility.shape[0] * tokens
        row = dict(latent_frames=frames, tokens=S)
        outputs = {}
        for backend in ("dense", "block_sparse"):
            if backend in out_of_memory:
                row[backend] = "out of memory (at fewer frames)"
                continue
            try:
                reset_peak(device)
                mask = (expand_to_tokens(visibility, tokens).to(device) if backend == "dense"
                        else block_sparse_mask(visibility, tokens, device))
                g = torch.Generator(device=device).manual_seed(0)
                q, k, v = (torch.randn(1, heads, S, dim, generator=g, device=device, dtype=dtype).requires_grad_(backward)
                           for _ in range(3))
                times = []
                for _ in range(3):  # the first call compiles flex attention; the best of the rest is kept
                    start = clock()
                    with nullcontext() if backward else torch.no_grad():
                        out = (torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
                               if backend == "dense" else block_sparse_attention(q, k, v, mask))
                        if backward:
                            out.float().square().mean().backward()
                    times.append(clock() - start)
                outputs[backend] = out.detach().float()
                row[backend] = dict(ms=1000 * min(times[1:]), peak_gib=peak_gib(device))
                del q, k, v, out, mask
            except Exception as error:  # noqa: BLE001 - an OOM is a result here; anything else is re-raised
                if not is_oom(error):
                    raise
                out_of_memory.add(backend)
                row[backend] = "out of memory"
        if len(outputs) == 2:
            row["max_abs_difference"] = float((outputs["dense"] - outputs["block_sparse"]).abs().max())
        rows.append(row)
        if out_of_memory == {"dense", "block_sparse"}:
            break
    return dict(heads=heads, head_dim=dim, tokens_per_frame=tokens, dtype=str(dtype), backward=backward, rows=rows)


def check_streaming(device: torch.device, smoke: bool, compile_too: bool) -> dict:
    from oneforcing.models.causal_wan import CausalWanBackbone
    from oneforcing.models.wan import WanConfig
    from oneforcing.sampling.streaming import StreamingSampler, per_prompt_generators

    config = WanConfig(**(SMOKE if smoke else WAN_1_3B))
    dtype = torch.float32 if smoke else torch.bfloat16
    latent, frames = ((16, 4, 4), 4) if smoke else ((16, 60, 104), 21)
    torch.manual_seed(0)
    model = CausalWanBackbone(config, block_size=1).to(device=device, dtype=dtype).eval()
    context = torch.randn(1, 512, config.text_dim, device=device, dtype=dtype)
    clock, result = Clock(device), dict(latent_frames=frames, latent=list(latent), dtype=str(dtype))
    variants = [("eager", None)] + ([("compiled", torch.compile(model.forward_cached))] if compile_too else [])
    for name, compiled in variants:
        if compiled is not None:
            model.forward_cached = compiled
        sampler = StreamingSampler(model, [1.0])
        for attempt in range(2):  # the first stream warms up (and compiles)
            stamps = [clock()]
            for _ in sampler.stream(context, frames, latent, per_prompt_generators(0, 1)):
                stamps.append(clock())
        per_frame = [1000 * (b - a) for a, b in zip(stamps[:-1], stamps[1:])]
        result[name] = dict(first_frame_ms=per_frame[0], steady_frame_ms=statistics.median(per_frame[1:]),
                            fps=frames / (stamps[-1] - stamps[0]))
        if compiled is not None:
            del model.forward_cached  # the class method again
    if compile_too:
        result["compiled_over_eager_fps"] = result["compiled"]["fps"] / result["eager"]["fps"]
    return result


def check_training(device: torch.device, smoke: bool) -> dict:
    import yaml

    from oneforcing.cli import OneForcingCLI
    from oneforcing.commands.plan import fake_batch, plan_module
    from oneforcing.engines.memory import EngineSettings

    # the smoke runs the toy One-Forcing recipe (6 layers, the same objectives) at 1 head of 12 channels
    recipe = REPO / "configs" / ("toy/one_forcing_framewise_1step.yaml" if smoke else "wan2.1/one_forcing_framewise.yaml")
    recorded = yaml.safe_load(recipe.read_text())["model"]["init_args"]["backbone"]
    backbone = dict(recorded, num_attention_heads=1, attention_head_dim=12, ffn_dim=16) if smoke else WAN_1_3B

    def build():
        args = ["--config", str(recipe), "--trainer.accelerator", "cpu", "--trainer.devices", "1",
                "--trainer.strategy", "auto", "--trainer.logger", "false", "--model.init_args.num_frames", "3",
                "--model.init_args.gradient_window_frames", "3", "--model.init_args.backbone", json.dumps(backbone),
                "--model.init_args.teacher_backbone", json.dumps(backbone)]
        return OneForcingCLI(args=args, run=False).model

    predicted = plan_module(build(), EngineSettings("ddp", 1), batch_size=1, precision="bf16-mixed")
    module = build()
    module.build_roles(load_weights=False)
    module.to(device)
    batch = {k: torch.randn(v.shape, device=device) if isinstance(v, torch.Tensor) else v
             for k, v in fake_batch(module, 1).items()}
    context = torch.randn(1, module.text_encoder.context_length, backbone["text_dim"], device=device)
    clock, result = Clock(device), {}
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    for side in ("generator", "critic"):
        for attempt in range(2):  # the second one is timed
            reset_peak(device)
            start = clock()
            with autocast:
                loss, _ = module.step_loss(side, batch, context, torch.zeros_like(context))
                loss.backward()
            elapsed = clock() - start
            module.zero_grad(set_to_none=True)
        result[side] = dict(seconds=elapsed, peak_gib=peak_gib(device), loss=float(loss),
                            predicted_activations_gib=predicted.activations[side] / 2**30)
    result["predicted_total_gib"] = predicted.total / 2**30
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    parser.add_argument("--cpu-smoke", action="store_true", help="toy sizes on the CPU: the code paths, not the figures")
    parser.add_argument("--sections", nargs="+", default=["chain", "attention", "streaming", "training"],
                        choices=["chain", "attention", "streaming", "training"])
    parser.add_argument("--no-compile", action="store_true", help="streaming: eager only")
    args = parser.parse_args()
    if not args.cpu_smoke and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device here. Run it on a GPU machine, or pass --cpu-smoke for the same "
                         "code at toy sizes on the CPU.")
    device = torch.device("cpu" if args.cpu_smoke else "cuda")
    report = dict(device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                  torch=torch.__version__, smoke=args.cpu_smoke, sections={})
    warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.sections:
            start = time.perf_counter()
            try:
                if name == "chain":
                    out = check_chain(device, args.cpu_smoke, Path(tmp))
                elif name == "attention":
                    out = check_attention(device, args.cpu_smoke)
                elif name == "streaming":
                    out = check_streaming(device, args.cpu_smoke, not args.no_compile)
                else:
                    out = check_training(device, args.cpu_smoke)
                report["sections"][name] = dict(ok=True, seconds=time.perf_counter() - start, **out)
            except Exception:  # noqa: BLE001 - recorded in the report, and the exit code says so
                report["sections"][name] = dict(ok=False, seconds=time.perf_counter() - start,
                                                error=traceback.format_exc())
            print(f"{name}: {'ok' if report['sections'][name]['ok'] else 'FAILED'} "
                  f"({report['sections'][name]['seconds']:.1f} s)", file=sys.stderr)
    args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    if not all(s["ok"] for s in report["sections"].values()):
        raise SystemExit(1)


if __name__ == "__main__":
    main()

"""``oneforcing serve``: a local web page that streams a causal student, with prompt switching mid-stream.

The server binds to 127.0.0.1 unless ``--host`` says otherwise; the page sends only prompts and seeds (no path or
file is read from it). Each open page gets its own stream up to ``--max-streams``; the next one is told the server
is busy. Streams are endless: the student attends to a rolling window of ``--window`` latent frames (default: its
training length), so memory stays flat.
"""

from __future__ import annotations

import logging

import torch
from jsonargparse import ActionConfigFile, ArgumentParser
from rich.console import Console

from oneforcing.commands.sample import add_released_arguments
from oneforcing.lightning_modules.checkpoints import load_for_sampling, streaming_sampler_from
from oneforcing.serving.app import Student, create_app, prompt_problem

DEFAULT_TOY_PROMPT = "a large red circle moving right slowly"


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="oneforcing serve", description=__doc__.split("\n\n")[0].split(": ", 1)[1],
                       epilog="The page reads no file path: it sends prompts and seeds only. The server listens on "
                              "127.0.0.1 (this machine only) unless --host names another address.")
    p.add_argument("--config", action=ActionConfigFile)
    p.add_argument("--checkpoint", type=str, required=True,
                   help=".ckpt, exported .safetensors, or with --released-config a reference trainer's released .pt")
    add_released_arguments(p)
    p.add_argument("--host", type=str, default="127.0.0.1",
                   help="address to listen on (127.0.0.1: this machine only; 0.0.0.0 exposes the page to the network)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--prompt", type=str | None, default=None, help="the prompt the page starts with")
    p.add_argument("--max-streams", "--max_streams", dest="max_streams", type=int, default=2,
                   help="pages streamed at once; the next page is told the server is busy")
    p.add_argument("--max-fps", "--max_fps", dest="max_fps", type=float, default=24.0,
                   help="frames per second sent to a page at most (0: as fast as the student makes them)")
    p.add_argument("--window", type=int | None, default=None,
                   help="rolling attention window in latent frames (default: the student's training length)")
    p.add_argument("--sink", type=int, default=0, help="sink frames kept in the rolling window")
    p.add_argument("--recache", type=bool, default=True,
                   help="on a prompt switch, re-encode the window's frames under the new prompt (true, LongLive's "
                        "re-caching) or keep their old keys and values (false)")
    p.add_argument("--steps", type=int | None, default=None,
                   help="denoising steps per block (default: the student's training schedule)")
    p.add_argument("--first-block-steps", "--first_block_steps", dest="first_block_steps", type=int | None,
                   default=None, help="steps of the first block (default: the student's)")
    p.add_argument("--ema", type=bool | None, default=None,
                   help="true the generator's EMA weights, false its raw weights (default: the EMA when present)")
    p.add_argument("--device", type=str | None, default=None,
                   help="where the student runs: cpu, cuda, cuda:1 ... (default: cuda when available, else cpu)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for the student (torch.set_num_threads)")
    return p


def load_student(checkpoint: str, released_config: str | None = None, model_dir: str | None = None,
                 prompt: str | None = None, window: int | None = None, sink: int = 0, recache: bool = True,
                 steps: int | None = None, first_block_steps: int | None = None,
                 ema: bool | None = None, device: str | None = None) -> tuple[Student, str]:
    """The ``Student`` the page streams and which weights it uses, on ``device`` (default: CUDA when available)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device} asks for a GPU, but torch sees no CUDA device here; use --device cpu.")
    module = load_for_sampling(checkpoint, released_config, model_dir)
    if not hasattr(module, "generator_weights") and released_config is None:
        raise ValueError(f"{checkpoint} holds a bidirectional teacher, which cannot stream; serve a causal student "
                         "(a distillation checkpoint or its export).")
    window = window or module.hparams.num_frames
    if window < 1 or sink < 0:
        raise ValueError(f"--window={window} must be >= 1 and --sink={sink} >= 0.")
    sampler, weights = streaming_sampler_from(module, steps=steps, first_block_steps=first_block_steps,
                                              window_frames=window, sink_frames=sink, ema=ema)
    module.to(device)
    sampler.model.to(device)
    default = prompt or (DEFAULT_TOY_PROMPT if hasattr(module.text_encoder, "vocabulary") else "")

    def encode(prompts: list[str]) -> torch.Tensor:
        return module.encode_prompts(prompts)

    student = Student(sampler=sampler, encode=encode, decode=module.codec.decode,
                      latent_shape=module.latent_shape(), default_prompt=default, recache=recache)
    if default and (problem := prompt_problem(default, student)):
        raise ValueError(f"--prompt: {problem}")
    return student, weights


def serve_command(argv: list[str]) -> None:
    cfg = build_parser().parse_args(argv)
    import uvicorn

    if cfg.threads < 1:
        raise ValueError(f"--threads={cfg.threads} must be >= 1.")
    torch.set_num_threads(cfg.threads)
    student, weights = load_student(cfg.checkpoint, cfg.released_config, cfg.model_dir, cfg.prompt, cfg.window,
                                    cfg.sink, cfg.recache, cfg.steps, cfg.first_block_steps, cfg.ema, cfg.device)
    app = create_app(student, max_streams=cfg.max_streams, max_fps=cfg.max_fps)
    logging.basicConfig(level=logging.INFO, format="[oneforcing] %(message)s")
    device = next(student.sampler.model.parameters()).device
    Console().print(f"[green]Streaming {cfg.checkpoint} ({weights} weights, {device}) at http://{cfg.host}:{cfg.port}/ "
                    f"(Ctrl+C stops)", highlight=False)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning")

"""The ``oneforcing`` console script.

``fit | validate | test | predict`` come from LightningCLI (YAML configs, ``--print_config``, dotted
overrides, the config saved next to the logs). The other commands (``data``, ``sample``, ``evaluate``,
``compare``, ``vbench``) follow the
same conventions through jsonargparse parsers: ``--config`` YAML, ``--help``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from oneforcing.lightning_cli import OneForcingCLI

__all__ = ["OneForcingCLI", "main"]


def _extra_commands() -> dict[str, Callable[[list[str]], None]]:
    from oneforcing.commands.compare import compare_command
    from oneforcing.commands.data import data_command
    from oneforcing.commands.evaluate import evaluate_command
    from oneforcing.commands.export import export_command
    from oneforcing.commands.plan import plan_command
    from oneforcing.commands.sample import sample_command
    from oneforcing.commands.serve import serve_command
    from oneforcing.commands.tiny_wan import tiny_wan_command
    from oneforcing.commands.vbench import vbench_command

    return {"data": data_command, "sample": sample_command, "evaluate": evaluate_command, "compare": compare_command,
            "vbench": vbench_command, "tiny-wan": tiny_wan_command, "export": export_command,
            "plan": plan_command, "serve": serve_command}


OVERVIEW = """oneforcing — One-Forcing and its baselines on one Lightning harness.

commands:
  fit | validate | test | predict   Lightning training/evaluation from a YAML config (oneforcing fit --help)
  data toy                          write the built-in toy world as webdataset shards
  data encode | prompts             your videos + captions / prompts -> Wan VAE latents, umT5 embeddings in shards
  data trajectories                 a teacher's ODE trajectories as shards (trajectory distillation)
  sample                            videos (GIF/MP4) from a trained checkpoint and prompts
  serve                             a local web page streaming a causal student live, prompts switchable mid-stream
  evaluate                          toy-world metrics of one checkpoint or run (JSON + markdown)
  compare                           evaluations of several methods/seeds -> table, plots, GIF grid
  vbench                            a prompt file -> {prompt}-{index}.mp4 videos for VBench
  export                            a checkpoint (.ckpt or fsdp2 folder) -> whole weights in one safetensors file
  plan                              memory per device of a training config under ddp / fsdp2 / zero2 / zero3 (meta device)
  tiny-wan                          a tiny random Wan2.1 diffusers folder (+ a released-format .pt) to try the real path
"""


# what a command raises for bad input (a missing file, a word outside the vocabulary, a corrupt checkpoint): one
# message naming the problem and the fix, without a traceback (set ONEFORCING_TRACEBACK=1 to see it)
USER_ERRORS = (ValueError, KeyError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = _extra_commands()
    if argv and argv[0] in extra:
        try:
            extra[argv[0]](argv[1:])
        except USER_ERRORS as error:
            if os.environ.get("ONEFORCING_TRACEBACK"):
                raise
            message = error.args[0] if isinstance(error, KeyError) and error.args else error
            print(f"oneforcing {argv[0]}: error: {message}\n(ONEFORCING_TRACEBACK=1 shows where it was raised)",
                  file=sys.stderr)
            raise SystemExit(2) from None
        return
    if not argv or argv[0] in ("-h", "--help"):
        print(OVERVIEW)
    # args=None when these are the process's own arguments (LightningCLI warns when both are given)
    OneForcingCLI(args=None if argv == sys.argv[1:] else argv)


if __name__ == "__main__":
    main()

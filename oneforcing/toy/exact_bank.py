"""The toy world's exact teacher: a bank of the world's one-object videos per caption (docs/toy_world.md).

``ExactToyTeacher`` renders ``bank_size_per_caption`` videos of each caption with ``make_video_of`` (the
caption's attributes fixed, its free variables drawn), encodes them with the toy codec and the captions with
the toy text encoder, and is then an ``oneforcing.toy.exact_teacher.ExactTeacher``: the teacher role of
any toy recipe, by one config change (``model.init_args.teacher``). ``caption_videos`` renders the same
videos as pixels, for the bank metrics (``oneforcing.toy.bank_metrics``) without building a teacher.

Memory of the bank: captions × per caption × F×C×H×W × 2 bytes (float16); the default (384 captions × 16
videos of 12 frames, 12×16×16 latents) is 384 · 16 · 36 864 · 2 B = 453 MB (432 MiB). Building it renders
6 144 videos (≈ 3 ms each on one core).
"""

from __future__ import annotations

import itertools
import sys

import numpy as np
import torch
from rich.console import Console
from rich.progress import track

from oneforcing.toy.codec import SpaceToDepthCodec
from oneforcing.toy.exact_teacher import DEFAULT_CHUNK_SIZE, DEFAULT_MIN_SIGMA, ExactTeacher
from oneforcing.toy.text_encoder import ToyTextEncoder
from oneforcing.toy.vocabulary import COLOURS, DIRECTIONS, SHAPES, SIZES, SPEEDS
from oneforcing.toy.world import BACKGROUNDS, Background, make_video_of, parse_caption

BANK_SEED = 12345  # disjoint from the training streams (seeds 0 and 1_000_003) and evaluate's 424242
PROGRESS_FROM = 64  # captions from which building the bank shows a progress bar


def one_object_captions() -> list[str]:
    """Every one-object caption of the toy vocabulary (2 sizes × 8 colours × 3 shapes × 4 directions × 2
    speeds = 384), in vocabulary order."""
    words = itertools.product(SIZES, COLOURS, SHAPES, DIRECTIONS, SPEEDS)
    return [f"a {size} {colour} {shape} moving {direction} {speed}" for size, colour, shape, direction, speed in words]


def caption_videos(caption: str, count: int, seed: int = BANK_SEED, num_frames: int = 12, frame_size: int = 32,
                   background: Background = "flat") -> torch.Tensor:
    """The bank's ``count`` clean videos of ``caption``, (count, F, 3, H, W) float32 in [-1, 1].

    Video i is ``make_video_of(caption, seed, i)``: the same for any subset of captions or a larger ``count``.
    """
    pixels = np.stack([make_video_of(caption, seed, i, num_frames=num_frames, size=frame_size,
                                     background=background).pixels for i in range(count)])  # (count, F, 3, H, W)
    return torch.from_numpy(pixels).float() / 127.5 - 1.0


def caption_problems(captions: list[str]) -> list[str]:
    """Why ``captions`` cannot index a bank of one-object videos (empty when they can)."""
    problems = []
    for caption in captions:
        try:
            if len(parse_caption(caption)) != 1:
                problems.append(f"{caption!r} names two objects; the exact teacher covers one-object captions")
        except ValueError as error:
            problems.append(str(error))
    repeated = sorted({c for c in captions if captions.count(c) > 1})
    if repeated:
        problems.append(f"captions repeat {repeated}; list each once")
    return problems


class ExactToyTeacher(ExactTeacher):
    """The exact teacher over a rendered bank of toy videos (YAML: ``teacher: {class_path: ..., init_args: ...}``).

    Args:
        bank_size_per_caption: videos per caption (memory grows linearly; see the module docstring).
        captions: the bank's captions; None: every one-object caption of the vocabulary (384).
        seed: the bank's stream (``BANK_SEED`` by default: no video of the training or evaluation data).
        num_frames, frame_size: the videos' length and side in pixels (the student's).
        spatial_factor: the toy space-to-depth codec's factor, the student's (2: 12 latent channels, 64 tokens per
            32×32 frame; 4: 48 channels, 16 tokens).
        background: the world's background ("flat": the default world).
        unconditional_prompt: the prompt whose embedding selects the whole bank (CFG's unconditional branch);
            it must be the module's ``negative_prompt``.
        min_sigma, chunk_size: numerics of ``ExactTeacher``.
    """

    def __init__(self, bank_size_per_caption: int = 16, captions: list[str] | None = None, seed: int = BANK_SEED,
                 num_frames: int = 12, frame_size: int = 32, background: Background = "flat",
                 unconditional_prompt: str = "", min_sigma: float = DEFAULT_MIN_SIGMA,
                 chunk_size: int = DEFAULT_CHUNK_SIZE, spatial_factor: int = 2) -> None:
        captions = one_object_captions() if captions is None else list(captions)
        problems = caption_problems(captions)
        if bank_size_per_caption < 1:
            problems.append(f"bank_size_per_caption={bank_size_per_caption} must be >= 1")
        if not captions:
            problems.append("captions is empty; name at least one caption or pass null for all 384")
        if spatial_factor < 1 or frame_size % spatial_factor:
            problems.append(f"spatial_factor={spatial_factor} must be >= 1 and divide frame_size={frame_size}")
        if background not in BACKGROUNDS:
            problems.append(f"background={background!r} is not one of {BACKGROUNDS}")
        encoder = ToyTextEncoder()
        try:
            uncond = encoder([unconditional_prompt])[0]  # (L, D)
        except ValueError as error:
            problems.append(f"unconditional_prompt: {error}")
        if problems:
            raise ValueError("Invalid ExactToyTeacher config:\n  - " + "\n  - ".join(problems))
        codec = SpaceToDepthCodec(factor=spatial_factor)
        f = codec.spatial_factor
        per = bank_size_per_caption
        shape = (num_frames, codec.latent_channels, frame_size // f, frame_size // f)
        bank = torch.empty(len(captions) * per, *shape, dtype=torch.float16)  # filled caption by caption
        console = Console(stderr=True)
        console.print(f"[oneforcing] exact teacher: {len(captions)} captions × {per} videos, "
                      f"bank {bank.numel() * 2 / 2**20:.1f} MiB (float16)", markup=False, highlight=False)
        rows = track(range(len(captions)), description="rendering the exact teacher's bank", console=console,
                     disable=len(captions) < PROGRESS_FROM or not sys.stderr.isatty(), transient=True)
        for k in rows:
            videos = caption_videos(captions[k], per, seed, num_frames, frame_size, background)
            bank[k * per: (k + 1) * per] = codec.encode(videos).to(torch.float16)  # (per, F, C, h, w)
        index = torch.arange(len(captions)).repeat_interleave(per)
        hint = ("build the bank with captions=[...] naming every prompt, or captions=null for all 384 one-object "
                "captions (two-object captions have no exact teacher)")
        super().__init__(bank, index, encoder(captions), uncond, captions=captions, missing_caption_hint=hint,
                         min_sigma=min_sigma, chunk_size=chunk_size)
        self.codec, self.text_encoder = codec, encoder
        self.bank_size_per_caption, self.seed = per, seed
        self.num_frames, self.frame_size, self.background = num_frames, frame_size, background

    def describe_context(self, context: torch.Tensor) -> str:
        """The prompt a toy context (L, D) encodes (one-hot word ⊕ position per token), quoted."""
        vocabulary = self.text_encoder.vocabulary
        words = [vocabulary[int(row[: len(vocabulary)].argmax())] for row in context.float().cpu()
                 if bool(row[: len(vocabulary)].any())]
        return repr(" ".join(words))

    def caption_pixels(self, caption: str) -> torch.Tensor:
        """The bank's clean pixel videos of ``caption`` (n, F, 3, H, W) float32 in [-1, 1] (decoded float16)."""
        if caption not in self.captions:
            raise KeyError(f"The bank has no videos of {caption!r}; build it with that caption in captions.")
        latents = self.entries_of(self.captions.index(caption)).float()
        return self.codec.decode(latents.cpu())


class ExactTeacherSampler:
    """The exact teacher as a model to evaluate (``oneforcing evaluate --checkpoint exact``): its many-step Euler
    samples, the ceiling row of every toy table (a perfect student of the exact teacher draws these).

    Mirrors a trained teacher's ``generate`` (one noise generator per prompt, CFG weight ``guidance_scale``;
    w = 1 samples the bank's own distribution).
    """

    def __init__(self, num_frames: int, frame_size: int = 32, bank_size_per_caption: int = 16, seed: int = BANK_SEED,
                 steps: int = 48, shift: float = 5.0, guidance_scale: float = 1.0) -> None:
        from types import SimpleNamespace

        self.teacher = ExactToyTeacher(bank_size_per_caption=bank_size_per_caption, seed=seed, num_frames=num_frames,
                                       frame_size=frame_size)
        self.codec = self.teacher.codec
        self.shift, self.guidance_scale = shift, guidance_scale
        self.hparams = SimpleNamespace(num_frames=num_frames, frame_size=frame_size, sample_steps=steps)

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        return self.teacher.text_encoder(prompts)

    def generate(self, prompts: list[str], seed: int = 0, num_steps: int | None = None) -> torch.Tensor:
        """Pixel videos (B, F, 3, H, W) in [-1, 1]; prompt i's noise from Generator(seed + i)."""
        from oneforcing.models.flow_matching import euler_sigmas
        from oneforcing.sampling.euler import euler_sample

        f = self.codec.spatial_factor
        shape = (self.hparams.num_frames, self.codec.latent_channels, self.hparams.frame_size // f,
                 self.hparams.frame_size // f)
        noise = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(seed + i))
                             for i in range(len(prompts))])
        sigmas = euler_sigmas(num_steps or self.hparams.sample_steps, self.shift)
        latents = euler_sample(self.teacher, noise, self.encode_prompts(prompts), sigmas,
                               self.encode_prompts([""] * len(prompts)), self.guidance_scale)
        return self.codec.decode(latents)

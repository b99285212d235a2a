"""A Wan2.1 diffusers folder (``Wan2.1-T2V-1.3B-Diffusers`` and alike) as one setting.

The folder holds ``transformer/`` (``WanTransformer3DModel``), ``vae/`` (``AutoencoderKLWan``),
``text_encoder/`` (umT5, transformers' ``UMT5EncoderModel``) and ``tokenizer/``. ``WanModelFolder`` gives the
sub-paths and checks the layout and the parts' ``config.json`` files against what the project will build from
them (backbone shapes, latent channels, text width), reading JSON only: no weights are loaded, so a wrong folder
fails when the config is built, naming the part and the fix. The tokenizer's vocabulary is checked against the
text encoder's when the encoder loads (``UMT5TextEncoder.load``), since that needs the tokenizer itself.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

PARTS = {"transformer": "WanTransformer3DModel", "vae": "AutoencoderKLWan", "text_encoder": "UMT5EncoderModel",
         "tokenizer": None}
TOKENIZER_FILES = ("tokenizer.json", "spiece.model", "tokenizer_config.json")
# WanConfig fields as WanTransformer3DModel's config.json names them (the same names)
BACKBONE_FIELDS = ("num_layers", "num_attention_heads", "attention_head_dim", "ffn_dim", "in_channels", "out_channels",
                   "text_dim", "freq_dim", "patch_size", "cross_attn_norm", "qk_norm", "eps")
LAYOUT = "transformer/, vae/, text_encoder/ and tokenizer/ (the layout of Wan-AI/Wan2.1-T2V-1.3B-Diffusers)"


class WanModelFolder:
    """Sub-paths and checks of a local Wan2.1 diffusers folder."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @property
    def transformer(self) -> Path:
        return self.root / "transformer"

    @property
    def vae(self) -> Path:
        return self.root / "vae"

    @property
    def text_encoder(self) -> Path:
        return self.root / "text_encoder"

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer"

    @staticmethod
    def looks_like(path: str | Path) -> bool:
        """Whether ``path`` is the root of such a folder (has a ``transformer/`` sub-folder)."""
        return (Path(path) / "transformer").is_dir()

    def config(self, part: str) -> dict:
        return json.loads((self.root / part / "config.json").read_text())

    def layout_problems(self) -> list[str]:
        """Missing parts and parts of another class, each with its fix."""
        if not self.root.is_dir():
            return [f"{self.root} does not exist; point model_dir at a local Wan2.1 diffusers folder with {LAYOUT}"]
        problems = []
        for part, class_name in PARTS.items():
            folder = self.root / part
            if not folder.is_dir():
                problems.append(f"{self.root} has no {part}/ folder: it is not a Wan2.1 diffusers folder (expected "
                                f"{LAYOUT})")
            elif part == "tokenizer":
                if not any((folder / name).is_file() for name in TOKENIZER_FILES):
                    problems.append(f"{folder} holds none of {list(TOKENIZER_FILES)}; copy the tokenizer folder of "
                                    "the Wan2.1 diffusers release (umT5's tokenizer)")
            elif not (folder / "config.json").is_file():
                problems.append(f"{folder} has no config.json; save it with {class_name}.save_pretrained or copy "
                                "the part again")
            else:
                config = self.config(part)
                found = _class_of(config)
                umt5 = part == "text_encoder" and config.get("model_type") == "umt5"  # any umT5 class reads it
                if found != class_name and not umt5:
                    problems.append(f"{folder} holds a {found or 'model of unknown class'}, not a {class_name}: "
                                    f"this is not a Wan2.1 {part}; use the {part}/ of a Wan2.1 diffusers folder")
        return problems

    def problems(self, backbone=None, latent_channels: int | None = None, spatial_factor: int | None = None,
                 text_dim: int | None = None) -> list[str]:
        """Layout problems, then every mismatch with what will be built: ``backbone`` (a ``WanConfig``), the
        codec's ``latent_channels`` / ``spatial_factor`` and the text encoder's ``text_dim``."""
        problems = self.layout_problems()
        if problems:
            return problems
        if backbone is not None:
            recorded, own = self.config("transformer"), dataclasses.asdict(backbone)
            for field in BACKBONE_FIELDS:
                if field in recorded and _plain(recorded[field]) != _plain(own[field]):
                    problems.append(f"backbone.{field}={own[field]!r} but {self.transformer} has {recorded[field]!r}; "
                                    f"set backbone.{field}: {json.dumps(recorded[field])} (or use the matching model)")
        vae = self.config("vae")
        if latent_channels is not None and vae.get("z_dim") != latent_channels:
            problems.append(f"{self.vae} has {vae.get('z_dim')} latent channels (z_dim) but the codec and backbone "
                            f"expect {latent_channels}: it is not Wan2.1's VAE (16 channels); use the vae/ of a Wan2.1 "
                            "folder, or set codec latent_channels and backbone in/out_channels to match")
        factor = vae_spatial_factor(vae)
        if spatial_factor is not None and factor != spatial_factor:
            problems.append(f"{self.vae} compresses space {factor}x, the codec expects {spatial_factor}x; "
                            f"set codec spatial_factor: {factor}")
        text = self.config("text_encoder")
        if text_dim is not None and text.get("d_model") != text_dim:
            problems.append(f"{self.text_encoder} gives {text.get('d_model')}-dim tokens but the backbone's text_dim "
                            f"is {text_dim}; set backbone.text_dim: {text.get('d_model')} and the text encoder's dim")
        return problems

    def check(self, **expected) -> WanModelFolder:
        problems = self.problems(**expected)
        if problems:
            raise ValueError(f"Wan2.1 model folder {self.root} does not fit:\n  - " + "\n  - ".join(problems))
        return self


def vae_spatial_factor(config: dict) -> int:
    return int(config.get("scale_factor_spatial") or 2 ** (len(config.get("dim_mult", [1, 2, 4, 4])) - 1))


def vae_temporal_factor(config: dict) -> int:
    return int(config.get("scale_factor_temporal") or 2 ** sum(config.get("temperal_downsample", [False, True, True])))


def tokenizer_vocab_problem(tokenizer_size: int, vocab_size: int, tokenizer_dir: str | Path,
                            encoder_dir: str | Path) -> str | None:
    """A tokenizer fits an encoder when its ids index the embedding table (size <= rows) and it is of the same
    family: umT5 pads its 256 k-piece vocabulary by fewer than 128 rows, so a tokenizer with less than half of
    the rows (e.g. T5's 32 k pieces beside umT5's 256 k rows) is another model's."""
    if tokenizer_size > vocab_size:
        return (f"the tokenizer {tokenizer_dir} has {tokenizer_size} tokens but the text encoder {encoder_dir} has "
                f"{vocab_size} embedding rows (ids past the table); use the tokenizer that ships with this text "
                "encoder (the tokenizer/ beside it in the Wan2.1 folder)")
    if 2 * tokenizer_size < vocab_size:
        return (f"the tokenizer {tokenizer_dir} has {tokenizer_size} tokens, fewer than half of the text encoder's "
                f"{vocab_size} rows ({encoder_dir}): it belongs to another model; use the tokenizer that ships with "
                "this text encoder")
    return None


def _class_of(config: dict) -> str | None:
    if "_class_name" in config:  # diffusers
        return config["_class_name"]
    architectures = config.get("architectures") or []  # transformers
    return architectures[0] if architectures else None


def _plain(value):
    return list(value) if isinstance(value, (list, tuple)) else value

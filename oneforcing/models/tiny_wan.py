"""A tiny random Wan2.1 in the exact on-disk layout of the released diffusers folders.

``write_tiny_wan(out)`` writes ``transformer/`` (``WanTransformer3DModel``), ``vae/`` (``AutoencoderKLWan``),
``text_encoder/`` (transformers' ``UMT5EncoderModel``) and ``tokenizer/`` (a ``T5Tokenizer`` over a
SentencePiece unigram model trained on a few sentences), each with ``save_pretrained``, plus a
``model_index.json``. The classes, file names and code paths are Wan2.1-T2V's; only the sizes differ (the VAE
keeps Wan2.1's 16 latent channels and 8x spatial / 4x temporal compression), so every loader can be tried on
a laptop in seconds. Weights are random: outputs are noise. Needs the ``real`` extra (transformers,
sentencepiece); ``oneforcing tiny-wan --out DIR`` is the command form.
"""

from __future__ import annotations

import inspect
import io
import json
from pathlib import Path

import torch

from oneforcing.models.wan import WanConfig

# the transformer of the tiny folder (WanConfig fields); text_dim is the tiny umT5's d_model
TINY_WAN_BACKBONE = dict(num_layers=2, num_attention_heads=2, attention_head_dim=12, ffn_dim=48, in_channels=16,
                         out_channels=16, text_dim=32, freq_dim=32)
TINY_UMT5 = dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
                 relative_attention_max_distance=16, feed_forward_proj="gated-gelu", dropout_rate=0.0)
TINY_VAE = dict(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, attn_scales=[],
                temperal_downsample=[False, True, True])
TOKENIZER_SENTENCES = (
    "a red circle moving left quickly", "a small blue square moving up slowly", "a large green triangle",
    "a cat walks on the beach at sunset", "a drone flies over a snowy mountain", "two dogs play in a park",
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量",
    "丑陋的，残缺的，多余的手指，画得不好的手部，畸形的，毁容的，静止不动的画面，杂乱的背景，三条腿，倒着走",
)


def write_tiny_wan(out: str | Path, seed: int = 0, tokenizer_vocab: int = 200, vae_z_dim: int = 16,
                   text_vocab: int | None = None) -> Path:
    """Write the tiny folder to ``out`` and return it. ``vae_z_dim`` and ``text_vocab`` (the encoder's rows,
    default: the tokenizer's size) exist to make deliberately mismatched folders for tests."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    try:
        from transformers import UMT5Config, UMT5EncoderModel
    except ImportError as error:
        raise ImportError("The tiny Wan's umT5 and tokenizer need the real extra: pip install 'oneforcing[real]'.") from error
    out = Path(out)
    torch.manual_seed(seed)
    WanTransformer3DModel(**TINY_WAN_BACKBONE).save_pretrained(out / "transformer")
    z = vae_z_dim  # Wan2.1's normalisation vectors, one value per latent channel (cycled for other sizes)
    defaults = inspect.signature(AutoencoderKLWan.__init__).parameters
    mean, std = defaults["latents_mean"].default, defaults["latents_std"].default
    AutoencoderKLWan(**dict(TINY_VAE, z_dim=z), latents_mean=[mean[i % 16] for i in range(z)],
                     latents_std=[std[i % 16] for i in range(z)]).save_pretrained(out / "vae")
    tokenizer = tiny_tokenizer(tokenizer_vocab)
    tokenizer.save_pretrained(out / "tokenizer")
    config = UMT5Config(vocab_size=text_vocab or len(tokenizer), **TINY_UMT5)
    UMT5EncoderModel(config).save_pretrained(out / "text_encoder")
    index = {"_class_name": "WanPipeline", "transformer": ["diffusers", "WanTransformer3DModel"],
             "vae": ["diffusers", "AutoencoderKLWan"], "text_encoder": ["transformers", "UMT5EncoderModel"],
             "tokenizer": ["transformers", "T5Tokenizer"], "note": "tiny random Wan2.1 made by oneforcing tiny-wan"}
    (out / "model_index.json").write_text(json.dumps(index, indent=1))
    return out


def tiny_tokenizer(vocab_size: int = 200):
    """A T5Tokenizer (umT5's class) over a SentencePiece unigram model of ``vocab_size`` pieces
    (pad 0, eos 1, unk 2, as in umT5), trained on ``TOKENIZER_SENTENCES``."""
    import sentencepiece as spm
    import transformers
    from transformers import T5Tokenizer

    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(TOKENIZER_SENTENCES * 4), model_writer=proto, vocab_size=vocab_size,
        model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0,
        hard_vocab_limit=False, minloglevel=2, num_threads=1)
    processor = spm.SentencePieceProcessor(model_proto=proto.getvalue())
    if int(transformers.__version__.split(".")[0]) >= 5:  # tokenizers-backed T5Tokenizer takes the pieces
        pieces = [(processor.id_to_piece(i), processor.get_score(i)) for i in range(processor.get_piece_size())]
        return T5Tokenizer(vocab=pieces, extra_ids=0)
    import tempfile  # transformers 4: the slow class reads an spiece.model file

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spiece.model"
        path.write_bytes(proto.getvalue())
        return T5Tokenizer(vocab_file=str(path), extra_ids=0)


def tiny_wan_config() -> WanConfig:
    return WanConfig(**TINY_WAN_BACKBONE)


def tiny_recipe(config: str | Path, model_dir: str | Path, data_root: str | Path, out: str | Path,
                generator_weights: str | None = None, num_frames: int = 6, frame_size: tuple[int, int] = (32, 32),
                accelerator: str = "cpu", precision: str = "bf16-mixed", max_steps: int = 2) -> Path:
    """A Wan2.1 recipe shrunk to the tiny folder, written to ``out/<name>.yaml``: the backbone (and teacher) to the
    tiny transformer, ``num_frames`` latent frames of ``frame_size`` pixels, the GAN's feature layers and head to
    fit 2 blocks, the gradient window to the frames; one device, no validation, no loader workers. Everything else
    is the recipe's."""
    import yaml

    config, model_dir, out = Path(config), Path(model_dir), Path(out)
    recipe = yaml.safe_load(config.read_text())
    trainer = recipe["trainer"]
    trainer.update(accelerator=accelerator, devices=1, strategy="auto", precision=precision, max_steps=max_steps,
                   limit_val_batches=0, enable_progress_bar=False, enable_model_summary=False)
    trainer["logger"]["init_args"].update(save_dir=str(out / "runs"))
    model = recipe["model"]["init_args"]
    model.update(backbone=dict(TINY_WAN_BACKBONE), model_dir=str(model_dir), num_frames=num_frames,
                 frame_size=list(frame_size), generator_weights=generator_weights or str(model_dir))
    if "teacher_backbone" in model:
        model.update(teacher_backbone=dict(TINY_WAN_BACKBONE), teacher_weights=str(model_dir / "transformer"))
    if model.get("gradient_window_frames"):
        model["gradient_window_frames"] = num_frames - 1
    for objective in model["objectives"]:
        if objective["class_path"].endswith(".GAN"):
            layers = len(objective["init_args"]["feature_layers"])
            objective["init_args"].update(feature_layers=list(range(2 - layers, 2)), head_ffn_dim=32, head_num_heads=2)
    recipe["data"]["init_args"].update(root=str(data_root), num_workers=0)
    out.mkdir(parents=True, exist_ok=True)
    path = out / config.name
    path.write_text(yaml.safe_dump(recipe, allow_unicode=True))
    return path

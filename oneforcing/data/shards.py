"""Webdataset tar shards: one sample = tensors as safetensors bytes + caption text + attributes JSON.

Member names inside a sample: ``pixels.safetensors`` (uint8 (F, 3, H, W)) and/or ``latents.safetensors``
(float (F, C, h, w)), ``txt`` (caption), ``json`` (attributes). Every split directory carries an
``index.json`` listing its shards and sample counts; readers validate against it before training starts.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch
import webdataset as wds
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

INDEX_FILE = "index.json"
SHARD_PATTERN = "shard-%06d.tar"
FIXED_MTIME = 0.0  # tar headers carry no wall-clock time, so the same seed gives byte-identical shards


def encode_sample(key: str, tensors: dict[str, torch.Tensor], caption: str, attributes: dict) -> dict:
    """Build the webdataset member dict of one sample (tensor name -> ``<name>.safetensors``)."""
    sample = {"__key__": key, "txt": caption, "json": json.dumps(attributes, sort_keys=True)}
    for name, tensor in tensors.items():
        sample[f"{name}.safetensors"] = save_safetensors({name: tensor.contiguous()})
    return sample


def decode_sample(sample: dict) -> dict:
    """Inverse of ``encode_sample``; raises ValueError naming the member that is missing or unreadable."""
    key = sample.get("__key__", "?")
    out = {"key": key, "url": sample.get("__url__", "?")}
    try:
        out["caption"] = sample["txt"].decode("utf-8")
        out["attributes"] = json.loads(sample["json"])
    except KeyError as missing:
        raise ValueError(f"sample {key} has no {missing} member") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"sample {key} has an unreadable caption or attributes: {error}") from error
    tensor_members = [k for k in sample if k.endswith(".safetensors")]
    if not tensor_members:
        raise ValueError(f"sample {key} has neither pixels.safetensors nor latents.safetensors")
    for member in tensor_members:
        name = member[: -len(".safetensors")]
        try:
            out[name] = load_safetensors(sample[member])[name]
        except Exception as error:  # safetensors raises its own SafetensorError or a KeyError; re-raised as one type
            raise ValueError(f"sample {key} member {member} is corrupt: {error}") from error
    return out


def write_shards(
    samples: Iterable[dict], out_dir: str | Path, samples_per_shard: int, meta: dict | None = None
) -> dict:
    """Write member dicts into ``out_dir/shard-NNNNNN.tar`` plus ``index.json``; returns the index."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("shard-*.tar"):
        stale.unlink()
    counts: dict[str, int] = {}
    members: set[str] = set()
    with wds.ShardWriter(str(out / SHARD_PATTERN), maxcount=samples_per_shard, mtime=FIXED_MTIME, verbose=0) as sink:
        for sample in samples:
            sink.write(sample)
            members.update(k for k in sample if not k.startswith("__"))
            counts[Path(sink.fname).name] = counts.get(Path(sink.fname).name, 0) + 1
    index = {"shards": [{"name": n, "count": c} for n, c in sorted(counts.items())], "total": sum(counts.values()),
             "members": sorted(members)}  # what the samples carry: objectives check their inputs before training
    index.update(meta or {})
    (out / INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True))
    return index


def read_index(split_dir: str | Path) -> dict:
    """Load and check a split's ``index.json``; clear errors for missing, empty or incomplete directories."""
    root = Path(split_dir)
    if not root.is_dir():
        raise FileNotFoundError(
            f"Shard directory {root} does not exist. Create it with "
            f"`oneforcing data toy --out {root.parent if root.name in ('train', 'val') else root}` "
            "or point the data config at an existing directory."
        )
    index_path = root / INDEX_FILE
    if not index_path.is_file():
        tars = sorted(root.glob("*.tar"))
        hint = f"it holds {len(tars)} .tar files but" if tars else "it is empty:"
        raise FileNotFoundError(
            f"Shard directory {root} has no {INDEX_FILE}; {hint} shards must be written by `oneforcing data`, "
            "which records each shard's sample count."
        )
    index = json.loads(index_path.read_text())
    if index.get("total", 0) <= 0 or not index.get("shards"):
        raise ValueError(f"Shard directory {root} has no samples ({index_path} lists none); regenerate the data.")
    missing = [s["name"] for s in index["shards"] if not (root / s["name"]).is_file()]
    if missing:
        raise FileNotFoundError(f"Shard directory {root} is missing shards listed in {INDEX_FILE}: {missing[:5]}.")
    return index

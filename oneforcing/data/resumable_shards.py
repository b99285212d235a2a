"""Shards written one at a time, atomically, so that a killed run resumes where it stopped.

Inputs are cut into fixed groups (shard k holds the usable samples of inputs ``k·S .. (k+1)·S - 1``), so a
resumed run and a fresh one make the same shards. Each shard is written to a temporary name and renamed; then
its record (``.progress/shard-NNNNNN.json``: sample count and the inputs skipped, with reasons) is written the
same way, and only a shard with a record counts as done. The settings of the run (``settings.json``) must
match on resume: new settings need a new output directory. ``finish`` writes ``index.json`` (the same schema
as ``write_shards``) and ``report.json`` (what was encoded, what was skipped and why).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import webdataset as wds

from oneforcing.data.shards import FIXED_MTIME, INDEX_FILE, SHARD_PATTERN

SETTINGS_FILE, REPORT_FILE, PROGRESS_DIR = "settings.json", "report.json", ".progress"


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class ResumableShards:
    """Shard k of ``num_items`` inputs in groups of ``samples_per_shard`` under ``out``; ``settings`` (plain JSON)
    identify the run: a directory written with other settings is refused, naming the differences."""

    def __init__(self, out: str | Path, settings: dict, num_items: int, samples_per_shard: int) -> None:
        if samples_per_shard < 1:
            raise ValueError(f"--samples-per-shard {samples_per_shard} must be >= 1.")
        self.out, self.num_items, self.per_shard = Path(out), num_items, samples_per_shard
        self.progress = self.out / PROGRESS_DIR
        self.progress.mkdir(parents=True, exist_ok=True)
        settings = json.loads(json.dumps(dict(settings, num_inputs=num_items, samples_per_shard=samples_per_shard)))
        path = self.out / SETTINGS_FILE
        if path.is_file():
            recorded = json.loads(path.read_text())
            changed = sorted(k for k in set(recorded) | set(settings) if recorded.get(k) != settings.get(k))
            if changed:
                raise ValueError(f"{self.out} was written with other settings ({', '.join(changed)} differ: "
                                 f"{ {k: recorded.get(k) for k in changed} } there, { {k: settings.get(k) for k in changed} } "
                                 "now). Resume with the same arguments, or write to a new --out.")
        else:
            atomic_write_text(path, json.dumps(settings, indent=2, sort_keys=True, ensure_ascii=False))
        self.settings = settings

    @property
    def num_shards(self) -> int:
        return -(-self.num_items // self.per_shard)

    def items_of(self, shard: int) -> range:
        return range(shard * self.per_shard, min((shard + 1) * self.per_shard, self.num_items))

    def _record(self, shard: int) -> Path:
        return self.progress / (SHARD_PATTERN % shard).replace(".tar", ".json")

    def is_done(self, shard: int) -> bool:
        record = self._record(shard)
        return record.is_file() and (json.loads(record.read_text())["count"] == 0
                                     or (self.out / (SHARD_PATTERN % shard)).is_file())

    def pending(self) -> list[int]:
        return [k for k in range(self.num_shards) if not self.is_done(k)]

    def write(self, shard: int, samples: list[dict], skipped: list[dict]) -> None:
        """Write shard ``shard`` (member dicts, as ``encode_sample`` builds them) and its record, atomically."""
        name = SHARD_PATTERN % shard
        if samples:
            tmp = self.out / f".{name}.tmp"
            with open(tmp, "wb") as stream:
                sink = wds.TarWriter(stream, mtime=FIXED_MTIME)
                for sample in samples:
                    sink.write(sample)
                sink.close()
            os.replace(tmp, self.out / name)
        members = sorted({k for s in samples for k in s if not k.startswith("__")})
        atomic_write_text(self._record(shard), json.dumps(
            {"count": len(samples), "members": members, "skipped": skipped}, indent=1, sort_keys=True, ensure_ascii=False))

    def finish(self, meta: dict) -> tuple[dict, dict]:
        """(index, report) of the finished directory, both also written to it."""
        missing = self.pending()
        if missing:
            raise RuntimeError(f"shards {missing[:5]} of {self.out} are not written yet")
        records = [json.loads(self._record(k).read_text()) for k in range(self.num_shards)]
        shards = [{"name": SHARD_PATTERN % k, "count": r["count"]} for k, r in enumerate(records) if r["count"]]
        members = sorted({m for r in records for m in r["members"]})
        index = dict(meta, shards=shards, total=sum(s["count"] for s in shards), members=members)
        skipped = [s for r in records for s in r["skipped"]]
        report = {"inputs": self.num_items, "encoded": index["total"], "skipped": len(skipped),
                  "skipped_by_reason": dict(sorted(Counter(s["reason"] for s in skipped).items())),
                  "skipped_inputs": skipped}
        atomic_write_text(self.out / REPORT_FILE, json.dumps(report, indent=2, sort_keys=True, ensure_ascii=False))
        if index["total"]:
            atomic_write_text(self.out / INDEX_FILE, json.dumps(index, indent=2, sort_keys=True, ensure_ascii=False))
        return index, report

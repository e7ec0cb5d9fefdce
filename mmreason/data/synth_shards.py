"""Writing the synthetic benchmark to shards: resumable, refusing to mix configurations.

The same arguments always produce the same bytes, so a rerun keeps every
finished shard; ``report.json`` gives each split's answer distribution and the
majority-class accuracy per task, so any result can be read against chance.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tarfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from mmreason.data.synth import SPLITS, SynthConfig, make_sample
from mmreason.data.writer import read_sizes, sample_to_tar_entry, write_shard

log = logging.getLogger(__name__)

MANIFEST_FILE = "synth.json"
REPORT_FILE = "report.json"


def answer_report(records: Iterable[dict]) -> dict:
    """Per task: sample count, answer distribution and the accuracy of always answering the majority."""
    by_task: dict[str, Counter] = {}
    for record in records:
        by_task.setdefault(record["task"], Counter())[record["answer"]] += 1
    report = {}
    for task, answers in sorted(by_task.items()):
        n = sum(answers.values())
        report[task] = {"n": n, "answers": dict(sorted(answers.items())),
                        "majority_accuracy": round(max(answers.values()) / n, 4)}
    return report


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def _claim(out: Path, args: dict, shards: dict[str, int]) -> None:
    """Make ``out`` this benchmark's folder, or check it already is; refuse anything else."""
    manifest = out / MANIFEST_FILE
    if manifest.exists():
        held = json.loads(manifest.read_text())
        differing = [k for k in args if held.get(k) != args[k]]
        if differing:
            raise ValueError(
                f"{out} holds a synthetic benchmark with a different configuration (differs in "
                f"{', '.join(differing)}: {manifest} has {[held.get(k) for k in differing]}, expected "
                f"{[args[k] for k in differing]}); pick another --out or delete that folder")
        return
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty and has no {MANIFEST_FILE}, so it holds a different "
                         "configuration or other data; pick another --out or delete that folder")
    out.mkdir(parents=True, exist_ok=True)
    _write_json(manifest, {**args, "shards": shards})


def _read_answers(path: Path) -> list[dict]:
    with tarfile.open(path) as tar:
        return [json.load(tar.extractfile(m)) for m in tar.getmembers() if m.name.endswith(".json")]


def _entries(config: SynthConfig, split: str, indices: range, answers: list, bar) -> Iterator[dict]:
    for index in indices:
        key, image, record, mask = make_sample(config, split, index)
        answers.append({"task": record["task"], "answer": record["answer"]})
        bar.update()
        yield sample_to_tar_entry(key, image, record, mask)


def synthesize(out_dir: str | Path, counts: dict[str, int], config: SynthConfig,
               samples_per_shard: int = 1000, progress: bool = True) -> dict:
    """Write ``{split}-%06d.tar`` shards, ``sizes.json``, ``synth.json`` and ``report.json``; resumable.

    Shards already listed in ``sizes.json`` and present are kept (the same
    arguments always produce the same bytes). Returns the report:
    ``{split: answer_report(...), "samples_per_second": ...}``.
    """
    out = Path(out_dir)
    if not isinstance(counts, dict) or any(s not in SPLITS for s in counts) or any(
            not isinstance(n, int) or n < 0 for n in counts.values()):
        raise ValueError(f"counts must map splits {SPLITS} to non-negative integers, got {counts!r}")
    if not isinstance(samples_per_shard, int) or samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be a positive integer, got {samples_per_shard!r}")
    counts = {s: counts[s] for s in SPLITS if counts.get(s)}
    plan = {split: [(f"{split}-{k:06d}.tar", range(k * samples_per_shard, min(n, (k + 1) * samples_per_shard)))
                    for k in range(math.ceil(n / samples_per_shard))] for split, n in counts.items()}
    args = json.loads(json.dumps(
        {"config": asdict(config), "counts": counts, "samples_per_shard": samples_per_shard}))
    _claim(out, args, {name: len(ix) for shards in plan.values() for name, ix in shards})

    done = read_sizes(out)
    answers: dict[str, list] = {split: [] for split in plan}
    todo = []
    for split, shards in plan.items():
        kept = [(name, ix) for name, ix in shards if done.get(name) == len(ix) and (out / name).exists()]
        for name, _ in kept:
            answers[split] += _read_answers(out / name)
        todo += [(split, name, ix) for name, ix in shards if (name, ix) not in kept]
        if kept:
            log.info("%s: skipped %d of %d shards already written in %s", split, len(kept), len(shards), out)
    report_path = out / REPORT_FILE
    if not todo and report_path.exists():
        return json.loads(report_path.read_text())

    total = sum(len(ix) for _, _, ix in todo)
    start = time.perf_counter()
    with tqdm(total=total, desc=f"synth {out.name}", unit="sample", disable=not progress) as bar:
        for split, name, ix in todo:
            write_shard(out / name, _entries(config, split, ix, answers[split], bar))
    elapsed = time.perf_counter() - start
    report: dict = {split: answer_report(answers[split]) for split in plan}
    report["samples_per_second"] = round(total / elapsed, 1) if total else None
    _write_json(report_path, report)
    log.info("wrote %d samples to %s (%.0f samples/s)", total, out, total / elapsed if total else 0)
    return report

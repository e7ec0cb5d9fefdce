"""Reading canonical WebDataset shards safely on many ranks.

Training streams use resampled shards and a fixed number of batches per
worker, so every rank yields the same number of batches per epoch by
construction (an uneven count hangs DDP). Evaluation streams read each shard
exactly once; on several ranks each rank gets the same number of shards
(checked up front) and is capped at the smallest rank's sample count.

Bad samples never stop an epoch: they are skipped, counted and logged with
their key and the reason, and each batch carries the count skipped since the
previous batch so the training module can log it as a metric. Logging is
rate-limited (the counts stay exact); a training stream that reads
``max_consecutive_skips`` bad samples or unreadable shards in a row stops with
an error instead of spinning forever on data that yields nothing.

Shard URLs are normalised once (whitespace stripped, scheme case-folded, as
webdataset reads them) before any check: local files and ``http(s)`` only,
``pipe:`` when the user allows it, and every local shard must exist.
"""

from __future__ import annotations

import glob
import io
import json
import logging
import math
import os
import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from urllib.parse import urlparse

import braceexpand
import numpy as np
import torch
import webdataset as wds

from mmreason.data.preprocess import Preprocess
from mmreason.data.schema import RecordError, validate_record
from mmreason.data.workers import die_with_parent
from mmreason.data.writer import SIZES_FILE

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp")
FEATURES_MEMBER = "features.npy"  # precomputed vision features, see mmreason.data.features
REMOTE_SCHEMES = ("http", "https")  # read by curl with an argument list: no shell
MAX_CONSECUTIVE_SKIPS = 1000
SKIPS_LOGGED_IN_FULL = 20


class BadSample(ValueError):
    """A sample that cannot be used; skipped in streams."""


class NoUsableData(RuntimeError):
    """A training stream read nothing but bad samples or unreadable shards for too long."""


def normalize_url(url: str, allow_pipe: bool = False) -> str:
    """``url`` as webdataset will read it, refused if it would run a command or is not a shard source.

    webdataset strips whitespace and case-folds the scheme (``" PIPE:cmd"`` is a pipe), so
    the checks run on that normal form and the normal form is what is returned.
    """
    if not isinstance(url, str):
        raise ValueError(f"shard URL must be a string, got {type(url).__name__}")
    url = url.strip()
    scheme = urlparse(url).scheme.lower()
    if scheme == "pipe":
        if not allow_pipe:
            raise ValueError(
                f"refusing shard URL {url!r}: 'pipe:' runs a shell command; "
                "pass allow_pipe=True (--data.allow_pipe true) if you wrote this URL yourself"
            )
        return "pipe:" + url.split(":", 1)[1]
    if scheme in REMOTE_SCHEMES:
        return scheme + ":" + url.split(":", 1)[1]
    if scheme == "file":
        return urlparse(url).path
    if scheme or url == "-":
        raise ValueError(f"refusing shard URL {url!r}: expected a local path, file:, http: or https: URL "
                         "(or pipe: with allow_pipe)")
    return url


def resolve_shards(spec: str | list[str], split: str | None = None, allow_pipe: bool = False) -> list[str]:
    """Expand a shard spec (brace pattern, glob, folder, or list) into a list of URLs.

    A folder means its ``{split}-*.tar`` shards (all ``*.tar`` when split is None).
    ``pipe:`` URLs run a shell command, so they are refused unless allowed.
    """
    specs = [spec] if isinstance(spec, (str, Path)) else list(spec)
    urls: list[str] = []
    missing: list[str] = []
    for item in specs:
        item = str(item).strip()
        if os.path.isdir(item):
            urls += sorted(glob.glob(os.path.join(item, f"{split}-*.tar" if split else "*.tar")))
            continue
        for expanded in braceexpand.braceexpand(item):
            expanded = normalize_url(expanded, allow_pipe)
            local = not urlparse(expanded).scheme
            if local and any(ch in expanded for ch in "*?["):
                urls += sorted(glob.glob(expanded))
                continue
            (missing if local and not os.path.isfile(expanded) else urls).append(expanded)
    if missing:
        raise FileNotFoundError(f"{len(missing)} shard(s) named by {spec!r} do not exist: "
                                + ", ".join(repr(m) for m in missing[:3]) + (", ..." if len(missing) > 3 else ""))
    if not urls:
        raise FileNotFoundError(f"no shards found for {spec!r}" + (f" (split {split!r})" if split else ""))
    return urls


def shard_sizes(urls: list[str]) -> dict[str, int] | None:
    """Samples per shard from the ``sizes.json`` files beside the shards, or None if any is unknown."""
    sizes: dict[str, int] = {}
    cache: dict[str, dict] = {}
    for url in urls:
        folder, name = os.path.split(url)
        if folder not in cache:
            path = os.path.join(folder, SIZES_FILE)
            cache[folder] = json.loads(Path(path).read_text()) if os.path.exists(path) else {}
        if name not in cache[folder]:
            return None
        sizes[url] = int(cache[folder][name])
    return sizes


def reason_kind(reason: str) -> str:
    """The kind of a skip reason, for tallies: its text before the first colon."""
    return reason.split(":", 1)[0]


@dataclass
class SkipCounter:
    """Per-process tally of skipped samples; batches carry the delta since the last batch.

    The first :data:`SKIPS_LOGGED_IN_FULL` skips are logged with key and reason, then one
    line per thousand, so a shard of bad samples cannot flood the log.
    """

    pending: int = 0
    total: int = 0
    pending_kinds: Counter = field(default_factory=Counter)

    def skip(self, key: str, reason: str) -> None:
        self.pending += 1
        self.total += 1
        self.pending_kinds[reason_kind(reason)] += 1
        if self.total <= SKIPS_LOGGED_IN_FULL:
            log.warning("skipped sample %s: %s", key, reason)
        elif self.total % 1000 == 0 or self.total == SKIPS_LOGGED_IN_FULL + 1:
            log.warning("%d samples skipped so far in this process (latest: %s: %s); "
                        "further skips are logged once per thousand", self.total, key, reason)

    def take(self) -> int:
        taken, self.pending = self.pending, 0
        return taken

    def take_kinds(self) -> dict[str, int]:
        kinds, self.pending_kinds = dict(self.pending_kinds), Counter()
        return kinds


SKIPPED = SkipCounter()


class ConsecutiveSkips:
    """Counts bad samples and unreadable shards since the last good sample; raises past ``limit``."""

    def __init__(self, limit: int | None, urls: list[str]):
        self.limit, self.urls, self.count = limit, urls, 0

    def bad(self, reason: str) -> None:
        self.count += 1
        if self.limit is not None and self.count >= self.limit:
            shown = ", ".join(self.urls[:3]) + (f" and {len(self.urls) - 3} more" if len(self.urls) > 3 else "")
            raise NoUsableData(f"no usable sample in the last {self.count} samples or shards read from {shown} "
                               f"(latest reason: {reason}); check the shard paths and the data")

    def good(self) -> None:
        self.count = 0


def _tar_error_handler(exn: Exception, guard: ConsecutiveSkips | None = None) -> bool:
    where = " ".join(str(a) for a in exn.args[1:] if isinstance(a, str))
    reason = f"unreadable tar data: {exn.args[0] if exn.args else exn!r}"
    SKIPPED.skip(where or "?", reason)
    if guard is not None:
        guard.bad(reason)
    return True


def _decode_features(data: bytes) -> torch.Tensor:
    """A ``features.npy`` member as float32 (tokens, dim)."""
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False).astype(np.float32)
    except (ValueError, OSError, EOFError) as exn:
        raise BadSample(f"unreadable features.npy: {type(exn).__name__}: {exn}") from exn
    if array.ndim != 2:
        raise BadSample(f"features.npy has shape {array.shape}, expected (tokens, dim)")
    return torch.from_numpy(array)


def decode_sample(raw: dict, preprocess: Preprocess) -> dict:
    """Turn raw tar members into {key, pixels, record, orig_size, mask, features}; raise BadSample with the reason.

    ``features`` holds precomputed vision features when the shard has them, else None.
    """
    key = raw.get("__key__", "?")
    ext = next((e for e in IMAGE_EXTENSIONS if e in raw), None)
    if ext is None:
        raise BadSample(f"missing image: expected one of {IMAGE_EXTENSIONS}, found {sorted(raw)}")
    if "json" not in raw:
        raise BadSample("missing record: expected a .json member")
    try:
        obj = json.loads(raw["json"].decode("utf-8"))
    except UnicodeDecodeError as exn:
        raise BadSample(f"record is not UTF-8 text: {exn}") from exn
    except json.JSONDecodeError as exn:
        raise BadSample(f"record is not valid JSON: {exn}") from exn
    try:
        image = preprocess.open_rgb(raw[ext])
        record = validate_record(obj, key, image_size=image.size)
        sample = {"key": key, "pixels": preprocess.to_pixels(image), "record": record,
                  "orig_size": image.size, "mask": None}
        if "mask.png" in raw:
            sample["mask"] = preprocess.mask_to_tensor(preprocess.open_rgb(raw["mask.png"]).convert("L"))
    except RecordError as exn:
        raise BadSample(f"invalid record: {exn}") from exn
    except Exception as exn:  # PIL raises many types for corrupt data
        raise BadSample(f"undecodable image: {type(exn).__name__}: {exn}") from exn
    sample["features"] = _decode_features(raw[FEATURES_MEMBER]) if FEATURES_MEMBER in raw else None
    return sample


def decode_stream(source: Iterator[dict], preprocess: Preprocess,
                  guard: ConsecutiveSkips | None = None) -> Iterator[dict]:
    for raw in source:
        try:
            sample = decode_sample(raw, preprocess)
        except BadSample as exn:
            SKIPPED.skip(raw.get("__key__", "?"), str(exn))
            if guard is not None:
                guard.bad(str(exn))
            continue
        if guard is not None:
            guard.good()
        yield sample


def collate(samples: list[dict]) -> dict:
    """Stack uint8 pixels (and masks when every sample has one); records stay a list.

    Pixels stay uint8 until the batch is on the training side (see :func:`normalize_batch`):
    a quarter of the bytes to pass between processes, and one normalisation per batch.
    Precomputed vision features are stacked as ``features`` when every sample has them.
    """
    masks = [s["mask"] for s in samples]
    features = [s.get("features") for s in samples]
    batch = {
        "keys": [s["key"] for s in samples],
        "pixels": torch.stack([s["pixels"] for s in samples]),
        "records": [s["record"] for s in samples],
        "masks": torch.stack(masks) if all(m is not None for m in masks) else masks,
        "orig_sizes": [s.get("orig_size") for s in samples],
        "skipped": SKIPPED.take(),
        "skip_kinds": SKIPPED.take_kinds(),
    }
    if all(f is not None for f in features):
        batch["features"] = torch.stack(features)
    return batch


def _batched(source: Iterator[dict], batch_size: int, partial: bool) -> Iterator[dict]:
    batch: list[dict] = []
    for sample in source:
        batch.append(sample)
        if len(batch) == batch_size:
            yield collate(batch)
            batch = []
    if batch and partial:
        yield collate(batch)


def _text_length(sample: dict) -> int:
    record = sample["record"]
    return len(record.question) + len(record.rationale or "") + len(record.answer)


def _length_grouped(source: Iterator[dict], batch_size: int, group: int, rng: random.Random) -> Iterator[dict]:
    """Full batches of samples of similar text length, in random batch order.

    Sorting ``group`` batches' worth of samples by length before cutting them
    into batches cuts the padding a language model computes on; ``group=1``
    keeps the plain order.
    """
    while True:
        pool = list(islice(source, batch_size * group))
        if group > 1:
            pool.sort(key=_text_length)
        batches = [pool[i : i + batch_size] for i in range(0, len(pool) - batch_size + 1, batch_size)]
        rng.shuffle(batches)
        yield from (collate(b) for b in batches)
        if len(pool) < batch_size * group:
            return


def _shuffle(source: Iterator[dict], bufsize: int, rng: random.Random) -> Iterator[dict]:
    buffer: list[dict] = []
    for sample in source:
        buffer.append(sample)
        if len(buffer) >= bufsize:
            yield buffer.pop(rng.randrange(len(buffer)))
    rng.shuffle(buffer)
    yield from buffer


class TrainStream(torch.utils.data.IterableDataset):
    """Endless resampled shards cut into epochs of exactly ``batches_per_worker`` batches, each passed
    through ``processor`` (a model's :meth:`~mmreason.models.base.ZooModel.batch_processor`) when set."""

    def __init__(self, urls, preprocess, batch_size, batches_per_worker, rank, seed=0, shuffle_buffer=500,
                 length_group=1, max_consecutive_skips: int | None = MAX_CONSECUTIVE_SKIPS,
                 processor: Callable[[dict], dict] | None = None):
        super().__init__()
        self.processor = processor
        self.length_group, self.max_consecutive_skips = length_group, max_consecutive_skips
        self.urls, self.preprocess, self.batch_size = urls, preprocess, batch_size
        self.batches_per_worker, self.rank, self.seed = batches_per_worker, rank, seed
        self.shuffle_buffer = shuffle_buffer
        self.epoch = 0

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker = info.id if info else 0
        rng = random.Random(f"{self.seed}-{self.rank}-{worker}-{self.epoch}")

        def shard_urls():
            while True:
                yield {"url": rng.choice(self.urls)}

        guard = ConsecutiveSkips(self.max_consecutive_skips, self.urls)
        raw = wds.tarfile_samples(shard_urls(), handler=lambda exn: _tar_error_handler(exn, guard))
        samples = _shuffle(decode_stream(raw, self.preprocess, guard), self.shuffle_buffer, rng)
        batches = _length_grouped(samples, self.batch_size, self.length_group, rng)
        if self.processor is not None:  # the model's tensors, made here in the loader worker
            self.processor.reseed(f"{self.rank}-{worker}-{self.epoch}")
            batches = map(self.processor, batches)
        yield from islice(batches, self.batches_per_worker)


class EpochLoader(torch.utils.data.DataLoader):
    """A DataLoader that hands its stream the current epoch number at each pass.

    ``epoch_fn`` is asked when a pass starts (a resumed Trainer knows its epoch
    only by then); without it passes are numbered 0, 1, ... Workers receive a
    fresh copy of the stream on every pass, so the epoch reaches them and each
    epoch resamples differently but reproducibly.
    """

    def __init__(self, stream: TrainStream, epoch_fn: Callable[[], int] | None = None, **kwargs):
        kwargs.setdefault("worker_init_fn", die_with_parent)
        super().__init__(stream, batch_size=None, **kwargs)
        self.epoch_fn, self.passes = epoch_fn, 0

    def __len__(self) -> int:
        return self.dataset.batches_per_worker * max(1, self.num_workers)

    def __iter__(self):
        self.dataset.epoch = self.epoch_fn() if self.epoch_fn is not None else self.passes
        self.passes += 1
        return super().__iter__()


class EvalStream(torch.utils.data.IterableDataset):
    """Each of this rank's shards once, in order, capped at ``max_samples``."""

    def __init__(self, urls, preprocess, batch_size, max_samples=None):
        super().__init__()
        self.urls, self.preprocess = urls, preprocess
        self.batch_size, self.max_samples = batch_size, max_samples
        self.length: int | None = None

    def __len__(self) -> int:
        if self.length is None:
            raise TypeError("length unknown: no sizes.json beside the shards")
        return self.length

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        urls = self.urls[info.id :: info.num_workers] if info else self.urls
        raw = wds.tarfile_samples(({"url": u} for u in urls), handler=_tar_error_handler)
        samples = decode_stream(raw, self.preprocess)
        if self.max_samples is not None:
            samples = islice(samples, self.max_samples)
        yield from _batched(samples, self.batch_size, partial=True)


def _check_batch_size(batch_size) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch size must be a positive integer, got {batch_size!r}")


def train_stream(urls, preprocess, batch_size, rank=0, world_size=1, num_workers=0, epoch_samples=None, seed=0,
                 shuffle_buffer=500, length_group=1, max_consecutive_skips: int | None = MAX_CONSECUTIVE_SKIPS,
                 processor: Callable[[dict], dict] | None = None) -> tuple[TrainStream, int]:
    """A training stream and its number of batches per epoch on each rank.

    ``length_group`` > 1 batches together samples of similar text length (see :func:`_length_grouped`).
    """
    _check_batch_size(batch_size)
    if epoch_samples is None:
        sizes = shard_sizes(urls)
        if sizes is None:
            raise ValueError(
                f"cannot tell the epoch length: {SIZES_FILE} is missing beside {urls[0]!r} or does not list "
                "every shard; write one (converters and `mmreason data synth` do) or set epoch_samples"
            )
        epoch_samples = sum(sizes.values())
    workers = max(1, num_workers)
    per_worker = max(1, epoch_samples // (batch_size * world_size * workers))
    stream = TrainStream(urls, preprocess, batch_size, per_worker, rank, seed, shuffle_buffer, length_group,
                         max_consecutive_skips, processor)
    return stream, per_worker * workers


def eval_stream(urls, preprocess, batch_size, rank=0, world_size=1, num_workers=0) -> tuple[EvalStream, int | None]:
    """An evaluation stream over this rank's shards and its number of samples (None if unknown).

    Each loader worker batches its own shards, partial last batch included, so the
    batch count is summed per worker (``num_workers`` must match the DataLoader's).
    """
    _check_batch_size(batch_size)
    if world_size == 1:
        sizes = shard_sizes(urls)
        stream = EvalStream(urls, preprocess, batch_size)
        if sizes:
            workers = max(1, num_workers)
            stream.length = sum(expected_batches(sum(sizes[u] for u in urls[w::workers]), batch_size)
                                for w in range(workers))
        return stream, (sum(sizes.values()) if sizes else None)
    if len(urls) % world_size:
        raise ValueError(
            f"{len(urls)} evaluation shards cannot be split evenly over {world_size} ranks; "
            f"write a multiple of {world_size} shards (e.g. --samples_per_shard smaller) or evaluate on fewer ranks"
        )
    sizes = shard_sizes(urls)
    if sizes is None:
        raise ValueError(f"evaluation on {world_size} ranks needs {SIZES_FILE} beside the shards to equalise ranks")
    per_rank = [sum(sizes[u] for u in urls[r::world_size]) for r in range(world_size)]
    cap = min(per_rank)
    if max(per_rank) > cap:
        log.warning("evaluation: %d samples dropped so every rank sees %d", sum(per_rank) - cap * world_size, cap)
    stream = EvalStream(urls[rank::world_size], preprocess, batch_size, max_samples=cap)
    stream.length = expected_batches(cap, batch_size)
    return stream, cap


def expected_batches(n_samples: int | None, batch_size: int) -> int | None:
    return None if n_samples is None else math.ceil(n_samples / batch_size)

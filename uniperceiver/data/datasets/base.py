"""Shared pieces of the on-disk readers: annotation-file checks, image loading, bad-sample accounting.

A reader is a ``torch.utils.data.Dataset`` over a list of records read once at construction.  A record whose
image cannot be read (missing, truncated, not an image) is *skipped*: the reader logs it, counts it and
returns the next readable record instead, so batch shapes stay fixed (retrieval gathers equal shapes across
ranks).  When the bad records exceed ``max_bad_fraction`` the reader raises :class:`TooManyBadSamples` — of
every record read so far once at least ``MIN_SAMPLES_FOR_FRACTION`` were read, or of the whole dataset at any
time (distinct files, so re-reading one bad file every epoch does not add up).  Counts are per process
(each DataLoader worker checks its own share).
"""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Set, Tuple

import numpy as np
import torch
from PIL import Image

from uniperceiver.config import ConfigError

from ..image_decode import DECODE_ERRORS, DEFAULT_MAX_IMAGE_PIXELS, decode_image
from ..records import SerializedRecords

logger = logging.getLogger(__name__)

# Below this many reads, only the whole-dataset budget can stop training (one early bad file is not 100%).
MIN_SAMPLES_FOR_FRACTION = 100
# Log the first bad files one by one, then only every LOG_EVERY-th.
_LOG_FIRST = 10
_LOG_EVERY = 100


class TooManyBadSamples(RuntimeError):
    """More than DATALOADER.MAX_BAD_FRACTION of the samples could not be read."""


class AnnotationFileError(ConfigError):
    """An annotation or class-name file that cannot be used at all (empty, not valid JSON, the wrong shape): a
    user error found before the first step (main.py: one line, exit code 2).  A ``ValueError`` as before."""


class AnnotationProblems:
    """Bad annotation records met while reading a file (malformed line, empty caption, label out of range).

    ``max_bad_fraction=None`` (standalone use) raises ``ValueError`` naming ``file:line`` at the first one.
    Otherwise each is skipped, logged with ``file:line`` (the first few, then every 100th) and counted per
    reason; :meth:`check` logs the per-file count and raises :class:`TooManyBadSamples` when more than
    ``max_bad_fraction`` of the file's records were bad.
    """

    def __init__(self, path: str, max_bad_fraction: Optional[float] = None, name: str = ""):
        self.path, self.max_bad_fraction, self.name = path, max_bad_fraction, name or os.path.basename(path)
        self.counts: Dict[str, int] = {}

    @property
    def num_bad(self) -> int:
        return sum(self.counts.values())

    def add(self, where: Any, reason: str, detail: str = "") -> None:
        """Record a bad record at ``where`` (a line number, or e.g. "annotation 3")."""
        loc = f"{self.path}:{where}" if isinstance(where, int) else f"{self.path} ({where})"
        if self.max_bad_fraction is None:
            raise ValueError(f"{loc}: {reason}{': ' + detail if detail else ''}")
        self.counts[reason] = self.counts.get(reason, 0) + 1
        if self.num_bad <= _LOG_FIRST or self.num_bad % _LOG_EVERY == 0:
            logger.warning("%s: skipping %s: %s%s", self.name, loc, reason, f" ({detail})" if detail else "")

    def check(self, num_good: int) -> None:
        bad = self.num_bad
        if not bad:
            return
        total = num_good + bad
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(self.counts.items()))
        logger.warning("%s: skipped %d of %d annotation records of %s (%s)", self.name, bad, total, self.path,
                       reasons)
        if bad > self.max_bad_fraction * total:
            raise TooManyBadSamples(
                f"{self.name}: {bad} of {total} annotation records of {self.path} are bad ({reasons}), more than "
                f"DATALOADER.MAX_BAD_FRACTION={self.max_bad_fraction}. Fix the data (tools/check_data.py) or "
                f"raise the fraction."
            )


def check_annotation_file(path: str, config_key: str) -> str:
    """Fail at start-up, naming the path and the config key, when an annotation file is missing."""
    if not path or not os.path.isfile(path):
        raise ConfigError(
            f"annotation file not found: {path or '<empty>'} (set by {config_key}; see PREPARE_DATA.md, "
            f"or run tools/check_data.py --config-file <cfg>)"
        )
    return path


def load_json(path: str) -> Any:
    """The parsed JSON file ``path``; :class:`AnnotationFileError` (a ``ValueError``) naming ``path:line:column``
    when it is not valid JSON (undecodable bytes included), or naming the file when it is empty."""
    with open(path, "rb") as f:
        raw = f.read()
    if not raw.strip():
        raise AnnotationFileError(f"{path}: empty annotation file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        col = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise AnnotationFileError(f"{path}:{line}:{col}: not valid JSON: not UTF-8 (byte 0x{raw[e.start]:02x})") \
            from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise AnnotationFileError(f"{path}:{e.lineno}:{e.colno}: not valid JSON: {e.msg}") from e


def json_list(data: dict, key: str, path: str) -> list:
    """``data[key]`` of the JSON file ``path``, which must be a list (``AnnotationFileError`` naming the file if
    not)."""
    value = data[key]
    if not isinstance(value, list):
        raise AnnotationFileError(f"{path}: {key!r} must be a list, got {type(value).__name__}")
    return value


def read_lines(path: str, problems: "AnnotationProblems") -> Iterator[Tuple[int, str]]:
    """``(line number, stripped text)`` of every non-blank line of a line-oriented annotation file (lists, JSON
    lines, TSV), each decoded on its own: a line that is not UTF-8 is a bad record (``problems``: skipped,
    counted, logged with file and line), never the end of the file.  A file with no line at all (empty or
    only blank lines) is an :class:`AnnotationFileError`."""
    seen = False
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError as e:
                seen = True
                problems.add(lineno, "undecodable line", f"not UTF-8: byte 0x{raw[e.start]:02x} at column "
                                                         f"{e.start + 1}")
                continue
            if line:
                seen = True
                yield lineno, line
    if not seen:
        raise AnnotationFileError(f"{path}: empty annotation file (no records)")


def load_rgb(path: str, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode an image file fully (so truncation is detected here, not in a transform) as 8-bit RGB, as an image
    viewer shows it (data/image_decode.py: EXIF orientation, 16-bit, palette, CMYK, alpha over white)."""
    return decode_image(path, max_pixels)


class ImageRecordsDataset(torch.utils.data.Dataset):
    """Base of image readers: ``records`` hold an ``image`` path; subclasses build samples in ``make_sample``.

    Args:
        records: one dict per sample (kept serialized, :class:`SerializedRecords`), each with an "image" path (absolute or relative to ``image_root``).
        image_root: folder that relative image paths are taken under.
        transform: PIL image -> tensor.
        max_bad_fraction: stop (raise) when more than this fraction of records are unreadable.
        name: shown in log lines and errors.

    ``max_image_pixels`` (DATALOADER.MAX_IMAGE_PIXELS, set by ``build_reader``): a larger image is a bad sample.
    """

    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS

    def __init__(
        self,
        records: List[dict],
        *,
        image_root: str = "",
        transform: Optional[Callable] = None,
        max_bad_fraction: float = 0.01,
        name: str = "",
    ):
        self.records = SerializedRecords.wrap(records)  # one buffer, not a million dicts (data/records.py)
        self.image_root = image_root
        self.transform = transform
        self.max_bad_fraction = float(max_bad_fraction)
        self.name = name or type(self).__name__
        self.num_read = 0
        self.num_bad = 0
        self.bad_paths: Set[str] = set()

    def __len__(self) -> int:
        return len(self.records)

    def image_path(self, record: dict) -> str:
        path = record["image"]
        return path if os.path.isabs(path) else os.path.join(self.image_root, path)

    def _mark_bad(self, path: str, err: Exception) -> None:
        self.num_bad += 1
        self.bad_paths.add(path)
        if self.num_bad <= _LOG_FIRST or self.num_bad % _LOG_EVERY == 0:
            logger.warning(
                "%s: skipping unreadable image %s (%s: %s); %d bad of %d read",
                self.name, path, type(err).__name__, err, self.num_bad, self.num_read,
            )
        too_many_seen = self.num_read >= MIN_SAMPLES_FOR_FRACTION and (
            self.num_bad > self.max_bad_fraction * self.num_read
        )
        too_many_total = len(self.bad_paths) > self.max_bad_fraction * len(self)
        if too_many_seen or too_many_total:
            raise TooManyBadSamples(
                f"{self.name}: {self.num_bad} of {self.num_read} images read so far are unreadable (dataset "
                f"size {len(self)}), more than DATALOADER.MAX_BAD_FRACTION={self.max_bad_fraction}; last: "
                f"{path}. Fix the data (tools/check_data.py) or raise the fraction."
            )

    def read_image(self, record: dict) -> Optional[Any]:
        """The transformed image of ``record``, or None (counted and logged) when it cannot be read."""
        path = self.image_path(record)
        self.num_read += 1
        cache = getattr(self, "_decoded", None)
        image = cache.get(path) if cache is not None else None
        if image is None:
            try:
                image = load_rgb(path, max_pixels=self.max_image_pixels)
            except DECODE_ERRORS as err:
                self._mark_bad(path, err)
                return None
            if cache is not None:
                self._keep_decoded(path, image)
        elif not getattr(self.transform, "accepts_arrays", False):
            image = Image.fromarray(image)  # a copy, as a PIL image
        return self.transform(image) if self.transform is not None else image

    def enable_image_cache(self, megabytes: float, prefill: Optional[Iterable[int]] = None) -> int:
        """Keep decoded images (RGB uint8 arrays [H, W, 3], read-only, up to ``megabytes`` per process) so they
        are decoded once (``DATALOADER.IMAGE_CACHE_MB``).  A transform that ``accepts_arrays``
        (:class:`~uniperceiver.data.transforms.CropFlipNormalize`) gets the array; others a PIL copy.

        ``prefill``: record indices to decode now, in order, until the budget is used (an unreadable one is left
        for ``read_image`` to count).  Done before the loader forks its workers, they share the arrays; images
        cached later are each worker's own.  Returns how many were decoded."""
        self._decoded: Dict[str, Any] = {}
        self._decoded_budget = budget = int(megabytes * 2**20)
        decoded, start = 0, time.perf_counter()
        for index in prefill if prefill is not None else ():
            path = self.image_path(self.records[index])
            if path in self._decoded:
                continue
            try:
                image = load_rgb(path, max_pixels=self.max_image_pixels)
            except DECODE_ERRORS:
                continue
            if not self._keep_decoded(path, image):
                break
            decoded += 1
        if prefill is not None:
            logger.info("%s: %d images decoded into the image cache (%.1f of %g MiB) in %.1f s", self.name, decoded,
                        (budget - self._decoded_budget) / 2**20, megabytes, time.perf_counter() - start)
        return decoded

    def _keep_decoded(self, path: str, image: Image.Image) -> bool:
        """Put ``image`` into the cache as a read-only array if the budget has room; False if it has not."""
        size = image.width * image.height * 3
        if self._decoded_budget < size:
            return False
        self._decoded_budget -= size
        self._decoded[path] = array = np.asarray(image)
        array.setflags(write=False)
        return True

    def drop_records(self, bad: Callable[[dict], bool], reason: str, path: str = "") -> int:
        """Skip the records for which ``bad(record)`` holds (logged with ``path:record["line"]``, counted; more
        than ``max_bad_fraction`` of them stops with :class:`TooManyBadSamples`).  Returns how many."""
        problems = AnnotationProblems(path or self.name, self.max_bad_fraction, self.name)

        def keep():
            for i, record in enumerate(self.records):
                if bad(record):
                    problems.add(record.get("line", f"record {i}"), reason)
                else:
                    yield record

        kept = SerializedRecords(keep())
        problems.check(len(kept))
        if problems.num_bad:
            self.records = kept
        return problems.num_bad

    def make_sample(self, index: int, record: dict, image: Any) -> dict:
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict:
        n = len(self.records)
        for offset in range(n):
            i = (index + offset) % n
            record = self.records[i]  # unpickled once (SerializedRecords)
            image = self.read_image(record)
            if image is not None:
                return self.make_sample(i, record, image)
        raise TooManyBadSamples(f"{self.name}: no readable image in the whole dataset ({n} records)")

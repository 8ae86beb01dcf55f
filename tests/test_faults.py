"""Fault injection (issue 10): exact resume after SIGKILL / SIGTERM, kills during checkpoint saving, non-finite
gradients, bad data records, bad config / CLI input, and security (pickled checkpoints, unsafe YAML, no eval,
files written only under OUTPUT_DIR / CACHE_DIR / the demo data root).

Existing tests this file does not repeat: tests/test_checkpoint.py (atomic save under an exception, corrupt last
checkpoint fallback, strict loading), tests/test_preemption.py (SIGUSR1 -> checkpoint, exit 0, exact resume),
tests/test_engine.py (non-finite LOSS skip / stop), tests/test_datasets.py (corrupt images),
tests/test_video_vqa.py (truncated / garbage videos), tests/test_config.py (config parser errors at the API level).
"""
from __future__ import annotations

import ast
import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from conftest import ENGINE_SMOKE, PYTHON, REPO, clean_env, run_main
from uniperceiver.config import setup_cfg
from uniperceiver.data.datasets import (TooManyBadSamples, build_reader, read_coco_captions, read_image_label_list,
                                        read_jsonl_pairs, read_video_captions, read_vqa)
from uniperceiver.data.datasets.vqa import build_answer_vocab
from uniperceiver.engine import AMPStepEngine, NonFiniteLossError, Trainer
from uniperceiver.modeling import build_model
from uniperceiver.solver import build_optimizer
from uniperceiver.tasks import build_tasks
from uniperceiver.utils.events import EventStorage

QUICK = REPO / "configs" / "quick_schedules"
CLS = str(QUICK / "instant_classification.yaml")
INSTANT_MOE = str(QUICK / "instant_moe.yaml")

# Two task families on the demo data with every source of randomness switched on: RandAugment + random crops in a
# data-loader worker, mixup in the main process, MLM masking / random windows in a worker, vocabulary negative
# sampling, DropPath.
MULTITASK = f"""_BASE_: [{QUICK / 'instant_classification.yaml'}, {QUICK / 'instant_mlm.yaml'}]
TASKS:
  - NAME: imagenet
    DATALOADER: {{TRAIN_BATCH_SIZE: 4, NUM_WORKERS: 1, MIXUP: 0.8, RAND_AUGMENT: rand-m9-mstd0.5-inc1}}
  - NAME: bookswiki_mlm
    DATALOADER: {{TRAIN_BATCH_SIZE: 4, NUM_WORKERS: 1}}
    MODEL: {{VOCAB_NEGATIVES: 64}}
MODEL:
  BERT: {{DROP_PATH_PROB: 0.1}}
SOLVER:
  MAX_ITER: 40
  CHECKPOINT_PERIOD: 5
  WRITE_PERIOD: 1
"""
MULTITASK_ITERS = 40


# ----------------------------------------------------------------------------------------------- helpers
def _weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def _tagged_iteration(out: Path) -> int:
    return int(torch.load(out / (out / "last_checkpoint").read_text().strip(), weights_only=True)["iteration"])


def _metric_rows(out: Path) -> dict:
    """iteration -> the LAST row written for it (a killed run's rows past its checkpoint are rewritten after the
    resume), without the wall-clock and memory keys."""
    rows = {}
    for line in (out / "metrics.json").read_text().splitlines():
        row = json.loads(line)
        rows[row["iteration"]] = {k: v for k, v in row.items()
                                  if "time" not in k and not k.startswith(("samples_per_s_", "max_rss", "max_mem"))}
    return rows


def _start(args, out: Path) -> subprocess.Popen:
    cmd = [PYTHON, str(REPO / "main.py"), *[str(a) for a in args], "OUTPUT_DIR", str(out)]
    # own process group: SIGKILL reaches the data-loader workers too, like a node that dies
    return subprocess.Popen(cmd, cwd=REPO, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def _wait_for(pred, proc: subprocess.Popen, what: str, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended before {what}:\n{proc.stdout.read()[-3000:]}")
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


# ------------------------------------------------------------------------------------------- exact resume
@pytest.mark.slow
def test_sigkill_then_sigterm_then_resume_is_bitwise_exact(tmp_path):
    """Uninterrupted run vs. the same run SIGKILLed right after its first checkpoint, resumed, stopped
    gracefully by SIGTERM (exit 0 after a checkpoint), resumed again: bitwise equal final weights and equal
    metrics.json rows after the first resume point; 2 tasks, NUM_WORKERS 1."""
    cfg = tmp_path / "multitask.yaml"
    cfg.write_text(MULTITASK)
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    run_main(["--config-file", cfg, "OUTPUT_DIR", ref], timeout=400)

    proc = _start(["--config-file", cfg], cut)
    _wait_for(lambda: (cut / "last_checkpoint").exists(), proc, "the first checkpoint")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    first = _tagged_iteration(cut)
    assert first == 4 and not (cut / "model_final.pth").exists()

    proc = _start(["--config-file", cfg, "--resume"], cut)
    _wait_for(lambda: max(_metric_rows(cut)) >= first + 8 if (cut / "metrics.json").exists() else False, proc,
              "8 more steps")
    proc.send_signal(signal.SIGTERM)
    log, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, log[-3000:]
    assert "Preempted by SIGTERM" in log
    stopped = _tagged_iteration(cut)
    assert first + 8 <= stopped < MULTITASK_ITERS - 1 and not (cut / "model_final.pth").exists()

    run_main(["--config-file", cfg, "--resume", "OUTPUT_DIR", cut], timeout=400)
    log = (cut / "log.txt").read_text()
    assert f"Starting training from iteration {first + 1} to {MULTITASK_ITERS}" in log
    assert f"Starting training from iteration {stopped + 1} to {MULTITASK_ITERS}" in log
    a, b = _weights(ref / "model_final.pth"), _weights(cut / "model_final.pth")
    assert a.keys() == b.keys()
    differing = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differing, f"{len(differing)} tensors differ, e.g. {differing[:3]}"
    ra, rb = _metric_rows(ref), _metric_rows(cut)
    tail = [i for i in sorted(ra) if i > first]
    assert len(tail) == MULTITASK_ITERS - first - 1
    assert [ra[i] for i in tail] == [rb[i] for i in tail]
    assert {"loss_imagenet", "loss_bookswiki_mlm"} <= {k for i in tail for k in ra[i]}


# -------------------------------------------------------------------------------- kill during checkpointing
_KILL_DURING_SAVE = r"""
import os, signal, sys, torch
from uniperceiver.checkpoint import Checkpointer
out, where = sys.argv[1], sys.argv[2]
model = torch.nn.Linear(256, 256)
ckpt = Checkpointer(model, out)
ckpt.save("model_0000004", iteration=4)
real_save, real_tag = torch.save, ckpt.tag_last_checkpoint
def die():
    os.kill(os.getpid(), signal.SIGKILL)
def save_then_die(obj, f, *a, **k):          # killed while the bytes are going to disk
    real_save(obj, f, *a, **k)
    with open(f, "r+b") as fh:
        fh.truncate(os.path.getsize(f) // 2)
    die()
def tag_then_die(name):                      # killed between the file's rename and the tag
    die()
if where == "save":
    torch.save = save_then_die
else:
    ckpt.tag_last_checkpoint = tag_then_die
with torch.no_grad():
    model.weight.add_(1.0)
ckpt.save("model_0000009", iteration=9)
"""


@pytest.mark.parametrize("where", ["save", "tag"])
def test_kill_during_checkpoint_save_keeps_the_previous_one(tmp_path, where):
    out = tmp_path / "out"
    proc = subprocess.run([PYTHON, "-c", _KILL_DURING_SAVE, str(out), where], cwd=REPO, env=clean_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert (out / "last_checkpoint").read_text() == "model_0000004.pth"
    names = sorted(os.listdir(out))
    # a partial file never has a checkpoint's name (only a temp name a later save ignores)
    assert ("model_0000009.pth" in names) == (where == "tag")
    from uniperceiver.checkpoint import Checkpointer

    model = torch.nn.Linear(256, 256)
    extra = Checkpointer(model, str(out)).resume()
    assert extra["iteration"] == 4


# --------------------------------------------------------------------------------------- non-finite gradients
class _InfGradTask:
    """Adds a term that is 0 in the forward but has a NaN gradient (sqrt at 0) at the given draws."""

    def __init__(self, task, bad_calls):
        self.task, self.bad_calls, self.calls = task, set(bad_calls), 0

    def losses(self, model, batch):
        out = self.task.losses(model, batch)
        self.calls += 1
        if self.calls - 1 in self.bad_calls:
            p = next(model.parameters())
            out = {k: v + torch.sqrt(p.flatten()[0] * 0.0) for k, v in out.items()}
        return out


def _inf_grad_trainer(max_nonfinite, bad_calls):
    from uniperceiver.data import build_train_loader

    cfg = setup_cfg(ENGINE_SMOKE, ["SOLVER.MAX_NONFINITE_STEPS", str(max_nonfinite)])
    torch.manual_seed(0)
    model = build_model(cfg)
    tasks = build_tasks(cfg)
    loader = build_train_loader(cfg, tasks)
    wrapped = {n: _InfGradTask(t, bad_calls) for n, t in tasks.items()}
    trainer = Trainer(model, wrapped, loader, AMPStepEngine(model, build_optimizer(cfg, model)),
                      max_nonfinite_steps=max_nonfinite, seed=0)
    return trainer, model


def test_nonfinite_gradient_with_finite_loss_stops_naming_iteration_task_term_and_parameter():
    trainer, model = _inf_grad_trainer(0, bad_calls=[1])
    with EventStorage() as trainer.storage:
        trainer.iter = 0
        trainer.run_step()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        trainer.iter = 1
        with pytest.raises(NonFiniteLossError) as err:
            trainer.run_step()
    msg = str(err.value)
    assert "iteration 1" in msg and "task synthetic" in msg and "loss_synthetic" in msg
    assert "non-finite gradient of" in msg and "(finite)" in msg
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing was stepped


def test_nonfinite_gradients_are_skipped_up_to_k_consecutive():
    trainer, model = _inf_grad_trainer(2, bad_calls=[1, 2, 4, 5, 6])
    with EventStorage() as trainer.storage:
        trainer.iter = 0
        trainer.run_step()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        for trainer.iter in (1, 2):
            trainer.run_step()
        assert trainer.nonfinite_streak == 2
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
        assert all(torch.isfinite(v).all() for v in model.state_dict().values())
        trainer.iter = 3
        trainer.run_step()
        assert trainer.nonfinite_streak == 0
        for trainer.iter in (4, 5):
            trainer.run_step()
        trainer.iter = 6
        with pytest.raises(NonFiniteLossError, match="iteration 6"):
            trainer.run_step()


# -------------------------------------------------------------------------------------------------- bad data
def _write_imagenet(root: Path, lines) -> Path:
    from PIL import Image

    (root / "img").mkdir(parents=True, exist_ok=True)
    for i in range(4):
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(root / "img" / f"{i}.png")
    (root / "img" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    (root / "list.txt").write_text("\n".join(lines) + "\n")
    (root / "imagenet").mkdir(exist_ok=True)  # the demo label set's path under DATA_PATH: 10 digit names
    (root / "imagenet" / "classnames.txt").write_text("\n".join(f"digit {i}" for i in range(10)) + "\n")
    return root / "list.txt"


GOOD_LIST = [f"img/{i % 4}.png {i % 3}" for i in range(18)]
GOOD_JSONL = [json.dumps({"image": f"img/{i % 4}.png", "caption": f"a picture number {i}"}) for i in range(18)]

# (name, reader kind, the bad record, the reason logged)
BAD_RECORDS = [
    ("malformed_json_line", "jsonl", '{"image": "img/0.png", "caption": ', "malformed line"),
    ("json_without_caption", "jsonl", '{"image": "img/0.png"}', "malformed line"),
    ("json_not_an_object", "jsonl", '["img/0.png", "a caption"]', "malformed line"),
    ("empty_caption", "jsonl", '{"image": "img/0.png", "caption": "   "}', "empty caption"),
    ("null_caption", "jsonl", '{"image": "img/0.png", "caption": null}', "empty caption"),
    ("list_line_without_label", "list", "img/0.png", "malformed line"),
    ("list_label_not_a_number", "list", "img/0.png three", "malformed line"),
    ("negative_label", "list", "img/0.png -3", "label out of range"),
]


def _read(kind, path, **kw):
    return (read_jsonl_pairs if kind == "jsonl" else read_image_label_list)(str(path), **kw)


@pytest.mark.parametrize("name,kind,bad,reason", BAD_RECORDS, ids=[c[0] for c in BAD_RECORDS])
def test_bad_annotation_record_is_skipped_counted_and_logged_with_file_and_line(tmp_path, caplog, name, kind,
                                                                                bad, reason):
    lines = (GOOD_JSONL if kind == "jsonl" else GOOD_LIST)[:]
    lines.insert(6, bad)  # line 7
    path = tmp_path / ("train.jsonl" if kind == "jsonl" else "list.txt")
    path.write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING, logger="uniperceiver"):
        records = _read(kind, path, max_bad_fraction=0.1, name="task/train")
    n = sum(len(r["captions"]) for r in records) if kind == "jsonl" else len(records)
    assert n == 18
    text = caplog.text
    assert f"{path}:7: {reason}" in text and "task/train" in text
    assert f"skipped 1 of 19 annotation records of {path}" in text
    with pytest.raises(TooManyBadSamples, match=r"1 of 19 annotation records .*MAX_BAD_FRACTION=0\.05"):
        _read(kind, path, max_bad_fraction=0.05, name="task/train")
    with pytest.raises(ValueError, match=f"{path.name}:7"):  # standalone (no fraction): strict
        _read(kind, path)


def test_coco_caption_empty_caption_and_unknown_image_are_skipped(tmp_path, caplog):
    ann = {"images": [{"id": i, "file_name": f"img/{i}.png"} for i in range(3)],
           "annotations": [{"id": j, "image_id": j % 3, "caption": f"caption {j}"} for j in range(18)]
           + [{"id": 100, "image_id": 1, "caption": ""}, {"id": 101, "image_id": 77, "caption": "ghost"}]}
    path = tmp_path / "captions_train.json"
    path.write_text(json.dumps(ann))
    with caplog.at_level(logging.WARNING, logger="uniperceiver"):
        records = read_coco_captions(str(path), max_bad_fraction=0.2, name="coco/train")
    assert sum(len(r["captions"]) for r in records) == 18
    assert "annotation 18, id 100): empty caption" in caplog.text
    assert "annotation 19, id 101): unknown image_id" in caplog.text
    with pytest.raises(TooManyBadSamples, match="empty caption: 1, unknown image_id: 1"):
        read_coco_captions(str(path), max_bad_fraction=0.05, name="coco/train")


# JSON annotation files (COCO captions, video captions, VQA): malformed entries are bad records like the above.
def _caption_json(kind="image", bad_item=None, bad_ann=None):
    """3 images (or videos) with 18 good captions; ``bad_item`` / ``bad_ann`` inserted at index 1 / 6."""
    items = [{"id": i, "file_name": f"{kind}/{i}.png"} for i in range(3)]
    anns = [{"id": j, f"{kind}_id": j % 3, "caption": f"caption {j}"} for j in range(18)]
    if bad_item is not None:
        items.insert(1, bad_item)
    if bad_ann is not None:
        anns.insert(6, bad_ann)
    return {f"{kind}s": items, "annotations": anns}


BAD_IMAGE_ENTRIES = [
    ("not_an_object", "img/9.png"),
    ("no_id", {"file_name": "img/9.png"}),
    ("no_file_name", {"id": 9}),
    ("empty_file_name", {"id": 9, "file_name": " "}),
    ("file_name_not_a_string", {"id": 9, "file_name": 9}),
    ("id_not_a_scalar", {"id": [9], "file_name": "img/9.png"}),
]


@pytest.mark.parametrize("name,entry", BAD_IMAGE_ENTRIES, ids=[c[0] for c in BAD_IMAGE_ENTRIES])
def test_coco_caption_malformed_image_entry_is_a_bad_record(tmp_path, caplog, name, entry):
    path = tmp_path / "captions_train.json"
    path.write_text(json.dumps(_caption_json(bad_item=entry)))
    with caplog.at_level(logging.WARNING, logger="uniperceiver"):
        records = read_coco_captions(str(path), max_bad_fraction=0.1, name="coco/train")
    assert [r["image"] for r in records] == ["image/0.png", "image/1.png", "image/2.png"]
    assert sum(len(r["captions"]) for r in records) == 18
    assert f"{path} (image 1): malformed image entry" in caplog.text
    assert f"skipped 1 of 19 annotation records of {path}" in caplog.text
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))} \(image 1\): malformed image entry"):
        read_coco_captions(str(path))


def test_coco_caption_images_or_annotations_not_a_list_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "captions_train.json"
    for key, value in (("images", {"0": "img/0.png"}), ("annotations", "a caption")):
        data = _caption_json()
        data[key] = value
        path.write_text(json.dumps(data))
        with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: '{key}' must be a list"):
            read_coco_captions(str(path), max_bad_fraction=0.5)


# (name, bad video entry, bad annotation, the reason logged, where)
BAD_VIDEO_RECORDS = [
    ("unknown_video", None, {"id": 99, "video_id": 42, "caption": "a ghost"}, "unknown video_id",
     "annotation 6, id 99"),
    ("empty_caption", None, {"id": 99, "video_id": 1, "caption": " "}, "empty caption", "annotation 6, id 99"),
    ("null_caption", None, {"id": 99, "video_id": 1, "caption": None}, "empty caption", "annotation 6, id 99"),
    ("annotation_not_an_object", None, "a caption", "malformed annotation", "annotation 6"),
    ("video_without_file_name", {"id": 7}, None, "malformed video entry", "video 1"),
    ("video_not_an_object", "video/7.mp4", None, "malformed video entry", "video 1"),
]


@pytest.mark.parametrize("name,bad_item,bad_ann,reason,where", BAD_VIDEO_RECORDS,
                         ids=[c[0] for c in BAD_VIDEO_RECORDS])
def test_video_caption_bad_record_is_skipped_counted_and_logged(tmp_path, caplog, name, bad_item, bad_ann, reason,
                                                                where):
    path = tmp_path / "captions_train.json"
    path.write_text(json.dumps(_caption_json("video", bad_item, bad_ann)))
    with caplog.at_level(logging.WARNING, logger="uniperceiver"):
        records = read_video_captions(str(path), max_bad_fraction=0.1, name="msvd/train")
    assert [r["image"] for r in records] == ["video/0.png", "video/1.png", "video/2.png"]
    assert [len(r["captions"]) for r in records] == [6, 6, 6]
    assert f"{path} ({where}): {reason}" in caplog.text and "msvd/train" in caplog.text
    with pytest.raises(TooManyBadSamples, match=rf"1 of 19 annotation records .*\({reason}: 1\)"):
        read_video_captions(str(path), max_bad_fraction=0.05)
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))} \({where}\): {reason}"):
        read_video_captions(str(path))


def _vqa_files(root: Path, bad_question=None, bad_annotation=None):
    """18 good questions (ids 1000..1017) with 10 answers each; the bad record inserted at index 5."""
    questions = [{"image_id": i, "question": f"what is {i}?", "question_id": 1000 + i} for i in range(18)]
    anns = [{"question_id": 1000 + i, "image_id": i, "answers": [{"answer": str(i % 4)}] * 10} for i in range(18)]
    if bad_question is not None:
        questions.insert(5, bad_question)
    if bad_annotation is not None:
        anns.insert(5, bad_annotation)
    qpath = root / "v2_OpenEnded_mscoco_train2014_questions.json"
    apath = root / "v2_mscoco_train2014_annotations.json"
    qpath.write_text(json.dumps({"data_subtype": "train2014", "questions": questions}))
    apath.write_text(json.dumps({"annotations": anns}))
    return qpath, apath


# (name, bad question, bad annotation, the reason logged, where, question ids read)
GOOD_QIDS = list(range(1000, 1018))
BAD_VQA_RECORDS = [
    ("question_without_text", {"image_id": 1, "question_id": 2000}, None, "malformed question",
     "question 5, question_id 2000", GOOD_QIDS),
    ("question_without_id", {"image_id": 1, "question": "why?"}, None, "malformed question",
     "question 5, question_id None", GOOD_QIDS),
    ("question_without_image", {"question": "why?", "question_id": 2000}, None, "malformed question",
     "question 5, question_id 2000", GOOD_QIDS),
    ("empty_question", {"image_id": 1, "question": "  ", "question_id": 2000}, None, "empty question",
     "question 5, question_id 2000", GOOD_QIDS),
    ("question_not_an_object", "why?", None, "malformed question", "question 5", GOOD_QIDS),
    ("annotation_without_question_id", None, {"answers": [{"answer": "1"}] * 10}, "malformed annotation",
     "annotation 5, question_id None", GOOD_QIDS),
    ("annotation_without_answers", None, {"question_id": 2000}, "malformed annotation",
     "annotation 5, question_id 2000", GOOD_QIDS),
    ("answers_not_objects", None, {"question_id": 2000, "answers": ["1"] * 10}, "malformed annotation",
     "annotation 5, question_id 2000", GOOD_QIDS),
    # the annotation of question 1003 is malformed: that question is dropped too (no usable answers)
    ("answers_not_a_list", None, {"question_id": 1003, "answers": "1"}, "malformed annotation",
     "annotation 5, question_id 1003", [q for q in GOOD_QIDS if q != 1003]),
]


@pytest.mark.parametrize("name,bad_q,bad_ann,reason,where,qids", BAD_VQA_RECORDS,
                         ids=[c[0] for c in BAD_VQA_RECORDS])
def test_vqa_bad_record_is_skipped_counted_and_logged(tmp_path, caplog, name, bad_q, bad_ann, reason, where, qids):
    qpath, apath = _vqa_files(tmp_path, bad_q, bad_ann)
    bad_file = qpath if bad_q is not None else apath
    with caplog.at_level(logging.WARNING, logger="uniperceiver"):
        records = read_vqa(str(qpath), max_bad_fraction=0.1, name="vqa/train")
    assert [r["question_id"] for r in records] == qids
    assert all(len(r["answers"]) == 10 and r["question"].startswith("what is") for r in records)
    assert records[0]["image"] == "train2014/COCO_train2014_000000000000.jpg"
    assert f"{bad_file} ({where}): {reason}" in caplog.text and "vqa/train" in caplog.text
    with pytest.raises(TooManyBadSamples, match=rf"1 of \d+ annotation records of {re.escape(str(bad_file))}"):
        read_vqa(str(qpath), max_bad_fraction=0.01)
    with pytest.raises(ValueError, match=rf"{re.escape(str(bad_file))} \({re.escape(where)}\): {reason}"):
        read_vqa(str(qpath))


def test_answer_vocab_skips_malformed_annotations_with_one_warning(tmp_path, caplog):
    _, apath = _vqa_files(tmp_path)
    data = json.loads(apath.read_text())
    data["annotations"] += [{"question_id": 2000, "answers": ["7"] * 10}, "7", {"question_id": 2001},
                            {"question_id": 2002, "answers": [{"answer": 7}] * 10}]
    apath.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING, logger="uniperceiver"):
        vocab = build_answer_vocab([str(apath)], min_count=3)
    assert vocab == ["0", "1", "2", "3"]  # 50, 50, 40, 40 human answers; no "7" from the malformed ones
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "skipped 4 malformed annotations" in warnings[0] and str(apath) in warnings[0]


TRUNCATED_JSON = '{"images": [\n  {"id": 1,\n'  # Expecting property name: line 3, column 1


@pytest.mark.parametrize("reader", ["coco_caption", "video_caption", "vqa_questions", "vqa_annotations",
                                    "answer_vocab"])
def test_truncated_json_annotation_file_names_path_line_and_column(tmp_path, reader):
    qpath, apath = _vqa_files(tmp_path)
    path = {"vqa_questions": qpath, "vqa_annotations": apath, "answer_vocab": apath}.get(
        reader, tmp_path / "captions_train.json")
    path.write_text(TRUNCATED_JSON)
    read = {
        "coco_caption": lambda: read_coco_captions(str(path), max_bad_fraction=0.5),
        "video_caption": lambda: read_video_captions(str(path), max_bad_fraction=0.5),
        "vqa_questions": lambda: read_vqa(str(qpath), max_bad_fraction=0.5),
        "vqa_annotations": lambda: read_vqa(str(qpath), max_bad_fraction=0.5),
        "answer_vocab": lambda: build_answer_vocab([str(apath)]),
    }[reader]
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}:3:1: not valid JSON: Expecting property name"):
        read()


def test_video_caption_and_vqa_readers_use_max_bad_fraction_of_the_task(tmp_path):
    """build_reader passes DATALOADER.MAX_BAD_FRACTION to the video-caption and VQA annotation readers."""
    (tmp_path / "msvd" / "annotations").mkdir(parents=True)
    (tmp_path / "msvd" / "annotations" / "captions_train.json").write_text(json.dumps(
        _caption_json("video", bad_ann={"id": 99, "video_id": 1, "caption": ""})))
    (tmp_path / "vqa" / "annotations").mkdir(parents=True)
    _vqa_files(tmp_path / "vqa" / "annotations", bad_question={"image_id": 1, "question": "", "question_id": 2000})
    for config, task, n in (("instant_video.yaml", 1, 18), ("instant_vqa.yaml", 0, 18)):
        cfg = setup_cfg(str(QUICK / config), ["DATA_PATH", str(tmp_path), "DATALOADER.MAX_BAD_FRACTION", "0.1"])
        assert len(build_reader(cfg.TASKS[task], cfg, "train")) == n
        cfg = setup_cfg(str(QUICK / config), ["DATA_PATH", str(tmp_path), "DATALOADER.MAX_BAD_FRACTION", "0.01"])
        with pytest.raises(TooManyBadSamples, match="empty (caption|question): 1"):
            build_reader(cfg.TASKS[task], cfg, "train")


def _classification_cfg(root: Path, *opts):
    return setup_cfg(CLS, ["DATA_PATH", str(root), "DATALOADER.FEATS_FOLDER", ".", "DATALOADER.ANNO_FOLDER", ".",
                           "DATASETS.TRAIN", "list.txt", *opts])


def test_out_of_range_label_is_skipped_by_the_task_and_too_many_stop(tmp_path, caplog):
    """Labels the task's label set (10 demo digits) has no class for: skipped per task with file:line."""
    list_file = _write_imagenet(tmp_path, GOOD_LIST + ["img/1.png 10", "img/2.png 9"])
    cfg = _classification_cfg(tmp_path, "DATALOADER.MAX_BAD_FRACTION", "0.1")
    task = build_tasks(cfg)["imagenet"]
    with caplog.at_level(logging.WARNING, logger="uniperceiver"):
        ds = task.build_dataset("train")
    assert len(ds) == 19 and max(r["label"] for r in ds.records) == 9
    assert "list.txt:19: label out of range [0, 10)" in caplog.text and str(list_file.parent) in caplog.text
    cfg = _classification_cfg(tmp_path, "DATALOADER.MAX_BAD_FRACTION", "0.01")
    with pytest.raises(TooManyBadSamples, match="label out of range"):
        build_tasks(cfg)["imagenet"].build_dataset("train")


def test_corrupt_image_among_bad_records_is_skipped_in_the_loader(tmp_path, caplog):
    """A corrupt image file (read lazily, in __getitem__) next to bad list lines: the reader still yields
    full batches of readable images."""
    _write_imagenet(tmp_path, GOOD_LIST[:8] + ["img/corrupt.png 1", "bad line"])
    cfg = _classification_cfg(tmp_path, "DATALOADER.MAX_BAD_FRACTION", "0.5")
    ds = build_reader(cfg.TASKS[0], cfg, "train")
    with caplog.at_level(logging.WARNING, logger="uniperceiver"):
        samples = [ds[i] for i in range(len(ds))]
    assert len(ds) == 9 and all(s["image"].size == (8, 8) for s in samples)
    assert "corrupt.png" in caplog.text and ds.num_bad == 1


@pytest.mark.slow
def test_training_with_bad_data_runs_and_above_the_fraction_stops_in_one_line(tmp_path):
    root = tmp_path / "data"
    _write_imagenet(root, GOOD_LIST + ["img/corrupt.png 1", "img/3.png 12", "not a record"])
    args = ["--config-file", CLS, "DATA_PATH", root, "DATALOADER.FEATS_FOLDER", ".", "DATALOADER.ANNO_FOLDER", ".",
            "DATASETS.TRAIN", "list.txt", "DATASETS.VAL", "list.txt", "SOLVER.MAX_ITER", "3",
            "DATALOADER.TRAIN_BATCH_SIZE", "4", "DATALOADER.NUM_WORKERS", "1", "LR_SCHEDULER.WARMUP", "0"]
    run_main([*args, "DATALOADER.MAX_BAD_FRACTION", "0.5", "OUTPUT_DIR", tmp_path / "ok"])
    log = (tmp_path / "ok" / "log.txt").read_text()
    assert "list.txt:20: label out of range" in log and "list.txt:21: malformed line" in log
    assert "corrupt.png" in log
    proc = run_main([*args, "DATALOADER.MAX_BAD_FRACTION", "0.0", "OUTPUT_DIR", tmp_path / "stop"], check=False)
    assert proc.returncode == 1
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "MAX_BAD_FRACTION=0.0" in err[0] and "Traceback" not in proc.stderr


@pytest.mark.slow
@pytest.mark.distributed
def test_spawned_workers_stop_on_bad_data_in_one_line_each(tmp_path):
    """``--num-gpus 2``: the stop is reported by each worker as under one process (no worker traceback)."""
    root = tmp_path / "data"
    _write_imagenet(root, GOOD_LIST + ["img/3.png 12"])
    proc = run_main(["--num-gpus", "2", "--config-file", CLS, "DATA_PATH", root, "DATALOADER.FEATS_FOLDER", ".",
                     "DATALOADER.ANNO_FOLDER", ".", "DATASETS.TRAIN", "list.txt", "DATASETS.VAL", "list.txt",
                     "SOLVER.MAX_ITER", "3", "DATALOADER.MAX_BAD_FRACTION", "0.0", "OUTPUT_DIR", tmp_path / "stop"],
                    check=False, timeout=300)
    assert proc.returncode == 1, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2 and all("MAX_BAD_FRACTION=0.0" in line for line in errors), proc.stderr
    assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------------------- bad config / CLI
@contextlib.contextmanager
def _restored_loggers():
    """main.run reconfigures the package loggers (handlers, propagate); put them back for later tests."""
    saved = {name: (lg.handlers[:], lg.propagate, lg.level)
             for name in ("uniperceiver", "fvcore") for lg in [logging.getLogger(name)]}
    try:
        yield
    finally:
        for name, (handlers, propagate, level) in saved.items():
            lg = logging.getLogger(name)
            for h in lg.handlers:
                if h not in handlers:
                    h.close()
            lg.handlers, lg.propagate, lg.level = handlers, propagate, level


def _evil_pickle(path: Path, marker: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"model": {"w": torch.zeros(1)}, "payload": Evil(), "iteration": 3}, path)


def _bad_cli_cases(tmp: Path):
    """(name, argv, text the one-line error must contain).  Files the cases need are written into ``tmp``."""
    (tmp / "a.yaml").write_text("_BASE_: b.yaml\n")
    (tmp / "b.yaml").write_text("_BASE_: a.yaml\n")
    (tmp / "evil.yaml").write_text(f'SOLVER: !!python/object/apply:os.system ["touch {tmp}/marker"]\n')
    (tmp / "broken.yaml").write_text("SOLVER: {MAX_ITER: [1,\n")
    (tmp / "model_only.yaml").write_text(f"_BASE_: {REPO}/configs/BERT_L12_H192_experiments/"
                                         "base_model_bert_l12_h192.yaml\n")
    torch.save({"model": {"head.weight": torch.zeros(3, 3)}}, tmp / "other_arch.pth")
    _evil_pickle(tmp / "evil.pth", tmp / "marker")
    c = ["--config-file", CLS]
    return [
        ("unknown_key", c + ["SOLVER.MAX_ITERS", "3"], "did you mean SOLVER.MAX_ITER"),
        ("unknown_task_key", c + ["TASKS.imagenet.DATALOADER.BATCH", "3"], "TASKS.imagenet.DATALOADER.BATCH"),
        ("unknown_task_name", c + ["TASKS.nope.DATALOADER.NUM_WORKERS", "1"], "nope"),
        ("wrong_type", c + ["SOLVER.MAX_ITER", "abc"], "SOLVER.MAX_ITER"),
        ("wrong_type_bool", c + ["SOLVER.AMP.ENABLED", "maybe"], "SOLVER.AMP.ENABLED"),
        ("odd_tokens", c + ["SOLVER.MAX_ITER"], "odd number"),
        ("missing_config_file", ["SOLVER.MAX_ITER", "3"], "--config-file"),
        ("config_file_not_found", ["--config-file", str(tmp / "nope.yaml")], "nope.yaml"),
        ("model_only_config", ["--config-file", str(tmp / "model_only.yaml")], "no TASKS"),
        ("base_cycle", ["--config-file", str(tmp / "a.yaml")], "cycle"),
        ("yaml_syntax", ["--config-file", str(tmp / "broken.yaml")], "broken.yaml"),
        ("python_yaml_tag", ["--config-file", str(tmp / "evil.yaml")], "YAML tag"),
        ("missing_data_path", c + ["DATA_PATH", str(tmp / "no_data")], "annotation file not found"),
        ("unknown_task_type", c + ["TASKS.imagenet.DATASETS.TASK_TYPE", "image_nope"], "image_nope"),
        ("unknown_dataset", c + ["DATASETS.DATASET_NAME", "NotADataset"], "NotADataset"),
        ("accum_iter_negative", c + ["SOLVER.ACCUM_ITER", "-1"], "SOLVER.ACCUM_ITER"),
        ("batch_size_zero", c + ["DATALOADER.TRAIN_BATCH_SIZE", "0"], "TASKS.imagenet.DATALOADER.TRAIN_BATCH_SIZE"),
        ("task_batch_size_zero", c + ["TASKS.imagenet.DATALOADER.TEST_BATCH_SIZE", "0"], "TEST_BATCH_SIZE"),
        ("max_iter_zero", c + ["SOLVER.MAX_ITER", "0"], "SOLVER.MAX_ITER"),
        ("bad_fraction_above_1", c + ["DATALOADER.MAX_BAD_FRACTION", "2.0"], "MAX_BAD_FRACTION"),
        ("data_percentage_zero", c + ["DATALOADER.DATA_PERCENTAGE", "0.0"], "DATA_PERCENTAGE"),
        ("trainable_matches_nothing", c + ["MODEL.TRAINABLE", "['no_such_param']"], "MODEL.TRAINABLE"),
        ("weights_missing", c + ["MODEL.WEIGHTS", str(tmp / "missing.pth")], "missing.pth"),
        ("weights_other_architecture", c + ["MODEL.WEIGHTS", str(tmp / "other_arch.pth")],
         "unexpected key head.weight"),
        ("weights_pickled_object", c + ["MODEL.WEIGHTS", str(tmp / "evil.pth")], "pickled Python object"),
        ("unknown_amp_dtype", c + ["SOLVER.AMP.ENABLED", "True", "SOLVER.AMP.DTYPE", "fp8"], "SOLVER.AMP.DTYPE"),
        ("expert_parallel_independent_tasks", ["--config-file", INSTANT_MOE, "MOE.BACKEND", "deepspeed",
                                               "SOLVER.DEEPSPEED.ENABLED", "True", "MOE.EP_SIZE", "2"],
         "DATALOADER.STRATEGY = 'independent' must be 'synced' with MOE.EP_SIZE 2"),
        ("moe_zero3", ["--config-file", INSTANT_MOE, "SOLVER.DEEPSPEED.ENABLED", "True",
                       "SOLVER.DEEPSPEED.ZERO_STAGE", "3"], "MOE.MOE with DeepSpeed ZeRO stage 3 is not supported"),
        ("expert_parallel_eval_only", ["--config-file", INSTANT_MOE, "--eval-only", "MOE.BACKEND", "deepspeed",
                                       "SOLVER.DEEPSPEED.ENABLED", "True", "MOE.EP_SIZE", "2",
                                       "DATALOADER.STRATEGY", "synced"], "evaluate with MOE.EP_SIZE 1"),
    ]


# the case names (the cases themselves need a tmp dir; the test checks that both lists agree)
BAD_CLI_NAMES = [
    "unknown_key", "unknown_task_key", "unknown_task_name", "wrong_type", "wrong_type_bool", "odd_tokens",
    "missing_config_file", "config_file_not_found", "model_only_config", "base_cycle", "yaml_syntax",
    "python_yaml_tag", "missing_data_path", "unknown_task_type", "unknown_dataset", "accum_iter_negative",
    "batch_size_zero", "task_batch_size_zero", "max_iter_zero", "bad_fraction_above_1", "data_percentage_zero",
    "trainable_matches_nothing", "weights_missing", "weights_other_architecture", "weights_pickled_object",
    "unknown_amp_dtype", "expert_parallel_independent_tasks", "moe_zero3", "expert_parallel_eval_only"]


@pytest.mark.parametrize("case", BAD_CLI_NAMES)
def test_bad_config_or_cli_is_one_line_exit_2(tmp_path, capsys, case):
    import main

    cases = {name: (argv, expect) for name, argv, expect in _bad_cli_cases(tmp_path)}
    assert set(cases) == set(BAD_CLI_NAMES)
    argv, expect = cases[case]
    with _restored_loggers():
        code = main.run([*argv, "OUTPUT_DIR", str(tmp_path / "out"), "SOLVER.CHECKPOINT_PERIOD", "1000"])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err, err
    assert expect in err
    assert not (tmp_path / "marker").exists()  # nothing in a refused file ran
    assert not (tmp_path / "out" / "last_checkpoint").exists()  # and no training happened


def test_bad_cli_in_a_real_process_has_no_traceback_unless_debug(tmp_path):
    proc = run_main(["--config-file", CLS, "SOLVER.ACCUM_ITER", "-2", "OUTPUT_DIR", tmp_path / "o"], check=False)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: invalid config: SOLVER.ACCUM_ITER = -2 must be >= 0 (<= 1: no accumulation)"]
    proc = run_main(["--config-file", CLS, "--debug", "SOLVER.ACCUM_ITER", "-2", "OUTPUT_DIR", tmp_path / "o"],
                    check=False)
    assert proc.returncode != 0 and "Traceback" in proc.stderr


# ------------------------------------------------------------------------------------------------- security
def test_resume_from_a_checkpoint_carrying_a_pickled_object_runs_nothing(tmp_path, capsys):
    import main

    out = tmp_path / "out"
    out.mkdir()
    _evil_pickle(out / "model_0000003.pth", tmp_path / "marker")
    (out / "last_checkpoint").write_text("model_0000003.pth")
    with _restored_loggers():
        code = main.run(["--config-file", ENGINE_SMOKE, "--resume", "OUTPUT_DIR", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "no readable checkpoint" in err and len(err.splitlines()) == 1
    assert "pickled Python object (posix.system)" in (out / "log.txt").read_text()
    assert not (tmp_path / "marker").exists()


def test_no_eval_or_exec_in_the_code():
    """Config strings are never evaluated: no eval / exec call anywhere in the package, main.py or tools."""
    calls = []
    for path in [REPO / "main.py", *(REPO / "uniperceiver").rglob("*.py"), *(REPO / "tools").rglob("*.py")]:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("eval", "exec"):
                calls.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not calls


def test_fraction_values_are_parsed_not_evaluated(tmp_path):
    marker = tmp_path / "marker"
    from uniperceiver.config import ConfigError

    with pytest.raises(ConfigError):
        setup_cfg(CLS, ["MODEL.POSEMBED_SCALE", f"__import__('os').system('touch {marker}')"])
    assert setup_cfg(CLS, ["MODEL.POSEMBED_SCALE", "160/224"]).MODEL.POSEMBED_SCALE == pytest.approx(160 / 224)
    assert not marker.exists()


@pytest.mark.slow
def test_training_writes_only_under_output_cache_and_demo_root(tmp_path):
    """HOME, the working directory and TMPDIR point at empty temp dirs; after a short training with evaluation,
    checkpoints and a data-loader worker, they are still empty (all output went to OUTPUT_DIR and CACHE_DIR, which
    holds the demo root), except python multiprocessing's socket dir in TMPDIR."""
    dirs = {name: tmp_path / name for name in ("home", "cwd", "tmp", "cache", "out")}
    for d in dirs.values():
        d.mkdir()
    env = clean_env({"HOME": str(dirs["home"]), "TMPDIR": str(dirs["tmp"]), "UNIPERCEIVER_CACHE": str(dirs["cache"]),
                     "PYTHONDONTWRITEBYTECODE": "1", "XDG_CACHE_HOME": "", "XDG_CONFIG_HOME": ""})
    for key in ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "MPLCONFIGDIR", "TORCH_HOME", "HF_HOME"):
        env.pop(key, None)
    cmd = [PYTHON, str(REPO / "main.py"), "--config-file", CLS, "SOLVER.MAX_ITER", "3", "LR_SCHEDULER.WARMUP", "0",
           "SOLVER.CHECKPOINT_PERIOD", "2", "SOLVER.EVAL_PERIOD", "3", "DATALOADER.NUM_WORKERS", "1",
           "OUTPUT_DIR", str(dirs["out"])]
    proc = subprocess.run(cmd, cwd=dirs["cwd"], env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (dirs["out"] / "model_final.pth").exists() and (dirs["cache"] / "demo").is_dir()
    for name in ("home", "cwd", "tmp"):
        left = [str(p.relative_to(dirs[name])) for p in dirs[name].rglob("*")]
        if name == "tmp":  # python multiprocessing's own socket dir of the data-loader worker (pymp-*/listener-*)
            left = [p for p in left if not p.split("/")[0].startswith("pymp-")]
        assert not left, f"files written under {name}: {left[:10]}"

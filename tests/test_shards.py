"""WebDataset tar shards (uniperceiver/data/shards.py, tools/make_shards.py): written and read back sample for
sample, exact positions and resume, disjoint readers on 2 gloo ranks, bad shards skipped and counted."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import tarfile
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image

from conftest import PYTHON, REPO, clean_env, free_port, load_tool, run_main
from uniperceiver.config import ConfigError, setup_cfg
from uniperceiver.data.multitask import TaskStream
from uniperceiver.data.shards import ShardDataset, ShardReadError, expand_urls, iter_shard

RETRIEVAL = str(REPO / "configs" / "quick_schedules" / "instant_retrieval.yaml")


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (value % 256, 0, 0)).save(buf, format="PNG")
    return buf.getvalue()


def _write_tar(path, samples):
    """samples: list of {ext: bytes} with "__key__"."""
    with tarfile.open(path, "w") as tar:
        for sample in samples:
            for ext, data in sample.items():
                if ext == "__key__":
                    continue
                info = tarfile.TarInfo(f"{sample['__key__']}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def _pair_shards(folder, num_shards=4, per_shard=5):
    """Shards of numbered pairs: caption "sample N" with a PNG whose red channel is N."""
    os.makedirs(folder, exist_ok=True)
    n = 0
    for s in range(num_shards):
        samples = []
        for _ in range(per_shard):
            samples.append({"__key__": f"{n:09d}", "png": _png(n), "txt": f"sample {n}".encode()})
            n += 1
        _write_tar(os.path.join(folder, f"{s:05d}.tar"), samples)
    return f"{folder}/{{00000..{num_shards - 1:05d}}}.tar"


def _captions(stream, n):
    out = []
    for sample, after in stream:
        out.append((sample["caption"] if sample else None, after))
        if len(out) == n:
            return out


# ------------------------------------------------------------------------------------- written, read back
def test_make_shards_round_trip_sample_for_sample(tmp_path):
    """The demo COCO training pairs through tools/make_shards.py: every record comes back, in order, with its
    image bytes, caption and img2dataset's member names."""
    tool = load_tool("make_shards")
    cfg = setup_cfg(RETRIEVAL, ["DATA_PATH", ""])
    from uniperceiver.data.demo import prepare_data_root

    prepare_data_root(cfg)
    kind, records = tool.training_records(cfg, "mscoco_retrieval")
    records = list(records)
    n, shards = tool.write_shards(iter(records), kind, str(tmp_path / "s"), shard_size=64)
    assert kind == "pairs" and n == len(records) > 64 and shards == -(-n // 64)
    names = tarfile.open(tmp_path / "s" / "00000.tar").getnames()
    assert names[:3] == ["000000000.jpg", "000000000.txt", "000000000.json"]
    pattern = f"{tmp_path}/s/{{00000..{shards - 1:05d}}}.tar"
    ds = ShardDataset(expand_urls(pattern), kind="pairs", shuffle_buffer=1)
    # the shards in file order: the records exactly
    got = [sample for url in ds.urls for sample in iter_shard(url, lambda u, e: pytest.fail(f"{u}: {e}"))]
    assert len(got) == len(records)
    for sample, record in zip(got, records):
        assert sample["txt"].decode() == record["caption"]
        with open(record["path"], "rb") as f:
            assert sample["jpg"] == f.read()
        assert json.loads(sample["json"])["source"] == record["source"]
    decoded = ds.decode(got[0])
    assert decoded["caption"] == records[0]["caption"] and decoded["image"].size == Image.open(records[0]["path"]).size


def test_make_shards_labels(tmp_path):
    tool = load_tool("make_shards")
    records = [{"path": str(tmp_path / f"{i}.png"), "source": f"{i}.png", "label": i % 3} for i in range(7)]
    for i, r in enumerate(records):
        Image.new("RGB", (4, 4), (i, 0, 0)).save(r["path"])
    n, shards = tool.write_shards(iter(records), "label", str(tmp_path / "s"), shard_size=3)
    assert (n, shards) == (7, 3)
    ds = ShardDataset(expand_urls(f"{tmp_path}/s/{{00000..00002}}.tar"), kind="label", shuffle_buffer=1)
    labels = sorted((s["image"].getpixel((0, 0))[0], s["label"]) for s in ds)
    assert labels == [(i, i % 3) for i in range(7)]


# ------------------------------------------------------------------------------------- positions, resume
def test_stream_positions_resume_exactly(tmp_path):
    """Restarting a reader from the position after any sample gives the rest of the uninterrupted sequence,
    across chunk, shard and pass boundaries (shuffle buffer 3, 4 shards of 5, 2 readers)."""
    ds = ShardDataset(expand_urls(_pair_shards(tmp_path)), kind="pairs", shuffle_buffer=3)
    full = _captions(ds.stream(7, 0, 1, 2), 30)  # logical reader 1 of 2: 10 samples a pass, 3 passes
    first_pass = {c for c, _ in full[:10]}
    assert len(first_pass) == 10  # each sample of its shards once per pass, shuffled
    assert [c for c, _ in full[:10]] != sorted(first_pass, key=lambda c: int(c.split()[1]))
    for cut in (0, 2, 3, 4, 9, 10, 11, 17):
        resumed = _captions(ds.stream(7, 0, 1, 2, full[cut][1]), 30 - cut - 1)
        assert [c for c, _ in resumed] == [c for c, _ in full[cut + 1:]], cut
        assert [p for _, p in resumed] == [p for _, p in full[cut + 1:]]


def test_readers_split_each_pass_without_overlap(tmp_path):
    ds = ShardDataset(expand_urls(_pair_shards(tmp_path, num_shards=6, per_shard=2)), kind="pairs",
                      shuffle_buffer=2)
    seen = [{c for c, _ in _captions(ds.stream(3, 0, g, 3), 4)} for g in range(3)]
    assert set.union(*seen) == {f"sample {i}" for i in range(12)}
    assert sum(map(len, seen)) == 12
    # resampled: one shard a pass, drawn with replacement, differently for each reader
    rs = ShardDataset(ds.urls, kind="pairs", shuffle_buffer=1, resampled=True)
    draws = [[rs.pass_shards(3, g, 3, k)[0] for k in range(8)] for g in range(2)]
    assert draws[0] != draws[1] and len(set(draws[0])) > 1


def test_task_stream_consumed_batches_and_workers_resume(tmp_path):
    """TaskStream over shards with 2 loader workers: the positions after the consumed batches restart the
    stream where it was, whatever the workers had prefetched."""
    ds = ShardDataset(expand_urls(_pair_shards(tmp_path, num_shards=4, per_shard=6)), kind="pairs",
                      shuffle_buffer=4)

    def stream():
        return TaskStream("t", ds, 3, _caption_batch, 2, seed=5, rank=0, world_size=1, weight=1.0)

    ref = stream()
    full = [ref.next() for _ in range(12)]
    cut = stream()
    head = [cut.next() for _ in range(5)]
    assert head == full[:5]
    resumed = stream()
    resumed.reset(cut.consumed, cut.positions)
    assert [resumed.next() for _ in range(7)] == full[5:]


# --------------------------------------------------------------------------------------------- bad input
def test_bad_samples_are_skipped_and_counted(tmp_path):
    good = {"__key__": "a", "png": _png(1), "txt": b"a caption"}
    _write_tar(tmp_path / "00000.tar", [good, {"__key__": "b", "png": b"not a png", "txt": b"x"},
                                        {"__key__": "c", "png": _png(2)}, {"__key__": "d", "txt": b"no image"}])
    whole = tmp_path / "whole.tar"
    _write_tar(whole, [dict(good, __key__=f"k{i}") for i in range(20)])
    data = whole.read_bytes()
    (tmp_path / "00001.tar").write_bytes(data[: len(data) // 2])  # truncated mid-member
    ds = ShardDataset(expand_urls(f"{tmp_path}/{{00000..00001}}.tar"), kind="pairs", shuffle_buffer=1,
                      max_bad_fraction=1.0)
    samples = [s for s, _ in zip(ds.stream(0, 0, 0, 1), range(40)) if s[0] is not None]
    assert samples
    assert ds.counts.get("no caption (.txt)") and ds.counts.get("no image member")
    assert any(k.startswith("not an image") for k in ds.counts)
    assert ds.counts.get("truncated shard")


def test_bad_shard_lists_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="matches no file"):
        expand_urls(f"{tmp_path}/{{00000..00003}}.tar")
    _pair_shards(tmp_path, num_shards=2, per_shard=1)
    with pytest.raises(ConfigError, match="do not exist"):
        expand_urls(f"{tmp_path}/{{00000..00002}}.tar")
    ds = ShardDataset(expand_urls(f"{tmp_path}/{{00000..00001}}.tar"), kind="pairs")
    with pytest.raises(ConfigError, match="SHARD_RESAMPLED"):
        ds.check_workers(world_size=2, workers=2)
    ds.check_workers(world_size=2, workers=1)  # one shard each: enough
    ShardDataset(ds.urls, kind="pairs", resampled=True).check_workers(world_size=2, workers=2)


def test_failing_pipe_names_the_command(tmp_path):
    _pair_shards(tmp_path, num_shards=1, per_shard=3)
    ok = ShardDataset([f"pipe:cat {tmp_path}/00000.tar"], kind="pairs", shuffle_buffer=1)
    assert len(_captions(ok.stream(0, 0, 0, 1), 3)) == 3
    bad = ShardDataset([f"pipe:head -c 3000 {tmp_path}/00000.tar; exit 3"], kind="pairs", shuffle_buffer=1)
    with pytest.raises(ShardReadError, match="exit 3"):
        _captions(bad.stream(0, 0, 0, 1), 3)


# -------------------------------------------------------------------------------------------- 2 gloo ranks
def _caption_batch(samples):
    return [s["caption"] for s in samples]


def _rank_reads(rank, world, port, pattern, out):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    ds = ShardDataset(expand_urls(pattern), kind="pairs", shuffle_buffer=2)
    stream = TaskStream("t", ds, 2, _caption_batch, 1, seed=1, rank=rank, world_size=world,
                        weight=1.0)
    mine = [c for _ in range(4) for c in stream.next()]  # one pass: 4 shards of 2 per rank
    gathered = [None] * world
    dist.all_gather_object(gathered, mine)
    if rank == 0:
        torch.save(gathered, out)
    dist.destroy_process_group()


@pytest.mark.distributed
def test_two_gloo_ranks_read_disjoint_shards(tmp_path):
    pattern = _pair_shards(tmp_path / "s", num_shards=8, per_shard=2)
    out = tmp_path / "reads.pt"
    mp.spawn(_rank_reads, args=(2, free_port(), pattern, str(out)), nprocs=2, join=True)
    a, b = torch.load(out)
    assert len(a) == len(b) == 8 and not set(a) & set(b)
    assert set(a) | set(b) == {f"sample {i}" for i in range(16)}


# ---------------------------------------------------------------------------- SIGKILL, resume, bitwise equal
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sigkill_after_checkpoint_resumes_bitwise_on_shards(tmp_path):
    """Retrieval from shards, NUM_WORKERS 2, shuffle buffer 24: SIGKILLed after its first checkpoint and
    resumed, the run ends with the uninterrupted run's weights, bit for bit."""
    tool = load_tool("make_shards")
    cfg = setup_cfg(RETRIEVAL, ["DATA_PATH", ""])
    from uniperceiver.data.demo import prepare_data_root

    prepare_data_root(cfg)
    kind, records = tool.training_records(cfg, "mscoco_retrieval")
    n, shards = tool.write_shards(records, kind, str(tmp_path / "s"), shard_size=40)
    opts = ["DATASETS.FORMAT", "webdataset", "DATASETS.TRAIN", f"{tmp_path}/s/{{00000..{shards - 1:05d}}}.tar",
            "DATALOADER.NUM_WORKERS", "2", "DATALOADER.SHUFFLE_BUFFER", "24", "SOLVER.MAX_ITER", "12",
            "SOLVER.CHECKPOINT_PERIOD", "4", "SOLVER.EVAL_PERIOD", "0", "DATASETS.VAL", ""]
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    run_main(["--config-file", RETRIEVAL, *opts, "OUTPUT_DIR", ref], timeout=600)
    proc = subprocess.Popen([PYTHON, str(REPO / "main.py"), "--config-file", RETRIEVAL, *opts, "OUTPUT_DIR",
                             str(cut)], cwd=REPO, env=clean_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    while not (cut / "last_checkpoint").exists():
        assert proc.poll() is None and time.time() < deadline, "no checkpoint before the run ended"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert not (cut / "model_final.pth").exists()
    run_main(["--resume", "--config-file", RETRIEVAL, *opts, "OUTPUT_DIR", cut], timeout=600)
    assert "Starting training from iteration 4 to 12" in (cut / "log.txt").read_text()
    a = torch.load(ref / "model_final.pth", weights_only=True)["model"]
    b = torch.load(cut / "model_final.pth", weights_only=True)["model"]
    differing = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differing, f"{len(differing)} tensors differ, e.g. {differing[:3]}"

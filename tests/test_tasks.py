"""Each task type trains on a repeated tiny batch of the demo data with the real (2-layer Tiny) model and
its loss goes down; predictions have the shapes their evaluators read; label sets, masking and vocabulary
sampling behave exactly."""
import os
import random

import pytest
import torch

from uniperceiver.config import ConfigError, setup_cfg
from uniperceiver.data.target_sets import LabelSet, TargetEncoder, remap, sample_entries
from uniperceiver.evaluation import build_evaluator
from uniperceiver.modeling import build_model
from uniperceiver.tokenization import get_tokenizer
from uniperceiver.tasks import build_tasks
from uniperceiver.tasks.text_mlm import IGNORE_INDEX, whole_word_mask
from uniperceiver.utils import comm

pytest.importorskip("mlxtend")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INSTANT = ["classification", "retrieval", "caption", "mlm"]  # configs/quick_schedules/instant_<name>.yaml


def _setup(name, *opts):
    cfg = setup_cfg(os.path.join(REPO, f"configs/quick_schedules/instant_{name}.yaml"),
                    ["DATALOADER.TRAIN_BATCH_SIZE", "8", *opts])
    torch.manual_seed(0)
    random.seed(0)
    model = build_model(cfg)
    (task,) = build_tasks(cfg).values()
    return cfg, model, task


@pytest.mark.parametrize("name", INSTANT)
def test_task_loss_decreases_on_a_repeated_batch(name):
    cfg, model, task = _setup(name)
    dataset = task.build_dataset("train")
    batch = task.collate([dataset[i] for i in range(8)])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    model.train()
    losses = []
    for _ in range(8):
        out = task.losses(model, batch)
        assert list(out) == [f"loss_{task.name}"] and out[f"loss_{task.name}"].dim() == 0
        opt.zero_grad()
        out[f"loss_{task.name}"].backward()
        opt.step()
        losses.append(out[f"loss_{task.name}"].item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert min(losses[-3:]) < 0.9 * losses[0], losses

    # evaluation: predict() on a val batch feeds the task's evaluator
    model.eval()
    val = task.build_dataset("val")
    vbatch = task.collate([val[i] for i in range(4)])
    if hasattr(task, "start_inference"):  # as evaluation.inference_on_dataset calls it
        task.start_inference(model)
    with torch.no_grad():
        outputs = task.predict(model, vbatch)
    evaluator = build_evaluator(task, "val")
    evaluator.reset()
    evaluator.process(vbatch, outputs)
    if name != "caption":  # caption metrics need Java (PTB tokenizer); tested in test_evaluation.py
        metrics = evaluator.evaluate()
        assert metrics and all(0.0 <= v <= 100.0 for v in metrics.values())


def test_loss_weight_multiplies():
    _, model, task = _setup("classification", "LOSSES.LOSS_WEIGHT", "0.5")
    batch = task.collate([task.build_dataset("train")[i] for i in range(4)])
    model.eval()  # no dropout: same loss twice
    half = task.losses(model, batch)[f"loss_{task.name}"]
    task.loss_weight = 1.0
    assert torch.allclose(task.losses(model, batch)[f"loss_{task.name}"], 2 * half)


def test_classification_mixup_soft_targets():
    _, model, task = _setup("classification", "DATALOADER.MIXUP", "0.8", "DATALOADER.CUTMIX", "1.0")
    batch = task.collate([task.build_dataset("train")[i] for i in range(4)])
    loss = task.losses(model.train(), batch)[f"loss_{task.name}"]
    loss.backward()
    assert torch.isfinite(loss) and task._mixup.num_classes == 10


def test_caption_batch_layout_and_vocab_sampling():
    _, model, task = _setup("caption", "MODEL.VOCAB_NEGATIVES", "5")
    tok = get_tokenizer()
    ds = task.build_dataset("train")
    batch = task.collate([ds[0], ds[1]])
    n = int(batch["text_mask"][0].sum())
    assert batch["text"][0, n - 1] == tok.eot_id  # the last query predicts the end token
    assert tok.decode(batch["text"][0, : n - 1].tolist()) == ds[0]["caption"].lower()
    assert batch["text"].shape[1] == int(batch["text_mask"].sum(1).max())  # no all-padding columns
    # with 5 negatives the step encodes only the batch's words plus 5 others
    calls = []
    real = model.encode_targets
    model.encode_targets = lambda ids, mask=None, attributes=None: calls.append(ids.shape[0]) or real(ids, mask, attributes)
    task.losses(model, batch)
    distinct = len(set(batch["text"][batch["text_mask"]].tolist()))
    assert calls == [distinct + 5]


def test_sample_entries_and_remap_exact():
    pos = torch.tensor([7, 3, 7, -1])
    picked = sample_entries(pos, 50, 4, torch.Generator().manual_seed(0))
    assert picked[:2].tolist() == [3, 7] and len(set(picked.tolist())) == 6
    assert remap(torch.tensor([7, 3, -1, -100]), picked, 50).tolist() == [1, 0, -100, -100]
    assert sample_entries(pos, 8, 0).tolist() == list(range(8))  # 0 = the whole set


def test_whole_word_masking_80_10_10():
    rng = random.Random(0)
    words = [[10 + i, 1000 + i] for i in range(2000)]  # two tokens a word
    random_ids = [5, 6]
    out = whole_word_mask(words, rng, prob=0.15, mask_id=99, random_ids=random_ids)
    ids, labels = out["ids"], out["labels"]
    chosen = [w for w in range(2000) if labels[2 * w] != IGNORE_INDEX]
    assert len(chosen) == 300  # 15% of the words
    for w in range(2000):  # a word is masked whole or not at all; labels are the original tokens
        assert (labels[2 * w] == IGNORE_INDEX) == (labels[2 * w + 1] == IGNORE_INDEX)
    kinds = {"mask": 0, "random": 0, "same": 0}
    for w in chosen:
        pair = ids[2 * w : 2 * w + 2]
        assert labels[2 * w : 2 * w + 2] == words[w]
        kinds["mask" if pair == [99, 99] else "same" if pair == words[w] else "random"] += 1
        if pair not in ([99, 99], words[w]):
            assert set(pair) <= {5, 6}
    assert 0.72 < kinds["mask"] / 300 < 0.88 and 0.04 < kinds["random"] / 300 < 0.16
    assert whole_word_mask([[1]], rng, prob=0.15, mask_id=99, random_ids=random_ids)["labels"] == [1]


def test_mlm_eval_masking_is_deterministic():
    _, _, task = _setup("mlm")
    val = task.build_dataset("val")
    assert val[3] == val[3]
    assert len(val[3]["ids"]) <= 32 and any(label != IGNORE_INDEX for label in val[3]["labels"])


def test_label_set_encodings_cached_without_grad_and_refreshed_after_a_step():
    _, model, task = _setup("classification")
    enc: TargetEncoder = task.targets
    assert len(enc.label_set) == 10 and enc.label_set.num_templates == 2
    calls = []
    real = model.encode_targets
    model.encode_targets = lambda *a, **k: calls.append(1) or real(*a, **k)
    with torch.no_grad():
        first = enc.encode(model)
        assert torch.equal(enc.encode(model), first) and len(calls) == 1
    assert first.shape == (10, 192) and torch.allclose(first.norm(dim=1), torch.ones(10), atol=1e-5)
    enc.encode(model)  # with grad: always recomputed
    assert len(calls) == 2
    with torch.no_grad():
        next(model.parameters()).add_(1.0)  # a weight update invalidates the cache
        enc.encode(model)
    assert len(calls) == 3


def test_target_set_errors_name_the_key(tmp_path):
    _, _, task = _setup("classification", "TASKS.imagenet.DATASETS.TARGET_SET", "['Nope']")
    with pytest.raises(ConfigError, match="TASKS.imagenet.DATASETS.TARGET_SET names label set 'Nope'"):
        task.targets


def test_label_set_entry_of():
    ls = LabelSet("v", torch.tensor([[4], [9], [2]]), torch.ones(3, 1, dtype=torch.bool),
                  token_ids=torch.tensor([4, 9, 2]))
    assert ls.entry_of(torch.tensor([2, 4, 9, 5, 100])).tolist() == [2, 0, 1, -1, -1]


def _synced_retrieval_worker(rank, world, port, cache, out):
    import torch.distributed as dist

    os.environ["UNIPERCEIVER_CACHE"] = cache
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        _, model, task = _setup("retrieval", "DATALOADER.STRATEGY", "synced")
        ds = task.build_dataset("train")
        model.eval()  # deterministic: no augmentation randomness in the comparison below
        full = task.collate([ds[i] for i in range(8)])
        local = {k: v[4 * rank : 4 * rank + 4] for k, v in full.items()}
        loss = task.losses(model, local)[f"loss_{task.name}"]
        loss.backward()
        grads = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]
        for g in grads:
            dist.all_reduce(g)
            g /= world  # what DDP does
        losses = [torch.zeros(()) for _ in range(world)]
        dist.all_gather(losses, loss.detach())
        if rank == 0:
            model.zero_grad()
            task.synced = False  # one process over the whole batch
            ref = task.losses(model, full)[f"loss_{task.name}"]
            ref.backward()
            ref_grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]
            torch.save({"mean": torch.stack(losses).mean(), "ref": ref.detach(),
                        "max_err": max(float((a - b).abs().max()) for a, b in zip(grads, ref_grads)),
                        "scale": max(float(b.abs().max()) for b in ref_grads)}, out)
    finally:
        comm.destroy_process_group()


@pytest.mark.distributed
@pytest.mark.slow
def test_synced_retrieval_uses_negatives_from_every_rank(tmp_path):
    """Two gloo ranks holding half a batch each give the loss and (DDP-averaged) gradients of one process
    holding the whole batch: every rank scored its captions against all 8 images and vice versa."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "result.pt")
    mp.spawn(_synced_retrieval_worker, args=(2, port, os.environ["UNIPERCEIVER_CACHE"], out), nprocs=2, join=True)
    r = torch.load(out)
    torch.testing.assert_close(r["mean"], r["ref"], rtol=1e-5, atol=1e-6)
    assert r["max_err"] <= 1e-5 * max(1.0, r["scale"]), r


def test_published_pickle_label_sets_are_read_safely(tmp_path):
    """Published tokenised target sets (.pkl) are read by the restricted unpickler: token ids as written,
    a pickle naming any other global refused with the file named, a pickle of something else refused."""
    import pickle

    from uniperceiver.data.safe_pickle import UnsafePickleError
    from uniperceiver.data.target_sets import load_label_set

    tok = get_tokenizer()
    names = ["no", "maybe", "yes"]
    with open(tmp_path / "MNLI.pkl", "wb") as f:
        pickle.dump({"data": [torch.tensor(tok.encode(n + " <|endoftext|>")) for n in names], "modality": "text"}, f)
    ls = load_label_set("MNLI", str(tmp_path / "MNLI.pkl"), tok)
    assert len(ls) == 3 and not ls.is_vocabulary
    assert ls.ids[:, :2].tolist() == [tok.encode(n + " <|endoftext|>") for n in names]

    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump({"data": [Evil()]}, f)
    with pytest.raises(UnsafePickleError, match=r"evil\.pkl.*posix\.system|evil\.pkl.*system"):
        load_label_set("Evil", str(tmp_path / "evil.pkl"), tok)
    (tmp_path / "none.pkl").write_bytes(b"\x80\x04N.")
    with pytest.raises(ValueError, match="none.pkl"):
        load_label_set("None", str(tmp_path / "none.pkl"), tok)

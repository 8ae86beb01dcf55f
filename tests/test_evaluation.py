"""Evaluators against hand-computed expectations, decoding, sharding and the inference loop (CPU, tiny)."""
import json
import math
import os
import socket

import pytest
import torch

from conftest import load_tool
from uniperceiver.evaluation import (
    EVALUATOR_REGISTRY,
    ClassificationEvaluator,
    MLMEvaluator,
    RetrievalEvaluator,
    VQAEvaluator,
)
from uniperceiver.evaluation.classification import label_ranks
from uniperceiver.modeling.decoding import beam_search
from uniperceiver.evaluation.inference import InferenceSampler, results_table, shard_range
from uniperceiver.evaluation.retrieval import retrieval_ranks
from uniperceiver.evaluation.vqa import normalize_answer, vqa_score
from uniperceiver.utils import comm


# ------------------------------------------------------------------------------------------ classification
def test_label_ranks_ties_count_against():
    scores = torch.tensor([[1.0, 1.0, 1.0], [0.0, 2.0, 2.0], [3.0, 1.0, 2.0]])
    assert label_ranks(scores, torch.tensor([0, 1, 0])).tolist() == [2, 1, 0]


def test_classification_acc_at_k():
    ev = ClassificationEvaluator(topk=(1, 2))
    ev.reset()
    # labels rank 0, 1, 2, 0 -> Acc@1 = 2/4, Acc@2 = 3/4
    ev.process({}, {"logits": torch.tensor([[0.9, 0.1, 0.0], [0.5, 0.4, 0.1]]), "labels": torch.tensor([0, 1])})
    ev.process({}, {"logits": torch.tensor([[0.5, 0.3, 0.2], [0.0, 1.0, 0.5]]), "labels": [2, 1]})
    assert ev.evaluate() == pytest.approx({"Acc@1": 50.0, "Acc@2": 75.0})


def test_classification_constant_scores_get_zero():
    ev = ClassificationEvaluator()
    ev.process({}, {"logits": torch.zeros(4, 10), "labels": torch.arange(4)})
    assert ev.evaluate() == {"Acc@1": 0.0, "Acc@5": 0.0}


def test_multi_view_in_one_row():
    # view 1 prefers class 0 mildly, view 2 prefers class 1 strongly: the softmax average picks class 1.
    logits = torch.log(torch.tensor([[[0.5, 0.3, 0.2], [0.1, 0.8, 0.1]]]))
    ev = ClassificationEvaluator(topk=(1,))
    ev.process({}, {"logits": logits, "labels": torch.tensor([1])})
    assert ev.evaluate() == {"Acc@1": 100.0}
    ev.reset()
    ev.process({}, {"logits": logits, "labels": torch.tensor([0])})
    assert ev.evaluate() == {"Acc@1": 0.0}


def test_multi_view_by_sample_id_across_batches():
    # sample 7: views [0.6,0.4] and [0.2,0.8] -> mean [0.4,0.6] -> class 1 (label 1: hit)
    # sample 3: views [0.7,0.3] (one view only) -> class 0 (label 1: miss)
    p = torch.tensor([[0.6, 0.4], [0.7, 0.3], [0.2, 0.8]])
    ev = ClassificationEvaluator(topk=(1,))
    ev.process({}, {"logits": p[:2].log(), "labels": torch.tensor([1, 1]), "sample_ids": torch.tensor([7, 3])})
    ev.process({}, {"logits": p[2:].log(), "labels": torch.tensor([1]), "sample_ids": torch.tensor([7])})
    assert ev.evaluate() == {"Acc@1": 50.0}


# ---------------------------------------------------------------------------------------------- retrieval
def _naive_ranks(query, qkeys, cands, ckeys):
    """Loop reference: #wrong candidates scoring >= the best ground truth."""
    sim = query @ cands.t()
    out = []
    for i in range(sim.shape[0]):
        gt = ckeys == qkeys[i]
        if not gt.any():
            out.append(-1)
            continue
        best = sim[i][gt].max()
        out.append(int(((sim[i] >= best) & ~gt).sum()))
    return torch.tensor(out)


def test_retrieval_multiple_captions_and_ties():
    # 3 images (ids 10, 11, 12) as one-hot features; 5 captions, scores written directly as feature rows.
    img = torch.eye(3)
    img_ids = torch.tensor([10, 11, 12])
    # caption rows = similarity to (img10, img11, img12)
    txt = torch.tensor([
        [0.9, 0.1, 0.0],  # cap0 of 10
        [0.2, 0.3, 0.3],  # cap1 of 10
        [0.5, 0.5, 0.0],  # cap2 of 11: ties with image 10 -> ranks 1 for t2i
        [0.0, 0.2, 0.1],  # cap3 of 12
        [0.0, 0.0, 0.4],  # cap4 of 12
    ])
    txt_ids = torch.tensor([10, 10, 11, 12, 12])
    # i2t: img10 column = [.9,.2,.5,0,0]: best own .9 -> rank 0
    #      img11 column = [.1,.3,.5,.2,0]: own .5 -> rank 0
    #      img12 column = [0,.3,0,.1,.4]: best own .4 -> rank 0 ... make it harder below
    i2t = retrieval_ranks(img, img_ids, txt, txt_ids)
    assert i2t.tolist() == [0, 0, 0]
    # t2i: cap0 -> 0; cap1 own .2 < .3, .3 -> rank 2; cap2 own .5 tie with .5 -> 1; cap3 own .1 < .2 -> 1; cap4 -> 0
    t2i = retrieval_ranks(txt, txt_ids, img, img_ids)
    assert t2i.tolist() == [0, 2, 1, 1, 0]
    ev = RetrievalEvaluator(ks=(1, 2))
    ev.process({}, {"image_feats": img, "image_ids": img_ids, "text_feats": txt, "text_image_ids": txt_ids})
    res = ev.evaluate()
    assert res["i2t_R@1"] == pytest.approx(100.0)
    assert res["t2i_R@1"] == pytest.approx(40.0)
    assert res["t2i_R@2"] == pytest.approx(80.0)
    assert res["R_mean"] == pytest.approx((100 + 100 + 40 + 80) / 4)


def test_retrieval_image_best_caption_rank_with_tie():
    # image 0 has captions a (0.3) and b (0.6); image 1's caption c scores 0.6 for image 0 too (tie) and
    # d scores 0.7 -> rank of image 0's best own caption = #{c, d} = 2.
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[0.3, 0.0], [0.6, 0.0], [0.6, 0.9], [0.7, 0.1]])
    ranks = retrieval_ranks(img, torch.tensor([0, 1]), txt, torch.tensor([0, 0, 1, 1]))
    assert ranks.tolist() == [2, 0]


def test_retrieval_collapsed_model_scores_zero():
    ev = RetrievalEvaluator()
    feats = torch.ones(4, 8) / math.sqrt(8)
    ev.process({}, {"image_feats": feats, "image_ids": torch.arange(4), "text_feats": feats,
                    "text_image_ids": torch.arange(4)})
    res = ev.evaluate()
    assert res["i2t_R@1"] == 0.0 and res["t2i_R@1"] == 0.0 and res["i2t_R@5"] == 100.0  # 3 wrong < 5


def test_retrieval_chunked_equals_unchunked_and_naive():
    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(23, 16, generator=g), dim=1)
    txt = torch.nn.functional.normalize(torch.randn(57, 16, generator=g), dim=1)
    img_ids = torch.arange(23) * 3
    txt_ids = img_ids[torch.randint(0, 23, (57,), generator=g)]
    txt = torch.round(txt * 4) / 4  # coarse values: plenty of exact ties
    img = torch.round(img * 4) / 4
    for q, qk, c, ck in ((img, img_ids, txt, txt_ids), (txt, txt_ids, img, img_ids)):
        ref = _naive_ranks(q, qk, c, ck)
        for chunk in (1, 5, 1000):
            assert torch.equal(retrieval_ranks(q, qk, c, ck, chunk_size=chunk), ref)


def test_retrieval_dedups_repeated_images_and_splits_batches():
    img = torch.eye(3)
    txt = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0.9, 0.8], [0, 0, 1.0]])
    txt_ids = torch.tensor([0, 1, 2, 2])
    whole = RetrievalEvaluator()
    whole.process({}, {"image_feats": img, "image_ids": torch.arange(3), "text_feats": txt, "text_image_ids": txt_ids})
    pairs = RetrievalEvaluator()  # a pair dataset: the image repeats with each of its captions
    for j in range(4):
        i = int(txt_ids[j])
        pairs.process({}, {"image_feats": img[i:i + 1], "image_ids": [i], "text_feats": txt[j:j + 1],
                           "text_image_ids": [i]})
    assert pairs.evaluate() == whole.evaluate()


def test_retrieval_unknown_caption_image_raises():
    ev = RetrievalEvaluator()
    ev.process({}, {"image_feats": torch.eye(2), "image_ids": [0, 1], "text_feats": torch.eye(2),
                    "text_image_ids": [0, 5]})
    with pytest.raises(ValueError, match="never seen"):
        ev.evaluate()


# ------------------------------------------------------------------------------------------------ MLM, VQA
def test_mlm_accuracy_ignores_unmasked():
    ev = MLMEvaluator()
    ev.process({}, {"labels": torch.tensor([[5, -100, 7], [-100, 9, -100]]),
                    "predictions": torch.tensor([[5, 1, 8], [2, 9, 3]])})
    logits = torch.zeros(1, 2, 10)
    logits[0, 0, 4] = 1.0
    logits[0, 1, 6] = 1.0
    ev.process({}, {"labels": torch.tensor([[4, 3]]), "logits": logits})
    assert ev.evaluate() == pytest.approx({"mlm_acc": 100.0 * 3 / 5})


def test_vqa_accuracy():
    # the official VQA accuracy (tests/test_vqa_score.py has the details): leave-one-out over the humans
    assert normalize_answer("Two.") == "2" and normalize_answer("a Dog") == "dog"
    answers = ["2"] * 2 + ["two"] + ["3"] * 7
    assert vqa_score("2", answers) == pytest.approx(0.9)  # "two" normalises to "2": 3 * 2/3 + 7 * 1 over 10
    assert vqa_score("3", answers) == 1.0
    assert vqa_score("yes", answers) == 0.0
    assert vqa_score("2", ["2", "3", "3"]) == pytest.approx(2 / 9)
    ev = VQAEvaluator()
    ev.process({}, {"predictions": ["2", "yes"], "answers": [["2", "3", "3"], ["yes", "yes", "no"]]})
    assert ev.evaluate() == pytest.approx({"vqa_acc": 100.0 * (2 / 9 + 4 / 9) / 2})


def test_registry_names():
    for name in ("ClassificationEvaluator", "RetrievalEvaluator", "CaptionEvaluator", "MLMEvaluator", "VQAEvaluator"):
        assert name in EVALUATOR_REGISTRY


# -------------------------------------------------------------------------------------------------- decoding
EOS, A, B_ = 0, 1, 2


def _markov_step(table):
    """step_fn from {prefix tuple: probs over (eos, a, b)}."""

    def step(tokens, origin):
        rows = [torch.tensor(table[tuple(t)]).log() for t in tokens.tolist()]
        return torch.stack(rows)

    return step


def test_greedy_versus_beam():
    # greedy: a (0.6) then eos (0.34) = 0.204; beam 2 finds b eos = 0.4 * 0.9 = 0.36
    table = {(): [0.0, 0.6, 0.4], (A,): [0.34, 0.33, 0.33], (B_,): [0.9, 0.05, 0.05],
             (A, A): [1.0, 0.0, 0.0], (A, B_): [1.0, 0.0, 0.0], (B_, A): [1.0, 0.0, 0.0], (B_, B_): [1.0, 0.0, 0.0]}
    step = _markov_step(table)
    seqs, scores = beam_search(step, 1, max_len=3, eos_id=EOS, beam_size=1)
    assert seqs == [[A]] and scores.item() == pytest.approx(math.log(0.6 * 0.34), abs=1e-5)
    seqs, scores = beam_search(step, 1, max_len=3, eos_id=EOS, beam_size=2)
    assert seqs == [[B_]] and scores.item() == pytest.approx(math.log(0.36), abs=1e-5)


def test_beam_length_penalty_and_max_len():
    table = {(): [0.5, 0.5, 0.0], (A,): [0.9, 0.1, 0.0], (A, A): [1.0, 0.0, 0.0]}
    step = _markov_step(table)
    # raw: "" = log .5 (-0.693) beats "a" = log .45 (-0.799); per-token (alpha 1): -0.693 vs -0.399
    assert beam_search(step, 1, 3, EOS, beam_size=2)[0] == [[]]
    assert beam_search(step, 1, 3, EOS, beam_size=2, len_penalty=1.0)[0] == [[A]]
    # max_len 1 without the end token: the sequence is cut
    cut = {(): [0.1, 0.9, 0.0]}
    assert beam_search(_markov_step(cut), 2, 1, EOS, beam_size=3)[0] == [[A], [A]]


def test_beam_search_batches_are_independent():
    def step(tokens, origin):
        # item 0 prefers a then eos, item 1 prefers b then eos
        out = torch.full((tokens.shape[0], 3), -5.0)
        for r, (t, o) in enumerate(zip(tokens.tolist(), origin.tolist())):
            out[r, (A if o == 0 else B_) if not t else EOS] = 0.0
        return out.log_softmax(-1)

    assert beam_search(step, 2, 5, EOS, beam_size=3)[0] == [[A], [B_]]


# ------------------------------------------------------------------------------------------------- sharding
@pytest.mark.parametrize("n", [0, 1, 5, 17, 64])
@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_shard_range_covers_once(n, world):
    seen = []
    for r in range(world):
        s, e = shard_range(n, r, world)
        assert 0 <= s <= e <= n and e - s in (n // world, n // world + 1)
        seen += list(InferenceSampler(n, rank=r, world_size=world))
    assert seen == list(range(n))


def test_results_table_lists_metrics():
    table = results_table({"imagenet": {"Acc@1": 12.5, "Acc@5": 40.0}})
    assert "imagenet" in table and "Acc@1" in table and "12.50" in table and "chance" not in table


def test_results_table_shows_chance_beneath_each_metric():
    table = results_table({"coco": {"i2t_R@1": 12.5, "CIDEr": 0.3, "chance_i2t_R@1": 2.5}})
    header, values, chance = table.splitlines()
    assert "chance_" not in header and header.count("|") == values.count("|") == chance.count("|") == 2
    assert chance.split("|")[1].strip() == "2.50" and chance.split("|")[2].strip() == "-"


# ---------------------------------------------------------------------------------------------- chance levels
def test_chance_levels_from_the_split():
    ev = ClassificationEvaluator(topk=(1, 5))
    ev.process({}, {"logits": torch.randn(4, 8), "labels": torch.tensor([0, 1, 2, 3])})
    ev.evaluate()
    assert ev.chance_levels() == pytest.approx({"Acc@1": 100 / 8, "Acc@5": 100 * 5 / 8})
    ev = ClassificationEvaluator(topk=(1, 5))
    ev.process({}, {"logits": torch.randn(2, 3), "labels": torch.tensor([0, 1])})
    ev.evaluate()
    assert ev.chance_levels()["Acc@5"] == 100.0  # min(5, C) / C
    # retrieval: 2 images with 3 and 1 captions (4 candidates for i2t, 2 for t2i)
    ev = RetrievalEvaluator(ks=(1, 2))
    ev.process({}, {"image_feats": torch.eye(2), "image_ids": [0, 1], "text_feats": torch.randn(4, 2),
                    "text_image_ids": [0, 0, 0, 1]})
    ev.evaluate()
    c = ev.chance_levels()
    assert c["i2t_R@1"] == pytest.approx(100 * (3 / 4 + 1 / 4) / 2)
    assert c["i2t_R@2"] == pytest.approx(100 * ((1 - 0) + (1 - 3 / 4 * 2 / 3)) / 2)  # 1 - C(N-g,K)/C(N,K)
    assert c["t2i_R@1"] == pytest.approx(50.0) and c["t2i_R@2"] == pytest.approx(100.0)
    # MLM: the most frequent masked token
    ev = MLMEvaluator()
    ev.process({}, {"labels": torch.tensor([[5, 5, -100, 7]]), "predictions": torch.tensor([[5, 1, 1, 1]])})
    ev.evaluate()
    assert ev.chance_levels() == pytest.approx({"mlm_acc": 100 * 2 / 3})
    # VQA: the most frequent normalised human answer ("2"), scored like a prediction
    ev = VQAEvaluator()
    ev.process({}, {"predictions": ["x", "x"], "answers": [["two", "2", "2"], ["yes", "2", "no"]]})
    ev.evaluate()
    # official leave-one-out accuracy of "2": 3 subsets of 2 others with 2 matches -> 2/3; with 1, 0, 1 -> 2/9
    assert ev.chance_levels() == pytest.approx({"vqa_acc": 100 * (2 / 3 + 2 / 9) / 2})


# ---------------------------------------------------------------------------------------------- captioning
@pytest.mark.slow  # pycocoevalcap's PTB tokenizer and METEOR start Java
def test_caption_metrics_match_pycocoevalcap():
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    from uniperceiver.evaluation import CaptionEvaluator

    refs = {
        1: ["A cat sits on the mat.", "There is a cat on the mat."],
        2: ["Two dogs play in the park.", "Dogs are playing on the grass."],
        3: ["A man rides a red bike.", "A person riding a bicycle down the street."],
    }
    preds = {1: "a cat sits on the mat", 2: "two dogs are playing", 3: "a man riding a bike"}
    ev = CaptionEvaluator(use_spice=False)
    ids = list(preds)
    ev.process({}, {"image_ids": torch.tensor(ids[:2]), "captions": [preds[i] for i in ids[:2]],
                    "references": [refs[i] for i in ids[:2]]})
    ev.process({}, {"image_ids": [3, 3], "captions": [preds[3], "ignored duplicate"], "references": [refs[3]] * 2})
    res = ev.evaluate()
    assert set(res) == {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr"}  # no SPICE offline
    tok = PTBTokenizer()
    gts = tok.tokenize({i: [{"caption": c} for c in refs[i]] for i in ids})
    res_tok = tok.tokenize({i: [{"caption": preds[i]}] for i in ids})
    bleu, _ = Bleu(4).compute_score(gts, res_tok)
    assert [res[f"Bleu_{n}"] for n in range(1, 5)] == pytest.approx(bleu)
    assert res["CIDEr"] == pytest.approx(Cider().compute_score(gts, res_tok)[0])
    assert 0.0 < res["METEOR"] <= 1.0 and 0.0 < res["ROUGE_L"] <= 1.0


@pytest.mark.slow
def test_caption_bleu_hand_computed():
    from uniperceiver.evaluation.caption import coco_caption_scores

    # unigram precision 1, candidate 3 words vs reference 6: brevity penalty exp(1 - 6/3)
    res = coco_caption_scores({0: "a cat sits"}, {0: ["a cat sits on the mat"]}, use_spice=False)
    assert res["Bleu_1"] == pytest.approx(math.exp(-1.0), rel=1e-4)
    exact = coco_caption_scores({0: "a cat sits on the mat"}, {0: ["a cat sits on the mat"]}, use_spice=False)
    assert exact["Bleu_4"] == pytest.approx(1.0, rel=1e-4) and exact["ROUGE_L"] == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------- two processes
def _eval_data():
    g = torch.Generator().manual_seed(1)
    cls_logits = torch.randn(9, 6, generator=g)
    cls_labels = torch.randint(0, 6, (9,), generator=g)
    view_logits = torch.randn(6, 6, generator=g)
    view_labels = torch.tensor([2, 2, 4, 4, 5, 5])
    view_ids = torch.tensor([10, 11, 10, 11, 12, 12])  # two views per video, split across batches
    img = torch.nn.functional.normalize(torch.randn(7, 8, generator=g), dim=1)
    txt = torch.nn.functional.normalize(torch.randn(15, 8, generator=g), dim=1)
    txt_ids = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 6])
    mlm_labels = torch.randint(0, 5, (5, 4), generator=g)
    mlm_labels[torch.rand(5, 4, generator=g) < 0.5] = -100
    mlm_preds = torch.randint(0, 5, (5, 4), generator=g)
    vqa_preds = ["yes", "no", "2", "red", "cat"]
    vqa_answers = [["yes"] * 3, ["yes", "no"], ["two", "2", "3"], ["red"] * 5, ["dog"]]
    return locals()


def _run_evaluators(rank, world):
    """Evaluate the data of ``_eval_data`` as ``rank`` of ``world``, in batches of 2 over its shard."""
    d = _eval_data()

    def shard(n):
        return range(*shard_range(n, rank, world))

    cls_ev, ret_ev, mlm_ev, vqa_ev = ClassificationEvaluator(), RetrievalEvaluator(chunk_size=3), MLMEvaluator(), VQAEvaluator()
    for i in shard(9):
        cls_ev.process({}, {"logits": d["cls_logits"][i:i + 1], "labels": d["cls_labels"][i:i + 1]})
    if rank == 0:  # multi-view rows only on rank 0: the other ranks gather nothing for them
        for i in range(0, 6, 2):
            cls_ev.process({}, {"logits": d["view_logits"][i:i + 2], "labels": d["view_labels"][i:i + 2],
                                "sample_ids": d["view_ids"][i:i + 2]})
    for i in shard(15):  # a pair dataset: each caption with its image
        j = int(d["txt_ids"][i])
        ret_ev.process({}, {"image_feats": d["img"][j:j + 1], "image_ids": [j], "text_feats": d["txt"][i:i + 1],
                            "text_image_ids": [j]})
    for i in shard(5):
        mlm_ev.process({}, {"labels": d["mlm_labels"][i:i + 1], "predictions": d["mlm_preds"][i:i + 1]})
        vqa_ev.process({}, {"predictions": d["vqa_preds"][i:i + 1], "answers": d["vqa_answers"][i:i + 1]})
    return [ev.evaluate() for ev in (cls_ev, ret_ev, mlm_ev, vqa_ev)]


def _dist_worker(rank, world, port, out_file):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        results = _run_evaluators(rank, world)
        cfg = _toy_cfg(os.path.dirname(out_file))
        results.append(_inference_toy(cfg))
        if rank == 0:
            torch.save(results, out_file)
        else:
            assert results == [{}, {}, {}, {}, {}]
    finally:
        comm.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.distributed
def test_two_process_gloo_equals_one_process(tmp_path):
    import torch.multiprocessing as mp

    single = _run_evaluators(0, 1) + [_inference_toy(_toy_cfg(tmp_path))]
    assert all(single)
    out = str(tmp_path / "results.pt")
    mp.spawn(_dist_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    multi = torch.load(out)
    assert len(multi) == len(single)
    for a, b in zip(single, multi):
        assert a.keys() == b.keys()
        assert a == pytest.approx(b)


def _inference_toy(cfg):
    """inference_on_tasks on the toy task: 11 val / 5 test samples sharded over the ranks, batches of 3."""
    from uniperceiver.evaluation import inference_on_tasks

    res = inference_on_tasks(cfg, _toy_model(), [_ToyClsTask(cfg)], write=False)
    return {f"{k}/{m}": v for k, ms in res.items() for m, v in ms.items()}


# ------------------------------------------------------------------------------------------------- EvalHook
def test_eval_hook_period_storage_and_best(tmp_path):
    from uniperceiver.engine.eval_hook import EvalHook
    from uniperceiver.engine.train_loop import TrainerBase

    class NoOpTrainer(TrainerBase):
        def run_step(self):
            pass

    scripted = iter([30.0, 50.0, 40.0, 45.0])
    calls = []

    def eval_fn():
        value = next(scripted)
        calls.append(value)
        return {"imagenet": {"Acc@1": value, "Acc@5": 90.0}}

    model = torch.nn.Linear(2, 1)
    hook = EvalHook(3, eval_fn, model=model, output_dir=str(tmp_path), best_metric="imagenet/Acc@1")
    trainer = NoOpTrainer()
    trainer.register_hooks([hook])
    with torch.no_grad():
        model.weight.fill_(1.0)
    trainer.train(0, 7)  # evaluates after steps 3, 6 and the last (7): 30, 50, 40
    assert calls == [30.0, 50.0, 40.0]
    hist = trainer.storage.history("imagenet/Acc@1").values()
    assert [v for v, _ in hist] == [30.0, 50.0, 40.0] and [it for _, it in hist] == [2, 5, 6]
    record = json.loads((tmp_path / "model_best.json").read_text())
    assert record == {"metric": "imagenet/Acc@1", "value": 50.0, "iteration": 5}
    best = torch.load(tmp_path / "model_best.pth", weights_only=True)
    assert best["iteration"] == 5 and torch.equal(best["model"]["weight"], torch.ones(1, 2))
    assert hook.state_dict() == {"best_value": 50.0, "best_iter": 5}

    # A resumed run that lost the hook state still knows the best from model_best.json: 45 < 50 keeps it.
    hook2 = EvalHook(1, eval_fn, model=model, output_dir=str(tmp_path), best_metric="imagenet/Acc@1")
    trainer2 = NoOpTrainer()
    trainer2.register_hooks([hook2])
    trainer2.train(7, 8)
    assert json.loads((tmp_path / "model_best.json").read_text())["value"] == 50.0


def test_eval_hook_unknown_best_metric_names_choices(tmp_path):
    from uniperceiver.config import ConfigError
    from uniperceiver.engine.eval_hook import EvalHook

    hook = EvalHook(1, lambda: {"coco": {"CIDEr": 1.0}}, model=torch.nn.Linear(1, 1), output_dir=str(tmp_path),
                    best_metric="coco/cider")
    with pytest.raises(ConfigError, match="coco/CIDEr"):
        hook.evaluate()
    with pytest.raises(ConfigError, match="<task NAME>/<metric>"):
        EvalHook(1, dict, model=torch.nn.Linear(1, 1), output_dir=str(tmp_path), best_metric="Acc@1")


# ------------------------------------------------------------------------------------------ inference loop
class _ToyClsTask:
    """A task-shaped object: samples are (feature, label); the model's scores are its logits."""

    evaluator_name = "ClassificationEvaluator"

    def __init__(self, cfg, name="toy", sizes=(("val", 11), ("test", 5))):
        self.name, self.root_cfg = name, cfg
        self.cfg = cfg.TASKS[0]
        self.sizes = dict(sizes)
        self.started = 0

    def build_dataset(self, split):
        g = torch.Generator().manual_seed(len(split))
        n = self.sizes[split]
        feats, labels = torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)
        return [{"x": feats[i], "y": labels[i]} for i in range(n)]

    def collate(self, samples):
        return torch.utils.data.default_collate(samples)

    def start_inference(self, model):
        self.started += 1

    def predict(self, model, batch):
        assert not model.training and not torch.is_grad_enabled()
        return {"logits": model(batch["x"]), "labels": batch["y"]}


def _toy_cfg(output_dir, val="val", test="test"):
    from uniperceiver.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_dict({"OUTPUT_DIR": str(output_dir), "TASKS": [
        {"NAME": "toy", "DATASETS": {"TASK_TYPE": "toy", "VAL": val, "TEST": test},
         "DATALOADER": {"TEST_BATCH_SIZE": 3}}]})
    cfg.finalize()
    return cfg


def _toy_model():
    torch.manual_seed(0)
    return torch.nn.Linear(4, 3)


def test_inference_on_tasks_keys_files_and_mode(tmp_path):
    from uniperceiver.evaluation import inference_on_tasks

    cfg = _toy_cfg(tmp_path)
    model, task = _toy_model(), _ToyClsTask(cfg)
    model.train()
    results = inference_on_tasks(cfg, model, {"toy": task})
    assert list(results) == ["toy", "toy/test"]
    assert set(results["toy"]) == {"Acc@1", "Acc@5", "chance_Acc@1", "chance_Acc@5"}
    assert model.training and task.started == 2
    assert json.loads((tmp_path / "inference" / "toy" / "results.json").read_text()) == results["toy"]
    assert json.loads((tmp_path / "inference" / "toy" / "test" / "results.json").read_text()) == results["toy/test"]
    # Acc@1 by hand on the val split
    data = task.build_dataset("val")
    x = torch.stack([d["x"] for d in data])
    y = torch.stack([d["y"] for d in data])
    with torch.no_grad():
        expected = 100.0 * (label_ranks(model(x), y) == 0).float().mean().item()
    assert results["toy"]["Acc@1"] == pytest.approx(expected)
    # training-time evaluation: the first split only, under the plain task name
    assert list(inference_on_tasks(cfg, model, [task], max_splits_per_task=1, write=False)) == ["toy"]
    only_test = _toy_cfg(tmp_path, val="")
    assert list(inference_on_tasks(only_test, model, [_ToyClsTask(only_test)], write=False)) == ["toy"]


# ------------------------------------------------------------------------------------------ tools/zeroshot
TINY_MODEL_YAML = """
MODEL:
  IMG_INPUT_SIZE: 32
  PATCH_SIZE: 16
  LAYER_SCALE_INIT: 1.0
  BERT:
    HIDDEN_SIZE: 16
    NUM_HIDDEN_LAYERS: 1
    NUM_ATTENTION_HEADS: 2
    INTERMEDIATE_SIZE: 32
"""


def test_zeroshot_tool_ranks_classes_like_the_model(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from uniperceiver.config import setup_cfg
    from uniperceiver.data.transforms import build_image_transform
    from uniperceiver.modeling import build_model

    (tmp_path / "cfg.yaml").write_text(TINY_MODEL_YAML)
    cfg = setup_cfg(str(tmp_path / "cfg.yaml"))
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():  # spread the weights so that images and names get distinct features
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    torch.save({"model": model.state_dict()}, tmp_path / "w.pth")
    rng = np.random.default_rng(0)
    (tmp_path / "imgs").mkdir()
    for i in range(2):
        Image.fromarray((rng.random((40, 48, 3)) * 255).astype("uint8")).save(tmp_path / "imgs" / f"{i}.png")
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    classes = ["cat", "dog", "red car"]
    tool = load_tool("zeroshot")
    results = tool.main(["--config-file", str(tmp_path / "cfg.yaml"), "--weights", str(tmp_path / "w.pth"),
                         "--images", str(tmp_path / "imgs"), "--classes", ",".join(classes),
                         "--templates", "a photo of a {}.|a drawing of a {}.", "--topk", "3"])
    assert [os.path.basename(r["image"]) for r in results] == ["0.png", "1.png"]
    out = capsys.readouterr().out
    assert "0.png" in out and "red car" in out
    # the same scores computed directly
    model.eval()
    names = tool.encode_texts(model, classes, ["a photo of a {}.", "a drawing of a {}."], "classification", "cpu")
    transform = build_image_transform(32, is_train=False)
    for r in results:
        img = transform(Image.open(r["image"]).convert("RGB"))[None]
        with torch.no_grad():
            scores = (model(images=img)["spe"] @ names.t())[0]
        assert scores.max() - scores.min() > 1e-3  # distinct scores: the ranking is meaningful
        expected = [classes[j] for j in scores.argsort(descending=True).tolist()]
        assert [label for label, _, _ in r["labels"]] == expected
        assert sum(p for _, p, _ in r["labels"]) == pytest.approx(1.0, abs=1e-5)
        assert [s for _, _, s in r["labels"]] == pytest.approx(scores.sort(descending=True).values.tolist(), abs=1e-5)


def test_caption_generator_matches_teacher_forced_queries(tmp_path):
    """Greedy decoding with the placeholder trick = argmax of the training-layout queries on its own output."""
    from uniperceiver.config import setup_cfg
    from uniperceiver.modeling.decoding import CaptionGenerator
    from uniperceiver.modeling import build_model

    (tmp_path / "cfg.yaml").write_text(TINY_MODEL_YAML)
    torch.manual_seed(1)
    model = build_model(setup_cfg(str(tmp_path / "cfg.yaml"))).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    vocab = torch.tensor([3, 7, 11, 19, 23, 42])  # a tiny vocabulary; 42 plays the end token
    table = torch.nn.functional.normalize(torch.randn(50, 16), dim=-1)
    banned = [i for i in range(50) if i not in vocab.tolist()]
    gen = CaptionGenerator(eos_id=42, max_len=6, beam_size=1, banned_ids=banned)
    images = torch.randn(3, 3, 32, 32)
    seqs, _ = gen.generate(model, images, table)
    for b, seq in enumerate(seqs):
        assert all(t in vocab.tolist() and t != 42 for t in seq)
        text = torch.tensor([seq + [42]])[:, :6]
        with torch.no_grad():
            q = model(images=images[b:b + 1], text=text, num_queries=text.shape[1], causal_text=True)["queries"][0]
            logits = model.logits(q, table)
        logits[:, banned] = float("-inf")
        assert logits.argmax(-1).tolist() == text[0].tolist()
    # on this model, beam search finds captions at least as likely as greedy (sum of log-probs)
    _, greedy_scores = gen.generate(model, images, table)
    gen.beam_size = 3
    _, beam_scores = gen.generate(model, images, table)
    assert (beam_scores >= greedy_scores - 1e-5).all()


# ---------------------------------------------------------------------------------------------- --eval-only
def _eval_only_setup(tmp_path):
    """Weights of the instant classification config and a data root holding ONLY its val split."""
    import shutil

    from uniperceiver.config import setup_cfg
    from uniperceiver.data.demo import ensure_demo_data
    from uniperceiver.modeling import build_model
    from uniperceiver.utils.paths import demo_data_root

    from conftest import REPO

    demo = ensure_demo_data(demo_data_root())
    data = tmp_path / "data"
    (data / "imagenet" / "meta").mkdir(parents=True)
    shutil.copy(os.path.join(demo, "imagenet", "classnames.txt"), data / "imagenet")
    shutil.copy(os.path.join(demo, "imagenet", "meta", "val.txt"), data / "imagenet" / "meta")
    shutil.copytree(os.path.join(demo, "imagenet", "val"), data / "imagenet" / "val")
    config = str(REPO / "configs" / "quick_schedules" / "instant_classification.yaml")
    cfg = setup_cfg(config, ["DATA_PATH", str(data)])
    torch.manual_seed(0)
    model = build_model(cfg)
    torch.save({"model": model.state_dict()}, tmp_path / "w.pth")
    return config, data, model, cfg


@pytest.mark.slow  # builds the demo data once and starts main.py (~20-30 s on 2 cores)
def test_eval_only_without_training_data(tmp_path):
    from conftest import run_main

    from uniperceiver.evaluation import inference_on_tasks
    from uniperceiver.tasks import build_tasks

    config, data, model, cfg = _eval_only_setup(tmp_path)
    out = tmp_path / "out"
    assert not (data / "imagenet" / "meta" / "train.txt").exists()
    run_main(["--config-file", config, "--eval-only", "MODEL.WEIGHTS", tmp_path / "w.pth", "DATA_PATH", data,
              "OUTPUT_DIR", out])
    results = json.loads((out / "inference" / "imagenet" / "results.json").read_text())
    assert set(results) == {"Acc@1", "Acc@5", "chance_Acc@1", "chance_Acc@5"}
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(out))
    assert not any(f.endswith(".pth") for f in os.listdir(out))  # nothing trained, nothing saved
    # the same numbers in-process
    expected = inference_on_tasks(cfg, model, build_tasks(cfg), write=False)
    assert results == pytest.approx(expected["imagenet"])


@pytest.mark.slow
@pytest.mark.distributed
def test_eval_only_two_processes_equals_one(tmp_path):
    from conftest import run_main

    config, data, _, _ = _eval_only_setup(tmp_path)
    outs = {}
    for n in (1, 2):
        out = tmp_path / f"out{n}"
        run_main(["--num-gpus", n, "--config-file", config, "--eval-only", "MODEL.WEIGHTS", tmp_path / "w.pth",
                  "DATA_PATH", data, "OUTPUT_DIR", out, "TASKS.imagenet.DATALOADER.TEST_BATCH_SIZE", 7])
        outs[n] = json.loads((out / "inference" / "imagenet" / "results.json").read_text())
    assert outs[2] == pytest.approx(outs[1])
    # rank 1 really read its half of the 100 val images
    assert "rank 1 of 2 reads [50, 100)" in (tmp_path / "out2" / "log.txt.rank1").read_text()


def test_caption_baseline_is_the_most_frequent_reference():
    from pycocoevalcap.cider.cider import Cider

    from uniperceiver.evaluation.caption import constant_caption_baseline

    gts = {1: ["a red one", "a red digit"], 2: ["a red one", "a blue two"], 3: ["a green three", "a green digit"]}
    base = constant_caption_baseline(gts)  # every image captioned "a red one" (2 of 6 references)
    assert set(base) == {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"}
    assert base["CIDEr"] == pytest.approx(Cider().compute_score(gts, {i: ["a red one"] for i in gts})[0])
    assert base["CIDEr"] > 0.0

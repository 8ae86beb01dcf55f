"""Caption decoding as the published ``CaptionBeamSearcherV3`` (github fundamentalvision/Uni-Perceiver @ a8c9e37,
``uniperceiver/modeling/decode_strategy/caption_beam_searcher_v3.py``), driven by scripted step
log-probabilities, and ``DECODE_STRATEGY`` read from the config.

Every expectation below is traced by hand in the comments (probabilities multiply along a beam; the searcher
adds their logs).  The same tables were also run through the published class on CPU (a fake model feeding
the scripted log-probabilities; not part of these tests), which returned the same beams in the same order.
"""
import math
import os

import pytest
import torch

from uniperceiver.config import ConfigError, setup_cfg
from uniperceiver.tasks import validate_tasks
from uniperceiver.modeling.decoding import (ENDED_FILLER, CaptionGenerator, beam_search,
                                              decode_strategy_from_config, search_beams)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EOS, A, B, C = 0, 1, 2, 3

# Step tables: {tokens so far: probabilities of (eos, a, b, c)}.  The searcher never steps an ended beam.
TABLE = {
    (): [0.05, 0.6, 0.25, 0.1],
    (A,): [0.02, 0.02, 0.5, 0.46],   # a b = .30, a c = .276, a eos = .012, a a = .012
    (B,): [0.9, 0.04, 0.03, 0.03],   # b eos = .225
    (C,): [0.9, 0.05, 0.03, 0.02],   # c eos = .09
    (A, B): [0.5, 0.2, 0.2, 0.1],    # a b eos = .15, a b a = a b b = .06
    (A, C): [0.6, 0.2, 0.1, 0.1],    # a c eos = .1656, a c a = .0552
}


def _step(table, log=True):
    """step_fn over a table; the rows are log-probabilities (``log``) or already log-space values."""
    calls = []

    def step(tokens, origin):
        calls.append(tokens.tolist())
        rows = [table[tuple(t)] for t in tokens.tolist()]
        return torch.tensor(rows).log() if log else torch.tensor(rows)

    step.calls = calls
    return step


def test_beam_1_is_greedy():
    # t0: a (.6); t1: from a the best word is b (.5): .3; t2: from a b, eos (.5): .15, the beam ends;
    # t3: an ended beam goes on with the end token at no cost.  Result "a b", log .15.
    seqs, scores = beam_search(_step(TABLE), 1, max_len=4, eos_id=EOS, beam_size=1)
    assert seqs == [[A, B]] and scores.item() == pytest.approx(math.log(0.15), abs=1e-6)


def test_beam_2():
    # t0: a .6, b .25 (c .1 and eos .05 dropped).
    # t1: a*: a b .30, a c .276, a eos .012, a a .012; b*: b eos .225, b a .01, ... -> keep a b (.30), a c (.276).
    # t2: a b*: eos .15, a .06, b .06, c .03; a c*: eos .1656, a .0552 ... -> keep a c eos (.1656), a b eos (.15).
    # t3: both ended: each goes on with eos at its score, the other words of an ended beam score -999.
    tokens, scores = search_beams(_step(TABLE), 1, max_len=4, eos_id=EOS, beam_size=2)
    assert tokens.tolist() == [[[A, C, EOS, EOS], [A, B, EOS, EOS]]]
    assert scores[0].tolist() == pytest.approx([math.log(0.1656), math.log(0.15)], abs=1e-6)
    assert beam_search(_step(TABLE), 1, 4, EOS, beam_size=2)[0] == [[A, C]]  # greedy found "a b"


def test_beam_3_keeps_an_ended_beam_that_beam_2_dropped():
    # t0: a .6, b .25, c .1.
    # t1: a b .30, a c .276, b eos .225 (c eos .09 is 4th) -> b eos has ended, with score log .225.
    # t2: a b eos .15, a c eos .1656, and b eos stays at .225 (ended: no step; its eos costs nothing);
    #     every other word after an ended beam scores -999, below all real candidates.
    # t3: all ended above -999: nothing can change, so the search stops (the published code runs on and only
    #     appends end tokens).  Ranked: b (.225), a c (.1656), a b (.15).
    step = _step(TABLE)
    tokens, scores = search_beams(step, 1, max_len=4, eos_id=EOS, beam_size=3)
    assert tokens.tolist() == [[[B, EOS, EOS, EOS], [A, C, EOS, EOS], [A, B, EOS, EOS]]]
    assert scores[0].tolist() == pytest.approx([math.log(p) for p in (0.225, 0.1656, 0.15)], abs=1e-6)
    # only beams that have not ended are stepped: t0 (), t1 a, b, c, t2 a b, a c; no t3
    assert step.calls == [[[]], [[A], [B], [C]], [[A, B], [A, C]]]


def test_length_penalty_divides_by_non_end_tokens_plus_one():
    # beam 3, LEN_PENALTY 1: score / (words + 1), words = tokens other than eos:
    #   b eos:   log .225  / 2 = -0.746;  a c eos: log .1656 / 3 = -0.599;  a b eos: log .15 / 3 = -0.632
    tokens, scores = search_beams(_step(TABLE), 1, max_len=4, eos_id=EOS, beam_size=3, len_penalty=1.0)
    assert tokens[0, :, :2].tolist() == [[A, C], [A, B], [B, EOS]]
    assert scores[0].tolist() == pytest.approx([math.log(0.1656) / 3, math.log(0.15) / 3, math.log(0.225) / 2],
                                               abs=1e-6)
    # LEN_PENALTY 2: -0.200, -0.211, -0.373 (same order)
    assert beam_search(_step(TABLE), 1, 4, EOS, beam_size=3, len_penalty=2.0)[0] == [[A, C]]
    # LEN_PENALTY 0 (and below, as published): plain sums, b wins
    assert beam_search(_step(TABLE), 1, 4, EOS, beam_size=3, len_penalty=0.0)[0] == [[B]]
    assert beam_search(_step(TABLE), 1, 4, EOS, beam_size=3, len_penalty=-1.0)[0] == [[B]]


def test_a_beam_cut_at_max_len_counts_max_len_plus_one():
    # max_len 1, beam 2: t0 keeps eos (.5, ended, 0 words -> length 1) and a (.4, cut, 1 word -> length 2).
    # LEN_PENALTY 0: eos wins (log .5 > log .4): the empty caption.
    # LEN_PENALTY 1: a: log .4 / 2 = -0.458 beats eos: log .5 / 1 = -0.693.  (Counting the cut beam as 1 word
    # would give a: -0.916 and the empty caption again.)
    table = {(): [0.5, 0.4, 0.06, 0.04]}
    assert beam_search(_step(table), 1, 1, EOS, beam_size=2)[0] == [[]]
    seqs, scores = beam_search(_step(table), 1, 1, EOS, beam_size=2, len_penalty=1.0)
    assert seqs == [[A]] and scores.item() == pytest.approx(math.log(0.4) / 2, abs=1e-6)
    # max_len 2, beam 3: after t1 the beams are a b (.30), a c (.276), b eos (.225); a b is cut, not ended
    seqs, _ = beam_search(_step(TABLE), 1, 2, EOS, beam_size=3, len_penalty=1.0)
    assert seqs == [[A, B]]  # log .3 / 3 = -0.401 > log .276 / 3 = -0.429 > log .225 / 2 = -0.746


def test_an_ended_beam_offers_other_words_at_minus_999():
    # Three words (eos, a, b) in log space, beam 2, max_len 3.
    # t0: eos -1000, a 0, b -1001 -> keep a (0) and eos (-1000; ended, 0 words).
    # t1: a*: eos 0, a -1002, b -1003.  The ended beam offers eos at its score -1000 and a, b at -999 each.
    #     Best two: a eos (0) and the ended beam + a (-999; the first of the tied -999s): the ended beam is
    #     displaced by its own filler continuation, which stays ended (ended beams never restart).
    # t2: a eos*: eos 0, a -999, b -999; eos a*: eos -999, a -999, b -999 -> keep a eos eos (0) and
    #     a eos a (-999): the -999 ties go to the lower beam, then the lower word.
    table = {(): [-1000.0, 0.0, -1001.0], (A,): [0.0, -1002.0, -1003.0]}
    step = _step(table, log=False)
    tokens, scores = search_beams(step, 1, max_len=3, eos_id=EOS, beam_size=2)
    assert tokens.tolist() == [[[A, EOS, EOS], [A, EOS, A]]]
    assert scores[0].tolist() == [0.0, ENDED_FILLER]
    assert step.calls == [[[]], [[A]]]  # ended beams are never stepped, filler ones included
    # the caption is cut before the first end token
    assert beam_search(_step(table, log=False), 1, 3, EOS, beam_size=2)[0] == [[A]]


def test_items_of_a_batch_are_searched_apart():
    # item 0 prefers a then eos, item 1 b then eos (every other word at -5 before the softmax)
    def step(tokens, origin):
        out = torch.full((tokens.shape[0], 4), -5.0)
        for r, (t, o) in enumerate(zip(tokens.tolist(), origin.tolist())):
            out[r, (A if o == 0 else B) if not t else EOS] = 0.0
        return out.log_softmax(-1)

    for k in (1, 2, 3):
        assert beam_search(step, 2, 5, EOS, beam_size=k)[0] == [[A], [B]]


# ------------------------------------------------------------------------------------------ DECODE_STRATEGY
def _cfg(*opts):
    return setup_cfg(os.path.join(REPO, "configs/quick_schedules/instant_caption.yaml"),
                     [x for pair in zip(opts[::2], opts[1::2]) for x in (f"TASKS.mscoco_caption.{pair[0]}", pair[1])])


def test_published_decode_strategy_is_honoured():
    # issue 18: {NAME: CaptionBeamSearcherV3, BEAM_SIZE: 2} used to decode greedily
    cfg = _cfg("DECODE_STRATEGY.NAME", "CaptionBeamSearcherV3", "DECODE_STRATEGY.BEAM_SIZE", "2",
               "DECODE_STRATEGY.LEN_PENALTY", "2.0", "MODEL.EVAL_MAX_SEQ_LEN", "21", "INFERENCE.VOCAB", "CLIP_CAPTION")
    task_cfg = cfg.task("mscoco_caption")
    s = decode_strategy_from_config(task_cfg)
    assert (s.name, s.beam_size, s.len_penalty, s.max_len) == ("beam", 2, 2.0, 21)

    class Tok:
        eot_id, sot_id, mask_id, gen_id, spe_id = 49407, 49406, 49408, 49409, 49410

    gen = CaptionGenerator.from_config(task_cfg, Tok())
    assert (gen.beam_size, gen.len_penalty, gen.max_len, gen.eos_id) == (2, 2.0, 21, 49407)
    # our names; the published default "none" decodes greedily; EVAL_MAX_SEQ_LEN 0 = MODEL.MAX_SEQ_LEN (16)
    assert decode_strategy_from_config(_cfg("DECODE_STRATEGY.NAME", "beam", "DECODE_STRATEGY.BEAM_SIZE", "3")
                                       .task("mscoco_caption")).beam_size == 3
    s = decode_strategy_from_config(_cfg("DECODE_STRATEGY.NAME", "none").task("mscoco_caption"))
    assert (s.name, s.beam_size, s.max_len) == ("greedy", 1, 16)
    # INFERENCE.GENERATION_MODE beam: our older spelling of NAME beam
    s = decode_strategy_from_config(_cfg("INFERENCE.GENERATION_MODE", "beam", "DECODE_STRATEGY.BEAM_SIZE", "2")
                                    .task("mscoco_caption"))
    assert (s.name, s.beam_size) == ("beam", 2)


@pytest.mark.parametrize("opts, message", [
    (("DECODE_STRATEGY.NAME", "BeamSearcher"),
     "TASKS.mscoco_caption.DECODE_STRATEGY.NAME 'BeamSearcher' is not a registered decode strategy; "
     "registered: beam, greedy (published names: CaptionBeamSearcherV3 = beam, none = greedy)"),
    (("DECODE_STRATEGY.BEAM_SIZE", "2"), "DECODE_STRATEGY.BEAM_SIZE 2 needs DECODE_STRATEGY.NAME beam"),
    (("DECODE_STRATEGY.NAME", "beam", "DECODE_STRATEGY.BEAM_SIZE", "0"), "BEAM_SIZE 0 must be an integer >= 1"),
    (("DECODE_STRATEGY.LEN_PENALTY", "-1.0"), "LEN_PENALTY -1.0 must be >= 0"),
    (("INFERENCE.GENERATION_MODE", "sample"), "INFERENCE.GENERATION_MODE 'sample' must be one of greedy, beam"),
    (("MODEL.EVAL_MAX_SEQ_LEN", "-1"), "MODEL.EVAL_MAX_SEQ_LEN -1 must be >= 0"),
    (("INFERENCE.VOCAB", "BERT"), "INFERENCE.VOCAB 'BERT' must be one of CLIP, CLIP_CAPTION"),
])
def test_bad_decode_strategy_is_one_config_error_before_anything_is_built(opts, message):
    cfg = _cfg(*opts)
    with pytest.raises(ConfigError) as e:
        validate_tasks(cfg)  # what main.py runs before any process, model or data
    assert message in str(e.value) and "\n" not in str(e.value)


def test_caption_task_decodes_with_its_decode_strategy(monkeypatch):
    """ImageCaptionTask.predict (and so video_caption's) searches with the task's DECODE_STRATEGY."""
    from uniperceiver.modeling import decoding
    from uniperceiver.modeling import build_model
    from uniperceiver.tasks import build_tasks

    cfg = _cfg("DECODE_STRATEGY.NAME", "CaptionBeamSearcherV3", "DECODE_STRATEGY.BEAM_SIZE", "2",
               "DECODE_STRATEGY.LEN_PENALTY", "1.0", "MODEL.EVAL_MAX_SEQ_LEN", "3")
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    (task,) = build_tasks(cfg).values()
    seen = []
    real = decoding.search_beams

    def spy(step_fn, batch_size, max_len, eos_id, beam_size=1, len_penalty=0.0, device="cpu"):
        seen.append((batch_size, max_len, beam_size, len_penalty))
        return real(step_fn, batch_size, max_len, eos_id, beam_size, len_penalty, device)

    monkeypatch.setattr(decoding, "search_beams", spy)
    batch = {"images": torch.randn(2, 3, 32, 32), "image_ids": [1, 2], "references": [["a"], ["b"]]}
    task.start_inference(model)
    with torch.no_grad():
        out = task.predict(model, batch)
    assert seen == [(2, 3, 2, 1.0)] and len(out["captions"]) == 2


def test_stable_topk_equals_a_stable_sort():
    from uniperceiver.modeling.decoding import stable_topk

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 4, (6, 40), generator=g).float()  # many ties
    x[0, :5] = float("-inf")
    x[1] = float("-inf")
    distinct = torch.randn(4, 30, generator=g)  # no ties at the k-th value: the topk set is taken as it is
    distinct[:, :3] = 5.0  # ties above it still go lower index first
    for t in (x, distinct):
        for k in (1, 2, 3, 7, 30):
            values, index = stable_topk(t, k)
            ref_values, ref_index = t.sort(dim=1, descending=True, stable=True)
            assert torch.equal(values, ref_values[:, :k]) and torch.equal(index, ref_index[:, :k])

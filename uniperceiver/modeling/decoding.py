"""Caption decoding: the decode strategies (greedy, beam search as the published ``CaptionBeamSearcherV3``).

``search_beams`` / ``beam_search`` are model-agnostic: they drive a ``step_fn(tokens [N, t], origin [N]) ->
log-probs [N, V]`` (``origin`` = the batch item each row belongs to), called only for beams that have not
ended.  They follow the published ``CaptionBeamSearcherV3`` (github fundamentalvision/Uni-Perceiver @ a8c9e37,
``uniperceiver/modeling/decode_strategy/caption_beam_searcher_v3.py``) step for step:

- step 0 expands the single start beam into the ``beam_size`` best words; each later step ranks every
  (beam, word) continuation of an item by summed log-probability and keeps the best ``beam_size``
  (descending sort; on ties the lower beam, then the lower token id, comes first);
- a beam ends when it emits the end token.  An ended beam still takes part in every later step: its only real
  continuation is the end token at no cost (score unchanged), and every other word is offered at the fixed
  score ``ENDED_FILLER`` (-999), as in the published code;
- after the last step (``max_len`` tokens, the end token included) each item's beams are ranked by
  ``score / (words + 1) ** len_penalty`` when ``len_penalty > 0`` (``words`` = the beam's tokens that are not
  the end token, so an ended beam counts its end token and a beam cut at ``max_len`` counts ``max_len + 1``),
  else by the plain sum (a stable descending sort); ``beam_search`` returns the best beam, cut before its
  first end token (``search_beams`` returns them all, ranked, as the published ``G_SENTS_IDS``).

The published code always runs ``max_len`` steps; we stop once every beam has ended with a score above the
filler, when later steps could only append end tokens.  ``beam_size=1`` is greedy decoding.  Inside
``utils.lockstep.lockstep()`` decoding goes on until every rank is done.

Decode strategies by name (``DECODE_STRATEGY.NAME``): ``greedy`` (one beam) and ``beam`` (``BEAM_SIZE`` beams);
the published name ``CaptionBeamSearcherV3`` is ``beam`` and the published default ``none`` is ``greedy``.
:func:`decode_strategy_from_config` reads the task node (``DECODE_STRATEGY.*``, ``INFERENCE.GENERATION_MODE``,
``INFERENCE.VOCAB``, ``MODEL.EVAL_MAX_SEQ_LEN``) and refuses a bad value with one :class:`ConfigError` naming
the key and the value.

``CaptionGenerator`` is the Uni-Perceiver step: the sequence ``[<spe>, image, prefix + generated tokens +
placeholder, queries]`` with causal text; query ``i`` predicts text token ``i`` and sees only text tokens
``< i``, so the last query reads the generated prefix and the placeholder stays invisible to it.  Its logits
are scored against the vocabulary embeddings given to ``generate`` (row i = token i), which the caller encodes
once per weights version (``data.target_sets.TargetEncoder`` caches them), not once per step or batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from uniperceiver.config import ConfigError

from uniperceiver.utils import lockstep

StepFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# Score the published searcher gives every non-end word after a beam has ended (an absolute score, not a cost).
ENDED_FILLER = -999.0


def stable_topk(x: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The first ``k`` columns of ``x.sort(dim=1, descending=True, stable=True)`` for ``x [B, N]`` (ties: lower
    index first), from ``topk``: on CPU a full sort of 49k words costs ~50x more."""
    values, index = x.topk(k, dim=1)
    kth = values[:, -1:]  # the k-th largest value of each row
    tied = x == kth
    if not bool((tied.sum(dim=1) == (values == kth).sum(dim=1)).all()):
        # some value equal to the k-th did not fit: keep those of lowest index
        room = k - (x > kth).sum(dim=1, keepdim=True)
        take = (x > kth) | (tied & (tied.cumsum(dim=1) <= room))
        index = take.nonzero()[:, 1].reshape(x.shape[0], k)
    index = index.sort(dim=1).values  # then by value, stably: equal values keep the lower index first
    values, order = x.gather(1, index).sort(dim=1, descending=True, stable=True)
    return values, index.gather(1, order)


def search_beams(step_fn: StepFn, batch_size: int, max_len: int, eos_id: int, beam_size: int = 1,
                 len_penalty: float = 0.0, device: Any = "cpu") -> Tuple[torch.Tensor, torch.Tensor]:
    """Every final beam, as the published searcher returns them (see the module docstring for the rules):
    tokens ``[B, beams, max_len]`` (uncut; an ended beam goes on with end tokens) and ranking scores
    ``[B, beams]`` (length-normalised when ``len_penalty > 0``), best first."""
    device = torch.device(device)
    B, K = batch_size, max(1, int(beam_size))
    tokens = torch.zeros(B, 0, dtype=torch.long, device=device)  # [B * beams, t]
    scores = torch.zeros(B, 1, device=device)  # [B, beams]
    ended = torch.zeros(B, dtype=torch.bool, device=device)  # [B * beams]
    words = torch.zeros(B, dtype=torch.long, device=device)  # tokens other than the end token, per beam
    beams, V = 1, None
    for _ in range(max_len):
        flat = scores.reshape(-1)
        # a beam at -inf (only when fewer than beam_size words are allowed) can never win: it is not stepped
        live = ~ended & (flat > float("-inf"))
        # every beam has ended above the filler: later steps would only append end tokens
        settled = bool(ended.all()) and bool((flat > ENDED_FILLER).all())
        if lockstep.all_done(settled):
            break
        if bool(live.any()):
            origin = torch.arange(B, device=device).repeat_interleave(beams)
            logp_live = step_fn(tokens[live], origin[live]).float()
            V = logp_live.shape[1]
        elif lockstep.active():  # other ranks are still decoding: step along, drop the result
            step_fn(tokens[:1], torch.zeros(1, dtype=torch.long, device=device))
        if settled:
            continue
        cand = torch.full((B * beams, V), float("-inf"), device=device)
        if bool(live.any()):
            cand[live] = flat[live, None] + logp_live
        cand[ended] = ENDED_FILLER
        cand[ended, eos_id] = flat[ended]
        new_beams = min(K, beams * V)
        scores, order = stable_topk(cand.reshape(B, beams * V), new_beams)
        src = torch.div(order, V, rounding_mode="floor")
        tok = (order % V).reshape(-1)
        rows = (torch.arange(B, device=device)[:, None] * beams + src).reshape(-1)
        tokens = torch.cat([tokens[rows], tok[:, None]], dim=1)
        words = words[rows] + (tok != eos_id).long()
        ended = ended[rows] | (tok == eos_id)
        beams = new_beams
    final = scores
    if len_penalty > 0:
        final = scores / (words.reshape(B, beams) + 1).float() ** len_penalty
    final, order = final.sort(dim=1, descending=True, stable=True)
    tokens = tokens.reshape(B, beams, tokens.shape[1]).gather(1, order[:, :, None].expand(B, beams, tokens.shape[1]))
    pad = tokens.new_full((B, beams, max_len - tokens.shape[2]), eos_id)  # stopped early: end tokens follow
    return torch.cat([tokens, pad], dim=2), final


def beam_search(step_fn: StepFn, batch_size: int, max_len: int, eos_id: int, beam_size: int = 1,
                len_penalty: float = 0.0, device: Any = "cpu") -> Tuple[List[List[int]], torch.Tensor]:
    """Decode ``batch_size`` sequences of at most ``max_len`` tokens (incl. the end token): the best beam of
    :func:`search_beams` of each item, cut before its first end token, and its ranking score [B]."""
    tokens, scores = search_beams(step_fn, batch_size, max_len, eos_id, beam_size, len_penalty, device)
    out = []
    for row in tokens[:, 0].tolist():
        out.append(row[: row.index(eos_id)] if eos_id in row else row)
    return out, scores[:, 0]


# ---------------------------------------------------------------------------------------------------------
# Decode strategies by name
# ---------------------------------------------------------------------------------------------------------
# Registered decode strategies (DECODE_STRATEGY.NAME) and what each does.
DECODE_STRATEGIES: Dict[str, str] = {
    "greedy": "one beam: the most likely word at each step",
    "beam": "beam search with DECODE_STRATEGY.BEAM_SIZE beams, as the published CaptionBeamSearcherV3",
}
# Names of the published configs and the strategy of ours each one is.
PUBLISHED_DECODE_NAMES: Dict[str, str] = {"CaptionBeamSearcherV3": "beam", "none": "greedy"}
GENERATION_MODES = ("greedy", "beam")
# INFERENCE.VOCAB values of the published configs; both decode CLIP BPE tokens until <|endoftext|>.
DECODE_VOCABS = ("CLIP", "CLIP_CAPTION")


@dataclass(frozen=True)
class DecodeStrategy:
    """A task's caption decoding, resolved from its config node by :func:`decode_strategy_from_config`."""

    name: str  # a key of DECODE_STRATEGIES
    beam_size: int
    len_penalty: float
    max_len: int  # most tokens generated per caption, the end token included


def decode_strategy_from_config(task_cfg, where: str = "") -> DecodeStrategy:
    """The decode strategy of a task node; ``where`` prefixes the keys named in errors (``TASKS.<NAME>.``)."""
    d = task_cfg.DECODE_STRATEGY
    # the published code reads any spelling of "none" (and a YAML null) as no beam searcher
    raw = "none" if d.NAME is None or (isinstance(d.NAME, str) and d.NAME.lower() == "none") else d.NAME
    name = PUBLISHED_DECODE_NAMES.get(raw, raw)
    if name not in DECODE_STRATEGIES:
        known = ", ".join(sorted(DECODE_STRATEGIES))
        published = ", ".join(f"{k} = {v}" for k, v in PUBLISHED_DECODE_NAMES.items())
        raise ConfigError(f"{where}DECODE_STRATEGY.NAME {d.NAME!r} is not a registered decode strategy; "
                          f"registered: {known} (published names: {published})")
    mode = task_cfg.INFERENCE.GENERATION_MODE
    if mode not in GENERATION_MODES:
        raise ConfigError(f"{where}INFERENCE.GENERATION_MODE {mode!r} must be one of {', '.join(GENERATION_MODES)}")
    if mode == "beam":  # the older spelling of DECODE_STRATEGY.NAME beam
        name = "beam"
    beam_size = d.BEAM_SIZE
    if not isinstance(beam_size, int) or beam_size < 1:
        raise ConfigError(f"{where}DECODE_STRATEGY.BEAM_SIZE {beam_size!r} must be an integer >= 1")
    if name == "greedy" and beam_size != 1:
        raise ConfigError(f"{where}DECODE_STRATEGY.BEAM_SIZE {beam_size} needs DECODE_STRATEGY.NAME beam "
                          f"(or CaptionBeamSearcherV3): NAME {d.NAME!r} decodes with one beam")
    len_penalty = float(d.LEN_PENALTY)
    if len_penalty < 0:
        raise ConfigError(f"{where}DECODE_STRATEGY.LEN_PENALTY {len_penalty!r} must be >= 0 (0: rank beams by "
                          f"the plain sum of log-probabilities)")
    if task_cfg.INFERENCE.VOCAB not in DECODE_VOCABS:
        raise ConfigError(f"{where}INFERENCE.VOCAB {task_cfg.INFERENCE.VOCAB!r} must be one of "
                          f"{', '.join(DECODE_VOCABS)} (captions are decoded in the CLIP BPE vocabulary)")
    max_len = int(task_cfg.MODEL.EVAL_MAX_SEQ_LEN)
    if max_len < 0:
        raise ConfigError(f"{where}MODEL.EVAL_MAX_SEQ_LEN {max_len} must be >= 0 (0: MODEL.MAX_SEQ_LEN)")
    return DecodeStrategy(name=name, beam_size=beam_size if name == "beam" else 1, len_penalty=len_penalty,
                          max_len=max_len or int(task_cfg.MODEL.MAX_SEQ_LEN))


class CaptionGenerator:
    """Greedy / beam captioning with a Uni-Perceiver model; see the module docstring."""

    def __init__(self, *, eos_id: int, max_len: int = 20, beam_size: int = 1, len_penalty: float = 0.0,
                 temp_name: str = "default", prefix_ids: Sequence[int] = (), banned_ids: Sequence[int] = (),
                 placeholder_id: Optional[int] = None, attributes: Optional[Dict[str, Any]] = None):
        self.eos_id = int(eos_id)
        self.max_len = int(max_len)
        self.beam_size = int(beam_size)
        self.len_penalty = float(len_penalty)
        self.temp_name = temp_name
        self.prefix_ids = [int(i) for i in prefix_ids]
        self.banned_ids = [int(i) for i in banned_ids]
        self.placeholder_id = self.eos_id if placeholder_id is None else int(placeholder_id)
        self.attributes = attributes

    @classmethod
    def from_config(cls, task_cfg, tokenizer, **kwargs) -> "CaptionGenerator":
        strategy = decode_strategy_from_config(task_cfg, f"TASKS.{task_cfg.NAME}.")
        args = dict(eos_id=tokenizer.eot_id, max_len=strategy.max_len, beam_size=strategy.beam_size,
                    len_penalty=strategy.len_penalty, temp_name=task_cfg.MODEL.TEMP_NAME or "default",
                    banned_ids=[tokenizer.sot_id, tokenizer.mask_id, tokenizer.gen_id, tokenizer.spe_id])
        args.update(kwargs)
        return cls(**args)

    @torch.no_grad()
    def generate(self, model, images: torch.Tensor, vocab_embeds: torch.Tensor) -> Tuple[List[List[int]], torch.Tensor]:
        """Token lists (without the end token) and scores for ``images`` [B, ...]; ``vocab_embeds`` [V, D]
        is the candidate embedding of every token id (row i = token i)."""
        device = images.device
        prefix = torch.tensor(self.prefix_ids, dtype=torch.long, device=device)
        banned = torch.tensor(self.banned_ids, dtype=torch.long, device=device)

        def step_fn(tokens: torch.Tensor, origin: torch.Tensor) -> torch.Tensor:
            n = tokens.shape[0]
            place = torch.full((n, 1), self.placeholder_id, dtype=torch.long, device=device)
            text = torch.cat([prefix.expand(n, -1), tokens, place], dim=1)
            pos = text.shape[1] - 1  # the query that predicts the next token
            out = model(images=images[origin], text=text, num_queries=pos + 1, causal_text=True,
                        attributes=self.attributes)
            logits = model.logits(out["queries"][:, pos], vocab_embeds, self.temp_name).float()
            if banned.numel():
                logits[:, banned] = float("-inf")
            return logits.log_softmax(-1)

        return beam_search(step_fn, images.shape[0], self.max_len, self.eos_id, self.beam_size,
                           self.len_penalty, device)

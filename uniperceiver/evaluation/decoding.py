"""Caption decoding: greedy and beam search over the vocabulary, with cached candidate embeddings.

``beam_search`` is model-agnostic: it drives a ``step_fn(tokens [N, t], origin [N]) -> log-probs [N, V]``
(``origin`` = the batch item each row belongs to), only for unfinished rows.  ``beam_size=1`` is greedy
decoding.  Beams are ranked by summed log-probability while searching; the final choice among the beams uses
``score / length ** len_penalty`` (length counts the end token; ``len_penalty=0`` = plain sum).
Inside ``evaluation.lockstep.lockstep()`` it decodes until every rank is done.

``CaptionGenerator`` is the Uni-Perceiver step: the sequence ``[<spe>, image, prefix + generated tokens +
placeholder, queries]`` with causal text; query ``i`` predicts text token ``i`` and sees only text tokens
``< i``, so the last query reads the generated prefix and the placeholder stays invisible to it.  Its logits
are scored against the vocabulary embeddings given to ``generate`` (row i = token i), which the caller encodes
once per weights version (``data.target_sets.TargetEncoder`` caches them), not once per step or batch.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from . import lockstep

StepFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def beam_search(step_fn: StepFn, batch_size: int, max_len: int, eos_id: int, beam_size: int = 1,
                len_penalty: float = 0.0, device: Any = "cpu") -> Tuple[List[List[int]], torch.Tensor]:
    """Decode ``batch_size`` sequences of at most ``max_len`` tokens (incl. the end token).

    Returns the best token lists (end token and everything after it removed) and their final scores [B].
    """
    device = torch.device(device)
    B, K = batch_size, max(1, int(beam_size))
    tokens = torch.zeros(B, 0, dtype=torch.long, device=device)
    scores = torch.zeros(B, 1, device=device)  # [B, beams]
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    lengths = torch.zeros(B, dtype=torch.long, device=device)
    beams = 1
    for _ in range(max_len):
        done = bool(finished.all())
        if lockstep.all_done(done):
            break
        if done:  # other ranks of a lockstep evaluation are still decoding: step along, drop the result
            step_fn(tokens[:1], torch.zeros(1, dtype=torch.long, device=device))
            continue
        origin = torch.arange(B, device=device).repeat_interleave(beams)
        active = ~finished
        logp_active = step_fn(tokens[active], origin[active]).float()
        V = logp_active.shape[1]
        logp = torch.full((tokens.shape[0], V), float("-inf"), device=device)
        logp[active] = logp_active
        logp[finished, eos_id] = 0.0  # a finished beam continues only with the end token, at no cost
        cand = (scores.reshape(-1, 1) + logp).reshape(B, beams * V)
        new_beams = min(K, beams * V)
        scores, flat = cand.topk(new_beams, dim=1)
        src = torch.div(flat, V, rounding_mode="floor")
        tok = (flat % V).reshape(-1)
        rows = (torch.arange(B, device=device)[:, None] * beams + src).reshape(-1)
        was_finished = finished[rows]
        tokens = torch.cat([tokens[rows], tok[:, None]], dim=1)
        lengths = lengths[rows] + (~was_finished).long()
        finished = was_finished | (tok == eos_id) | torch.isinf(scores.reshape(-1))
        beams = new_beams
    final = scores / lengths.reshape(B, beams).clamp(min=1).float() ** len_penalty if len_penalty else scores
    best_score, best = final.max(dim=1)
    best_rows = torch.arange(B, device=device) * beams + best
    out = []
    for row in tokens[best_rows].tolist():
        out.append(row[: row.index(eos_id)] if eos_id in row else row)
    return out, best_score


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
        beam = task_cfg.DECODE_STRATEGY.BEAM_SIZE if task_cfg.INFERENCE.GENERATION_MODE == "beam" else 1
        args = dict(eos_id=tokenizer.eot_id, max_len=task_cfg.MODEL.MAX_SEQ_LEN, beam_size=beam,
                    len_penalty=task_cfg.DECODE_STRATEGY.LEN_PENALTY, temp_name=task_cfg.MODEL.TEMP_NAME or "default",
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

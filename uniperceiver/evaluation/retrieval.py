"""Image-text (and video-text) retrieval recall R@1/5/10 in both directions, computed in chunks.

Scores are dot products of the features given (the model's features are L2-normalised, so cosine).
An image may have several captions: image->text counts a hit at K when its best-scoring own caption ranks
within the top K; text->image ranks the caption's one image.  Ties count against the query: the rank of the
ground truth is the number of *wrong* candidates scoring at least as high, so a collapsed model (all scores
equal) gets R@K = 0.

Memory stays flat: the similarity matrix is never built whole, only ``chunk_size`` query rows at a time
(5k images x 25k captions: 256 x 25k floats per chunk).  With several ranks, features are all-gathered,
each rank ranks its share of the query rows, and the ranks (one integer per query) are gathered.
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import torch

from .evaluator import EVALUATOR_REGISTRY, DatasetEvaluator, all_gather_cat, as_long_tensor
from uniperceiver.utils import comm


def _gt_ranks_chunk(sim: torch.Tensor, gt_mask: torch.Tensor) -> torch.Tensor:
    """Rank of the best ground truth per row: #wrong candidates scoring >= the best ground-truth score."""
    best = sim.masked_fill(~gt_mask, float("-inf")).max(1, keepdim=True).values
    return ((sim >= best) & ~gt_mask).sum(1)


def retrieval_ranks(query: torch.Tensor, query_keys: torch.Tensor, cands: torch.Tensor, cand_keys: torch.Tensor,
                    chunk_size: int = 256) -> torch.Tensor:
    """0-based rank of each query's best matching candidate (matching = equal key), chunked over queries.

    Queries without any matching candidate get rank -1 (the caller drops them).
    """
    ranks = torch.empty(query.shape[0], dtype=torch.long)
    cands_t = cands.float().t().contiguous()
    for start in range(0, query.shape[0], max(1, chunk_size)):
        end = min(start + max(1, chunk_size), query.shape[0])
        q = query[start:end].to(cands_t.device, torch.float32)
        sim = q @ cands_t
        gt = query_keys[start:end].to(cands_t.device)[:, None] == cand_keys.to(cands_t.device)[None, :]
        r = _gt_ranks_chunk(sim, gt)
        r[~gt.any(1)] = -1
        ranks[start:end] = r.cpu()
    return ranks


def recall_at_k(ranks: torch.Tensor, ks: Sequence[int]) -> Dict[int, float]:
    ranks = ranks[ranks >= 0]
    return {k: 100.0 * (ranks < k).float().mean().item() if ranks.numel() else 0.0 for k in ks}


def chance_recall_at_k(num_gt: torch.Tensor, num_cands: int, ks: Sequence[int]) -> Dict[int, float]:
    """R@K of a uniformly random ranking: a query with g ground truths among N candidates hits within the top
    K with p = 1 - C(N - g, K) / C(N, K) (K / N when g = 1), averaged over the queries."""
    out = {}
    g = num_gt.double()
    for k in ks:
        miss = torch.ones_like(g)
        for j in range(min(int(k), num_cands)):
            miss = miss * ((num_cands - g - j).clamp(min=0) / (num_cands - j))
        out[k] = 100.0 * (1 - miss).mean().item() if g.numel() else 0.0
    return out


def dedup_by_id(feats: torch.Tensor, ids: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Keep the first row of every id (an image seen once per caption in a pair dataset), ascending ids."""
    uniq, inverse = torch.unique(ids, return_inverse=True)
    first = torch.full((uniq.numel(),), ids.numel(), dtype=torch.long)
    first = first.scatter_reduce(0, inverse, torch.arange(ids.numel()), reduce="amin")
    return feats[first], uniq


def _my_share(n: int) -> Tuple[int, int]:
    world, rank = comm.get_world_size(), comm.get_rank()
    return n * rank // world, n * (rank + 1) // world


@EVALUATOR_REGISTRY.register()
class RetrievalEvaluator(DatasetEvaluator):
    """R@K for image->text (``i2t``) and text->image (``t2i``), plus their mean ``R_mean``.

    ``outputs`` of a batch (either side may be absent or empty):
      ``image_feats`` [B, D] and ``image_ids`` [B] (an id may repeat: kept once),
      ``text_feats`` [T, D] and ``text_image_ids`` [T] (the id of the image each caption describes).
    """

    def __init__(self, ks: Sequence[int] = (1, 5, 10), chunk_size: int = 256, device: str = "cpu"):
        self.ks = tuple(int(k) for k in ks)
        self.chunk_size = int(chunk_size)
        self.device = torch.device(device)
        self.reset()

    @classmethod
    def from_config(cls, task_cfg, root_cfg, split: str = "val") -> "RetrievalEvaluator":
        device = "cuda" if torch.cuda.is_available() and root_cfg.MODEL.DEVICE != "cpu" else "cpu"
        return cls(device=device)

    def reset(self) -> None:
        self._img: List[torch.Tensor] = []
        self._img_ids: List[torch.Tensor] = []
        self._txt: List[torch.Tensor] = []
        self._txt_ids: List[torch.Tensor] = []
        self._chance: Dict[str, float] = {}

    def process(self, batch: Dict[str, Any], outputs: Dict[str, Any]) -> None:
        if outputs.get("image_feats") is not None and len(outputs["image_feats"]):
            self._img.append(outputs["image_feats"].detach().float().cpu())
            self._img_ids.append(as_long_tensor(outputs["image_ids"]))
        if outputs.get("text_feats") is not None and len(outputs["text_feats"]):
            self._txt.append(outputs["text_feats"].detach().float().cpu())
            self._txt_ids.append(as_long_tensor(outputs["text_image_ids"]))

    def evaluate(self) -> Dict[str, float]:
        img = all_gather_cat(self._img)
        img_ids = all_gather_cat(self._img_ids, dtype=torch.long)
        txt = all_gather_cat(self._txt)
        txt_ids = all_gather_cat(self._txt_ids, dtype=torch.long)
        if img.shape[0] == 0 or txt.shape[0] == 0:
            return {}
        img, img_ids = dedup_by_id(img, img_ids)
        missing = ~torch.isin(txt_ids, img_ids)
        if missing.any():
            raise ValueError(
                f"RetrievalEvaluator: {int(missing.sum())} captions refer to image ids never seen, "
                f"e.g. {txt_ids[missing][:5].tolist()}"
            )
        # Each rank ranks a contiguous share of the queries; the integer ranks are gathered.
        dev = self.device
        i0, i1 = _my_share(img.shape[0])
        t0, t1 = _my_share(txt.shape[0])
        i2t = retrieval_ranks(img[i0:i1].to(dev), img_ids[i0:i1], txt.to(dev), txt_ids, self.chunk_size)
        t2i = retrieval_ranks(txt[t0:t1].to(dev), txt_ids[t0:t1], img.to(dev), img_ids, self.chunk_size)
        i2t = all_gather_cat([i2t], dtype=torch.long)
        t2i = all_gather_cat([t2i], dtype=torch.long)
        if not comm.is_main_process():
            return {}
        results: Dict[str, float] = {}
        for name, ranks in (("i2t", i2t), ("t2i", t2i)):
            for k, v in recall_at_k(ranks, self.ks).items():
                results[f"{name}_R@{k}"] = v
        results["R_mean"] = sum(results.values()) / len(results)
        # Chance: i2t ranks all captions (an image's own captions are its ground truths), t2i all images.
        per_image = (txt_ids[None, :] == img_ids[:, None]).sum(1)
        chance = {f"i2t_R@{k}": v for k, v in chance_recall_at_k(per_image, txt.shape[0], self.ks).items()}
        chance.update({f"t2i_R@{k}": v for k, v in
                       chance_recall_at_k(torch.ones(txt.shape[0]), img.shape[0], self.ks).items()})
        chance["R_mean"] = sum(chance.values()) / len(chance)
        self._chance = chance
        return results

"""Loss helpers shared by the tasks: cross-entropy with label smoothing and soft-target cross-entropy
(mixup / cutmix).  Both work on logits of any leading shape ``[..., C]``; padded positions are dropped
with ``ignore_index`` (hard labels) or a ``weight``/mask chosen by the caller."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0, ignore_index: int = -100
) -> torch.Tensor:
    """Mean cross-entropy of ``logits [..., C]`` against integer ``labels [...]`` (``ignore_index`` skipped).

    Computed in fp32.  Returns 0 (with a gradient path) when every label is ignored, without a host sync."""
    logits = logits.reshape(-1, logits.shape[-1]).float()
    labels = labels.reshape(-1)
    per_item = F.cross_entropy(
        logits, labels, label_smoothing=label_smoothing, ignore_index=ignore_index, reduction="none"
    )
    count = (labels != ignore_index).sum().clamp(min=1)  # no host sync, no 0/0
    return per_item.sum() / count


def soft_target_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over rows of ``-sum(targets * log_softmax(logits))``; ``targets [..., C]`` are probabilities
    (e.g. mixup / cutmix mixtures, already label-smoothed if wanted)."""
    log_probs = F.log_softmax(logits.float(), dim=-1)
    return -(targets.to(log_probs.dtype) * log_probs).sum(dim=-1).mean()


def one_hot_smoothed(labels: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """Integer labels -> smoothed one-hot probabilities (``1 - s + s / C`` on the label, ``s / C`` elsewhere),
    the form mixup mixes."""
    off = smoothing / num_classes
    out = torch.full((*labels.shape, num_classes), off, device=labels.device)
    return out.scatter_(-1, labels.unsqueeze(-1), 1.0 - smoothing + off)

"""What the answer tasks (bAbI, Omniglot) share: a class is predicted with a softmax.

Their ``Batch.target`` holds 1-hot rows (the answer word, the character's label) at the
scored steps; the loss is the cross-entropy of the softmax of the logits, and the error counts
the steps whose arg-max is not the target's class. Tasks declare ``loss = "softmax"`` and an
``error(logits, target, mask)`` method; ``samcpu train`` dispatches on them.
"""
import torch
from torch.nn import functional as F

from .metrics import check_episode


class DataError(ValueError):
    """A data set on disk is missing, empty or malformed; the message names the file (and the
    line). A ``ValueError``, so callers that catch those keep working."""


def masked_cross_entropy(logits, target, mask):
    """Softmax cross-entropy summed over the scored steps, per episode (mean over the batch).

    Parameters
    ----------
    logits : torch.Tensor
        Shape (T, B, C): the network's outputs before the softmax.
    target : torch.Tensor
        Shape (T, B, C): 1-hot rows (any distribution works) at the scored steps.
    mask : torch.Tensor
        Shape (T, B): 1 at the scored steps, 0 elsewhere.

    Returns
    -------
    torch.Tensor
        Scalar, differentiable in ``logits``.
    """
    logits, target, mask = check_episode(logits, target, mask)
    per_step = -(target * F.log_softmax(logits, dim=-1)).sum(-1)
    return (per_step * mask).sum() / logits.shape[1]


def wrong_answers(logits, target):
    """Bool (T, B): the steps whose arg-max logit is not the target's class (arg-max of
    ``target``)."""
    return torch.as_tensor(logits).detach().argmax(-1) != torch.as_tensor(target).argmax(-1)


def answer_error(logits, target, mask):
    """The share of the scored steps answered wrongly (arg-max of the logits against the
    target's class), in [0, 1]; 0.0 when no step is scored.

    Parameters
    ----------
    logits, target : torch.Tensor or array_like
        Shape (T, B, C).
    mask : torch.Tensor or array_like
        Shape (T, B): non-zero at the scored steps.

    Returns
    -------
    float
    """
    logits, target, mask = check_episode(logits, target, mask)
    scored = mask.detach() != 0
    count = int(scored.sum())
    if count == 0:
        return 0.0
    return (wrong_answers(logits, target) & scored).sum().item() / count

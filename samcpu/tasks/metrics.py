"""The bits-error metric of the NTM/DNC/SAM papers."""
import torch


def bits_error(logits, target, mask):
    """Wrong bits per episode: outputs thresholded at logit 0 (sigmoid 0.5).

    Counts the channels where ``logits > 0`` differs from ``target > 0.5`` at the steps where
    ``mask`` is non-zero, sums over steps and channels, and averages over the batch.

    Parameters
    ----------
    logits : torch.Tensor or array_like
        Shape (T, B, C): the network's outputs before the sigmoid.
    target : torch.Tensor or array_like
        Shape (T, B, C), bits in {0, 1}.
    mask : torch.Tensor or array_like
        Shape (T, B): non-zero at the scored steps.

    Returns
    -------
    float
        Mean over the B episodes of the number of wrong bits.
    """
    logits, target, mask = (x.detach() for x in check_episode(logits, target, mask))
    wrong = (logits > 0) != (target > 0.5)
    scored = (mask != 0).unsqueeze(-1)
    return (wrong & scored).sum().item() / logits.shape[1]


def check_episode(logits, target, mask):
    """(logits, target, mask) as tensors, or ``ValueError`` naming the one whose shape is wrong:
    logits and target (T, B, C), mask (T, B), B >= 1."""
    logits, target, mask = (torch.as_tensor(x) for x in (logits, target, mask))
    if logits.dim() != 3:
        raise ValueError(f"logits must have shape (T, B, C), got {tuple(logits.shape)}")
    if target.shape != logits.shape:
        raise ValueError(f"target has shape {tuple(target.shape)} but logits have shape "
                         f"{tuple(logits.shape)}")
    if mask.shape != logits.shape[:2]:
        raise ValueError(f"mask has shape {tuple(mask.shape)} but must be (T, B) = "
                         f"{tuple(logits.shape[:2])}")
    if logits.shape[1] < 1:
        raise ValueError("logits must hold at least one episode (B >= 1)")
    return logits, target, mask

"""Backprop through a SparseMemory in NumPy (samcpu.backprop, SparseMemory.backward_step):
against central finite differences, against the torch bridge, and its input checks."""
import numpy as np
import pytest
from conftest import assert_same, snapshot

import samcpu
from samcpu.backprop import MemoryGradient

B, N, W, H, K, T = 2, 6, 3, 2, 2, 5  # T * H > N: the LRA recycles written rows
NAMES = ("query", "strength", "add", "write_gate", "interp_gate")


def smooth_inputs(seed, steps=T):
    """Step inputs away from the edges of their domains (gates in (0.1, 0.9), strength >= 1),
    so that a small perturbation stays valid."""
    rng = np.random.default_rng(seed)
    return [(rng.normal(size=(B, H, W)), rng.uniform(1, 5, (B, H)), rng.normal(size=(B, H, W)),
             rng.uniform(0.1, 0.9, (B, H)), rng.uniform(0.1, 0.9, (B, H))) for _ in range(steps)]


def loss_weights(seed):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(T, B, H, W)), rng.normal(size=(B, H, K))


def forward_loss(inputs, c, e):
    """L = sum_t <c_t, r_t> + <e, w^R_T> on a fresh float64 memory."""
    mem = samcpu.SparseMemory(B, N, W, H, K, index="exact", dtype=np.float64)
    total = 0.0
    for x, ct in zip(inputs, c, strict=True):
        res = mem.step(*x)
        total += float((ct * res.reads).sum())
    return total + float((e * res.weights).sum()), mem


def numpy_backward(mem, inputs, c, e):
    """dL/d(inputs) by SparseMemory.backward_step, as in samcpu.backprop's docstring."""
    grad = MemoryGradient(mem)
    g_w = e
    out = [None] * T
    for t in range(T, 0, -1):
        g = mem.backward_step(t, c[t - 1], g_w, *inputs[t - 1], grad)
        out[t - 1] = g[:5]
        g_w = g.prev_weights
    return out, grad


def test_backward_steps_equal_finite_differences():
    inputs = smooth_inputs(0)
    c, e = loss_weights(1)
    _, mem = forward_loss(inputs, c, e)
    before = snapshot(mem)
    grads, grad = numpy_backward(mem, inputs, c, e)
    assert mem.position == 1  # left at the earliest step it went back to
    mem.replay()
    assert_same(snapshot(mem), before)
    assert grad.count.min() > 0 and np.isfinite(grad.dense()).all()
    h = 1e-6
    checked = 0
    for t in range(T):
        for i, name in enumerate(NAMES):
            for idx in np.ndindex(inputs[t][i].shape):
                plus = [list(x) for x in inputs]
                minus = [list(x) for x in inputs]
                plus[t][i] = inputs[t][i].copy()
                plus[t][i][idx] += h
                minus[t][i] = inputs[t][i].copy()
                minus[t][i][idx] -= h
                numeric = (forward_loss(plus, c, e)[0] - forward_loss(minus, c, e)[0]) / (2 * h)
                assert grads[t][i][idx] == pytest.approx(numeric, rel=1e-5, abs=1e-6), (t, name, idx)
                checked += 1
    assert checked == T * (2 * B * H * W + 3 * B * H)


def test_numpy_backward_equals_the_torch_bridge():
    torch = pytest.importorskip("torch")
    inputs = smooth_inputs(2)
    c, e = loss_weights(3)
    _, mem = forward_loss(inputs, c, e)
    grads, _ = numpy_backward(mem, inputs, c, e)

    access = samcpu.SparseAccess(N, W, H, K, index="exact", dtype=torch.float64)
    leaves = [[torch.tensor(x, requires_grad=True) for x in step] for step in inputs]
    state = access.initial_state(B)
    loss = 0
    for x, ct in zip(leaves, c, strict=True):
        r, state = access(*x, state)
        loss = loss + (torch.from_numpy(ct) * r).sum()
    (loss + (torch.from_numpy(e) * state.weights).sum()).backward()
    for t in range(T):
        for i, name in enumerate(NAMES):
            np.testing.assert_allclose(leaves[t][i].grad.numpy(), grads[t][i], rtol=0, atol=1e-13,
                                       err_msg=f"step {t + 1} d/d{name}")


def test_backward_step_refuses_bad_arguments_and_changes_nothing():
    inputs = smooth_inputs(4, steps=3)
    mem = samcpu.SparseMemory(B, N, W, H, K, index="exact", dtype=np.float64)
    for x in inputs:
        mem.step(*x)
    before = snapshot(mem)
    grad = MemoryGradient(mem)
    g_r = np.ones((B, H, W))
    cases = [
        (dict(position=0), "position must be a journaled step"),
        (dict(position=4), r"position must be in \[0, 3\]"),
        (dict(position=2.0), "position must be an integer"),
        (dict(grad_reads=np.ones((B, H, W + 1))), r"grad_reads has shape \(2, 2, 4\)"),
        (dict(grad_weights=np.ones((B, H, K + 1))), r"grad_weights has shape \(2, 2, 3\)"),
        (dict(grad_weights=np.array([["x"]])), "grad_weights has dtype <U1"),
        (dict(query=np.ones((B, H))), r"query has shape \(2, 2\)"),
        (dict(strength=np.full((B, H), np.nan)), "strength contains NaN"),
        (dict(grad=MemoryGradient((B, N + 1, W))), "grad must be a samcpu.backprop.MemoryGradient"),
        (dict(grad=None), "grad must be a samcpu.backprop.MemoryGradient"),
    ]
    for change, message in cases:
        args = dict(position=3, grad_reads=g_r, grad_weights=None, grad=grad,
                    **dict(zip(NAMES, inputs[2], strict=True)))
        args.update(change)
        with pytest.raises(ValueError, match=message):
            mem.backward_step(**args)
        assert mem.position == 3 and grad.count.max() == 0, change
    assert_same(snapshot(mem), before)
    with pytest.raises(ValueError, match=r"b must be an integer in \[0, 1\]"):
        grad.rows(2)
    # check_inputs=False (the bridge's path, for arrays step() accepted) still checks shapes
    args = dict(position=3, grad_reads=g_r, grad_weights=None, grad=grad, check_inputs=False,
                **dict(zip(NAMES, inputs[2], strict=True)))
    with pytest.raises(ValueError, match=r"query has shape \(2, 2\)"):
        mem.backward_step(**{**args, "query": np.ones((B, H))})
    assert_same(snapshot(mem), before)
    fast = mem.backward_step(**args)
    mem.replay()
    slow = mem.backward_step(**{**args, "check_inputs": True, "grad": MemoryGradient(mem)})
    for x, y in zip(fast, slow, strict=True):
        np.testing.assert_array_equal(x, y)


def test_memory_gradient_grows_and_clears():
    grad = MemoryGradient((1, 1000, 2))
    mem_rows = np.arange(0, 1000, 7)
    grad.reserve(len(mem_rows))
    from samcpu.kernels.backward import grad_slot
    for r in mem_rows:  # what the kernel does for each row it gives a gradient
        grad.store[0, grad_slot(grad.slot[0], grad.store[0], grad.owner[0], grad.count[0], r)] += r
    rows, values = grad.rows(0)
    np.testing.assert_array_equal(rows, mem_rows)
    np.testing.assert_array_equal(values, np.repeat(mem_rows[:, None], 2, 1).astype(float))
    dense = grad.dense()
    assert dense.shape == (1, 1000, 2) and dense.sum() == 2 * mem_rows.sum()
    grad.clear()
    assert grad.count[0, 0] == 0 and not grad.slot.any() and len(grad.rows(0)[0]) == 0

"""The torch bridge: gradients by journal rewind, whatever autograd does."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import samcpu

B, N, W, H, K = 2, 12, 4, 2, 3


def controls(t, generator, dtype=torch.float64, requires_grad=True):
    shapes = [(t, B, H, W), (t, B, H), (t, B, H, W), (t, B, H), (t, B, H)]
    return [torch.randn(s, dtype=dtype, generator=generator, requires_grad=requires_grad) for s in shapes]


def squash(q, b, a, al, ga):
    return q, 1 + F.softplus(b), a, torch.sigmoid(al), torch.sigmoid(ga)


def run(access, args, state=None):
    """All steps of ``args`` (each (T, ...)); returns stacked reads (T, B, H, W) and the state."""
    state = access.initial_state(B) if state is None else state
    outs = []
    for t in range(args[0].shape[0]):
        r, state = access(*squash(*(x[t] for x in args)), state)
        outs.append(r)
    return torch.stack(outs), state


def test_gradcheck_through_eight_steps_with_recycling():
    g = torch.Generator().manual_seed(1)
    access = samcpu.SparseAccess(N, W, H, K, index="exact", dtype=torch.float64)
    args = controls(8, g)  # 8 steps x 2 heads > 12 rows: the LRA recycles
    assert torch.autograd.gradcheck(lambda *a: run(access, a)[0], args, eps=1e-6, atol=1e-6, rtol=1e-4)


def grads(access, args, loss_fn):
    for x in args:
        x.grad = None
    reads, state = run(access, args)
    loss_fn(reads).backward()
    return [x.grad.clone() if x.grad is not None else torch.zeros_like(x) for x in args], state


def test_partial_losses_unused_steps_and_memory_restored():
    g = torch.Generator().manual_seed(2)
    args = controls(10, g)
    access = samcpu.SparseAccess(N, W, H, K, index="exact", dtype=torch.float64)
    w = torch.randn(10, B, H, W, dtype=torch.float64, generator=g)
    full, state = grads(access, args, lambda r: (r * w).sum())
    mem = state.handle.mem
    latest = mem.memory.copy()
    # a loss on step 5 only: steps 6..10 are unused, their backward never runs
    part, state = grads(access, args, lambda r: (r[4] * w[4]).sum())
    assert all(torch.all(p[5:] == 0) for p in part)
    assert any(torch.any(p[:5] != 0) for p in part)
    # the same loss through autograd on a graph cut after step 5 gives the same gradients
    cut = [x[:5].detach().requires_grad_() for x in args]
    reads, _ = run(access, cut)
    (reads[4] * w[4]).sum().backward()
    for p, c in zip(part, cut, strict=True):
        torch.testing.assert_close(p[:5], c.grad, rtol=0, atol=1e-12)
    # after backward the memory is rewound; the next forward step replays it first
    nxt = [x[:1].detach() for x in controls(1, g)]
    r, state = access(*squash(*(x[0] for x in nxt)), state)
    assert state.handle.mem.position == 11
    reference = samcpu.SparseMemory(B, N, W, H, K, index="exact", dtype=np.float64)
    with torch.no_grad():
        for t in range(10):
            reference.step(*(x.numpy() for x in squash(*(a[t].detach() for a in args))))
    np.testing.assert_array_equal(latest, reference.memory)
    assert full[0].abs().sum() > 0


def test_retain_graph_twice_gives_the_same_gradients():
    g = torch.Generator().manual_seed(3)
    args = controls(6, g)
    access = samcpu.SparseAccess(N, W, H, K, index="exact", dtype=torch.float64)
    reads, _ = run(access, args)
    loss = (reads ** 2).sum()
    loss.backward(retain_graph=True)
    first = [x.grad.clone() for x in args]
    for x in args:
        x.grad = None
    loss.backward()
    for a, x in zip(first, args, strict=True):
        torch.testing.assert_close(a, x.grad, rtol=0, atol=0)


def test_state_reused_after_backward_and_failed_forward():
    g = torch.Generator().manual_seed(4)
    args = controls(8, g)
    access = samcpu.SparseAccess(N, W, H, K, index="exact", dtype=torch.float64)
    first = [x[:4] for x in args]
    second = [x[4:] for x in args]
    reads1, state = run(access, first)
    reads1.sum().backward(retain_graph=True)  # the memory is rewound and replayed
    bad = [x[0].detach().clone() for x in second]
    bad[0][0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="query contains NaN"):
        access(*squash(*bad), state)
    reads2, state = run(access, second, state)  # goes on from step 4 as if nothing happened
    ref_access = samcpu.SparseAccess(N, W, H, K, index="exact", dtype=torch.float64)
    ref, _ = run(ref_access, [x.detach() for x in args])
    torch.testing.assert_close(torch.cat([reads1, reads2]).detach(), ref, rtol=0, atol=0)
    for x in args:
        x.grad = None
    (reads2 ** 2).sum().backward()  # gradients flow back into the first segment too
    assert args[0].grad[:4].abs().sum() > 0


def test_stale_state_is_refused():
    g = torch.Generator().manual_seed(5)
    args = [x.detach() for x in controls(3, g)]
    access = samcpu.SparseAccess(N, W, H, K, index="exact", dtype=torch.float64)
    state0 = access.initial_state(B)
    _, state1 = access(*squash(*(x[0] for x in args)), state0)
    with pytest.raises(RuntimeError, match="stale"):
        access(*squash(*(x[1] for x in args)), state0)
    access(*squash(*(x[1] for x in args)), state1)


def test_detach_truncates_history_and_frees_the_journal():
    g = torch.Generator().manual_seed(6)
    args = controls(12, g)
    access = samcpu.SparseAccess(N, W, H, K, index="exact", dtype=torch.float64)
    reads, state = run(access, [x[:6] for x in args])
    reads.sum().backward()
    state = samcpu.detach(state)
    assert state.handle.mem.journal_nbytes == 0 and state.handle.mem.position == 6
    reads2, state = run(access, [x[6:] for x in args], state)
    for x in args:
        x.grad = None
    (reads2 ** 2).sum().backward()
    assert torch.all(args[0].grad[:6] == 0) and args[0].grad[6:].abs().sum() > 0
    # backward through a graph whose journal was dropped explains itself
    reads3, state = run(access, [x[:2].detach().requires_grad_() for x in args], state)
    samcpu.detach(state)
    with pytest.raises(RuntimeError, match="detach"):
        reads3.sum().backward()


@pytest.mark.parametrize("case", ["zero memory", "identical rows", "weak strength"])
def test_degenerate_inputs_give_finite_gradients(case):
    g = torch.Generator().manual_seed(7)
    q, b, a, al, ga = [x.detach() for x in controls(6, g)]
    if case == "zero memory":
        a = torch.zeros_like(a)
    elif case == "identical rows":
        a = a[:1, :1, :1].expand_as(a).clone()
        q = a.clone()
    strength = torch.full_like(b, 1e-6) if case == "weak strength" else 1 + F.softplus(b)
    inputs = [x.requires_grad_() for x in (q, strength, a, torch.sigmoid(al), torch.sigmoid(ga))]
    access = samcpu.SparseAccess(N, W, H, K, index="exact", dtype=torch.float64)
    state = access.initial_state(B)
    outs = []
    for t in range(6):
        r, state = access(*(x[t] for x in inputs), state)
        outs.append(r)
    torch.stack(outs).pow(2).sum().backward()
    for x in inputs:
        assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("model_cls", [samcpu.SAM, samcpu.DAM])
@pytest.mark.parametrize("batch_first", [False, True])
def test_models_are_used_like_lstm(model_cls, batch_first):
    torch.manual_seed(0)
    kwargs = dict(num_slots=32, word_size=8, num_heads=2, batch_first=batch_first)
    if model_cls is samcpu.SAM:
        kwargs.update(k=3, index="exact")
    model = model_cls(5, 3, hidden_size=16, **kwargs)
    shape, time_dim = ((4, 7, 5), 1) if batch_first else ((7, 4, 5), 0)
    x, x2 = torch.randn(shape, requires_grad=True), torch.randn(shape)
    y, state = model(x)
    assert y.shape == ((4, 7, 3) if batch_first else (7, 4, 3))
    y.pow(2).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert x.grad.abs().sum() > 0
    x.grad = None
    model.zero_grad(set_to_none=True)
    y2, state = model(x2, samcpu.detach(state))  # truncated BPTT: go on from the state
    y2.sum().backward()
    # the cut: the first segment gets no gradient, the parameters get the second's
    assert x.grad is None
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert model.output.weight.grad.abs().sum() > 0
    # going on from the state computes what one run over both segments computes
    with torch.no_grad():
        y_all, _ = model(torch.cat([x, x2], time_dim))
    torch.testing.assert_close(y2.detach(), y_all.narrow(time_dim, 7, 7), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(2, 10, 4, 2, 3, 30), (1, 7, 3, 3, 2, 24), (2, 16, 5, 4, 4, 30)])
def test_sparse_access_equals_the_dense_reference_in_outputs_and_gradients(shape):
    """SparseAccess(exact, float64) against DenseAccess(k=K): top-K by dense similarity with the
    tie rule, dense masked writes, plain torch autograd (DESIGN.md section 1)."""
    from dense_ref import DenseAccess

    b, n, w, h, k, steps = shape  # steps * h > n: the memory fills and the LRA recycles
    g = torch.Generator().manual_seed(n)
    shapes = [(steps, b, h, w), (steps, b, h), (steps, b, h, w), (steps, b, h), (steps, b, h)]
    raw = [torch.randn(s, dtype=torch.float64, generator=g) for s in shapes]
    weight = torch.randn(steps, b, h, w, dtype=torch.float64, generator=g)

    def run_with(access):
        leaves = [x.clone().requires_grad_() for x in raw]
        state = access.initial_state(b)
        outs = []
        for t in range(steps):
            r, state = access(*squash(*(x[t] for x in leaves)), state)
            outs.append(r)
        reads = torch.stack(outs)
        (reads * weight).sum().backward()
        return reads.detach(), [x.grad for x in leaves]

    sparse_reads, sparse_grads = run_with(samcpu.SparseAccess(n, w, h, k, index="exact", dtype=torch.float64))
    dense_reads, dense_grads = run_with(DenseAccess(n, w, h, k=k, dtype=torch.float64))
    torch.testing.assert_close(sparse_reads, dense_reads, rtol=0, atol=1e-10)
    names = ["query", "strength", "add", "write_gate", "interp_gate"]
    for name, a, d in zip(names, sparse_grads, dense_grads, strict=True):
        torch.testing.assert_close(a, d, rtol=1e-8, atol=1e-10, msg=lambda m, name=name: f"d/d{name}: {m}")


def test_memories_are_reused_across_episodes_once_unreferenced():
    access = samcpu.SparseAccess(100, 4, 2, 3, index="exact", dtype=torch.float64)
    ones, half = torch.ones(2, 2, dtype=torch.float64), torch.full((2, 2), 0.5, dtype=torch.float64)
    seen, state = [], None
    for _ in range(6):  # a training loop: the previous state is alive while the next starts
        state = access.initial_state(2)
        seen.append(id(state.handle))
        q = torch.randn(2, 2, 4, dtype=torch.float64, requires_grad=True)
        r, state = access(q, ones, q, half, half, state)
        assert state.handle.mem.position == 1  # a fresh (reset) memory every episode
        r.sum().backward()
    assert len(set(seen)) == 2


def test_gradcheck_through_the_fused_interface_step():
    """SparseAccess.step_interface (SAM's path): the interface nonlinearities and the access in
    one autograd node; raw inputs include strengths past softplus's threshold (20)."""
    g = torch.Generator().manual_seed(3)
    access = samcpu.SparseAccess(N, W, H, K, index="exact", dtype=torch.float64)
    raw = torch.randn((8, B, H, 2 * W + 3), dtype=torch.float64, generator=g)
    raw[2, 0, 1, 2 * W] = 21.5
    raw.requires_grad_(True)

    def fused(x):
        state, outs = access.initial_state(B), []
        for t in range(x.shape[0]):
            r, state = access.step_interface(x[t], state)
            outs.append(r)
        return torch.stack(outs)

    assert fused(raw).shape == (8, B, H * W)
    assert torch.autograd.gradcheck(fused, (raw,), eps=1e-6, atol=1e-6, rtol=1e-4)


class _UnfusedSAM(samcpu.SAM):
    """SAM through SparseAccess's five-input call (the interface squashed by autograd ops)."""

    def _access_step(self, h, state):
        return samcpu.nn._MemoryNetwork._access_step(self, h, state)


def test_fused_sam_equals_the_unfused_path_in_outputs_and_gradients():
    def run_model(cls):
        torch.manual_seed(0)
        model = cls(5, 3, hidden_size=7, num_slots=10, word_size=W, num_heads=H, k=K, index="exact",
                    dtype=torch.float64)
        x = torch.randn(20, B, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
        y, _ = model(x)
        (y ** 2).sum().backward()
        return y.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    y_fused, g_fused = run_model(samcpu.SAM)
    y_plain, g_plain = run_model(_UnfusedSAM)
    torch.testing.assert_close(y_fused, y_plain, rtol=0, atol=1e-12)
    assert g_fused.keys() == g_plain.keys()
    for name in g_fused:
        torch.testing.assert_close(g_fused[name], g_plain[name], rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("shape", [(B, H, 2 * W + 4), (B, H * (2 * W + 3)), (B + 1, H, 2 * W + 3)])
def test_a_badly_shaped_interface_is_refused_and_changes_nothing(shape):
    access = samcpu.SparseAccess(N, W, H, K, index="exact", dtype=torch.float64)
    state = access.initial_state(B)
    _, state = access.step_interface(torch.randn(B, H, 2 * W + 3, dtype=torch.float64), state)
    with pytest.raises(ValueError, match=r"interface has shape .* but expected \(2, 2, 11\)"):
        access.step_interface(torch.randn(shape, dtype=torch.float64), state)
    assert access.memory.position == 1
    access.step_interface(torch.randn(B, H, 2 * W + 3, dtype=torch.float64), state)  # still usable


def test_fused_sam_equals_the_unfused_path_in_float32():
    def run_model(cls):
        torch.manual_seed(1)
        model = cls(5, 3, hidden_size=7, num_slots=10, word_size=W, num_heads=H, k=K, index="exact")
        x = torch.randn(15, B, 5, generator=torch.Generator().manual_seed(6))
        y, _ = model(x)
        (y ** 2).sum().backward()
        return y.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    (y_f, g_f), (y_p, g_p) = run_model(samcpu.SAM), run_model(_UnfusedSAM)
    torch.testing.assert_close(y_f, y_p, rtol=1e-6, atol=1e-6)
    for name in g_f:
        torch.testing.assert_close(g_f[name], g_p[name], rtol=1e-4, atol=1e-5, msg=name)


def test_import_samcpu_does_not_import_torch():
    code = ("import samcpu, sys\n"
            "assert 'torch' not in sys.modules, 'import samcpu imported torch'\n"
            "assert {'SAM', 'DAM', 'SparseAccess', 'detach', 'nn', 'SparseMemory'} <= set(dir(samcpu))\n"
            "from samcpu import SAM\n"
            "assert 'torch' in sys.modules and SAM is samcpu.nn.SAM and samcpu.detach is samcpu.nn.detach\n"
            "try:\n    samcpu.no_such_name\n"
            "except AttributeError:\n    pass\nelse:\n    raise SystemExit(1)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_a_state_held_by_the_caller_is_never_reset_under_it():
    g = torch.Generator().manual_seed(8)
    args = controls(6, g)
    access = samcpu.SparseAccess(N, W, H, K, index="exact", dtype=torch.float64)
    held_reads, held = run(access, [x[:4] for x in args])  # a state and its graph, kept
    others = []
    for _ in range(2 * access.pool_size):  # more episodes than the pool holds memories
        reads, state = run(access, controls(3, g))
        (reads ** 2).sum().backward()
        others.append(state.handle)
    assert all(h is not held.handle for h in others)
    assert len({id(h) for h in others}) == 2  # the other episodes reuse two memories
    with pytest.raises(RuntimeError, match="in use"):
        held.handle.reset()
    # the held state goes on, and backward through both segments is what a fresh run gives
    more, _ = run(access, [x[4:] for x in args], held)
    (torch.cat([held_reads, more]) ** 2).sum().backward()
    ref_args = [x.detach().clone().requires_grad_() for x in args]
    ref_reads, _ = run(samcpu.SparseAccess(N, W, H, K, index="exact", dtype=torch.float64), ref_args)
    (ref_reads ** 2).sum().backward()
    torch.testing.assert_close(torch.cat([held_reads, more]).detach(), ref_reads.detach(), rtol=0, atol=0)
    for a, r in zip(args, ref_args, strict=True):
        torch.testing.assert_close(a.grad, r.grad, rtol=0, atol=0)


def test_a_state_of_a_superseded_episode_is_refused_clearly():
    g = torch.Generator().manual_seed(9)
    x = [t.detach() for t in squash(*(a[0] for a in controls(1, g)))]
    q = x[0].clone().requires_grad_()
    access = samcpu.SparseAccess(N, W, H, K, index="exact", dtype=torch.float64)
    reads, state = access(q, *x[1:], access.initial_state(B))
    samcpu.torch_bridge.initial_state(state.handle)  # a new episode claimed on the same memory
    with pytest.raises(RuntimeError, match="episode 1 of its memory, which has since started episode 2"):
        access(*x, state)
    with pytest.raises(RuntimeError, match="belongs to episode 1"):
        reads.sum().backward()
    assert q.grad is None


def test_double_and_float_follow_the_parameters():
    torch.manual_seed(0)
    model = samcpu.SAM(3, 2, hidden_size=5, num_slots=10, word_size=W, num_heads=1, k=2, index="exact")
    assert model.dtype == torch.float32 and model.access.dtype == torch.float32
    model.double()
    assert model.dtype == torch.float64 and model.access.dtype == torch.float64
    x = torch.randn(4, 1, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y, state = model(x)
    assert y.dtype == state.reads.dtype == state.access.weights.dtype == torch.float64
    assert state.access.handle.mem.dtype == np.float64
    y.pow(2).sum().backward()
    assert all(p.grad.dtype == torch.float64 and torch.isfinite(p.grad).all() for p in model.parameters())
    assert torch.autograd.gradcheck(lambda x: model(x)[0], (x.clone().requires_grad_(),), eps=1e-6,
                                    atol=1e-6, rtol=1e-4)
    model.to(torch.float32)
    y, state = model(x.float())
    assert y.dtype == torch.float32 and state.access.handle.mem.dtype == np.float32
    assert all("probe" not in key for key in model.state_dict())  # checkpoints unchanged
    model.half()
    with pytest.raises(ValueError, match="SparseAccess's dtype .* must be torch.float32 or torch.float64, "
                                         "got torch.float16"):
        model(x.half())
    access = samcpu.SparseAccess(N, W, H, K, index="exact").to(torch.float64)
    assert access.initial_state(B).weights.dtype == torch.float64 and access.memory.dtype == np.float64


@pytest.mark.parametrize("bad", [torch.float16, torch.bfloat16, torch.int64, "numpy"])
def test_inputs_other_than_float32_and_float64_tensors_are_refused_up_front(bad):
    g = torch.Generator().manual_seed(10)
    x = [t.detach().float() for t in squash(*(a[0] for a in controls(1, g)))]
    access = samcpu.SparseAccess(N, W, H, K, index="exact")
    state = access.initial_state(B)

    def spoil(t):
        return t.numpy() if bad == "numpy" else t.to(bad)
    message = "must be a torch.Tensor, got ndarray" if bad == "numpy" else f"has dtype {bad} but torch.float"
    for i, name in enumerate(["query", "strength", "add", "write_gate", "interp_gate"]):
        args = [spoil(t) if j == i else t for j, t in enumerate(x)]
        with pytest.raises(ValueError, match=f"{name} {message}"):
            access(*args, state)
    with pytest.raises(ValueError, match=f"interface {message}"):
        access.step_interface(spoil(torch.randn(B, H, 2 * W + 3)), state)
    assert access.memory.position == 0
    _, state = access(*x, state)  # nothing changed: the state goes on
    assert access.memory.position == 1


def test_scratch_files_do_not_outlive_the_module(tmp_path):
    prefix = tmp_path / "scratch"
    (tmp_path / "scratch.0").write_bytes(b"not ours")  # must be left alone
    x = torch.randn(5, 2, 3, generator=torch.Generator().manual_seed(11))

    def run_model(path):
        torch.manual_seed(0)
        model = samcpu.SAM(3, 2, hidden_size=5, num_slots=1000, word_size=4, num_heads=2, k=2, index="exact",
                           path=path)
        y, state = model(x)
        y.pow(2).sum().backward()
        return y.detach(), model, state

    y_anonymous, _, _ = run_model(None)
    y_file, model, state = run_model(prefix)
    torch.testing.assert_close(y_file, y_anonymous, rtol=0, atol=0)
    assert sorted(os.listdir(tmp_path)) == ["scratch.0"]  # the module's file: unlinked once mapped
    assert (tmp_path / "scratch.0").read_bytes() == b"not ours"
    if os.path.exists("/proc/self/maps"):  # and the memory really lives in it
        with open("/proc/self/maps") as f:
            assert any(f"{prefix}.1 (deleted)" in line for line in f)
    del model, state
    y_again, _, _ = run_model(prefix)  # a second run with the same prefix
    torch.testing.assert_close(y_again, y_anonymous, rtol=0, atol=0)
    assert sorted(os.listdir(tmp_path)) == ["scratch.0"]
    with pytest.raises(ValueError, match="path .* is in .*missing', which is not an existing folder"):
        samcpu.SAM(3, 2, path=tmp_path / "missing" / "scratch")


def test_reads_hook_replaces_what_the_network_reads():
    torch.manual_seed(0)
    model = samcpu.SAM(3, 2, hidden_size=5, num_slots=20, word_size=4, num_heads=2, k=2, index="exact")
    x = torch.randn(6, 2, 3, generator=torch.Generator().manual_seed(12))
    with torch.no_grad():
        y_used, _ = model(x)
        model.reads_hook = torch.zeros_like
        y, state = model(x)
        # reference: the controller alone, with zeros wherever reads go
        h = c = torch.zeros(2, 5)
        zeros, ys = torch.zeros(2, 8), []
        for x_t in x:
            h, c = model.cell(torch.cat([x_t, zeros], 1), (h, c))
            ys.append(model.output(torch.cat([h, zeros], 1)))
    torch.testing.assert_close(y, torch.stack(ys), rtol=0, atol=0)
    assert state.access.position == 6 and not torch.any(state.reads)  # the memory was still stepped
    assert (y - y_used).abs().max() > 1e-3  # and without the hook what it reads matters
    model.reads_hook = None
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], y_used, rtol=0, atol=0)

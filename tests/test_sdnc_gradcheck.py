"""autograd gradcheck of the SDNC's torch access (DESIGN.md section 5).

Links and precedence carry no gradient by design, so finite differences through steps that
change them do not match. A step with write gate 0 changes neither (no write: N, P and p stay),
so: ordinary steps build the links (fixed inputs), then the checked steps, with write gate 0,
read through them. Every other path is checked: the content softmax, the mode mix, the forward
and backward weightings into the previous read weights, and across steps.
"""
import pytest
import torch

import samcpu

F64 = torch.float64


def _access_inputs(gen, b, h, w):
    return (torch.randn(b, h, w, generator=gen, dtype=F64), 1 + torch.rand(b, h, generator=gen, dtype=F64),
            torch.randn(b, h, w, generator=gen, dtype=F64), torch.rand(b, h, generator=gen, dtype=F64),
            torch.rand(b, h, generator=gen, dtype=F64),
            torch.softmax(torch.randn(b, h, 3, generator=gen, dtype=F64), -1))


@pytest.mark.parametrize("seed", [0])
def test_gradcheck_through_frozen_links(seed):
    gen = torch.Generator().manual_seed(seed)
    b, n, w, h, k, link_k, prefix, steps = 2, 10, 3, 2, 2, 3, 6, 4
    access = samcpu.SparseTemporalAccess(n, w, h, k, link_k, index="exact", dtype=F64)
    pre = [_access_inputs(gen, b, h, w) for _ in range(prefix)]
    zero = torch.zeros(b, h, dtype=F64)

    def run(query, strength, modes, interp):
        state = access.initial_state(b)
        for x in pre:
            _, state = access(*x, state)
        out = []
        for t in range(steps):
            r, state = access(query[t], 1 + torch.nn.functional.softplus(strength[t]), query[t] * 0, zero,
                              torch.sigmoid(interp[t]), torch.softmax(modes[t], -1), state)
            out.append(r)
        return torch.stack(out)

    inputs = [torch.randn(steps, b, h, w, generator=gen, dtype=F64).requires_grad_(),
              torch.randn(steps, b, h, generator=gen, dtype=F64).requires_grad_(),
              torch.randn(steps, b, h, 3, generator=gen, dtype=F64).requires_grad_(),
              torch.randn(steps, b, h, generator=gen, dtype=F64).requires_grad_()]
    with torch.no_grad():
        run(*inputs)
    mem = access.memory
    assert all(mem.link_entries(i, j).after for i in range(b) for j in range(h)), "no links were built"
    assert torch.autograd.gradcheck(run, inputs, eps=1e-6, atol=1e-6)


def test_gradcheck_one_step_every_input():
    gen = torch.Generator().manual_seed(3)
    b, n, w, h = 2, 8, 3, 2
    access = samcpu.SparseTemporalAccess(n, w, h, 2, 2, index="exact", dtype=F64)

    def run(query, strength, add, write_gate, interp_gate, modes):
        state = access.initial_state(b)
        r, _ = access(query, 1 + torch.nn.functional.softplus(strength), add, torch.sigmoid(write_gate),
                      torch.sigmoid(interp_gate), torch.softmax(modes, -1), state)
        return r

    inputs = [torch.randn(b, h, w, generator=gen, dtype=F64).requires_grad_(),
              torch.randn(b, h, generator=gen, dtype=F64).requires_grad_(),
              torch.randn(b, h, w, generator=gen, dtype=F64).requires_grad_(),
              torch.randn(b, h, generator=gen, dtype=F64).requires_grad_(),
              torch.randn(b, h, generator=gen, dtype=F64).requires_grad_(),
              torch.randn(b, h, 3, generator=gen, dtype=F64).requires_grad_()]
    assert torch.autograd.gradcheck(run, inputs, eps=1e-6, atol=1e-6)


def test_sdnc_model_backward_reaches_every_parameter():
    torch.manual_seed(0)
    model = samcpu.SDNC(5, 4, hidden_size=8, num_slots=64, word_size=4, num_heads=2, k=2, link_k=2,
                        index="exact", dtype=F64)
    y, _ = model(torch.randn(6, 3, 5, dtype=F64))
    assert y.shape == (6, 3, 4)
    y.square().sum().backward()
    per_head = 2 * 4 + 6
    grad = model.interface.weight.grad.view(2, per_head, -1)
    assert grad[:, -3:].abs().sum() > 0, "no gradient reached the read-mode logits"
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_access_refuses_missing_or_extra_modes():
    access = samcpu.SparseTemporalAccess(16, 3, 1, 2, 2, index="exact", dtype=F64)
    state = access.initial_state(1)
    x = _access_inputs(torch.Generator().manual_seed(0), 1, 1, 3)
    with pytest.raises(TypeError):
        access(*x[:5], state)
    sam = samcpu.SparseAccess(16, 3, 1, 2, index="exact", dtype=F64)
    with pytest.raises(ValueError, match="read_modes"):
        samcpu.torch_bridge.step(sam.initial_state(1), *x)

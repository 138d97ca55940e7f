"""The journal's growing chunks: every step is found where it was put, spans cover exactly
the steps asked for, truncation frees whole chunks."""
import numpy as np
import pytest

from samcpu.journal import Journal


@pytest.mark.parametrize("first,size", [(2, 8), (16, 256), (3, 3)])
def test_steps_are_located_and_spanned_across_growing_chunks(first, size):
    j = Journal(1, 1, 1, 1, np.float32, chunk_size=size, first_chunk=first)
    total = 5 * size + 7
    for step in range(1, total + 1):
        chunk, slot = j.append()
        chunk.wcount[slot, 0] = step
    assert j.latest == total and j.allocated_steps >= total
    assert j.allocated_steps - total < size  # only the last chunk has room left
    for step in range(1, total + 1):
        chunk, slot = j.locate(step)
        assert chunk.wcount[slot, 0] == step
    sizes = [c.wcount.shape[0] for c in j.chunks]
    assert sizes[0] == min(first, size) and max(sizes) == size
    assert all(b == min(2 * a, size) for a, b in zip(sizes[:-1], sizes[1:], strict=True))
    for lo, hi in [(0, total), (3, min(40, total)), (size - 1, size + 1), (total - 1, total), (5, 5)]:
        got = [int(c.wcount[i, 0]) for c, a, b in j.spans(lo, hi) for i in range(a, b)]
        assert got == list(range(lo + 1, hi + 1))
    j.truncate(size + 1)
    assert j.latest == size + 1 and j.allocated_steps < 2 * size + first
    chunk, slot = j.append()
    assert (chunk, slot) == j.locate(size + 2)
    j.truncate(0)
    assert j.chunks == [] and j.allocated_steps == 0


def test_a_short_episode_allocates_about_what_it_uses():
    j = Journal(1, 4, 4, 32, np.float32)  # defaults: chunks of 16, 32, 64, 128, 256 steps
    for _ in range(100):
        j.append()
    assert j.allocated_steps == 16 + 32 + 64


@pytest.mark.parametrize("first,size", [(0, 8), (4, 0)])
def test_chunk_sizes_must_be_positive(first, size):
    with pytest.raises(ValueError, match="first_chunk and chunk_size must be >= 1"):
        Journal(1, 1, 1, 1, np.float32, chunk_size=size, first_chunk=first)


def test_spans_after_clearing_to_a_later_base():
    j = Journal(1, 1, 1, 1, np.float32, chunk_size=8, first_chunk=2)
    for _ in range(5):
        j.append()
    j.clear(21)  # truncated BPTT: steps are now numbered from 22
    for step in range(22, 60):
        chunk, slot = j.append()
        chunk.wcount[slot, 0] = step
    assert [int(c.wcount[i, 0]) for c, a, b in j.spans(30, 50) for i in range(a, b)] == list(range(31, 51))
    chunk, slot = j.locate(59)
    assert chunk.wcount[slot, 0] == 59

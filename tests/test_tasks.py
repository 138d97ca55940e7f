"""Task generators, bits error and curriculum: targets checked on hand-made and decoded inputs."""
import math
from collections import deque

import numpy as np
import pytest
import torch

from samcpu.tasks import (
    TASKS,
    AssociativeRecallTask,
    Batch,
    CopyTask,
    Curriculum,
    PrioritySortTask,
    bits_error,
    encode_copy,
    encode_recall,
    encode_sort,
    make_task,
)


def check_layout(batch, task, batch_size):
    t = batch.input.shape[0]
    assert isinstance(batch, Batch)
    assert batch.input.shape == (t, batch_size, task.input_size)
    assert batch.target.shape == (t, batch_size, task.output_size)
    assert batch.mask.shape == (t, batch_size)
    for x in batch:
        assert x.dtype == torch.float32
    # targets are zero wherever they are not scored; masks are 0/1 and equal across the batch
    assert torch.all(batch.target[batch.mask == 0] == 0)
    assert set(batch.mask.unique().tolist()) <= {0.0, 1.0}
    assert torch.all(batch.mask == batch.mask[:, :1])


def scored_steps(batch):
    return torch.nonzero(batch.mask[:, 0]).flatten().tolist()


# ---------------------------------------------------------------- copy

def test_encode_copy_hand_made():
    seq = np.array([[[1, 0], [0, 1], [1, 1]]])  # B=1, L=3, bits=2
    b = encode_copy(seq)
    expected_input = [[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 1], [0, 0, 0], [0, 0, 0], [0, 0, 0]]
    expected_target = [[0, 0]] * 4 + [[1, 0], [0, 1], [1, 1]]
    assert b.input[:, 0].tolist() == expected_input
    assert b.target[:, 0].tolist() == expected_target
    assert b.mask[:, 0].tolist() == [0, 0, 0, 0, 1, 1, 1]


@pytest.mark.parametrize("level", [1, 2, 7, 20])
def test_copy_sample_target_is_the_input_sequence(level):
    task = CopyTask(seed=3)
    for _ in range(5):
        b = task.sample(4, level)
        check_layout(b, task, 4)
        t = b.input.shape[0]
        length = (t - 1) // 2
        assert t == 2 * length + 1 and 1 <= length <= level
        bits = b.input[:length, :, :8]
        assert torch.all(b.input[:length, :, 8] == 0) and torch.all(b.input[length, :, 8] == 1)
        assert torch.all(b.input[length, :, :8] == 0) and torch.all(b.input[length + 1:] == 0)
        assert torch.equal(b.target[length + 1:], bits)
        assert scored_steps(b) == list(range(length + 1, t))


def test_copy_level_bounds_lengths_and_default_covers_range():
    task = CopyTask(seed=0)
    assert (task.input_size, task.output_size, task.max_level) == (9, 8, 20)
    lengths = {(task.sample(1).input.shape[0] - 1) // 2 for _ in range(300)}
    assert min(lengths) == 1 and max(lengths) == 20
    assert {(task.sample(1, 3).input.shape[0] - 1) // 2 for _ in range(60)} == {1, 2, 3}
    task = CopyTask(bits=4, min_length=5, max_length=9, seed=0)
    assert {(task.sample(1, 2).input.shape[0] - 1) // 2 for _ in range(20)} == {2}
    assert task.sample(2, 9).input.shape[2] == 5


# ---------------------------------------------------------------- recall

def decode_recall(inputs, bits, item_len):
    """(items, cue) of one episode, read back from its input (T, input_size) alone."""
    x = inputs.numpy()
    item_starts = np.flatnonzero(x[:, bits] == 1)
    query_marks = np.flatnonzero(x[:, bits + 1] == 1)
    assert len(query_marks) == 2 and query_marks[1] - query_marks[0] == item_len + 1
    items = [x[s + 1:s + 1 + item_len, :bits] for s in item_starts]
    cue = x[query_marks[0] + 1:query_marks[1], :bits]
    return items, cue


def test_encode_recall_hand_made():
    items = np.zeros((1, 3, 1, 2))  # B=1, n=3, item_len=1, bits=2
    items[0, :, 0] = [[1, 0], [0, 1], [1, 1]]
    b = encode_recall(items, np.array([1]))
    expected = [[0, 0, 1, 0], [1, 0, 0, 0],
                [0, 0, 1, 0], [0, 1, 0, 0],
                [0, 0, 1, 0], [1, 1, 0, 0],
                [0, 0, 0, 1], [0, 1, 0, 0], [0, 0, 0, 1],
                [0, 0, 0, 0]]
    assert b.input[:, 0].tolist() == expected
    assert b.target[:, 0].tolist() == [[0, 0]] * 9 + [[1, 1]]
    assert b.mask[:, 0].tolist() == [0] * 9 + [1]


@pytest.mark.parametrize("level", [1, 2, 4, 6])
def test_recall_target_is_the_item_after_the_cue(level):
    task = AssociativeRecallTask(seed=5)
    b = task.sample(6, level)
    check_layout(b, task, 6)
    n = max(2, level)
    t = b.input.shape[0]
    assert t == (n + 2) * 3 + n + 2
    assert scored_steps(b) == list(range(t - 3, t))
    for e in range(6):
        items, cue = decode_recall(b.input[:, e], 6, 3)
        assert len(items) == n
        flat = [it.tobytes() for it in items]
        assert len(set(flat)) == n  # distinct items: the answer is unambiguous
        k = flat.index(cue.tobytes())
        assert k <= n - 2
        assert np.array_equal(b.target[t - 3:, e].numpy(), items[k + 1])
        assert torch.all(b.input[t - 3:, e] == 0)


def test_recall_default_draws_three_to_six_items():
    task = AssociativeRecallTask(seed=1)
    assert (task.input_size, task.output_size, task.max_level) == (8, 6, 6)
    counts = {(task.sample(1).input.shape[0] - 8) // 4 for _ in range(100)}
    assert counts == {3, 4, 5, 6}


def test_recall_items_are_made_distinct():
    # 1 bit x 1 step allows only 2 distinct items: duplicates are certain and must be redrawn
    task = AssociativeRecallTask(bits=1, item_len=1, min_items=2, max_items=2, seed=0)
    for _ in range(10):
        b = task.sample(8)
        for e in range(8):
            items, cue = decode_recall(b.input[:, e], 1, 1)
            assert sorted(int(i[0, 0]) for i in items) == [0, 1]
            assert b.target[-1, e, 0] == 1 - cue[0, 0]
    with pytest.raises(ValueError, match="max_items"):
        AssociativeRecallTask(bits=1, item_len=1, min_items=2, max_items=3)


def test_encode_recall_rejects_a_cue_without_successor():
    items = np.zeros((1, 3, 1, 2))
    with pytest.raises(ValueError, match="query"):
        encode_recall(items, np.array([2]))


# ---------------------------------------------------------------- sort

def test_encode_sort_hand_made():
    keys = np.array([[[0, 1], [1, 0], [1, 1], [0, 0]]])
    prio = np.array([[0.5, -0.2, 0.9, 0.1]])
    b = encode_sort(keys, prio, 2)
    assert b.input.shape == (7, 1, 4)
    assert b.input[:4, 0, :2].tolist() == keys[0].tolist()
    assert torch.allclose(b.input[:4, 0, 2], torch.tensor([0.5, -0.2, 0.9, 0.1]))
    assert b.input[4, 0].tolist() == [0, 0, 0, 1]
    assert b.target[:, 0].tolist() == [[0, 0]] * 5 + [[1, 1], [0, 1]]
    assert b.mask[:, 0].tolist() == [0] * 5 + [1, 1]


def test_encode_sort_ties_go_to_the_lower_index():
    keys = np.array([[[1, 0], [0, 1], [1, 1]]])
    b = encode_sort(keys, np.array([[0.3, 0.7, 0.7]]), 3)
    assert b.target[4:, 0].tolist() == [[0, 1], [1, 1], [1, 0]]


@pytest.mark.parametrize("level", [None, 1, 5, 13, 20])
def test_sort_target_is_keys_sorted_by_priority(level):
    task = PrioritySortTask(seed=7)
    b = task.sample(5, level)
    check_layout(b, task, 5)
    n = 20 if level is None else level
    m = max(1, n * 16 // 20)
    assert b.input.shape[0] == n + m + 1
    assert scored_steps(b) == list(range(n + 1, n + m + 1))
    for e in range(5):
        x = b.input[:, e].numpy()
        keys, prio = x[:n, :8], x[:n, 8]
        assert np.all((prio >= -1) & (prio <= 1))
        assert np.all(x[:n, 9] == 0) and x[n, 9] == 1 and np.all(x[n + 1:] == 0)
        top = sorted(range(n), key=lambda i: -prio[i])[:m]
        assert np.array_equal(b.target[n + 1:, e].numpy(), keys[top])


def test_sort_default_sizes_and_custom_counts():
    task = PrioritySortTask(seed=0)
    assert (task.input_size, task.output_size, task.max_level) == (10, 8, 20)
    assert task.sample(2).input.shape[0] == 20 + 16 + 1
    task = PrioritySortTask(bits=3, num_items=8, num_outputs=8, seed=0)
    assert task.sample(2, 4).input.shape == (4 + 4 + 1, 2, 5)
    with pytest.raises(ValueError, match="num_outputs"):
        PrioritySortTask(num_items=4, num_outputs=5)


# ---------------------------------------------------------------- all tasks

@pytest.mark.parametrize("name", sorted(TASKS))
def test_seeding_is_repeatable(name):
    a, b, c = make_task(name, seed=11), make_task(name, seed=11), make_task(name, seed=12)
    batches_a = [a.sample(3, lvl) for lvl in (None, 2, a.max_level)]
    batches_b = [b.sample(3, lvl) for lvl in (None, 2, b.max_level)]
    batches_c = [c.sample(3, lvl) for lvl in (None, 2, c.max_level)]
    for x, y in zip(batches_a, batches_b, strict=True):
        assert all(torch.equal(u, v) for u, v in zip(x, y, strict=True))
    assert any(x.input.shape != z.input.shape or not torch.equal(x.input, z.input)
               for x, z in zip(batches_a, batches_c, strict=True))
    rng = np.random.default_rng(4)
    shared = make_task(name, seed=rng)
    assert shared.rng is rng


@pytest.mark.parametrize("name", sorted(TASKS))
@pytest.mark.parametrize("kwargs, match", [({"batch_size": 0}, "batch_size"),
                                           ({"batch_size": 2, "level": 0}, "level"),
                                           ({"batch_size": 2, "level": 999}, "level"),
                                           ({"batch_size": 2, "level": 1.5}, "level"),
                                           ({"batch_size": True}, "batch_size")])
def test_bad_arguments_name_themselves(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_task(name, seed=0).sample(**kwargs)


def test_numpy_integers_are_accepted():
    b = CopyTask(seed=0).sample(np.int64(2), np.int32(3))
    assert b.input.shape[1] == 2


def test_unknown_task_names_the_choices():
    with pytest.raises(ValueError, match="copy, recall, sort"):
        make_task("reverse")


def test_make_task_passes_options():
    task = make_task("copy", seed=0, bits=3, max_length=4)
    assert (task.input_size, task.max_level) == (4, 4)


# ---------------------------------------------------------------- bits error

def test_bits_error_counts_flips_in_masked_steps_only():
    b = encode_copy(np.array([[[1, 0, 1], [0, 1, 1]], [[0, 0, 0], [1, 1, 1]]]))  # B=2, L=2
    perfect = 2 * b.target - 1  # logits +1 on ones, -1 on zeros
    assert bits_error(perfect, b.target, b.mask) == 0.0
    logits = perfect.clone()
    logits[3, 0, 0] *= -1          # scored: 1 wrong bit in episode 0
    logits[4, 1, :] *= -1          # scored: 3 wrong bits in episode 1
    logits[0, 0, :] = 5.0          # unscored step: ignored
    logits[1, 1, 2] = 5.0          # unscored step: ignored
    assert bits_error(logits, b.target, b.mask) == (1 + 3) / 2
    # logit exactly 0 reads as 0 (sigmoid 0.5 is not above the threshold)
    zero = perfect.clone()
    zero[3, 0, 0] = 0.0  # target 1 -> wrong
    zero[3, 0, 1] = 0.0  # target 0 -> right
    assert bits_error(zero, b.target, b.mask) == 0.5
    assert isinstance(bits_error(zero, b.target, b.mask), float)
    assert bits_error(-perfect, b.target, torch.zeros_like(b.mask)) == 0.0
    assert bits_error(-perfect.numpy(), b.target.numpy(), b.mask.numpy()) == 2 * 3 * 2 / 2


def test_bits_error_shape_errors():
    x = torch.zeros(4, 2, 3)
    with pytest.raises(ValueError, match="target"):
        bits_error(x, torch.zeros(4, 2, 2), torch.ones(4, 2))
    with pytest.raises(ValueError, match="mask"):
        bits_error(x, x, torch.ones(4, 3))


# ---------------------------------------------------------------- curriculum

def test_curriculum_doubles_after_patience_good_losses():
    cur = Curriculum(max_level=20, start_level=1, threshold=0.5, patience=3, hard_fraction=None)
    assert cur.current == 1
    assert [cur.update(0.1) for _ in range(3)] == [False, False, True]
    assert cur.current == 2 and cur.state_dict()["history"] == []
    for expected in (4, 8, 16, 20, 20):
        for _ in range(3):
            cur.update(0.0)
        assert cur.current == expected
    assert cur.at_max


def test_curriculum_holds_on_bad_losses():
    cur = Curriculum(max_level=8, threshold=0.5, patience=3, hard_fraction=None)
    for loss in (0.1, 0.1, 2.0, 0.1, 0.1, float("nan"), 0.2, 0.2):
        assert not cur.update(loss)
    assert cur.current == 1
    # mean of the last 3 is what counts: one more good loss flushes the nan out
    assert cur.update(0.2) and cur.current == 2
    cur = Curriculum(max_level=8, threshold=0.5, patience=2, hard_fraction=None)
    cur.update(0.5)
    assert not cur.update(0.5) and cur.current == 1  # strictly below the threshold


@pytest.mark.parametrize(("fraction", "expected"), [
    (0.25, {1: 1, 2: 2, 3: 3, 4: 4, 7: 7, 8: 7, 16: 13, 20: 16, 1024: 769}),
    (0.5, {1: 1, 2: 2, 3: 3, 4: 3, 8: 5, 16: 9, 20: 11}),
    (1.0, {1: 1, 2: 1, 8: 1, 20: 1}),
    (None, {1: 1, 8: 1, 20: 1}),
])
def test_curriculum_hard_levels_are_the_top_share(fraction, expected):
    for current, lowest in expected.items():
        cur = Curriculum(max_level=2048, start_level=current, hard_fraction=fraction)
        assert cur.hard_from == lowest, current


def test_curriculum_rises_only_when_the_hardest_levels_are_solved():
    # easy levels perfect, the top levels failed: the old mean over all levels rises, this not
    hard = Curriculum(max_level=64, start_level=16, threshold=1.0, patience=10)
    mean = Curriculum(max_level=64, start_level=16, threshold=1.0, patience=10, hard_fraction=None)
    rng = np.random.default_rng(5)
    for _ in range(400):
        level = hard.sample_level(rng)
        loss = 0.0 if level <= 12 else 50.0
        hard.update(loss, level)
        mean.update(loss, level)
    assert hard.current == 16 and mean.current == 64
    # easy levels failed, hard ones (13-16) solved: it rises after `patience` hard episodes
    for k in range(10):
        assert not hard.update(9.0, 12)
        assert hard.update(0.5, 13 + k % 4) == (k == 9)
    assert hard.current == 32 and hard.hard_from == 25 and hard.history == deque()


def reference_curriculum(events, max_level, start, threshold, patience, fraction):
    """Brute force: after each (level, loss), the mean of the last `patience` losses at levels in
    the top max(1, floor(fraction * current)) levels since the last rise."""
    current, since, out = start, [], []
    for level, loss in events:
        since.append((level, loss))
        top = current - max(1, math.floor(fraction * current)) + 1
        hard = [x for lv, x in since if lv >= top]
        rose = current < max_level and len(hard) >= patience and np.mean(hard[-patience:]) < threshold
        if rose:
            current, since = min(2 * current, max_level), []
        out.append((rose, current))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("fraction", [0.25, 0.5])
def test_curriculum_matches_a_brute_force_reference(seed, fraction):
    rng = np.random.default_rng(seed)
    cur = Curriculum(max_level=100, start_level=1, threshold=1.0, patience=5, hard_fraction=fraction)
    events, got = [], []
    for _ in range(3000):
        level = cur.sample_level(rng)
        # losses grow with the level relative to a slowly improving skill
        loss = float(rng.exponential(0.3 * level / (1 + len(events) / 300)))
        events.append((level, loss))
        got.append((cur.update(loss), cur.current))  # level from sample_level
    assert got == reference_curriculum(events, 100, 1, 1.0, 5, fraction)
    assert got[-1][1] > 8  # the stream exercised several rises


def test_curriculum_counts_passes_at_the_top_level():
    cur = Curriculum(max_level=4, start_level=2, threshold=1.0, patience=2, hard_fraction=0.5)
    assert [cur.update(0.0, 2) for _ in range(2)] == [False, True] and cur.at_max
    assert cur.solved_at_max == 0
    results = [cur.update(loss, level) for loss, level in
               ((0.0, 4), (0.0, 2), (0.0, 4), (5.0, 3), (0.0, 4), (0.0, 4), (0.0, 1))]
    assert not any(results) and cur.current == 4
    # passes: after the 2nd hard episode (2 was easy), then [5, 0] fails, [0, 0] passes
    assert cur.solved_at_max == 2 and cur.history == deque()
    state = cur.state_dict()
    assert state["solved_at_max"] == 2
    other = Curriculum(4)
    other.load_state_dict(state)
    assert other.solved_at_max == 2
    with pytest.raises(ValueError, match="solved_at_max"):
        other.load_state_dict({**state, "solved_at_max": -1})


def test_curriculum_update_level_checks():
    cur = Curriculum(max_level=8, start_level=4, patience=2)
    with pytest.raises(ValueError, match="level is needed"):
        cur.update(0.0)
    for bad in (0, 9, 2.5, True):
        with pytest.raises(ValueError, match="level"):
            cur.update(0.0, bad)
    assert cur.state_dict()["history"] == [] and cur.current == 4
    cur.update(0.0, np.int64(4))  # numpy integers are levels
    assert cur.history == deque([0.0])
    assert not cur.update(0.0, 3)  # below hard_from: not recorded
    assert cur.history == deque([0.0])
    for bad in (0, -0.5, 1.5, float("nan"), "x", True):
        with pytest.raises(ValueError, match="hard_fraction"):
            Curriculum(8, hard_fraction=bad)


def test_curriculum_sample_level_in_range():
    cur = Curriculum(max_level=16, start_level=4)
    rng = np.random.default_rng(0)
    levels = [cur.sample_level(rng) for _ in range(200)]
    assert set(levels) == {1, 2, 3, 4} and all(type(v) is int for v in levels)
    assert cur.last_level == levels[-1]


def test_curriculum_state_dict_round_trip():
    cur = Curriculum(max_level=10, start_level=2, threshold=0.3, patience=4, hard_fraction=0.5)
    for level, loss in ((2, 0.1), (1, 5.0), (2, 0.1), (2, 0.1), (2, 0.1), (4, 0.2), (3, 0.7), (2, 9.0)):
        cur.update(loss, level)
    state = cur.state_dict()
    assert state == {"max_level": 10, "start_level": 2, "threshold": 0.3, "patience": 4,
                     "hard_fraction": 0.5, "current": 4, "history": [0.2, 0.7], "last_level": None,
                     "solved_at_max": 0}
    other = Curriculum(max_level=3)
    other.load_state_dict(state)
    assert other.state_dict() == state
    for c in (cur, other):
        c.update(0.0, 4)
        c.update(0.0, 3)
    assert cur.state_dict() == other.state_dict() and other.current == 8
    before = other.state_dict()
    for bad in ({**state, "current": 11}, {**state, "hard_fraction": 2.0}, {**state, "last_level": 0},
                {**state, "history": [0.0] * 5}):
        with pytest.raises(ValueError, match="current|hard_fraction|last_level|history"):
            other.load_state_dict(bad)
        assert other.state_dict() == before  # unchanged
    with pytest.raises(ValueError, match="missing"):
        Curriculum(10).load_state_dict({"current": 1})


def test_curriculum_loads_a_state_from_before_hard_levels():
    old = {"max_level": 10, "start_level": 1, "threshold": 0.3, "patience": 4, "current": 4,
           "history": [0.1, 0.2]}
    cur = Curriculum(10)
    cur.load_state_dict(old)
    assert cur.hard_fraction == 0.25 and cur.current == 4 and cur.history == deque()


def test_curriculum_bad_arguments():
    with pytest.raises(ValueError, match="start_level"):
        Curriculum(max_level=4, start_level=5)
    with pytest.raises(ValueError, match="max_level"):
        Curriculum(max_level=0)
    with pytest.raises(ValueError, match="patience"):
        Curriculum(max_level=4, patience=0)

"""The follow task: layout, targets checked by decoding the input alone, the cue's range,
distinct items, levels, seeding, bad arguments and the chance level."""
import numpy as np
import pytest
import torch

from samcpu.tasks import TASKS, Batch, FollowTask, bits_error, encode_follow, make_task


def decode_follow(inputs, bits):
    """(items, cue) of one episode read back from its input (T, bits + 1) alone: the items are
    the steps before the one step with the query flag, the cue is that step's bits."""
    x = inputs.numpy()
    flags = np.flatnonzero(x[:, bits] == 1)
    assert len(flags) == 1
    query = flags[0]
    return [x[s, :bits] for s in range(query)], x[query, :bits], query


def check_episodes(batch, task, batch_size, num_items):
    """Every property of a sampled batch with ``num_items`` items, against an independent decode."""
    n, bits = task.num_follow, task.bits
    t = num_items + n + 1
    assert isinstance(batch, Batch)
    assert batch.input.shape == (t, batch_size, bits + 1) == (t, batch_size, task.input_size)
    assert batch.target.shape == (t, batch_size, bits) == (t, batch_size, task.output_size)
    assert batch.mask.shape == (t, batch_size)
    assert all(x.dtype == torch.float32 for x in batch)
    # the mask is 1 exactly on the n answer steps after the cue, in every episode
    expected_mask = torch.zeros(t, batch_size)
    expected_mask[num_items + 1:] = 1
    assert torch.equal(batch.mask, expected_mask)
    assert torch.all(batch.target[:num_items + 1] == 0)
    cues = []
    for e in range(batch_size):
        items, cue, query = decode_follow(batch.input[:, e], bits)
        assert query == num_items and len(items) == num_items
        keys = [it.tobytes() for it in items]
        assert len(set(keys)) == num_items  # distinct items: the answer is unique
        assert set(np.unique(np.stack(items))) <= {0.0, 1.0}
        c = keys.index(cue.tobytes())  # the cue is one of the items ...
        assert c + n <= num_items - 1  # ... with room for n items after it
        # the answer: items c+1..c+n, in order, at the masked steps; blank inputs there
        answer = batch.target[num_items + 1:, e].numpy()
        assert np.array_equal(answer, np.stack(items[c + 1:c + 1 + n]))
        assert torch.all(batch.input[num_items + 1:, e] == 0)
        assert torch.all(batch.input[:num_items, e, bits] == 0)
        cues.append(c)
    return cues


def test_encode_follow_hand_made():
    items = np.array([[[1, 0], [0, 1], [1, 1], [0, 0]]])  # B=1, L=4, bits=2
    b = encode_follow(items, np.array([1]), 2)
    assert b.input[:, 0].tolist() == [[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0],
                                      [0, 1, 1],
                                      [0, 0, 0], [0, 0, 0]]
    assert b.target[:, 0].tolist() == [[0, 0]] * 5 + [[1, 1], [0, 0]]
    assert b.mask[:, 0].tolist() == [0, 0, 0, 0, 0, 1, 1]
    # two episodes with different cues: each answer follows its own cue
    items = np.array([[[1], [0], [1]], [[0], [1], [1]]])  # B=2, L=3, bits=1
    b = encode_follow(items, np.array([0, 1]), 1)
    assert b.input[3].tolist() == [[1, 1], [1, 1]]
    assert b.target[4].tolist() == [[0], [1]]


@pytest.mark.parametrize("level", [1, 4, 5, 9, 16])
def test_targets_are_the_items_after_the_cue(level):
    task = FollowTask(seed=7)
    for _ in range(3):
        check_episodes(task.sample(5, level), task, 5, max(4, level))


def test_custom_sizes_and_cue_covers_its_range():
    task = FollowTask(bits=5, num_follow=2, min_items=6, max_items=9, seed=2)
    assert (task.input_size, task.output_size, task.max_level) == (6, 5, 9)
    cues = []
    for _ in range(10):
        cues += check_episodes(task.sample(8, 6), task, 8, 6)
    assert set(cues) == {0, 1, 2, 3}  # [0, L - n - 1]
    cues = check_episodes(task.sample(16, 1), task, 16, 3)  # level 1 counts as n + 1 items
    assert set(cues) == {0}


def test_default_sizes_and_item_counts():
    task = FollowTask(seed=1)
    assert (task.bits, task.num_follow, task.min_items, task.max_items) == (8, 3, 4, 16)
    assert (task.input_size, task.output_size, task.max_level) == (9, 8, 16)
    counts = {task.sample(1).input.shape[0] - 4 for _ in range(300)}
    assert counts == set(range(4, 17))
    assert {task.sample(1, 6).input.shape[0] - 4 for _ in range(20)} == {6}
    assert {task.sample(1, lvl).input.shape[0] - 4 for lvl in (1, 2, 3, 4)} == {4}


def test_items_are_made_distinct():
    # 2 bits allow 4 distinct items: with 4 items duplicates are near certain and must be redrawn
    task = FollowTask(bits=2, num_follow=1, max_items=4, seed=0)
    for _ in range(5):
        b = task.sample(6, 4)
        check_episodes(b, task, 6, 4)
        for e in range(6):
            items, _, _ = decode_follow(b.input[:, e], 2)
            assert sorted(tuple(i) for i in items) == [(0, 0), (0, 1), (1, 0), (1, 1)]


def test_seeding_is_repeatable_and_a_generator_is_shared():
    a, b, c = FollowTask(seed=11), FollowTask(seed=11), FollowTask(seed=12)
    for level in (None, 2, 8, 16):
        x, y, z = a.sample(4, level), b.sample(4, level), c.sample(4, level)
        assert all(torch.equal(u, v) for u, v in zip(x, y, strict=True))
        assert x.input.shape != z.input.shape or not torch.equal(x.input, z.input)
    rng = np.random.default_rng(3)
    task = FollowTask(seed=rng)
    assert task.rng is rng
    first = task.sample(2, 5)
    assert not torch.equal(FollowTask(seed=rng).sample(2, 5).input, first.input)  # rng advanced


def test_registered_with_make_task():
    assert TASKS["follow"] is FollowTask
    task = make_task("follow", seed=0, num_follow=2, max_items=5)
    assert (task.num_follow, task.min_items, task.max_level) == (2, 3, 5)
    with pytest.raises(ValueError, match="follow"):
        make_task("reverse")


def test_chance_level_is_n_bits_over_two():
    # an answer that ignores the items (constant logits) scores n * bits / 2 = 12 on average;
    # the right items score 0. 4,000 episodes: the mean's standard error is sqrt(6) / 63 = 0.04
    task = FollowTask(seed=5)
    b = task.sample(4000, 16)
    assert bits_error(torch.full_like(b.target, -1.0), b.target, b.mask) == pytest.approx(12, abs=0.2)
    assert bits_error(torch.full_like(b.target, 1.0), b.target, b.mask) == pytest.approx(12, abs=0.2)
    assert bits_error(2 * b.target - 1, b.target, b.mask) == 0.0
    # the answer one step late (a blank, then items c+1..c+n-1) is no better than chance: a wrong
    # item costs bits / 2 per step, like a guess (8 * 128 / 255 = 4.02 for distinct items)
    late = torch.roll(b.target, 1, 0) * 2 - 1
    assert bits_error(late, b.target, b.mask) == pytest.approx(4 + 2 * 8 * 128 / 255, abs=0.2)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"bits": 0}, "bits"), ({"bits": 2.0}, "bits"), ({"num_follow": 0}, "num_follow"),
    ({"num_follow": True}, "num_follow"), ({"min_items": 3}, "min_items"),
    ({"num_follow": 4, "min_items": 4}, "min_items"), ({"min_items": 8, "max_items": 7}, "max_items"),
    ({"bits": 3, "max_items": 9}, "max_items"), ({"num_follow": 16}, "max_items"),
])
def test_bad_constructor_arguments_name_themselves(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FollowTask(**kwargs)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"batch_size": 0}, "batch_size"), ({"batch_size": True}, "batch_size"),
    ({"batch_size": 2, "level": 0}, "level"), ({"batch_size": 2, "level": 17}, "level"),
    ({"batch_size": 2, "level": 2.5}, "level"),
])
def test_bad_sample_arguments_name_themselves(kwargs, match):
    task = FollowTask(seed=0)
    state = task.rng.bit_generator.state
    with pytest.raises(ValueError, match=match):
        task.sample(**kwargs)
    assert task.rng.bit_generator.state == state  # nothing drawn
    b = task.sample(np.int64(2), np.int32(16))  # numpy integers are fine
    assert b.input.shape == (20, 2, 9)


def test_encode_follow_bad_arguments():
    items = np.zeros((2, 5, 3))
    encode_follow(items, np.array([0, 1]), 3)  # cue 1 is the last with 3 items after it
    for cue in ([0, 2], [-1, 0], [0.0, 1.0], [0]):
        with pytest.raises(ValueError, match="cue"):
            encode_follow(items, np.array(cue), 3)
    for n in (0, 5, 1.5):
        with pytest.raises(ValueError, match="num_follow"):
            encode_follow(items, np.array([0, 0]), n)
    for bad in (np.zeros((2, 1, 3)), np.zeros((5, 3)), np.full((2, 5, 3), 0.5)):
        with pytest.raises(ValueError, match="items"):
            encode_follow(bad, np.array([0, 0]), 1)

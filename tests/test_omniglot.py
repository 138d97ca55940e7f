"""One-shot Omniglot: the reader on hand-made PNGs, the episodes (the previous step's label at
each step, each character shown 10 times under one random label), the error by presentation,
the SYNTHETIC glyph generator read back, bad data, and `samcpu train --task omniglot`."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from samcpu.cli import main
from samcpu.tasks import DataError, OmniglotTask, make_task, read_omniglot
from samcpu.tasks.omniglot import (
    encode_omniglot,
    load_image,
    presentation_counts,
    read_split,
    seen_before,
    transform_images,
)
from samcpu.tasks.synthetic_omniglot import COMMENT, write_synthetic_omniglot

TINY = ["--slots", "32", "--word", "4", "--heads", "1", "--k", "2", "--hidden", "8", "--batch", "2",
        "--index", "exact", "--threads", "1", "--quiet"]


def png(path, pixels):
    """Save 0/1 ``pixels`` (1 = stroke) as an Omniglot-like PNG: black strokes on white."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.where(np.asarray(pixels) > 0, 0, 255).astype(np.uint8)).convert("1").save(path)


@pytest.fixture(scope="module")
def glyphs(tmp_path_factory):
    """SYNTHETIC glyphs: 2 + 2 alphabets of 4 characters, 12 drawings each."""
    folder = tmp_path_factory.mktemp("omniglot")
    write_synthetic_omniglot(folder, alphabets=(2, 2), characters=4, drawings=12, seed=1)
    return folder


@pytest.fixture(scope="module")
def plain(glyphs):
    """The glyphs without rotation and stretch: every step shows one of its drawings as is."""
    return OmniglotTask(glyphs, seed=0, max_characters=4, max_angle=0, max_stretch=1)


# ---------------------------------------------------------------- the reader

def test_reader_on_hand_made_pngs(tmp_path):
    split = tmp_path / "images_background"
    full = np.zeros((105, 105))
    full[:, :35] = 1  # the left third is stroke
    png(split / "Alpha" / "character01" / "0001_01.png", full)
    png(split / "Alpha" / "character01" / "0001_02.png", np.ones((105, 105)))
    png(split / "Alpha" / "character02" / "0002_01.png", np.zeros((105, 105)))
    png(split / "Beta" / "character01" / "0003_01.png", full.T)
    (split / "Beta" / "character01" / "notes.txt").write_text("ignored")
    chars = read_split(split, size=3)
    assert chars.names == ("Alpha/character01", "Alpha/character02", "Beta/character01")
    assert chars.starts.tolist() == [0, 2, 3, 4] and chars.images.dtype == np.float32
    # box downsampling: each 35x35 block averaged; strokes are 1
    assert np.array_equal(chars.images[0], np.array([[1, 0, 0]] * 3, np.float32))
    assert np.array_equal(chars.images[1], np.ones((3, 3)))
    assert np.array_equal(chars.images[2], np.zeros((3, 3)))
    assert np.array_equal(chars.images[3], chars.images[0].T)
    assert load_image(split / "Alpha" / "character01" / "0001_01.png", 105).sum() == 105 * 35


def test_downsampling_averages_the_pixels_covered(tmp_path):
    pixels = (np.random.default_rng(0).random((105, 105)) < 0.3).astype(float)
    png(tmp_path / "a.png", pixels)
    got = load_image(tmp_path / "a.png", 21)
    ref = pixels.reshape(21, 5, 21, 5).mean((1, 3))  # 5x5 blocks
    assert np.abs(got - ref).max() < 1 / 255 + 1e-6


# ---------------------------------------------------------------- episodes

def test_encode_by_hand():
    images = np.arange(3 * 1 * 2 * 2, dtype=np.float32).reshape(3, 1, 2, 2)
    labels = np.array([[2], [0], [2]])
    batch = encode_omniglot(images, labels, 3)
    x, y, m = (t.numpy() for t in batch)
    assert x.shape == (3, 1, 4 + 3) and y.shape == (3, 1, 3) and np.all(m == 1)
    assert np.array_equal(x[:, 0, :4], images.reshape(3, 4))
    assert np.array_equal(x[:, 0, 4:], [[0, 0, 0], [0, 0, 1], [1, 0, 0]])  # the previous label
    assert np.array_equal(y[:, 0], [[0, 0, 1], [1, 0, 0], [0, 0, 1]])
    with pytest.raises(ValueError, match="labels"):
        encode_omniglot(images, labels, 2)


def test_presentations_and_seen_before_against_loops():
    chars = np.random.default_rng(1).integers(0, 4, size=(30, 3))
    counts = presentation_counts(chars)
    for b in range(3):
        for t in range(30):
            assert counts[t, b] == np.sum(chars[: t + 1, b] == chars[t, b])
    target = torch.nn.functional.one_hot(torch.from_numpy(chars), 4).float()
    assert torch.equal(seen_before(target), torch.from_numpy(counts > 1))


def test_episodes_previous_label_ten_presentations_and_the_right_drawings(plain):
    batch, counts = plain.episodes(3, level=3)
    x, y = batch.input.numpy(), batch.target.numpy()
    assert x.shape == (30, 3, 400 + 4) and y.shape == (30, 3, 4)
    pixels = 400
    assert np.all(x[0, :, pixels:] == 0) and np.array_equal(x[1:, :, pixels:], y[:-1])
    chars = plain.data.background
    for b in range(3):
        labels = y[:, b].argmax(1)
        assert np.bincount(labels, minlength=4).tolist() == [10, 10, 10, 0]  # n-way: labels 0..n-1
        assert np.array_equal(counts[:, b], presentation_counts(labels[:, None])[:, 0])
        # every step's image is a drawing of one character, the same character for one label
        owner = {}
        for t in range(30):
            image = x[t, b, :pixels].reshape(20, 20)
            hits = [c for c in range(chars.count) if any(
                np.allclose(image, d, atol=1e-5) for d in chars.images[chars.starts[c]:chars.starts[c + 1]])]
            assert len(hits) >= 1
            owner.setdefault(labels[t], set()).update(hits)
        assert len(set.union(*owner.values())) >= 3  # three characters, not one
    # the labels are random per episode
    firsts = {tuple(plain.episodes(1, level=4)[0].target[:, 0].argmax(1).tolist()) for _ in range(5)}
    assert len(firsts) > 1


def test_rotation_and_stretch():
    image = np.zeros((1, 6, 6), np.float32)
    image[0, 1, 4] = 1.0
    quarter = transform_images(image, np.array([np.pi / 2]), np.ones((1, 2)))
    assert any(np.allclose(quarter[0], np.rot90(image[0], k), atol=1e-5) for k in (1, 3))
    same = transform_images(image, np.zeros(1), np.ones((1, 2)))
    assert np.allclose(same, image, atol=1e-6)
    wide = transform_images(np.ones((1, 6, 6), np.float32), np.zeros(1), np.array([[0.5, 1.0]]))
    assert np.allclose(wide[0, :, :1], 0) and np.allclose(wide[0, :, 2:4], 1)  # narrower in x


def test_rotated_episodes_are_seeded(glyphs):
    a, b = OmniglotTask(glyphs, seed=4, max_characters=5), make_task("omniglot", seed=4, data=glyphs,
                                                                      max_characters=5)
    for level in (1, 5, None):
        assert all(torch.equal(u, v) for u, v in zip(a.sample(2, level), b.sample(2, level), strict=True))
    assert a.sample(2, 2).input.shape == (20, 2, 400 + 5)
    with pytest.raises(ValueError, match="level"):
        a.sample(2, 6)


def test_error_counts_only_characters_seen_before(plain):
    batch, counts = plain.episodes(2, level=2)
    logits = batch.target.clone()
    assert plain.error(logits, batch.target, batch.mask) == 0.0
    first = torch.from_numpy(counts == 1)
    logits[first] = torch.roll(logits[first], 1, dims=-1)  # wrong at every first presentation
    assert plain.error(logits, batch.target, batch.mask) == 0.0
    t, b = np.argwhere(counts == 2)[0]
    logits[t, b] = torch.roll(logits[t, b], 1)
    assert plain.error(logits, batch.target, batch.mask) == pytest.approx(1 / np.sum(counts > 1))


class ConstantLabel(torch.nn.Module):
    """A 'model' that always answers label 0."""

    def forward(self, x):
        out = torch.zeros(x.shape[0], x.shape[1], 4)
        out[..., 0] = 1
        return out, None


def test_error_by_presentation_against_a_count(plain):
    report = plain.evaluate(ConstantLabel(), batch_size=3, level=3, episodes=5, seed=2)
    assert report["episodes"] == 6 and report["characters"] == 3
    assert len(report["error_by_presentation"]) == 10
    # brute force: the same episodes (same seed), a constant answer 0
    rng = np.random.default_rng(2)
    wrong, total = np.zeros(10), np.zeros(10)
    for _ in range(2):
        batch, counts = plain.episodes(3, 3, "evaluation", rng)
        bad = (batch.target.argmax(-1) != 0).numpy()
        np.add.at(wrong, counts - 1, bad)
        np.add.at(total, counts - 1, 1)
    assert np.allclose(report["error_by_presentation"], wrong / total)
    assert report["error"] == pytest.approx(wrong.sum() / total.sum())
    assert report["error_seen"] == pytest.approx(wrong[1:].sum() / total[1:].sum())
    assert plain.evaluate(ConstantLabel(), batch_size=3, level=3, episodes=5, seed=2) == report


# ---------------------------------------------------------------- the generator, read back

def test_the_generator_is_read_back_labelled_synthetic(glyphs, tmp_path):
    data = read_omniglot(glyphs)
    assert data.synthetic and (data.background.count, data.evaluation.count) == (8, 8)
    assert np.all(np.diff(data.background.starts) == 12)
    assert data.background.names[0] == "Synthetic_Alphabet_01/character01"
    first = sorted((glyphs / "images_background").rglob("*.png"))[0]
    with Image.open(first) as im:
        assert im.size == (105, 105) and im.mode == "1" and im.text["Comment"] == COMMENT
    assert "SYNTHETIC" in COMMENT and "SYNTHETIC" in (glyphs / "SYNTHETIC.txt").read_text()
    assert OmniglotTask(data, max_characters=4).describe().startswith("SYNTHETIC")
    # drawings of a character are nearer each other than to other characters' drawings
    x = data.background.images.reshape(len(data.background.images), -1)
    label = np.repeat(np.arange(8), 12)
    d = ((x[:, None] - x[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    assert np.mean(label[d.argmin(1)] == label) > 0.9
    # seeded: the same seed writes the same files
    write_synthetic_omniglot(tmp_path / "again", alphabets=(2, 2), characters=4, drawings=12, seed=1)
    assert (tmp_path / "again" / first.relative_to(glyphs)).read_bytes() == first.read_bytes()


# ---------------------------------------------------------------- bad data

def test_bad_data_is_named(tmp_path, glyphs):
    with pytest.raises(DataError, match="nowhere: no such folder"):
        read_omniglot(tmp_path / "nowhere")
    (tmp_path / "a" / "images_background").mkdir(parents=True)
    with pytest.raises(DataError, match="images_evaluation is missing"):
        read_omniglot(tmp_path / "a")
    (tmp_path / "a" / "images_evaluation").mkdir()
    with pytest.raises(DataError, match=r"images_background: empty \(no alphabet folders"):
        read_omniglot(tmp_path / "a")
    (tmp_path / "a" / "images_background" / "Alpha").mkdir()
    with pytest.raises(DataError, match=r"Alpha: empty \(no character folders\)"):
        read_omniglot(tmp_path / "a")
    (tmp_path / "a" / "images_background" / "Alpha" / "character01").mkdir()
    with pytest.raises(DataError, match=r"character01: empty \(no .png drawings\)"):
        read_omniglot(tmp_path / "a")
    bad = tmp_path / "a" / "images_background" / "Alpha" / "character01" / "0001_01.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DataError, match="0001_01.png: cannot read this image"):
        read_omniglot(tmp_path / "a")
    with pytest.raises(DataError, match="holds 8 characters, fewer than the 9"):
        OmniglotTask(glyphs, max_characters=9)
    with pytest.raises(DataError, match="needs its data folder"):
        OmniglotTask(None)
    (tmp_path / "real" / "images_background").mkdir(parents=True)
    with pytest.raises(DataError, match="refusing"):
        write_synthetic_omniglot(tmp_path / "real")


# ---------------------------------------------------------------- samcpu train --task omniglot

def test_train_omniglot_runs_with_the_curriculum_and_evaluates(tmp_path, glyphs, capsys):
    out = tmp_path / "run"
    code = main(["train", "--task", "omniglot", "--data", str(glyphs), "--max-level", "4", "--steps", "3",
                 "--out", str(out), *TINY])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert printed.out.startswith("SYNTHETIC Omniglot-layout glyphs (made by samcpu, not the Omniglot data "
                                  "set)")
    assert "error by presentation" in printed.out
    rows = (out / "metrics.csv").read_text().splitlines()
    assert rows[0] == "episode,level,max_level,loss,error,ms_per_step,seconds" and len(rows) == 4
    report = json.loads((out / "eval.json").read_text())
    assert report["synthetic"] and report["characters"] == 1 and report["split"] == "evaluation"
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ck["args"]["threshold"] == 0.1 and ck["args"]["data"] == str(glyphs)
    code = main(["train", "--task", "omniglot", "--data", str(glyphs), "--steps", "1",
                 "--out", str(tmp_path / "b"), *TINY])
    assert code == 2 and "holds 8 characters, fewer than the 100" in capsys.readouterr().err

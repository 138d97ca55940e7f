"""One-shot Omniglot classification (Lake et al. 2015) as Rae et al. 2016 set it up, after
Santoro et al. 2016.

The standard distribution is two folders, ``images_background`` (training) and
``images_evaluation`` (testing), each ``<alphabet>/<character>/<drawing>.png`` with 20 drawings
of 105x105 pixels per character, black strokes on white. Images are read once, strokes as 1,
and downsampled to ``size`` x ``size`` (20 by default: the paper gives no size).

An episode shows n characters, each ``presentations`` (10) times, in a random order. Each
character gets, for this episode only, a random label among the episode's n classes (0..n-1,
shuffled: n-way classification, as in Santoro et al.) and a random rotation and stretch
(applied to all its drawings). At each step the input is an image
and the 1-hot correct label of the previous step's image (zeros at the first step); the
network must output the label of the current image. The loss is scored at every step; the
error that drives the curriculum counts the steps whose character was shown before (a first
presentation can only be guessed). n follows an exponential curriculum (``level``).
"""
import os
from typing import NamedTuple

import numpy as np
import torch
from torch.nn import functional as F

from .answers import DataError, answer_error, wrong_answers
from .babi import is_synthetic
from .base import check_int, check_level, to_batch

SPLITS = ("images_background", "images_evaluation")


class Characters(NamedTuple):
    """The drawings of one split, grouped by character.

    Attributes
    ----------
    images : numpy.ndarray
        float32 (M, size, size) in [0, 1], strokes 1: every drawing, character after character.
    starts : numpy.ndarray
        int64 (C + 1,): the drawings of character c are ``images[starts[c]:starts[c + 1]]``.
    names : tuple of str
        ``"alphabet/character"`` for each of the C characters.
    folder : str
        The split's folder.
    """

    images: np.ndarray
    starts: np.ndarray
    names: tuple
    folder: str

    @property
    def count(self):
        """C, the number of characters."""
        return len(self.names)


def load_image(path, size):
    """A PNG as float32 (size, size), strokes 1, background 0; ``DataError`` naming ``path``.

    The image is read as grey levels, inverted (Omniglot draws black on white) and resized with
    box filtering (each pixel the mean of the pixels it covers)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            grey = im.convert("L").resize((size, size), Image.Resampling.BOX)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(f"{path}: cannot read this image ({type(e).__name__}: {e})") from None
    return 1.0 - np.asarray(grey, np.float32) / 255.0


def _subfolders(folder):
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def read_split(folder, size=20):
    """Every character of one split (``images_background`` or ``images_evaluation``).

    Parameters
    ----------
    folder : str or os.PathLike
        ``<alphabet>/<character>/*.png`` inside (other files are ignored).
    size : int
        Side of the downsampled images.

    Returns
    -------
    Characters

    Raises
    ------
    DataError
        Naming the folder or file: no such folder, no alphabet in it, an alphabet without
        characters, a character without PNG files, an image that cannot be read.
    """
    folder = os.fspath(folder)
    size = check_int(size, "size", 1)
    if not os.path.isdir(folder):
        raise DataError(f"{folder}: no such folder (Omniglot wants <alphabet>/<character>/*.png)")
    alphabets = _subfolders(folder)
    if not alphabets:
        raise DataError(f"{folder}: empty (no alphabet folders; Omniglot wants <alphabet>/<character>/*.png)")
    images, starts, names = [], [0], []
    for alphabet in alphabets:
        characters = _subfolders(os.path.join(folder, alphabet))
        if not characters:
            raise DataError(f"{os.path.join(folder, alphabet)}: empty (no character folders)")
        for character in characters:
            where = os.path.join(folder, alphabet, character)
            pngs = sorted(n for n in os.listdir(where) if n.lower().endswith(".png"))
            if not pngs:
                raise DataError(f"{where}: empty (no .png drawings)")
            images.extend(load_image(os.path.join(where, n), size) for n in pngs)
            starts.append(len(images))
            names.append(f"{alphabet}/{character}")
    return Characters(np.stack(images), np.array(starts, np.int64), tuple(names), folder)


class OmniglotData(NamedTuple):
    """An Omniglot folder read: ``background`` and ``evaluation`` :class:`Characters`, the image
    size, the folder and whether it carries the generators' ``SYNTHETIC.txt`` mark."""

    background: Characters
    evaluation: Characters
    size: int
    folder: str
    synthetic: bool


def read_omniglot(folder, size=20):
    """Both splits of an Omniglot folder (the one holding ``images_background`` and
    ``images_evaluation``); ``DataError`` naming what is missing or unreadable."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise DataError(f"{folder}: no such folder (Omniglot wants the folder holding "
                        "images_background and images_evaluation)")
    for split in SPLITS:
        if not os.path.isdir(os.path.join(folder, split)):
            raise DataError(f"{os.path.join(folder, split)} is missing (Omniglot wants the folder holding "
                            "images_background and images_evaluation, unzipped)")
    background, evaluation = (read_split(os.path.join(folder, s), size) for s in SPLITS)
    return OmniglotData(background, evaluation, size, folder, is_synthetic(folder))


def presentation_counts(characters):
    """How many times each step's character has been shown, this step included.

    Parameters
    ----------
    characters : numpy.ndarray
        int (T, B): the character (or label) at each step of each episode.

    Returns
    -------
    numpy.ndarray
        int64 (T, B), 1 at a character's first step, 2 at its second, ...
    """
    characters = np.asarray(characters)
    out = np.zeros(characters.shape, np.int64)
    for b in range(characters.shape[1]):
        seen = {}
        for t, c in enumerate(characters[:, b].tolist()):
            seen[c] = seen.get(c, 0) + 1
            out[t, b] = seen[c]
    return out


def encode_omniglot(images, labels, num_classes):
    """One-shot episodes from images and their labels.

    Parameters
    ----------
    images : array_like
        float (T, B, S, S): the image shown at each step.
    labels : array_like
        int (T, B) in [0, num_classes): the correct label of each step's image.
    num_classes : int
        C, the width of the 1-hot labels.

    Returns
    -------
    Batch
        input (T, B, S*S + C): the image, then the 1-hot label of step t-1 (zeros at t = 0);
        target (T, B, C): the 1-hot label of step t; mask (T, B): ones.
    """
    images = np.asarray(images, np.float32)
    labels = np.asarray(labels)
    num_classes = check_int(num_classes, "num_classes", 1)
    if images.ndim != 4 or labels.shape != images.shape[:2]:
        raise ValueError(f"images must be (T, B, S, S) and labels (T, B), got {images.shape} and "
                         f"{labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must be integers in [0, {num_classes}), got {labels.dtype} in "
                         f"[{labels.min()}, {labels.max()}]")
    steps, batch_size = labels.shape
    pixels = images.shape[2] * images.shape[3]
    onehot = np.eye(num_classes, dtype=np.float32)[labels]
    inputs = np.zeros((steps, batch_size, pixels + num_classes), np.float32)
    inputs[:, :, :pixels] = images.reshape(steps, batch_size, pixels)
    inputs[1:, :, pixels:] = onehot[:-1]
    return to_batch(inputs, onehot, np.ones((steps, batch_size), np.float32))


def seen_before(target):
    """Bool (T, B): the steps whose label (the arg-max of the 1-hot ``target``) appeared at an
    earlier step of the same episode."""
    target = torch.as_tensor(target)
    before = torch.cumsum(target, 0) - target
    return (before * target).sum(-1) > 0


def transform_images(images, angles, stretch):
    """Images rotated and stretched about their centre (bilinear, zeros outside).

    Parameters
    ----------
    images : numpy.ndarray
        float32 (M, S, S).
    angles : numpy.ndarray
        (M,) radians.
    stretch : numpy.ndarray
        (M, 2): the factors along x and y (>1 enlarges).

    Returns
    -------
    numpy.ndarray
        float32 (M, S, S).
    """
    cos, sin = np.cos(angles), np.sin(angles)
    theta = np.zeros((len(images), 2, 3), np.float32)
    # affine_grid maps output coordinates to input ones: the inverse of stretch-then-rotate
    theta[:, 0, 0] = cos / stretch[:, 0]
    theta[:, 0, 1] = sin / stretch[:, 0]
    theta[:, 1, 0] = -sin / stretch[:, 1]
    theta[:, 1, 1] = cos / stretch[:, 1]
    x = torch.from_numpy(np.ascontiguousarray(images, np.float32)).unsqueeze(1)
    grid = F.affine_grid(torch.from_numpy(theta), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0].numpy()


class OmniglotTask:
    """One-shot classification episodes over Omniglot characters (see the module's text).

    ``level`` is the number of characters n of an episode (T = presentations * n steps);
    ``level=None`` means ``max_characters``. Training draws from ``images_background``;
    :meth:`evaluate` from ``images_evaluation``.

    Parameters
    ----------
    data : str, os.PathLike or OmniglotData
        A folder for :func:`read_omniglot`, or what it returned.
    seed : int, numpy.random.Generator or None
        Source of randomness; a Generator is used as is (not copied).
    max_characters : int
        The most characters an episode shows, also the number of labels (``max_level``).
    presentations : int
        How many times each character is shown (10).
    size : int
        Image side after downsampling (20), when ``data`` is a folder.
    max_angle : float
        Rotations are drawn uniformly in [-max_angle, max_angle] degrees (180: any angle).
    max_stretch : float
        Each axis is stretched by a factor drawn log-uniformly in [1/max_stretch, max_stretch].
    """

    loss = "softmax"
    error_name = "error"
    needs_data = True
    default_max_level = 100

    def __init__(self, data, seed=None, max_characters=100, presentations=10, size=20,
                 max_angle=180.0, max_stretch=1.25):
        if data is None:
            raise DataError("Omniglot needs its data folder (the one holding images_background and "
                            "images_evaluation, or one made by python -m samcpu.tasks.synthetic_omniglot)")
        self.max_characters = check_int(max_characters, "max_characters", 1)
        self.presentations = check_int(presentations, "presentations", 1)
        self.max_angle = float(max_angle)
        self.max_stretch = float(max_stretch)
        if not 0 <= self.max_angle <= 180:
            raise ValueError(f"max_angle must be in [0, 180] degrees, got {max_angle}")
        if not 1 <= self.max_stretch < np.inf:
            raise ValueError(f"max_stretch must be a finite number >= 1, got {max_stretch}")
        self.data = data if isinstance(data, OmniglotData) else read_omniglot(data, size)
        for split in (self.data.background, self.data.evaluation):
            if split.count < self.max_characters:
                raise DataError(f"{split.folder} holds {split.count} characters, fewer than the "
                                f"{self.max_characters} of the largest episode (lower --max-level)")
        self.size = self.data.size
        self.max_level = self.max_characters
        self.input_size = self.size * self.size + self.max_characters
        self.output_size = self.max_characters
        self.synthetic = self.data.synthetic
        self.rng = np.random.default_rng(seed)

    def describe(self):
        """One line: the folder, the characters, and SYNTHETIC when the data is."""
        d = self.data
        text = (f"Omniglot from {d.folder} ({d.background.count:,d} training and "
                f"{d.evaluation.count:,d} test characters, {self.size}x{self.size} pixels)")
        return ("SYNTHETIC Omniglot-layout glyphs (made by samcpu, not the Omniglot data set): " + text
                if self.synthetic else text)

    def episodes(self, batch_size, level=None, split="background", rng=None):
        """A batch of episodes and each step's presentation count, drawn with ``rng`` (None:
        the task's).

        Returns
        -------
        (Batch, numpy.ndarray)
            The batch (see :func:`encode_omniglot`) and int64 (T, B): how many times the
            step's character has been shown, this step included (1..presentations).
        """
        batch_size = check_int(batch_size, "batch_size", 1)
        level = check_level(level, self.max_level)
        n = self.max_level if level is None else level
        chars = getattr(self.data, split)
        rng = self.rng if rng is None else rng
        steps = n * self.presentations
        images = np.zeros((steps, batch_size, self.size, self.size), np.float32)
        labels = np.zeros((steps, batch_size), np.int64)
        order = np.zeros((steps, batch_size), np.int64)
        for b in range(batch_size):
            picked = rng.choice(chars.count, size=n, replace=False)
            label = rng.permutation(n)  # n-way: the episode's labels are 0..n-1, shuffled
            order[:, b] = rng.permutation(np.repeat(np.arange(n), self.presentations))
            angle = np.deg2rad(rng.uniform(-self.max_angle, self.max_angle, size=n))
            stretch = np.exp(rng.uniform(-1, 1, size=(n, 2)) * np.log(self.max_stretch))
            drawn = np.empty(steps, np.int64)
            for i, c in enumerate(picked):
                first, last = chars.starts[c], chars.starts[c + 1]
                at = np.flatnonzero(order[:, b] == i)
                drawn[at] = first + rng.choice(last - first, size=len(at),
                                               replace=last - first < len(at))
            images[:, b] = transform_images(chars.images[drawn], angle[order[:, b]], stretch[order[:, b]])
            labels[:, b] = label[order[:, b]]
        return encode_omniglot(images, labels, self.max_characters), presentation_counts(order)

    def sample(self, batch_size, level=None):
        """A batch of training episodes of ``level`` characters (None: ``max_characters``).

        Returns
        -------
        Batch
            input (T, B, size*size + max_characters), target (T, B, max_characters), mask
            (T, B) with T = presentations * level.
        """
        return self.episodes(batch_size, level)[0]

    def error(self, logits, target, mask):
        """The share of wrong labels among the steps whose character was shown before."""
        return answer_error(logits, target, torch.as_tensor(mask) * seen_before(target))

    def evaluate(self, model, batch_size=16, level=None, split="evaluation", episodes=64, seed=0):
        """The error by presentation on test episodes (characters of ``images_evaluation``).

        Parameters
        ----------
        model : callable
            ``model(input) -> (logits, state)``, like SAM and DAM.
        batch_size : int
            Episodes per forward pass.
        level : int or None
            Characters per episode (None: ``max_characters``).
        split : {"evaluation", "background"}
        episodes : int
            How many episodes (rounded up to whole batches).
        seed : int
            The episodes' own random stream (the training stream is left alone): the same
            seed shows the same episodes.

        Returns
        -------
        dict
            ``characters``, ``episodes``, ``error_by_presentation`` (the share of wrong labels
            at a character's 1st, 2nd, ... presentation), ``error`` (all steps),
            ``error_seen`` (steps from the 2nd presentation on), ``synthetic``.
        """
        batch_size = check_int(batch_size, "batch_size", 1)
        episodes = check_int(episodes, "episodes", 1)
        if split not in ("evaluation", "background"):
            raise ValueError(f"split must be 'evaluation' or 'background', got {split!r}")
        level = check_level(level, self.max_level)
        n = self.max_level if level is None else level
        wrong = np.zeros(self.presentations, np.int64)
        total = np.zeros(self.presentations, np.int64)
        done = 0
        rng = np.random.default_rng(seed)
        with torch.no_grad():
            while done < episodes:
                batch, counts = self.episodes(batch_size, n, split, rng)
                logits, _ = model(batch.input)
                bad = wrong_answers(logits, batch.target).numpy()
                np.add.at(wrong, counts - 1, bad)
                np.add.at(total, counts - 1, 1)
                done += batch_size
        by = wrong / np.maximum(total, 1)
        return {"task": "omniglot", "split": split, "synthetic": self.synthetic, "characters": n,
                "episodes": done, "error_by_presentation": by.tolist(),
                "error": float(wrong.sum() / total.sum()),
                "error_seen": float(wrong[1:].sum() / max(total[1:].sum(), 1))}

    @staticmethod
    def summary(report):
        """The lines ``samcpu train`` prints for an :meth:`evaluate` report."""
        head = "SYNTHETIC glyphs: " if report["synthetic"] else ""
        cells = ", ".join(f"{i}: {100 * e:.0f}%" for i, e in enumerate(report["error_by_presentation"], 1))
        n = report["characters"]
        return [f"{head}{report['split']} error by presentation, {n} character{'s' * (n != 1)}, "
                f"{report['episodes']} episodes ({cells})",
                f"error {100 * report['error']:.1f}% over all steps, {100 * report['error_seen']:.1f}% "
                "from the 2nd presentation on"]

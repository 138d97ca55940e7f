"""SYNTHETIC stroke-drawn glyphs in Omniglot's folder layout, made here (NOT the Omniglot data
set).

Each character is a few random strokes (smoothed polylines); each of its drawings moves the
strokes' points a little and draws them with a random pen width, as different people draw the
same character. The images are 105x105 1-bit PNGs, black strokes on white, laid out as
``images_background`` and ``images_evaluation`` / ``<alphabet>/<character>/<drawing>.png``, so
:func:`samcpu.tasks.omniglot.read_omniglot` reads them like the real ones. Every PNG carries a
``Comment`` text chunk saying it is synthetic, and the folder a ``SYNTHETIC.txt`` file, which
the reader sees and ``samcpu train`` reports. Results on these glyphs are no results on
Omniglot.

``python -m samcpu.tasks.synthetic_omniglot OUT`` writes a folder; see ``--help``.
"""
import argparse
import os
import sys

import numpy as np

from .answers import DataError
from .babi import SYNTHETIC_MARK
from .base import check_int
from .omniglot import SPLITS

#: the side of the images, as Omniglot's
SIDE = 105
COMMENT = "SYNTHETIC glyph made by samcpu (python -m samcpu.tasks.synthetic_omniglot), not Omniglot"

MARK_TEXT = """SYNTHETIC DATA: made by samcpu (python -m samcpu.tasks.synthetic_omniglot),
NOT the Omniglot data set. Stroke-drawn glyphs in Omniglot's folder layout, seed {seed}.
Results on these images are results on synthetic data, never on Omniglot (Lake et al. 2015).
"""


def make_character(rng):
    """A character: 2 or 3 strokes, each 3 to 5 points in the unit square (a list of (k, 2)
    arrays)."""
    strokes = int(rng.integers(2, 4))
    return [rng.uniform(0.15, 0.85, size=(int(rng.integers(3, 6)), 2)) for _ in range(strokes)]


def _smooth(points, rounds=2):
    """Chaikin's corner cutting: a polyline rounded ``rounds`` times (ends kept)."""
    for _ in range(rounds):
        if len(points) < 3:
            return points
        q = 0.75 * points[:-1] + 0.25 * points[1:]
        r = 0.25 * points[:-1] + 0.75 * points[1:]
        points = np.vstack([points[:1], np.stack([q, r], 1).reshape(-1, 2)[1:-1], points[-1:]])
    return points


def draw_glyph(strokes, rng, jitter=0.03):
    """One drawing of a character: a PIL image (mode "1", 105x105, black strokes on white).

    The strokes' points move by N(0, ``jitter``) each, the whole glyph shifts and scales a
    little, and the pen is 4 to 6 pixels wide."""
    from PIL import Image, ImageDraw

    im = Image.new("1", (SIDE, SIDE), 1)
    pen = ImageDraw.Draw(im)
    shift = rng.normal(0, 0.02, size=2)
    scale = rng.uniform(0.92, 1.08)
    width = int(rng.integers(4, 7))
    for stroke in strokes:
        p = stroke + rng.normal(0, jitter, size=stroke.shape)
        p = (p - 0.5) * scale + 0.5 + shift
        p = np.clip(_smooth(p), 0.02, 0.98) * (SIDE - 1)
        pen.line([tuple(xy) for xy in p.tolist()], fill=0, width=width, joint="curve")
    return im


def write_synthetic_omniglot(folder, alphabets=(10, 10), characters=12, drawings=20, seed=0):
    """Write SYNTHETIC glyphs in Omniglot's layout into ``folder`` (made if needed).

    Parameters
    ----------
    folder : str or os.PathLike
        Refused if it holds ``images_background`` or ``images_evaluation`` without the
        ``SYNTHETIC.txt`` mark (real data is never overwritten).
    alphabets : (int, int)
        Alphabets in ``images_background`` and in ``images_evaluation``.
    characters : int
        Characters per alphabet.
    drawings : int
        Drawings per character (Omniglot has 20).
    seed : int

    Returns
    -------
    int
        The number of PNG files written.
    """
    folder = os.fspath(folder)
    counts = [check_int(a, "alphabets", 1) for a in alphabets]
    if len(counts) != 2:
        raise ValueError(f"alphabets must be two counts (background, evaluation), got {alphabets!r}")
    characters = check_int(characters, "characters", 1)
    drawings = check_int(drawings, "drawings", 1)
    os.makedirs(folder, exist_ok=True)
    if not os.path.isfile(os.path.join(folder, SYNTHETIC_MARK)) and any(
            os.path.exists(os.path.join(folder, s)) for s in SPLITS):
        raise DataError(f"{folder} holds Omniglot folders not made here (no {SYNTHETIC_MARK}): refusing "
                        "to write synthetic glyphs beside them")
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Comment", COMMENT)
    rng = np.random.default_rng(seed)
    with open(os.path.join(folder, SYNTHETIC_MARK), "w") as f:
        f.write(MARK_TEXT.format(seed=seed))
    written, number = 0, 0
    for split, count in zip(SPLITS, counts, strict=True):
        for a in range(1, count + 1):
            for c in range(1, characters + 1):
                number += 1
                where = os.path.join(folder, split, f"Synthetic_Alphabet_{a:02d}", f"character{c:02d}")
                os.makedirs(where, exist_ok=True)
                strokes = make_character(rng)
                for d in range(1, drawings + 1):
                    draw_glyph(strokes, rng).save(os.path.join(where, f"{number:04d}_{d:02d}.png"),
                                                  pnginfo=info)
                    written += 1
    return written


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m samcpu.tasks.synthetic_omniglot",
                                description="Write SYNTHETIC stroke-drawn glyphs in Omniglot's folder "
                                            "layout; not the Omniglot data set.")
    p.add_argument("out", help="the folder to write (made if needed)")
    p.add_argument("--background-alphabets", type=int, default=10, help="(default 10)")
    p.add_argument("--evaluation-alphabets", type=int, default=10, help="(default 10)")
    p.add_argument("--characters", type=int, default=12, help="per alphabet (default 12)")
    p.add_argument("--drawings", type=int, default=20, help="per character (default 20)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    try:
        n = write_synthetic_omniglot(a.out, (a.background_alphabets, a.evaluation_alphabets), a.characters,
                                     a.drawings, a.seed)
    except ValueError as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote SYNTHETIC Omniglot-layout glyphs (not the Omniglot data set): {n} PNG files in {a.out}")
    print(f"train on it with: samcpu train --task omniglot --data {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

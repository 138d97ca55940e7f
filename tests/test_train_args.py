"""`samcpu train`'s arguments: one line naming every bad one, the run folder's lock, the
progress bar under --minutes and the learning curve's legend."""
import fcntl
import os

import numpy as np
import pytest
import torch

from samcpu.cli import main

TINY = ["--slots", "32", "--word", "4", "--heads", "1", "--k", "2", "--hidden", "8", "--batch", "2",
        "--max-level", "3", "--index", "exact", "--threads", "1", "--lr", "3e-3", "--quiet"]


def run(argv, capsys):
    """(exit status, stderr) of ``samcpu train argv``, whether argparse exits or main returns."""
    try:
        code = main(["train", *argv])
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def unwritable_dir(tmp_path):
    """A folder this process cannot create files in (chmod, or /sys for root), or None."""
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o500)
    for candidate in (d, "/sys"):
        try:
            fd = os.open(os.path.join(candidate, ".probe"), os.O_RDWR | os.O_CREAT)
        except OSError:
            return str(candidate)
        os.close(fd)
        os.remove(os.path.join(candidate, ".probe"))
    return None


BAD = [  # (arguments, what the one line must name)
    (["--slots", "inf"], "--slots"),
    (["--slots", "2.5"], "--slots"),
    (["--slots", "0"], "--slots"),
    (["--slots", "many"], "--slots"),
    (["--checkpoint-every", "0"], "--checkpoint-every"),
    (["--checkpoint-every", "-1"], "--checkpoint-every"),
    (["--steps", "-5"], "--steps"),
    (["--steps", "0"], "--steps"),
    (["--clip", "-1"], "--clip"),
    (["--clip", "nan"], "--clip"),
    (["--momentum", "2"], "--momentum"),
    (["--momentum", "1"], "--momentum"),
    (["--momentum", "-0.1"], "--momentum"),
    (["--hidden", "0"], "--hidden"),
    (["--word", "-3"], "--word"),
    (["--heads", "1.5"], "--heads"),
    (["--batch", "1e400"], "--batch"),
    (["--lr", "0"], "--lr"),
    (["--lr", "inf"], "--lr"),
    (["--minutes", "-1"], "--minutes"),
    (["--threshold", "nan"], "--threshold"),
    (["--patience", "0"], "--patience"),
    (["--seed", "-1"], "--seed"),
    (["--seed", str(2**64)], "--seed"),
    (["--threads", "0"], "--threads"),
    (["--k", "40"], "--k"),  # more than --slots 32
    (["--heads", "40"], "--heads"),
    (["--task", "recall", "--max-level", "2"], "--max-level"),  # recall needs 3 items at least
    (["--model", "tree"], "--model"),
    (["--hops", "2"], "--hops"),  # copy has no hops
    (["--hops", "3"], "--hops"),  # not even follow's default
    (["--task", "follow", "--hops", "0"], "--hops"),
    (["--task", "follow", "--hops", "8", "--max-level", "6"], "--hops"),  # 9 items needed
]


@pytest.mark.parametrize("argv,name", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_every_bad_argument_is_one_line_naming_it(tmp_path, capsys, argv, name):
    out = tmp_path / "run"
    code, err = run(["--steps", "2", "--out", str(out), *TINY, *argv], capsys)
    assert code not in (0, None), err
    assert len(err.strip().splitlines()) == 1, err
    assert name in err and "Traceback" not in err, err
    assert not (out / "metrics.csv").exists()


def bad_outs(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    cases = [("file", str(a_file), "is a file"), ("below a file", str(a_file / "run"), "cannot make"),
             ("empty", "", "must name a folder")]
    ro = unwritable_dir(tmp_path)
    if ro is not None:
        cases.append(("unwritable", ro, "cannot write"))
    return cases, a_file


def test_bad_out_is_one_line_naming_it(tmp_path, capsys):
    cases, a_file = bad_outs(tmp_path)
    assert len(cases) == 4, "no unwritable folder to try here"
    for what, out, words in cases:
        code, err = run(["--steps", "2", "--out", out, *TINY], capsys)
        assert code == 2, (what, err)
        assert len(err.strip().splitlines()) == 1 and "--out" in err and words in err, (what, err)
    assert a_file.read_text() == "not a folder"


def test_bad_checkpoints_are_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--steps", "2", "--out", str(out), *TINY]) == 0
    good = torch.load(out / "checkpoint.pt", weights_only=True)
    capsys.readouterr()
    from samcpu.train import save_checkpoint

    rng = np.random.default_rng(0)
    without = {k: v for k, v in good.items() if k not in ("model", "args")}
    crafted = {**good["args"], "slots": "abc"}
    cases = [  # (what, how the checkpoint is damaged, what the one line says)
        ("random bytes", lambda p: p.write_bytes(rng.bytes(5000)), "damaged"),
        ("empty file", lambda p: p.write_bytes(b""), "damaged"),
        ("missing keys", lambda p: save_checkpoint(p, without), "lacks model, args"),
        ("not a dict", lambda p: save_checkpoint(p, [1, 2, 3]), "holds a list"),
        ("bad episode", lambda p: save_checkpoint(p, {**good, "episode": -3}), "episode"),
        ("crafted arguments", lambda p: save_checkpoint(p, {**good, "args": crafted}),
         "arguments that are not valid (argument --slots"),
        ("another model's weights", lambda p: save_checkpoint(p, {**good, "model": {"w": torch.zeros(3)}}),
         "does not fit"),
        ("a folder", lambda p: (p.unlink(), p.mkdir()), "no checkpoint"),
    ]
    for what, damage, words in cases:
        path = out / "checkpoint.pt"
        if path.is_dir():
            path.rmdir()
        save_checkpoint(path, good)
        damage(path)
        code, err = run(["--steps", "4", "--out", str(out), "--resume", *TINY], capsys)
        assert code == 2, (what, err)
        assert len(err.strip().splitlines()) == 1 and "--resume" in err and words in err, (what, err)
        assert "Traceback" not in err


def test_a_second_run_into_the_same_folder_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--steps", "3", "--out", str(out), *TINY]) == 0
    before = (out / "metrics.csv").read_bytes()
    from samcpu.train import LOCK_NAME

    # another process's lock, as a running `samcpu train` holds it (flock: per open file)
    with open(out / LOCK_NAME, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        for extra in ([], ["--resume"]):
            code, err = run(["--steps", "5", "--out", str(out), *extra, *TINY], capsys)
            assert code == 2 and len(err.strip().splitlines()) == 1, err
            assert f"--out {out} is in use" in err, err
            assert (out / "metrics.csv").read_bytes() == before
    # released: the folder is free again (and a finished run released its own lock)
    assert main(["train", "--steps", "5", "--out", str(out), "--resume", *TINY]) == 0
    assert main(["train", "--steps", "6", "--out", str(out), "--resume", *TINY]) == 0


def test_minutes_show_the_time_budget_in_the_progress_bar(tmp_path, capsys):
    argv = [a for a in TINY if a != "--quiet"]
    assert main(["train", "--minutes", "0.02", "--steps", "1000000", "--out", str(tmp_path), *argv]) == 0
    err = capsys.readouterr().err
    assert " of 00:01, " in err and " left, episode " in err, err[-500:]  # 0.02 minutes: 1.2 s
    assert "1000000" not in err and "1,000,000" not in err, err[-500:]
    # without --minutes: the episodes
    assert main(["train", "--steps", "3", "--out", str(tmp_path / "b"), *argv]) == 0
    assert "3/3" in capsys.readouterr().err


def test_the_legend_covers_no_curve(tmp_path):
    from samcpu.train import curve_figure

    rows = [dict(episode=i, loss=10.0 / i, bits_error=5.0 / i, max_level=1 + i // 30) for i in range(1, 200)]
    fig = curve_figure(rows, "title")
    fig.canvas.draw()
    legends = fig.legends + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    assert len(legends) == 1
    legend_box = legends[0].get_window_extent()
    for ax in fig.axes:
        assert not legend_box.overlaps(ax.get_window_extent()), (legend_box, ax.get_window_extent())
    assert legend_box.x0 >= 0 and legend_box.y0 >= 0  # inside the figure

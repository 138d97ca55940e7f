"""`samcpu train --resume` keeps every metric row, refuses another run's arguments and damaged
checkpoints, and two Ctrl-C still leave a checkpoint that resumes bit for bit."""
import csv
import itertools
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from samcpu import train
from samcpu.cli import main

TINY = ["--slots", "32", "--word", "4", "--heads", "1", "--k", "2", "--hidden", "8", "--batch", "2",
        "--max-level", "3", "--index", "exact", "--threads", "1", "--lr", "3e-3", "--quiet"]
KEY = ["episode", "level", "max_level", "loss", "bits_error"]


def metrics(out):
    with open(out / "metrics.csv") as f:
        return [[r[k] for k in KEY] for r in csv.DictReader(f)]


def weights(out):
    return train.load_checkpoint(str(out / "checkpoint.pt"))["model"]


def assert_same_run(a, b):
    """Two run folders hold the same metrics (but for the clock) and the same weights."""
    assert metrics(a) == metrics(b)
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name


def one_line(err):
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


# ------------------------------------------------------------------ 16.3: the CSV rewrite

def test_a_failed_csv_rewrite_keeps_every_row_and_the_resume_stays_exact(tmp_path, monkeypatch):
    ref, out = tmp_path / "ref", tmp_path / "run"
    assert main(["train", "--steps", "14", "--out", str(ref), *TINY]) == 0
    # a run killed at episode 12 whose last checkpoint is at 10: the resume drops rows 11-12
    assert main(["train", "--steps", "10", "--out", str(out), *TINY]) == 0
    shutil.copy(out / "checkpoint.pt", tmp_path / "at10.pt")
    assert main(["train", "--steps", "12", "--out", str(out), "--resume", *TINY]) == 0
    shutil.copy(tmp_path / "at10.pt", out / "checkpoint.pt")
    before = (out / "metrics.csv").read_bytes()
    assert len(metrics(out)) == 12

    def fail_midway(self, rows):  # the disk fills (or a kill comes) after the first row
        rows = list(rows)
        self.writerow(rows[0])
        raise OSError(28, "No space left on device (injected)")

    with monkeypatch.context() as m:
        m.setattr(csv.DictWriter, "writerows", fail_midway)
        try:
            code = main(["train", "--steps", "14", "--out", str(out), "--resume", *TINY])
        except BaseException:  # noqa: B036 - whatever escapes, the file is what is checked
            code = None
    assert code != 0
    assert (out / "metrics.csv").read_bytes() == before  # every row kept
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".samcpu")) == [
        "checkpoint.pt", "curve.png", "metrics.csv"]  # no temporary file left behind
    assert main(["train", "--steps", "14", "--out", str(out), "--resume", *TINY]) == 0
    assert_same_run(ref, out)


# ------------------------------------------------------------------ 16.4: another run's arguments

@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("base") / "run"
    assert main(["train", "--steps", "4", "--out", str(out), *TINY]) == 0
    return out


MISMATCHES = [  # (arguments given to --resume, the mismatches its one line names)
    (["--model", "dam"], ["--model dam (the checkpoint's run has sam)"]),
    (["--slots", "64"], ["--slots 64 (the checkpoint's run has 32)"]),
    (["--slots", "1e5"], ["--slots 100000 (the checkpoint's run has 32)"]),
    (["--task", "recall"], ["--task recall"]),
    (["--hidden", "16"], ["--hidden 16"]),
    (["--word", "8"], ["--word 8"]),
    (["--heads", "2"], ["--heads 2"]),
    (["--k", "1"], ["--k 1"]),
    (["--index", "hnsw"], ["--index hnsw"]),
    (["--batch", "3"], ["--batch 3"]),
    (["--seed", "1"], ["--seed 1"]),
    (["--no-curriculum"], ["--no-curriculum (the checkpoint's run has --curriculum)"]),
    (["--max-level", "2"], ["--max-level 2 (the checkpoint's run has 3)"]),  # it may only rise
    (["--patience", "7"], ["--patience 7"]),
    (["--momentum", "0.5"], ["--momentum 0.5"]),
    (["--model", "dam", "--slots", "64", "--hidden", "16", "--steps", "9"],
     ["--model dam", "--slots 64", "--hidden 16"]),
]


@pytest.mark.parametrize("given,named", MISMATCHES, ids=[" ".join(g) for g, _ in MISMATCHES])
def test_resume_refuses_another_runs_arguments(base_run, capsys, given, named):
    files = {p: p.read_bytes() for p in base_run.iterdir()}
    assert main(["train", "--out", str(base_run), "--resume", "--steps", "6", *given]) == 2
    err = one_line(capsys.readouterr().err)
    assert "--resume: arguments differ from the checkpoint's run" in err
    for words in named:
        assert words in err, (words, err)
    assert err.count("the checkpoint's run has") == len(named), err
    assert {p: p.read_bytes() for p in base_run.iterdir()} == files  # nothing touched


def test_arguments_a_resume_may_change_take_effect_and_are_recorded(tmp_path, base_run, capsys):
    same, changed, explicit = (tmp_path / n for n in ("same", "changed", "explicit"))
    for d in (same, changed, explicit):
        shutil.copytree(base_run, d)
    # left out: the checkpoint's (its --lr 3e-3, not the default 3e-4); given equal: accepted
    assert main(["train", "--out", str(same), "--resume", "--steps", "8"]) == 0
    assert main(["train", "--out", str(explicit), "--resume", "--steps", "8", *TINY]) == 0
    assert_same_run(same, explicit)
    ck = train.load_checkpoint(str(same / "checkpoint.pt"))
    assert ck["args"]["lr"] == 3e-3 and ck["optimizer"]["param_groups"][0]["lr"] == 3e-3
    assert ck["args"]["slots"] == 32 and ck["resumes"] == [dict(episode=4, changed=dict(steps=[4, 8]))]
    capsys.readouterr()
    # changed: they act from the next episode on, and the checkpoint says so
    assert main(["train", "--out", str(changed), "--resume", "--steps", "8", "--lr", "1e-2",
                 "--threshold", "0.25", "--clip", "0.5"]) == 0
    assert "resumed at episode 4 with --steps 8 (was 4), --lr 0.01 (was 0.003)" in capsys.readouterr().out
    ck = train.load_checkpoint(str(changed / "checkpoint.pt"))
    assert ck["args"]["lr"] == 1e-2 and ck["args"]["threshold"] == 0.25 and ck["args"]["clip"] == 0.5
    assert all(g["lr"] == 1e-2 for g in ck["optimizer"]["param_groups"])
    assert ck["curriculum"]["threshold"] == 0.25
    assert ck["resumes"] == [dict(episode=4, changed=dict(steps=[4, 8], lr=[3e-3, 1e-2], clip=[10.0, 0.5],
                                                          threshold=[1.0, 0.25]))]
    assert metrics(changed)[:5] == metrics(same)[:5]  # the same up to the resume...
    assert metrics(changed)[5:] != metrics(same)[5:]  # ...and trained otherwise after it
    # a second resume adds to the record
    assert main(["train", "--out", str(changed), "--resume", "--steps", "9", "--lr", "1e-3"]) == 0
    ck = train.load_checkpoint(str(changed / "checkpoint.pt"))
    assert ck["resumes"][1] == dict(episode=8, changed=dict(steps=[8, 9], lr=[1e-2, 1e-3]))
    assert ck["args"]["threshold"] == 0.25 and ck["curriculum"]["threshold"] == 0.25  # kept


# ------------------------------------------------------------------ 16.6: damaged checkpoints

def test_every_bit_flip_in_a_checkpoint_is_refused(tmp_path, base_run, capsys):
    raw = (base_run / "checkpoint.pt").read_bytes()
    path = tmp_path / "checkpoint.pt"
    rng = np.random.default_rng(7)
    # 300 bits anywhere, and every bit of the last 100 bytes (the checksum line)
    n = 8 * len(raw)
    bits = set(rng.integers(0, n, size=300).tolist()) | set(range(n - 800, n))
    for bit in sorted(bits):
        flipped = bytearray(raw)
        flipped[bit // 8] ^= 1 << (bit % 8)
        path.write_bytes(bytes(flipped))
        with pytest.raises(ValueError, match="damaged") as e:
            train.load_checkpoint(str(path))
        assert "\n" not in str(e.value)
    path.write_bytes(raw)
    assert train.load_checkpoint(str(path))["episode"] == 4
    # through the command: one line, nothing written
    out = tmp_path / "run"
    shutil.copytree(base_run, out)
    flipped = bytearray(raw)
    flipped[len(raw) // 2] ^= 4
    (out / "checkpoint.pt").write_bytes(bytes(flipped))
    assert main(["train", "--out", str(out), "--resume", "--steps", "6"]) == 2
    assert "is damaged" in one_line(capsys.readouterr().err)
    assert (out / "checkpoint.pt").read_bytes() == bytes(flipped)


def test_a_checkpoint_from_before_the_checksum_loads_with_a_warning(tmp_path, base_run, capsys):
    ck = train.load_checkpoint(str(base_run / "checkpoint.pt"))
    torch.save(ck, tmp_path / "old.pt")  # the format written before: a plain torch file
    got = train.load_checkpoint(str(tmp_path / "old.pt"))
    assert got["episode"] == ck["episode"]
    assert "has no checksum" in one_line(capsys.readouterr().err)
    # and torch.load still reads the new format (it ignores the checksum line)
    plain = torch.load(base_run / "checkpoint.pt", weights_only=True)
    for name, tensor in ck["model"].items():
        assert torch.equal(plain["model"][name], tensor)


# ------------------------------------------------------------------ 16.5: two Ctrl-C

def test_a_second_ctrl_c_mid_episode_abandons_it_and_the_resume_is_exact(tmp_path, monkeypatch, capsys):
    ref, out = tmp_path / "ref", tmp_path / "run"
    assert main(["train", "--steps", "9", "--out", str(ref), *TINY]) == 0
    real, calls = train.episode_loss, []

    def loss_then_two_ctrl_c(model, batch):
        result = real(model, batch)
        calls.append(1)
        if len(calls) == 5:  # episode 5, its batch drawn and its forward done: Ctrl-C, Ctrl-C
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)
        return result

    monkeypatch.setattr(train, "episode_loss", loss_then_two_ctrl_c)
    assert main(["train", "--steps", "9", "--out", str(out), *TINY]) == 130
    monkeypatch.undo()
    assert train.load_checkpoint(str(out / "checkpoint.pt"))["episode"] == 4
    assert "Traceback" not in capsys.readouterr().err
    assert main(["train", "--steps", "9", "--out", str(out), "--resume", *TINY]) == 0
    assert_same_run(ref, out)


def test_each_episodes_row_reaches_the_csv_at_once(tmp_path, monkeypatch):
    """A long run's progress shows between checkpoints: when an episode starts, every earlier
    episode's row is in metrics.csv already (checkpoints here only at the end)."""
    out, real, seen = tmp_path / "run", train.episode_loss, []

    def loss_after_reading_the_csv(model, batch):
        seen.append(len(metrics(out)))  # the header is written before the first episode
        return real(model, batch)

    monkeypatch.setattr(train, "episode_loss", loss_after_reading_the_csv)
    assert main(["train", "--steps", "5", "--checkpoint-every", "100", "--out", str(out), *TINY]) == 0
    assert seen == [0, 1, 2, 3, 4]


def test_a_rows_max_level_is_the_maximum_after_its_episode(tmp_path):
    """benchmarks/fig8_training.py reads the maximum an episode was drawn under from the row
    before: the episode that doubles the curriculum shows the new maximum."""
    out = tmp_path / "run"
    assert main(["train", "--steps", "6", "--threshold", "100", "--patience", "1", "--out", str(out),
                 *TINY]) == 0  # every hard episode is good enough: the maximum doubles (capped at 3)
    rows = metrics(out)
    assert (rows[0][1], rows[0][2]) == ("1", "2")  # drawn at 1, the only level; it doubled the maximum
    assert all(int(r[1]) <= int(before[2]) for before, r in itertools.pairwise(rows))
    assert rows[-1][2] == "3"


@pytest.fixture
def fig8_training(monkeypatch):
    """benchmarks/fig8_training.py as a module."""
    import os

    monkeypatch.syspath_prepend(os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
    import fig8_training

    return fig8_training


def test_fig8_training_shows_the_threshold_each_maximum_was_judged_against(tmp_path, fig8_training):
    """A threshold changed on --resume is listed among the run's changes, and each maximum
    carries the threshold in force at its last episode (the one that doubled it)."""
    out = tmp_path / "run"
    args = ["--task", "recall", "--patience", "1", "--out", str(out), *TINY]
    # every hard episode is good enough: 1 -> 2 -> 3 (the cap) in the first two episodes
    assert main(["train", "--steps", "4", "--threshold", "100", *args]) == 0
    assert main(["train", "--steps", "6", "--threshold", "50", "--resume", *args]) == 0
    run, _, change_hours = fig8_training.summarise(str(out))
    assert run["changes"] == [dict(episode=4, arg="threshold", value_from=100.0, value_to=50.0)]
    assert [(m["items"], m["threshold"]) for m in run["maxima"]] == [(1, 100.0), (2, 100.0), (3, 50.0)]
    assert len(change_hours) == 1
    # threshold_at on its own: a change at episode E takes effect from E + 1
    changes = [dict(episode=10, arg="threshold", value_from=1.0, value_to=2.0),
               dict(episode=20, arg="lr", value_from=1e-3, value_to=1e-4),
               dict(episode=30, arg="threshold", value_from=2.0, value_to=3.0)]
    assert [fig8_training.threshold_at(changes, 3.0, e) for e in (10, 11, 30, 31)] == [1.0, 2.0, 2.0, 3.0]
    assert fig8_training.threshold_at([], 7.0, 5) == 7.0


def test_fig8_training_by_quarter_of_the_levels(fig8_training):
    levels = np.array([1, 2, 2, 5, 6, 8, 8, 1])
    bits = np.array([1.0, 3.0, 5.0, 2.0, 4.0, 6.0, 8.0, 3.0])
    quarters = fig8_training.by_quarter(levels, bits, 8)
    assert [q["levels"] for q in quarters] == [[1, 2], [3, 4], [5, 6], [7, 8]]
    assert [q["episodes"] for q in quarters] == [4, 0, 2, 2]
    assert [q["bits_error"] for q in quarters] == [3.0, None, 3.0, 7.0]
    six = fig8_training.by_quarter(levels, bits, 6)
    assert [q["levels"] for q in six] == [[1, 2], [3, 3], [4, 4], [5, 6]]
    assert fig8_training.by_quarter(levels, bits, 3) == []


def test_ctrl_c_during_a_checkpoint_write_lets_it_finish(tmp_path, monkeypatch, capsys):
    import os

    ref, out = tmp_path / "ref", tmp_path / "run"
    assert main(["train", "--steps", "8", "--out", str(ref), *TINY]) == 0
    real, calls = os.replace, []

    def replace_then_two_ctrl_c(src, dst, *a, **kw):  # the new checkpoint is in place: Ctrl-C, Ctrl-C
        real(src, dst, *a, **kw)
        if str(dst).endswith("checkpoint.pt"):
            calls.append(dst)
            if len(calls) == 1:
                signal.raise_signal(signal.SIGINT)
                signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(os, "replace", replace_then_two_ctrl_c)
    assert main(["train", "--steps", "8", "--checkpoint-every", "3", "--out", str(out), *TINY]) == 130
    monkeypatch.undo()
    assert "Error" not in capsys.readouterr().err
    assert train.load_checkpoint(str(out / "checkpoint.pt"))["episode"] == 3
    assert not [p for p in out.iterdir() if p.name.endswith(".part")]
    assert main(["train", "--steps", "8", "--out", str(out), "--resume", *TINY]) == 0
    assert_same_run(ref, out)


def test_two_sigints_to_a_running_train(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--steps", "100000", "--checkpoint-every", "5", "--out", str(out), *TINY]
    proc = subprocess.Popen([sys.executable, "-m", "samcpu", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and not (out / "checkpoint.pt").exists():
            time.sleep(0.05)
        # while it runs, the folder is its own (checked below)
        second = main(["train", "--steps", "3", "--out", str(out), *TINY]), capsys.readouterr().err
        proc.send_signal(signal.SIGINT)
        time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "Error" not in stderr, stderr
    assert "interrupted" in stdout
    episode = train.load_checkpoint(str(out / "checkpoint.pt"))["episode"]
    assert episode >= 5
    ref = tmp_path / "ref"
    assert main(["train", "--steps", str(episode + 3), "--out", str(ref), *TINY]) == 0
    assert main(["train", "--steps", str(episode + 3), "--out", str(out), "--resume", *TINY]) == 0
    assert_same_run(ref, out)
    assert second[0] == 2 and "is in use by another samcpu train run" in one_line(second[1])


def test_a_resume_may_raise_the_curriculums_cap(tmp_path, base_run, capsys):
    """--max-level may rise on --resume (the curriculum goes on to harder levels with the same
    model), is recorded as a change, and is still refused where the model's shape depends on it
    or without the curriculum."""
    run = tmp_path / "raised"
    shutil.copytree(base_run, run)
    assert main(["train", "--out", str(run), "--resume", "--steps", "8", "--max-level", "6"]) == 0
    ck = train.load_checkpoint(str(run / "checkpoint.pt"))
    assert ck["args"]["max_level"] == 6 and ck["curriculum"]["max_level"] == 6
    assert ck["resumes"][-1] == dict(episode=4, changed=dict(steps=[4, 8], max_level=[3, 6]))
    assert "--max-level 6 (was 3)" in capsys.readouterr().out
    fixed = tmp_path / "fixed"
    assert main(["train", *TINY, "--no-curriculum", "--steps", "2", "--out", str(fixed)]) == 0
    capsys.readouterr()
    assert main(["train", "--out", str(fixed), "--resume", "--steps", "4", "--max-level", "6"]) == 2
    assert "--max-level 6 (the checkpoint's run has 3)" in one_line(capsys.readouterr().err)


@pytest.mark.parametrize("task, ok", [("copy", True), ("recall", True), ("follow", True), ("sort", False),
                                      ("omniglot", False), ("babi", False)])
def test_which_tasks_may_raise_their_hardest_level(task, ok):
    """sort's outputs per episode scale with its maximum, omniglot's labels are its maximum and
    babi has no levels: raising --max-level would change their episodes or their model."""
    saved = dict(task=task, max_level=8, data=None, hops=None)
    assert train._may_raise(saved, 8, 16) is ok
    if task == "follow":  # beyond what its items can number: refused (as a mismatch naming --max-level)
        assert not train._may_raise(saved, 8, 10**9)

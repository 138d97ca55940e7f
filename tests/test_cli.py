"""`samcpu train` and `samcpu info` end to end on tiny runs."""
import csv

import pytest
import torch

from samcpu.cli import main

TINY = ["--slots", "64", "--word", "8", "--heads", "2", "--k", "2", "--hidden", "32", "--batch", "4",
        "--lr", "3e-3", "--quiet", "--checkpoint-every", "10", "--threads", "1"]


def rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_train_learns_writes_csv_png_and_resumes_exactly(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["train", "--task", "copy", "--steps", "80", "--out", str(a), *TINY]) == 0
    got = rows(a / "metrics.csv")
    assert len(got) == 80 and (a / "curve.png").stat().st_size > 1000
    first = sum(float(r["loss"]) for r in got[:15]) / 15
    last = sum(float(r["loss"]) for r in got[-15:]) / 15
    assert last < 0.8 * first, (first, last)
    ck = torch.load(a / "checkpoint.pt", weights_only=True)
    assert ck["episode"] == 80
    # the same run in two pieces: identical metrics and weights
    assert main(["train", "--task", "copy", "--steps", "30", "--out", str(b), *TINY]) == 0
    assert main(["train", "--task", "copy", "--steps", "80", "--out", str(b), "--resume", *TINY]) == 0
    key = ["episode", "level", "max_level", "loss", "bits_error"]
    assert [[r[k] for k in key] for r in rows(b / "metrics.csv")] == [[r[k] for k in key] for r in got]
    ck_b = torch.load(b / "checkpoint.pt", weights_only=True)
    # the clock goes on across the resume: seconds never fall, and the checkpoint holds the total
    secs = [float(r["seconds"]) for r in rows(b / "metrics.csv")]
    assert all(x <= y for x, y in zip(secs[:-1], secs[1:], strict=True)), secs[28:32]
    assert ck_b["seconds"] >= secs[-1] > 0
    for name, tensor in ck["model"].items():
        assert torch.equal(tensor, ck_b["model"][name]), name


@pytest.mark.parametrize("task", ["recall", "sort"])
@pytest.mark.parametrize("model", ["sam", "dam"])
def test_every_task_and_model_runs(tmp_path, task, model):
    argv = ["train", "--task", task, "--model", model, "--steps", "3", "--out", str(tmp_path), *TINY]
    assert main(argv) == 0
    assert len(rows(tmp_path / "metrics.csv")) == 3


def parse(argv):
    import argparse

    from samcpu import train
    p = argparse.ArgumentParser()
    train.add_arguments(p)
    return train.resolve_args(p.parse_args(argv))[0]


@pytest.mark.parametrize("index", ["hnsw", "exact"])
def test_threads_reach_the_index(index):
    from samcpu import train
    args = parse(["--slots", "64", "--batch", "4", "--threads", "1", "--index", index])
    model, _, _ = train.build(args, train.task_of(args, seed=0))
    model.access.initial_state(4)
    if index == "hnsw":  # the index's own default is 2
        assert model.access.memory.index.num_threads == 1
    for flag in ("--threads", "--torch-threads"):
        with pytest.raises(SystemExit):
            parse([flag, "0"])


def test_resume_clock_without_csv_or_from_an_old_checkpoint(tmp_path):
    """The clock a resumed run starts from: the checkpoint's, else the last kept CSV row's."""
    a = tmp_path / "a"
    assert main(["train", "--task", "copy", "--steps", "20", "--out", str(a), *TINY]) == 0
    ck_path = a / "checkpoint.pt"
    ck = torch.load(ck_path, weights_only=True)
    assert ck["episode"] == 20 and ck["seconds"] > 0
    # an old checkpoint (no "seconds") at episode 10, with a CSV that runs on to 20
    old = {**ck, "episode": 10}
    del old["seconds"]
    torch.save(old, ck_path)
    kept = float(rows(a / "metrics.csv")[9]["seconds"])
    assert main(["train", "--task", "copy", "--steps", "12", "--out", str(a), "--resume", *TINY]) == 0
    got = rows(a / "metrics.csv")
    assert [int(r["episode"]) for r in got] == list(range(1, 13))
    assert float(got[10]["seconds"]) >= kept
    # a checkpoint whose CSV is gone: the clock is the checkpoint's
    ck = torch.load(ck_path, weights_only=True)
    (a / "metrics.csv").unlink()
    assert main(["train", "--task", "copy", "--steps", "14", "--out", str(a), "--resume", *TINY]) == 0
    got = rows(a / "metrics.csv")
    assert [int(r["episode"]) for r in got] == [13, 14]
    assert float(got[0]["seconds"]) >= ck["seconds"]


def test_resume_without_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert main(["train", "--steps", "2", "--out", str(tmp_path / "none"), "--resume", *TINY]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_info(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "numba threading layer" in out and "torch threads" in out


def test_ctrl_c_saves_a_checkpoint(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "samcpu", "train", "--steps", "100000", "--out", str(out),
                             *TINY], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (out / "metrics.csv").exists() and len((out / "metrics.csv").read_text().splitlines()) > 5:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stdout
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ck["episode"] == len(rows(out / "metrics.csv")) >= 5


def test_bench_scaling_writes_json_png_and_fitted_ratios(tmp_path, capsys):
    import json

    out = tmp_path / "bench"
    assert main(["bench", "scaling", "--slots", "100", "300", "1000", "--dam-max", "300", "--steps", "2",
                 "--repeats", "1", "--memory-steps", "3", "--out", str(out)]) == 0
    res = json.loads((out / "scaling.json").read_text())
    assert [r["n"] for r in res["sam"]] == [100, 300, 1000]
    assert "skipped" in res["dam"][2] and "dam_fit_ms_per_step" in res
    assert res["sam"][2]["dam_over_sam_ms_per_step_fitted"] is True
    assert res["sam"][0]["dam_over_sam_ms_per_step_fitted"] is False
    assert all(r["peak_mib"] is not None for r in res["sam"])
    assert (out / "scaling.png").stat().st_size > 1000
    assert "x*" in capsys.readouterr().out  # the fitted ratio is marked


@pytest.mark.parametrize("task,level", [("recall", 12), ("copy", 30), ("sort", 8)])
def test_max_level_sets_the_task_size(tmp_path, task, level):
    args = ["train", "--task", task, "--max-level", str(level), "--no-curriculum", "--steps", "2",
            "--out", str(tmp_path), *TINY]
    assert main(args) == 0
    assert {int(r["max_level"]) for r in rows(tmp_path / "metrics.csv")} == {level}


@pytest.mark.parametrize("value", ["0", "2.5", "1e400", "many"])
def test_bad_max_level_is_refused_by_name(tmp_path, capsys, value):
    with pytest.raises(SystemExit):
        main(["train", "--max-level", value, "--out", str(tmp_path), *TINY])
    assert "--max-level" in capsys.readouterr().err


def test_bench_workers_get_threads_and_failures_are_reported_not_fatal(tmp_path, capsys, monkeypatch):
    import json
    import subprocess

    from samcpu import bench

    calls = []

    def fake_run(cmd, **kw):  # a worker's protocol without starting one
        what, threads, kind, n = cmd[4:8]
        calls.append((what, threads, kind, int(n)))
        if (what, kind, n) == ("time", "dam", "300"):
            raise subprocess.CalledProcessError(-9, cmd, "", "Killed")
        if (what, kind, n) == ("memory", "sam", "100"):
            return subprocess.CompletedProcess(cmd, 0, "no number here\n", "")
        return subprocess.CompletedProcess(cmd, 0, f"{int(n) * (10 if kind == 'dam' else 1)}\n", "")

    monkeypatch.setattr(bench.subprocess, "run", fake_run)
    out = tmp_path / "bench"
    assert main(["bench", "scaling", "--slots", "100", "300", "1000", "--dam-max", "300",
                 "--torch-threads", "2", "--out", str(out)]) == 0
    assert {(w, t) for w, t, _, _ in calls} == {("memory", "1"), ("time", "2")}
    err = capsys.readouterr().err
    assert "Killed" in err and "printed no number" in err
    res = json.loads((out / "scaling.json").read_text())
    assert res["sam"][0]["failed"] == ["memory"] and res["sam"][0]["ms_per_step"] == 100e3
    assert res["dam"][1]["failed"] == ["time"] and "ms_per_step" not in res["dam"][1]
    assert "dam_fit_peak_mib" in res and "dam_fit_ms_per_step" not in res  # the row still counts for memory


def test_bench_refuses_bad_torch_threads(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "scaling", "--torch-threads", "0"])
    assert "--torch-threads" in capsys.readouterr().err

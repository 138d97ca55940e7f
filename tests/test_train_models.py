"""samcpu train with every model (sam, dam, sdnc, dnc) and the follow task: a few episodes,
a checkpoint that resumes, and the SDNC's --link-k recorded as an argument of the run."""
import argparse
import csv

import pytest
import torch

from samcpu.cli import main
from samcpu.dnc import DNC
from samcpu.sdnc import SDNC
from samcpu.train import build, task_of


def _main(argv):
    try:
        return main(["train", *argv])
    except SystemExit as e:
        return e.code


@pytest.mark.parametrize("model,slots,cls", [("sdnc", 4096, SDNC), ("dnc", 16, DNC)])
def test_sdnc_and_dnc_train_and_resume(tmp_path, model, slots, cls):
    out = tmp_path / "run"
    base = ["--task", "follow", "--model", model, "--slots", str(slots), "--hidden", "16", "--word", "6",
            "--heads", "2", "--k", "2", "--link-k", "3", "--batch", "2", "--max-level", "6", "--threads", "1",
            "--index", "exact", "--quiet", "--out", str(out)]
    assert _main(base + ["--steps", "3"]) == 0
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ck["args"]["model"] == model and ck["args"]["link_k"] == 3
    model, _, _ = build(argparse.Namespace(**ck["args"]), task_of(argparse.Namespace(**ck["args"]), 0))
    assert isinstance(model, cls)
    model.load_state_dict(ck["model"])
    assert _main(base + ["--steps", "5", "--resume"]) == 0
    with open(out / "metrics.csv") as f:
        assert [int(r["episode"]) for r in csv.DictReader(f)] == [1, 2, 3, 4, 5]


def test_resume_refuses_another_link_k(tmp_path, capsys):
    out = tmp_path / "run"
    base = ["--task", "copy", "--model", "sdnc", "--slots", "1000", "--hidden", "8", "--word", "4", "--heads",
            "1", "--k", "2", "--batch", "2", "--max-level", "3", "--threads", "1", "--index", "exact",
            "--quiet", "--out", str(out)]
    assert _main(base + ["--link-k", "2", "--steps", "2"]) == 0
    assert _main(base + ["--link-k", "4", "--steps", "3", "--resume"]) != 0
    assert "--link-k 4 (the checkpoint's run has 2)" in capsys.readouterr().err


def test_follow_hops_reach_the_task_and_define_the_run(tmp_path, capsys):
    out = tmp_path / "run"
    base = ["--task", "follow", "--model", "sam", "--slots", "1000", "--hidden", "8", "--word", "4",
            "--heads", "1", "--k", "2", "--batch", "2", "--threads", "1", "--index", "exact", "--quiet",
            "--out", str(out)]
    assert _main(base + ["--hops", "5", "--steps", "2"]) == 0
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    args = argparse.Namespace(**ck["args"])
    assert args.hops == 5
    task = task_of(args, 0)
    assert task.num_follow == 5 and int(task.sample(2).mask.sum(0)[0]) == 5  # five answer steps
    assert _main(base + ["--hops", "3", "--steps", "3", "--resume"]) != 0
    assert "--hops 3 (the checkpoint's run has 5)" in capsys.readouterr().err
    old = dict(ck["args"])
    del old["hops"]  # a checkpoint from before --hops: the 3 hops follow always had
    assert task_of(argparse.Namespace(**old), 0).num_follow == 3

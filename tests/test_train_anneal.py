"""samcpu train's learning-rate annealing (the fix for copy's relapses, benchmarks/relapse.py)."""
import argparse

import pytest
import torch

from samcpu.tasks import Curriculum
from samcpu.train import _RaisingParser, add_arguments, set_learning_rate


@pytest.mark.parametrize("passes, want", [(0, 1.0), (1, 0.5), (2, 0.25), (4, 0.0625), (9, 0.0625)])
def test_learning_rate_halves_per_pass_at_the_top_level_down_to_the_floor(passes, want):
    opt = torch.optim.RMSprop([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    curriculum = Curriculum(4)
    curriculum.solved_at_max = passes
    args = argparse.Namespace(lr=3e-4, anneal=0.5, anneal_floor=0.0625)
    set_learning_rate(opt, args, curriculum)
    assert opt.param_groups[0]["lr"] == pytest.approx(3e-4 * want, rel=1e-12)


@pytest.mark.parametrize("flag, value", [("--anneal", "0"), ("--anneal", "1.5"), ("--anneal-floor", "-1"),
                                         ("--anneal-floor", "nan")])
def test_bad_anneal_arguments_are_refused_by_name(flag, value):
    parser = _RaisingParser(add_help=False)
    add_arguments(parser)
    with pytest.raises(ValueError, match=flag):
        parser.parse_args([flag, value])
    assert parser.parse_args([flag, "1"]).__dict__[flag[2:].replace("-", "_")] == 1.0

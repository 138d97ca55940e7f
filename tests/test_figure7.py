"""`samcpu bench figure7` (samcpu.bench.figure7, the paper's Figure 7): the benchmark models, the
worker protocol end to end at tiny sizes, and the orchestration (skips, failures, rounds,
medians, ratios) with fake workers whose numbers are known. No assertion on time."""
import json
import subprocess

import pytest
import torch

from samcpu import bench
from samcpu.cli import main

#: seconds per sequence the fake workers report; the DNC's: 1e-7 N^2
SECONDS = dict(sdnc=0.02, sam=0.01)


def fake_workers(monkeypatch, fail=()):
    """Replace the worker processes by their protocol: some output, then one JSON line."""
    calls = []
    real_run = subprocess.run

    def fake_run(cmd, **kw):
        if list(cmd[1:4]) != ["-m", "samcpu.bench", "--worker"]:  # e.g. platform's uname
            return real_run(cmd, **kw)
        what, threads, kind, n = cmd[4], cmd[5], cmd[6], int(cmd[7])
        calls.append((what, threads, kind, n))
        if (what, kind, n) in fail:
            raise subprocess.CalledProcessError(-9, cmd, "", "Killed")
        if what == "memory-init":
            extra = 40 * n * n if kind == "dnc" else 2**20 * (2 if kind == "sdnc" else 1)
            out = dict(baseline=2**28, build=extra // 2, extra=extra, peak=2**28 + extra)
        else:
            s = 1e-7 * n * n if kind == "dnc" else SECONDS[kind]
            out = dict(warmup_s=s, wall_s=[s, 2 * s, s], cpu_s=[s, s, s])  # median s
        return subprocess.CompletedProcess(cmd, 0, "warming up\n" + json.dumps(out) + "\n", "")

    monkeypatch.setattr(bench.subprocess, "run", fake_run)
    return calls


@pytest.mark.parametrize("kind", ["sam", "dam", "sdnc", "dnc"])
def test_build_makes_every_benchmark_model(kind):
    y, _ = bench.build(kind, 64)(torch.zeros(3, 2, bench.IO))
    assert y.shape == (3, 2, bench.IO)


def test_build_refuses_an_unknown_model():
    with pytest.raises(ValueError, match="kind must be one of"):
        bench.build("lstm", 64)


def test_figure7_with_real_workers_writes_json_and_png(tmp_path):
    out = tmp_path / "f7"
    assert main(["bench", "figure7", "--slots", "64", "--models", "sdnc", "dnc", "--rounds", "1",
                 "--repeats", "2", "--min-ms", "0", "--steps", "2", "--memory-steps", "2",
                 "--out", str(out)]) == 0
    res = json.loads((out / "figure7.json").read_text())
    row = res["rows"][0]
    for kind in ("sdnc", "dnc"):
        r = row[kind]
        assert r["sequences"] == r["rounds"][0]["sequences"] == 2 and len(r["rounds"]) == 1
        assert r["ms_per_step"] == pytest.approx(r["rounds"][0]["ms_per_step"]) and r["ms_per_step"] > 0
        assert r["mem_peak_mib"] >= r["mem_baseline_mib"] > 0
        assert r["mem_extra_mib"] == pytest.approx(r["mem_peak_mib"] - r["mem_baseline_mib"])
    ratio = res["derived"]["per_n"][0]["dnc_over_sdnc_time"]
    assert ratio == pytest.approx(row["dnc"]["ms_per_step"] / row["sdnc"]["ms_per_step"])
    assert res["settings"]["threads"] == 1 and len(res["loadavg_start"]) == 3 and "loadavg_end" in res
    assert (out / "figure7.png").stat().st_size > 1000


def test_figure7_rounds_skips_failures_and_ratios(tmp_path, monkeypatch, capsys):
    calls = fake_workers(monkeypatch, fail={("time-seqs", "sam", 1024)})
    out = tmp_path / "f7"
    assert main(["bench", "figure7", "--slots", "2048", "1024", "4096", "1e4", "1e5", "--dnc-max", "2048",
                 "--dnc-memory-max", "4096", "--rounds", "3", "--out", str(out)]) == 0
    res = json.loads((out / "figure7.json").read_text())
    rows = {r["n"]: r for r in res["rows"]}
    assert list(rows) == [1024, 2048, 4096, 10_000, 100_000]
    assert {t for _, t, _, _ in calls} == {"1"}  # one torch and one numba thread per worker
    # the DNC: timed up to --dnc-max, its memory measured up to --dnc-memory-max, never beyond
    assert {n for w, _, k, n in calls if k == "dnc" and w == "time-seqs"} == {1024, 2048}
    assert {n for w, _, k, n in calls if k == "dnc" and w == "memory-init"} == {1024, 2048, 4096}
    assert "--dnc-max" in rows[4096]["dnc"]["time_skipped"]
    assert "--dnc-memory-max" in rows[10_000]["dnc"]["memory_skipped"]
    # three rounds of fresh workers, each round another model first; a failed worker is not retried
    timed = [(k, n) for w, _, k, n in calls if w == "time-seqs"]
    order = ["sdnc", "dnc", "sam", "dnc", "sam", "sdnc", "sam", "sdnc", "dnc"]
    assert [k for k, n in timed if n == 2048] == order
    assert timed.count(("sam", 1024)) == 1 and rows[1024]["sam"]["time_failed"]
    assert "ms_per_step" not in rows[1024]["sam"] and "sdnc_over_sam_time" not in res["derived"]["per_n"][0]
    # the median of all rounds' sequences ([s, 2s, s] each), per step (T=10)
    assert rows[2048]["sdnc"]["sequences"] == 9 and len(rows[2048]["sdnc"]["rounds"]) == 3
    assert rows[2048]["sdnc"]["rounds"][0]["p90_ms_per_step"] > rows[2048]["sdnc"]["rounds"][0]["ms_per_step"]
    assert rows[2048]["sdnc"]["ms_per_step"] == pytest.approx(1e3 * SECONDS["sdnc"] / 10)
    at = res["derived"]["at_2048"]
    assert at["dnc_over_sdnc_time"] == pytest.approx(1e-7 * 2048**2 / SECONDS["sdnc"])
    assert at["dnc_over_sdnc_memory"] == pytest.approx(40 * 2048**2 / 2**21)
    assert (at["paper_time"], at["paper_memory"]) == (440, 240)
    assert res["derived"]["sdnc_over_sam_time_max"] == pytest.approx(2.0)
    assert res["derived"]["sdnc_flatness"] == dict(n_lo=10_000, n_hi=100_000, ratio=1.0, target=1.2)
    assert res["derived"]["dnc_loglog_slope_ms_per_step"] == pytest.approx(2.0)
    printed = capsys.readouterr()
    assert "Killed" in printed.err
    assert f"N=2,048: the SDNC is {1e-7 * 2048**2 / 0.02:,.0f}x faster" in printed.out
    assert "the paper: 440x and 240x" in printed.out
    assert (out / "figure7.png").stat().st_size > 1000


def test_figure7_skips_the_dnc_by_predicted_time_and_estimated_memory(tmp_path, monkeypatch):
    calls = fake_workers(monkeypatch)
    # the DNC at N=1,024 takes 0.105 s per sequence; at 2,048 it is predicted 4x that
    assert main(["bench", "figure7", "--slots", "1024", "2048", "--models", "dnc", "--rounds", "2",
                 "--budget", "0.3", "--out", str(tmp_path / "a")]) == 0
    rows = json.loads((tmp_path / "a" / "figure7.json").read_text())["rows"]
    assert "predicted 0.419 s per sequence (quadratic in N) > --budget 0.3" in rows[1]["dnc"]["time_skipped"]
    assert "time_skipped" not in rows[0]["dnc"] and "memory_skipped" not in rows[1]["dnc"]
    assert [(w, n) for w, _, _, n in calls if w == "time-seqs"] == [("time-seqs", 1024)] * 2
    # (T + 4) x B x N^2 x 4 bytes: 59 MB for the memory pass (B=1) at N=1,024, 470 MB for the time
    calls.clear()
    assert main(["bench", "figure7", "--slots", "1024", "--models", "dnc", "--memory-limit", "5e7",
                 "--out", str(tmp_path / "b")]) == 0
    row = json.loads((tmp_path / "b" / "figure7.json").read_text())["rows"][0]
    assert "estimated 0.1 GB" in row["dnc"]["memory_skipped"]
    assert "estimated 0.5 GB" in row["dnc"]["time_skipped"]
    assert calls == []


def test_figure7_refuses_bad_options(capsys):
    for argv in (["--models", "dam"], ["--rounds", "0"], ["--slots", "1e3", "many"]):
        with pytest.raises(SystemExit):
            main(["bench", "figure7", *argv])
        assert argv[0] in capsys.readouterr().err

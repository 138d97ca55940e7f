"""The docs against the code and the JSON: docs/results.md and the README's headline table are
what benchmarks/make_results.py makes now, the headline's figures equal the JSON (read here
independently of the generator), the generator survives JSON that lacks fields, the Python
examples of the README and docs/distributed.md run, the README's command lines use options that
exist, and the docs' links resolve."""
import contextlib
import io
import json
import os
import re
import shutil
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import make_results  # noqa: E402


def read(*parts):
    with open(os.path.join(ROOT, *parts), encoding="utf-8") as f:
        return f.read()


def load(rel):
    with open(os.path.join(RESULTS, rel), encoding="utf-8") as f:
        return json.load(f)


# ---------------------------------------------------------------------------- generated files
def test_results_md_is_what_the_generator_makes():
    assert read("docs", "results.md") == make_results.results_md(), \
        "docs/results.md is out of date: run `make results`"


def test_readme_headline_is_what_the_generator_makes():
    readme = read("README.md")
    assert make_results.readme_with_headline(readme) == readme, \
        "the README's headline table is out of date: run `make results`"


def test_check_mode_reports_a_stale_doc(tmp_path):
    doc, readme = tmp_path / "results.md", tmp_path / "README.md"
    doc.write_text(make_results.results_md())
    readme.write_text(read("README.md"))
    args = ["--doc", str(doc), "--readme", str(readme)]
    assert make_results.main(["--check", *args]) == 0
    doc.write_text(doc.read_text().replace("| SAM |", "| SAM? |", 1))
    with contextlib.redirect_stderr(io.StringIO()) as err:
        assert make_results.main(["--check", *args]) == 1
    assert "results.md is out of date" in err.getvalue()
    with contextlib.redirect_stdout(io.StringIO()):
        assert make_results.main(args) == 0
    assert doc.read_text() == make_results.results_md()


# ---------------------------------------------------------------------------- headline vs JSON
def headline_cells():
    """The README's headline table: {first cell: (measured cell, conditions cell)}."""
    readme = read("README.md")
    block = readme[readme.index(make_results.HEAD_BEGIN):readme.index(make_results.HEAD_END)]
    rows = [line for line in block.splitlines() if line.startswith("| ") and not line.startswith("|  |")]
    cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in rows]
    return {c[0]: (c[1], c[2]) for c in cells}


def printed(cell):
    """The numbers of a cell as printed: [(value, decimals)]."""
    return [(float(t.replace(",", "")), len(t.split(".")[1]) if "." in t else 0)
            for t in re.findall(r"\d[\d,]*(?:\.\d+)?", cell)]


def assert_printed(cell, values):
    got = printed(cell)
    assert len(got) == len(values), (cell, values)
    for (value, digits), want in zip(got, values, strict=True):
        assert value == round(want, digits), (cell, want)


def ns_of(conditions):
    """The N values listed as 'N = a / b / c' in a conditions cell."""
    m = re.search(r"N = ([\d,]+(?: / [\d,]+)*)", conditions)
    return [int(v.replace(",", "")) for v in m.group(1).split(" / ")]


def test_headline_sam_step_time_equals_step_json():
    measured, conditions = headline_cells()["SAM training step, ms"]
    sam = sorted((r for r in load("step.json")["results"] if r["model"] == "SAM"), key=lambda r: r["n"])
    assert sam, "step.json has no SAM rows"
    cpu = [r["cpu_ms_per_step"] for r in sam if "cpu_ms_per_step" in r]
    assert_printed(measured, [r["ms_per_step"] for r in sam] + (cpu if len(cpu) == len(sam) else []))
    assert ns_of(conditions) == [r["n"] for r in sam]
    if cpu:
        assert "wall" in measured and "CPU" in measured


def test_headline_dam_at_1e6_equals_step_json():
    measured, conditions = headline_cells()["DAM / SAM, time per step at N = 1e6"]
    data = load("step.json")
    derived = data["derived"]
    n = max(int(k.rsplit("_", 1)[1]) for k in derived if re.fullmatch(r"dam_over_sam_\d+", k))
    assert_printed(measured, [derived[f"dam_over_sam_{n}"], derived[f"dam_over_sam_cpu_{n}"]])
    assert ns_of(conditions) == [n]
    assert "old DAM" not in measured
    dam = next(r for r in data["results"] if r["model"] == "DAM" and r["n"] == n)
    assert f"DAM T = {dam['steps']:,d}" in conditions
    if n == 1_000_000:
        assert derived["dam_1e6_label"] in conditions


def test_headline_sam_memory_equals_memory_json():
    measured, conditions = headline_cells()["SAM training memory per step, KiB"]
    sam = sorted((d for d in load("memory.json")["derived"] if d["model"] == "sam"), key=lambda d: d["n"])
    assert sam
    assert_printed(measured, [d["peak_per_step"] / 1024 for d in sam])
    assert ns_of(conditions) == [d["n"] for d in sam]


def test_headline_sam_peak_and_dam_ratios_equal_scaling_json():
    cells = headline_cells()
    data = load("scaling/scaling.json")
    sam = sorted(data["sam"], key=lambda r: r["n"])
    measured, conditions = cells["SAM peak training memory, MiB"]
    assert_printed(measured, [r["peak_mib"] for r in sam])
    assert ns_of(conditions) == [r["n"] for r in sam]
    old = make_results.old_dam(make_results.Source(RESULTS, "scaling/scaling.json"))
    for key, label in (("ms_per_step", "DAM / SAM, time per step"), ("peak_mib", "DAM / SAM, peak memory")):
        measured, conditions = cells[label]
        if old:  # the old, unfair DAM must not be quoted
            assert measured == make_results.PENDING
            continue
        both = [r for r in sam if f"dam_over_sam_{key}" in r and not r.get(f"dam_over_sam_{key}_fitted")]
        last = both[-1]
        want = [last[f"dam_over_sam_{key}"]]
        if key == "ms_per_step" and "dam_over_sam_cpu_ms_per_step" in last:
            want.append(last["dam_over_sam_cpu_ms_per_step"])
            assert measured.endswith("x CPU") and "x wall" in measured
        else:
            assert measured.endswith("x")
        assert_printed(measured, want)
        assert ns_of(conditions) == [last["n"]]
        fitted = [r for r in sam if r.get(f"dam_over_sam_{key}_fitted")]
        if fitted:  # values beyond the measured N are named as fitted, with their N
            assert "fitted, not measured" in conditions
            for r in fitted:
                assert f"{r[f'dam_over_sam_{key}']:,.0f}x at {r['n']:,d}" in conditions


def test_headline_copy_equals_learning_json():
    measured, conditions = headline_cells()["Copy task, SAM, bits error per sequence"]
    runs = sorted((r for r in load("learning.json")["runs"] if r["task"] == "copy" and r["model"] == "sam"),
                  key=lambda r: r["seed"])
    assert_printed(measured, [r["eval_bits_error"] for r in runs])
    assert all(r["eval_bits_error"] < 0.1 for r in runs) == ("solved" in conditions)


def test_headline_generalise_equals_generalise_json():
    measured, conditions = headline_cells()[
        "Associative recall far beyond training (Figure 8), bits error per sequence"]
    runs = [r for r in load("generalise.json")["runs"] if r["lengths"]]
    run = max(runs, key=lambda r: r["trained_max_steps"])
    assert_printed(measured, [x["bits_error"] for x in run["lengths"]])
    assert f"up to {run['trained_max_steps']:,d} steps" in conditions
    assert " / ".join(f"{x['steps']:,d}" for x in run["lengths"]) in conditions
    assert ("interim" in conditions) == (run["trained_max_steps"] < 10_000)
    if "threshold" in run:
        assert f"curriculum threshold {run['threshold']:.1f} bits" in conditions
        moved = [c for c in run["changes"] if c["arg"] == "threshold"]
        assert bool(moved) == ("set on a resume" in conditions)


def test_old_dam_is_recognised_and_a_rewritten_json_is_not(tmp_path, monkeypatch):
    results = tmp_path / "results"
    shutil.copytree(RESULTS, results, ignore=shutil.ignore_patterns("*.pt", "*.gz", "*.png"))
    path = results / "scaling" / "scaling.json"
    data = json.loads(path.read_text())
    for sam in data["sam"]:  # measured ratios at every N but the last, whatever the file held
        sam["dam_over_sam_ms_per_step_fitted"] = sam is data["sam"][-1]
    path.write_text(json.dumps(data))

    def dam_cell():
        rows = make_results.headline(make_results.load_sources(str(results)))
        return {r[0]: r[1] for r in rows}["DAM / SAM, time per step"]

    sha = make_results.Source(str(results), "scaling/scaling.json").sha256
    monkeypatch.setitem(make_results.OLD_DAM_SHA256, "scaling/scaling.json", sha)  # this very file
    assert dam_cell() == make_results.PENDING
    data["machine"] = {"git_commit": make_results.OLD_DAM_COMMITS[0] + "0" * 28}  # an old commit
    path.write_text(json.dumps(data))
    assert dam_cell() == make_results.PENDING
    data["machine"] = {"git_commit": "f" * 40, "git_dirty": False}  # a new run
    path.write_text(json.dumps(data))
    want = data["sam"][-2]["dam_over_sam_ms_per_step"]
    assert dam_cell().startswith(f"{want:,.0f}x wall")


def test_old_dam_learning_runs_are_not_shown():
    src = make_results.Source(RESULTS, "learning.json")
    text = read("docs", "results.md")
    section = text[text.index("## Learning"):]
    section = section[:section.index("\n## ", 1)]
    dam = [r for r in load("learning.json")["runs"] if r["model"] == "dam"]
    if make_results.old_dam(src) and dam:
        assert "| DAM |" not in section
        for r in dam:  # no figure of an old DAM run
            assert f"{r['eval_bits_error']:.3f} ± " not in section
        assert "pending re-run" in section
        assert "python benchmarks/learning.py --models dam --minutes 20 7 7 --jobs 2" in section
        assert "python benchmarks/learning.py --eval-only --minutes 20 7 7" in section
        assert "![" not in section  # the plots draw the old DAM's curves
    assert "DAM" not in "".join(c[0] + c[1] for k, c in headline_cells().items() if "Copy" in k)


def test_long_episode_new_layout_and_missing_labels(tmp_path):
    shutil.copytree(RESULTS, tmp_path / "results", ignore=shutil.ignore_patterns("*.pt", "*.gz", "*.png"))
    row = {"model": "trained", "load": "quiet", "short_steps": 40, "long_steps": 4104, "short_ms_median": 5.5,
           "long_ms_median": 7.25, "ratio": 1.318, "cpu_ratio": 1.25, "loadavg_before": [3.0, 1, 1],
           "loadavg_after": [4.0, 1, 1], "index": {"live": 7}}
    path = tmp_path / "results" / "long_episode.json"
    path.write_text(json.dumps({"train": {"after": {"rows": [row], "batch": 8, "slots": 1000000}}}))
    text = make_results.results_md(str(tmp_path / "results"))
    assert ("| after (the two-tier index) | trained | quiet | 40 / 4,104 | 5.50 | 7.25 | 1.32 | 1.25 "
            "| 3.0 -> 4.0 |") in text
    assert "Not measured yet (no `train.before` in the JSON)" in text
    path.write_text(json.dumps({"train": {"before": {"rows": [row]}, "after": {"rows": [row]}},
                                "profile": {"n": 3}}))
    text = make_results.results_md(str(tmp_path / "results"))
    assert "Not measured yet" not in text and "| before (the index of commit 797c908) | trained |" in text
    assert "`profile`: n=3" in text


def test_index_gaussian_sections(tmp_path):
    shutil.copytree(RESULTS, tmp_path / "results", ignore=shutil.ignore_patterns("*.pt", "*.gz", "*.png"))
    path = tmp_path / "results" / "index.json"
    data = json.loads(path.read_text())
    g = {"steps": 4104, "bare": {"mean_ms": 2.0, "median_ms": 1.5, "p90_ms": 3.0},
         "samcpu": {"n": 1000000, "mean_ms": 2.5, "median_ms": 1.0, "p90_ms": 3.5}, "bare_cpu_s": 8.0,
         "samcpu_cpu_s": 9.0, "ratio_mean": 1.25, "ratio_median": 0.667, "ratio_cpu": 1.125,
         "loadavg": [4.5, 4, 4]}
    data["gaussian"] = g
    data["gaussian_before"] = {"gaussian": {**g, "ratio_mean": 3.5}}  # a whole index.json merged in
    path.write_text(json.dumps(data))
    text = make_results.results_md(str(tmp_path / "results"))
    assert "### Gaussian writes and queries, one thread each" in text
    assert ("This tree's index (`gaussian`): samcpu / bare hnswlib 1.25 by means, 0.67 by medians, "
            "1.12") in text
    assert "The index before (`gaussian_before`): samcpu / bare hnswlib 3.50 by means" in text
    assert "| samcpu, N = 1,000,000 | 2.50 | 1.00 | 3.50 | 9.00 |" in text


def test_synthetic_results_are_labelled(tmp_path):
    shutil.copytree(RESULTS, tmp_path / "results", ignore=shutil.ignore_patterns("*.pt", "*.gz", "*.png"))
    (tmp_path / "results" / "synthetic_tasks.json").write_text(json.dumps({"babi_error": 0.5}))
    text = make_results.results_md(str(tmp_path / "results"))
    section = text[text.index("## SYNTHETIC bAbI-format and Omniglot-layout data"):]
    section = section[: section.index("\n## ")]
    assert "**SYNTHETIC data.**" in section and "NOT results on bAbI or Omniglot" in section
    assert "`babi_error`: 0.5" in section


# ---------------------------------------------------------------------------- robustness
def mutations(data, path=()):
    """(description, mutated copy) for: every dict key dropped in turn, every value made a
    string, every list emptied; over the top level and the first element of each list."""
    if isinstance(data, dict):
        for k in data:
            yield f"{path + (k,)} dropped", {a: b for a, b in data.items() if a != k}
            yield f"{path + (k,)} a string", {**data, k: "?"}
            for desc, sub in mutations(data[k], path + (k,)):
                yield desc, {**data, k: sub}
    elif isinstance(data, list) and data:
        yield f"{path} emptied", []
        for desc, sub in mutations(data[0], path + (0,)):
            yield desc, [sub, *data[1:]]


@pytest.mark.parametrize("rel", ["step.json", "memory.json", "scaling/scaling.json", "kernels.json",
                                 "index.json", "learning.json", "recall_long.json", "long_episode.json",
                                 "fig8_training.json", "generalise.json", "soak.json",
                                 "synthetic_tasks.json"])
def test_generator_survives_json_lacking_fields(tmp_path, rel):
    shutil.copytree(RESULTS, tmp_path / "results", ignore=shutil.ignore_patterns("*.pt", "*.gz", "*.png"))
    path = tmp_path / "results" / rel
    data = json.loads(path.read_text())
    count = 0
    for desc, mutated in mutations(data):
        path.write_text(json.dumps(mutated))
        text = make_results.results_md(str(tmp_path / "results"))  # must not raise
        assert "## " in text, desc
        count += 1
    assert count > 10
    for broken, says in (("{not json", "not valid JSON"), ("[1, 2]", "holds a list"), ("{}", "n/a")):
        path.write_text(broken)
        assert says in make_results.results_md(str(tmp_path / "results")), broken
    path.unlink()
    assert f"`benchmarks/results/{rel}`: not found" in make_results.results_md(str(tmp_path / "results"))


def test_a_missing_field_is_named(tmp_path):
    shutil.copytree(RESULTS, tmp_path / "results", ignore=shutil.ignore_patterns("*.pt", "*.gz", "*.png"))
    path = tmp_path / "results" / "step.json"
    data = json.loads(path.read_text())
    del data["results"][0]["fwd_ms_per_step"]
    path.write_text(json.dumps(data))
    text = make_results.results_md(str(tmp_path / "results"))
    assert "`results[0].fwd_ms_per_step`" in text


def test_unknown_json_and_fields_are_shown(tmp_path):
    shutil.copytree(RESULTS, tmp_path / "results", ignore=shutil.ignore_patterns("*.pt", "*.gz", "*.png"))
    (tmp_path / "results" / "soak.json").write_text(json.dumps(
        {"command": "python benchmarks/soak.py", "hours": 1.5, "runs": [{"n": 10, "ok": True}]}))
    (tmp_path / "results" / "new_thing.json").write_text(json.dumps({"figure": 42}))
    text = make_results.results_md(str(tmp_path / "results"))
    assert "`python benchmarks/soak.py`" in text
    assert "`hours`: 1.5" in text and "| n | ok |" in text
    assert "## Other results: new_thing.json" in text and "`figure`: 42" in text


def test_the_output_depends_on_nothing_but_the_files(tmp_path):
    shutil.copytree(RESULTS, tmp_path / "elsewhere" / "results")
    assert make_results.results_md(str(tmp_path / "elsewhere" / "results")) == make_results.results_md()


# ---------------------------------------------------------------------------- the README's examples
def code_blocks(text, lang):
    """The fenced blocks of ``text`` whose info string is ``lang`` ("" for plain fences)."""
    blocks, current = [], None
    for line in text.splitlines():
        if line.startswith("```"):
            if current is None:
                current = (line[3:].strip(), [])
            else:
                if current[0] == lang:
                    blocks.append("\n".join(current[1]) + "\n")
                current = None
        elif current is not None:
            current[1].append(line)
    return blocks


@pytest.mark.parametrize("doc, count", [("README.md", 3), ("docs/distributed.md", 1)])
def test_python_examples_run(tmp_path, monkeypatch, doc, count):
    """Every Python block runs and prints (docs/distributed.md's DDP script as one rank)."""
    import torch

    blocks = code_blocks(read(doc), "python")
    assert len(blocks) >= count
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()  # the torch example sets one thread: give it back
    try:
        for block in blocks:
            with contextlib.redirect_stdout(io.StringIO()) as out:
                exec(compile(block, doc, "exec"), {"__name__": "readme"})
            assert out.getvalue()  # each example prints what it shows
    finally:
        torch.set_num_threads(threads)


def test_readme_command_lines_use_existing_options():
    from samcpu.cli import main

    lines = [line for block in code_blocks(read("README.md"), "") for line in block.splitlines()
             if line.startswith("samcpu ")]
    assert any(line.startswith("samcpu train") for line in lines)
    for line in lines:
        words = line.split("#")[0].split()
        command = words[1]
        with contextlib.redirect_stdout(io.StringIO()) as out, pytest.raises(SystemExit):
            main([command, "--help"] if command != "bench" else ["bench", "scaling", "--help"])
        for flag in (w for w in words if w.startswith("--")):
            assert flag in out.getvalue(), f"{line}: {flag} is not an option of samcpu {command}"
    targets = re.findall(r"^make (\w+)", "\n".join(code_blocks(read("README.md"), "")), flags=re.M)
    makefile = read("Makefile")
    for target in targets:
        assert re.search(rf"^{target}:", makefile, flags=re.M), f"make {target} is not in the Makefile"


@pytest.mark.parametrize("doc", ["README.md", "docs/results.md", "docs/backward.md", "docs/hnsw.md",
                                 "docs/sdnc.md", "docs/distributed.md", "benchmarks/results/NOTES.md"])
def test_relative_links_resolve(doc):
    text = read(doc)
    base = os.path.dirname(os.path.join(ROOT, doc))
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" in target:
            continue
        assert os.path.exists(os.path.join(base, target)), f"{doc} links to {target}, which does not exist"

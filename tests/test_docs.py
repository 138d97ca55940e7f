"""The docs against the code and the JSON: docs/results.md and the README's headline table are
what benchmarks/make_results.py makes now, the headline's figures equal the JSON (read here
independently of the generator), the generator survives JSON that lacks fields, the README's
Python examples run, its command lines use options that exist, and its links resolve."""
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
    assert_printed(measured, [r["ms_per_step"] for r in sam])
    assert ns_of(conditions) == [r["n"] for r in sam]


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
        assert measured.endswith("x")
        assert_printed(measured, [both[-1][f"dam_over_sam_{key}"]])
        assert ns_of(conditions) == [both[-1]["n"]]


def test_headline_copy_equals_learning_json():
    measured, conditions = headline_cells()["Copy task, SAM, bits error per sequence"]
    runs = sorted((r for r in load("learning.json")["runs"] if r["task"] == "copy" and r["model"] == "sam"),
                  key=lambda r: r["seed"])
    assert_printed(measured, [r["eval_bits_error"] for r in runs])
    assert all(r["eval_bits_error"] < 0.1 for r in runs) == ("solved" in conditions)


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
    assert dam_cell() == f"{want:,.0f}x"


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
                                 "index.json", "learning.json", "recall_long.json", "long_episode.json"])
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


def test_readme_python_examples_run(tmp_path, monkeypatch):
    import torch

    blocks = code_blocks(read("README.md"), "python")
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()  # the torch example sets one thread: give it back
    try:
        for block in blocks:
            with contextlib.redirect_stdout(io.StringIO()) as out:
                exec(compile(block, "README.md", "exec"), {"__name__": "readme"})
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
                                 "benchmarks/results/NOTES.md"])
def test_relative_links_resolve(doc):
    text = read(doc)
    base = os.path.dirname(os.path.join(ROOT, doc))
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" in target:
            continue
        assert os.path.exists(os.path.join(base, target)), f"{doc} links to {target}, which does not exist"

"""Write docs/results.md and the README's headline table from benchmarks/results/*.json.

    python benchmarks/make_results.py            # `make results`: rewrite both
    python benchmarks/make_results.py --check    # exit 1 if either differs from what it would write

Every figure in docs/results.md and in the README's headline table comes from a JSON file that
a benchmark wrote, so a figure in the docs cannot drift from its JSON: rerun the benchmark, then
`make results`. Each table names the command that made it (the JSON's own `command` field
where it has one; otherwise the command written next to the table below).

The JSON files change as benchmarks are rewritten, so nothing here assumes a field is there:
a field the generator looks for and does not find is shown as "n/a" and listed under its
section; a file that is missing or not JSON is named; fields no table shows are listed after
the tables; a JSON file no section knows gets a section of its own. Only the standard library
is used, and the output depends only on the files (no clock, no paths of this machine).

DAM figures measured with the old `samcpu.DAM` (a dense step written to match the kernels bit
for bit, not for speed; issue 11) are never shown as results: a file recognised as old (see
`old_dam`) gets a warning, the headline's DAM ratios read "pending re-measurement", and the
learning table leaves out its DAM runs (one line says they are pending a re-run, with the
commands). step.json's "old DAM" rows, measured side by side with the new DAM, are shown as
that comparison only. Wall times are shown beside CPU times and the load average where the JSON
records them: the machine is shared, so wall time is not the figure to compare alone.
"""
import argparse
import hashlib
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
DOC = os.path.join(ROOT, "docs", "results.md")
README = os.path.join(ROOT, "README.md")
PY = ".venv/bin/python"
KIB, MIB, GIB = 1024, 1024**2, 1024**3

HEAD_BEGIN = "<!-- headline: written by `make results` (benchmarks/make_results.py) from the JSON -->"
HEAD_END = "<!-- end of headline -->"

# The JSON files measured with the old samcpu.DAM (issue 11), by the sha256 of the file as
# committed before the fair DAM, and the commits those runs recorded. A rewritten file (other
# bytes, another commit) is taken to hold the new DAM.
OLD_DAM_SHA256 = {
    "step.json": "aeb613b8ac69496398b33cbfbfbf4ceef9640db9efe7fb2adec70db9a9de124f",
    "memory.json": "474bc46b7c726151290a22ac5a0cd3770ae77fe2acb75e53697757fb792fbda2",
    "learning.json": "d64c11f2ecb01281db503f14e068a25f4361cc87eafa25f1d62c5fbca49aa406",
    "scaling/scaling.json": "9333e98c1261923a395ac66cc83bafc3d1a899a6979fcde56158d06daaeaa29e",
}
OLD_DAM_COMMITS = ("10ef5d15544c", "8901bba06d34")
PENDING = "pending re-measurement"


# ---------------------------------------------------------------------------- reading JSON
class Source:
    """One JSON file of results. Lookups never raise: a field that is not there comes back as
    None and is recorded in ``missing`` (unless ``note=False``: an optional field)."""

    def __init__(self, root, rel):
        self.rel = rel
        self.path = os.path.join(root, rel)
        self.missing, self.used = [], set()
        self.data = self.error = self.sha256 = None
        try:
            with open(self.path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            self.error = "not found (not measured yet, or not copied here)"
            return
        self.sha256 = hashlib.sha256(raw).hexdigest()
        try:
            self.data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            self.error = f"not valid JSON ({e})"

    def get(self, *keys, note=True):
        """``data[k0][k1]...``, or None if any step is missing."""
        if keys and isinstance(keys[0], str):
            self.used.add(keys[0])
        return self.at(self.data, keys, "", note)

    def at(self, obj, keys, where, note=True):
        """``obj[k0][k1]...`` where ``obj`` sits at ``where`` in the file; None if missing."""
        x, path = obj, where
        for k in keys:
            path += f"[{k}]" if isinstance(k, int) else (f".{k}" if path else str(k))
            ok = (isinstance(x, list) and -len(x) <= k < len(x)) if isinstance(k, int) else \
                (isinstance(x, dict) and k in x)
            if not ok:
                if note and path not in self.missing:
                    self.missing.append(path)
                return None
            x = x[k]
        return x

    def rows(self, *keys):
        """The list at ``keys`` as (where, dict) pairs; non-dict entries are skipped."""
        items = self.get(*keys)
        if not isinstance(items, list):
            return []
        base = ".".join(str(k) for k in keys)
        return [(f"{base}[{i}]", r) for i, r in enumerate(items) if isinstance(r, dict)]


def old_dam(src):
    """True if ``src``'s DAM figures come from the old samcpu.DAM (see OLD_DAM_*). Only the files
    named in OLD_DAM_SHA256 hold DAM figures."""
    if src.rel not in OLD_DAM_SHA256:
        return False
    if src.sha256 and src.sha256 == OLD_DAM_SHA256.get(src.rel):
        return True
    commit = src.get("machine", "git_commit", note=False)
    return isinstance(commit, str) and commit.startswith(OLD_DAM_COMMITS)


# ---------------------------------------------------------------------------- formatting
def num(x, digits=2, suffix=""):
    """``x`` with thousands separators and ``digits`` decimals; "n/a" if not a number."""
    if isinstance(x, bool) or not isinstance(x, int | float):
        return "n/a"
    return f"{x:,.{digits}f}{suffix}"


def sig(x):
    """About three significant figures, as the kernel table prints microseconds."""
    if isinstance(x, bool) or not isinstance(x, int | float):
        return "n/a"
    return num(x, 0 if abs(x) >= 100 else 1 if abs(x) >= 10 else 2)


def div(a, b):
    """a / b, or None unless both are numbers and b is not 0."""
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (a, b)) or b == 0:
        return None
    return a / b


def order(v):
    """A sort key for values that should be numbers but may not be."""
    return (0, v, "") if isinstance(v, int | float) and not isinstance(v, bool) else (1, 0, str(v))


def kib(x):
    return num(div(x, KIB), 1)


def mib(x):
    return num(div(x, MIB), 1)


def scalar(v):
    """A JSON value for a generic table cell."""
    if isinstance(v, bool) or v is None:
        return str(v).lower() if v is not None else "null"
    if isinstance(v, int):
        return f"{v:,d}"
    if isinstance(v, float):
        return f"{v:,.4g}" if abs(v) < 1e6 else f"{v:,.0f}"
    if isinstance(v, str):
        return relpath(v).replace("|", "\\|")
    return "`" + json.dumps(v, sort_keys=True, separators=(",", ":")).replace("|", "\\|") + "`"


def relpath(text):
    """Absolute paths of the machine that ran a benchmark, from the repository on."""
    return re.sub(r"/\S*?/(benchmarks|runs|docs|samcpu)(?=/|$|\s)", r"\1", text)


def table(header, rows, align=None):
    """A Markdown table; ``align`` is a string of 'l'/'r' per column (default: first left)."""
    align = align or "l" + "r" * (len(header) - 1)
    out = ["| " + " | ".join(header) + " |",
           "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out + [""]


def anchor(title):
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def commit_of(machine):
    if not isinstance(machine, dict) or not isinstance(machine.get("git_commit"), str):
        return None
    c = machine["git_commit"][:7]
    return c + (" with uncommitted changes" if machine.get("git_dirty") else "")


def provenance(src, key="machine"):
    m = src.get(key, note=False)
    if not isinstance(m, dict):
        return [f"Machine and commit: not recorded in `{src.rel}`.", ""]
    parts = []
    if commit_of(m):
        parts.append(f"commit {commit_of(m)}")
    if m.get("cpu"):
        parts.append(f"{m['cpu']}, {m.get('nproc', '?')} cores")
    if isinstance(m.get("mem_total_kib"), int):
        parts.append(f"{m['mem_total_kib'] / 1024**2:.1f} GiB RAM")
    if "numba_threads" in m:
        parts.append(f"numba threads {m['numba_threads']}")
    for k in ("torch", "torch_threads"):
        if src.get(k, note=False) is not None and key == "machine":
            parts.append(f"{k.replace('_', ' ')} {src.get(k)}")
    return [f"Recorded ({key}): " + "; ".join(parts) + ".", ""]


def settings_line(src, key="args"):
    args = src.get(key, note=False)
    if not isinstance(args, dict):
        return []
    kv = ", ".join(f"{k}={scalar(v)}" for k, v in args.items())
    return [f"Settings recorded in the JSON (`{key}`): {kv}.", ""]


def command_line(src, default):
    cmd = src.get("command", note=False)
    if isinstance(cmd, str):
        return [f"Command (recorded in `{src.rel}`): `{relpath(cmd)}`", ""]
    if default is None:
        return [f"Command: not recorded in `{src.rel}` (a `command` field would show it here).", ""]
    return [f"Command: `{default}` (writes `benchmarks/results/{src.rel}`; the JSON does not record "
            "the command, so it is written in benchmarks/make_results.py).", ""]


def loadavg_line(src):
    """The 1/5/15-minute load average the benchmark recorded before and after, if any."""
    parts = []
    for key, when in (("loadavg_start", "at the start"), ("loadavg_end", "at the end")):
        v = src.get(key, note=False)
        if isinstance(v, list) and v and all(isinstance(x, int | float) for x in v):
            parts.append(f"{' / '.join(num(x, 1) for x in v)} {when}")
    if not parts:
        return []
    cores = src.get("machine", "nproc", note=False)
    where = f"the {cores}-core machine" if isinstance(cores, int) else "the machine"
    return [f"Load average (1 / 5 / 15 minutes) on {where}: {'; '.join(parts)}.", ""]


def dam_warning(src):
    if not old_dam(src):
        return []
    return [f"> The DAM figures in `{src.rel}` were measured with the old `samcpu.DAM`, a dense step "
            "written to match the kernels bit for bit rather than for speed (issue 11): not a fair "
            "baseline. " + ("They are left out of the table below, pending a re-run with the vectorised DAM."
                            if src.rel == "learning.json" else
                            "They are kept as a record, pending re-measurement with the vectorised DAM."),
            ""]


# ---------------------------------------------------------------------------- sections
def step_section(src):
    out = []
    rows = []
    for where, r in src.rows("results"):
        label = src.at(r, ["model"], where)
        skipped = r.get("skipped")
        if label == "old DAM":
            label = "old DAM (issue 11's dense step, for comparison only)"
        if skipped:
            rows.append([label, num(src.at(r, ["n"], where), 0), "-", "-", "-", "-", "-", "-",
                         relpath(str(skipped))])
            continue
        note = "; ".join(relpath(str(r[k])) for k in ("note", "status") if k in r and r[k] != "ok")
        reps = src.at(r, ["repeats"], where)
        seq = r.get("seq_ms")
        rows.append([label, num(src.at(r, ["n"], where), 0), num(src.at(r, ["ms_per_step"], where)),
                     num(r.get("cpu_ms_per_step")),
                     num(src.at(r, ["fwd_ms_per_step"], where)), num(src.at(r, ["bwd_ms_per_step"], where)),
                     num(src.at(r, ["steps"], where), 0),
                     num(len(seq) if isinstance(seq, list) else reps, 0), note])
    out += table(["model", "N", "wall ms per step", "CPU ms per step", "forward ms", "backward ms", "T",
                  "sequences", "note"], rows, "lrrrrrrrl")
    out.append("One training step: forward + BCE loss + backward + RMSprop, median over the timed "
               "sequences, B from the settings, W=32, H=4, K=4, LSTM 100. Wall and CPU time of the same "
               "sequences: on a shared machine wall time includes waiting for a core, so compare the CPU "
               "column across rows (load average below). The project's targets: SAM "
               "t(N=1e7) / t(N=1e4) <= 1.2 and <= 3.5 ms per step at N=1e6 (the paper: 7 ms on 6 cores); "
               "the paper's DAM / SAM at N=1e6: 1,600x.")
    out.append("")
    derived = src.get("derived")
    labels = {
        "sam_ratio_1e7_1e4": ("SAM t(N=1e7) / t(N=1e4)", 2, ""),
        "sam_ms_per_step_1e6": ("SAM ms per step at N=1e6", 2, " ms"),
        "dam_ms_per_step_1e6": ("DAM ms per step at N=1e6", 0, " ms"),
        "dam_over_sam_1e6": ("DAM / SAM at N=1e6, wall time", 0, "x"),
        "dam_linearity": ("DAM's growth from its first to its last measured N, over linear", 2, "x"),
        "dam_1e6_label": ("DAM at N=1e6 is", None, ""),
    }
    for pattern, name, digits, unit in (
            (r"dam_over_sam_(\d+)", "DAM / SAM at N={}, wall time, side by side", 0, "x"),
            (r"dam_over_sam_cpu_(\d+)", "DAM / SAM at N={}, CPU time, side by side", 0, "x"),
            (r"old_dam_over_dam_(\d+)", "old DAM / new DAM at N={}, wall time", 1, "x"),
            (r"old_dam_over_dam_cpu_(\d+)", "old DAM / new DAM at N={}, CPU time", 1, "x")):
        for k in (derived if isinstance(derived, dict) else {}):
            m = re.fullmatch(pattern, k)
            if m and k not in labels:
                labels[k] = (name.format(num(int(m.group(1)), 0)), digits, unit)
    if isinstance(derived, dict):
        for k, v in derived.items():
            name, digits, unit = labels.get(k, (f"`{k}`", None, ""))
            text = num(v, digits, unit) if digits is not None else scalar(v)
            out.append(f"- {name}: {text}")
        out.append("")
    prof = src.get("profile", note=False)
    if isinstance(prof, dict) and isinstance(prof.get("top10_tottime"), list):
        out.append(f"cProfile of one sequence at N={num(prof.get('n'), 0)} "
                   f"({num(prof.get('sequence_s_profiled'), 3)} s profiled), top functions by own time:")
        out.append("")
        out += table(["function", "calls", "own s", "cumulative s"],
                     [[relpath(str(p.get("function"))).replace("|", "\\|"), num(p.get("ncalls"), 0),
                       num(p.get("tottime_s"), 4), num(p.get("cumtime_s"), 4)]
                      for p in prof["top10_tottime"] if isinstance(p, dict)])
    return out


def memory_section(src):
    out = []
    rows = []
    for where, r in src.rows("runs"):
        status = r.get("status", "n/a")
        ok = status == "ok"
        env = r.get("env")
        model = str(src.at(r, ["model"], where)) + (" (" + ", ".join(f"{k}={v}" for k, v in env.items()) + ")"
                                                    if isinstance(env, dict) else "")
        extra = src.at(r, ["extra"], where) if ok else None
        rows.append([model, num(src.at(r, ["n"], where), 0), num(src.at(r, ["steps"], where), 0),
                     mib(extra) if ok else "-", mib(r.get("peak")) if ok else "-",
                     num(r.get("forward_s"), 2) if ok else "-", num(r.get("backward_s"), 2) if ok else "-",
                     num(r["journal_nbytes"], 0) if ok and "journal_nbytes" in r else "-",
                     relpath(str(status))])
    out += table(["model", "N", "T", "peak growth MiB", "peak RSS MiB", "forward s", "backward s",
                  "journal bytes", "status"], rows, "lrrrrrrrl")
    out.append("One training pass over T steps (B=1, forward + loss + backward), each configuration "
               "in a fresh worker process; peak growth = peak RSS after backward - RSS after building "
               "the model. Extra memory per step = (peak(T_hi) - peak(T_lo)) / (T_hi - T_lo), over the "
               "two lengths named in each row (DAM at the larger N could not run T=1,000 within the "
               "memory limit):")
    out.append("")
    drows = []
    for where, d in src.rows("derived"):
        lo, hi = d.get("t_lo", 100), d.get("t_hi", 1000)
        drows.append([str(src.at(d, ["model"], where)),
                      num(src.at(d, ["n"], where), 0) if d.get("n") else "-",
                      f"{num(lo, 0)} and {num(hi, 0)}",
                      kib(src.at(d, ["peak_per_step"], where)),
                      num(d["journal_per_step_t100"], 0) if "journal_per_step_t100" in d else "-",
                      num(d["journal_per_step_t1000"], 0) if "journal_per_step_t1000" in d else "-"])
    out += table(["model", "N", "T_lo and T_hi", "extra KiB per step", "journal B/step T=100",
                  "journal B/step T=1,000"], drows, "lrrrrr")
    ratios = src.rows("dam_over_sam")
    if ratios:
        out.append("DAM against SAM, measured side by side in this run:")
        out.append("")
        out += table(["N", "T", "DAM peak growth MiB", "SAM peak growth MiB", "DAM / SAM peak growth",
                      "DAM / SAM peak RSS", "DAM / SAM extra per step"],
                     [[num(r.get("n"), 0), num(r.get("steps"), 0) if "steps" in r else "-",
                       mib(r.get("dam_extra")) if "dam_extra" in r
                       else "-", mib(r.get("sam_extra")) if "sam_extra" in r else "-",
                       num(r.get("dam_over_sam_extra"), 1, "x") if "dam_over_sam_extra" in r else "-",
                       num(r.get("dam_over_sam_peak"), 2, "x") if "dam_over_sam_peak" in r else "-",
                       num(r.get("dam_over_sam_peak_per_step"), 1, "x")
                       if "dam_over_sam_peak_per_step" in r else "-"] for _, r in ratios])
    r = src.get("sam_per_step_ratio_1e6_over_65536")
    out += [f"- SAM's extra memory per step, N=1e6 over N=65,536: {num(r, 3)} (target: flat in N; "
            "<= 48 KiB per step; the paper: 80 KiB)"]
    lstm = [d for _, d in src.rows("derived") if d.get("model") == "lstm"]
    sam = [d for _, d in src.rows("derived") if d.get("model") == "sam"]
    if lstm and sam:
        a, b = sam[-1].get("peak_per_step"), lstm[0].get("peak_per_step")
        if isinstance(a, int | float) and isinstance(b, int | float):
            out.append(f"- of which the LSTM controller alone: {num(b / KIB, 1)} KiB; the memory access adds "
                       f"{num((a - b) / KIB, 1)} KiB at N={num(sam[-1].get('n'), 0)}")
    out.append("")
    long = src.get("long", note=False)
    if isinstance(long, dict):
        out.append("### BPTT through one long sequence (`memory.py --long`)")
        out.append("")
        out += provenance(src, "long_machine")
        w = "long"
        steps, fwd = src.at(long, ["steps"], w), src.at(long, ["forward_s"], w)
        extra, peak = src.at(long, ["extra"], w), src.at(long, ["peak"], w)
        per = div(fwd, steps)
        out += [f"- {str(src.at(long, ['model'], w)).upper()} at N={num(src.at(long, ['n'], w), 0)}, B=1, "
                f"T={num(steps, 0)} steps in one graph: forward {num(fwd, 0)} s "
                f"({num(per * 1e3 if per is not None else None, 2)} ms a step), "
                f"backward {num(src.at(long, ['backward_s'], w), 0)} s",
                f"- peak RSS {num(div(peak, GIB), 2)} GiB; growth over the model's baseline "
                f"{num(div(extra, GIB), 2)} GiB, {kib(div(extra, steps))} KiB per step",
                f"- journal {num(div(long.get('journal_nbytes'), steps), 0)} bytes per step; status "
                + str(long.get("status", "n/a"))]
        v = src.get("long_peak_per_step_vs_t1000", note=False)
        if v is not None:
            out.append(f"- (peak(T={num(steps, 0)}) - peak(T=1,000)) / (T - 1,000): {kib(v)} KiB per step")
        out.append("")
        out += settings_line(src, "long_args")
    src.used.update({"long_args", "long_machine", "parent_rss_at_spawn"})
    return out


def scaling_section(src):
    out = []
    def key(r):  # N, hashable whatever the JSON holds
        n = r.get("n")
        return n if isinstance(n, int | float | str) else json.dumps(n)
    sams = {key(r): r for _, r in src.rows("sam")}
    dams = {key(r): r for _, r in src.rows("dam")}
    rows = []
    for n in sorted(set(sams) | set(dams), key=order):
        s, d = sams.get(n, {}), dams.get(n, {})

        def ratio(what, s=s):
            v = s.get(f"dam_over_sam_{what}")
            if v is None:
                return "-"
            return num(v, 0, "x") + (" fitted" if s.get(f"dam_over_sam_{what}_fitted") else "")
        ran = "skipped" not in d
        rows.append([num(n, 0), num(s.get("ms_per_step"), 2), num(s.get("cpu_ms_per_step"), 2),
                     num(s.get("peak_mib"), 1),
                     num(d.get("ms_per_step"), 1) if ran else "-",
                     num(d.get("cpu_ms_per_step"), 1) if ran else "-",
                     num(d.get("peak_mib"), 0) if ran else "-",
                     ratio("ms_per_step"), ratio("cpu_ms_per_step"), ratio("peak_mib")])
    out += table(["N", "SAM wall ms/step", "SAM CPU ms/step", "SAM peak MiB", "DAM wall ms/step",
                  "DAM CPU ms/step", "DAM peak MiB", "DAM/SAM wall time", "DAM/SAM CPU time",
                  "DAM/SAM memory"], rows)
    st = src.get("settings")
    if isinstance(st, dict):
        out.append("Time: one forward + backward step, B={}, T={}, median of the timed sequences; memory: "
                   "growth of peak RSS over the memory in use before one training pass, B={}, T={}; "
                   "W={}, H={}, K={}, LSTM {}. Each measurement in its own worker process."
                   .format(*(st.get(k, "n/a") for k in ("batch", "steps", "memory_batch", "memory_steps",
                                                          "word_size", "heads", "k", "hidden"))))
        out.append("")
    skipped = sorted({str(d["skipped"]) for d in dams.values() if "skipped" in d})
    if skipped:
        out.append("DAM not run: " + "; ".join(skipped) + ". A ratio marked \"fitted\" uses a straight "
                   "line fitted to DAM's measured points in log-log space (dashed in the plot), not a "
                   "measurement. Wall time on the shared machine includes waiting for a core; CPU time "
                   "does not.")
        out.append("")
    for key, what in (("ms_per_step", "wall time"), ("cpu_ms_per_step", "CPU time"),
                      ("peak_mib", "peak memory")):
        fit = src.get(f"dam_fit_{key}", note=False)
        if isinstance(fit, list) and len(fit) == 2:
            out.append(f"- DAM {what} fit: log y = {num(fit[0], 3)} log N {'+' if fit[1] >= 0 else '-'} "
                       f"{num(abs(fit[1]), 3)} (slope {num(fit[0], 2)})")
    out.append("")
    png = os.path.join(os.path.dirname(src.path), "scaling.png")
    if os.path.exists(png):
        out += ["![scaling](../benchmarks/results/scaling/scaling.png)", ""]
    return out


def kernels_section(src):
    out = []
    res = src.rows("results")
    ops = []
    for _, r in res:
        for k in (r.get("ops") or {}):
            if k not in ops:
                ops.append(k)
    header = ["operation"] + [f"N={num(r.get('num_slots'), 0)}" + (" (file)" if r.get("file_backed") else "")
                              for _, r in res]
    ratios = src.get("median_ratio_last_over_first")
    header.append("t(last)/t(first)")
    rows = []
    for op in ops:
        row = [op]
        for where, r in res:
            row.append(sig(src.at(r, ["ops", op, "median"], where)))
        row.append(num(ratios.get(op), 2) if isinstance(ratios, dict) else "n/a")
        rows.append(row)
    rows.append(["resident memory after the run (MiB)"]
                + [num(r["rss_current"] / MIB, 0) if isinstance(r.get("rss_current"), int | float) else "n/a"
                   for _, r in res] + [""])
    out += table(header, rows)
    st = src.get("settings")
    if isinstance(st, dict):
        out.append(f"Median {st.get('units', 'n/a')}: B={st.get('batch')}, W={st.get('word')}, "
                   f"H={st.get('heads')}, K={st.get('k')}, {st.get('dtype')}, {st.get('index')} index, "
                   f"{st.get('threads')} numba threads, {num(st.get('steps'), 0)} warm-up steps per N; "
                   f"memories of N >= {num(st.get('file_from'), 0)} are sparse files.")
        out.append("")
    written = [r.get("written_rows_per_element") for _, r in res]
    if written and all(isinstance(w, list) and w for w in written):
        lo = min(min(w) for w in written)
        hi = max(max(w) for w in written)
        out.append(f"- rows written per batch element by the end of the warm-up: {num(lo, 0)}-{num(hi, 0)} "
                   f"(so a reset zeroes about {num(sum(written[0]), 0)} rows)")
    checks = [r.get("checks") for _, r in res]
    if all(isinstance(c, dict) for c in checks) and checks:
        bad = sorted({k for c in checks for k, v in c.items() if v is not True})
        out.append("- checks after timing (state unchanged, reset zeroed the rows, a step after reset): "
                   + ("all passed" if not bad else "FAILED: " + ", ".join(bad)))
    out.append("")
    src.used.update({"benchmark", "total_seconds"})
    return out


def _section_run(src, name):
    """' Measured at commit C (T threads)' for a section that a later --skip run added to the
    file (``section_runs``: its own machine record), else ''."""
    src.used.add("section_runs")
    run = src.get("section_runs", name, note=False)
    m = run.get("machine") if isinstance(run, dict) else None
    if not isinstance(m, dict):
        return ""
    return (f" This section was measured in a run of its own, at commit {str(m.get('git_commit'))[:7]}"
            f"{' (uncommitted changes)' if m.get('git_dirty') else ''}, numba threads "
            f"{num(m.get('numba_threads'), 0)}; the machine record above is the other sections'.")


def index_section(src):
    out = []
    rec = src.rows("recall")
    if rec:
        out.append("### Recall of the rows read")
        out.append("")
        out += table(["data", "N", "steps", "recall", "last 1,000 steps", "fresh rows found"],
                     [[str(src.at(r, ["kind"], w)), num(src.at(r, ["n"], w), 0),
                       num(src.at(r, ["steps"], w), 0),
                       num(src.at(r, ["recall"], w), 4), num(src.at(r, ["recall_last_1000"], w), 4),
                       f"{num(src.at(r, ['fresh_found'], w), 0)} / {num(src.at(r, ['fresh_probes'], w), 0)}"]
                      for w, r in rec])
        out.append("Recall of the rows `SparseMemory(index=\"hnsw\")` read against the exact top-K of the "
                   "same memory contents, every step; fresh rows: a head writes v and queries v in the same "
                   "step.")
        out.append("")
    cost = src.get("cost", note=False)
    if isinstance(cost, dict):
        out.append("### Access cost per step")
        out.append("")
        bare = cost.get("bare") if isinstance(cost.get("bare"), dict) else {}
        rows = [["bare hnswlib", num(bare.get("mean_ms")), num(bare.get("median_ms")),
                 num(bare.get("p90_ms")), "", ""]]
        for i, r in enumerate(x for x in cost.get("samcpu", []) if isinstance(x, dict)):
            w = f"cost.samcpu[{i}]"
            rows.append([f"samcpu, N = {num(src.at(r, ['n'], w), 0)}", num(src.at(r, ["mean_ms"], w)),
                         num(src.at(r, ["median_ms"], w)), num(src.at(r, ["p90_ms"], w)),
                         num(r.get("rss_growth_mib"), 0), _index_counts(r.get("index"))])
        out += table(["", "mean ms", "median ms", "p90 ms", "resident growth MiB", "index at the end"], rows)
        out.append(f"- samcpu / bare hnswlib (means) at N = 1e6: {num(src.get('cost', 'ratio_mean_1e6'), 2)} "
                   "(target <= 1.5)")
        out.append(f"- samcpu cost, largest N over smallest N: {num(src.get('cost', 'ratio_n'), 2)}")
        out.append("")
    for key, title in (("gaussian", "this tree's index"), ("gaussian_before", "the index before")):
        g = src.get(key, note=False)
        if isinstance(g, dict) and isinstance(g.get("gaussian"), dict):  # a whole index.json merged in
            g = g["gaussian"]
        if not isinstance(g, dict):
            continue
        if key == "gaussian":
            out.append("### Gaussian writes and queries, one thread each")
            out.append("")
        bare = g.get("bare") if isinstance(g.get("bare"), dict) else {}
        sam = g.get("samcpu") if isinstance(g.get("samcpu"), dict) else {}
        out += table(["", "mean ms", "median ms", "p90 ms", "CPU s", "index at the end"],
                     [["bare hnswlib", num(bare.get("mean_ms")), num(bare.get("median_ms")),
                       num(bare.get("p90_ms")),
                       num(g.get("bare_cpu_s")), ""],
                      [f"samcpu, N = {num(sam.get('n'), 0)}", num(sam.get("mean_ms")),
                       num(sam.get("median_ms")),
                       num(sam.get("p90_ms")), num(g.get("samcpu_cpu_s")), _index_counts(sam.get("index"))]])
        out.append(f"{title[0].upper() + title[1:]} (`{key}`): samcpu / bare hnswlib "
                   f"{num(g.get('ratio_mean'), 2)} "
                   f"by means, {num(g.get('ratio_median'), 2)} by medians, "
                   f"{num(g.get('ratio_cpu'), 2)} by CPU "
                   f"time; one episode of {num(g.get('steps'), 0)} steps, B = 8, H = 4, K = 4, W = 32, "
                   f"Gaussian writes and queries; load average {_loads(g.get('loadavg'), None)} at the end.")
        out.append("")
    scale = src.get("scale", note=False)
    if isinstance(scale, dict):
        out.append("### Bare hnswlib's recall against graph size")
        out.append("")
        rows = [[num(r.get("n"), 0), str(r.get("queries")), num(r.get("ef"), 0), num(r.get("recall_at_4"), 3),
                 num(r.get("top1"), 3), num(r.get("knn_us_4_vectors"), 0)]
                for run in scale.get("runs", []) if isinstance(run, dict)
                for r in run.get("rows", []) if isinstance(r, dict)]
        out += table(["rows in the graph", "queries", "ef", "recall@4", "top-1 found",
                      "µs per knn_query of 4"], rows)
        out.append("hnswlib alone, no samcpu: Gaussian rows (W = 32, cosine, M = 16, ef_construction = 32, "
                   "one thread); queries are noisy copies of stored rows (copy) or fresh Gaussian vectors "
                   "(fresh); 12 candidates re-scored exactly, as SparseMemory does. At a fixed ef, recall "
                   "falls as the graph grows; a wider beam buys it back at a price in time. Load average "
                   "at the end "
                   f"{_loads(scale.get('loadavg'), None)}." + _section_run(src, "scale"))
        out.append("")
    full = src.get("full", note=False)
    if isinstance(full, dict):
        w = "full"
        out.append("### A full memory")
        out.append("")
        out.append(f"N = {num(src.at(full, ['n'], w), 0)} rows per batch element, every row written "
                   f"({num(src.at(full, ['written_rows'], w), 0)} rows in all, filled in "
                   f"{num(full.get('fill_steps'), 0)} steps), the LRA recycling: "
                   f"mean {num(src.at(full, ['mean_ms'], w))} ms per step, median "
                   f"{num(src.at(full, ['median_ms'], w))}, p90 {num(full.get('p90_ms'))}; index at the end: "
                   f"{_index_counts(full.get('index'))}; resident growth "
                   f"{num(full.get('rss_growth_mib'), 0)} MiB.")
        out.append("")
    mem = src.get("memory", note=False)
    if isinstance(mem, dict):
        out.append("### Index memory against rows written and N")
        out.append("")
        out += table(["N", "rows written", "resident growth MiB", "bytes per row"],
                     [[num(src.at(r, ["n"], w), 0), num(src.at(r, ["rows_written"], w), 0),
                       num(src.at(r, ["rss_growth_mib"], w), 1), num(src.at(r, ["bytes_per_row"], w), 0)]
                      for w, r in src.rows("memory", "runs")])
        g4, g100 = mem.get("growth_ratio_rows_4x"), mem.get("growth_ratio_n_100x")
        if isinstance(g4, list):
            out.append("- growth for 4x the rows: " + ", ".join(num(v, 2, "x") for v in g4))
        if isinstance(g100, list):
            out.append("- growth for 100x the slots: " + ", ".join(num(v, 2, "x") for v in g100))
        out.append("")
    return out


def _index_counts(ix):
    if not isinstance(ix, dict):
        return "n/a"
    return ", ".join(f"{k} {num(v, 0)}" for k, v in ix.items())


def learning_section(src):
    out = []
    slots = src.get("slots")
    slots = slots if isinstance(slots, dict) else {}
    rows = []
    runs = src.rows("runs")
    old = old_dam(src)
    hidden = [r for _, r in runs if old and str(r.get("model")).lower() == "dam"]
    runs = [(w, r) for w, r in runs if not any(r is h for h in hidden)]
    ablation = any("eval_bits_error_content_only" in r for _, r in runs)
    stem = os.path.splitext(os.path.basename(src.rel))[0]
    for w, r in runs:
        model = str(src.at(r, ["model"], w))
        rows.append([str(src.at(r, ["task"], w)), model.upper(), num(slots.get(model), 0),
                     num(src.at(r, ["seed"], w), 0), num(src.at(r, ["episodes"], w), 0),
                     num(src.at(r, ["train_minutes"], w), 1),
                     f"{num(src.at(r, ['final_max_level'], w), 0)}/{num(src.at(r, ['max_level'], w), 0)}",
                     f"{num(src.at(r, ['eval_bits_error'], w), 3)} ± "
                     f"{num(src.at(r, ['eval_bits_error_se'], w), 3)}",
                     num(r.get("eval_sequences"), 0), str(r.get("status", "n/a"))])
        if ablation:
            rows[-1].insert(8, "n/a" if "eval_bits_error_content_only" not in r else
                            f"{num(r.get('eval_bits_error_content_only'), 3)} ± "
                            f"{num(r.get('eval_bits_error_content_only_se'), 3)}")
    head = ["task", "model", "N", "seed", "episodes", "minutes", "curriculum level",
            "bits error per sequence, fresh data", "sequences", "status"]
    if ablation:
        head.insert(8, "the same, content reads only")
    out += table(head, rows, "llrrrrrr" + "r" * ablation + "rl")
    out.append("Each run on one core with the same wall-time budget per task; fresh data: the final model "
               "on sequences at the task's full difficulty, drawn with a seed no run saw (mean ± standard "
               "error)." + (" Content reads only: the SDNC's read-mode ablation, the trained model "
                            "evaluated with every head reading by content alone, as SAM does "
                            "(modes (0, 1, 0))."
                            if ablation else ""))
    out.append("")
    if hidden:
        which = "; ".join(
            f"{t} seeds " + ", ".join(num(v, 0) for v in sorted({h.get("seed") for h in hidden
                                                                 if h.get("task") == t}, key=order))
            for t in dict.fromkeys(h.get("task") for h in hidden))
        out.append(f"**DAM: pending re-run.** The {len(hidden)} DAM learning runs in `{src.rel}` ({which}, "
                   f"N={num(slots.get('dam'), 0)}) were trained with the old `samcpu.DAM` "
                   "and predate the fair, "
                   "vectorised DAM (issue 11), so they are not shown. To re-run them: move "
                   "`runs/learning/*_dam_s*` aside; `python benchmarks/learning.py --models dam "
                   "--minutes 20 7 7 "
                   "--jobs 2`; then `python benchmarks/learning.py --eval-only --minutes 20 7 7`.")
        out.append("")
    groups = {}
    for _, r in runs:
        v = r.get("eval_bits_error")
        if isinstance(v, int | float):
            groups.setdefault((r.get("task"), r.get("model")), []).append(v)
    for (task, model), vs in groups.items():
        out.append(f"- {task}, {str(model).upper()}: mean over {len(vs)} seeds "
                   f"{num(sum(vs) / len(vs), 2)} bits per sequence")
    out.append("")
    pngs = [t for t in dict.fromkeys(r.get("task") for _, r in runs)
            if os.path.exists(os.path.join(os.path.dirname(src.path), f"{stem}_{t}.png"))]
    if hidden and pngs:
        out.append("The plots (" + ", ".join(f"`benchmarks/results/{stem}_{t}.png`" for t in pngs)
                   + ") also draw the old DAM's curves, so they are not shown until the DAM runs are redone.")
    for task in pngs if not hidden else []:
        out.append(f"![{task}](../benchmarks/results/{stem}_{task}.png)")
    out.append("")
    src.used.add("wall_minutes")
    return out


def recall_long_section(src):
    out = []
    runs = src.rows("runs")
    out += table(["seed", "minutes", "episodes", "curriculum maximum (items / steps)", "median ms per step"],
                 [[num(src.at(r, ["seed"], w), 0), num(src.at(r, ["train_minutes"], w), 1),
                   num(src.at(r, ["episodes"], w), 0),
                   f"{num(src.at(r, ['final_max_level'], w), 0)} / "
                   f"{num(src.at(r, ['final_max_steps'], w), 0)}",
                   num(src.at(r, ["median_ms_per_step"], w), 2)] for w, r in runs])
    for key, title in (("eval", "fresh data"), ("eval_reads_zeroed", "fresh data, reads zeroed")):
        levels = []
        for _, r in runs:
            for e in r.get(key) or []:
                if isinstance(e, dict) and (e.get("items"), e.get("steps")) not in levels:
                    levels.append((e.get("items"), e.get("steps")))
        if not levels:
            continue
        header = [f"seed ({title})"] + [f"{num(i, 0)} items ({num(s, 0)} steps)" for i, s in levels]
        rows = []
        for _, r in runs:
            by = {(e.get("items"), e.get("steps")): e for e in r.get(key) or [] if isinstance(e, dict)}
            rows.append([num(r.get("seed"), 0)] + [
                f"{num(by[lv].get('bits_error'), 2)} ± {num(by[lv].get('bits_error_se'), 2)}"
                if lv in by else "-" for lv in levels])
        out += table(header, rows)
    seqs = {e.get("sequences") for _, r in runs for e in (r.get("eval") or []) if isinstance(e, dict)}
    out.append("Bits error per sequence on fresh data (mean ± standard error over "
               f"{', '.join(map(str, sorted(seqs, key=str)))} sequences per size, a seed no run saw; "
               "18 target bits per sequence, so 9 is chance). "
               "Reads zeroed: the controller is given zeros instead of its reads.")
    out.append("")
    out.append("### Curriculum milestones (minutes of training when the maximum first reached a level)")
    out.append("")
    levels = []
    for _, r in runs:
        for m in r.get("milestones") or []:
            if isinstance(m, dict) and m.get("level") not in levels:
                levels.append(m.get("level"))
    levels.sort(key=order)
    rows = []
    for level in levels:
        row = [num(level, 0)]
        for _, r in runs:
            m = next((m for m in r.get("milestones") or []
                      if isinstance(m, dict) and m.get("level") == level), None)
            row.append(f"{num(m.get('minutes'), 1)} (episode {num(m.get('episode'), 0)})" if m else "-")
        rows.append(row)
    out += table(["items"] + [f"seed {num(r.get('seed'), 0)}" for _, r in runs], rows)
    out.append("### Training time per step by episode length (from each run's CSV)")
    out.append("")
    lengths = []
    for _, r in runs:
        for g in r.get("ms_by_length") or []:
            if isinstance(g, dict):
                key = (tuple(g.get("items") or []), tuple(g.get("steps") or []))
                if key not in lengths:
                    lengths.append(key)
    rows = []
    for items, steps in lengths:
        row = ["-".join(num(v, 0) for v in dict.fromkeys(items)),
               "-".join(num(v, 0) for v in dict.fromkeys(steps))]
        for _, r in runs:
            g = next((g for g in r.get("ms_by_length") or [] if isinstance(g, dict)
                      and (tuple(g.get("items") or []), tuple(g.get("steps") or [])) == (items, steps)), None)
            row.append(f"{num(g.get('median_ms_per_step'), 2)} ({num(g.get('episodes'), 0)})" if g else "-")
        rows.append(row)
    out += table(["items", "steps"]
                 + [f"seed {num(r.get('seed'), 0)}: median ms (episodes)" for _, r in runs], rows)
    folder = os.path.join(os.path.dirname(src.path), "recall_long")
    if os.path.isdir(folder):
        files = sorted(f"{d}/{f}" for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d))
                       for f in os.listdir(os.path.join(folder, d)))
        out.append("Kept so that the runs can go on: " + ", ".join(f"`recall_long/{f}`" for f in files)
                   + " (copy a seed's files back to `runs/recall_long_sS/`, gunzip the CSV, then "
                   f"`{PY} benchmarks/recall_long.py --seeds S --resume --minutes M`).")
        out.append("")
    if os.path.exists(os.path.join(os.path.dirname(src.path), "recall_long.png")):
        out += ["![recall_long](../benchmarks/results/recall_long.png)", ""]
    src.used.add("wall_minutes")
    return out


LONG_LABELS = {"before": "before (the index of commit 797c908)", "after": "after (the two-tier index)",
               "efc32": "two-tier, ef_construction 32, ef 48",
               "int16": "two-tier, hot tier scored from an int16 copy (SIMD)",
               "int16_rerun": "int16 re-run (15:02 UTC; the next row ran right after it)",
               "together": "int16 + elements near their flush point flush together (reverted)",
               "lazy": "the same + invalidations deferred (15:45)",
               "lazy_again": "the same again (15:52; the next row ran right after it)",
               "int16_again": "int16 re-run again",
               "lazy_only": "int16 + invalidations deferred: the index now (16:20)",
               "int16_third": "int16 re-run a third time (16:28; the next row ran right after it)",
               "lazy_only_again": "the index now, again"}
#: labels a run may lack without a "not measured yet" line
LONG_OPTIONAL = tuple(label for label in LONG_LABELS if label not in ("before", "after"))


def _loads(before, after):
    v = [x[0] for x in (before, after) if isinstance(x, list) and x and isinstance(x[0], int | float)]
    return " -> ".join(num(x, 1) for x in v) or "n/a"


def long_episode_section(src):
    if src.get("chunks", note=False) is not None and src.get("train", note=False) is None:
        return long_episode_chunks(src)  # the layout before the before/after comparison
    train = src.get("train")
    return long_episode_train(src, train if isinstance(train, dict) else {})


def long_episode_train(src, train):
    out = []
    rows = []
    missing = [k for k in LONG_LABELS if k not in train and k not in LONG_OPTIONAL]
    settings = []
    for label in list(LONG_LABELS) + [k for k in train if k not in LONG_LABELS]:
        part = train.get(label)
        if not isinstance(part, dict):
            continue
        w = f"train.{label}"
        args = part.get("args") if isinstance(part.get("args"), dict) else {}
        settings.append(f"{label}: commit {commit_of(part.get('machine')) or 'n/a'}, "
                        f"B={num(part.get('batch'), 0)}, "
                        f"N={num(part.get('slots'), 0)}, {num(args.get('threads'), 0)} thread(s), "
                        f"{num(args.get('repeats'), 0)} repeats, checkpoint "
                        f"`{relpath(str(args.get('checkpoint')))}`")
        for i, r in enumerate(x for x in (src.at(part, ["rows"], w) or []) if isinstance(x, dict)):
            rw = f"{w}.rows[{i}]"
            rows.append([LONG_LABELS.get(label, label), str(src.at(r, ["model"], rw)),
                         str(src.at(r, ["load"], rw)),
                         f"{num(r.get('short_steps'), 0)} / {num(r.get('long_steps'), 0)}",
                         num(src.at(r, ["short_ms_median"], rw)), num(src.at(r, ["long_ms_median"], rw)),
                         num(src.at(r, ["ratio"], rw)), num(src.at(r, ["cpu_ratio"], rw)),
                         _loads(r.get("loadavg_before"), r.get("loadavg_after")),
                         _index_counts(r.get("index"))])
    if rows:
        out += table(["index", "model", "machine", "steps short / long", "short ms/step", "long ms/step",
                      "long / short, wall", "long / short, CPU", "load average before -> after",
                      "index at the end of the long episode"], rows, "lllrrrrrll")
        out.append("Training steps (forward and backward through the whole episode, full BPTT, no "
                   "optimiser update) of associative recall (the recall_long checkpoint's weights, or an "
                   "untrained model of the same shape), per step: the median of 40 short episodes against "
                   "one long episode, median over the repeats; one torch thread, --threads numba and index "
                   "threads; \"busy\": beside one busy-loop process, \"quiet\": without it (the machine "
                   "was shared with other work in both: see the load). Issue 14's targets: long / short "
                   "<= 1.5 quiet and <= 2 busy.")
        out.append("")
    for line in settings:
        out.append(f"- {line}")
    if settings:
        out.append("")
    if missing:
        out.append("Not measured yet (no `train." + "`, `train.".join(missing) + "` in the JSON): "
                   + "; ".join(LONG_LABELS[k] for k in missing) + ".")
        out.append("")
    prof = src.get("profile", note=False)
    if isinstance(prof, dict):
        out.append("`profile`: " + ", ".join(f"{k}={scalar(v)}" for k, v in prof.items()
                                             if not isinstance(v, dict | list)))
        for k, v in prof.items():
            if isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
                cols = list(dict.fromkeys(c for x in v for c in x))
                out += ["", f"`profile.{k}`:", ""] + table(
                    cols, [[scalar(x[c]) if c in x else "" for c in cols] for x in v], "l" * len(cols))
            elif isinstance(v, dict):
                out += ["", f"- `profile.{k}`: {scalar(v)}"]
        out.append("")
    return out


def long_episode_chunks(src):
    out = []
    chunks = src.rows("chunks")
    out += table(["steps", "ms per step"],
                 [[f"{num(src.at(c, ['first_step'], w), 0)}-"
                   f"{num((c.get('first_step') or 0) + (c.get('steps') or 0) - 1, 0)}",
                   num(src.at(c, ["ms_per_step"], w), 2)] for w, c in chunks])
    args = src.get("args") or {}
    out.append(f"One episode of {num(src.get('steps'), 0)} steps (associative recall, "
               f"{num(args.get('items') if isinstance(args, dict) else None, 0)} items), forward only, "
               f"B={num(src.get('batch'), 0)}, the checkpoint `{relpath(str(args.get('checkpoint')))}`, "
               f"{num(args.get('threads'), 0)} thread(s).")
    out.append("")
    top = src.rows("last_chunk_top")
    if top:
        out.append(f"cProfile of the last chunk ({num(src.get('last_chunk_profiled_s'), 2)} s), "
                   "top functions by own time:")
        out.append("")
        out += table(["function", "own s", "share"],
                     [[relpath(str(src.at(t, ["function"], w))).replace("|", "\\|"),
                       num(src.at(t, ["own_s"], w), 3), num(div(src.at(t, ["share"], w), 0.01), 1, "%")]
                      for w, t in top])
    return out


def generic_section(src):
    """A JSON file no section knows: its top-level fields."""
    intro = next((text for prefix, _, text in EXTRA if src.rel.startswith(prefix)), None)
    out = [intro, ""] if intro else []
    stem = os.path.splitext(src.path)[0]
    for png in (stem + ".png", stem + "_zoom.png"):
        if intro and os.path.exists(png):
            folder = os.path.dirname(src.rel)
            out += [f"![{src.rel}](../benchmarks/results/"
                    f"{folder + '/' if folder else ''}{os.path.basename(png)})", ""]
    return out


def _changes_cell(r):
    changes = [f"--{str(c.get('arg')).replace('_', '-')} {scalar(c.get('value_from'))} -> "
               f"{scalar(c.get('value_to'))} ({num(c.get('episode'), 0)})"
               for c in r.get("changes") or [] if isinstance(c, dict)]
    return "; ".join(changes) or "none"


def fig8_training_section(src):
    """fig8_training.json: how far each Figure 8 run's curriculum has climbed, read from its CSV."""
    runs = src.rows("runs")
    rows = [[f"`{os.path.basename(str(r.get('folder')))}`", num(r.get("seed"), 0), num(r.get("episodes"), 0),
             num(r.get("hours"), 1),
             f"{num(src.at(r, ['max_items'], w), 0)} / {num(src.at(r, ['max_steps'], w), 0)}",
             scalar(r.get("lr")), _changes_cell(r)] for w, r in runs]
    out = table(["run", "seed", "episodes", "training hours", "curriculum maximum (items / steps)",
                 "--lr (now; before annealing)", "changed on a resume (at episode)"], rows, "lrrrrrl")
    for w, r in runs:
        out += [f"`{r.get('folder')}`: every maximum the curriculum held (it doubles once the mean bits "
                f"error of the last {num(r.get('patience'), 0)} hard episodes is under the threshold):", ""]
        rows = [[num(m.get(k), 1 if k.endswith("hours") else 0)
                 for k in ("items", "steps", "reached_episode", "reached_hours", "episodes", "hard_episodes",
                           "hours")]
                + [f"{num(m.get('hard_bits_error_last'), 2)} ({num(m.get('hard_last_count'), 0)})",
                   num(m.get("threshold"), 1),
                   " / ".join(num(q.get("bits_error"), 2) for q in m.get("by_quarter") or []
                              if isinstance(q, dict)) or "n/a"]
                for m in src.at(r, ["maxima"], w) or [] if isinstance(m, dict)]
        out += table(["items", "steps", "from episode", "at hour", "episodes", "hard episodes", "hours",
                      "last hard episodes: mean bits error (count)", "threshold",
                      "all episodes there, by quarter of the levels: mean bits error"], rows)
    out += ["Hard episodes: those at the top quarter of the levels [1, maximum], which alone decide a "
            "doubling since commit f81faf4 (2026-11-30). A maximum left with a mean over its threshold "
            "(column) was left under the rule before it, the mean over every level drawn; a run saved "
            "before it (no `hard_fraction` in its checkpoint) counts every episode as hard. The last row of "
            "a run is the maximum it holds now, its threshold the one in force now. Hours: the CSV's "
            "training seconds, one core.", ""]
    png = os.path.splitext(src.path)[0] + ".png"
    if os.path.exists(png):
        out += [f"![fig8_training](../benchmarks/results/{os.path.basename(png)})", ""]
    return out


def generalise_section(src):
    """generalise.json: trained recall runs forward on far longer episodes (the paper's Figure 8)."""
    rows = []
    for _, r in src.rows("runs"):
        for x in r.get("lengths") or []:
            ms = x.get("ms_per_step") or []
            rows.append([f"seed {num(r.get('seed'), 0)}", num(r.get("episodes"), 0),
                         num(r.get("trained_max_steps"), 0), num(x.get("steps"), 0),
                         f"{num(x.get('bits_error'), 2)} ± {num(x.get('bits_error_se'), 2)}",
                         num(x.get("chance"), 1), num(x.get("sequences"), 0),
                         num(sorted(ms)[len(ms) // 2], 2) if ms else "n/a",
                         num(sum(x.get("wall_s") or []) / 60, 1), num(x.get("rows_written"), 0)])
    out = table(["run", "episodes", "trained up to (steps)", "episode length (steps)",
                 "bits error per sequence", "chance", "sequences", "ms/step", "minutes", "rows written"],
                rows, "lrrrrrrrrr")
    out += ["Forward only, the memory's journal dropped after every chunk of steps; fresh episodes drawn "
            "with a seed no training run saw. Chance: half the answer's bits.", ""]
    for _, r in src.rows("runs"):
        if "threshold" in r or "changes" in r:
            out += [f"`{r.get('folder')}` (seed {num(r.get('seed'), 0)}, {num(r.get('episodes'), 0)} "
                    f"episodes): curriculum threshold {num(r.get('threshold'), 1)} bits; changed on a resume "
                    f"(at episode): {_changes_cell(r)}.", ""]
    trained = [r.get("trained_max_steps") for _, r in src.rows("runs")]
    if trained and all(isinstance(t, int | float) and t < 10_000 for t in trained):
        longest = num(max(trained), 0)
        out += ["Interim: no run here was trained on episodes of 10,000 steps (the paper's Figure 8 and "
                f"issue 14 ask for that); the longest curriculum maximum is {longest} steps.", ""]
    return out


def _synthetic_run(src, where, r):
    return [str(src.at(r, ["model"], where)).upper(), num(r.get("seed"), 0), num(r.get("episodes"), 0),
            num(r.get("train_minutes"), 1), num(r.get("median_ms_per_step"), 2)]


def synthetic_section(src):
    """synthetic_tasks.json: bAbI-format error per task and Omniglot-layout one-shot error by
    presentation, per model and seed, on SYNTHETIC data."""
    out = ["**SYNTHETIC data.** Every figure in this section is on data made by samcpu's generators "
           "(stories in the bAbI file format, stroke-drawn glyphs in Omniglot's folder layout): they are NOT "
           "results on bAbI or Omniglot.", ""]
    src.used.add("SYNTHETIC")
    if src.get("args", "eval_only", note=False):
        out += [f"Trained by: `{relpath(str(src.get('train_command')))}`; the command above collected "
                "the runs' `eval.json` (written by `samcpu train` at the end of each run).", ""]
    src.used.update({"synthetic", "wall_minutes", "data", "train_command"})
    runs = src.rows("runs")
    babi = [(w, r) for w, r in runs if r.get("task") == "babi"]
    majority = src.get("babi_majority_answer_test_error", note=False)
    if babi:
        tasks = sorted({t for _, r in babi for t in (r.get("eval") or {}).get("per_task", {})}, key=int)
        rows = []
        for w, r in babi:
            e = r.get("eval") or {}
            per = e.get("per_task", {})
            rows.append(_synthetic_run(src, w, r)
                        + [num(100 * per[t]["error"], 1) if t in per else "n/a" for t in tasks]
                        + [num(100 * e["mean_error"], 1) if "mean_error" in e else "n/a",
                           num(e.get("failed_tasks"), 0), str(r.get("status", "n/a"))])
        if isinstance(majority, dict):
            rows.append(["most frequent training answer", "", "", "", ""]
                        + [num(100 * majority[t], 1) if t in majority else "n/a" for t in tasks]
                        + [num(100 * sum(majority.get(t, 0) for t in tasks) / max(1, len(tasks)), 1), "", ""])
        out += ["bAbI-format stories (tasks " + ", ".join(tasks) + "), one question a story: test error "
                "per task (%), one model trained on all of them.", ""]
        out += table(["model", "seed", "episodes", "minutes", "ms/step"] + [f"task {t}" for t in tasks]
                     + ["mean", "failed (> 5%)", "status"], rows, "l" + "r" * (len(tasks) + 6) + "l")
        means = {}
        for _, r in babi:
            v = (r.get("eval") or {}).get("mean_error")
            if isinstance(v, int | float):
                means.setdefault(str(r.get("model")).upper(), []).append(100 * v)
        out += [f"- {m}: mean test error over {len(v)} seeds {num(sum(v) / len(v), 1)}%"
                for m, v in means.items()]
        out.append("")
    omni = [(w, r) for w, r in runs if r.get("task") == "omniglot"]
    if omni:
        width = max(len((r.get("eval") or {}).get("error_by_presentation", [])) for _, r in omni)
        rows = []
        for w, r in omni:
            e = r.get("eval") or {}
            by = e.get("error_by_presentation", [])
            rows.append(_synthetic_run(src, w, r) + [num(e.get("characters"), 0)]
                        + [num(100 * by[i], 0) if i < len(by) else "" for i in range(width)]
                        + [num(100 * e["error_seen"], 1) if "error_seen" in e else "n/a",
                           str(r.get("status", "n/a"))])
        out += ["Omniglot-layout glyphs, one-shot episodes (n-way labels, each character shown 10 times): "
                "test error (%) by presentation of the character, at the curriculum's level the run had "
                "reached (characters per episode); 'seen' counts the 2nd presentation on (chance: 1 - "
                "1/characters).",
                ""]
        out += table(["model", "seed", "episodes", "minutes", "ms/step", "characters"]
                     + [str(i + 1) for i in range(width)] + ["seen", "status"], rows,
                     "l" + "r" * (width + 6) + "l")
    stem = os.path.dirname(src.path)
    for task in ("babi", "omniglot"):
        if os.path.exists(os.path.join(stem, f"synthetic_{task}.png")):
            out.append(f"![SYNTHETIC {task}](../benchmarks/results/synthetic_{task}.png)")
    out.append("")
    return out


def figure7_section(src):
    st = src.get("settings") or {}
    models = [m for m in st.get("models", ["sdnc", "dnc", "sam"]) if isinstance(m, str)]
    d = src.get("derived") or {}
    per_n = {p.get("n"): p for p in d.get("per_n", []) if isinstance(p, dict)}
    src.used.update({"paper_2048", "elapsed_s", "other_benchmarks_start", "other_benchmarks_end", "profile"})
    rows = []
    for _, r in src.rows("rows"):
        p = per_n.get(r.get("n"), {})
        cells = [num(r.get("n"), 0)]
        for key, digits in (("ms_per_step", 2), ("cpu_ms_per_step", 2), ("mem_extra_mib", 1)):
            cells += [num(r[m][key], digits) if isinstance(r.get(m), dict) and key in r[m] else "-"
                      for m in models]
        cells += [num(p[k], 0 if p[k] >= 10 else 2, "x") if k in p else "-"
                  for k in ("dnc_over_sdnc_time", "dnc_over_sdnc_memory", "sdnc_over_sam_time")]
        rows.append(cells)
    up = [m.upper() for m in models]
    out = table(["N"] + [f"{m} wall ms/step" for m in up] + [f"{m} CPU ms/step" for m in up]
                + [f"{m} MiB" for m in up] + ["DNC/SDNC time", "DNC/SDNC memory", "SDNC/SAM time"], rows)
    out.append("Time: one forward + backward step (with the RMSprop step), B={}, T={}, median of all timed "
               "sequences of {} rounds of fresh worker processes (models interleaved per N); memory: "
               "peak RSS growth from before building the model (initialisation included) through one "
               "training sequence, B=1, T={}, one fresh worker each. LSTM {}, W={}, {} heads, K={}, "
               "K_L={}; the DNC: samcpu.DNC (vectorised torch), {} read heads, 1 write head. {} torch, "
               "numba and index thread(s) per worker.".format(*(st.get(k, "n/a") for k in (
                   "batch", "steps", "rounds", "memory_steps", "hidden", "word_size", "heads", "k", "link_k",
                   "dnc_read_heads", "threads"))))
    out.append("")
    at = d.get("at_2048")
    if isinstance(at, dict) and "dnc_over_sdnc_time" in at:
        out.append(f"At N=2,048 the SDNC is {num(at['dnc_over_sdnc_time'], 0)}x faster than the DNC "
                   f"({num(at.get('dnc_over_sdnc_cpu'), 0)}x in CPU time) and uses "
                   f"{num(at.get('dnc_over_sdnc_memory'), 0)}x less memory (whole-process peak RSS: "
                   f"{num(at.get('dnc_over_sdnc_peak_rss'), 1)}x); the paper: 440x and 240x.")
    f = d.get("sdnc_flatness")
    if isinstance(f, dict):
        out.append(f"SDNC t(N={num(f.get('n_hi'), 0)})/t(N=10,000): {num(f.get('ratio'), 3)} "
                   "(target <= 1.2).")
    if "sdnc_over_sam_time_max" in d:
        out.append(f"SDNC / SAM time per step: median {num(d['sdnc_over_sam_time_median'], 2)}, "
                   f"max {num(d['sdnc_over_sam_time_max'], 2)} over N (target <= 2).")
    skipped = sorted({str(r["dnc"][k]) for _, r in src.rows("rows") if isinstance(r.get("dnc"), dict)
                      for k in ("time_skipped", "memory_skipped") if k in r["dnc"]})
    if skipped:
        out.append("DNC not run: " + "; ".join(skipped) + ".")
    out.append("")
    png = os.path.join(os.path.dirname(src.path), "figure7.png")
    if os.path.exists(png):
        out += ["![figure7](../benchmarks/results/figure7.png)", ""]
    return out


def distributed_section(src):
    """benchmarks/distributed.py: throughput of the two layouts, the all-reduce against the
    step, and the projection (computed, not measured)."""
    out = []
    tp = src.get("throughput")
    tp = tp if isinstance(tp, dict) else {}
    runs = [r for r in (tp.get("runs") or []) if isinstance(r, dict)]
    if runs:
        out += table(["layout", "episodes per second", "seconds timed", "episodes timed",
                      "loss (mean of the last 50)", "load average before -> after"],
                     [[f"{num(r.get('ranks'), 0)} process(es) x {num(r.get('threads_per_rank'), 0)} "
                       "thread(s)", num(r.get("episodes_per_s")), num(r.get("seconds")),
                       num(r.get("episodes_timed"), 0), num(r.get("final_loss_mean_last50")),
                       _loads(r.get("load_before"), r.get("load_after"))] for r in runs], "lrrrrl")
        med = tp.get("median_episodes_per_s") if isinstance(tp.get("median_episodes_per_s"), dict) else {}
        one, two = med.get("1x2"), med.get("2x1")
        if isinstance(one, int | float) and isinstance(two, int | float):
            out.append(f"Medians: 1 process x 2 threads {num(one)}, torchrun 2 ranks x 1 thread {num(two)} "
                       f"episodes per second ({num(two / one)}x); {tp.get('note', '')}.")
            out.append("")
    ar = src.get("allreduce")
    if isinstance(ar, dict):
        by = ar.get("local_step_ms_by_sequences")
        by = by if isinstance(by, dict) else {}
        out.append(f"Gradient all-reduce (gloo, {num(ar.get('ranks'), 0)} ranks, {num(ar.get('params'), 0)} "
                   f"values): {num(ar.get('allreduce_ms'))} ms, against a DDP step of "
                   f"{num(ar.get('ddp_step_ms'))} ms "
                   f"({num(100 * ar['allreduce_share_of_ddp_step'], 1)}% of it) "
                   f"and a step without DDP of {num(ar.get('local_step_ms'))} ms at "
                   f"{num(ar.get('sequences_per_rank'), 0)} sequences per rank"
                   if isinstance(ar.get("allreduce_share_of_ddp_step"), int | float) else
                   f"Gradient all-reduce: {num(ar.get('allreduce_ms'))} ms")
        if by:
            out[-1] += "; the step without DDP at " + ", ".join(
                f"{k} sequence(s) {num(v)} ms" for k, v in by.items()) + "."
        out.append("")
    proj = src.get("projection")
    if isinstance(proj, dict) and isinstance(proj.get("rows"), list):
        rows = [r for r in proj["rows"] if isinstance(r, dict)]
        def part(r, key, field, digits):
            return num((r.get(key) if isinstance(r.get(key), dict) else {}).get(field), digits)

        out += table(["network", "ranks", "all-reduce ms", "fixed batch: sequences per rank",
                      "fixed batch: sequences/s", "growing batch: global batch",
                      "growing batch: sequences/s"],
                     [[str(r.get("network")), num(r.get("ranks"), 0), num(r.get("allreduce_ms")),
                       part(r, "fixed_batch", "sequences_per_rank", 0),
                       part(r, "fixed_batch", "sequences_per_s", 1),
                       part(r, "growing_batch", "global_batch", 0),
                       part(r, "growing_batch", "sequences_per_s", 1)] for r in rows], "lrrrrrr")
        out.append(f"Projection, {proj.get('note', 'computed, not measured')}.")
        out.append("")
    loads = _loads(src.get("load_start", note=False), src.get("load_end", note=False))
    out.append(f"Load average at the start -> at the end: {loads}. How it works and fails: "
               "[distributed.md](distributed.md).")
    out.append("")
    return out


def _soak_steady(src, wins):
    """One line on the windows after every row of the memory has a graph label (the LRA ring
    recycling rows): the ranges of step time, recall and RSS there, and the rebuilds."""
    n = src.get("config", "num_slots", note=False)
    full = [r for _, r in wins if isinstance(r.get("index"), dict) and isinstance(n, int)
            and r["index"].get("live", 0) + r["index"].get("buffered", 0) >= n]
    full = full[1:]  # windows that began with every row written (the first one ended so)
    if len(full) < 2:
        return []

    def span(key, digits, scale=1.0):
        vals = [r[key] / scale for r in full if isinstance(r.get(key), int | float)]
        return f"{num(min(vals), digits)}-{num(max(vals), digits)}" if vals else "n/a"

    rebuilds = [r["index"].get("rebuilds", 0) for r in full]
    longest = max((r["max_us"] for r in full if isinstance(r.get("max_us"), int | float)), default=None)
    if longest is None:
        how = "each one long step: the window's mean and p99 jump, its median does not"
    elif longest > 1e6:
        how = f"each one long step, the longest {num(longest / 1e6, 1)} s"
    else:
        how = f"spread over flushes: no step took longer than {num(longest / 1e3, 0)} ms"
    return [f"Once every row was written (the {len(full)} windows ending at steps {num(full[0]['step'], 0)}-"
            f"{num(full[-1]['step'], 0)}, the "
            f"LRA ring recycling rows): median µs per step {span('median_us', 0)}, CPU median "
            f"{span('cpu_median_us', 0)}, recall {span('recall', 3)}, resident {span('rss_bytes', 0, 2**20)} "
            f"MiB; {num(rebuilds[-1] - rebuilds[0], 0)} graph rebuilds in that span ({how}).", ""]


def soak_section(src):
    out = []
    wins = src.rows("windows")
    out += table(["steps", "median µs per step", "p99 µs", "mean µs", "CPU median µs", "CPU mean µs", "load",
                  "recall", "resident MiB", "journal MiB", "index"],
                 [[num(src.at(r, ["step"], w), 0), num(src.at(r, ["median_us"], w), 0),
                   num(r.get("p99_us"), 0), num(r.get("mean_us"), 0), num(r.get("cpu_median_us"), 0),
                   num(r.get("cpu_mean_us"), 0), num(r.get("load_avg"), 1),
                   num(src.at(r, ["recall"], w), 3), mib(r.get("rss_bytes")), mib(r.get("journal_bytes")),
                   _index_counts(r.get("index"))] for w, r in wins])
    cfg = src.get("config", note=False)
    if isinstance(cfg, dict):
        out.append("SparseMemory stepped with random inputs: "
                   + ", ".join(f"{k}={scalar(v)}" for k, v in cfg.items())
                   + "; each row: the window of steps ending there.")
        out.append("")
    saves = src.rows("saves")
    if saves:
        out += table(["at step", "save s", "load s", "MiB", "loaded equal"],
                     [[num(r.get("step"), 0), num(r.get("save_s")), num(r.get("load_s")), mib(r.get("bytes")),
                       scalar(r.get("equal"))] for _, r in saves])
    out += _soak_steady(src, wins)
    summ = src.get("summary")
    if isinstance(summ, dict):
        out.append("Summary: " + ", ".join(f"{k}={scalar(v)}" for k, v in summ.items()) + ".")
        out.append("")
    src.used.update({"benchmark"})
    return out


# (file, title, renderer, command when the JSON does not record one)
SECTIONS = [
    ("step.json", "Training step time", step_section, f"{PY} benchmarks/step.py"),
    ("memory.json", "Training memory", memory_section,
     f"{PY} benchmarks/memory.py; then {PY} benchmarks/memory.py --long"),
    ("scaling/scaling.json", "Figure 1: time and memory against N", scaling_section,
     f"{PY} -m samcpu bench scaling --dam-max 1e5 --out benchmarks/results/scaling"),
    ("figure7.json", "Figure 7: the SDNC against the DNC", figure7_section,
     f"{PY} benchmarks/figure7.py --profile 1e6"),
    ("kernels.json", "Kernel timings", kernels_section, f"{PY} benchmarks/kernels.py"),
    ("index.json", "The HNSW index", index_section, f"{PY} benchmarks/index.py"),
    ("learning.json", "Learning: the paper's Figure 2", learning_section,
     f"{PY} benchmarks/learning.py --minutes 20 7 7"),
    ("learning_sdnc.json", "Learning: the Sparse DNC against SAM and the DNC", learning_section,
     f"{PY} benchmarks/learning.py --models sdnc sam dnc --tasks follow follow8 copy recall "
     "--minutes 7 7 7 7 --name learning_sdnc"),
    ("recall_long.json", "Associative recall past 4,000 steps", recall_long_section,
     f"{PY} benchmarks/recall_long.py"),
    ("long_episode.json", "Step time along one long episode", long_episode_section,
     f"{PY} benchmarks/long_episode.py"),
    ("soak.json", "Soak: SparseMemory over many steps", soak_section, None),
    ("soak_rebuild/before.json", "Soak at N = 200,000: graph rebuilt in one step (before, 85c2934)",
     soak_section, None),
    ("soak_rebuild/after.json", "Soak at N = 200,000: rebuild spread over flushes, 8,192 hot rows (after)",
     soak_section, None),
    ("soak_rebuild/after_rerun.json",
     "Soak at N = 200,000: the after index (369eaa6) again, beside the int16 run", soak_section, None),
    ("soak_rebuild/int16.json", "Soak at N = 200,000: hot tier scored from an int16 copy (2265474)",
     soak_section, None),
    ("distributed.json", "Training on more than one process (torchrun)", distributed_section,
     f"{PY} benchmarks/distributed.py --repeats 4"),
    ("fig8_training.json", "Figure 8: the training runs' curriculum", fig8_training_section,
     f"{PY} benchmarks/fig8_training.py"),
    ("generalise.json", "Figure 8: associative recall on episodes far longer than trained",
     generalise_section, f"{PY} benchmarks/generalise.py"),
    ("synthetic_tasks.json", "SYNTHETIC bAbI-format and Omniglot-layout data: learning runs",
     synthetic_section,
     f"{PY} benchmarks/synthetic_tasks.py --models sdnc dam --minutes 15 15"),
]

# Folders and files whose JSON may appear (other helpers' runs): a title and a line said first.
EXTRA = [
    ("relapse/", "Copy relapse: ", "Runs of `benchmarks/relapse.py` (the copy task's relapses after it was "
     "solved, and the change against them). Each JSON's fields are listed as recorded."),
]


def other_fields(src):
    """Top-level fields no table used, so that nothing a benchmark records goes unseen."""
    rest = [k for k in src.data if k not in src.used and k not in ("machine", "command", "args", "torch",
                                                                   "torch_threads")] \
        if isinstance(src.data, dict) else []
    if not isinstance(src.data, dict):
        return [f"`{src.rel}` holds a {type(src.data).__name__}, not an object:", "",
                "```", json.dumps(src.data, indent=1, sort_keys=True), "```", ""]
    if not rest:
        return []
    out = [f"Other fields in `{src.rel}`:", ""]
    for k in rest:
        v = src.data[k]
        if isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            cols = list(dict.fromkeys(c for x in v for c in x))
            out += [f"`{k}`:", ""] + table(cols, [[scalar(x[c]) if c in x else "" for c in cols] for x in v],
                                           "l" * len(cols))
        elif isinstance(v, dict) and all(not isinstance(x, dict | list) for x in v.values()):
            out += [f"- `{k}`: " + ", ".join(f"{a}={scalar(b)}" for a, b in v.items())]
        else:
            out += [f"- `{k}`: {scalar(v)}"]
    return out + [""]


def render_section(src, title, render, command):
    out = [f"## {title}", ""]
    if src.error:
        return out + [f"`benchmarks/results/{src.rel}`: {src.error}.", ""]
    out += command_line(src, command)
    out += dam_warning(src)
    out += loadavg_line(src)
    src.used.update({"loadavg_start", "loadavg_end"})
    try:
        body = render(src) if isinstance(src.data, dict) else []
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, ZeroDivisionError) as e:
        src.used.clear()
        body = [f"**`{src.rel}` is not laid out as benchmarks/make_results.py expects ({type(e).__name__}: "
                f"{e}); its fields are listed below. Update the generator.**", ""]
    out += body
    out += provenance(src)
    out += settings_line(src)
    out += other_fields(src)
    if src.missing:
        out += [f"Not in `{src.rel}` (shown as n/a): " + ", ".join(f"`{m}`" for m in src.missing) + ".", ""]
    return out


# ---------------------------------------------------------------------------- the headline
def headline(sources, readme=True):
    """The README's headline rows: [what, measured, conditions with a link]. A row whose JSON is
    laid out in a way the generator does not know reads n/a, with the reason."""
    titles = {rel: title for rel, title, _, _ in SECTIONS}

    def link(rel):
        page = "docs/results.md" if readme else ""
        return f"[{'details' if readme else 'below'}]({page}#{anchor(titles[rel])})"

    rows = []
    for label, rel, make in HEADLINE:
        if rel in sources and sources[rel].data is None:
            rows.append([label, "not measured yet", f"`benchmarks/results/{rel}` is not there ({link(rel)})"])
            continue
        try:
            measured, conditions = make(sources[rel])
        except (KeyError, IndexError, TypeError, ValueError, AttributeError, ZeroDivisionError) as e:
            measured, conditions = f"n/a ({rel}: {type(e).__name__})", "the generator could not read it"
        rows.append([label, measured, f"{conditions} ({link(rel)})"])
    return rows


def _numbers(src, key, digits, scale=1):
    return " / ".join(num(r[key] / scale, digits) for r in src) or "n/a"


def _ns(rows):
    return "N = " + " / ".join(num(r.get("n"), 0) for r in rows)


def _load(src):
    """", load average a -> b" from the 1-minute load averages a run recorded, or ""."""
    v = [src.get(k, note=False) for k in ("loadavg_start", "loadavg_end")]
    v = [x[0] for x in v if isinstance(x, list) and x and isinstance(x[0], int | float)]
    if not v:
        return ""
    return ", load average " + " -> ".join(num(x, 1) for x in v) + \
        f" on {num(src.get('machine', 'nproc', note=False), 0)} cores" * isinstance(
            src.get("machine", "nproc", note=False), int)


def head_step(step):
    sam = sorted((r for _, r in step.rows("results") if r.get("model") == "SAM"
                  and isinstance(r.get("ms_per_step"), int | float)), key=lambda r: order(r.get("n")))
    cpu = all(isinstance(r.get("cpu_ms_per_step"), int | float) for r in sam) and sam
    return (_numbers(sam, "ms_per_step", 2) + (" wall; " + _numbers(sam, "cpu_ms_per_step", 2) + " CPU"
                                               if cpu else ""),
            f"{_ns(sam)}; forward + backward + RMSprop, B = {num(step.get('args', 'batch', note=False), 0)}, "
            f"T = {num(step.get('args', 'steps', note=False), 0)}, "
            f"threads = {num(step.get('args', 'threads', note=False), 0)}"
            f"{_load(step)}")


def head_step_dam(step):
    if old_dam(step):
        return PENDING, "the old `samcpu.DAM` was not a fair baseline (issue 11)"
    d = step.get("derived")
    if not isinstance(d, dict):
        return "n/a", "no derived figures in step.json"
    ns = sorted({int(m.group(1)) for k in d if (m := re.fullmatch(r"dam_over_sam_(\d+)", k))
                 and isinstance(d[k], int | float)})
    if not ns:
        return "n/a", "no N at which both were measured"
    n = ns[-1]
    wall, cpu = d[f"dam_over_sam_{n}"], d.get(f"dam_over_sam_cpu_{n}")
    dam = next((r for _, r in step.rows("results") if r.get("model") == "DAM" and r.get("n") == n), {})
    label = d.get("dam_1e6_label") if n == 1_000_000 else "measured"
    return (num(wall, 0, "x wall") + (", " + num(cpu, 0, "x CPU") if isinstance(cpu, int | float) else ""),
            f"N = {num(n, 0)}, {label if isinstance(label, str) else 'n/a'}, side by side in one run, "
            f"B = {num(step.get('args', 'batch', note=False), 0)}, threads = "
            f"{num(step.get('args', 'threads', note=False), 0)}, DAM T = "
            f"{num(dam.get('steps'), 0)}{_load(step)}")


def head_memory(memory):
    sam = sorted((d for _, d in memory.rows("derived") if d.get("model") == "sam"
                  and isinstance(d.get("peak_per_step"), int | float)), key=lambda d: order(d.get("n")))
    spans = {(d.get("t_lo", 100), d.get("t_hi", 1000)) for d in sam}
    lo, hi = spans.pop() if len(spans) == 1 else (None, None)
    span = (f"(peak(T = {num(hi, 0)}) - peak(T = {num(lo, 0)})) / {num(div(hi, 1) - lo, 0)}"
            if div(hi, 1) is not None and div(lo, 1) is not None
            else "(peak(T_hi) - peak(T_lo)) / (T_hi - T_lo)")
    return (_numbers(sam, "peak_per_step", 1, KIB),
            f"{_ns(sam)}; B = 1, {span}")


def _scaling_sam(scaling):
    return sorted((r for _, r in scaling.rows("sam") if isinstance(r.get("peak_mib"), int | float)),
                  key=lambda r: order(r.get("n")))


def head_peak(scaling):
    sam = _scaling_sam(scaling)
    return (_numbers(sam, "peak_mib", 1), f"{_ns(sam)}; B = 1, T = "
            f"{num(scaling.get('settings', 'memory_steps', note=False), 0)}, growth of peak RSS")


def head_dam(key):
    def make(scaling):
        if old_dam(scaling):
            return PENDING, ("the old `samcpu.DAM` was not a fair baseline (issue 11); `make results` fills "
                             "this in from the new measurement")
        sam = sorted((r for _, r in scaling.rows("sam")
                      if isinstance(r.get(f"dam_over_sam_{key}"), int | float)),
                     key=lambda r: order(r.get("n")))
        both = [r for r in sam if not r.get(f"dam_over_sam_{key}_fitted")]
        if not both:
            return "n/a", "no N at which both were measured"
        last = both[-1]
        measured = num(last[f"dam_over_sam_{key}"], 0, "x")
        if key == "ms_per_step":
            measured += " wall"
            cpu = last.get("dam_over_sam_cpu_ms_per_step")
            if isinstance(cpu, int | float) and not last.get("dam_over_sam_cpu_ms_per_step_fitted"):
                measured += ", " + num(cpu, 0, "x CPU")
        fitted = [r for r in sam if r.get(f"dam_over_sam_{key}_fitted")]
        beyond = ("; beyond it DAM is fitted, not measured (" + ", ".join(
            f"{num(r[f'dam_over_sam_{key}'], 0, 'x')} at {num(r.get('n'), 0)}" for r in fitted) + ")"
                  if fitted else "")
        st = scaling.get("settings", note=False)
        st = st if isinstance(st, dict) else {}
        how = (f"B = {num(st.get('batch'), 0)}, T = {num(st.get('steps'), 0)}, torch threads = "
               f"{num(st.get('torch_threads'), 0)}{_load(scaling)}" if key == "ms_per_step" else
               f"B = {num(st.get('memory_batch'), 0)}, T = {num(st.get('memory_steps'), 0)}, "
               "growth of peak RSS")
        return (measured,
                f"{_ns([last])}, the largest N at which both ran, measured in one run, {how}{beyond}")
    return make


def _span(values):
    """``lo-hi`` of numbers shown without decimals, or one number when they show alike."""
    lo, hi = num(min(values), 0), num(max(values), 0)
    return lo if lo == hi else f"{lo}-{hi}"


def head_copy(learning):
    copy = sorted((r for _, r in learning.rows("runs") if r.get("task") == "copy" and r.get("model") == "sam"
                   and isinstance(r.get("eval_bits_error"), int | float)), key=lambda r: order(r.get("seed")))
    minutes = [r.get("train_minutes") for r in copy if isinstance(r.get("train_minutes"), int | float)]
    solved = bool(copy) and all(r["eval_bits_error"] < 0.1 for r in copy)
    return (_numbers(copy, "eval_bits_error", 3),
            "seeds " + " / ".join(num(r.get("seed"), 0) for r in copy)
            + f"; N = {num(learning.get('slots', 'sam', note=False), 0)}, fresh data at full difficulty, "
            + (_span(minutes) + " minutes of training on one core each; " if minutes else "")
            + ("solved: every seed < 0.1" if solved else "not solved in every seed (target < 0.1)"))


def head_follow(learning):
    """The link task: fresh-data bits error, mean over seeds, per model, on follow with 8 hops."""
    runs = [r for _, r in learning.rows("runs") if r.get("task") == "follow8"
            and isinstance(r.get("eval_bits_error"), int | float)]
    models = list(dict.fromkeys(r["model"] for r in runs))
    if not models:
        raise ValueError("no follow8 runs")
    by = {m: [r["eval_bits_error"] for r in runs if r["model"] == m] for m in models}
    minutes = [r.get("train_minutes") for r in runs if isinstance(r.get("train_minutes"), int | float)]
    slots = learning.get("slots", note=False) or {}
    return (" / ".join(f"{m.upper()} {num(sum(v) / len(v), 2)}" for m, v in by.items()),
            "follow with 8 hops (the link task: after a cue, the 8 items that followed it); mean over "
            + " / ".join(str(len(v)) for v in by.values()) + " seeds; N = "
            + " / ".join(num(slots.get(m), 0) for m in models)
            + ", fresh data at full difficulty, chance 32; "
            + (_span(minutes) + " minutes of training on one core each" if minutes else ""))


def head_generalise(src):
    """The paper's Figure 8: the run trained on the longest episodes, forward on far longer ones."""
    runs = [r for _, r in src.rows("runs")
            if r.get("lengths") and isinstance(r.get("trained_max_steps"), int | float)]
    if not runs:
        raise ValueError("no run with lengths")
    r = max(runs, key=lambda r: r["trained_max_steps"])
    xs = r["lengths"]
    ms = [sorted(x["ms_per_step"])[len(x["ms_per_step"]) // 2] for x in xs]
    threshold = f", curriculum threshold {num(r['threshold'], 1)} bits" if "threshold" in r else ""
    moved = [c for c in r.get("changes") or [] if isinstance(c, dict) and c.get("arg") == "threshold"]
    if threshold and moved:
        threshold += (f" (set on a resume at episode {num(moved[-1].get('episode'), 0)}; it was "
                      f"{num(moved[0].get('value_from'), 1)} before)")
    return (" / ".join(num(x["bits_error"], 2) for x in xs),
            f"fresh episodes of {' / '.join(num(x['steps'], 0) for x in xs)} steps, "
            f"{' / '.join(num(x['sequences'], 0) for x in xs)} sequences, chance {num(xs[0]['chance'], 0)}; "
            f"SAM, N = {num(r.get('slots'), 0)}, seed {num(r.get('seed'), 0)}, trained on episodes of up to "
            f"{num(r['trained_max_steps'], 0)} steps{threshold}; "
            f"forward, ms per step (median of the batches): {' / '.join(num(m, 2) for m in ms)}"
            + ("" if r["trained_max_steps"] >= 10_000 else "; interim: the paper trained on 10,000 steps"))


# (first cell, JSON file, function of the Source giving (measured, conditions))
HEADLINE = [
    ("SAM training step, ms", "step.json", head_step),
    ("SAM training memory per step, KiB", "memory.json", head_memory),
    ("SAM peak training memory, MiB", "scaling/scaling.json", head_peak),
    ("DAM / SAM, time per step", "scaling/scaling.json", head_dam("ms_per_step")),
    ("DAM / SAM, time per step at N = 1e6", "step.json", head_step_dam),
    ("DAM / SAM, peak memory", "scaling/scaling.json", head_dam("peak_mib")),
    ("Copy task, SAM, bits error per sequence", "learning.json", head_copy),
    ("Link task, bits error per sequence", "learning_sdnc.json", head_follow),
    ("Associative recall far beyond training (Figure 8), bits error per sequence", "generalise.json",
     head_generalise),
]


def headline_table(sources, readme=True):
    return table(["", "measured", "conditions"], headline(sources, readme), "lrl")


# ---------------------------------------------------------------------------- the documents
def load_sources(results=RESULTS):
    known = [rel for rel, *_ in SECTIONS]
    found = sorted(os.path.relpath(os.path.join(d, f), results) for d, _, fs in os.walk(results)
                   for f in fs if f.endswith(".json"))
    rels = known + [f for f in found if f not in known]
    return {rel: Source(results, rel) for rel in rels}


def results_md(results=RESULTS):
    sources = load_sources(results)
    out = ["# Results", "",
           "<!-- generated by `make results` (benchmarks/make_results.py) from benchmarks/results/*.json: "
           "do not edit -->", "",
           "Every figure on this page is read from the JSON file a benchmark wrote, by "
           "`make results`. Each table names the command that made it and the commit the run recorded; "
           "how and when runs were made (and stopped) is in "
           "[benchmarks/results/NOTES.md](../benchmarks/results/NOTES.md). The machine is shared (2 cores), "
           "so compare figures of one run, not runs.", "",
           "## Headline", "", "The README's table:", ""]
    out += headline_table(load_sources(results), readme=False)
    out += ["Contents: " + " · ".join(f"[{t}](#{anchor(t)})" for _, t, _, _ in SECTIONS), ""]
    titles = {rel: t for rel, t, _, _ in SECTIONS}
    for rel, src in sources.items():
        title = titles.get(rel) or next((f"{t}{rel}" for prefix, t, _ in EXTRA if rel.startswith(prefix)),
                                        f"Other results: {rel}")
        render = next((r for f, _, r, _ in SECTIONS if f == rel), generic_section)
        command = next((c for f, _, _, c in SECTIONS if f == rel), None)
        out += render_section(src, title, render, command)
    text = "\n".join(out).rstrip() + "\n"
    return re.sub(r"\n{3,}", "\n\n", text)


def readme_with_headline(readme_text, results=RESULTS):
    """``readme_text`` with the table between HEAD_BEGIN and HEAD_END regenerated."""
    start, end = readme_text.find(HEAD_BEGIN), readme_text.find(HEAD_END)
    if start < 0 or end < start:
        raise ValueError(f"README.md has no headline markers ({HEAD_BEGIN!r} ... {HEAD_END!r})")
    body = "\n".join(headline_table(load_sources(results)))
    return readme_text[: start + len(HEAD_BEGIN)] + "\n" + body + "\n" + readme_text[end:]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="exit 1 if docs/results.md or the README's "
                   "headline differ from what would be written")
    p.add_argument("--results", default=RESULTS, help=argparse.SUPPRESS)
    p.add_argument("--doc", default=DOC, help=argparse.SUPPRESS)
    p.add_argument("--readme", default=README, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    doc = results_md(args.results)
    with open(args.readme, encoding="utf-8") as f:
        readme = f.read()
    try:
        new_readme = readme_with_headline(readme, args.results)
    except ValueError as e:
        print(f"make_results: {e}", file=sys.stderr)
        return 1
    try:
        with open(args.doc, encoding="utf-8") as f:
            old_doc = f.read()
    except FileNotFoundError:
        old_doc = None
    stale = [path for path, old, new in ((args.doc, old_doc, doc), (args.readme, readme, new_readme))
             if old != new]
    if args.check:
        for path in stale:
            print(f"make_results: {os.path.relpath(path)} is out of date; run `make results`",
                  file=sys.stderr)
        return 1 if stale else 0
    for path, text in ((args.doc, doc), (args.readme, new_readme)):
        if path in stale:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            tmp = path + ".tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, path)
            print(f"wrote {os.path.relpath(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

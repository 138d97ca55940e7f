"""Saving and loading: all or nothing under kill -9 and full disks, other programs' files never
touched, every damaged or crafted file refused (never a crash)."""
import json
import os
import shutil
import struct
import subprocess
import sys
import threading

import numpy as np
import pytest
from conftest import assert_same, random_step_inputs, reseal, saved_file, snapshot

import samcpu
from samcpu.persistence import read_meta, seal

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.path.join(ROOT, "tests"))

# a small HNSW memory whose graph holds a few hundred rows (shared by the subprocess scripts)
BUILD = '''
import numpy as np
import samcpu
from conftest import random_step_inputs

def build(seed, steps=150, n=2000, w=8):
    rng = np.random.default_rng(seed)
    m = samcpu.SparseMemory(1, n, w, num_heads=2, k=3, index="hnsw", seed=seed,
                            index_options=dict(flush_rows=16, m=4, ef_construction=16))
    for _ in range(steps):
        m.step(*random_step_inputs(rng, 1, 2, w, None, np.float32))
    return m
'''


def build(seed, **kwargs):
    scope = {}
    exec(BUILD, scope)
    return scope["build"](seed, **kwargs)


def run_script(tmp_path, source, *args, timeout=600):
    script = tmp_path / "script.py"
    script.write_text(BUILD + source)
    return subprocess.run([sys.executable, str(script), *map(str, args)], env=ENV, capture_output=True,
                          text=True, timeout=timeout, cwd=tmp_path)


def same_memory(a, b):
    """Loaded memory ``b`` equals ``a``: contents, usage, LRA order, written rows, reads,
    position, and the index's live and deleted labels."""
    try:
        assert_same(snapshot(a), snapshot(b))
    except AssertionError:
        return False
    labels = [{k: m.index.stats()[k] for k in ("live", "deleted")} for m in (a, b) if m.index_kind == "hnsw"]
    return a.position == b.position and (len(labels) != 2 or labels[0] == labels[1])


# ------------------------------------------------------------------ other programs' files
def test_save_refuses_a_folder_that_is_not_a_samcpu_save(rng, tmp_path):
    """A folder whose meta.json lists the user's files (the case that deleted data.csv and
    weights.bin) is refused, and every file in it stays as it was."""
    mem = samcpu.SparseMemory(1, 50, 4, num_heads=1, k=2, index="exact")
    mem.step(*random_step_inputs(rng, 1, 1, 4, None))
    folder = tmp_path / "run"
    folder.mkdir()
    listing = {"format": 1, "files": {"data.csv": "0" * 64, "weights.bin": "1" * 64}}
    files = {"data.csv": b"a,b\n1,2\n", "weights.bin": os.urandom(300),
             "meta.json": json.dumps(listing).encode()}
    for name, blob in files.items():
        (folder / name).write_bytes(blob)
    with pytest.raises(ValueError, match=r"not empty and holds no samcpu save \(it holds data.csv, meta"):
        mem.save(folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == files
    (folder / "meta.json").unlink()
    with pytest.raises(ValueError, match="holds no samcpu save"):  # no meta.json at all
        mem.save(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["data.csv", "weights.bin"]
    not_a_folder = tmp_path / "file"
    not_a_folder.write_bytes(b"x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        mem.save(not_a_folder)
    (tmp_path / "empty").mkdir()
    mem.save(tmp_path / "empty")  # an empty folder is fine
    assert same_memory(mem, samcpu.SparseMemory.load(tmp_path / "empty"))


def test_saving_over_a_save_keeps_the_users_files(rng, tmp_path):
    """Files a user put into a save folder survive later saves, even when a crafted meta.json
    (with valid checksums) names them as the save's files."""
    mem = build(0, steps=30)
    folder = tmp_path / "m"
    mem.save(folder)
    (folder / "data.csv").write_text("keep me")
    (folder / "notes").mkdir()
    (folder / "notes" / "weights.bin").write_bytes(b"\x01\x02")
    meta = json.loads((folder / "meta.json").read_text())
    del meta["sha256"]
    for name in ("data.csv", "notes"):
        meta["files"][name] = "0" * 64
    (folder / "meta.json").write_text(json.dumps(seal(meta)))
    read_meta(folder)  # a valid meta.json that names the user's files
    mem.step(*random_step_inputs(rng, 1, 2, 8, None, np.float32))
    mem.save(folder)
    mem.save(folder)
    assert (folder / "data.csv").read_text() == "keep me"
    assert (folder / "notes" / "weights.bin").read_bytes() == b"\x01\x02"
    assert same_memory(mem, samcpu.SparseMemory.load(folder))


def test_a_save_removes_what_killed_saves_left(tmp_path):
    mem = build(1, steps=20)
    folder = tmp_path / "m"
    mem.save(folder)
    old = saved_file(folder, "state.npz").parent
    stale = folder / "data-0123456789abcdef"  # a killed save's data folder (it has the marker)
    shutil.copytree(old, stale)
    (folder / "data-00000000000000ff").mkdir()  # killed before its marker: empty
    (folder / ".tmp-abc_1234.part").write_bytes(b"half a meta.json")
    (folder / "data-0000000000000aaa").mkdir()  # not ours: no marker, not empty
    (folder / "data-0000000000000aaa" / "x").write_text("user")
    mem.save(folder)
    new = saved_file(folder, "state.npz").parent
    assert new != old
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [".samcpu.lock", "meta.json", new.name, "data-0000000000000aaa"])
    assert (folder / "data-0000000000000aaa" / "x").read_text() == "user"


# ------------------------------------------------------------------ all or nothing
KILLER = r'''
import json, os, random, signal, sys, time
from samcpu.persistence import read_meta
import samcpu
from conftest import assert_same, snapshot

folder, trials = sys.argv[1], int(sys.argv[2])
old, new = build(0), build(1)
for m in (old, new):  # saved once first, as the trials save them
    m.save(os.path.join(os.path.dirname(folder), "scratch", str(m.seed)))
ALLOWED = ("meta.json", ".samcpu.lock")

def outcome(folder):
    try:
        m = samcpu.SparseMemory.load(folder)
    except samcpu.MemoryFileError as e:
        return "none" if "holds no saved memory" in str(e) else "refused: " + str(e)
    for name, ref in (("old", old), ("new", new)):
        try:
            assert_same(snapshot(ref), snapshot(m))
        except AssertionError:
            continue
        s, r = m.index.stats(), ref.index.stats()
        if m.position == ref.position and (s["live"], s["deleted"]) == (r["live"], r["deleted"]):
            return name
    return "neither"

def saver(folder, ready, mode):
    os.write(ready, b"r")
    if mode == "idle":
        time.sleep(60)
    while True:
        new.save(folder)
        if mode == "once":
            os.write(ready, b"s")
            time.sleep(60)
        old.save(folder)

def trial(folder, delay, mode="loop"):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            saver(folder, w, mode)
        finally:
            os._exit(0)
    os.close(w)
    os.read(r, 1)
    if mode == "once":
        os.read(r, 1)
    time.sleep(delay)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    os.close(r)
    strays = [n for n in os.listdir(folder) if n not in ALLOWED and not n.startswith(("data-", ".tmp-"))]
    return outcome(folder), strays

rng = random.Random(7)
results = []
fresh = os.path.join(os.path.dirname(folder), "fresh")
results.append(("fresh folder",) + trial(fresh, 0.02))   # killed during the first save into a new folder
old.save(fresh)                                          # the folder is still usable afterwards
results.append(("fresh folder reused", outcome(fresh), []))
old.save(folder)
results.append(("before any save",) + trial(folder, 0.0, mode="idle"))
results.append(("after one save",) + trial(folder, 0.0, mode="once"))
for i in range(trials):
    results.append((f"random {i}",) + trial(folder, rng.uniform(0.0, 0.4)))
old.save(folder)
entries = sorted(os.listdir(folder))
print(json.dumps(dict(results=results, entries=entries, data=read_meta(folder)["data"])))
'''


def test_a_save_killed_at_any_moment_leaves_the_old_or_the_new_memory(tmp_path):
    """kill -9 at random moments while a process saves over an existing save (12 trials, each
    with saves of about 50 ms running back to back): the folder always loads as exactly the
    old or the new memory; stray files are removed by the next save."""
    proc = run_script(tmp_path, KILLER, tmp_path / "m", 12)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    results = {name: (what, strays) for name, what, strays in report["results"]}
    # the saver alternates new and old: a fast machine can finish both before the kill
    assert results["fresh folder"][0] in ("none", "new", "old"), results
    assert results["fresh folder reused"][0] == "old"
    assert results["before any save"][0] == "old"  # the harness can tell the two apart
    assert results["after one save"][0] == "new"
    for name, (what, strays) in results.items():
        assert (what in ("old", "new") or name == "fresh folder") and not strays, (name, what, strays)
    assert report["entries"] == sorted([".samcpu.lock", "meta.json", report["data"]]), report


def test_a_full_disk_during_a_save_keeps_the_old_save(small_tmpfs):
    """A save that runs out of space (a 512 KiB tmpfs) fails with OSError and leaves the old
    save loadable and no partial files."""
    mnt = small_tmpfs("512k")
    small = build(2, steps=20)
    small.save(mnt / "m")
    big = samcpu.SparseMemory(1, 1000, 1024, num_heads=4, k=2, index="exact")
    rng = np.random.default_rng(3)
    for _ in range(80):  # about 320 rows of 1,024 float32: 1.3 MB of contents
        big.step(*random_step_inputs(rng, 1, 4, 1024, None, np.float32))
    with pytest.raises(OSError):
        big.save(mnt / "m")
    assert same_memory(small, samcpu.SparseMemory.load(mnt / "m"))
    data = read_meta(mnt / "m")["data"]
    assert sorted(os.listdir(mnt / "m")) == sorted([".samcpu.lock", "meta.json", data])


def test_saves_from_two_threads_into_one_folder_take_turns(tmp_path):
    a, b = build(3, steps=20), build(4, steps=25)
    errors = []

    def save_many(m):
        try:
            for _ in range(4):
                m.save(tmp_path / "m")
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=save_many, args=(m,)) for m in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    loaded = samcpu.SparseMemory.load(tmp_path / "m")
    assert same_memory(a, loaded) or same_memory(b, loaded)
    assert len([n for n in os.listdir(tmp_path / "m") if n.startswith("data-")]) == 1


# ------------------------------------------------------------------ damaged and crafted files
def test_every_bit_flip_in_meta_json_is_refused(rng, tmp_path):
    mem = samcpu.SparseMemory(2, 30, 4, num_heads=2, k=3, index="exact", delta=0.01, seed=5)
    for _ in range(4):
        mem.step(*random_step_inputs(rng, 2, 2, 4, None))
    mem.save(tmp_path / "m")
    meta_path = tmp_path / "m" / "meta.json"
    blob = meta_path.read_bytes()
    fd = os.open(meta_path, os.O_WRONLY)
    try:
        for i in range(len(blob)):
            for bit in range(8):
                os.pwrite(fd, bytes([blob[i] ^ (1 << bit)]), i)  # in place: fast
                with pytest.raises(samcpu.MemoryFileError):
                    samcpu.SparseMemory.load(tmp_path / "m")
            os.pwrite(fd, blob[i:i + 1], i)
    finally:
        os.close(fd)
    assert meta_path.read_bytes() == blob
    assert same_memory(mem, samcpu.SparseMemory.load(tmp_path / "m"))


def test_crafted_settings_with_valid_checksums_are_refused(rng, tmp_path):
    mem = samcpu.SparseMemory(2, 30, 4, num_heads=2, k=3, index="exact")
    mem.step(*random_step_inputs(rng, 2, 2, 4, None))
    mem.save(tmp_path / "m")
    meta_path = tmp_path / "m" / "meta.json"
    good = json.loads(meta_path.read_text())
    bad = "holds bad settings"
    for key, value, message in [("num_slots", 2, bad), ("k", 10**6, bad), ("dtype", "int8", bad),
                                ("position", -1, bad), ("index", "annoy", bad), ("seed", 2**64, bad),
                                ("data", "../../etc", "data folder"), ("word_size", 5, "inconsistent"),
                                ("k", 2, "inconsistent"), ("batch_size", 1, "inconsistent")]:
        meta_path.write_text(json.dumps(dict(good, **{key: value})))
        reseal(tmp_path / "m")
        with pytest.raises(samcpu.MemoryFileError, match=message):
            samcpu.SparseMemory.load(tmp_path / "m")


def test_a_state_file_that_expands_beyond_any_save_is_refused_unread(rng, tmp_path):
    """A compressed archive (a zip bomb) is refused from its declared sizes, before a byte is
    decompressed."""
    mem = samcpu.SparseMemory(2, 30, 4, num_heads=2, k=3, index="exact")
    mem.step(*random_step_inputs(rng, 2, 2, 4, None))
    mem.save(tmp_path / "m")
    state = saved_file(tmp_path / "m", "state.npz")
    arrays = dict(np.load(state))
    arrays["contents"] = np.zeros((40_000, 4))  # 1.3 MB of zeros, compressed to a few KB
    np.savez_compressed(state, **arrays)
    assert state.stat().st_size < 100_000
    reseal(tmp_path / "m")
    with pytest.raises(samcpu.MemoryFileError, match="state.npz expands to .* more than a save of"):
        samcpu.SparseMemory.load(tmp_path / "m")


def test_load_reports_the_callers_arguments_as_such(tmp_path):
    """A typo in index_options or a bad path is the caller's error (ValueError naming it), not
    a corrupt file; a failed load leaves no file at path."""
    build(5, steps=10).save(tmp_path / "m")
    cases = [(dict(index_options=dict(ef_constrution=8)), "index_options has unknown key 'ef_constrution'"),
             (dict(index="exact", index_options=dict(m=4)), "unknown key 'm' for index 'exact'"),
             (dict(index="annoy"), "index must be one of"),
             (dict(path=tmp_path / "missing" / "x.f32"), "path .* is in a folder that does not exist")]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message) as info:
            samcpu.SparseMemory.load(tmp_path / "m", **kwargs)
        assert not isinstance(info.value, samcpu.MemoryFileError)
    state = saved_file(tmp_path / "m", "state.npz")
    arrays = dict(np.load(state))
    arrays["written"] = arrays["written"] + 10**6
    with open(state, "wb") as f:
        np.savez(f, **arrays)
    reseal(tmp_path / "m")
    with pytest.raises(samcpu.MemoryFileError, match="'written'"):
        samcpu.SparseMemory.load(tmp_path / "m", path=tmp_path / "x.f32")
    assert not (tmp_path / "x.f32").exists()


HEADER = struct.Struct("<QQQQQQiIQQQdQ")  # hnswlib 0.8.0's saveIndex header


def _graph_layout(blob, dim):
    """(header fields, element size, level-0 end, [(element, offset of its link lists, size)])"""
    h = list(HEADER.unpack_from(blob))
    cur, size = h[2], h[3]
    pos = HEADER.size + cur * size
    upper = []
    for i in range(cur):
        (n,) = struct.unpack_from("<I", blob, pos)
        if n:
            upper.append((i, pos + 4, n))
        pos += 4 + n
    return h, size, HEADER.size + cur * size, upper


def _crafted_graphs(blob, dim):
    """name -> damaged copy of the graph file ``blob``."""
    h, size, end0, upper = _graph_layout(blob, dim)
    cur = h[2]
    e0 = HEADER.size  # element 0's level-0 block
    levels = {i: n // (4 + 4 * h[8]) for i, _, n in upper}

    def header(**changes):
        fields = dict(zip(["off", "max", "cur", "size", "label", "data", "maxlevel", "ep", "maxM", "maxM0",
                           "M", "mult", "efc"], h, strict=True))
        fields.update(changes)
        return HEADER.pack(*fields.values()) + blob[HEADER.size:]

    def poke(offset, fmt, value):
        out = bytearray(blob)
        struct.pack_into(fmt, out, offset, value)
        return bytes(out)

    with_links = next(i for i in range(cur) if struct.unpack_from("<H", blob, e0 + i * size)[0] > 0)
    _, off_up, _ = next(u for u in upper if struct.unpack_from("<H", blob, u[1])[0] > 0)
    low = next(i for i in range(cur) if i not in levels)
    out = dict(
        truncated=blob[:-7], header_only=blob[:HEADER.size], empty=b"", longer=blob + b"\0" * 8,
        huge_count=header(cur=2**40), huge_max_elements_and_count=header(cur=2**62, max=2**63),
        one_element_fewer=header(cur=cur - 1),
        neighbour_out_of_range=poke(e0 + with_links * size + 4, "<I", cur + 1000),
        neighbour_far_out_of_range=poke(e0 + with_links * size + 4, "<I", 2**32 - 1),
        too_many_links=poke(e0 + with_links * size, "<H", 0xFFFF),
        upper_neighbour_out_of_range=poke(off_up + 4, "<I", 2**31),
        upper_neighbour_without_that_level=poke(off_up + 4, "<I", low),
        upper_too_many_links=poke(off_up, "<H", 0xFFFF),
        entry_point_out_of_range=header(ep=cur + 5), huge_max_level=header(maxlevel=10**6),
        entry_point_not_on_top=header(ep=low), zero_m=header(M=0, maxM=0, maxM0=0),
        m_one=header(M=1, maxM=1, maxM0=2), nan_mult=header(mult=float("nan")),
        huge_ef_construction=header(efc=2**62), wrong_element_size=header(size=size + 4),
        label_out_of_range=poke(e0 + h[4], "<Q", 10**12),
        duplicate_label=poke(e0 + h[4], "<Q", struct.unpack_from("<Q", blob, e0 + size + h[4])[0]),
        deletion_mark_flipped=poke(e0 + 2, "<B", blob[e0 + 2] ^ 1),
        unknown_flag=poke(e0 + 3, "<B", 0x80), nan_vector=poke(e0 + h[5], "<f", float("nan")),
        link_size_not_a_multiple=poke(end0, "<I", 7),  # element 0's link lists' size
    )
    return out


CRAFTED = r'''
import json, os, sys
import numpy as np
import samcpu
out = {}
for folder in sorted(os.listdir(sys.argv[1])):
    path = os.path.join(sys.argv[1], folder)
    try:
        m = samcpu.SparseMemory.load(path)
    except samcpu.MemoryFileError as e:
        out[folder] = "refused: " + str(e)
        continue
    rng = np.random.default_rng(0)
    for _ in range(5):  # a loaded graph must also answer queries
        res = m.step(rng.normal(size=(1, 2, 8)), np.ones((1, 2)), rng.normal(size=(1, 2, 8)),
                     np.ones((1, 2)), np.full((1, 2), 0.5))
        assert 0 <= res.rows.min() and res.rows.max() < m.num_slots
    out[folder] = "loaded"
print(json.dumps(out))
'''


def test_crafted_graph_files_are_refused_without_a_crash(tmp_path):
    """Graph files and hnsw.npz crafted with matching checksums (truncated, huge counts,
    neighbour ids out of range, wrong dimension, ...) are refused with MemoryFileError; 80
    random byte changes are refused or load into a memory that works. hnswlib runs in a
    subprocess, so a crash fails this test instead of killing pytest."""
    import hnswlib

    mem = build(6, steps=145)  # saved during a rebuild
    mem.save(tmp_path / "good")
    graph = saved_file(tmp_path / "good", "hnsw_0.bin")
    blob = graph.read_bytes()
    variants = _crafted_graphs(blob, 8)
    # a real hnswlib file of another dimension, same count and labels
    h = HEADER.unpack_from(blob)
    other = hnswlib.Index(space="cosine", dim=10)
    other.init_index(max_elements=h[2], M=4, ef_construction=16)
    other.add_items(np.random.default_rng(0).normal(size=(h[2], 10)).astype(np.float32), np.arange(h[2]))
    other.save_index(str(tmp_path / "other.bin"))
    variants["wrong_dimension"] = (tmp_path / "other.bin").read_bytes()
    rng = np.random.default_rng(11)
    _, size, end0, _ = _graph_layout(blob, 8)
    for i in range(80):  # random damage: header, link headers and ids, link list sizes
        damaged = bytearray(blob)
        where = rng.choice([rng.integers(0, HEADER.size), HEADER.size + rng.integers(0, h[2]) * size
                            + rng.integers(0, 4 + 4 * h[9]), rng.integers(end0, len(blob))])
        damaged[where] = rng.integers(0, 256)
        variants[f"random_{i:02d}"] = bytes(damaged)
    crafted = tmp_path / "crafted"
    for name, data in variants.items():
        shutil.copytree(tmp_path / "good", crafted / name)
        saved_file(crafted / name, "hnsw_0.bin").write_bytes(data)
        reseal(crafted / name)
    npz = dict(np.load(saved_file(tmp_path / "good", "hnsw.npz")))
    assert npz["migrating"][0] == 1 and len(npz["old_live_rows"]) > 1  # saved during a rebuild: two graphs
    for name, change in [("buffer_out_of_range", dict(buffer=np.array([10**9]), buffer_counts=np.array([1]))),
                         ("label_row_out_of_range", dict(label_row=npz["label_row"] + 10**9)),
                         ("label_counts_wrong", dict(label_counts=npz["label_counts"] + 3)),
                         ("float_buffer", dict(buffer=np.array([0.5]), buffer_counts=np.array([1]))),
                         # the rebuild in progress: its arrays agree and name rows in the memory
                         ("pending_without_rebuild", dict(migrating=np.array([0]))),
                         ("pending_out_of_range", dict(pending=npz["pending"] + 10**9)),
                         ("old_label_row_out_of_range", dict(old_label_row=npz["old_label_row"] + 10**9)),
                         ("migrating_not_a_flag", dict(migrating=np.array([2]))),
                         ("old_rows_not_pending", dict(pending=npz["pending"][:1],
                                                       pending_counts=np.array([1]))),
                         ("old_rows_wrong_labels", dict(old_live_labels=npz["old_live_labels"] + 1)),
                         ("old_rows_repeated", dict(old_live_rows=np.repeat(npz["old_live_rows"], 2),
                                                    old_live_labels=np.repeat(npz["old_live_labels"], 2),
                                                    old_live_counts=2 * npz["old_live_counts"]))]:
        shutil.copytree(tmp_path / "good", crafted / name)
        with open(saved_file(crafted / name, "hnsw.npz"), "wb") as f:
            np.savez(f, **dict(npz, **change))
        reseal(crafted / name)
    shutil.copytree(tmp_path / "good", crafted / "rebuild_arrays_incomplete")
    with open(saved_file(crafted / "rebuild_arrays_incomplete", "hnsw.npz"), "wb") as f:
        np.savez(f, **{k: v for k, v in npz.items() if k != "pending"})
    reseal(crafted / "rebuild_arrays_incomplete")
    shutil.copytree(tmp_path / "good", crafted / "untouched")
    proc = run_script(tmp_path, CRAFTED, crafted)
    assert proc.returncode == 0, f"the loading process died ({proc.returncode}): {proc.stderr[-3000:]}"
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out.pop("untouched") == "loaded"
    for name, what in out.items():
        if not name.startswith("random_"):
            assert what.startswith("refused: "), (name, what)
    random_outcomes = [what for name, what in out.items() if name.startswith("random_")]
    assert all(w == "loaded" or w.startswith("refused: ") for w in random_outcomes)
    assert sum(w != "loaded" for w in random_outcomes) >= 20  # most damage is caught


def test_a_format_2_save_still_loads(rng, tmp_path):
    """Format 3 (an HNSW rebuild in progress can be saved) reads format-2 saves, which hold
    none; a format this version does not know is refused by name."""
    mem = build(3)
    mem.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "meta.json").read_text())
    assert meta["format"] == samcpu.persistence.FORMAT_VERSION == 3
    npz = dict(np.load(saved_file(tmp_path / "m", "hnsw.npz")))
    rebuild = ("migrating", "old_label_row", "old_label_counts", "pending", "pending_counts", "old_live_rows",
               "old_live_counts", "old_live_labels")
    for format_, keep in ((2, False), (4, True)):
        folder = tmp_path / f"f{format_}"
        shutil.copytree(tmp_path / "m", folder)
        with open(saved_file(folder, "hnsw.npz"), "wb") as f:
            np.savez(f, **{k: v for k, v in npz.items() if keep or k not in rebuild})
        meta = json.loads((folder / "meta.json").read_text())
        (folder / "meta.json").write_text(json.dumps(dict(meta, format=format_)))
        reseal(folder)
    old = samcpu.SparseMemory.load(tmp_path / "f2")
    assert old.index.stats()["live"] == mem.index.stats()["live"]
    x = random_step_inputs(rng, 1, 2, 8, None, np.float32)
    np.testing.assert_array_equal(old.step(*x).rows, mem.step(*x).rows)
    with pytest.raises(samcpu.MemoryFileError, match="format 4"):
        samcpu.SparseMemory.load(tmp_path / "f4")

"""bAbI: the reader on hand-written files, episodes (answers at the '-' steps, loss and error
masked to them), the per-task error, the SYNTHETIC generator read back and checked by a
re-simulation of its stories, bad data, and `samcpu train --task babi`."""
import json
import re

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from samcpu.cli import main
from samcpu.tasks import BabiTask, DataError, answer_error, make_task, masked_cross_entropy, read_babi
from samcpu.tasks.babi import (
    ANSWER_PROMPT,
    encode_babi,
    parse_babi,
    question_errors,
    story_tokens,
    tokenize,
)
from samcpu.tasks.synthetic_babi import write_synthetic_babi

QA1 = """1 Mary moved to the bathroom.
2 John went to the hallway.
3 Where is Mary? \tbathroom\t1
4 Daniel went back to the hallway.
5 Sandra moved to the garden.
6 Where is Daniel? \thallway\t4
1 Sandra travelled to the office.
2 Where is Sandra? \toffice\t1
"""
QA19 = """1 The kitchen is north of the hallway.
2 The garden is south of the kitchen.
3 How do you go from the hallway to the garden?\tn,s\t1 2
"""
TINY = ["--slots", "32", "--word", "4", "--heads", "1", "--k", "2", "--hidden", "8", "--batch", "2",
        "--index", "exact", "--threads", "1", "--quiet"]


def write(folder, files):
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


@pytest.fixture
def hand(tmp_path):
    return write(tmp_path / "en-10k", {
        "qa1_single-supporting-fact_train.txt": QA1, "qa1_single-supporting-fact_test.txt": QA1,
        "qa19_path-finding_train.txt": QA19, "qa19_path-finding_test.txt": QA19})


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    folder = tmp_path_factory.mktemp("babi")
    write_synthetic_babi(folder, train_questions=60, test_questions=30, seed=3)
    return folder


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """Two tasks, one story each per split: what the `samcpu train` tests read."""
    folder = tmp_path_factory.mktemp("babi_small")
    write_synthetic_babi(folder, tasks=(1, 6), train_questions=5, test_questions=5, seed=3)
    return folder


# ---------------------------------------------------------------- the reader

def test_reader_on_a_hand_written_file(hand):
    stories = parse_babi(QA1.splitlines(True), "qa1.txt", 1)
    assert len(stories) == 2  # id 1 restarts the story
    first, second = stories
    assert [line.number for line in first.lines] == [1, 2, 3, 4, 5, 6]
    assert first.lines[0].words == ("mary", "moved", "to", "the", "bathroom", ".")
    assert first.lines[0].answer == () and first.lines[0].supporting == ()
    q = first.questions
    assert [x.words for x in q] == [("where", "is", "mary", "?"), ("where", "is", "daniel", "?")]
    assert [(x.answer, x.supporting) for x in q] == [(("bathroom",), (1,)), (("hallway",), (4,))]
    assert second.questions[0].answer == ("office",) and second.questions[0].supporting == (1,)
    assert first.source == "qa1.txt:1" and second.source == "qa1.txt:7"
    assert all(s.task == 1 for s in stories)


def test_folder_the_vocabulary_and_multi_word_answers(hand, tmp_path):
    # the folder itself, its en-10k/ and tasks_1-20_v1-2/en-10k/ are all found
    for given in (hand, tmp_path):
        data = read_babi(given)
        assert data.folder == str(hand) and sorted(data.train) == [1, 19] and not data.synthetic
    path = read_babi(hand).test[19][0]
    assert path.questions[0].answer == ("n", "s") and path.questions[0].supporting == (1, 2)
    words = set()
    for text in (QA1, QA19):
        for line in text.splitlines():
            words.update(re.findall(r"[a-z]+|[.?]", line.split("\t")[0].lower()))
            if "\t" in line:
                words.update(line.split("\t")[1].split(","))
    words.add(ANSWER_PROMPT)
    assert read_babi(hand).vocabulary == tuple(sorted(words))
    nested = write(tmp_path / "x" / "tasks_1-20_v1-2" / "en-10k",
                   {"qa1_a_train.txt": QA1, "qa1_a_test.txt": QA1})
    assert read_babi(tmp_path / "x").folder == str(nested)


def test_tokenize():
    assert tokenize("Is Mary in the office? ") == ("is", "mary", "in", "the", "office", "?")
    assert tokenize("Fred gave the milk to Bill.") == ("fred", "gave", "the", "milk", "to", "bill", ".")


# ---------------------------------------------------------------- episodes

def test_episode_layout_by_hand(hand):
    data = read_babi(hand)
    story = data.test[19][0]
    enc = encode_babi([story, data.train[1][1]], data.vocabulary)
    tokens, answers, _ = story_tokens(story)
    # every word 1-hot in order, then one '-' step per answer word
    assert tokens[-3:] == ["?", ANSWER_PROMPT, ANSWER_PROMPT] and answers[-2:] == ["n", "s"]
    v = {w: i for i, w in enumerate(data.vocabulary)}
    x, y, m = (t.numpy() for t in enc.batch)
    assert x.shape == (len(tokens), 2, len(v))
    assert np.array_equal(x[:, 0].argmax(1), [v[w] for w in tokens]) and np.all(x[:, 0].sum(1) == 1)
    assert np.array_equal(np.flatnonzero(m[:, 0]), [len(tokens) - 2, len(tokens) - 1])
    assert y[-2, 0, v["n"]] == 1 and y[-1, 0, v["s"]] == 1 and y[:, 0].sum() == 2
    # the shorter story: blank, unscored steps after its end
    short = len(story_tokens(data.train[1][1])[0])
    assert short == 11 and np.all(x[short:, 1] == 0) and np.all(m[short:, 1] == 0)
    assert m[:, 1].sum() == 1 and y[short - 1, 1, v["office"]] == 1
    assert enc.question[-2, 0] == enc.question[-1, 0] == 0 and enc.question[short - 1, 1] == 1
    assert list(enc.tasks) == [19, 1]


def test_loss_and_error_are_masked_to_the_answers(hand):
    data = read_babi(hand)
    batch = encode_babi(data.train[1] + data.train[19], data.vocabulary).batch
    logits = torch.randn(batch.target.shape, dtype=torch.float64, requires_grad=True)
    loss = masked_cross_entropy(logits, batch.target.double(), batch.mask.double())
    # reference: torch's cross-entropy over the answer steps only
    t, b = torch.nonzero(batch.mask, as_tuple=True)
    ref = F.cross_entropy(logits[t, b], batch.target[t, b].argmax(1), reduction="sum") / batch.mask.shape[1]
    assert torch.allclose(loss, ref)
    loss.backward()
    assert torch.all(logits.grad[batch.mask == 0] == 0) and torch.all(logits.grad[batch.mask == 1] != 0)
    # the error: wrong answers among the answer steps, whatever the other steps say
    perfect = batch.target * 10 + (1 - batch.mask)[..., None] * torch.randn(batch.target.shape)
    assert answer_error(perfect, batch.target, batch.mask) == 0.0
    wrong = perfect.clone()
    wrong[t[0], b[0]] = -perfect[t[0], b[0]]
    assert answer_error(wrong, batch.target, batch.mask) == 1 / len(t)


def test_a_question_is_wrong_if_any_answer_word_is(hand):
    data = read_babi(hand)
    enc = encode_babi(data.test[19] + data.test[1], data.vocabulary)
    logits = enc.batch.target.clone()
    assert not question_errors(logits, enc).any()
    second = np.flatnonzero(enc.question[:, 0] == 0)[1]  # "s" of the answer "n,s"
    logits[second, 0] = torch.roll(logits[second, 0], 1)
    errors = question_errors(logits, enc)
    assert errors.tolist() == [True, False, False, False] and len(errors) == 4


class ConstantWord(torch.nn.Module):
    """A 'model' that always answers ``word``."""

    def __init__(self, vocabulary, word):
        super().__init__()
        self.out = torch.zeros(len(vocabulary))
        self.out[vocabulary.index(word)] = 1.0

    def forward(self, x):
        return self.out.expand(*x.shape[:2], -1), None


def test_per_task_error_and_failed_tasks_against_a_count(synthetic):
    task = BabiTask(synthetic, seed=0)
    report = task.evaluate(ConstantWord(task.vocabulary, "yes"), batch_size=7)
    for t in task.tasks:  # brute force: a constant "yes" is right exactly on the "yes" answers
        answers = [q.answer for s in task.data.test[t] for q in s.questions]
        assert report["per_task"][t]["questions"] == len(answers)
        wrong = sum(a != ("yes",) for a in answers)
        assert report["per_task"][t]["error"] == pytest.approx(wrong / len(answers))
    assert 0.2 < report["per_task"][6]["error"] < 0.8 and report["per_task"][1]["error"] == 1.0
    assert report["failed_tasks"] == 4 and report["synthetic"] is True
    assert report["mean_error"] == pytest.approx(np.mean([v["error"] for v in report["per_task"].values()]))
    assert "SYNTHETIC" in task.summary(report)[0]


def test_sampling_is_seeded_and_draws_every_task(synthetic):
    a, b = BabiTask(synthetic, seed=5), make_task("babi", seed=5, data=synthetic)
    for _ in range(3):
        x, y = a.sample(4), b.sample(4)
        assert all(torch.equal(u, v) for u, v in zip(x, y, strict=True))
    words, answers = set(), set()
    for _ in range(20):
        batch = a.sample(2)
        assert batch.mask.sum() >= 2 and torch.all(batch.target.sum(-1) == batch.mask)
        words.update(a.vocabulary[i] for i in batch.input.sum((0, 1)).nonzero().flatten())
        answers.update(a.vocabulary[i] for i in batch.target.sum((0, 1)).nonzero().flatten())
    assert {"before", "football", "is"} <= words and {"yes", "no", "kitchen"} <= answers  # tasks 3, 2, 6, 1
    with pytest.raises(ValueError, match="level"):
        a.sample(2, level=2)
    with pytest.raises(ValueError, match="batch_size"):
        a.sample(0)


# ---------------------------------------------------------------- the generator, read back

def simulate(story):
    """Re-derive every answer and supporting fact from the story's text alone: people's places,
    objects held or lying somewhere, each object's trail of places."""
    place, holder, lying, trail, checks = {}, {}, {}, {}, []
    for line in story.lines:
        w = line.words
        if line.answer:
            q = " ".join(w)
            if m := re.fullmatch(r"where is (\w+) \?", q):
                checks.append(((place[m[1]][0],), (place[m[1]][1],)))
            elif m := re.fullmatch(r"is (\w+) in the (\w+) \?", q):
                checks.append((("yes" if place[m[1]][0] == m[2] else "no",), (place[m[1]][1],)))
            elif m := re.fullmatch(r"where is the (\w+) \?", q):
                obj = m[1]
                if obj in holder:
                    who, got = holder[obj]
                    checks.append(((place[who][0],), tuple(sorted((got, place[who][1])))))
                else:
                    checks.append(((lying[obj][0],), tuple(sorted(lying[obj][1:]))))
            elif m := re.fullmatch(r"where was the (\w+) before the (\w+) \?", q):
                (before, b_line), (now, n_line) = trail[m[1]][-2:]
                assert now == m[2]
                got = holder[m[1]][1] if m[1] in holder else lying[m[1]][1]
                checks.append(((before,), tuple(sorted({b_line, n_line, got}))))
            else:
                raise AssertionError(q)
            assert (line.answer, tuple(sorted(line.supporting))) == checks[-1], (story.source, q)
            continue
        who, obj = w[0], w[-2]
        if w[-3] == "the" and obj in ("bathroom", "hallway", "garden", "office", "kitchen", "bedroom"):
            place[who] = (obj, line.number)
            for o, (h, _) in holder.items():
                if h == who:
                    trail[o].append((obj, line.number))
        elif w[1] in ("picked", "got", "grabbed", "took"):
            assert obj not in holder and lying.get(obj, (place[who][0],))[0] == place[who][0]
            holder[obj] = (who, line.number)
            lying.pop(obj, None)
            trail.setdefault(obj, [])
            if not trail[obj] or trail[obj][-1][0] != place[who][0]:
                trail[obj].append(place[who])
        else:
            assert holder[obj][0] == who
            del holder[obj]
            lying[obj] = (place[who][0], line.number, place[who][1])
    return checks


def test_the_generator_is_read_back_and_its_answers_are_right(synthetic):
    data = read_babi(synthetic)
    assert data.synthetic and sorted(data.train) == [1, 2, 3, 6]
    assert "SYNTHETIC" in (synthetic / "SYNTHETIC.txt").read_text()
    assert "SYNTHETIC" in BabiTask(data).describe()
    for split, want in ((data.train, 60), (data.test, 30)):
        for stories in split.values():
            assert sum(len(s.questions) for s in stories) >= want
            assert all(s.lines[-1].answer for s in stories)
            for story in stories:
                assert len(simulate(story)) == len(story.questions)
    yes_no = [q.answer[0] for s in data.train[6] for q in s.questions]
    assert 0.3 < yes_no.count("yes") / len(yes_no) < 0.7
    assert any(len(q.supporting) == 3 for s in data.train[3] for q in s.questions)


def test_the_generator_is_seeded_and_never_writes_beside_real_files(tmp_path, synthetic):
    write_synthetic_babi(tmp_path / "a", train_questions=60, test_questions=30, seed=3)
    for f in synthetic.iterdir():
        assert (tmp_path / "a" / f.name).read_bytes() == f.read_bytes()
    write_synthetic_babi(tmp_path / "short", tasks=(3, 6), train_questions=8, test_questions=2,
                         questions_per_story=1)
    short = read_babi(tmp_path / "short")
    assert all(len(s.questions) == 1 for t in (3, 6) for s in short.train[t] + short.test[t])
    assert len(short.train[3]) == 8 and all(len(simulate(s)) == 1 for s in short.train[3])
    real = write(tmp_path / "real", {"qa1_x_train.txt": QA1})
    with pytest.raises(DataError, match="refusing"):
        write_synthetic_babi(real)
    with pytest.raises(ValueError, match="tasks"):
        write_synthetic_babi(tmp_path / "b", tasks=(4,))


# ---------------------------------------------------------------- bad data

BAD = [  # (file text, line, what the message says)
    ("Mary moved to the bathroom.\n", 1, "expected '<id> <text>'"),
    ("1 Mary moved.\n3 Where is Mary?\tx\t1\n", 2, "id 3 follows id 1"),
    ("2 Mary moved.\n", 1, "starts at id 2"),
    ("1 Mary moved.\n2 Where is Mary?\tbathroom\n", 2, "3 tab-separated fields"),
    ("1 Mary moved.\n2 Where is Mary?\t\t1\n", 2, "answer must be words"),
    ("1 Mary moved.\n2 Where is Mary?\tthe hall\t1\n", 2, "answer must be words"),
    ("1 Mary moved.\n2 Where is Mary?\tx\tone\n", 2, "must be integers"),
    ("1 Mary moved.\n2 Where is Mary?\tx\t3\n", 2, "not an earlier statement"),
    ("1 Mary moved.\n2 Where is Mary?\tx\t1\n3 Who?\tx\t2\n", 3, "not an earlier statement"),
    ("1 Mary moved.\n2 Where is Mary?\tx\t1\n1 John moved.\n", 3, "has no question"),
    ("1 Mary moved.\n2 \n", 2, "no text"),
]


@pytest.mark.parametrize("text, line, says", BAD)
def test_a_malformed_line_is_named_by_file_and_line(tmp_path, text, line, says):
    folder = write(tmp_path, {"qa1_x_train.txt": text, "qa1_x_test.txt": QA1})
    where = re.escape(f"qa1_x_train.txt, line {line}: ")
    with pytest.raises(DataError, match=where + ".*" + re.escape(says)):
        read_babi(folder)


def test_bad_folders_and_files_are_named(tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        read_babi(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: no bAbI files"):
        read_babi(tmp_path / "empty")
    one = write(tmp_path / "one", {"qa2_two_train.txt": QA1})
    with pytest.raises(DataError, match=re.escape(str(one / "qa2_two_test.txt")) + " is missing"):
        read_babi(one)
    two = write(tmp_path / "two", {"qa1_a_train.txt": QA1, "qa1_b_train.txt": QA1, "qa1_a_test.txt": QA1})
    with pytest.raises(DataError, match="a second train file for task 1"):
        read_babi(two)
    blank = write(tmp_path / "blank", {"qa1_a_train.txt": "\n\n", "qa1_a_test.txt": QA1})
    with pytest.raises(DataError, match="qa1_a_train.txt: the file holds no story"):
        read_babi(blank)
    binary = write(tmp_path / "bin", {"qa1_a_test.txt": QA1})
    (binary / "qa1_a_train.txt").write_bytes(b"1 Mary \xff\xfe moved.\n")
    with pytest.raises(DataError, match="qa1_a_train.txt: not UTF-8"):
        read_babi(binary)
    with pytest.raises(DataError, match="needs its data folder"):
        BabiTask(None)


# ---------------------------------------------------------------- samcpu train --task babi

def run(argv, capsys):
    try:
        code = main(["train", *argv])
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_train_babi_runs_evaluates_and_says_synthetic(tmp_path, small, capsys):
    out = tmp_path / "run"
    code, printed, err = run(["--task", "babi", "--data", str(small), "--steps", "2", "--out", str(out),
                              *TINY], capsys)
    assert code == 0, err
    assert printed.startswith("SYNTHETIC bAbI-format data (made by samcpu, not the bAbI data set)")
    assert "failed tasks (error > 5%)" in printed
    header = (out / "metrics.csv").read_text().splitlines()[0]
    assert header == "episode,level,max_level,loss,error,ms_per_step,seconds"
    report = json.loads((out / "eval.json").read_text())
    assert report["synthetic"] is True and report["episode"] == 2
    assert sorted(report["per_task"]) == ["1", "6"]
    # babi's one level counts as solved (and --anneal lowers the rate) below 5% wrong answers
    assert torch.load(out / "checkpoint.pt", weights_only=True)["args"]["threshold"] == 0.05
    # a resumed run goes on exactly like one run
    ref = tmp_path / "ref"
    assert run(["--task", "babi", "--data", str(small), "--steps", "3", "--out", str(ref), *TINY],
               capsys)[0] == 0
    assert run(["--steps", "3", "--out", str(out), "--resume", *TINY], capsys)[0] == 0
    key = lambda p: [r.split(",")[:5] for r in (p / "metrics.csv").read_text().splitlines()]  # noqa: E731
    assert key(out) == key(ref)


def test_train_babi_with_dam(tmp_path, small, capsys):
    out = tmp_path / "dam"
    code, printed, err = run(["--task", "babi", "--model", "dam", "--data", str(small), "--steps", "1",
                              "--out", str(out), *TINY], capsys)
    assert code == 0, err
    assert json.loads((out / "eval.json").read_text())["per_task"]["1"]["questions"] == 5


@pytest.mark.parametrize("argv, says", [
    (["--task", "babi"], "--task babi needs --data DIR"),
    (["--task", "copy", "--data", "x"], "--data is for --task babi or omniglot, not copy"),
    (["--task", "babi", "--data", "{synthetic}", "--max-level", "3"],
     "--max-level 3: the babi task has no levels"),
    (["--task", "babi", "--data", "{nowhere}"], "nowhere: no such folder"),
])
def test_train_babi_bad_arguments_are_one_line(tmp_path, small, capsys, argv, says):
    argv = [a.format(synthetic=small, nowhere=tmp_path / "nowhere") for a in argv]
    code, _, err = run([*argv, "--steps", "1", "--out", str(tmp_path / "o"), *TINY], capsys)
    assert code == 2 and says in err and len(err.strip().splitlines()) == 1, err

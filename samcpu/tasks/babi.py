"""bAbI question answering (Weston et al. 2015) as Rae et al. 2016 trained it (after the DNC
paper, Graves et al. 2016): one model on all the tasks jointly, word by word.

The standard distribution is the folder ``tasks_1-20_v1-2/en-10k`` of files
``qa{N}_{name}_{train,test}.txt``. Each line is ``{id} {text}``; ids count up from 1 within a
story and a line with id 1 starts a new story. A statement is a sentence; a question is
``{question}\\t{answer}\\t{supporting ids}``, where the answer is one word or several joined
by commas (tasks 8 and 19) and the supporting ids name the statements it rests on.

An episode is one story, every word a 1-hot input. After each question come as many ``-``
steps as its answer has words; there, and only there, the network must output the answer word
(1-hot over the same vocabulary); the loss and the error are masked to those steps. A question
counts as wrong if any of its answer words is; a task fails when its test error exceeds 5%.
"""
import os
import re
from collections import Counter
from typing import NamedTuple

import numpy as np
import torch

from .answers import DataError, answer_error, wrong_answers
from .base import check_int, check_level, to_batch

#: the input word at which the network must output an answer word
ANSWER_PROMPT = "-"
#: a test error above this share of the questions fails the task (Weston et al. 2015)
FAILED_ABOVE = 0.05
#: the name of the file that marks a folder's data as synthetic (written by the generators)
SYNTHETIC_MARK = "SYNTHETIC.txt"

FILE_PATTERN = re.compile(r"qa(\d+)_(.+)_(train|test)\.txt\Z")
_LINE = re.compile(r"(\d+) (.*)\Z")
_WORD = re.compile(r"[^\s.?!]+|[.?!]")


class Line(NamedTuple):
    """One line of a story.

    Attributes
    ----------
    number : int
        The line's id in its story (1, 2, ...).
    words : tuple of str
        The text, lower-cased, its final ``.`` or ``?`` a word of its own.
    answer : tuple of str
        The answer's words (a question), or () (a statement).
    supporting : tuple of int
        The ids of the statements the answer rests on; () for a statement.
    """

    number: int
    words: tuple
    answer: tuple
    supporting: tuple


class Story(NamedTuple):
    """A story: its lines, the task it comes from, and where it is (``path:line``)."""

    task: int
    lines: tuple
    source: str

    @property
    def questions(self):
        """The story's questions, in order."""
        return tuple(line for line in self.lines if line.answer)


class BabiData(NamedTuple):
    """A bAbI folder read: the stories of each task and split, and the vocabulary.

    Attributes
    ----------
    folder : str
        The folder the files were read from.
    train, test : dict of int to list of Story
        The stories of each task number.
    vocabulary : tuple of str
        Every word of the stories and answers, sorted, and ``ANSWER_PROMPT``.
    synthetic : bool
        True if the folder carries the generators' ``SYNTHETIC.txt`` mark.
    """

    folder: str
    train: dict
    test: dict
    vocabulary: tuple
    synthetic: bool


def tokenize(text):
    """Lower-cased words of ``text``; ``.``, ``?`` and ``!`` are words of their own."""
    return tuple(_WORD.findall(text.lower()))


def parse_babi(lines, path, task):
    """The stories of one bAbI file.

    Parameters
    ----------
    lines : iterable of str
        The file's lines.
    path : str
        Named in errors.
    task : int
        Recorded in each story.

    Returns
    -------
    list of Story

    Raises
    ------
    DataError
        Naming ``path`` and the line for a line that is not ``{id} {text}``, an id that does
        not follow the one before (nor restarts at 1), a question without exactly three
        tab-separated fields, an empty answer, a supporting id that is not an earlier
        statement of the story, or a story without a question.
    """
    stories = []
    current, start = None, 0

    def bad(lineno, why):
        return DataError(f"{path}, line {lineno}: {why}")

    def close():
        if current is not None:
            if not any(line.answer for line in current):
                raise bad(start, "this story has no question (a question is 'text<TAB>answer<TAB>"
                                 "supporting ids')")
            stories.append(Story(task, tuple(current), f"{path}:{start}"))

    lineno = 0
    for lineno, raw in enumerate(lines, 1):
        text = raw.rstrip("\r\n")
        if not text.strip():
            continue
        m = _LINE.match(text.lstrip())
        if m is None:
            raise bad(lineno, f"expected '<id> <text>' (an integer, a space, the text), got {text[:60]!r}")
        number = int(m.group(1))
        if number == 1:
            close()
            current, start = [], lineno
        elif current is None:
            raise bad(lineno, f"the first story starts at id {number}, not 1")
        elif number != current[-1].number + 1:
            raise bad(lineno, f"id {number} follows id {current[-1].number}: ids count up by one "
                              "within a story and restart at 1")
        fields = m.group(2).split("\t")
        words = tokenize(fields[0])
        if not words:
            raise bad(lineno, "the line has no text after its id")
        if len(fields) == 1:
            current.append(Line(number, words, (), ()))
            continue
        if len(fields) != 3:
            raise bad(lineno, f"a question has 3 tab-separated fields (question, answer, supporting "
                              f"ids), got {len(fields)}")
        answer = tuple(w.strip().lower() for w in fields[1].split(","))
        if not all(answer) or any(len(tokenize(w)) != 1 or tokenize(w)[0] != w for w in answer):
            raise bad(lineno, f"the answer must be words joined by commas, got {fields[1]!r}")
        statements = {line.number for line in current if not line.answer}
        supporting = []
        for item in fields[2].split():
            if not item.isdigit():
                raise bad(lineno, f"supporting ids must be integers, got {item!r}")
            if int(item) not in statements:
                raise bad(lineno, f"supporting id {item} is not an earlier statement of this story")
            supporting.append(int(item))
        current.append(Line(number, words, answer, tuple(supporting)))
    close()
    return stories


def read_babi_file(path, task):
    """The stories of the file at ``path`` (see :func:`parse_babi`); ``DataError`` naming the
    file if it cannot be read or holds no story."""
    try:
        with open(path, encoding="utf-8") as f:
            stories = parse_babi(f, path, task)
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    if not stories:
        raise DataError(f"{path}: the file holds no story")
    return stories


def find_babi_folder(folder):
    """The folder holding the ``qa*_train.txt`` files: ``folder`` itself, ``folder/en-10k`` or
    ``folder/tasks_1-20_v1-2/en-10k``; ``DataError`` if none does."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise DataError(f"{folder}: no such folder (bAbI wants the folder of qa{{N}}_*_train.txt and "
                        "_test.txt files, e.g. tasks_1-20_v1-2/en-10k)")
    for candidate in (folder, os.path.join(folder, "en-10k"),
                      os.path.join(folder, "tasks_1-20_v1-2", "en-10k")):
        if os.path.isdir(candidate) and any(FILE_PATTERN.match(n) for n in os.listdir(candidate)):
            return candidate
    raise DataError(f"{folder}: no bAbI files here (qa{{N}}_<name>_train.txt and _test.txt), nor in "
                    "en-10k/ or tasks_1-20_v1-2/en-10k/")


def is_synthetic(folder, top=None):
    """True if ``folder``, or a parent of it up to ``top``, holds the ``SYNTHETIC.txt`` mark."""
    folder = os.path.abspath(folder)
    top = os.path.abspath(top) if top is not None else folder
    while True:
        if os.path.isfile(os.path.join(folder, SYNTHETIC_MARK)):
            return True
        if folder == top or os.path.dirname(folder) == folder:
            return False
        folder = os.path.dirname(folder)


def read_babi(folder):
    """Every task's train and test stories under ``folder`` and the vocabulary.

    Parameters
    ----------
    folder : str or os.PathLike
        ``tasks_1-20_v1-2/en-10k`` or a folder laid out the same way (see
        :func:`find_babi_folder`). Every task present needs both its train and test file.

    Returns
    -------
    BabiData

    Raises
    ------
    DataError
        Naming the folder or file: no bAbI files, a task without its train or test file, two
        files for the same task and split, a malformed line (and its line number).
    """
    where = find_babi_folder(folder)
    files = {}
    for name in sorted(os.listdir(where)):
        m = FILE_PATTERN.match(name)
        if m is None:
            continue
        key = (int(m.group(1)), m.group(3))
        path = os.path.join(where, name)
        if key in files:
            raise DataError(f"{path}: a second {key[1]} file for task {key[0]} (the first is "
                            f"{files[key]})")
        files[key] = path
    train, test = {}, {}
    for task in sorted({t for t, _ in files}):
        for split, other in (("train", "test"), ("test", "train")):
            if (task, split) not in files:
                have = files[(task, other)]
                missing = have[: -len(f"_{other}.txt")] + f"_{split}.txt"
                raise DataError(f"{missing} is missing (task {task} has {os.path.basename(have)})")
        train[task] = read_babi_file(files[(task, "train")], task)
        test[task] = read_babi_file(files[(task, "test")], task)
    words = {ANSWER_PROMPT}
    for stories in (*train.values(), *test.values()):
        for story in stories:
            for line in story.lines:
                words.update(line.words)
                words.update(line.answer)
    return BabiData(where, train, test, tuple(sorted(words)), is_synthetic(where, folder))


class EncodedStories(NamedTuple):
    """Stories as one batch, and which question each answer step belongs to.

    Attributes
    ----------
    batch : Batch
        input (T, B, V) 1-hot words, target (T, B, V) 1-hot answer words at the answer steps,
        mask (T, B) 1 exactly at the answer steps; T is the longest story's length (shorter
        ones end with blank, unscored steps).
    question : numpy.ndarray
        int64 (T, B): the index, in ``tasks``, of the question an answer step answers; -1 at
        the other steps.
    tasks : numpy.ndarray
        int64 (Q,): the task of each question.
    """

    batch: object
    question: np.ndarray
    tasks: np.ndarray


def story_tokens(story):
    """The words a story is read as and the answers expected: (tokens, answers, question of
    each answer) with answers[i] the answer word at token i (None elsewhere) and ``-1`` or the
    question's number in the story in the third list."""
    tokens, answers, which = [], [], []
    q = 0
    for line in story.lines:
        tokens.extend(line.words)
        answers.extend([None] * len(line.words))
        which.extend([-1] * len(line.words))
        for word in line.answer:
            tokens.append(ANSWER_PROMPT)
            answers.append(word)
            which.append(q)
        q += bool(line.answer)
    return tokens, answers, which


def encode_babi(stories, vocabulary):
    """The episodes of ``stories`` over ``vocabulary`` (see :class:`EncodedStories`).

    Parameters
    ----------
    stories : sequence of Story
        B >= 1 stories.
    vocabulary : sequence of str
        V words; every word of the stories and their answers must be in it.

    Returns
    -------
    EncodedStories
    """
    if len(stories) < 1:
        raise ValueError("stories must hold at least one story")
    index = {w: i for i, w in enumerate(vocabulary)}
    read = [story_tokens(s) for s in stories]
    steps = max(len(tokens) for tokens, _, _ in read)
    size = len(vocabulary)
    inputs = np.zeros((steps, len(stories), size), np.float32)
    targets = np.zeros_like(inputs)
    mask = np.zeros((steps, len(stories)), np.float32)
    question = np.full((steps, len(stories)), -1, np.int64)
    tasks = []
    for b, ((tokens, answers, which), story) in enumerate(zip(read, stories, strict=True)):
        try:
            inputs[np.arange(len(tokens)), b, [index[w] for w in tokens]] = 1.0
            for t, word in enumerate(answers):
                if word is not None:
                    targets[t, b, index[word]] = 1.0
                    mask[t, b] = 1.0
                    question[t, b] = len(tasks) + which[t]
        except KeyError as e:
            raise ValueError(f"the word {e.args[0]!r} of the story at {story.source} is not in the "
                             "vocabulary") from None
        tasks.extend([story.task] * len(story.questions))
    return EncodedStories(to_batch(inputs, targets, mask), question, np.array(tasks, np.int64))


def question_errors(logits, encoded):
    """Per question, whether any of its answer words is wrong: bool (Q,)."""
    wrong = wrong_answers(logits, encoded.batch.target).numpy()
    scored = encoded.question >= 0
    out = np.zeros(len(encoded.tasks), bool)
    np.logical_or.at(out, encoded.question[scored], wrong[scored])
    return out


class BabiTask:
    """All the bAbI tasks of a folder, jointly: each episode one story.

    A batch draws, for each of its episodes, a task uniformly among those present and then one
    of its training stories; the batch's length is its longest story's. There is no
    curriculum (``max_level`` 1). ``loss = "softmax"``: the answer words are classes.

    Parameters
    ----------
    data : str, os.PathLike or BabiData
        A folder for :func:`read_babi`, or what it returned.
    seed : int, numpy.random.Generator or None
        Source of randomness; a Generator is used as is (not copied).
    """

    loss = "softmax"
    error_name = "error"
    needs_data = True
    default_max_level = 1

    def __init__(self, data, seed=None):
        if data is None:
            raise DataError("bAbI needs its data folder (tasks_1-20_v1-2/en-10k, or one made by "
                            "python -m samcpu.tasks.synthetic_babi)")
        self.data = data if isinstance(data, BabiData) else read_babi(data)
        self.vocabulary = self.data.vocabulary
        self.tasks = tuple(sorted(self.data.train))
        self.input_size = self.output_size = len(self.vocabulary)
        self.max_level = 1
        self.synthetic = self.data.synthetic
        self.rng = np.random.default_rng(seed)

    def describe(self):
        """One line: the tasks, the folder, and SYNTHETIC when the data is."""
        count = sum(len(s) for s in self.data.train.values())
        text = (f"bAbI tasks {', '.join(map(str, self.tasks))} from {self.data.folder} ({count:,d} "
                f"training stories, {len(self.vocabulary)} words)")
        return ("SYNTHETIC bAbI-format data (made by samcpu, not the bAbI data set): " + text
                if self.synthetic else text)

    def sample(self, batch_size, level=None):
        """A batch of ``batch_size`` training stories (see :func:`encode_babi`).

        Parameters
        ----------
        batch_size : int
            B >= 1.
        level : int or None
            1 or None (bAbI has one level).

        Returns
        -------
        Batch
            input (T, B, V), target (T, B, V), mask (T, B).
        """
        batch_size = check_int(batch_size, "batch_size", 1)
        check_level(level, self.max_level)
        picks = self.rng.integers(0, len(self.tasks), size=batch_size)
        stories = []
        for p in picks:
            pool = self.data.train[self.tasks[p]]
            stories.append(pool[int(self.rng.integers(0, len(pool)))])
        return encode_babi(stories, self.vocabulary).batch

    def error(self, logits, target, mask):
        """The share of answer words answered wrongly."""
        return answer_error(logits, target, mask)

    def evaluate(self, model, batch_size=32, level=None, split="test", max_stories=None):
        """Per-task error on a split: the share of questions with a wrong answer word.

        Stories go through ``model`` without gradients, in batches of similar lengths.

        Parameters
        ----------
        model : callable
            ``model(input) -> (logits, state)``, like SAM and DAM.
        batch_size : int
            Stories per forward pass.
        level : ignored
            (the training loop passes its curriculum level to every task).
        split : {"test", "train"}
        max_stories : int or None
            At most this many stories per task (the first ones); None: all.

        Returns
        -------
        dict
            ``split``, ``per_task`` {task: {"error", "questions"}}, ``mean_error``,
            ``failed_tasks`` (error > 5%), ``tasks``, ``synthetic``.
        """
        batch_size = check_int(batch_size, "batch_size", 1)
        if split not in ("test", "train"):
            raise ValueError(f"split must be 'test' or 'train', got {split!r}")
        if max_stories is not None:
            max_stories = check_int(max_stories, "max_stories", 1)
        wrong, total = Counter(), Counter()
        with torch.no_grad():
            for task in self.tasks:
                stories = getattr(self.data, split)[task][:max_stories]
                order = sorted(stories, key=lambda s: len(story_tokens(s)[0]))
                for i in range(0, len(order), batch_size):
                    encoded = encode_babi(order[i:i + batch_size], self.vocabulary)
                    logits, _ = model(encoded.batch.input)
                    errors = question_errors(logits, encoded)
                    wrong[task] += int(errors.sum())
                    total[task] += len(errors)
        per_task = {t: {"error": wrong[t] / total[t], "questions": total[t]} for t in self.tasks}
        errors = [v["error"] for v in per_task.values()]
        return {"task": "babi", "split": split, "synthetic": self.synthetic, "tasks": list(self.tasks),
                "per_task": per_task, "mean_error": float(np.mean(errors)),
                "failed_tasks": sum(e > FAILED_ABOVE for e in errors)}

    @staticmethod
    def summary(report):
        """The lines ``samcpu train`` prints for an :meth:`evaluate` report."""
        head = "SYNTHETIC bAbI-format data: " if report["synthetic"] else ""
        cells = ", ".join(f"{t}: {100 * v['error']:.1f}%" for t, v in report["per_task"].items())
        return [f"{head}{report['split']} error per task ({cells})",
                f"mean error {100 * report['mean_error']:.1f}%; failed tasks (error > "
                f"{100 * FAILED_ABOVE:.0f}%): {report['failed_tasks']} of {len(report['per_task'])}"]

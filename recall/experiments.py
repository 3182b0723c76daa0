"""The three scenarios of the paper (single-model, multi-model, sequential), the representation
analysis and the ablations, as functions over a profile.

Every finished unit (trained expert, merged model, per-example evaluation) is cached under
``runs_dir()/<profile>/seed<seed>/`` (``recall.fsutil.runs_dir``: ``$RECALL_RUNS``, else
``<cache>/runs``) and written atomically, so a rerun or a resumed run recomputes nothing that
finished and never trusts a half-written file. A unit's key holds its configuration, the keys of its
inputs (their folder names) and the fingerprint of the code that makes it
(``recall.fingerprint.code_fingerprint``): after an edit of the training loop, a merge method or the
scorer, the units that code makes are computed again, never served stale. Keys hold paths relative
to the cache, so the same cache reached through another path still hits.

Results come back as long per-example tables (columns ``method``, ``task``, ``example``,
``correct`` and context); ``recall.tables`` derives the results tables from them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .fingerprint import code_fingerprint
from .fsutil import atomic_write_text, cache_dir, runs_dir
from .profiles import ABLATIONS, Profile

WEIGHTS_DELETED = "WEIGHTS_DELETED.md"

# the modules each kind of unit is made by (their imports are followed: recall.fingerprint)
TRAIN_CODE = ("recall.training", "recall.tasks")
EVAL_CODE = ("recall.scoring", "recall.tasks")
MERGE_CODE = ("recall.merge.engine", "recall.tasks")
TINY_CODE = ("recall.tiny",)


def merge_code(method: str) -> tuple[str, ...]:
    """The modules a merge with ``method`` runs: the engine, the method's own module, the task prompts."""
    from .merge import get_method_class

    return MERGE_CODE + (get_method_class(method).__module__,)


def has_weights(folder: Path) -> bool:
    """Whether a model folder holds all its safetensors files."""
    from .merge.safetensors_io import INDEX_NAME, SINGLE_NAME

    index = folder / INDEX_NAME
    if index.exists():
        return all((folder / f).exists() for f in set(json.loads(index.read_text())["weight_map"].values()))
    return (folder / SINGLE_NAME).exists()


def drop_weights(folder: Path) -> None:
    """Delete a model folder's safetensors files (index first, so an interrupted deletion never looks
    complete) and leave a note saying so."""
    from .merge.safetensors_io import INDEX_NAME

    atomic_write_text(folder / WEIGHTS_DELETED, "# Weights deleted\n\nThe weights of this merged model were "
                      "deleted after its scores were cached, to save disk. The experiments merge it again "
                      "when they need it; a profile with `keep_merged=True` keeps them.\n")
    (folder / INDEX_NAME).unlink(missing_ok=True)
    for f in sorted(folder.glob("*.safetensors")):
        f.unlink()


def _key(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _digest(samples) -> str:
    """A key for the exact data a unit reads (texts, answers, tags), whatever profile fields produced it."""
    return _key([[s.text, s.answer, s.model] for s in samples]) if samples else ""


@dataclass
class Run:
    """One profile and seed: the cache folder and the cached units."""

    profile: Profile
    seed: int = 0
    progress: bool = True
    root: Path = field(init=False)
    timings: dict = field(default_factory=dict)
    _data: dict = field(default_factory=dict, repr=False)
    _recipes: dict = field(default_factory=dict, repr=False)  # merged folder -> what merge() was asked
    _tuning: dict = field(default_factory=dict, repr=False)  # scenario (and order) -> tuning table
    trained: list = field(default_factory=list, repr=False)  # checkpoints this run trained or found cached

    def __post_init__(self):
        if self.profile.model == "tiny":  # tiny kernels gain nothing from threads and lose a lot on busy machines
            import torch

            torch.set_num_threads(1)
        self.root = runs_dir() / self.profile.name / f"seed{self.seed}"
        self.root.mkdir(parents=True, exist_ok=True)

    def ref(self, path) -> str:
        """A path as it enters a cache key: relative to the runs folder or the cache when inside them (so the
        same cache reached through another path gives the same keys), else absolute."""
        p = Path(path).resolve()
        for tag, root in (("runs", runs_dir().resolve()), ("cache", cache_dir().resolve())):
            if p.is_relative_to(root):
                return f"{tag}:{p.relative_to(root).as_posix()}"
        return str(p)

    # ------------------------------------------------------------------ model and data
    @functools.cached_property
    def base(self) -> Path:
        if self.profile.model == "tiny":
            from .tiny import make_tiny_checkpoint

            path = self.root / f"base-tiny-{_key(code_fingerprint(*TINY_CODE))}"
            if not (path / "config.json").exists():
                from .fsutil import atomic_dir

                with atomic_dir(path, force=True) as tmp:
                    make_tiny_checkpoint(tmp, seed=1234, num_layers=4, hidden=32)
            return path
        from .assets import resolve_model

        return Path(resolve_model(self.profile.model))

    @functools.cached_property
    def tokenizer(self):
        from .assets import load_tokenizer

        return load_tokenizer(self.base)

    def data(self, task: str):
        """The task's splits (train only for training tasks), loaded once per run."""
        from .tasks import load_task

        if task not in self._data:
            p = self.profile
            n_train = p.n_train if task in p.tasks else 0
            self._data[task] = load_task(task, n_train=n_train, n_val=p.n_val, n_test=p.n_test, seed=self.seed)
        return self._data[task]

    def options(self, scenario: str, method: str, task_order: tuple[str, ...] | None = None) -> dict:
        """The options of ``method`` in ``scenario``: the profile's (``Profile.options_for``) with the values tuned
        on validation (``recall.tuning``; multi-model and sequential scenarios, when the profile tunes)."""
        from .tuning import chosen

        opts = self.profile.options_for(scenario, method) if method not in ("sft", "ewc") else {}
        if scenario == "multi":
            opts.update(chosen(multi_tuning(self), method))
        elif scenario == "sequential":
            opts.update(chosen(sequential_tuning(self, task_order), method))
        return opts

    def task(self, name: str):
        """Task ``name`` with the profile's label casing."""
        from .tasks import get_task

        return get_task(name, casing=self.profile.label_casing)

    def train_samples(self, task: str):
        return self.task(task).samples(self.data(task)["train"], self.tokenizer, self.profile.max_text_tokens)

    def candidate_samples(self, task: str):
        """The new task's candidate samples, for typical-sample selection and LM-Cocktail: the first
        ``n_candidates`` of its training split."""
        return self.train_samples(task)[: self.profile.n_candidates]

    def merge_samples(self, samples_task: str | list[str] | None):
        """The candidate samples a merge reads: of one task, or of one task per model, tagged with its index."""
        from dataclasses import replace

        if not samples_task:
            return None
        if isinstance(samples_task, str):
            return self.candidate_samples(samples_task)
        return [replace(s, model=i) for i, t in enumerate(samples_task) for s in self.candidate_samples(t)]

    # ------------------------------------------------------------------ units
    def _timed(self, what: str, t0: float):
        self.timings[what] = round(self.timings.get(what, 0) + time.time() - t0, 2)

    def train(self, start: Path, tasks: tuple[str, ...], name: str, ewc=None, **overrides) -> Path:
        """Fine-tune ``start`` on ``tasks`` (one task, or several = multi-task on their union), cached."""
        from .training import train_and_save

        cfg = self.profile.train_config(overrides.pop("seed", self.seed), **overrides)
        samples = [s for t in tasks for s in self.train_samples(t)]  # multi-task: finetune shuffles (seeded)
        key = _key([self.ref(start), tasks, cfg.to_dict(), _digest(samples), code_fingerprint(*TRAIN_CODE)])
        out = self.root / "models" / f"{name}-{key}"
        t0 = time.time()
        path = train_and_save(self.weights_of(start), samples, cfg, out, ewc=ewc, progress=self.progress)
        self._timed("training", t0)
        if path not in self.trained:
            self.trained.append(path)
        return path

    def expert(self, task: str, seed: int | None = None) -> Path:
        """The LoRA expert of ``task``; ``seed`` other than the run's: a second expert of the same task (C1's null)."""
        if seed is None or seed == self.seed:
            return self.train(self.base, (task,), f"expert-{task}")
        return self.train(self.base, (task,), f"expert-{task}-seed{seed}", seed=seed)

    def multitask(self) -> Path:
        return self.train(self.base, tuple(self.profile.tasks), "multitask")

    def merge(self, method: str, models: list[Path], samples_task: str | list[str] | None, base: Path | None = None,
              name: str | None = None, **options) -> Path:
        """Merge ``models`` (oldest first) with ``method`` and ``options`` (over the registry defaults); cached
        by inputs, the method's full options and the merge code. ``samples_task``: the task whose candidate
        samples the method reads, or one task per model (the samples are then tagged with their model's index,
        for RECALL's ``anchor="each"``). A folder whose weights ``release`` deleted is returned as is;
        ``evaluate`` and ``train`` merge it again if they need its weights."""
        from .merge import get_method

        opts = get_method(method, **options).options()  # every option, defaults included: one key per merge
        base = self.base if base is None else base
        key = _key([method, opts, [self.ref(m) for m in models], self.ref(base), samples_task,
                    _digest(self.merge_samples(samples_task)), code_fingerprint(*merge_code(method))])
        out = self.root / "merged" / f"{name or method}-{key}"
        self._recipes[out] = (method, list(models), samples_task, base, dict(options))
        if not (out / "merge_config.json").exists():
            self._merge(out)
        return out

    def _merge(self, out: Path) -> None:
        from .merge import get_method
        from .merge.engine import merge_models

        method, models, samples_task, base, opts = self._recipes[out]
        samples = self.merge_samples(samples_task)
        t0 = time.time()
        merge_models(get_method(method, **opts), [self.weights_of(m) for m in models], out, base=base,
                     samples=samples, seed=self.seed, progress=self.progress, device=self.profile.device, force=True)
        self._timed("merging", t0)

    def weights_of(self, model: Path) -> Path:
        """``model``, merged again first if ``release`` deleted its weights."""
        model = Path(model)
        if model in self._recipes and not has_weights(model):
            self._merge(model)
        return model

    def release(self, model: Path) -> None:
        """Delete the weights of a merged model nothing more is computed from (its scores are cached),
        unless the profile keeps them (``keep_merged``); its config, card and weights table stay. A folder
        without weights is left alone (a fully cached rerun writes nothing)."""
        model = Path(model)
        if self.profile.keep_merged or model not in self._recipes or not has_weights(model):
            return
        drop_weights(model)

    def _eval_file(self, model: Path, task: str, split: str = "test") -> Path:
        p = self.profile
        ds = self.data(task)[split]
        data = _key([list(ds["text"]), list(ds["label"])])
        key = _key([self.ref(model), task, split, data, p.max_text_tokens, p.label_casing, p.scoring,
                    code_fingerprint(*EVAL_CODE)] + ([p.eval_autocast] if p.eval_autocast else []))
        tag = "" if split == "test" else f"-{split}"
        return self.root / "evals" / f"{Path(model).name}-{task}{tag}-{key}.csv"

    def evaluate(self, model: Path, task: str, loaded=None, split: str = "test") -> pd.DataFrame:
        """Per-example rank-classification results of ``model`` on ``task``'s ``split`` (test or validation;
        cached CSV). ``loaded``: the (model, tokenizer) pair of ``model`` if already in memory."""
        f = self._eval_file(model, task, split)
        if f.exists():
            return pd.read_csv(f)
        from .assets import load_model
        from .scoring import score_task

        p = self.profile
        t0 = time.time()
        mdl, tok = loaded or load_model(self.weights_of(model), device=p.device, device_map=p.device_map)
        df = score_task(mdl, tok, self.task(task), self.data(task)[split], max_text_tokens=p.max_text_tokens,
                        batch_size=p.eval_batch_size, progress=self.progress, scoring=p.scoring,
                        autocast=p.eval_autocast)
        atomic_write_text(f, df.to_csv(index=False))
        self._timed("evaluation", t0)
        return df

    def evaluate_on(self, model: Path, tasks, split: str = "test", **context) -> pd.DataFrame:
        """Per-example results of ``model`` on several tasks (loads the model once), with context columns."""
        from .assets import load_model

        loaded = None
        if any(not self._eval_file(model, t, split).exists() for t in tasks):
            loaded = load_model(self.weights_of(model), device=self.profile.device,
                                device_map=self.profile.device_map)
        frames = [self.evaluate(model, t, loaded, split)[["example", "label", "pred", "correct"]]
                  .assign(task=t, **context) for t in tasks]
        return pd.concat(frames, ignore_index=True)

    @property
    def all_tasks(self) -> tuple[str, ...]:
        return tuple(self.profile.tasks) + tuple(self.profile.unseen)


# ---------------------------------------------------------------------- scenarios

EXAMPLE_COLUMNS = ["example", "label", "pred", "correct"]


def single_model(run: Run) -> pd.DataFrame:
    """Paper's single-model merging: per task, merge its expert into the base with each method.

    Each merged model is scored on its own task (new-task performance) and on the unseen tasks
    (general ability). Returns the ``single_examples`` table (``recall.tables``): method ("base",
    "expert", or a merge method), expert_task, task, example, label, pred, correct.
    """
    p = run.profile
    frames = []
    for t in p.tasks:
        tasks = (t,) + tuple(p.unseen)
        frames.append(run.evaluate_on(run.base, tasks, method="base", expert_task=t))
        expert = run.expert(t)
        frames.append(run.evaluate_on(expert, tasks, method="expert", expert_task=t))
        for m in p.single_methods:
            merged = run.merge(m, [expert], samples_task=t, name=f"single-{t}-{m}", **p.options_for("single", m))
            frames.append(run.evaluate_on(merged, tasks, method=m, expert_task=t))
            run.release(merged)
    df = pd.concat(frames, ignore_index=True)
    return df[["method", "expert_task", "task", *EXAMPLE_COLUMNS]]


def _multi_merge(run: Run, method: str, options: dict | None = None) -> Path:
    """The multi-model merge of the base and every expert (oldest first) with ``method`` and ``options`` (default:
    the scenario's, tuned: ``Run.options``); for the methods that read samples, M_N is the last expert and the
    samples come from its task (our reading of the paper), or each expert's own task with ``anchor="each"``."""
    from .merge import get_method

    p = run.profile
    order = list(p.task_order)
    experts = [run.expert(t) for t in order]
    opts = run.options("multi", method) if options is None else options
    each = get_method(method, **opts).options().get("anchor") == "each"
    return run.merge(method, experts, samples_task=order if each else order[-1], name=f"multi-{method}", **opts)


def multi_tuning(run: Run) -> pd.DataFrame:
    """The ``multi_tuning`` table (``recall.tuning.tune_multi``; cached units, so a second call only reads)."""
    from .tuning import COLUMNS, tune_multi

    if "multi" not in run._tuning:
        p = run.profile
        run._tuning["multi"] = tune_multi(run, p.multi_methods) if p.tune else pd.DataFrame(columns=COLUMNS)
    return run._tuning["multi"]


def sequential_tuning(run: Run, task_order: tuple[str, ...] | None = None) -> pd.DataFrame:
    """The ``seq_tuning`` table of ``task_order`` (``recall.tuning.tune_sequential``)."""
    from .tuning import COLUMNS, tune_sequential

    p = run.profile
    order = p.chain(task_order)
    if ("sequential", order) not in run._tuning:
        run._tuning["sequential", order] = (tune_sequential(run, order, p.sequential_methods) if p.tune
                                            else pd.DataFrame(columns=COLUMNS))
    return run._tuning["sequential", order]


def multi_model(run: Run) -> pd.DataFrame:
    """Paper's multi-model merging: base + the task experts into one model, scored on every task and the
    unseen tasks. References: the base, each expert on its own task, multi-task training (not data-free).
    Returns the ``multi_examples`` table (method, task, example, label, pred, correct)."""
    p = run.profile
    order = list(p.task_order)
    experts = [run.expert(t) for t in order]
    frames = [run.evaluate_on(run.base, run.all_tasks, method="base")]
    for t, e in zip(order, experts):
        frames.append(run.evaluate_on(e, (t,) + tuple(p.unseen), method=f"expert-{t}"))
    if p.multitask:
        frames.append(run.evaluate_on(run.multitask(), run.all_tasks, method="multitask"))
    for m in p.multi_methods:
        merged = _multi_merge(run, m)
        frames.append(run.evaluate_on(merged, run.all_tasks, method=m))
        run.release(merged)
    df = pd.concat(frames, ignore_index=True)
    return df[["method", "task", *EXAMPLE_COLUMNS]]


def multi_recall_weights(run: Run) -> pd.DataFrame:
    """The ``multi_recall_weights`` table: the layer weights of the multi-model RECALL merge (cached by
    :func:`multi_model`), columns named ``base`` and ``expert-<task>``."""
    order = list(run.profile.task_order)
    w = merge_weights(_multi_merge(run, "recall"))
    w.columns = list(w.columns[: len(w.columns) - len(order)]) + [f"expert-{t}" for t in order]
    return w


def sequential(run: Run, task_order: tuple[str, ...] | None = None,
               methods: tuple[str, ...] | None = None) -> pd.DataFrame:
    """Sequential fine-tuning over the chain of ``task_order`` (``Profile.chain``: its first ``chain_length``
    tasks): after step t the model is scored on tasks 1..t+1 of the chain (the lower triangle of R, its diagonal
    and the superdiagonal that FWT reads) and, at the last step, on every task of the chain and the unseen tasks.
    A step whose training inputs equal those of a checkpoint the run already has (step 1: the expert of the first
    task; steps 2 of sft and ewc: the tuning's) reuses it: same base, config, samples and EWC tasks.

    Methods: "sft" (plain sequential LoRA fine-tuning), "ewc" (EWC penalty), or a merge method: after
    fine-tuning task t from the current model, merge {current, new} with typical samples of task t
    (the notes' protocol; the base model is the reference for task-vector methods), or, for a method whose
    ``sequential_pool`` is "history" (``recall_history``), {base, M_1..M_t}: every step's fine-tuned model.
    Returns the ``seq_examples`` table: method, step (1..T), task, example, label, pred, correct.
    """
    from .catalog import TRAINING
    from .merge import get_method_class
    from .training import sequential_finetune

    p = run.profile
    order = p.chain(task_order)
    methods = tuple(methods or p.sequential_methods)
    samples = {t: run.train_samples(t) for t in order}
    run.expert(order[0])  # step 1 of every chain is this expert (found by fingerprint, not trained again)
    frames = []
    for m in methods:
        ewc = m == "ewc"
        tuned = run.options("sequential", m, order)
        cfg = p.train_config(run.seed, **({"ewc_lambda": tuned.get("ewc_lambda", p.ewc_lambda),
                                            "ewc_samples": p.ewc_samples} if ewc else {}))
        opts = {} if m in TRAINING else tuned
        code = code_fingerprint(*TRAIN_CODE) + ("" if m in TRAINING else code_fingerprint(*merge_code(m)))
        root = run.root / "sequential" / f"{m}-{'-'.join(order)}-{_key([cfg.to_dict(), opts, code])}"
        state = {"current": run.base, "history": []}  # the model the next step starts from; M_1..M_t
        history = m not in TRAINING and get_method_class(m).sequential_pool == "history"

        def after(step, task, ckpt, m=m, state=state, opts=opts, history=history):
            if m in TRAINING:
                return None
            state["history"].append(ckpt)
            pool = list(state["history"]) if history else [state["current"], ckpt]
            merged = run.merge(m, pool, samples_task=task, name=f"seq-{m}-step{step}-{task}", **opts)
            state["current"] = merged
            return merged

        t0, merging = time.time(), run.timings.get("merging", 0.0)
        steps = sequential_finetune(run.base, order, samples, cfg, root, ewc=ewc, after_task=after,
                                    progress=run.progress, reuse=run.trained)
        run._timed("training", t0 + run.timings.get("merging", 0.0) - merging)  # the merges in after() are merging
        for i, model in enumerate(steps, 1):
            # the tasks learned so far and the next one (what AP, BWT, FWT and forgetting read), at the end all
            tasks = order[: i + 1] + (tuple(p.unseen) if i == len(order) else ())
            frames.append(run.evaluate_on(model, tasks, method=m, step=i))
    df = pd.concat(frames, ignore_index=True)
    return df[["method", "step", "task", *EXAMPLE_COLUMNS]]


def base_examples(run: Run, tasks) -> pd.DataFrame:
    """The ``seq_base_examples`` table: the base model's per-example results on ``tasks``."""
    return run.evaluate_on(run.base, tasks)[["task", *EXAMPLE_COLUMNS]]


def ablations(run: Run) -> pd.DataFrame:
    """RECALL variants (``ABLATIONS``: options over the multi-model RECALL merge's) in the multi-model
    scenario, scored on the training tasks. Returns the ``ablation_examples`` table."""
    p = run.profile
    order = list(p.task_order)
    experts = [run.expert(t) for t in order]
    frames = []
    for name in ("default",) + tuple(p.ablations):
        merged = run.merge("recall", experts, samples_task=order[-1], name=f"ablation-{name}",
                           **{**run.options("multi", "recall"), **ABLATIONS[name]})
        frames.append(run.evaluate_on(merged, p.tasks, variant=name))
        run.release(merged)
    df = pd.concat(frames, ignore_index=True)
    return df[["variant", "task", *EXAMPLE_COLUMNS]]


READINGS = ("default", "literal", "sklearn_rbf", "prompt_pooling")  # the readings the method page compares


def recall_diagnostics(run: Run) -> pd.DataFrame:
    """The ``recall_diagnostics`` table: the diagnostics (``recall_diagnostics.csv``) of the multi-model RECALL
    merge of each reading in ``READINGS`` that the profile runs (the ablations' merges: cached), pool models named
    ``base`` and ``expert-<task>``."""
    from .merge.pool import pool_labels

    p = run.profile
    order = list(p.task_order)
    experts = [run.expert(t) for t in order]
    # the merge labels its pool by folder name (recall.merge.pool.pool_labels); here by role
    names = dict(zip(pool_labels("base", experts, True), ["base", *(f"expert-{t}" for t in order)], strict=True))
    frames = []
    for name in READINGS:
        if name != "default" and name not in p.ablations:
            continue
        merged = run.merge("recall", experts, samples_task=order[-1],
                           name=f"ablation-{name}", **{**run.options("multi", "recall"), **ABLATIONS[name]})
        d = pd.read_csv(merged / "recall_diagnostics.csv")
        frames.append(d.assign(variant=name, anchor=d["anchor"].map(names), model=d["model"].map(names)))
    cols = ["variant", "layer", "anchor", "model", "D", "S", "delta", "similarity", "weight"]
    return pd.concat(frames, ignore_index=True)[cols]


def merge_weights(path: Path) -> pd.DataFrame:
    """The weights table a merge wrote (``recall_weights.csv``)."""
    return pd.read_csv(Path(path) / "recall_weights.csv", index_col=0)


def representation_analysis(run: Run, n_samples: int = 32) -> dict[str, pd.DataFrame]:
    """Within-model adjacent-layer similarity and per-layer similarity between task experts (claim C1).

    Samples: ``n_samples`` test texts spread evenly over the training tasks (``tables.probes_per_task``;
    prompts formatted as in evaluation). Besides the experts, a second expert of the first task trained with
    another seed (``expert-<task>-seed<n>``) gives the null: how far two experts of one task drift apart by the
    seed alone. Returns the tables ``adjacent`` (model, layer, measure, similarity), ``pairwise`` (layer,
    model_a, model_b, measure, similarity; the experts and the null expert), ``to_base`` (layer, model,
    measure, similarity) and ``c1_replicates`` (the C1 statistics of ``recall.tables.c1_statistics`` in
    ``n_boot`` replicates that resample the probe samples and the experts, for the intervals of C1).
    """
    from .assets import load_model
    from .representations import layer_representations
    from .similarity import adjacent_layer_similarity, similarity_matrix
    from .tables import probes_per_task

    p = run.profile
    per = probes_per_task(n_samples, len(p.tasks))
    texts = []
    for t in p.tasks:
        ds = run.data(t)["test"]
        texts += [run.task(t).prompt(x, run.tokenizer, p.max_text_tokens) for x in ds["text"][:per]]
    null_name = f"expert-{p.tasks[0]}-seed{run.seed + 1}"
    names = ["base"] + [f"expert-{t}" for t in p.tasks] + [null_name]
    paths = [run.base] + [run.expert(t) for t in p.tasks] + [run.expert(p.tasks[0], seed=run.seed + 1)]
    reps = []
    for n, path in zip(names, paths):
        mdl, tok = load_model(path, device=p.device, device_map=p.device_map)
        reps.append(layer_representations(mdl, tok, texts, batch_size=p.eval_batch_size, progress=run.progress,
                                          desc=f"representations {n}").numpy())
    measures = ("rbf", "cka_linear")
    adjacent = [{"model": n, "layer": i + 1, "measure": measure, "similarity": float(v)}
                for n, r in zip(names[:-1], reps[:-1]) for measure in measures
                for i, v in enumerate(adjacent_layer_similarity(r, measure))]
    pairwise, to_base = [], []
    for measure in measures:
        sm = similarity_matrix(reps[1:], measure)  # the experts and the null expert
        pairwise += [{"layer": layer, "model_a": names[1 + a], "model_b": names[1 + b], "measure": measure,
                      "similarity": float(sm[layer, a, b])}
                     for layer in range(sm.shape[0]) for a in range(sm.shape[1]) for b in range(sm.shape[2])]
    for measure in measures:
        sm = similarity_matrix(reps[:-1], measure)
        to_base += [{"layer": layer, "model": names[j], "measure": measure, "similarity": float(sm[layer, 0, j])}
                    for layer in range(sm.shape[0]) for j in range(1, len(names) - 1)]
    replicates = c1_replicates(reps[1:-1], (reps[1], reps[-1]), measures, p.n_boot, run.seed)
    return {"adjacent": pd.DataFrame(adjacent), "pairwise": pd.DataFrame(pairwise), "to_base": pd.DataFrame(to_base),
            "c1_replicates": replicates}


def c1_replicates(experts: list, null_pair: tuple, measures, n_boot: int, seed: int) -> pd.DataFrame:
    """The ``c1_replicates`` table: ``recall.tables.c1_statistics`` in ``n_boot`` replicates, each resampling
    the probe samples (with replacement, the same draw for every model) and the experts (with replacement; the
    cross-task curve averages the pairs of distinct drawn experts). ``experts``: (L+1, N, H) arrays, one per
    task; ``null_pair``: the two same-task experts. Each layer's Gram matrices are computed once
    (``recall.similarity.ResampledPairs``): a replicate only indexes them."""
    from .similarity import ResampledPairs
    from .tables import c1_statistics

    pairs = ResampledPairs(list(experts) + list(null_pair))
    rng = np.random.default_rng([int(seed), 1])
    n, m = pairs.n, len(experts)
    rows = []
    for r in range(n_boot):
        idx = rng.integers(0, n, size=n)
        drawn = sorted(set(rng.integers(0, m, size=m).tolist()))
        while len(drawn) < 2:  # one expert drawn m times has no pair: draw again
            drawn = sorted(set(rng.integers(0, m, size=m).tolist()))
        for measure in measures:
            cross = np.mean([pairs.similarity(i, j, idx, measure) for i in drawn for j in drawn if i < j], axis=0)
            null = pairs.similarity(m, m + 1, idx, measure)
            rows += [{"replicate": r, "measure": measure, "statistic": k, "value": v}
                     for k, v in c1_statistics(cross, null).items()]
    return pd.DataFrame(rows)


def efficiency(run: Run, n_models_list=(2, 3, 5), engines=("streaming", "memory")) -> pd.DataFrame:
    """Wall time and peak RSS of our merge step (a given layer-wise weights table, ``recall merge --method
    layer_linear``) as a whole process, versus the number of models and the engine, on perturbed copies of
    the run's base model. For the comparison with mergekit see ``benchmarks/merge_speed.py``."""
    import shutil
    import sys

    from .bench import measure
    from .merge.layers import num_layers_of
    from .tiny import make_tiny_checkpoint

    work = run.root / "efficiency" / _key([run.ref(run.base), code_fingerprint(*TINY_CODE)])
    copies = []
    for i in range(max(n_models_list)):
        path = work / f"copy{i}"
        if not (path / "config.json").exists():
            from .fsutil import atomic_dir

            with atomic_dir(path, force=True) as tmp:  # a killed run never leaves a half copy that looks done
                make_tiny_checkpoint(tmp, seed=100 + i, perturb_from=run.base, noise=1e-3)
        copies.append(path)
    num_layers = num_layers_of(json.loads((run.base / "config.json").read_text()))
    size_mib = sum(f.stat().st_size for f in run.base.glob("*.safetensors")) / 2**20
    rows = []
    rng = np.random.default_rng(run.seed)
    for n in n_models_list:
        table = rng.dirichlet(np.ones(n), size=num_layers + 1)
        csv = work / f"weights-{n}.csv"
        pd.DataFrame(table, columns=[f"m{i}" for i in range(n)]).rename_axis("layer").to_csv(csv)
        for engine in engines:
            out = work / f"out-{n}-{engine}"
            cmd = [sys.executable, "-m", "recall", "merge", "--method", "layer_linear", "-o", f"weights={csv}",
                   "-o", "include_base=false", "--models", *copies[:n], "--out", out, "--engine", engine,
                   "--force", "--quiet"]
            res = measure(cmd, work / f"log-{n}-{engine}.txt")
            shutil.rmtree(out, ignore_errors=True)  # only the timing is kept
            rows.append({"models": n, "engine": engine, "model_mib": round(size_mib, 1),
                         "wall_s": round(res["wall_s"], 2), "peak_rss_mib": round(res["peak_rss_mib"], 1),
                         "cpu_s": round(res["cpu_s"], 2)})
    return pd.DataFrame(rows)

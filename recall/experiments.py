"""The three scenarios of the paper (single-model, multi-model, sequential), the representation
analysis and the ablations, as functions over a profile.

Every finished unit (trained expert, merged model, per-example evaluation) is cached under
``cache_dir()/runs/<profile>/seed<seed>/`` with a key of its configuration and written
atomically, so a rerun or a resumed run recomputes nothing that finished and never trusts a
half-written file. Results come back as long per-example tables (columns ``method``, ``task``,
``example``, ``correct`` and context), which ``recall.cl_metrics`` turns into tables with paired
bootstrap intervals.
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

from .fsutil import atomic_write_text, cache_dir
from .profiles import ABLATIONS, Profile

WEIGHTS_DELETED = "WEIGHTS_DELETED.md"


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


# Options of the baselines in our experiments: the registry defaults (their papers' values), except where
# a scenario needs the base in the pool.
METHOD_OPTIONS: dict[str, dict] = {
    "recall": {},
    "average": {"include_base": False},
    "task_arithmetic": {},
    "ties": {},
    "dare": {},
    "lm_cocktail": {},
    "magmax": {},
}


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

    def __post_init__(self):
        if self.profile.model == "tiny":  # tiny kernels gain nothing from threads and lose a lot on busy machines
            import torch

            torch.set_num_threads(1)
        self.root = cache_dir() / "runs" / self.profile.name / f"seed{self.seed}"
        self.root.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ model and data
    @functools.cached_property
    def base(self) -> Path:
        if self.profile.model == "tiny":
            from .testing import make_tiny_checkpoint

            path = self.root / "base-tiny"
            if not (path / "config.json").exists():
                from .fsutil import atomic_dir

                with atomic_dir(path, force=True) as tmp:
                    make_tiny_checkpoint(tmp, seed=1234, num_layers=4, hidden=32)
            return path
        from .assets import resolve_model

        return Path(resolve_model(self.profile.model))

    @functools.cached_property
    def tokenizer(self):
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(self.base)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        tok.padding_side = "left"
        return tok

    def data(self, task: str):
        """The task's splits (train only for training tasks), loaded once per run."""
        from .tasks import load_task

        if task not in self._data:
            p = self.profile
            n_train = p.n_train if task in p.tasks else 0
            self._data[task] = load_task(task, n_train=n_train, n_val=p.n_val, n_test=p.n_test, seed=self.seed)
        return self._data[task]

    def train_samples(self, task: str):
        from .tasks import get_task

        return get_task(task).samples(self.data(task)["train"], self.tokenizer, self.profile.max_text_tokens)

    def pool_samples(self, task: str):
        """Candidate samples of the new task for typical-sample selection and LM-Cocktail."""
        return self.train_samples(task)[: self.profile.sample_pool]

    # ------------------------------------------------------------------ units
    def _timed(self, what: str, t0: float):
        self.timings[what] = round(self.timings.get(what, 0) + time.time() - t0, 2)

    def train(self, start: Path, tasks: tuple[str, ...], name: str, ewc=None, **overrides) -> Path:
        """Fine-tune ``start`` on ``tasks`` (one task, or several = multi-task), cached."""
        from .training import train_and_save

        cfg = self.profile.train_config(self.seed, **overrides)
        samples = [s for t in tasks for s in self.train_samples(t)]  # multi-task: finetune shuffles (seeded)
        out = self.root / "models" / f"{name}-{_key([str(start), tasks, cfg.to_dict()])}"
        t0 = time.time()
        path = train_and_save(self.weights_of(start), samples, cfg, out, ewc=ewc, progress=self.progress)
        self._timed("training", t0)
        return path

    def expert(self, task: str) -> Path:
        return self.train(self.base, (task,), f"expert-{task}")

    def multitask(self) -> Path:
        return self.train(self.base, tuple(self.profile.tasks), "multitask")

    def merge(self, method: str, models: list[Path], samples_task: str | None, base: Path | None = None,
              name: str | None = None, **options) -> Path:
        """Merge ``models`` (oldest first) with ``method``; cached by inputs and options. A folder whose
        weights ``release`` deleted is returned as is; ``evaluate`` and ``train`` merge it again if they
        need its weights."""
        opts = {**METHOD_OPTIONS.get(method, {}), **options}
        if method == "recall":
            opts.setdefault("k", self.profile.recall_k)
        base = self.base if base is None else base
        key = _key([method, opts, [str(m) for m in models], str(base), samples_task, self.profile.sample_pool])
        out = self.root / "merged" / f"{name or method}-{key}"
        self._recipes[out] = (method, list(models), samples_task, base, opts)
        if not (out / "merge_config.json").exists():
            self._merge(out)
        return out

    def _merge(self, out: Path) -> None:
        from .merge import get_method
        from .merge.engine import merge_models

        method, models, samples_task, base, opts = self._recipes[out]
        samples = self.pool_samples(samples_task) if samples_task else None
        t0 = time.time()
        merge_models(get_method(method, **opts), models, out, base=base, samples=samples, seed=self.seed,
                     progress=self.progress, device=self.profile.device, force=True)
        self._timed("merging", t0)

    def weights_of(self, model: Path) -> Path:
        """``model``, merged again first if ``release`` deleted its weights."""
        model = Path(model)
        if model in self._recipes and not has_weights(model):
            self._merge(model)
        return model

    def release(self, model: Path) -> None:
        """Delete the weights of a merged model nothing more is computed from (its scores are cached),
        unless the profile keeps them (``keep_merged``); its config, card and weights table stay."""
        if self.profile.keep_merged or Path(model) not in self._recipes:
            return
        drop_weights(Path(model))

    def _eval_file(self, model: Path, task: str) -> Path:
        p = self.profile
        key = _key([str(model), task, p.n_test, p.max_text_tokens, self.seed])
        return self.root / "evals" / f"{Path(model).name}-{task}-{key}.csv"

    def evaluate(self, model: Path, task: str, loaded=None) -> pd.DataFrame:
        """Per-example rank-classification results of ``model`` on ``task``'s test split (cached CSV).
        ``loaded``: the (model, tokenizer) pair of ``model`` if already in memory."""
        f = self._eval_file(model, task)
        if f.exists():
            return pd.read_csv(f)
        from .assets import load_model
        from .scoring import score_task
        from .tasks import get_task

        p = self.profile
        t0 = time.time()
        mdl, tok = loaded or load_model(self.weights_of(model), device=p.device)
        df = score_task(mdl, tok, get_task(task), self.data(task)["test"], max_text_tokens=p.max_text_tokens,
                        batch_size=p.eval_batch_size, progress=self.progress)
        atomic_write_text(f, df.to_csv(index=False))
        self._timed("evaluation", t0)
        return df

    def evaluate_on(self, model: Path, tasks, **context) -> pd.DataFrame:
        """Per-example results of ``model`` on several tasks (loads the model once), with context columns."""
        from .assets import load_model

        loaded = None
        if any(not self._eval_file(model, t).exists() for t in tasks):
            loaded = load_model(self.weights_of(model), device=self.profile.device)
        frames = [self.evaluate(model, t, loaded)[["example", "label", "pred", "correct"]].assign(task=t, **context)
                  for t in tasks]
        return pd.concat(frames, ignore_index=True)

    @property
    def all_tasks(self) -> tuple[str, ...]:
        return tuple(self.profile.tasks) + tuple(self.profile.unseen)


# ---------------------------------------------------------------------- scenarios


def single_model(run: Run) -> pd.DataFrame:
    """Paper's single-model merging: per task, merge its expert into the base with each method.

    Each merged model is scored on its own task (new-task performance) and on the unseen tasks
    (general ability). Rows: method ("base", "expert", or a merge method), expert_task, task, example, correct.
    """
    p = run.profile
    frames = []
    for t in p.tasks:
        tasks = (t,) + tuple(p.unseen)
        frames.append(run.evaluate_on(run.base, tasks, method="base", expert_task=t))
        expert = run.expert(t)
        frames.append(run.evaluate_on(expert, tasks, method="expert", expert_task=t))
        for m in p.single_methods:
            merged = run.merge(m, [expert], samples_task=t, name=f"single-{t}-{m}",
                               **({"include_base": True} if m == "average" else {}))
            frames.append(run.evaluate_on(merged, tasks, method=m, expert_task=t))
            run.release(merged)
    return pd.concat(frames, ignore_index=True)


def multi_model(run: Run) -> pd.DataFrame:
    """Paper's multi-model merging: base + the task experts into one model, scored on every task and the
    unseen tasks. References: the base, each expert on its own task, multi-task training (not data-free).

    For RECALL and LM-Cocktail the "new" model M_N is the last expert in task order and the samples
    come from its task (our reading; the paper's multi-model protocol is not specified further).
    """
    p = run.profile
    order = list(p.task_order)
    experts = [run.expert(t) for t in order]
    frames = [run.evaluate_on(run.base, run.all_tasks, method="base")]
    for t, e in zip(order, experts):
        frames.append(run.evaluate_on(e, (t,) + tuple(p.unseen), method=f"expert-{t}"))
    if p.multitask:
        frames.append(run.evaluate_on(run.multitask(), run.all_tasks, method="multitask"))
    for m in p.multi_methods:
        merged = run.merge(m, experts, samples_task=order[-1], name=f"multi-{m}")
        frames.append(run.evaluate_on(merged, run.all_tasks, method=m))
        run.release(merged)
    return pd.concat(frames, ignore_index=True)


def experts_row(df: pd.DataFrame) -> pd.DataFrame:
    """The 'individual experts' reference of a multi-model frame: each expert on its own task."""
    rows = df[df["method"].str.startswith("expert-")]
    own = rows[rows["method"].str.removeprefix("expert-") == rows["task"]]
    return own.assign(method="experts")


def sequential(run: Run, task_order: tuple[str, ...] | None = None,
               methods: tuple[str, ...] | None = None) -> pd.DataFrame:
    """Sequential fine-tuning over ``task_order``: after step t the model is scored on every task of the
    order (the full R matrix) and, at the last step, on the unseen tasks.

    Methods: "sft" (plain sequential LoRA fine-tuning), "ewc" (EWC penalty), or a merge method: after
    fine-tuning task t from the current model, merge {current, new} with typical samples of task t
    (the notes' protocol; the base model is the reference for task-vector methods).
    Rows: method, step (1..T), task, example, correct.
    """
    from .training import sequential_finetune

    p = run.profile
    order = tuple(task_order or p.task_order)
    methods = tuple(methods or p.sequential_methods)
    samples = {t: run.train_samples(t) for t in order}
    frames = []
    for m in methods:
        root = run.root / "sequential" / f"{m}-{'-'.join(order)}-{_key(p.train_config(run.seed).to_dict())}"
        ewc = m == "ewc"
        cfg = p.train_config(run.seed, **({"ewc_lambda": p.ewc_lambda, "ewc_samples": p.ewc_samples} if ewc else {}))
        state = {"current": run.base}  # the model the next step starts from

        def after(step, task, ckpt, m=m, state=state):
            if m in ("sft", "ewc"):
                return None
            merged = run.merge(m, [state["current"], ckpt], samples_task=task, name=f"seq-{m}-step{step}-{task}",
                               **({"include_base": False} if m == "recall" else {}))
            state["current"] = merged
            return merged

        t0 = time.time()
        steps = sequential_finetune(run.base, order, samples, cfg, root, ewc=ewc, after_task=after,
                                    progress=run.progress)
        run._timed("training", t0)
        for i, model in enumerate(steps, 1):
            tasks = order + (tuple(p.unseen) if i == len(order) else ())
            frames.append(run.evaluate_on(model, tasks, method=m, step=i))
    return pd.concat(frames, ignore_index=True)


def ablations(run: Run) -> pd.DataFrame:
    """RECALL variants in the multi-model scenario, scored on the training tasks."""
    p = run.profile
    order = list(p.task_order)
    experts = [run.expert(t) for t in order]
    frames = []
    for name in ("default",) + tuple(p.ablations):
        merged = run.merge("recall", experts, samples_task=order[-1], name=f"ablation-{name}",
                           **ABLATIONS[name])
        frames.append(run.evaluate_on(merged, p.tasks, method="recall", variant=name))
        run.release(merged)
    return pd.concat(frames, ignore_index=True)


def merge_weights(path: Path) -> pd.DataFrame:
    """The weights table a merge wrote (``recall_weights.csv``)."""
    return pd.read_csv(Path(path) / "recall_weights.csv", index_col=0)


def representation_analysis(run: Run, n_samples: int = 32) -> dict[str, pd.DataFrame]:
    """Within-model adjacent-layer similarity and per-layer similarity between task experts.

    Samples: ``n_samples`` test texts spread evenly over the training tasks (prompts formatted as in
    evaluation). Returns frames: ``adjacent`` (model, layer, similarity), ``pairwise`` (layer, model_a,
    model_b, similarity, measure), ``to_base`` (layer, model, similarity).
    """
    from .assets import load_model
    from .representations import layer_representations
    from .similarity import adjacent_layer_similarity, similarity_matrix
    from .tasks import get_task

    p = run.profile
    per = max(1, n_samples // len(p.tasks))
    texts = []
    for t in p.tasks:
        ds = run.data(t)["test"]
        texts += [get_task(t).prompt(x, run.tokenizer, p.max_text_tokens) for x in ds["text"][:per]]
    names = ["base"] + [f"expert-{t}" for t in p.tasks]
    paths = [run.base] + [run.expert(t) for t in p.tasks]
    reps = []
    for n, path in zip(names, paths):
        mdl, tok = load_model(path, device=p.device)
        reps.append(layer_representations(mdl, tok, texts, batch_size=p.eval_batch_size, progress=run.progress,
                                          desc=f"representations {n}"))
    adjacent = []
    for n, r in zip(names, reps):
        for measure in ("rbf", "cka_linear"):
            s = adjacent_layer_similarity(r, measure)
            adjacent += [{"model": n, "layer": i + 1, "measure": measure, "similarity": float(v)}
                         for i, v in enumerate(s)]
    pairwise = []
    for measure in ("rbf", "cka_linear"):
        sm = similarity_matrix(reps[1:], measure)  # experts only
        for layer in range(sm.shape[0]):
            for a in range(sm.shape[1]):
                for b in range(sm.shape[2]):
                    pairwise.append({"layer": layer, "model_a": names[1 + a], "model_b": names[1 + b],
                                     "measure": measure, "similarity": float(sm[layer, a, b])})
    pw = pd.DataFrame(pairwise)
    to_base = []
    for measure in ("rbf", "cka_linear"):
        sm = similarity_matrix(reps, measure)
        for layer in range(sm.shape[0]):
            for j in range(1, len(names)):
                to_base.append({"layer": layer, "model": names[j], "measure": measure,
                                "similarity": float(sm[layer, 0, j])})
    return {"adjacent": pd.DataFrame(adjacent), "pairwise": pw, "to_base": pd.DataFrame(to_base),
            "samples": pd.DataFrame({"n": [len(texts)], "per_task": [per]})}


def mean_offdiag(pairwise: pd.DataFrame) -> pd.DataFrame:
    """Mean similarity between distinct experts per layer and measure (the 'shallow agree, deep diverge' curve)."""
    off = pairwise[pairwise["model_a"] != pairwise["model_b"]]
    return off.groupby(["measure", "layer"], as_index=False)["similarity"].mean()


def spearman_depth(curve: pd.DataFrame) -> float:
    """Rank correlation between layer depth and mean inter-expert similarity (negative = diverge with depth)."""
    from scipy.stats import spearmanr

    return float(spearmanr(curve["layer"], curve["similarity"]).statistic)


def efficiency(run: Run, n_models_list=(2, 3, 5), engines=("streaming", "memory")) -> pd.DataFrame:
    """Wall time and peak RSS of our merge step (a given layer-wise weights table, ``recall merge --method
    layer_linear``) as a whole process, versus the number of models and the engine, on perturbed copies of
    the run's base model. For the comparison with mergekit see ``benchmarks/merge_speed.py``."""
    import shutil
    import sys

    from .bench import measure
    from .merge.layers import num_layers_of
    from .testing import make_tiny_checkpoint

    work = run.root / "efficiency"
    copies = []
    for i in range(max(n_models_list)):
        path = work / f"copy{i}"
        if not (path / "config.json").exists():
            make_tiny_checkpoint(path, seed=100 + i, perturb_from=run.base, noise=1e-3)
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

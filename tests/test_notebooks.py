"""The result notebooks, the replicate driver and the book, end to end on the ``smoke`` profile.

One module-scoped run executes every notebook with ``python -m recall.replicate --profile smoke`` into a
temporary results root (the repository's ``results/`` is never touched), then the sequential notebook once
more with another task order, then builds the book from those results into a temporary folder with
``-W -n``. The experiment cache is the session's temporary ``RECALL_RUNS`` (tests/conftest.py). The fast
tests below need no kernel.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import jupytext
import nbformat
import pandas as pd
import pytest

from recall import plots, replicate, tables
from recall.profiles import get_profile

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
SMOKE = get_profile("smoke")
OTHER_ORDER = tuple(reversed(SMOKE.task_order))
FIGURES = {
    "00_pilot": ["pilot_losses"],
    "01_representations": ["interexpert", "interexpert_layers", "adjacent", "to_base"],
    "02_single_model": ["single_accuracy", "single_accuracy_unseen", "single_diff"],
    "03_multi_model": ["multi_recall_weights", "multi_accuracy", "multi_accuracy_unseen", "multi_diff"],
    "04_sequential": [f"seq_r_{m}" for m in SMOKE.sequential_methods] + ["seq_forgetting", "seq_metrics"],
    "05_ablations": ["ablation_accuracy", "ablation_tasks", "ablation_diff", "recall_readings", "recall_divergence"],
    "06_efficiency": ["efficiency_memory", "efficiency_time"],
    "07_claims": [],
}
FIGURES.update({p.stem: [] for p in sorted(NOTEBOOKS.glob("0*.py")) if p.stem not in FIGURES})  # no figures


def _expected(nb: str) -> list[str]:
    """Every file a notebook writes: its declared tables (R_{method} once per sequential method) and figures."""
    out = []
    for s in tables.SPECS.values():
        if s.notebook != nb:
            continue
        out += ([f"R_{m}.csv" for m in SMOKE.sequential_methods] if "{" in s.name else [f"{s.name}.csv"])
    return out + [f"{f}.png" for f in FIGURES[nb]]


def _env(results_root: Path) -> dict:
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false", "MPLBACKEND": "Agg", "PYTHONHASHSEED": "0",
                "RECALL_RESULTS": str(results_root)})
    return env


def _run(args: list[str], env: dict, timeout: int = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    tail = f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    assert proc.returncode == 0, f"{' '.join(args)} failed ({proc.returncode}):\n{tail}"
    return proc


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """Every notebook on smoke (the pilot, run only on request, first), then 04 with another task order; returns
    (results root, replicate stdouts)."""
    root = tmp_path_factory.mktemp("results")
    env = _env(root)
    _run(["-m", "recall.replicate", "--profile", "smoke", "--notebooks", "00", "--results-root", str(root),
          "--no-progress"], env)
    first = _run(["-m", "recall.replicate", "--profile", "smoke", "--results-root", str(root), "--no-progress"], env)
    order = "[" + ", ".join(OTHER_ORDER) + "]"
    second = _run(["-m", "recall.replicate", "--profile", "smoke", "--notebooks", "04", "--results-root", str(root),
                   "--no-progress", "-y", f"task_order: {order}"], env)
    return root, first.stdout, second.stdout


# ------------------------------------------------------------------------------------------ end to end


def test_replicate_writes_every_table_figure_and_provenance(smoke_run):
    root, out, _ = smoke_run
    res = root / "smoke"
    assert "estimated time" in out  # the budget plan comes first
    assert "wall time per notebook" in out
    assert "01_representations: training expert-" in out  # the kernels' progress, streamed
    assert "without encryption" not in out
    prov = json.loads((res / "provenance.json").read_text())["notebooks"]
    for nb in FIGURES:
        files = [f for f in _expected(nb) if f != "merge_speed.csv"]
        for f in files:
            assert (res / f).is_file() and (res / f).stat().st_size > 0, f"{nb}: {f} missing"
        entry = prov[nb]
        assert entry["profile"]["name"] == "smoke"
        assert entry["parameters"]["profile"] == "smoke" and entry["parameters"]["seed"] == 0
        assert entry["git_commit"] and entry["device"] and entry["wall_time_s"] >= 0
        assert entry["machine"] == {}  # the tiny model has no rates to calibrate (tests/test_planner.py reads one)
        if nb != "07_claims":  # the planner's estimate beside the measured time, per phase too
            assert entry["planned_cold_s"] == pytest.approx(sum(entry["planned_phases_s"].values()), abs=0.5)
        assert set(files) <= set(entry["files"]), f"{nb}: provenance lists {entry['files']}"
        executed = res / "notebooks" / f"{nb}.ipynb"
        assert executed.is_file()
        nb_json = nbformat.read(executed, as_version=4)
        assert not any(o.get("output_type") == "error" for c in nb_json.cells for o in c.get("outputs", []))
    leftovers = [p.name for p in (res / "notebooks").iterdir() if ".partial" in p.name or ".failed" in p.name]
    assert not leftovers


def test_derived_tables_rebuild_from_the_written_files(smoke_run):
    """What the notebooks derived is what recall.tables.derive gives from their measured files, byte for byte."""
    res = smoke_run[0] / "smoke"
    prov = json.loads((res / "provenance.json").read_text())["notebooks"]
    for nb in tables.DERIVATIONS:
        out = tables.derive(nb, res, tables.Params.from_provenance(prov[nb]))
        for name, df in out.items():
            assert tables.to_csv(name, df) == (res / f"{name}.csv").read_text(), f"{nb}: {name}"


def test_tables_have_intervals_and_claims_cover_every_baseline(smoke_run):
    res = smoke_run[0] / "smoke"
    for name in ("single_accuracy", "single_diff", "multi_train", "multi_unseen", "multi_normalized", "multi_diff",
                 "seq_metrics", "seq_diff", "ablation_accuracy", "ablation_diff", "c1_summary", "interexpert_curve"):
        df = tables.read(res / f"{name}.csv")
        assert {"low", "high"} <= set(df.columns) and len(df), name
    train = pd.read_csv(res / "multi_train.csv")
    assert {"recall", "experts", "base"} <= set(train["method"])
    assert set(train["task"]) == set(SMOKE.tasks) | {"mean"}
    metrics = pd.read_csv(res / "seq_metrics.csv")
    assert {"AP", "BWT", "FWT", "forgetting", "AP_unseen"} <= set(metrics["metric"])
    ok = metrics.dropna(subset=["low", "high"])
    assert ((ok["low"] <= ok["estimate"] + 1e-9) & (ok["estimate"] <= ok["high"] + 1e-9)).all()
    w = pd.read_csv(res / "multi_recall_weights.csv", index_col=0)
    assert list(w.columns[-len(SMOKE.task_order):]) == [f"expert-{t}" for t in SMOKE.task_order]
    assert (w.sum(axis=1) - 1).abs().max() < 1e-4
    claims = pd.read_csv(res / "claims.csv")
    assert list(claims["claim"]) == ["C1", "C2", "C3", "C4", "C5"]
    comp = pd.read_csv(res / "claim_comparisons.csv")
    from recall.catalog import label, merge_baselines, merge_controls

    c2 = comp[comp["claim"] == "C2"]
    verdict = c2[c2["in_verdict"].astype(bool)]
    assert set(verdict["comparison"]) == {f"RECALL - {label(b)}" for b in merge_baselines()}  # none silently dropped
    shown = {f"RECALL - {label(c)}" for c in merge_controls() if c in SMOKE.multi_methods}
    assert shown and shown <= set(c2["comparison"])  # the controls, beside the verdict


def test_sequential_other_order_goes_to_its_subfolder(smoke_run):
    root, _, out = smoke_run
    res = root / "smoke"
    sub = res / ("order-" + "-".join(OTHER_ORDER))
    for f in _expected("04_sequential"):
        assert (sub / f).is_file(), f
    R = pd.read_csv(sub / "R_recall.csv", index_col=0)
    assert list(R.columns[: len(OTHER_ORDER)]) == list(OTHER_ORDER)
    prov = json.loads((res / "provenance.json").read_text())["notebooks"]
    key = f"04_sequential/{sub.name}"
    assert prov[key]["parameters"]["task_order"] == list(OTHER_ORDER)
    assert prov["04_sequential"]["parameters"]["task_order"] == list(SMOKE.task_order)  # not overwritten
    assert (res / "notebooks" / f"04_sequential-order-{'-'.join(OTHER_ORDER)}.ipynb").is_file()
    assert "01_representations" not in out and "== 07_claims" in out  # the selected notebook, then the claims


def _snapshot(folder: Path) -> dict:
    return {str(p): p.stat().st_mtime_ns for p in folder.rglob("*") if "_build" not in p.parts}


def test_book_builds_from_smoke_results(smoke_run, tmp_path):
    root = smoke_run[0]
    before = _snapshot(ROOT / "book")
    _run(["-m", "recall.book", "--profile", "smoke", "--results-root", str(root), "--build-dir", str(tmp_path),
          "-q"], _env(root), timeout=600)
    html = tmp_path / "_build" / "html" / "results"
    claims = (html / "claims.html").read_text()
    for c in ("C1", "C2", "C3", "C4", "C5"):
        assert f">{c}<" in claims
    assert "56.93" in claims and "smoke" in claims  # the paper's numbers, labelled; the profile named
    assert "results/smoke/claims.csv" in claims  # every table names its source file
    seq = (html / "sequential.html").read_text()
    assert " &gt; ".join(OTHER_ORDER) in seq
    multi = (html / "multi_model.html").read_text()
    assert "Not run in this profile" not in multi
    assert 'image-reference" href="../_images/multi_accuracy.png"' in multi  # each figure links to its PNG
    assert "results/smoke/multi_train.csv" in multi and "03_multi_model.ipynb" in multi  # sources, notebook
    assert "Discordant examples" in multi and "p_exact_greater" in multi.replace("\u200b", "")  # per task
    assert list((tmp_path / "_build" / "html" / "_images").glob("*.png"))
    archive = list((tmp_path / "_build" / "html" / "_downloads").glob("*/results-smoke.zip"))
    import zipfile

    assert archive and "smoke/provenance.json" in zipfile.ZipFile(archive[0]).namelist()
    assert "Not measured in this checkout" in (html / "efficiency.html").read_text()  # no benchmark file there
    assert _snapshot(ROOT / "book") == before  # the repository's book/ is not written


# ------------------------------------------------------------------------------------------------ fast


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("0*.ipynb")), ids=lambda p: p.stem)
def test_notebook_is_its_source_and_thin(path):
    """The .ipynb papermill runs is the py:percent source (jupytext) cell for cell, without outputs, and holds
    only parameters, library calls and display."""
    assert replicate.out_of_sync(path) is None
    nb = nbformat.read(path, as_version=4)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", [])
    assert 'profile = "smoke"' in code[0].source and "seed = 0" in code[0].source
    assert all(not c.outputs and c.execution_count is None for c in code)
    assert code[-1].source.strip() == "nb.provenance()"
    for c in code[1:]:
        for line in c.source.splitlines():
            assert not line.startswith(("def ", "class ", "for ", "if ", "while ")), f"{path.name}: {line}"
    declared = replicate.declared_parameters(path)
    assert {"profile", "seed"} <= set(declared)
    if path.stem == "04_sequential":
        assert declared["task_order"]["default"] == "None"
    assert path.stem in FIGURES and path.stem in {s.notebook for s in tables.SPECS.values()} | {"07_claims"}


def test_out_of_sync_notebook_is_refused(tmp_path, monkeypatch):
    src = NOTEBOOKS / "02_single_model.py"
    (tmp_path / src.name).write_text(src.read_text().replace('seed = 0', 'seed = 1'))
    nbformat.write(jupytext.read(src), tmp_path / "02_single_model.ipynb")
    assert "differs" in replicate.out_of_sync(tmp_path / "02_single_model.ipynb")
    (tmp_path / src.name).unlink()
    assert "no source" in replicate.out_of_sync(tmp_path / "02_single_model.ipynb")


def test_replicate_arguments_and_jobs():
    assert [p.stem for p in replicate.select_notebooks(["04", "01"])] == ["01_representations", "04_sequential"]
    assert replicate.select_notebooks(["03_multi_model"])[0].stem == "03_multi_model"
    with pytest.raises(replicate.ReplicateError):
        replicate.select_notebooks(["99"])
    assert replicate.parse_params(["task_order=[a, b]"], []) == {"task_order": ["a", "b"]}
    assert replicate.parse_params([], ["task_order: [a, b]\nn_samples: 8"]) == {"task_order": ["a", "b"],
                                                                                "n_samples": 8}
    with pytest.raises(replicate.ReplicateError):
        replicate.parse_params(["profile=cpu"], [])
    assert replicate.output_name("04_sequential", {"task_order": ["a", "b"]}) == "04_sequential-order-a-b"
    assert replicate.output_name("04_sequential", {"task_order": None, "seed": 0}) == "04_sequential"
    assert replicate.output_name("01_x", {"seed": 2}) == "01_x-seed2"
    # seeds and extra orders of a profile are really run; the claims notebook runs last, once
    gpu = get_profile("gpu")
    sel = replicate.select_notebooks(["01", "04", "07"])
    jobs = replicate.plan_jobs(gpu, sel, {p.stem: replicate.declared_parameters(p) for p in sel}, {})
    names = [replicate.output_name(p.stem, params, gpu) for p, params in jobs]
    assert len(names) == len(set(names)) == 3 + 3 * 3 + 1
    assert names[-1] == "07_claims" and "04_sequential-seed2-order-" + "-".join(gpu.extra_orders[1]) in names


def test_budget_plan_covers_only_the_selected_notebooks():
    cpu = get_profile("cpu")
    text = replicate.selected_plan(cpu, ["04_sequential", "07_claims"])
    assert "04_sequential" in text and "03_multi_model" not in text and "estimated time" in text
    assert "estimated time: 0 min" in replicate.selected_plan(cpu, ["07_claims"])
    gpu = get_profile("gpu")  # one seed and one given order cost less than the profile's seeds and orders
    from recall.planner import per_notebook

    full = per_notebook(gpu, ["04_sequential"]).sum()
    assert per_notebook(dataclasses.replace(gpu, seeds=(0,), extra_orders=()), ["04_sequential"]).sum() < full / 3


def test_progress_lines_name_the_unit_and_the_time_left(tmp_path, monkeypatch):
    from tqdm import std
    from tqdm.auto import tqdm as auto_tqdm

    from recall import progress

    def run(desc, steps):
        bar = auto_tqdm(total=steps, desc=desc, unit="step", mininterval=0)
        for _ in range(steps):
            bar.update(1)
        bar.close()

    monkeypatch.setattr(std.tqdm, "__init__", std.tqdm.__dict__["__init__"])  # undone after the test
    monkeypatch.delenv(progress.ENV, raising=False)
    assert not progress.install()  # not under the driver: bars stay as they are
    lines = tmp_path / "progress"
    assert progress.install(lines)
    with progress.unit("training expert-trec"):
        run("lora fine-tuning", 4)
    with progress.unit("scoring expert-trec on trec"):
        run("scoring trec", 3)  # a short bar right after another line says nothing: no flood
    got = lines.read_text().splitlines()
    assert got[0] == "training expert-trec (lora fine-tuning): step 0/4"
    assert got[1].startswith("training expert-trec (lora fine-tuning): step 4/4, done in ") and len(got) == 2
    monkeypatch.setattr(progress, "INTERVAL", 0.0)
    progress.install(tmp_path / "every")
    run("lora fine-tuning", 4)
    got = (tmp_path / "every").read_text().splitlines()
    assert len(got) == 5 and got[1].startswith("lora fine-tuning: step 1/4, about ") and got[1].endswith(" left")
    assert progress.line("scoring", 30, 120, "batch", 60.0) == "scoring: batch 30/120, about 3 min left"


def test_replicate_rejects_unknown_parameter(tmp_path):
    assert replicate.main(["--profile", "smoke", "--notebooks", "01", "--param", "task_order=[a]",
                           "--results-root", str(tmp_path)]) == 2


def _readable(fig) -> None:
    """At most plots.WIDTH inches wide and no visible text under plots.MIN_FONT points."""
    width = fig.get_size_inches()[0]
    assert width <= plots.WIDTH + 1e-9, f"{fig._suptitle.get_text()!r}: {width} in wide"
    fig.canvas.draw()
    small = [(t.get_text(), t.get_fontsize()) for t in fig.findobj(lambda a: hasattr(a, "get_fontsize"))
             if t.get_visible() and t.get_text().strip() and t.get_fontsize() < plots.MIN_FONT - 1e-9]
    assert not small, f"{fig._suptitle.get_text()!r}: text under {plots.MIN_FONT} pt: {small[:5]}"


def test_plots_return_readable_figures_without_pyplot():
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.figure import Figure

    before = plt.get_fignums()
    t = pd.DataFrame([(m, task, e, e - 0.1, e + 0.1, 10) for m in ("recall", "average", "base")
                      for task, e in (("trec", 0.5), ("sms", 0.7), ("mean", 0.6))],
                     columns=["method", "task", "estimate", "low", "high", "n"])
    R = {m: pd.DataFrame(np.random.default_rng(0).random((3, 4)), index=pd.Index([1, 2, 3], name="step"),
                         columns=["trec", "sms", "rt", "amazon"]) for m in ("sft", "recall")}
    layers = pd.DataFrame([(m, layer, meas, 0.9) for m in ("base", "expert-trec") for layer in range(4)
                           for meas in ("rbf", "cka_linear")], columns=["model", "layer", "measure", "similarity"])
    pairwise = pd.DataFrame([(layer, a, b, "rbf", 1.0 if a == b else 0.9) for layer in range(4)
                             for a in ("expert-trec", "expert-sms") for b in ("expert-trec", "expert-sms")],
                            columns=["layer", "model_a", "model_b", "measure", "similarity"])
    eff = pd.DataFrame({"models": [2, 3, 2, 3], "engine": ["s", "s", "m", "m"], "wall_s": [1, 2, 1, 2],
                        "peak_rss_mib": [5, 6, 7, 8]})
    abl = t.rename(columns={"method": "variant"}).replace({"recall": "default"})
    figs = [
        plots.method_accuracy(t, "profile x"),
        plots.difference_forest(t.assign(comparison=t["method"] + t["task"]), "profile x"),
        plots.ablation_means(abl, "profile x"),
        plots.ablation_tasks(abl, "profile x"),
        plots.weights_heatmap(pd.DataFrame(np.full((5, 3), 1 / 3), columns=["base", "model 0", "model 1"]), "x"),
        plots.r_matrix_heatmap(R["recall"], "recall", "x", n_seq=3),
        plots.forgetting_curves(R, ["trec", "sms", "rt"], "x"),
        plots.efficiency_plot(eff, "x", "memory"),
        plots.efficiency_plot(eff, "x", "time"),
        plots.adjacent_similarity(layers, "x"),
        plots.interexpert_curve(pairwise.groupby(["measure", "layer"], as_index=False)["similarity"].mean(), "x"),
        plots.interexpert_heatmaps(pairwise, "x"),
    ]
    assert all(isinstance(f, Figure) for f in figs)
    for f in figs:
        _readable(f)
    assert plt.get_fignums() == before
    with pytest.raises(ValueError, match="measure must be one of"):
        plots.efficiency_plot(eff, "x", "speed")
    assert plots.where(SMOKE) == "profile smoke, tiny random Llama"
    assert plots.method_label("expert-trec") == "Expert TREC"
    assert plots.sources("seq_r_sft") == ("R_sft",) and plots.sources("multi_accuracy") == ("multi_train",)
    drawn = {n for nb, names in FIGURES.items() for n in names}
    assert all(plots.sources(n) for n in drawn)  # every figure names the tables it is drawn from

"""The result notebooks, the replicate driver and the book, end to end on the ``smoke`` profile.

One module-scoped run executes every notebook with ``python -m recall.replicate --profile smoke`` into a
temporary results root (the repository's ``results/`` is never touched), then the sequential notebook once
more with another task order, then builds the book from those results into a temporary folder with
``-W -n``. The experiment cache is the default one (``$RECALL_CACHE`` or ``~/.cache/recall``), so reruns and
CI reuse trained models and evaluations. The fast tests below need no kernel.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from recall import book, plots, replicate
from recall.profiles import get_profile

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
SMOKE = get_profile("smoke")
OTHER_ORDER = tuple(reversed(SMOKE.task_order))

EXPECTED = {
    "01_representations": ["adjacent.csv", "pairwise.csv", "interexpert_curve.csv", "to_base.csv", "c1_summary.csv",
                           "adjacent.png", "interexpert.png", "to_base.png"],
    "02_single_model": ["single_examples.csv", "single_accuracy.csv", "single_diff.csv", "single_accuracy.png",
                        "single_diff.png"],
    "03_multi_model": ["multi_examples.csv", "multi_train.csv", "multi_unseen.csv", "multi_normalized.csv",
                       "multi_diff.csv", "multi_recall_weights.csv", "multi_recall_weights.png", "multi_accuracy.png",
                       "multi_diff.png"],
    "04_sequential": ["seq_examples.csv", "seq_base_examples.csv", "seq_metrics.csv", "seq_diff.csv", "base_scores.csv",
                      "seq_r_matrices.png", "seq_forgetting.png", "seq_metrics.png"]
                     + [f"R_{m}.csv" for m in SMOKE.sequential_methods],
    "05_ablations": ["ablation_examples.csv", "ablation_accuracy.csv", "ablation_diff.csv", "ablation_accuracy.png",
                     "ablation_diff.png"],
    "06_efficiency": ["efficiency.csv", "efficiency.png"],
}
CI_COLUMNS = {"estimate", "low", "high"}


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
    """Every notebook on smoke, then 04 with another task order; returns (results root, replicate stdouts)."""
    root = tmp_path_factory.mktemp("results")
    env = _env(root)
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
    prov = json.loads((res / "provenance.json").read_text())["notebooks"]
    for nb, files in EXPECTED.items():
        for f in files:
            assert (res / f).is_file() and (res / f).stat().st_size > 0, f"{nb}: {f} missing"
        entry = prov[nb]
        assert entry["profile"]["name"] == "smoke"
        assert entry["parameters"]["profile"] == "smoke" and entry["parameters"]["seed"] == 0
        assert entry["git_commit"] and entry["device"] and entry["wall_time_s"] >= 0
        assert set(files) <= set(entry["files"]), f"{nb}: provenance lists {entry['files']}"
        executed = res / "notebooks" / f"{nb}.ipynb"
        assert executed.is_file()
        nb_json = nbformat.read(executed, as_version=4)
        assert not any(o.get("output_type") == "error" for c in nb_json.cells for o in c.get("outputs", []))
    leftovers = [p.name for p in (res / "notebooks").iterdir() if ".partial" in p.name or ".failed" in p.name]
    assert not leftovers


def test_tables_have_intervals(smoke_run):
    res = smoke_run[0] / "smoke"
    for name in ("single_accuracy", "single_diff", "multi_train", "multi_unseen", "multi_normalized", "multi_diff",
                 "seq_metrics", "seq_diff", "ablation_accuracy", "ablation_diff", "c1_summary"):
        df = pd.read_csv(res / f"{name}.csv")
        assert CI_COLUMNS <= set(df.columns), name
        assert len(df), name
    assert {"low", "high"} <= set(pd.read_csv(res / "interexpert_curve.csv").columns)
    train = pd.read_csv(res / "multi_train.csv")
    assert {"recall", "experts", "base"} <= set(train["method"])
    assert set(train["task"]) == set(SMOKE.tasks) | {"mean"}
    metrics = pd.read_csv(res / "seq_metrics.csv")
    assert {"AP", "BWT", "FWT", "forgetting", "AP_unseen"} <= set(metrics["metric"])
    ok = metrics.dropna(subset=["low", "high"])
    assert ((ok["low"] <= ok["estimate"] + 1e-9) & (ok["estimate"] <= ok["high"] + 1e-9)).all()
    c1 = pd.read_csv(res / "c1_summary.csv")
    assert {"spearman_depth", "first_third_mean", "last_third_mean", "first_minus_last"} <= set(c1["statistic"])
    w = pd.read_csv(res / "multi_recall_weights.csv", index_col=0)
    assert list(w.columns[-len(SMOKE.task_order):]) == [f"expert-{t}" for t in SMOKE.task_order]
    assert (w.sum(axis=1) - 1).abs().max() < 1e-4


def test_sequential_other_order_goes_to_its_subfolder(smoke_run):
    root, _, out = smoke_run
    res = root / "smoke"
    sub = res / ("order-" + "-".join(OTHER_ORDER))
    for f in EXPECTED["04_sequential"]:
        assert (sub / f).is_file(), f
    R = pd.read_csv(sub / "R_recall.csv", index_col=0)
    assert list(R.columns[: len(OTHER_ORDER)]) == list(OTHER_ORDER)
    prov = json.loads((res / "provenance.json").read_text())["notebooks"]
    key = f"04_sequential/{sub.name}"
    assert prov[key]["parameters"]["task_order"] == list(OTHER_ORDER)
    assert prov["04_sequential"]["parameters"]["task_order"] == list(SMOKE.task_order)  # not overwritten
    assert (res / "notebooks" / f"04_sequential-order-{'-'.join(OTHER_ORDER)}.ipynb").is_file()
    assert "01_representations" not in out  # only the selected notebook ran


def _snapshot(folder: Path) -> dict:
    return {str(p): p.stat().st_mtime_ns for p in folder.rglob("*")} if folder.exists() else {}


def test_book_builds_from_smoke_results(smoke_run, tmp_path):
    root = smoke_run[0]
    repo_pages = _snapshot(ROOT / "book" / "results")
    _run(["-m", "recall.book", "--profile", "smoke", "--results-root", str(root), "--book-dir", str(tmp_path / "book"),
          "--build-dir", str(tmp_path / "build"), "-q"], _env(root), timeout=600)
    claims = (tmp_path / "book" / "results" / "claims.md").read_text()
    for c in ("C1", "C2", "C3", "C4", "C5"):
        assert f"| {c} |" in claims
    assert "56.93" in claims and "45.00" in claims  # the paper's numbers, labelled
    assert "smoke" in claims
    seq = (tmp_path / "book" / "results" / "sequential.md").read_text()
    assert " > ".join(OTHER_ORDER) in seq
    html = tmp_path / "build" / "_build" / "html"
    assert (html / "results" / "claims.html").is_file()
    assert (html / "results" / "sequential.html").is_file()
    assert list((tmp_path / "book" / "results" / "figures").glob("*.png"))
    assert _snapshot(ROOT / "book" / "results") == repo_pages  # the repository's book/ is not written


# ------------------------------------------------------------------------------------------------ fast


def test_notebooks_match_generator():
    proc = subprocess.run([sys.executable, str(NOTEBOOKS / "_make_notebooks.py"), "--check"], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("0*.ipynb")), ids=lambda p: p.stem)
def test_notebook_shape(path):
    nb = nbformat.read(path, as_version=4)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", [])
    assert 'profile = "smoke"' in code[0].source and "seed = 0" in code[0].source
    assert all(not c.outputs and c.execution_count is None for c in code)
    assert "res.provenance(P, params, run.timings)" in code[-1].source
    declared = replicate.declared_parameters(path)
    assert {"profile", "seed"} <= set(declared)
    if path.stem == "04_sequential":
        assert declared["task_order"]["default"] == "None"


def test_replicate_arguments():
    assert [p.stem for p in replicate.select_notebooks(["04", "01"])] == ["01_representations", "04_sequential"]
    assert replicate.select_notebooks(["03_multi_model"])[0].stem == "03_multi_model"
    with pytest.raises(SystemExit):
        replicate.select_notebooks(["99"])
    assert replicate.parse_params(["task_order=[a, b]"], []) == {"task_order": ["a", "b"]}
    assert replicate.parse_params([], ["task_order: [a, b]\nn_samples: 8"]) == {"task_order": ["a", "b"],
                                                                                "n_samples": 8}
    with pytest.raises(SystemExit):
        replicate.parse_params(["profile=cpu"], [])
    assert replicate.output_name("04_sequential", {"task_order": ["a", "b"]}) == "04_sequential-order-a-b"
    assert replicate.output_name("04_sequential", {"task_order": None, "seed": 0}) == "04_sequential"
    assert replicate.output_name("01_x", {"seed": 2}) == "01_x-seed2"


def test_replicate_rejects_unknown_parameter(tmp_path):
    with pytest.raises(SystemExit):
        replicate.main(["--profile", "smoke", "--notebooks", "01", "--param", "task_order=[a]",
                        "--results-root", str(tmp_path)])


def test_claim_rules():
    assert book.verdict(0.01, 0.2) == "supported"
    assert book.verdict(-0.2, -0.01) == "refuted"
    assert book.verdict(-0.1, 0.1) == "inconclusive"
    assert book.verdict(0.0, 0.0) == "inconclusive"
    assert book.verdict(-0.2, -0.01, better="lower") == "supported"
    assert book.verdict(float("nan"), 0.1) == "not available"
    assert book.combine(["supported", "supported"]) == "supported"
    assert book.combine(["supported", "inconclusive"]) == "inconclusive"
    assert book.combine(["supported", "refuted"]) == "refuted"
    assert book.combine([]) == "not run in this profile"
    assert book.ci_text(0.5, 0.4, 0.6) == "50.0 [40.0, 60.0]"


def test_book_pages_without_results(tmp_path):
    """Missing results give 'not run in this profile' pages, never an error (no build here)."""
    rc = book.main(["--profile", "quick", "--results-root", str(tmp_path / "none"), "--book-dir", str(tmp_path / "b"),
                    "--no-build"])
    assert rc == 0
    out = tmp_path / "b" / "results"
    for page in ("claims", *book.PAGES):
        text = (out / f"{page}.md").read_text()
        assert text.startswith("# ")
        assert book.NOT_RUN.lower() in text.lower(), page
    assert (out / "_profiles.md").read_text().count("|") > 10
    assert (tmp_path / "b" / "_toc.yml").is_file()


def test_plots_return_figures_without_pyplot():
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.figure import Figure

    before = plt.get_fignums()
    t = pd.DataFrame([(m, task, e, e - 0.1, e + 0.1, 10) for m in ("recall", "average", "base")
                      for task, e in (("trec", 0.5), ("sms", 0.7), ("mean", 0.6))],
                     columns=["method", "task", "estimate", "low", "high", "n"])
    R = {m: pd.DataFrame(np.random.default_rng(0).random((3, 4)), index=pd.Index([1, 2, 3], name="step"),
                         columns=["trec", "sms", "rt", "amazon"]) for m in ("sft", "recall")}
    figs = [
        plots.method_accuracy({"a": t, "b": t}, "profile x"),
        plots.difference_forest(t.assign(comparison=t["method"] + t["task"]), "profile x"),
        plots.ablation_plot(t.rename(columns={"method": "variant"}).replace({"recall": "default"}), "profile x"),
        plots.weights_heatmap(pd.DataFrame(np.full((5, 3), 1 / 3), columns=["base", "model 0", "model 1"]), "x"),
        plots.r_matrix_heatmaps(R, "x", n_seq=3),
        plots.forgetting_curves(R, ["trec", "sms", "rt"], "x"),
        plots.efficiency_plot(pd.DataFrame({"models": [2, 3, 2, 3], "engine": ["s", "s", "m", "m"],
                                            "wall_s": [1, 2, 1, 2], "peak_rss_mib": [5, 6, 7, 8]}), "x"),
    ]
    assert all(isinstance(f, Figure) for f in figs)
    assert plt.get_fignums() == before
    assert plots.where(SMOKE) == "profile smoke, tiny random Llama"
    assert plots.method_label("expert-trec") == "Expert TREC"

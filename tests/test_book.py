"""The book's helpers without a build: tables that fit, figure sizes, the results archive, the benchmark table."""

from __future__ import annotations

import pandas as pd
import pytest

from recall import book


def test_md_table_keeps_intervals_whole_and_lets_long_names_wrap():
    text = book.md_table(pd.DataFrame({"p_exact_greater": ["1.2 [0.5, 3.4]"], "x": ["a | b"]}), index=False)
    header, _, row = text.splitlines()
    assert "p_\u200bexact_\u200bgreater" in header
    assert "1.2 [0.5,\u00a03.4]" in row and "a \\| b" in row


def test_png_size_reads_the_resolution(tmp_path):
    from matplotlib.figure import Figure

    from recall.results import png_bytes

    fig = Figure(figsize=(5, 2))
    fig.subplots().plot([0, 1])
    (tmp_path / "f.png").write_bytes(png_bytes(fig))
    width, height, dpi = book.png_size(tmp_path / "f.png")
    assert round(dpi) == 200 and (width, height) == (1000, 400)
    (tmp_path / "g.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="not a PNG"):
        book.png_size(tmp_path / "g.png")


def test_archive_is_deterministic_and_leaves_out_partial_files(tmp_path):
    import zipfile

    folder = tmp_path / "smoke"
    (folder / "notebooks").mkdir(parents=True)
    (folder / "a.csv").write_text("x\n1\n")
    (folder / "notebooks" / "01_x.ipynb").write_text("{}")
    (folder / "notebooks" / ".01_y.partial.ipynb").write_text("{}")
    (folder / "notebooks" / "01_z.failed.ipynb").write_text("{}")
    one = book.archive(folder, tmp_path / "out" / "one.zip").read_bytes()
    assert book.archive(folder, tmp_path / "out" / "two.zip").read_bytes() == one
    names = zipfile.ZipFile(tmp_path / "out" / "one.zip").namelist()
    assert names == ["smoke/a.csv", "smoke/notebooks/01_x.ipynb"]


def _bench(**drop) -> pd.DataFrame:
    row = {"run": "ours, streaming", "method": "linear", "tool": "recall", "engine": "streaming", "n_models": 3,
           "repeats": 5, "wall_s": 1.88, "peak_rss_mib": 317.0, "wall_vs_mergekit": 0.35, "rss_vs_mergekit": 0.13,
           "tensors_equal": 272, "tensors_total": 272, "machine": "2-core x86_64", "date": "2026-11-28"}
    return pd.DataFrame([{k: v for k, v in row.items() if k not in drop}])


def test_benchmark_table_shows_ratios_and_equal_tensors():
    text = book.benchmark_table(_bench())
    assert "0.35x" in text and "0.13x" in text and "272/272" in text and "2-core x86_64, 2026-11-28" in text
    with pytest.raises(ValueError, match="lacks the column.s. wall_vs_mergekit"):
        book.benchmark_table(_bench(wall_vs_mergekit=1))

"""What a merge writes beside the weights: config, tokenizer, model card, weights table, mergekit YAML."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from .. import __version__
from ..assets import copy_tokenizer
from .base import MergeError, MergeMethod, Table
from .layers import _BLOCK, layer_of

WEIGHTS_CSV = "recall_weights.csv"
MERGEKIT_YAML = "mergekit.yml"
MERGE_JSON = "merge_config.json"


def layer_filters(names: list[str], num_layers: int) -> list[tuple[str, int]]:
    """(mergekit filter, layer) pairs covering ``names``: a block's prefix (``model.layers.3.``,
    ``transformer.h.3.``) or, outside blocks, the full tensor name. mergekit applies the first entry
    whose filter is a substring of the tensor name; this checks that rule gives our layer map."""
    filters: dict[str, int] = {}
    for n in names:
        m = _BLOCK.search(n)
        filters.setdefault(n[: m.end()] if m else n, layer_of(n, num_layers))
    items = list(filters.items())
    for n in names:
        if next(lay for f, lay in items if f in n) != layer_of(n, num_layers):
            raise MergeError(f"cannot express the layer of {n} as a mergekit filter")
    return items


def mergekit_config(weights, pool: list[str], num_layers: int, names: list[str], dtype: str = "float32") -> dict:
    """A mergekit ``linear`` config that reproduces a layer-wise (or model-level) linear merge.

    Every block and every tensor outside the blocks gets a conditional weight (``filter``, a name
    substring) from its layer's row; mergekit 0.1.5 reproduces our output bit for bit
    (``benchmarks/merge_speed.py`` checks it).
    """
    filters = layer_filters(names, num_layers)
    weights = _as_table(weights)
    models = []
    for j, path in enumerate(pool):
        w = [float(v) for v in weights.rows[:, j]]
        if len(w) == 1:
            weight = float(w[0])
        else:
            weight = [{"filter": f, "value": float(w[lay])} for f, lay in filters]
            weight.append({"value": float(w[num_layers])})
        models.append({"model": str(path), "parameters": {"weight": weight}})
    return {"merge_method": "linear", "models": models, "parameters": {"normalize": False}, "dtype": dtype}


def _as_table(value) -> Table | None:
    """A report entry as a ``Table`` (a pandas DataFrame is converted without importing pandas), else None."""
    if isinstance(value, Table):
        return value
    if hasattr(value, "to_numpy") and hasattr(value, "columns") and hasattr(value, "index"):
        return Table.from_frame(value)
    return None


def write_outputs(folder: Path, method: MergeMethod, models: list[Path], base: Path | None, ref_folder: Path,
                  num_layers: int, samples=None, engine: str = "streaming", names: list[str] | None = None,
                  dtype: str | None = None) -> None:
    """Config, tokenizer, ``merge_config.json``, model card and tables; ``dtype``: the output dtype when it
    was chosen (``--dtype``), else the newest model's (config copied as is)."""
    for name in ("config.json", "generation_config.json"):
        if (ref_folder / name).exists():
            shutil.copy2(ref_folder / name, folder / name)
    if dtype is not None and (folder / "config.json").exists():
        config = json.loads((folder / "config.json").read_text())
        key = "torch_dtype" if "torch_dtype" in config and "dtype" not in config else "dtype"
        config[key] = dtype
        (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    copy_tokenizer(ref_folder, folder)
    report = dict(method.report())
    weights = _as_table(report.pop("weights", None))
    pool = report.pop("pool", None)
    tables = {k: _as_table(report.pop(k)) for k in list(report) if _as_table(report[k]) is not None}
    info = {"recall_version": __version__, "method": method.name, "reference": method.reference,
            "options": method.options(), "base": str(base) if base else None, "models": [str(m) for m in models],
            "engine": engine, "samples": len(samples) if samples else 0, "report": report}
    if dtype is not None:
        info["dtype"] = dtype
    (folder / MERGE_JSON).write_text(json.dumps(info, indent=2, default=str) + "\n")
    parts = [f"# Merged model ({method.name})", "",
             f"Made with recall {__version__}, method `{method.name}`" + (f" ({method.reference})." if method.reference
                                                                          else "."), "",
             "## Inputs", "", f"- base: `{base}`" if base else "- base: none"]
    parts += [f"- model {i}{' (newest, M_N)' if i == len(models) - 1 else ''}: `{m}`" for i, m in enumerate(models)]
    parts += [f"- samples of the new task: {len(samples) if samples else 0}", f"- engine: {engine}"]
    parts += [f"- output dtype: {dtype}"] if dtype is not None else []
    parts += ["", "## Options", ""]
    parts += [f"- `{k}`: `{v}`" for k, v in method.options().items()] or ["- none"]
    if report:
        parts += ["", "## Facts", ""] + [f"- {k}: {v}" for k, v in report.items()]
    if weights is not None:
        (folder / WEIGHTS_CSV).write_text(weights.to_csv())
        rows = (f"Rows: layers (0 = embeddings, l = block l-1, {num_layers} = last block, final norm and lm_head)"
                if len(weights) > 1 else "One row: the same weight for every layer")
        parts += ["", "## Merge weights", "", f"{rows}; columns: models of the pool. Also in `{WEIGHTS_CSV}`.", "",
                  weights.markdown()]
        if pool is not None:
            out_dtype = dtype or (json.loads((ref_folder / "config.json").read_text()).get("dtype", "float32")
                                  if (ref_folder / "config.json").exists() else "float32")
            cfg = mergekit_config(weights, pool, num_layers, names or [], dtype=str(out_dtype or "float32"))
            (folder / MERGEKIT_YAML).write_text(yaml.safe_dump(cfg, sort_keys=False))
            parts += ["", f"`{MERGEKIT_YAML}` reproduces this linear merge with `mergekit-yaml {MERGEKIT_YAML} OUT`."]
    for k, table in tables.items():
        (folder / f"recall_{k}.csv").write_text(table.to_csv())
        parts += ["", f"## {k}", "", table.markdown()]
    (folder / "README.md").write_text("\n".join(parts) + "\n")

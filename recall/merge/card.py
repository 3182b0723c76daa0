"""What a merge writes beside the weights: config, tokenizer, model card, weights table, mergekit YAML.

``mergekit.yml`` is written for every method mergekit 0.1.5 also has, with our options in its terms
(``mergekit_config`` for weights tables, ``mergekit_recipe`` for the others):

- ``layer_linear``, ``recall``, ``lm_cocktail`` (a weights table): ``linear``, ``normalize: false``, one
  weight per layer filter. Bit for bit.
- ``average`` and ``uniform``: ``linear``, weight 1 per pool model, ``normalize: true``. Bit for bit.
- ``task_arithmetic``: ``task_arithmetic``, weight 1, ``lambda: lam``. Bit for bit.
- ``ties``: ``ties``, weight 1, ``density``, ``normalize: true``, ``lambda: lam``. Bit for bit except where
  magnitudes tie at the trim threshold (mergekit keeps exactly ``max(1, int(density * n))`` entries) or an
  entry's mass is exactly 0 with non-zero entries (mergekit elects +, we the tensor's majority sign).
- ``dare`` with ``combine=task_arithmetic``: ``dare_linear``; with ``combine=ties, density=1``: ``dare_ties``
  with ``normalize: true``; both with ``density: 1 - p``, ``rescale: true``. The recipe, not the tensors:
  mergekit draws other random masks and rescales the survivors to the L1 norm instead of by 1 / (1 - p).

None for ``magmax`` and for DARE + TIES with ``density < 1`` (mergekit's ``dare_ties`` does not trim by
magnitude after dropping): the model card says why.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from .. import __version__
from ..assets import copy_tokenizer
from .base import MergeError, MergeMethod, Table
from .layers import _BLOCK, layer_of
from .pool import pool_labels

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


def _dtypes(dtype: str) -> dict:
    """mergekit computes in float32 as we do, and writes ``dtype``."""
    return {"dtype": "float32"} if dtype == "float32" else {"dtype": "float32", "out_dtype": dtype}


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
    return {"merge_method": "linear", "models": models, "parameters": {"normalize": False}, **_dtypes(dtype)}


def mergekit_recipe(method: MergeMethod, base: Path | None, models: list[Path],
                    dtype: str = "float32") -> tuple[dict | None, str]:
    """(mergekit config, what it reproduces) for a method without a weights table (see the module docstring);
    ``(None, why not)`` for a method mergekit does not have."""
    # by name, not by class: importing every method here would put them all in every merge's code fingerprint
    o = method.options()

    def task_vector_config(mk_method: str, per_model: dict, parameters: dict) -> dict:
        return {"merge_method": mk_method, "base_model": str(base),
                "models": [{"model": str(m), "parameters": {"weight": 1.0, **per_model}} for m in models],
                "parameters": parameters, **_dtypes(dtype)}

    if method.name in ("average", "uniform"):  # uniform: RECALL's pool, an average with the base by default
        pool = [base, *models] if o["include_base"] and base is not None else list(models)
        return ({"merge_method": "linear", "models": [{"model": str(m), "parameters": {"weight": 1.0}} for m in pool],
                 "parameters": {"normalize": True}, **_dtypes(dtype)}, "bit for bit")
    if method.name == "task_arithmetic":
        return (task_vector_config("task_arithmetic", {}, {"normalize": False, "lambda": float(o["lam"])}),
                "bit for bit")
    if method.name == "ties":
        return (task_vector_config("ties", {"density": float(o["density"])},
                                   {"normalize": True, "lambda": float(o["lam"])}),
                "bit for bit, except entries whose magnitudes tie at a trim threshold (mergekit keeps exactly "
                "max(1, int(density * n)) of them) or whose summed mass is exactly 0 (mergekit elects +, TIES the "
                "tensor's majority sign)")
    if method.name == "dare":
        recipe = ("the same recipe, not the same tensors: mergekit draws its own random masks and rescales the "
                  "survivors to the task vector's L1 norm instead of by 1 / (1 - p)")
        density = {"density": 1.0 - float(o["p"])}
        if o["combine"] == "task_arithmetic":
            return (task_vector_config("dare_linear", density, {"normalize": False, "rescale": True,
                                                                "lambda": method.effective_lam()}), recipe)
        if method.effective_density() == 1.0:
            return (task_vector_config("dare_ties", density, {"normalize": True, "rescale": True,
                                                              "lambda": method.effective_lam()}), recipe)
        return None, ("mergekit's dare_ties does not trim by magnitude after dropping; density=1 (no trim) "
                      "has a mergekit equivalent")
    return None, f"mergekit 0.1.5 has no {method.name} method"


def _as_table(value) -> Table | None:
    """A report entry as a ``Table`` (a pandas DataFrame is converted without importing pandas), else None."""
    if isinstance(value, Table):
        return value
    if hasattr(value, "to_numpy") and hasattr(value, "columns") and hasattr(value, "index"):
        return Table.from_frame(value)
    return None


def _output_dtype(ref_folder: Path, dtype: str | None) -> str:
    """The merged model's float dtype: ``--dtype``, else the newest model's (its config), else float32."""
    if dtype:
        return dtype
    config = json.loads((ref_folder / "config.json").read_text()) if (ref_folder / "config.json").exists() else {}
    return str(config.get("dtype") or config.get("torch_dtype") or "float32")


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
    # the Hub's model-card front matter for merges: the merged models, the library, tags naming the method
    front = {"base_model": [Path(m).name for m in ([base] if base else []) + list(models)],
             "library_name": "transformers", "tags": list(dict.fromkeys(["merge", "recall", method.name]))}
    parts = ["---", yaml.safe_dump(front, sort_keys=False).rstrip(), "---", "",
             f"# Merged model ({method.name})", "",
             f"Made with recall {__version__}, method `{method.name}`" + (f" ({method.reference})." if method.reference
                                                                          else "."), "",
             "## Inputs", "", f"- base: `{base}`" if base else "- base: none"]
    labels = pool_labels(None, [str(m) for m in models], False)  # the names the weights tables use
    parts += [f"- model {i}, `{label}`{' (newest, M_N)' if i == len(models) - 1 else ''}: `{m}`"
              for i, (label, m) in enumerate(zip(labels, models, strict=True))]
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
            cfg = mergekit_config(weights, pool, num_layers, names or [], dtype=_output_dtype(ref_folder, dtype))
            (folder / MERGEKIT_YAML).write_text(yaml.safe_dump(cfg, sort_keys=False))
            parts += ["", f"`{MERGEKIT_YAML}` reproduces this linear merge with `mergekit-yaml {MERGEKIT_YAML} OUT`."]
    else:
        cfg, what = mergekit_recipe(method, base, models, _output_dtype(ref_folder, dtype))
        if cfg is not None:
            (folder / MERGEKIT_YAML).write_text(yaml.safe_dump(cfg, sort_keys=False))
            parts += ["", "## mergekit", "", f"`mergekit-yaml {MERGEKIT_YAML} OUT` (mergekit 0.1.5) reproduces "
                                             f"this merge: {what}."]
        else:
            parts += ["", "## mergekit", "", f"No `{MERGEKIT_YAML}`: {what}."]
    for k, table in tables.items():
        (folder / f"recall_{k}.csv").write_text(table.to_csv())
        parts += ["", f"## {k}", "", table.markdown()]
    (folder / "README.md").write_text("\n".join(parts) + "\n")

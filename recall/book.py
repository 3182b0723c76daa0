"""Build the book (``book/``) from the results of one profile, and the Sphinx directives its pages use.

    python -m recall.book --profile cpu                 # build book/_build/html from results/cpu
    python -m recall.book --profile cpu --serve         # ... then serve it at http://localhost:8000/
    python -m recall.book --profile smoke --results-root /tmp/r --build-dir /tmp/b   # elsewhere (tests)

The pages are hand-written MyST. Where a page shows a result it names the results file, and the
directives below render that file at build time, nothing else (the formatting is
``recall.tables.view``; the verdicts are the ``claims`` table that notebook ``07_claims`` wrote). So a
number in the book is three hops from its code: the page, the results file (written by a notebook
cell), the library function that made it (``recall.tables``, ``recall.claims``, ``recall.experiments``).
A file the profile did not produce gives "Not run in this profile." instead of an error.

Directives (``results-*`` read ``<results root>/<profile>/``):

- ``results-table NAME`` (options ``subdir``, ``query``, ``caption``, and ``recall.tables.View`` overrides
  ``scale``, ``digits``, ``show``, ``index``, ``columns``, ``value``, ``kind``): a table as ``recall.tables.view``
  shows it, with its source file; ``query`` (pandas, python engine) replaces the view's row selection.
  A table of more than ``WIDE`` columns is set smaller (class ``wide-table``, ``book/_static/recall.css``).
- ``results-figure NAME`` (options ``subdir``, ``alt``): a figure the notebook saved, at its drawn size,
  linked to the full-resolution PNG, with the tables it was drawn from (``recall.plots.SOURCES``).
- ``results-run NOTEBOOK[/SUBDIR]``: the run's provenance (commit, device, wall time, parameters) and its
  executed notebook (``results/<profile>/notebooks/``) as a download.
- ``results-each PREFIX``: its content once per subfolder starting with PREFIX (``{subdir}``, ``{label}``
  substituted), e.g. one section per extra task order.
- ``results-archive``: the profile's results folder as one zip file, made in the build folder at build
  time (never in the checkout), as a download.
- ``benchmark-table``: the merge-speed benchmark against mergekit, ``<results root>/benchmarks/merge_speed.csv``
  (``benchmarks/merge_speed.py``), or a note that it was not measured.
- ``claim-rule CLAIM``: the rule of a claim, from ``recall.claims`` (``all``: how every verdict is decided).
- ``profiles-table``, ``ablations-table``: the profiles and the ablation variants, from the code.

The profile and the results root come from ``$RECALL_BOOK_PROFILE`` (default ``cpu``) and
``recall.results.results_root`` (``$RECALL_RESULTS``); ``python -m recall.book`` sets them.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

NOT_RUN = "Not run in this profile."
WIDE = 7  # a table with more columns is set in a smaller type (class wide-table, book/_static/recall.css)
PROFILE_ENV = "RECALL_BOOK_PROFILE"


def book_dir() -> Path:
    from .results import repo_root

    return repo_root() / "book"


def _profile_dir() -> tuple[str, Path]:
    from .results import results_root

    profile = os.environ.get(PROFILE_ENV, "cpu")
    return profile, results_root() / profile


def _cell(v) -> str:
    s = "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)
    s = re.sub(r"\[([^\s\]]+), ([^\s\]]+)\]", "[\\1,\u00a0\\2]", s)  # an interval wraps before "[", not inside
    return s.replace("|", "\\|").replace("\n", " ")


def md_table(df: pd.DataFrame, index: bool = True) -> str:
    """A Markdown pipe table (the index as the first column when ``index``)."""
    if index:
        df = df.reset_index()
        if df.columns[0] == "index":
            df = df.rename(columns={"index": ""})
    cols = [str(c).replace("_", "_\u200b") for c in df.columns]  # a long column name may wrap after "_"
    lines = ["| " + " | ".join(_cell(c) for c in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def provenance_lines(entry: dict, profile: str) -> list[str]:
    prof = entry.get("profile") or {}
    wall = entry.get("wall_time_s")
    wall_s = f"{wall / 60:.1f} min" if isinstance(wall, (int, float)) and wall >= 120 else f"{wall} s"
    params = ", ".join(f"{k}={v}" for k, v in (entry.get("parameters") or {}).items())
    return [f"- profile: `{profile}`" + (f" ({prof.get('notes')})" if prof.get("notes") else ""),
            f"- model: `{prof.get('model', '?')}`; test examples per task: {prof.get('n_test', '?')}; "
            f"bootstrap replicates: {prof.get('n_boot', '?')}",
            f"- git commit: `{entry.get('git_commit', 'unknown')}`",
            f"- device: {entry.get('device', 'unknown')}",
            f"- wall time of the notebook: {wall_s}; finished {entry.get('finished', '?')}" + (
                f"; the planner's estimate for a cold run: {entry['planned_cold_s'] / 60:.1f} min"
                if isinstance(entry.get("planned_cold_s"), (int, float)) else ""),
            *(["- the machine's reading (`recall.bench.probe`): " + ", ".join(
                f"{k.replace('_', ' ')} {v}" for k, v in entry["machine"].items())] if entry.get("machine") else []),
            f"- parameters: {params or 'defaults'}"] + (
        [f"- derived tables recomputed from the measured ones at commit `{entry['derived']['git_commit']}` "
         f"({entry['derived']['finished']}; `python -m recall.results`)"] if entry.get("derived") else []) + (
        [f"- figures drawn again from these tables at commit `{entry['redrawn']['git_commit']}` "
         f"({entry['redrawn']['finished']}; `python -m recall.results --figures`)"] if entry.get("redrawn") else [])


# ------------------------------------------------------------------------------------------- helpers

BENCHMARK = "benchmarks/merge_speed.csv"  # under the results root: written by benchmarks/merge_speed.py
BENCHMARK_COLUMNS = ("run", "method", "tool", "engine", "n_models", "repeats", "wall_s", "peak_rss_mib",
                     "wall_vs_mergekit", "rss_vs_mergekit", "tensors_equal", "tensors_total", "machine", "date")


def _skips(profile: str, key: str) -> bool:
    from .profiles import PROFILES

    return profile in PROFILES and key in PROFILES[profile].skip


def png_size(path: Path) -> tuple[int, int, float]:
    """(width px, height px, dots per inch) of a PNG: its header and its ``pHYs`` chunk (96 when absent)."""
    import struct

    data = Path(path).read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path} is not a PNG file")
    width, height = struct.unpack(">II", data[16:24])
    pos, dpi = 8, 96.0
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"pHYs":
            x, _, unit = struct.unpack(">IIB", data[pos + 8:pos + 17])
            dpi = x * 0.0254 if unit == 1 else dpi
        if kind in (b"pHYs", b"IDAT"):
            break
        pos += 12 + length
    return width, height, dpi


def notebook_file(folder: Path, key: str) -> Path:
    """The executed notebook of provenance entry ``key`` (``04_sequential/order-x`` -> ``04_sequential-order-x``)."""
    return folder / "notebooks" / (key.replace("/", "-") + ".ipynb")


def archive(folder: Path, out: Path) -> Path:
    """``folder`` (a profile's results) as one zip file ``out``, its members under ``<folder name>/``, sorted,
    with fixed timestamps (the same files give the same bytes); partial and failed notebooks left out."""
    import zipfile

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted(p for p in folder.rglob("*") if p.is_file()):
            rel = f.relative_to(folder)
            if any(part.startswith(".") for part in rel.parts) or ".failed." in f.name:
                continue
            info = zipfile.ZipInfo(f"{folder.name}/{rel.as_posix()}", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type, info.external_attr = zipfile.ZIP_DEFLATED, 0o644 << 16
            z.writestr(info, f.read_bytes())
    os.replace(tmp, out)
    return out


def benchmark_table(df: pd.DataFrame) -> str:
    """The merge-speed benchmark (``BENCHMARK``) as a Markdown table and a line on where it was measured."""
    missing = [c for c in BENCHMARK_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{BENCHMARK} lacks the column(s) {', '.join(missing)}; "
                         f"expected {', '.join(BENCHMARK_COLUMNS)}")

    def ratio(x):
        return "" if pd.isna(x) else f"{float(x):.2f}x"

    rows = pd.DataFrame({
        "method": df["method"], "tool": df["tool"], "engine": df["engine"].fillna(""),
        "models": df["n_models"], "wall s": df["wall_s"].map(lambda x: f"{x:.2f}"),
        "peak RSS MiB": df["peak_rss_mib"].map(lambda x: f"{x:,.0f}"),
        "wall vs mergekit": df["wall_vs_mergekit"].map(ratio), "RSS vs mergekit": df["rss_vs_mergekit"].map(ratio),
        "tensors equal": [("" if pd.isna(e) else f"{int(e)}/{int(t)}") for e, t in
                          zip(df["tensors_equal"], df["tensors_total"], strict=True)]})
    where = "; ".join(sorted({f"{m}, {d}" for m, d in zip(df["machine"], df["date"], strict=True)}))
    reps = ", ".join(str(r) for r in sorted(set(df["repeats"])))
    table = f"```{{container}} wide-table\n{md_table(rows, index=False)}\n```"
    return (f"{table}\n\n_Source: `results/{BENCHMARK}`, written by "
            f"`benchmarks/merge_speed.py`: median of {reps} runs of each whole process; measured on {where}. "
            "\"tensors equal\": output tensors bit-identical to mergekit's._")


# ------------------------------------------------------------------------------------ Sphinx directives


def setup(app):
    """Sphinx extension entry point (``_config.yml``: ``sphinx: extra_extensions: [recall.book]``)."""
    from docutils import nodes
    from docutils.parsers.rst import directives
    from docutils.statemachine import StringList
    from sphinx.util.docutils import SphinxDirective

    class _Markdown(SphinxDirective):
        """A directive that renders generated MyST text."""

        def render(self, text: str, titles: bool = False) -> list:
            node = nodes.section() if titles else nodes.container()
            self.state.nested_parse(StringList(text.splitlines(), source=self.get_source_info()[0]),
                                    self.content_offset, node, match_titles=titles)
            return node.children if titles else [node]

        def rel(self, path: Path) -> str:
            doc_dir = Path(self.env.doc2path(self.env.docname)).parent
            return Path(os.path.relpath(path, doc_dir)).as_posix()

    class ResultsTable(_Markdown):
        required_arguments = 1
        option_spec = {"subdir": directives.unchanged, "query": directives.unchanged,
                       "caption": directives.unchanged, "scale": float, "digits": int, "show": directives.unchanged,
                       "index": directives.unchanged, "columns": directives.unchanged,
                       "value": directives.unchanged,
                       "kind": lambda x: directives.choice(x, ("ci", "pivot", "matrix", "plain", "rows"))}

        def run(self):
            from . import tables

            name = self.arguments[0]
            profile, folder = _profile_dir()
            sub = self.options.get("subdir")
            path = (folder / sub if sub else folder) / f"{name}.csv"
            caption = self.options.get("caption")
            head = f"**{caption}**\n\n" if caption else ""
            if not path.is_file():
                return self.render(f"{head}_{NOT_RUN}_ (`{name}.csv`)")
            spec = tables.spec_of(name)
            kw = {k: self.options[k] for k in ("scale", "digits", "index", "columns", "value", "kind")
                  if k in self.options}
            if "show" in self.options:
                kw["show"] = tuple(c.strip() for c in self.options["show"].split(","))
            df = tables.read(path, name)
            query = self.options.get("query")
            if query:  # replaces the view's own row selection; the python engine allows .str methods
                try:
                    df = df.query(query, engine="python")
                except Exception as e:
                    raise self.error(f"results-table {name}: bad query {query!r}: {e}") from None
                kw["query"] = None
            df = tables.view(name, df, **kw)
            kind = kw.get("kind") or tables.VIEWS.get(spec.name, tables.View(kind="plain")).kind
            shown = md_table(df, index=kind not in ("plain", "rows"))
            if len(df.columns) + (kind not in ("plain", "rows")) > WIDE:
                shown = f"```{{container}} wide-table\n{shown}\n```"
            rel = path.relative_to(folder.parent).as_posix()
            source = (f"Source: `results/{rel}`" + (f" (rows `{query}`)" if query else "")
                      + f", written by notebook `{spec.notebook}`.")
            return self.render(f"{head}{shown}\n\n_{source}_")

    class ResultsFigure(_Markdown):
        """A figure the notebook saved, at its drawn size (``recall.plots.WIDTH``), linked to the full-resolution
        PNG, with the tables it was drawn from."""

        required_arguments = 1
        option_spec = {"subdir": directives.unchanged, "alt": directives.unchanged}

        def run(self):
            from .plots import sources

            name = self.arguments[0]
            _, folder = _profile_dir()
            sub = self.options.get("subdir")
            where = folder / sub if sub else folder
            path = where / f"{name}.png"
            if not path.is_file():
                return self.render(f"_Figure `{name}.png`: {NOT_RUN}_")
            width, _, dpi = png_size(path)
            try:
                names = [f.name for t in sources(name) for f in sorted(where.glob(f"{t}.csv"))]
            except KeyError:
                names = []
            rel = where.relative_to(folder.parent).as_posix()
            drawn = ("Drawn by `recall.plots` from " + ", ".join(f"`results/{rel}/{n}`" for n in names) + "; "
                     if names else "")
            alt = self.options.get("alt", name)
            return self.render(f"```{{figure}} {self.rel(path)}\n:alt: {alt}\n:width: {round(width * 96 / dpi)}px\n"
                               f":class: results-figure\n\n_{drawn}the figure links to the full-resolution "
                               f"PNG._\n```")

    class ResultsRun(_Markdown):
        required_arguments = 1

        def run(self):
            from .results import read_provenance

            key = self.arguments[0]
            profile, folder = _profile_dir()
            entry = read_provenance(folder).get(key)
            if entry is None and _skips(profile, key):
                return self.render(f"**{NOT_RUN}** Profile `{profile}` skips notebook `{key}` (its field `skip`: the "
                                   f"scenario serves no claim and does not fit the profile's budget; see "
                                   f"{{doc}}`/setup`); `python -m recall.replicate --profile {profile} --notebooks "
                                   f"{key[:2]}` runs it.")
            if entry is None:
                return self.render(f"**{NOT_RUN}** (no entry for `{key}` in `results/{profile}/provenance.json`; "
                                   f"run `python -m recall.replicate --profile {profile} --notebooks {key[:2]}`.)")
            executed = notebook_file(folder, key)
            run_file = (f"{{download}}`{executed.name} <{self.rel(executed)}>`" if executed.is_file()
                        else f"`{executed.name}` (not in this results folder)")
            text = ("**Run.**\n\n" + "\n".join(provenance_lines(entry, profile))
                    + f"\n- executed notebook: {run_file}; the run's files are listed in "
                      f"`results/{profile}/provenance.json` (key `{key}`); all of them in one archive: "
                      "{doc}`/download`")
            if profile == "smoke":
                text += ("\n\n```{warning}\nThe smoke profile uses a tiny random model: these numbers check the "
                         "pipeline and mean nothing.\n```")
            return self.render(text)

    class ResultsEach(_Markdown):
        required_arguments = 1
        has_content = True

        def run(self):
            from .tables import Source

            prefix = self.arguments[0]
            _, folder = _profile_dir()
            out = []
            template = "\n".join(self.content)
            for sub in Source(folder).subdirs(prefix):
                label = sub.removeprefix(prefix).replace("-", " > ")
                out += self.render(template.replace("{subdir}", sub).replace("{label}", label), titles=True)
            return out

    class ResultsArchive(_Markdown):
        """The profile's results folder as one zip file, made in the build folder at build time."""

        def run(self):
            profile, folder = _profile_dir()
            if not folder.is_dir():
                return self.render(f"_{NOT_RUN}_ (no folder `results/{profile}/`)")
            out = archive(folder, Path(self.env.app.outdir).parent / "archive" / f"results-{profile}.zip")
            n = sum(1 for p in folder.rglob("*") if p.is_file())
            size = out.stat().st_size / 2**20
            return self.render(f"{{download}}`results-{profile}.zip <{self.rel(out)}>` ({size:.1f} MiB, {n} files: "
                               f"every table, figure and executed notebook of `results/{profile}/` and its "
                               "`provenance.json`)")

    class BenchmarkTable(_Markdown):
        """The merge-speed benchmark against mergekit (``BENCHMARK`` under the results root), or a note that it
        has not been run."""

        def run(self):
            from .results import results_root

            path = results_root() / BENCHMARK
            if not path.is_file():
                return self.render(f"_Not measured in this checkout: `results/{BENCHMARK}` does not exist. "
                                   "`benchmarks/merge_speed.py` writes it (see `benchmarks/README.md`)._")
            try:
                return self.render(benchmark_table(pd.read_csv(path)))
            except ValueError as e:
                raise self.error(str(e)) from None

    class ClaimRule(_Markdown):
        required_arguments = 1

        def run(self):
            from . import claims
            from .claims import CLAIMS, rule_text

            c = self.arguments[0]
            if c == "all":  # how comparisons and claims are decided: the module's docstring
                return self.render(claims.__doc__.split("\n\n", 1)[1])
            return self.render(f"{CLAIMS[c]}\n\nRule: {rule_text(c)}")

    class ProfilesTable(_Markdown):
        def run(self):
            return self.render(profiles_table())

    class AblationsTable(_Markdown):
        def run(self):
            return self.render(ablations_table())

    for name, cls in (("results-table", ResultsTable), ("results-figure", ResultsFigure), ("results-run", ResultsRun),
                      ("results-each", ResultsEach), ("results-archive", ResultsArchive),
                      ("benchmark-table", BenchmarkTable), ("claim-rule", ClaimRule),
                      ("profiles-table", ProfilesTable), ("ablations-table", AblationsTable)):
        app.add_directive(name, cls)
    return {"parallel_read_safe": True, "parallel_write_safe": True}


def profiles_table() -> str:
    from .profiles import PROFILES

    fields = [("model", "model"), ("tasks", "training tasks"), ("unseen", "unseen tasks"), ("n_train", "train / task"),
              ("n_test", "test / task"), ("max_text_tokens", "text tokens"), ("epochs", "epochs"),
              ("recall_k", "k"), ("n_candidates", "candidate samples"), ("single_methods", "single-model methods"),
              ("multi_methods", "multi-model methods"), ("sequential_methods", "sequential methods"),
              ("ablations", "ablations"), ("seeds", "seeds"), ("task_order", "task order"),
              ("extra_orders", "other task orders"), ("chain_length", "tasks per chain (0: all)"),
              ("n_val", "validation / task"), ("multitask", "multi-task training"), ("skip", "notebooks skipped"),
              ("n_boot", "bootstrap"), ("device", "device"), ("notes", "notes")]

    def text(v):
        if isinstance(v, (list, tuple)):
            return ", ".join(" > ".join(x) if isinstance(x, (list, tuple)) else str(x) for x in v) or "none"
        return str(v)

    rows = {name: {label: text(prof.to_dict()[f]) for f, label in fields} for name, prof in PROFILES.items()}
    return md_table(pd.DataFrame(rows).rename_axis("field"))


def ablations_table() -> str:
    from .profiles import ABLATIONS, PROFILES

    rows = []
    for name, opts in ABLATIONS.items():
        options = ", ".join(f"`{k}={v}`" for k, v in opts.items()) or "(defaults)"
        used = ", ".join(p for p, prof in PROFILES.items() if name in prof.ablations or name == "default")
        rows.append({"variant": name, "RECALL options": options, "profiles": used})
    return md_table(pd.DataFrame(rows), index=False)


# ------------------------------------------------------------------------------------------------ build


def jupyter_book_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "jupyter-book"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("jupyter-book")
    return [found] if found else [sys.executable, "-m", "jupyter_book.cli.main"]


def build(profile: str, results_root: Path | None = None, build_dir: Path | None = None, strict: bool = True,
          quiet: bool = False) -> int:
    """``jupyter-book build book -W -n --keep-going`` for ``profile``; returns the exit status."""
    from .results import results_root as default_root

    cmd = jupyter_book_cmd() + ["build", str(book_dir()), "--all"]
    if strict:
        cmd += ["-W", "-n", "--keep-going"]
    if build_dir is not None:
        cmd += ["--path-output", str(build_dir)]
    if quiet:
        cmd += ["-q"]
    env = dict(os.environ)
    env.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    env[PROFILE_ENV] = profile
    env["RECALL_RESULTS"] = str(Path(results_root or default_root()).resolve())
    print("$ " + " ".join(cmd), flush=True)
    return subprocess.run(cmd, env=env).returncode


def serve(html: Path, port: int = 8000) -> None:
    """Serve the built book at ``http://localhost:<port>/`` (this machine only) until Ctrl-C."""
    import functools
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(html))
    with ThreadingHTTPServer(("127.0.0.1", port), handler) as server:
        print(f"serving the book at http://localhost:{server.server_address[1]}/ (Ctrl-C stops)", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m recall.book", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="cpu", help="profile whose results to show (default cpu)")
    ap.add_argument("--results-root", type=Path, help="results root (default $RECALL_RESULTS or results/ of the "
                    "checkout)")
    ap.add_argument("--build-dir", type=Path, help="jupyter-book --path-output (default: book/_build)")
    ap.add_argument("--no-strict", action="store_true", help="build without -W -n (warnings are not errors)")
    ap.add_argument("--serve", nargs="?", const=8000, type=int, metavar="PORT",
                    help="after the build, serve the book at http://localhost:PORT/ (default 8000) until Ctrl-C")
    ap.add_argument("-q", "--quiet", action="store_true")
    args = ap.parse_args(argv)

    from .profiles import PROFILES
    from .results import NoCheckout, results_root

    if args.profile not in PROFILES:
        ap.error(f"unknown profile {args.profile!r}; choose one of {', '.join(PROFILES)}")
    if args.serve is not None and not 0 <= args.serve <= 65535:
        ap.error(f"--serve: port {args.serve} is not in 0..65535")
    try:
        root = results_root(args.results_root)
        html = (args.build_dir / "_build" / "html") if args.build_dir else book_dir() / "_build" / "html"
    except NoCheckout as e:
        ap.error(str(e))
    if not (root / args.profile).exists():
        print(f"note: {root / args.profile} does not exist; every results section will say '{NOT_RUN}'",
              file=sys.stderr)
    rc = build(args.profile, root, args.build_dir, strict=not args.no_strict, quiet=args.quiet)
    if rc:
        print(f"jupyter-book build failed (exit {rc}); see the warnings above", file=sys.stderr)
        return rc
    index = (html / "index.html").resolve()
    print(f"\nthe book: {index}\nopen {index.as_uri()} in a browser, or serve it: python -m recall.book "
          f"--profile {args.profile} --serve", flush=True)
    if args.serve is not None:
        serve(html, args.serve)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Build the book (``book/``) from the results of one profile, and the Sphinx directives its pages use.

    python -m recall.book --profile cpu                 # build book/_build/html from results/cpu
    python -m recall.book --profile smoke --results-root /tmp/r --build-dir /tmp/b   # elsewhere (tests)

The pages are hand-written MyST. Where a page shows a result it names the results file, and the
directives below render that file at build time, nothing else (the formatting is
``recall.tables.view``; the verdicts are the ``claims`` table that notebook ``07_claims`` wrote). So a
number in the book is three hops from its code: the page, the results file (written by a notebook
cell), the library function that made it (``recall.tables``, ``recall.claims``, ``recall.experiments``).
A file the profile did not produce gives "Not run in this profile." instead of an error.

Directives (``results-*`` read ``<results root>/<profile>/``):

- ``results-table NAME`` (options ``subdir``, ``query``, ``caption``): a table as ``recall.tables.view``
  shows it, with its source file.
- ``results-figure NAME`` (options ``subdir``, ``alt``): a figure the notebook saved.
- ``results-run NOTEBOOK[/SUBDIR]``: the run's provenance (commit, device, wall time, parameters).
- ``results-each PREFIX``: its content once per subfolder starting with PREFIX (``{subdir}``, ``{label}``
  substituted), e.g. one section per extra task order.
- ``claim-rule CLAIM``: the rule of a claim, from ``recall.claims`` (``all``: how every verdict is decided).
- ``profiles-table``, ``ablations-table``: the profiles and the ablation variants, from the code.

The profile and the results root come from ``$RECALL_BOOK_PROFILE`` (default ``cpu``) and
``recall.results.results_root`` (``$RECALL_RESULTS``); ``python -m recall.book`` sets them.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

NOT_RUN = "Not run in this profile."
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
    return s.replace("|", "\\|").replace("\n", " ")


def md_table(df: pd.DataFrame, index: bool = True) -> str:
    """A Markdown pipe table (the index as the first column when ``index``)."""
    if index:
        df = df.reset_index()
        if df.columns[0] == "index":
            df = df.rename(columns={"index": ""})
    cols = [str(c) for c in df.columns]
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
            f"- wall time of the notebook: {wall_s}; finished {entry.get('finished', '?')}",
            f"- parameters: {params or 'defaults'}"] + (
        [f"- derived tables recomputed from the measured ones at commit `{entry['derived']['git_commit']}` "
         f"({entry['derived']['finished']}; `python -m recall.results`)"] if entry.get("derived") else [])


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
                       "caption": directives.unchanged, "scale": float, "digits": int, "show": directives.unchanged}

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
            kw = {k: self.options[k] for k in ("query", "scale", "digits") if k in self.options}
            if "show" in self.options:
                kw["show"] = tuple(c.strip() for c in self.options["show"].split(","))
            df = tables.view(name, tables.read(path, name), **kw)
            kind = tables.VIEWS.get(spec.name, tables.View(kind="plain")).kind
            shown = md_table(df, index=kind not in ("plain", "rows"))
            rel = path.relative_to(folder.parent).as_posix()
            source = (f"Source: `results/{rel}`" + (f" (rows `{kw['query']}`)" if "query" in kw else "")
                      + f", written by notebook `{spec.notebook}`.")
            return self.render(f"{head}{shown}\n\n_{source}_")

    class ResultsFigure(_Markdown):
        required_arguments = 1
        option_spec = {"subdir": directives.unchanged, "alt": directives.unchanged}

        def run(self):
            name = self.arguments[0]
            _, folder = _profile_dir()
            sub = self.options.get("subdir")
            path = (folder / sub if sub else folder) / f"{name}.png"
            if not path.is_file():
                return self.render(f"_Figure `{name}.png`: {NOT_RUN}_")
            return self.render(f"![{self.options.get('alt', name)}]({self.rel(path)})")

    class ResultsRun(_Markdown):
        required_arguments = 1

        def run(self):
            from .results import read_provenance

            key = self.arguments[0]
            profile, folder = _profile_dir()
            entry = read_provenance(folder).get(key)
            if entry is None:
                return self.render(f"**{NOT_RUN}** (no entry for `{key}` in `results/{profile}/provenance.json`; "
                                   f"run `python -m recall.replicate --profile {profile} --notebooks {key[:2]}`.)")
            text = "**Run.**\n\n" + "\n".join(provenance_lines(entry, profile))
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
                      ("results-each", ResultsEach), ("claim-rule", ClaimRule), ("profiles-table", ProfilesTable),
                      ("ablations-table", AblationsTable)):
        app.add_directive(name, cls)
    return {"parallel_read_safe": True, "parallel_write_safe": True}


def profiles_table() -> str:
    from .profiles import PROFILES

    fields = [("model", "model"), ("tasks", "training tasks"), ("unseen", "unseen tasks"), ("n_train", "train / task"),
              ("n_test", "test / task"), ("max_text_tokens", "text tokens"), ("epochs", "epochs"),
              ("recall_k", "k"), ("n_candidates", "candidate samples"), ("single_methods", "single-model methods"),
              ("multi_methods", "multi-model methods"), ("sequential_methods", "sequential methods"),
              ("ablations", "ablations"), ("seeds", "seeds"), ("task_order", "task order"),
              ("extra_orders", "other task orders"), ("n_boot", "bootstrap"), ("device", "device"), ("notes", "notes")]

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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m recall.book", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="cpu", help="profile whose results to show (default cpu)")
    ap.add_argument("--results-root", type=Path, help="results root (default $RECALL_RESULTS or results/)")
    ap.add_argument("--build-dir", type=Path, help="jupyter-book --path-output (default: book/_build)")
    ap.add_argument("--no-strict", action="store_true", help="build without -W -n (warnings are not errors)")
    ap.add_argument("-q", "--quiet", action="store_true")
    args = ap.parse_args(argv)

    from .profiles import PROFILES
    from .results import results_root

    if args.profile not in PROFILES:
        ap.error(f"unknown profile {args.profile!r}; choose one of {', '.join(PROFILES)}")
    root = results_root(args.results_root)
    if not (root / args.profile).exists():
        print(f"note: {root / args.profile} does not exist; every results section will say '{NOT_RUN}'",
              file=sys.stderr)
    rc = build(args.profile, root, args.build_dir, strict=not args.no_strict, quiet=args.quiet)
    html = (args.build_dir / "_build" / "html") if args.build_dir else book_dir() / "_build" / "html"
    print(f"jupyter-book exited with {rc}; open {html / 'index.html'}" if rc == 0 else
          f"jupyter-book build failed (exit {rc}); see the warnings above", file=sys.stderr if rc else sys.stdout)
    return rc


if __name__ == "__main__":
    sys.exit(main())

"""What every result notebook does around its science: setup, the cached run, the results folder, display.

A result notebook (``notebooks/0*.py``, paired with the ``.ipynb`` that papermill runs) is a parameters
cell and a few calls::

    nb = Notebook("03_multi_model", profile, seed)
    nb.write(multi_examples=multi_model(nb.run))   # measured tables (recall.experiments)
    nb.derive()                                     # derived tables (recall.tables)
    nb.show("multi_train")                          # a table as recall.tables.view shows it
    nb.figures()                                    # every figure of the notebook (recall.plots.FIGURES)
    nb.provenance()                                 # results/<profile>/provenance.json

Results of a seed other than 0 or a task order other than the profile's go to their own subfolder
(``recall.results.subdir_for``), so they never overwrite the main run's.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd

from . import planner, plots, progress, tables
from .experiments import Run
from .profiles import check_task_order, get_profile
from .results import Results, subdir_for


def quiet() -> None:
    """Silence the warnings and progress bars that would only clutter an executed notebook."""
    import transformers

    warnings.filterwarnings("ignore", message="IProgress not found")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="peft")
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


class TalkingRun(Run):
    """A ``Run`` that names the unit it computes in the progress lines of ``recall.progress`` (training, merging,
    scoring); what it computes is ``Run``'s."""

    def train(self, start, tasks, name, *args, **kwargs):
        with progress.unit(f"training {name}"):
            return super().train(start, tasks, name, *args, **kwargs)

    def merge(self, method, models, *args, **kwargs):
        with progress.unit(f"merging {kwargs.get('name') or method}"):
            return super().merge(method, models, *args, **kwargs)

    def evaluate(self, model, task, *args, **kwargs):
        with progress.unit(f"scoring {Path(model).name.rsplit('-', 1)[0]} on {task}"):
            return super().evaluate(model, task, *args, **kwargs)


class Notebook:
    """One notebook run: profile, ``Run`` (cached units), ``Results`` folder and the tables written so far."""

    def __init__(self, name: str, profile: str, seed: int = 0, **params):
        quiet()
        self.name = name
        self.profile = get_profile(profile)
        order = params.get("task_order")
        self.task_order = check_task_order(self.profile, order) if order else tuple(self.profile.task_order)
        if "task_order" in params:
            params["task_order"] = list(self.task_order)
        self.params = {"profile": profile, "seed": seed, **params}
        talk = progress.install()  # under recall.replicate: bars become progress lines, not notebook output
        self.run = (TalkingRun if talk else Run)(self.profile, seed=seed, progress=talk)
        self.machine = planner.reading(self.profile)  # the speed this notebook's estimate is calibrated to
        self.res = Results(profile, name, subdir=subdir_for(seed, self.task_order, self.profile.task_order))
        self.table_params = tables.Params.of(self.profile, seed, **params)
        self.tables: dict[str, pd.DataFrame] = {}

    def write(self, **measured: pd.DataFrame) -> None:
        """Write measured tables (from ``recall.experiments``)."""
        self.res.write(**measured)
        self.tables.update(measured)

    def derive(self) -> dict[str, pd.DataFrame]:
        """Compute, write and keep this notebook's derived tables (``recall.tables.derive``)."""
        out = self.res.derive(self.table_params)
        self.tables.update(out)
        return out

    def show(self, name: str, **view):
        """Display table ``name`` as ``recall.tables.view`` shows it."""
        from IPython.display import display

        display(tables.view(name, self.tables[name], **view))

    def figures(self) -> None:
        """Make, save and display every figure of this notebook."""
        from IPython.display import Image, display

        figs = plots.figures(self.name, self.tables, plots.where(self.profile), self.task_order)
        for fig_name, fig in figs.items():
            display(Image(filename=str(self.res.figure(fig_name, fig))))

    def provenance(self) -> None:
        """Record this run in ``provenance.json``."""
        from IPython.display import Markdown, display

        one = planner.run_profile(self.profile, self.params["seed"], self.task_order)  # this run's chain
        phases = planner.per_phase(one, self.name, planner.calibrated(planner.RATES, self.machine))
        planned = sum(phases.values())  # 0: a notebook the planner has no units of (07_claims)
        self.res.provenance(self.profile, self.params, self.run.timings, planned_s=planned or None,
                            planned_phases_s=phases if planned else None, machine=self.machine)
        display(Markdown(f"Wrote {len(set(self.res.files))} files to `{self.res.dir}`; step timings (s): "
                         f"{self.run.timings}"))


__all__ = ["Notebook", "quiet"]

# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 06 Efficiency
#
# Wall time and peak memory of our layer-wise merge (given weights) against the number of models, with the
# streaming and the in-memory engine, on copies of the profile's base model (`recall.experiments.efficiency`). The
# comparison with mergekit, each run as a separate process, is `benchmarks/merge_speed.py`'s: it writes
# `results/benchmarks/merge_speed.csv`, which the book shows beside these. Timings are single measurements on a
# shared machine: no intervals.

# %% tags=["parameters"]
profile = "smoke"
seed = 0

# %%
from recall.experiments import efficiency
from recall.notebook import Notebook

nb = Notebook("06_efficiency", profile, seed)

# %%
nb.write(efficiency=efficiency(nb.run))
nb.show("efficiency")

# %%
nb.figures()

# %%
nb.provenance()

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
# # 00 Pilot: the testbed fixed on validation
#
# Run once, before the replication, to choose what the profile then fixes: the scoring rule and label casing,
# and the experts' training recipe (`recall.pilot`; its docstring states the rules). Only the validation split
# is read. The base model on every task and each expert on its own task and the unseen tasks are scored by every
# rule (`pilot_scoring`); training recipes are tried cheapest first until every expert beats the base by at least
# 15 points of macro-F1 on its task (`pilot_training`, with the loss curves in `pilot_losses`).

# %% tags=["parameters"]
profile = "smoke"
seed = 0

# %%
from recall.notebook import Notebook
from recall.pilot import pilot

nb = Notebook("00_pilot", profile, seed)

# %%
nb.write(**pilot(nb.run))
nb.show("pilot_scoring")

# %%
nb.show("pilot_training")

# %%
nb.figures()

# %%
nb.provenance()

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
# Run once, before the replication, to choose what the profile then fixes: the label casing, and the experts'
# training recipe with the scoring rule (`recall.pilot`; its docstring states the rules). Only the validation
# split is read. The base model on every task and each expert on its own task and the unseen tasks are scored by
# every rule (`pilot_scoring`); training recipes are tried cheapest first until, under some rule, every expert
# beats the base by at least 15 points of macro-F1 on its task (`pilot_training`, with the loss curves in
# `pilot_losses`); `pilot_choice` says what was chosen and which labels no model predicts.

# %% tags=["parameters"]
profile = "smoke"
seed = 0

# %%
from recall.notebook import Notebook
from recall.pilot import pilot

nb = Notebook("00_pilot", profile, seed)

# %%
nb.write(**pilot(nb.run))
nb.derive()
nb.show("pilot_choice")

# %%
nb.show("pilot_scoring")

# %%
nb.show("pilot_training")

# %%
nb.figures()

# %%
nb.provenance()

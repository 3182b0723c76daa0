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
# # 07 Claims: verdicts
#
# Each claim of the paper gets a verdict from the tables the other notebooks wrote, by the rules of
# `recall.claims` (the rule of each claim is the docstring of its rule function, shown in the book). Run it after
# notebooks 01-05; a table that is missing gives "not run in this profile".

# %% tags=["parameters"]
profile = "smoke"
seed = 0

# %%
from recall.notebook import Notebook

nb = Notebook("07_claims", profile, seed)

# %%
nb.derive()
nb.show("claims")

# %%
nb.show("claim_comparisons")

# %%
nb.provenance()

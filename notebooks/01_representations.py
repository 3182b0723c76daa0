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
# # 01 Representations: where do task experts agree?
#
# The paper's observation behind RECALL (claim C1): within one model the similarity of adjacent layers drops
# sharply in the first and last layers; across models fine-tuned from one base on different tasks, shallow
# layers stay similar and deep layers diverge. We read the same test prompts (spread evenly over the training
# tasks) with the base model and every task expert, mean-pool each layer's hidden states and compare them with
# the RBF-kernel similarity and linear CKA (`recall.experiments.representation_analysis`). The curve and the C1
# statistics are `recall.tables.interexpert_curve` and `recall.tables.c1_summary`; their intervals resample
# expert pairs (pairs share experts, so they are approximate).

# %% tags=["parameters"]
profile = "smoke"
seed = 0
n_samples = 32  # test prompts read by every model, spread over the tasks

# %%
from recall.experiments import representation_analysis
from recall.notebook import Notebook

nb = Notebook("01_representations", profile, seed, n_samples=n_samples)

# %%
nb.write(**representation_analysis(nb.run, n_samples=n_samples))
nb.derive()
nb.show("c1_summary")

# %%
nb.show("interexpert_curve")

# %%
nb.figures()

# %%
nb.provenance()

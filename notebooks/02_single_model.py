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
# # 02 Single-model merging
#
# Per training task, its LoRA expert is merged into the base model with each method; the merged model is
# scored on the expert's own task (new-task performance) and on the unseen tasks (general ability kept from the
# base). References: the base model and the unmerged expert (`recall.experiments.single_model`). Unseen-task
# accuracy of a method is averaged over the merged models of all experts, per test example
# (`recall.tables.single_model_tables`). Intervals: 95% paired percentile bootstrap over test examples,
# stratified by task.

# %% tags=["parameters"]
profile = "smoke"
seed = 0

# %%
from recall.experiments import single_model
from recall.notebook import Notebook

nb = Notebook("02_single_model", profile, seed)

# %%
nb.write(single_examples=single_model(nb.run))
nb.derive()
nb.show("single_accuracy", query='scope == "own task"')

# %%
nb.show("single_accuracy", query='scope == "unseen tasks"')

# %%
nb.show("single_diff")

# %%
nb.figures()

# %%
nb.provenance()

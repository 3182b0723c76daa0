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
# # 03 Multi-model merging
#
# The base model and all task experts are merged into one model with each method and scored on every training
# task and the unseen tasks (claims C2 and C4; `recall.experiments.multi_model`). For RECALL and LM-Cocktail the
# newest model M_N is the last expert in the task order and the samples come from its task. References: the base
# model, each expert on its own task (`experts`), multi-task training (not data-free) and the majority class.
# Controls: `uniform` (RECALL's pool, uniform weights) and `recall_symmetric` (each expert in turn as M_N). Every
# method's main knob is first tuned on the validation split (`recall.tuning`, table `multi_tuning`); test examples
# are scored only with the chosen values. Normalized score = merged accuracy / the expert's accuracy on that task
# (`recall.tables.multi_model_tables`). Intervals: 95% paired percentile bootstrap over test examples, stratified
# by task.

# %% tags=["parameters"]
profile = "smoke"
seed = 0

# %%
from recall.experiments import multi_model, multi_recall_weights, multi_tuning
from recall.notebook import Notebook

nb = Notebook("03_multi_model", profile, seed)

# %%
nb.write(multi_tuning=multi_tuning(nb.run), multi_examples=multi_model(nb.run),
         multi_recall_weights=multi_recall_weights(nb.run))
nb.derive()
nb.show("multi_tuning")

# %%
nb.show("multi_train")

# %%
nb.show("multi_unseen")

# %%
nb.show("multi_f1")

# %%
nb.show("multi_normalized")

# %%
nb.show("multi_diff")

# %%
nb.figures()

# %%
nb.provenance()

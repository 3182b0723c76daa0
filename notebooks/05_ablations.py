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
# # 05 Ablations of RECALL
#
# Variants of RECALL in the multi-model scenario (base + all experts, samples of the last task), scored on the
# training tasks (`recall.experiments.ablations`). Each variant changes one open choice (`recall.profiles.ABLATIONS`):
# typical samples by KMeans vs random (claim C5), the number k of typical samples, the reading of the similarities
# (`literal`: softmax of the median-heuristic RBF similarity, the negative control; `sklearn_rbf`: gamma = 1/H),
# pooling over the whole prompt instead of the sample's own tokens, the similarity measure, layer-wise vs one
# global weight per model, and more on the gpu profile. The default is RECALL as tuned on validation
# (`multi_tuning`). `recall_diagnostics` holds, per reading, layer and pool model, D, S, delta = D/S, the
# similarity and the weight. Differences are
# variant minus default, paired over test examples (95% percentile bootstrap; `recall.tables.ablation_tables`).

# %% tags=["parameters"]
profile = "smoke"
seed = 0

# %%
from recall.experiments import ablations, recall_diagnostics
from recall.notebook import Notebook

nb = Notebook("05_ablations", profile, seed)

# %%
nb.write(ablation_examples=ablations(nb.run), recall_diagnostics=recall_diagnostics(nb.run))
nb.derive()
nb.show("ablation_accuracy")

# %%
nb.show("ablation_diff")

# %%
nb.figures()

# %%
nb.provenance()

# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 04 Sequential fine-tuning
#
# Tasks arrive one at a time (claim C3; `recall.experiments.sequential`). Plain sequential LoRA fine-tuning
# (`sft`) and EWC fine-tune the current model on each new task; the merge methods fine-tune the current model on
# task t and then merge {current, new} with typical samples of task t (`recall_history`: {base, M_1..M_t};
# `uniform`: the fixed-0.5 average chain). After step t the model is scored on tasks 1..t+1 of the sequence (the
# lower triangle of R, its diagonal and the superdiagonal FWT reads) and, after the last step, on every task and
# the unseen tasks. A profile's `chain_length` stops the chains after the first tasks of the order (the cpu
# profile: three); step 1 of every chain is the expert of the first task, found by its training inputs. The
# merge methods' knobs and EWC's penalty weight are tuned on validation on the first two steps (`recall.tuning`,
# table `seq_tuning`). AP, BWT, FWT and forgetting are defined in `recall.cl_metrics`
# (`recall.tables.sequential_tables`).
#
# `task_order = None` uses the profile's order; another order (papermill `-y 'task_order: [...]'`) writes to the
# subfolder `order-<tasks>` (a seed other than 0 to `seed<n>[-order-<tasks>]`). Intervals: 95% paired percentile
# bootstrap over test examples (the same resampled examples for every method, step and the base model).

# %% tags=["parameters"]
profile = "smoke"
seed = 0
task_order = None  # None: the order of the profile

# %%
from recall.experiments import base_examples, sequential, sequential_tuning
from recall.notebook import Notebook

nb = Notebook("04_sequential", profile, seed, task_order=task_order)

# %%
order = nb.profile.chain(nb.task_order)  # the tasks the chains learn (the profile's chain_length)
nb.write(seq_tuning=sequential_tuning(nb.run, order), seq_examples=sequential(nb.run, order),
         seq_base_examples=base_examples(nb.run, order + tuple(nb.profile.unseen)))
nb.derive()
nb.show("seq_tuning")

# %%
nb.show("seq_metrics")

# %%
nb.show("seq_diff")

# %%
nb.figures()

# %%
nb.provenance()

"""Import every method module so that its @register runs. Add new methods here."""

import importlib

for _name in ["layer_linear", "recall", "average", "task_arithmetic", "ties", "dare", "lm_cocktail", "magmax"]:
    try:
        importlib.import_module(f"{__package__}.{_name}")
    except ModuleNotFoundError as e:  # a method module not written yet
        if e.name != f"{__package__}.{_name}":
            raise

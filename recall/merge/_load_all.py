"""Import every method module so that its @register runs. Add new methods here."""

from . import average, dare, layer_linear, lm_cocktail, magmax, recall, task_arithmetic, ties  # noqa: F401

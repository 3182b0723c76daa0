"""Merge methods (one module each), the registry, the layer map and the two merge engines."""

from .base import MergeContext, MergeError, MergeMethod, Sample, Table
from .registry import METHODS, get_method, get_method_class, method_options, register

__all__ = ["MergeContext", "MergeError", "MergeMethod", "Sample", "Table", "METHODS", "get_method", "get_method_class",
           "method_options", "register"]

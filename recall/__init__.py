"""recall: RECALL (representation-aligned, layer-wise model merging) as a library, plus its replication.

Wang et al., "RECALL: REpresentation-aligned Catastrophic-forgetting ALLeviation via Hierarchical
Model Merging", EMNLP 2025 (arXiv 2510.20479). The paper's code is not public; every choice it
leaves open is an option here, with the default documented where it is defined.
"""

__version__ = "0.1.0"

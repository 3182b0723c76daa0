"""Which examples share a micro-batch: shuffled, or shuffled and grouped by length.

Padding is compute paid for nothing: a batch costs its longest example times its size. With
``group_by_length`` (the default, as Hugging Face's ``group_by_length``) each epoch shuffles the
examples, cuts the permutation into groups of ``GROUP`` batches, sorts each group by length (stable)
and cuts it into batches, then shuffles the order of the batches: batches of similar lengths, in random
order, every example once per epoch. Both draws come from one seeded ``torch.Generator``, so the batches
are the same for the same seed, epoch after epoch.
"""

from __future__ import annotations

import torch
from torch.utils.data import Sampler

GROUP = 8  # batches per length-sorted group


class LengthGroupedBatches(Sampler[list[int]]):
    """Batches of example indices (a ``batch_sampler``), drawn anew each epoch from ``generator``."""

    def __init__(self, lengths: list[int], batch_size: int, generator: torch.Generator, group: int = GROUP):
        if batch_size < 1 or group < 1:
            raise ValueError(f"batch_size and group must be >= 1, got {batch_size} and {group}")
        self.lengths, self.batch_size, self.generator, self.group = list(lengths), batch_size, generator, group

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def __iter__(self):
        perm = torch.randperm(len(self.lengths), generator=self.generator).tolist()
        span = self.batch_size * self.group
        batches = []
        for g in range(0, len(perm), span):
            members = sorted(perm[g:g + span], key=lambda i: self.lengths[i])
            batches += [members[b:b + self.batch_size] for b in range(0, len(members), self.batch_size)]
        for b in torch.randperm(len(batches), generator=self.generator).tolist():
            yield batches[b]


def padded_tokens(batches, lengths: list[int]) -> int:
    """Positions the batches compute: each batch's size times its longest example."""
    return sum(len(b) * max(lengths[i] for i in b) for b in batches)

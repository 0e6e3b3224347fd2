"""Training windows from a token dataset: deterministic, disjoint across DDP ranks, resumable.

Each epoch lays a grid of non-overlapping windows of `window` tokens over the dataset, shifted by a
random offset (so window edges move from epoch to epoch), and shuffles the grid with a generator
seeded by (seed, epoch). Rank r takes every world_size-th window of that order, so ranks never
share a window within an epoch. The whole state is (epoch, position): a resumed run continues
with exactly the windows it would have seen.
"""

from __future__ import annotations

import numpy as np

from grokcopy.data.errors import CorpusTooSmallError


class WindowSampler:
    """Yields batches of windows (`window` = seq_len + 1 tokens) for one DDP rank.

    Args:
        dataset: anything with `len()` and `read(start, length) -> np.ndarray` (a TokenDataset).
        window: tokens per window, seq_len + 1 (inputs and shifted targets).
        seed: seeds every epoch's offset and order; the same on all ranks.
        rank, world_size: this process's DDP rank and the number of ranks.
        sink: a token id that replaces each window's first token (an attention sink); None: none.
    """

    def __init__(self, dataset, window: int, *, seed: int, rank: int = 0, world_size: int = 1,
                 sink: int | None = None):
        if window < 2:
            raise ValueError(f"window must be >= 2 tokens (seq_len + 1), got {window}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.dataset = dataset
        self.window = window
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.sink = sink
        # Windows per epoch, chosen so that any offset in [0, window) still fits.
        self.n_windows = (len(dataset) - window + 1) // window
        self.per_rank = self.n_windows // world_size
        if self.per_rank < 1:
            # the grid needs world_size windows plus room for any offset in [0, window)
            needed = (world_size + 1) * window - 1
            where = getattr(dataset, "path", repr(dataset))
            raise CorpusTooSmallError(
                f"{where} holds {len(dataset):,} tokens: too few for one window of {window:,} tokens "
                f"(seq_len {window - 1:,} + 1) on each of {world_size} rank(s), which needs {needed:,}; "
                "use a shorter --seq-len or a larger corpus"
            )
        self.epoch = 0
        self.position = 0  # windows of this epoch already taken by this rank
        self._starts = self._epoch_starts(0)

    def _epoch_starts(self, epoch: int) -> np.ndarray:
        """Start token of each window this rank takes in `epoch`, in order."""
        rng = np.random.default_rng([self.seed, epoch])
        offset = int(rng.integers(self.window))
        order = rng.permutation(self.n_windows)[: self.per_rank * self.world_size]
        mine = order.reshape(self.per_rank, self.world_size)[:, self.rank]
        return offset + mine.astype(np.int64) * self.window

    def next_starts(self, batch_size: int) -> np.ndarray:
        """Start positions of the next `batch_size` windows, moving to the next epoch as needed."""
        starts = []
        while batch_size > 0:
            take = min(batch_size, self.per_rank - self.position)
            starts.append(self._starts[self.position : self.position + take])
            self.position += take
            batch_size -= take
            if self.position == self.per_rank:
                self.epoch += 1
                self.position = 0
                self._starts = self._epoch_starts(self.epoch)
        return np.concatenate(starts)

    def next_batch(self, batch_size: int) -> np.ndarray:
        """The next `batch_size` windows as an int64 array of shape [batch_size, window]."""
        starts = self.next_starts(batch_size)
        batch = np.stack([self.dataset.read(int(s), self.window) for s in starts]).astype(np.int64)
        if self.sink is not None:
            batch[:, 0] = self.sink
        return batch

    def state_dict(self) -> dict:
        return {
            "seed": self.seed, "window": self.window, "rank": self.rank, "world_size": self.world_size,
            "n_tokens": len(self.dataset), "epoch": self.epoch, "position": self.position,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state`; it must come from a sampler over the same data and layout."""
        for key in ("seed", "window", "rank", "world_size", "n_tokens"):
            mine = self.state_dict()[key]
            if state[key] != mine:
                raise ValueError(
                    f"cannot resume the data sampler: checkpoint has {key}={state[key]}, this run has {mine} "
                    "(the data, seq_len, seed or number of ranks changed since the checkpoint)"
                )
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._starts = self._epoch_starts(self.epoch)

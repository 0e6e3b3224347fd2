"""Training-window sampler: deterministic, disjoint across ranks, exactly resumable."""

import numpy as np
import pytest

from grokcopy.data import TokenDataset, WindowSampler, write_shards


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("sampler")
    write_shards([np.arange(5000) % 1000], path, 1000, shard_tokens=1500, frame_tokens=100)
    return TokenDataset(path)


def test_windows_are_real_slices_and_deterministic(dataset):
    a = WindowSampler(dataset, 33, seed=3)
    b = WindowSampler(dataset, 33, seed=3)
    c = WindowSampler(dataset, 33, seed=4)
    batch_a = a.next_batch(8)
    assert batch_a.shape == (8, 33) and batch_a.dtype == np.int64
    np.testing.assert_array_equal(batch_a, b.next_batch(8))
    assert not np.array_equal(batch_a, c.next_batch(8))
    for row in batch_a:  # the data is 0..999 repeating, so a true slice is consecutive mod 1000
        np.testing.assert_array_equal(np.diff(row) % 1000, 1)


def test_ranks_are_disjoint_and_cover_the_epoch(dataset):
    world = 3
    samplers = [WindowSampler(dataset, 50, seed=0, rank=r, world_size=world) for r in range(world)]
    per_rank = samplers[0].per_rank
    starts = [s.next_starts(per_rank) for s in samplers]
    all_starts = np.concatenate(starts)
    assert len(set(all_starts.tolist())) == len(all_starts) == per_rank * world
    assert (np.diff(np.sort(all_starts)) >= 50).all(), "windows of one epoch overlap"
    assert all(s.epoch == 1 and s.position == 0 for s in samplers)


def test_epochs_differ_and_wrap(dataset):
    s = WindowSampler(dataset, 50, seed=0)
    first = s.next_starts(s.per_rank)
    second = s.next_starts(s.per_rank)
    assert not np.array_equal(np.sort(first), np.sort(second))
    assert s.epoch == 2


def test_resume_continues_exactly(dataset):
    reference = WindowSampler(dataset, 65, seed=11, rank=1, world_size=2)
    expected = [reference.next_batch(5) for _ in range(30)]  # crosses several epochs
    resumed = WindowSampler(dataset, 65, seed=11, rank=1, world_size=2)
    for batch in expected[:13]:
        np.testing.assert_array_equal(resumed.next_batch(5), batch)
    state = resumed.state_dict()
    fresh = WindowSampler(dataset, 65, seed=11, rank=1, world_size=2)
    fresh.load_state_dict(state)
    for batch in expected[13:]:
        np.testing.assert_array_equal(fresh.next_batch(5), batch)


def test_resume_refuses_a_different_layout(dataset):
    state = WindowSampler(dataset, 65, seed=11, rank=0, world_size=2).state_dict()
    with pytest.raises(ValueError, match="world_size=2, this run has 1"):
        WindowSampler(dataset, 65, seed=11).load_state_dict(state)


def test_too_small_dataset_is_an_error(dataset):
    with pytest.raises(ValueError, match="too few for one window"):
        WindowSampler(dataset, 4000, seed=0, world_size=2)


def test_sink_replaces_each_windows_first_token(dataset):
    plain = WindowSampler(dataset, 33, seed=3).next_batch(8)
    sunk = WindowSampler(dataset, 33, seed=3, sink=7).next_batch(8)
    assert (sunk[:, 0] == 7).all()
    np.testing.assert_array_equal(sunk[:, 1:], plain[:, 1:])  # same windows, same order

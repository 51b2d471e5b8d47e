"""Rank agreement helpers under a real 2-process gloo group."""
import os

import pytest
import torch.multiprocessing as mp

from mmpetl.utils import on_rank0, ranks_where


def _worker(rank, port, out):
    import torch.distributed as dist
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=2)
    calls = []

    def work():
        calls.append(rank)
        return f'computed on rank {rank}'

    result = on_rank0(work)

    def fail():
        raise KeyError('bad base')

    try:
        on_rank0(fail)
        error = None
    except KeyError as err:
        error = str(err)
    out[rank] = dict(result=result, calls=calls, error=error,
                     where=ranks_where(rank == 1), none=ranks_where(False))
    dist.destroy_process_group()


def test_on_rank0_and_ranks_where_agree_across_ranks():
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_worker, args=(29531, out), nprocs=2)
    for rank in (0, 1):
        got = out[rank]
        assert got['result'] == 'computed on rank 0'  # broadcast
        assert got['calls'] == ([0] if rank == 0 else [])  # rank 0 only
        assert got['error'] == "'bad base'"  # raised on every rank
        assert got['where'] == [1] and got['none'] == []


def test_without_a_process_group_they_run_locally():
    assert on_rank0(lambda: 3) == 3
    assert ranks_where(True) == [0] and ranks_where(False) == []
    with pytest.raises(ValueError):
        on_rank0(lambda: int('x'))

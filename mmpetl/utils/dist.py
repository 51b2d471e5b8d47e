"""Agreement between ranks: every rank reaches the same decision."""
from typing import Callable, List

import torch
from mmengine.dist import (all_reduce, broadcast_object_list, get_rank,
                           get_world_size, is_main_process)

__all__ = ['on_rank0', 'ranks_where']


def on_rank0(fn: Callable):
    """``fn()`` on rank 0 only; its result (or its exception, re-raised) on
    every rank. Without a process group it simply calls ``fn``."""
    box = [None, None]
    if is_main_process():
        try:
            box[0] = fn()
        except Exception as err:  # re-raised on every rank below
            box[1] = err
    broadcast_object_list(box)
    if box[1] is not None:
        raise box[1]
    return box[0]


def ranks_where(flag: bool) -> List[int]:
    """The ranks whose ``flag`` is true, known to every rank (one
    all-reduce of a world-size vector)."""
    flags = torch.zeros(get_world_size())
    flags[get_rank()] = float(bool(flag))
    all_reduce(flags)  # sum
    return [rank for rank, value in enumerate(flags.tolist()) if value > 0]

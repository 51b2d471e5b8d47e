"""Where the CUDA tests run, and why they skip.

The tests in this folder are marked ``cuda`` (``pytest -m cuda``) and run on
``torch.device('cuda')``. Without CUDA (``torch.cuda.is_available()`` is
False), or with an MMCV built without its CUDA ops, they are collected and
skipped with the reason.

Dry run of the bodies on CPU: ``MMPETL_CUDA_TESTS_DEVICE=cpu`` runs every
test here on ``'cpu'`` instead (autocast on CPU, MMCV's CUDA op replaced by
mmpetl's op as everywhere off CUDA), so that a GPU machine does not spend
its few minutes on a typo. It proves the code paths, not CUDA: the tests
that compare MMCV's CUDA kernel with mmpetl's op skip in that mode. Any
other value than ``cpu`` or ``cuda`` is an error.
"""
import os

import pytest
import torch

ENV = 'MMPETL_CUDA_TESTS_DEVICE'


def cuda_test_device() -> str:
    """``'cuda'``, or ``'cpu'`` for the dry run (:data:`ENV`)."""
    value = os.environ.get(ENV, 'cuda').strip().lower()
    if value not in ('cuda', 'cpu'):
        raise ValueError(
            f'{ENV}={os.environ[ENV]!r}: use {ENV}=cpu to dry-run the CUDA '
            f'tests on CPU, or unset it to run them on CUDA.')
    return value


DEVICE = cuda_test_device()
DRY_RUN = DEVICE == 'cpu'


def mmcv_cuda_ops_problem():
    """Why MMCV's CUDA ops cannot run here (a sentence), or None. Probed
    with one deformable-attention kernel call on CUDA, not with
    ``mmcv.ops.get_compiling_cuda_version()``, which segfaulted in the GPU
    machine's C++20 build of MMCV 2.1.0 (2026-12-04)."""
    try:
        from mmcv.ops.multi_scale_deform_attn import ext_module
    except Exception as err:  # an unbuilt or broken extension
        return (f'mmcv.ops does not load ({type(err).__name__}: '
                f'{str(err)[:120]})')
    if not hasattr(ext_module, 'ms_deform_attn_forward'):
        return "mmcv's extension has no ms_deform_attn_forward"
    try:
        value = torch.rand(1, 6, 1, 2, device='cuda')
        shapes = torch.tensor([[2, 3]], device='cuda')
        ext_module.ms_deform_attn_forward(
            value, shapes, torch.tensor([0], device='cuda'),
            torch.rand(1, 1, 1, 1, 1, 2, device='cuda'),
            torch.ones(1, 1, 1, 1, 1, device='cuda'), im2col_step=64)
    except Exception as err:
        return (f'mmcv was built without CUDA ops ({type(err).__name__}: '
                f'{str(err)[:80]}): build it with MMCV_WITH_OPS=1 '
                f'FORCE_CUDA=1 (tools/gpu/device_run.sh does)')
    return None


def skip_reason():
    """Why the CUDA tests skip on this machine, or None."""
    if DRY_RUN:
        return None
    if not torch.cuda.is_available():
        return (f'CUDA is not available (torch.cuda.is_available() is '
                f'False): run on a GPU machine (tools/gpu/device_run.sh); '
                f'{ENV}=cpu dry-runs the bodies on CPU')
    problem = mmcv_cuda_ops_problem()
    return problem


_REASON = skip_reason()
#: the module-level marks of every test file here
CUDA_MARKS = [pytest.mark.cuda,
              pytest.mark.skipif(_REASON is not None, reason=str(_REASON))]
#: for tests that compare with MMCV's CUDA kernel (no CPU counterpart)
needs_cuda_kernel = pytest.mark.skipif(
    DRY_RUN, reason=f"{ENV}=cpu: MMCV's CUDA kernel has no CPU counterpart; "
    f'this comparison runs on a GPU machine only')


def deterministic_cudnn(monkeypatch) -> None:
    """Fixed cuDNN algorithms for bit-identity checks on CUDA (the choice
    by benchmarking may differ between two models of the same weights)."""
    monkeypatch.setattr(torch.backends.cudnn, 'deterministic', True)
    monkeypatch.setattr(torch.backends.cudnn, 'benchmark', False)


def device_batch(num_images: int = 2, seed: int = 0):
    """tests/conftest.py's fixed detection batch on :data:`DEVICE`."""
    from tests.conftest import det_batch
    inputs, samples = det_batch(num_images, seed=seed)
    return inputs.to(DEVICE), [s.to(DEVICE) for s in samples]


def flat_tensors(out) -> list:
    """The tensors of a ``mode='tensor'`` output (nested tuples/lists)."""
    if isinstance(out, torch.Tensor):
        return [out]
    flat = []
    for item in out:
        flat += flat_tensors(item) if isinstance(item, (list, tuple)) else \
            [item] if isinstance(item, torch.Tensor) else []
    return flat

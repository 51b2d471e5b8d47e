"""Deformable attention runs in fp32 under autocast (the --amp path)."""
import torch
from mmcv.ops import MultiScaleDeformableAttention
from mmcv.ops import multi_scale_deform_attn as msda_module

from mmpetl.ops import FP32MSDAFunction, msda_backend
from tests.test_tuners.test_deformable_prefix import msda_inputs


def test_patch_is_installed_by_apply_patches():
    import mmpetl
    mmpetl.apply_patches(['msda_fp32'])  # conftest did; idempotent
    assert msda_module.MultiScaleDeformableAttnFunction is FP32MSDAFunction
    assert hasattr(msda_module.multi_scale_deformable_attn_pytorch,
                   'original')


def test_bf16_autocast_matches_fp32():
    msda = MultiScaleDeformableAttention(embed_dims=32, num_heads=4,
                                         num_levels=2, num_points=2,
                                         batch_first=True).eval()
    kwargs = msda_inputs()
    expected = msda(**kwargs)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        got = msda(**kwargs)
    # only the projections around the op run in bf16
    torch.testing.assert_close(got.float(), expected, atol=5e-2, rtol=5e-2)


def test_cuda_op_wrapper_feeds_fp32_with_autocast_off(monkeypatch):
    seen = {}

    class Recorder:

        @staticmethod
        def apply(value, shapes, start, loc, weights, step):
            seen['dtypes'] = (value.dtype, loc.dtype, weights.dtype)
            seen['autocast'] = torch.is_autocast_enabled('cpu')
            return value.flatten(2)

    monkeypatch.setattr(FP32MSDAFunction, 'original', Recorder)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        FP32MSDAFunction.apply(
            torch.randn(1, 4, 2, 8).bfloat16(), torch.tensor([[2, 2]]),
            torch.tensor([0]), torch.rand(1, 3, 2, 1, 2, 2).bfloat16(),
            torch.rand(1, 3, 2, 1, 2).bfloat16(), 64)
    assert seen['dtypes'] == (torch.float32, ) * 3
    assert seen['autocast'] is False


def test_backend_names_the_path():
    assert 'PyTorch fallback' in msda_backend(torch.device('cpu'))

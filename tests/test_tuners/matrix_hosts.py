"""Tiny hosts for the property matrix (``test_property_matrix.py``).

Every host type mmpetl's tuners attach to, built small (width 16, 2 heads,
a batch of 4 samples, a few tokens) from fixed seeds, inside a holder
``model.layer.attn`` (``layer`` is what activation checkpointing wraps:
hooks of the checkpointed module itself would run outside the
checkpoint). Each host comes with its call and the batch dimension of its
output.

This file imports no mmpetl module: the bf16 check runs
:func:`plain_bf16_outputs` in a Python without mmpetl to learn what the
plain libraries compute.
"""
from typing import Callable, Dict, NamedTuple

import pytest
import torch
import torch.nn as nn

D, HEADS, BATCH = 16, 2, 4   # width, heads, samples
TOKENS, KEYS = 5, 7           # queries, keys of cross-attention
WINDOW, SIDE = 4, 8           # Swin: 4x4 windows on an 8x8 map (shifted)
SHAPES = [[4, 4], [2, 2]]     # MSDA levels (20 values)


class Host(NamedTuple):
    """A host type of the matrix.

    Attributes:
        build: ``() -> module``, the host (weights from a fixed seed).
        inputs: ``(generator) -> dict`` of the call's tensors.
        call: ``(host, inputs) -> output`` tensor.
        out_dim: batch dimension of the output.
    """
    build: Callable[[], nn.Module]
    inputs: Callable[[torch.Generator], Dict[str, torch.Tensor]]
    call: Callable[[nn.Module, Dict], torch.Tensor]
    out_dim: int = 0


def _randn(gen, *shape):
    return torch.randn(*shape, generator=gen)


def _nonzero_biases(module: nn.Module, gen: torch.Generator) -> nn.Module:
    """Biases away from their zero init: a merge or a bias mix-up shows."""
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name.endswith('bias') or 'bias_table' in name:
                param.copy_(_randn(gen, *param.shape) * 0.5)
    return module


def _seeded(make: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    def build():
        torch.manual_seed(0)
        return _nonzero_biases(make(), torch.Generator().manual_seed(1))
    return build


def _pad(gen, keys=TOKENS):
    pad = torch.zeros(BATCH, keys, dtype=torch.bool)
    pad[1, -2:] = True
    return pad


# -- the hosts ----------------------------------------------------------------
def _torch_mha():
    return nn.MultiheadAttention(D, HEADS)  # DETR's layout: (L, B, d)


def _torch_mha_inputs(gen):
    return dict(x=_randn(gen, TOKENS, BATCH, D), pad=_pad(gen))


def _torch_mha_call(host, t):
    return host(t['x'], t['x'], t['x'], key_padding_mask=t['pad'])[0]


def _mmcv_mha():
    from mmcv.cnn.bricks.transformer import MultiheadAttention
    return MultiheadAttention(D, HEADS, batch_first=True)


def _query_inputs(gen):
    return dict(x=_randn(gen, BATCH, TOKENS, D),
                pos=_randn(gen, BATCH, TOKENS, D), pad=_pad(gen))


def _mmcv_mha_call(host, t):
    return host(t['x'], query_pos=t['pos'], key_padding_mask=t['pad'])


def _conditional(cross):
    def make():
        from mmdet.models.layers.transformer.utils import \
            ConditionalAttention
        return ConditionalAttention(D, HEADS, cross_attn=cross)
    return make


def _cond_self_call(host, t):
    return host(t['x'], t['x'], query_pos=t['pos'], key_pos=t['pos'])


def _cond_cross_inputs(gen):
    out = _query_inputs(gen)
    out.update(mem=_randn(gen, BATCH, KEYS, D),
               key_pos=_randn(gen, BATCH, KEYS, D),
               sine=_randn(gen, BATCH, TOKENS, D), pad=_pad(gen, KEYS))
    return out


def _cond_cross_call(host, t):
    return host(t['x'], t['mem'], query_pos=t['pos'],
                ref_sine_embed=t['sine'], key_pos=t['key_pos'],
                key_padding_mask=t['pad'], is_first=True)


def _msda():
    from mmcv.ops import MultiScaleDeformableAttention
    return MultiScaleDeformableAttention(D, HEADS, num_levels=2,
                                         num_points=2, batch_first=True)


def _msda_inputs(gen):
    values = sum(h * w for h, w in SHAPES)
    return dict(x=_randn(gen, BATCH, TOKENS, D),
                pos=_randn(gen, BATCH, TOKENS, D),
                value=_randn(gen, BATCH, values, D),
                ref=torch.rand(BATCH, TOKENS, 2, 2, generator=gen),
                shapes=torch.tensor(SHAPES),
                start=torch.tensor([0, SHAPES[0][0] * SHAPES[0][1]]))


def _msda_call(host, t):
    return host(t['x'], value=t['value'], query_pos=t['pos'],
                reference_points=t['ref'], spatial_shapes=t['shapes'],
                level_start_index=t['start'])


def _vit_attn():
    from mmpretrain.models.utils.attention import MultiheadAttention
    return MultiheadAttention(D, HEADS)


def _tokens(gen):
    return dict(x=_randn(gen, BATCH, TOKENS, D))


def _swin():
    from mmdet.models.backbones.swin import ShiftWindowMSA
    return ShiftWindowMSA(D, HEADS, WINDOW, shift_size=WINDOW // 2)


def _swin_inputs(gen):
    return dict(x=_randn(gen, BATCH, SIDE * SIDE, D))


def _ffn():
    from mmcv.cnn.bricks.transformer import FFN
    return FFN(embed_dims=D, feedforward_channels=2 * D)


def _vit():
    from mmpretrain.models import VisionTransformer
    return VisionTransformer(
        arch=dict(embed_dims=D, num_layers=2, num_heads=HEADS,
                  feedforward_channels=2 * D), img_size=16, patch_size=8,
        out_type='cls_token', drop_rate=0.0)


def _images(gen):
    return dict(x=_randn(gen, BATCH, 3, 16, 16))


HOSTS: Dict[str, Host] = {
    'torch_mha': Host(_seeded(_torch_mha), _torch_mha_inputs,
                      _torch_mha_call, out_dim=1),
    'mmcv_mha': Host(_seeded(_mmcv_mha), _query_inputs, _mmcv_mha_call),
    'cond_self': Host(_seeded(_conditional(False)), _query_inputs,
                      _cond_self_call),
    'cond_cross': Host(_seeded(_conditional(True)), _cond_cross_inputs,
                       _cond_cross_call),
    'msda': Host(_seeded(_msda), _msda_inputs, _msda_call),
    'vit_attn': Host(_seeded(_vit_attn), _tokens,
                     lambda host, t: host(t['x'])),
    'swin': Host(_seeded(_swin), _swin_inputs,
                 lambda host, t: host(t['x'], (SIDE, SIDE))),
    'ffn': Host(_seeded(_ffn), _tokens, lambda host, t: host(t['x'])),
    'vit': Host(_seeded(_vit), _images, lambda host, t: host(t['x'])[0]),
}


class Layer(nn.Module):
    """``attn``: the host; ``forward(inputs)`` calls it."""

    def __init__(self, host: nn.Module, call: Callable) -> None:
        super().__init__()
        self.attn = host
        self._call = call

    def forward(self, inputs: Dict) -> torch.Tensor:
        return self._call(self.attn, inputs)


class Holder(nn.Module):
    """``layer.attn`` is the host; tuners are found structurally, as
    ``PETLModel.tuner_modules`` finds them."""

    def __init__(self, host: nn.Module, call: Callable) -> None:
        super().__init__()
        self.layer = Layer(host, call)

    def forward(self, inputs: Dict) -> torch.Tensor:
        return self.layer(inputs)

    def tuner_modules(self):
        from mmpetl.tuners import BaseTuner
        return [(n, m) for n, m in self.named_modules()
                if isinstance(m, BaseTuner)]

    def tuner_state_dict(self) -> Dict[str, torch.Tensor]:
        """The tuners' tensors (what a PETLModel's tuner checkpoint holds
        when only tuners train)."""
        prefixes = tuple(n + '.' for n, _ in self.tuner_modules())
        return {k: v for k, v in self.state_dict().items()
                if k.startswith(prefixes)}


def host_inputs(name: str, dtype=None, seed: int = 2) -> Dict:
    """The call's tensors for host ``name`` (floats cast to ``dtype``)."""
    inputs = HOSTS[name].inputs(torch.Generator().manual_seed(seed))
    if dtype is not None:
        inputs = {k: v.to(dtype) if v.is_floating_point() else v
                  for k, v in inputs.items()}
    return inputs


@torch.no_grad()
def move_off_init(model: nn.Module, seed: int) -> None:
    """Every tuner tensor of ``model`` (its ``tuner_modules()``: a
    ``PETLModel`` or a :class:`Holder`) to a new random value: 0-d tensors
    (scales) in [0.5, 1], the others ``N(0, 0.2^2)`` (LoRA ``B``, ``P_v``,
    adapter ``up``, prompts...); asserts that each one changed."""
    gen = torch.Generator().manual_seed(seed)
    for name, tuner in model.tuner_modules():
        # all of them, not only the state dict's: one left out of it
        # would then differ between a model and its saved copy
        tensors = dict(tuner.named_parameters())
        tensors.update(tuner.named_buffers())
        for key, tensor in tensors.items():
            before = tensor.detach().clone()
            if tensor.dim() == 0:
                tensor.fill_(0.5 + 0.5 * torch.rand((), generator=gen))
            else:
                tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.2)
            assert not torch.equal(before, tensor), f'{name}.{key}'


def plain_bf16_outputs() -> Dict[str, object]:
    """Each host (no tuner) in bfloat16, without autocast: its output, or
    the error it raises (``'ErrorType: message'``)."""
    torch.set_num_threads(1)
    out = {}
    for name, host in HOSTS.items():
        module = host.build().to(torch.bfloat16)
        module.eval()  # some hosts' train() returns None
        try:
            with torch.no_grad():
                out[name] = host.call(module, host_inputs(name,
                                                          torch.bfloat16))
        except Exception as error:  # recorded, compared by the test
            out[name] = f'{type(error).__name__}: {error}'
    return out


def _without_mmpretrain_multimodal() -> None:
    """What a user without mmpetl needs for ``import mmdet.models`` next
    to a recent ``transformers``: MMPretrain's multimodal models off
    (mmpetl's ``guard_mmpretrain_multimodal`` does the same)."""
    import importlib.util
    import sys
    spec = importlib.util.find_spec('mmpretrain')
    path = f'{spec.submodule_search_locations[0]}/utils/dependency.py'
    dep_spec = importlib.util.spec_from_file_location(
        'mmpretrain.utils.dependency', path)
    module = importlib.util.module_from_spec(dep_spec)
    dep_spec.loader.exec_module(module)
    module.WITH_MULTIMODAL = False
    sys.modules['mmpretrain.utils.dependency'] = module


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    """Bit-identity checks run on one thread (restored after the module);
    a test module imports it to use it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


if __name__ == '__main__':  # python -m tests.test_tuners.matrix_hosts OUT
    import sys
    _without_mmpretrain_multimodal()
    results = plain_bf16_outputs()
    assert not any(m == 'mmpetl' or m.startswith('mmpetl.')
                   for m in sys.modules), 'mmpetl was imported'
    torch.save(results, sys.argv[1])


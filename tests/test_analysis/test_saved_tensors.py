"""saved_tensors_by_module: what autograd keeps for backward, and where.

Exact on toy modules (known shapes); on the small Deformable DETR it shows
the frozen path at its floor: with the backbone and neck frozen and
nothing trainable before the encoder, none of their activations is kept.
"""
import copy
from collections import OrderedDict

import pytest
import torch
import torch.nn as nn

from mmpetl.analysis.saved_tensors import (OUTSIDE, TUNERS,
                                           saved_tensors_by_module)
from mmpetl.models import PETLModel, apply_activation_checkpointing
from tests.conftest import det_batch, small_deformable_cfg

KIB = 2**10 / 2**20  # MiB
ETTA = [dict(type='ParallelAdapter', presets=['ffn'], bottleneck=8),
        dict(type='ScaledPrefix', presets=['attn'], num_prefix=4)]


def toy():
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(
        a=nn.Linear(64, 64), b=nn.ReLU(), c=nn.Linear(64, 64),
        d=nn.Sigmoid()))
    model.a.requires_grad_(False)
    return model


def test_toy_counts_each_saved_storage_once_where_it_was_saved():
    model, x = toy(), torch.randn(128, 64)  # one activation: 32 KiB
    report = saved_tensors_by_module(model, lambda: model(x))
    # a and b: no input needs a gradient, nothing saved; c keeps its input
    # for its weight's gradient, d its output; weights are not counted
    assert report['by_module'] == pytest.approx(dict(c=32 * KIB,
                                                     d=32 * KIB))
    assert report['total_mib'] == pytest.approx(64 * KIB)
    assert report['count_by_module'] == dict(c=1, d=1)
    assert report['checkpoint_inputs_mib'] == 0
    # x * x saves x twice: one storage, counted once, outside any module
    y = torch.randn(128, 64, requires_grad=True)
    twice = saved_tensors_by_module(model, lambda: (y * y).sum())
    assert twice['by_module'] == pytest.approx({OUTSIDE: 32 * KIB})


def test_toy_checkpoint_inputs_are_counted_where_the_checkpoint_runs():
    model, x = toy(), torch.randn(128, 64)
    apply_activation_checkpointing(model, ['c'])
    report = saved_tensors_by_module(model, lambda: model(x))
    # inside the checkpoint nothing is saved; the checkpoint holds c's
    # input (b's output) instead
    assert report['checkpoint_inputs_mib'] == pytest.approx(32 * KIB)
    assert report['by_module'] == pytest.approx(dict(c=32 * KIB,
                                                     d=32 * KIB))


@pytest.fixture(scope='module')
def etta():
    torch.manual_seed(0)
    return PETLModel(model=small_deformable_cfg(), tuners=ETTA,
                     trainable=['bbox_head']).train()


def saved(model):
    inputs, samples = det_batch()
    return saved_tensors_by_module(
        model, lambda: model(inputs, samples, mode='loss'))


def test_frozen_backbone_and_neck_keep_no_activation(etta):
    """Nothing trains before the first tuner (encoder layer 0): autograd
    keeps nothing of the backbone, the neck or the positional encodings."""
    report = saved(etta)
    by = report['by_module']
    assert 'backbone' not in by and 'neck' not in by
    assert not any(k.startswith(('backbone', 'neck', 'positional'))
                   for k in report['by_layer'])
    assert by['encoder'] > 0 and by['decoder'] > 0 and by[TUNERS] > 0
    assert report['by_layer']['encoder.layers.1'] > 0


def test_a_trainable_backbone_part_keeps_backbone_activations(etta):
    """The control: once something in the backbone trains, the helper
    finds the backbone's and the neck's saved activations."""
    model = copy.deepcopy(etta)
    model.backbone.layer3[0].downsample[0].weight.requires_grad_(True)
    by = saved(model)['by_module']
    assert by['backbone'] > 0 and by['neck'] > 0


def checkpointed(etta, keep):
    model = copy.deepcopy(etta)
    apply_activation_checkpointing(model.inner, dict(
        layers=['encoder_layers', 'decoder_layers'], keep=keep))
    return model


def test_checkpointing_keeps_the_layer_inputs_only(etta):
    without = saved(etta)
    with_ckpt = saved(checkpointed(etta, keep=[]))
    held = with_ckpt['checkpoint_inputs_mib']
    assert held > 0
    for part in ('encoder', 'decoder'):
        assert with_ckpt['by_module'][part] < without['by_module'][part] / 4
    assert TUNERS not in with_ckpt['by_module']  # recomputed with layers
    assert with_ckpt['total_mib'] < without['total_mib'] / 4
    # the heads are not checkpointed: they keep the same
    assert with_ckpt['by_module']['bbox_head'] == pytest.approx(
        without['by_module']['bbox_head'])


def test_what_checkpointed_layers_keep_is_counted_with_them(
        etta, monkeypatch):
    """Default keep: the dropout masks (bool) and the deformable attention
    outputs count with the layers that keep them, as held by the
    checkpoint."""
    from mmpetl.ops.replay import ReplayRecord
    nothing = saved(checkpointed(etta, keep=[]))
    kept = {}
    tensors = ReplayRecord.tensors

    def spy(record):
        out = tensors(record)
        kept.update({t.untyped_storage().data_ptr():
                     (t.dtype, t.untyped_storage().nbytes()) for t in out})
        return out

    monkeypatch.setattr(ReplayRecord, 'tensors', spy)
    report = saved(checkpointed(etta, keep=['dropout_masks',
                                            'ms_deform_attn']))
    dtypes = {dtype for dtype, _ in kept.values()}
    assert {torch.bool, torch.float32} <= dtypes  # masks, attention outputs
    extra = sum(nbytes for _, nbytes in kept.values()) / 2**20
    assert report['checkpoint_inputs_mib'] - nothing[
        'checkpoint_inputs_mib'] == pytest.approx(extra)
    assert report['total_mib'] - nothing['total_mib'] == pytest.approx(extra)
    for part in ('encoder', 'decoder'):
        assert report['by_module'][part] > nothing['by_module'][part]

"""Every bad config stops with an error naming the problem and the fix."""
import pytest

from mmpetl.models import PETLModel
from tests.conftest import small_detr_cfg


def build(tuners, trainable=()):
    return PETLModel(model=small_detr_cfg(), tuners=tuners,
                     trainable=list(trainable))


@pytest.mark.parametrize('tuners,error,pattern', [
    ([dict(type='ParalelAdapter', presets=['ffn'])], KeyError,
     r'unknown tuner type `ParalelAdapter`.*ParallelAdapter'),
    ([dict(type='ParallelAdapter', targets=['fnn'])], ValueError,
     r'no module matched.*Nearest module names:.*ffn'),
    ([dict(type='ParallelAdapter', targets=r'encoder\.layer\.\d+\.ffn')],
     ValueError, r'no module matched.*encoder\.layers'),
    ([dict(type='ParallelAdapter', presets=['ffn'], bottleneck=0)],
     ValueError, r'`bottleneck` must be a positive int, got 0'),
    ([dict(type='ParallelAdapter', presets=['ffn'], bottleneck=-4)],
     ValueError, r'`bottleneck` must be a positive int'),
    ([dict(type='ParallelAdapter', presets=['ffn'], bottleneck=2.5)],
     ValueError, r'`bottleneck` must be a positive int'),
    ([dict(type='ScaledPrefix', presets=['attn'], num_prefix=0)],
     ValueError, r'`num_prefix` must be a positive int'),
    ([dict(type='LoRA', presets=['attn'], rank=-1)], ValueError,
     r'`rank` must be a positive int'),
    ([dict(type='ParallelAdapter', presets=['ffn'], bottlenek=8)], TypeError,
     r"unknown argument\(s\) \['bottlenek'\].*bottleneck"),
    ([dict(type='ParallelAdapter', presets=['fnn'])], ValueError,
     r"unknown preset\(s\) \['fnn'\].*available"),
    ([dict(type='ParallelAdapter')], ValueError, r'say where it goes'),
    ([dict(presets=['ffn'])], KeyError, r'has no `type`'),
    # a tuner on a module type it does not support
    ([dict(type='ParallelAdapter', presets=['attn'])], TypeError,
     r'ParallelAdapter cannot tune `encoder.layers.0.self_attn`'),
    ([dict(type='ScaledPrefix', presets=['ffn'])], TypeError,
     r'ScaledPrefix cannot tune `encoder.layers.0.ffn`.*attention'),
])
def test_bad_tuner_config(tuners, error, pattern):
    with pytest.raises(error, match=pattern):
        build(tuners)


def test_trainable_pattern_matching_nothing():
    with pytest.raises(ValueError,
                       match=r"trainable pattern 'bbox_haed'.*bbox_head"):
        build([dict(type='ParallelAdapter', presets=['ffn'])],
              trainable=['bbox_haed'])


def test_nothing_trainable():
    with pytest.raises(ValueError, match='no trainable parameter'):
        build([])


def test_overlapping_targets_are_refused():
    with pytest.raises(TypeError, match='already has an attribute `adapter`'):
        build([dict(type='ParallelAdapter', presets=['ffn']),
               dict(type='ParallelAdapter', targets=['0.ffn'])])


def test_unknown_inner_model_type():
    cfg = small_detr_cfg()
    cfg['type'] = 'DETRR'
    with pytest.raises(KeyError, match='DETRR'):
        PETLModel(model=cfg, tuners=[dict(type='ParallelAdapter',
                                          presets=['ffn'])])

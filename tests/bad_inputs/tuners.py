"""Tuner config mistakes, raised when the ``PETLModel`` is built (and
``init='activations'`` when the tuner init hook runs)."""
from types import SimpleNamespace

from .common import Case, build_petl


def _tuner_case(name, bad_input, tuners, error, match, trainable=(),
                **kwargs):
    return Case(name, 'tuner config', bad_input,
                lambda tmp: build_petl(tuners, trainable, **kwargs), error,
                match)


def _unknown_model_type(tmp):
    from tests.conftest import small_detr_cfg
    cfg = small_detr_cfg()
    cfg['type'] = 'DETRR'
    build_petl([dict(type='ParallelAdapter', presets=['ffn'])], model=cfg)


def _small_deformable():
    from tests.conftest import small_deformable_cfg
    return small_deformable_cfg()


def _activations_without_data(tmp):
    from mmpetl.engine.hooks import TunerInitHook
    model = build_petl([dict(type='ScaledPrefix', presets=['attn'],
                             init='activations')])
    TunerInitHook().before_train(SimpleNamespace(model=model,
                                                 _train_dataloader=None))


FFN = [dict(type='ParallelAdapter', presets=['ffn'])]
TUNER_CASES = [
    _tuner_case('unknown-tuner', 'tuner type with a typo (`ParalelAdapter`)',
                [dict(type='ParalelAdapter', presets=['ffn'])], KeyError,
                r'unknown tuner type `ParalelAdapter`.*ParallelAdapter'),
    _tuner_case('tuner-no-type', 'tuner dict without `type`',
                [dict(presets=['ffn'])], KeyError, r'has no `type`'),
    _tuner_case('target-typo', 'target name with a typo (`fnn`)',
                [dict(type='ParallelAdapter', targets=['fnn'])], ValueError,
                r'no module matched.*Nearest module names:.*ffn'),
    _tuner_case('target-regex-nothing',
                'target regex matching nothing (`encoder.layer.N`, the '
                'modules are `encoder.layers.N`)',
                [dict(type='ParallelAdapter',
                      targets=r'encoder\.layer\.\d+\.ffn')],
                ValueError, r'no module matched.*encoder\.layers'),
    _tuner_case('preset-typo', 'unknown preset (`fnn`)',
                [dict(type='ParallelAdapter', presets=['fnn'])], ValueError,
                r"unknown preset\(s\) \['fnn'\].*available"),
    _tuner_case('no-target', 'tuner with neither `targets` nor `presets`',
                [dict(type='ParallelAdapter')], ValueError,
                r'say where it goes'),
    _tuner_case('argument-typo', 'tuner argument with a typo (`bottlenek`)',
                [dict(type='ParallelAdapter', presets=['ffn'], bottlenek=8)],
                TypeError, r"unknown argument\(s\) \['bottlenek'\].*"
                r'bottleneck'),
    _tuner_case('bottleneck-zero', '`bottleneck=0`',
                [dict(type='ParallelAdapter', presets=['ffn'],
                      bottleneck=0)],
                ValueError, r'`bottleneck` must be a positive int, got 0'),
    _tuner_case('bottleneck-negative', '`bottleneck=-4`',
                [dict(type='ParallelAdapter', presets=['ffn'],
                      bottleneck=-4)],
                ValueError, r'`bottleneck` must be a positive int'),
    _tuner_case('bottleneck-float', '`bottleneck=2.5` (not an int)',
                [dict(type='ParallelAdapter', presets=['ffn'],
                      bottleneck=2.5)],
                ValueError, r'`bottleneck` must be a positive int'),
    _tuner_case('prefix-zero', '`num_prefix=0`',
                [dict(type='ScaledPrefix', presets=['attn'], num_prefix=0)],
                ValueError, r'`num_prefix` must be a positive int'),
    _tuner_case('prefix-form-typo', 'unknown prefix form (`paralel`)',
                [dict(type='ScaledPrefix', presets=['attn'],
                      form='paralel')], ValueError,
                r"ScaledPrefix on torch.nn.modules.activation."
                r"MultiheadAttention: unknown form='paralel'; valid forms: "
                r"\['joint', 'parallel', 'reweight', 'reweight\+parallel'\]"),
    _tuner_case('prefix-init-typo', 'unknown prefix init (`activation`)',
                [dict(type='ScaledPrefix', presets=['attn'],
                      init='activation')], ValueError,
                r"ScaledPrefix on .*MultiheadAttention: unknown "
                r"init='activation'; valid inits: \['random', 'scaled', "
                r"'activations', 'balanced'\]"),
    Case('prefix-form-host', 'tuner config',
         "the joint prefix form on deformable attention (`form='joint'`, "
         "preset `attn` of Deformable DETR)",
         lambda tmp: build_petl([dict(type='ScaledPrefix',
                                      presets=['attn'], form='joint')],
                                model=_small_deformable()),
         TypeError, r"prefix form='joint' does not apply to .*"
         r"MultiScaleDeformableAttention.*valid forms there: "
         r"\['parallel'"),
    Case('activations-no-data', 'tuner config',
         "`init='activations'` in a run without a train dataloader",
         _activations_without_data, ValueError,
         r"init='activations' \(6 prefix tuners, first .*\) needs training "
         r"batches.*no train_dataloader.*init='scaled'"),
    _tuner_case('rank-negative', 'LoRA `rank=-1`',
                [dict(type='LoRA', presets=['attn'], rank=-1)], ValueError,
                r'`rank` must be a positive int'),
    _tuner_case('lora-on-torch-out-proj',
                "LoRA on torch MultiheadAttention's `out_proj` alone "
                "(`targets=['encoder.layers.0.self_attn.attn.out_proj']`)",
                [dict(type='LoRA',
                      targets=['encoder.layers.0.self_attn.attn.out_proj'])],
                TypeError, r'LoRA cannot tune `encoder\.layers\.0\.self_attn'
                r'\.attn\.out_proj` alone.*fused forward never calls it.*'
                r'Point LoRA at the attention `encoder\.layers\.0\.'
                r'self_attn\.attn`'),
    _tuner_case('adapter-on-attention',
                'an FFN adapter put on attention modules',
                [dict(type='ParallelAdapter', presets=['attn'])], TypeError,
                r'ParallelAdapter cannot tune `encoder.layers.0.self_attn`'),
    _tuner_case('prefix-on-ffn', 'a prefix tuner put on FFN modules',
                [dict(type='ScaledPrefix', presets=['ffn'])], TypeError,
                r'ScaledPrefix cannot tune `encoder.layers.0.ffn`.*'
                r'it tunes attention: .*MultiheadAttention.*mmdet '
                r'ConditionalAttention.*Swin ShiftWindowMSA/WindowMSA'),
    _tuner_case('preset-matches-nothing',
                'a preset the model does not have (`backbone_ffn` on DETR '
                'R50: its ResNet has no FFN)',
                [dict(type='ParallelAdapter', presets=['backbone_ffn'])],
                ValueError, r"preset 'backbone_ffn' matches no module of "
                r"this DETR.*Presets that match here: \[.*'ffn'.*\]: drop "
                r"'backbone_ffn'.*Its attention types: "
                r'mmcv.MultiheadAttention \(encoder.layers.N.self_attn.*'
                r'Its FFN types: mmcv.FFN '),
    _tuner_case('preset-one-matches-nothing',
                'two presets, one of which matches nothing '
                "(`['backbone_attn', 'attn']` on DETR R50)",
                [dict(type='ScaledPrefix', presets=['backbone_attn',
                                                    'attn'])],
                ValueError, r"preset 'backbone_attn' matches no module"),
    _tuner_case('lora-on-norm', 'LoRA pointed at a LayerNorm',
                [dict(type='LoRA', targets=['encoder.layers.0.norms.0'])],
                TypeError, r'LoRA cannot tune `encoder.layers.0.norms.0` '
                r'of type LayerNorm; it tunes nn.Linear, .*mmdet '
                r'ConditionalAttention and mmdet Swin ShiftWindowMSA'),
    _tuner_case('overlapping-targets',
                'two adapters on the same module',
                FFN + [dict(type='ParallelAdapter', targets=['0.ffn'])],
                TypeError, r'already has an attribute `adapter`'),
    _tuner_case('trainable-typo',
                'trainable pattern matching nothing (`bbox_haed`)', FFN,
                ValueError, r"trainable name .*'bbox_haed'.*bbox_head",
                trainable=['bbox_haed']),
    _tuner_case('nothing-trainable', 'no tuners and no trainable parts', [],
                ValueError, r'no trainable parameter'),
    Case('unknown-model-type', 'tuner config',
         'inner detector type with a typo (`DETRR`)', _unknown_model_type,
         KeyError, r'DETRR'),
    _tuner_case('checkpointing-preset-typo',
                'activation checkpointing preset with a typo '
                '(`encoder_layer`)', FFN, ValueError,
                r"'encoder_layer' is no preset.*Did you mean the preset "
                r"\['encoder_layers'\]", activation_checkpointing=[
                    'encoder_layer', 'decoder_layers']),
    _tuner_case('checkpointing-name-nothing',
                'activation checkpointing of a layer that does not exist '
                '(`encoder.layers.6` in a 2-layer encoder)', FFN, ValueError,
                r"'encoder\.layers\.6' is no preset and matches no module.*"
                r"nearest module names: \['encoder\.layers\.",
                activation_checkpointing=['encoder.layers.6']),
    _tuner_case('checkpointing-keep-typo',
                'activation checkpointing asked to keep something it cannot '
                "(`keep=['dropout']`)", FFN, ValueError,
                r"\['dropout'\] is nothing mmpetl can keep; choose from "
                r"\['ms_deform_attn', 'dropout_masks'\]",
                activation_checkpointing=dict(layers=['encoder_layers'],
                                              keep=['dropout'])),
]

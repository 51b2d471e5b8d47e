"""Every bad input we know of, what triggers it, and the error it must give.

One list, two users:

* ``tests/test_bad_inputs.py`` runs each case and checks the exception
  type and message, and that ``docs/bad_inputs.md`` shows that message;
* ``tools/misc/bad_input_table.py`` runs each case and writes
  ``docs/bad_inputs.md`` (bad input | what the user sees).

A case's ``trigger(tmp)`` gets an empty temporary folder and must raise.
Messages are shown with that folder as ``$TMP`` and sha256 prefixes as
``<sha>`` so the table does not change from run to run.
"""
import copy
import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, List, Pattern, Tuple, Type, Union

import torch

from mmpetl.engine.hooks.frozen_check_hook import (FrozenParamsChanged,
                                                   NonFiniteWeightsError)
from mmpetl.engine.hooks.non_finite_loss_hook import NonFiniteLossError
from mmpetl.apis import ImageReadError, RoutingError, TaskError
from mmpetl.checkpoints import (BaseMismatchError, ShapeMismatchError,
                                UnpinnedTunerError)
from mmpetl.utils import CheckpointError
from mmpetl.utils.config_check import ConfigError

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / 'docs' / 'bad_inputs.md'
DEMO_ET = ROOT / 'configs/demo/et-deformable-detr_mnv2_demo-target.py'
COCO_DETR = ROOT / 'configs/et-detr_r50_8xb2-150e_coco.py'


@dataclass
class Case:
    name: str  # short id (pytest id, table anchor)
    area: str
    bad_input: str  # what the user did
    trigger: Callable[[Path], None]
    error: Type[BaseException]
    match: Union[str, Pattern]


# --------------------------------------------------------------- tuners
def _build(tuners, trainable=(), model=None, **kwargs):
    from mmpetl.models import PETLModel
    from tests.conftest import small_detr_cfg
    return PETLModel(model=model or small_detr_cfg(), tuners=tuners,
                     trainable=list(trainable), **kwargs)


def _tuner_case(name, bad_input, tuners, error, match, trainable=(),
                **kwargs):
    return Case(name, 'tuner config', bad_input,
                lambda tmp: _build(tuners, trainable, **kwargs), error,
                match)


def _unknown_model_type(tmp):
    from tests.conftest import small_detr_cfg
    cfg = small_detr_cfg()
    cfg['type'] = 'DETRR'
    _build([dict(type='ParallelAdapter', presets=['ffn'])], model=cfg)


def _small_deformable():
    from tests.conftest import small_deformable_cfg
    return small_deformable_cfg()


def _activations_without_data(tmp):
    from mmpetl.engine.hooks import TunerInitHook
    model = _build([dict(type='ScaledPrefix', presets=['attn'],
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
                r"\['joint', 'parallel'\]"),
    _tuner_case('prefix-init-typo', 'unknown prefix init (`activation`)',
                [dict(type='ScaledPrefix', presets=['attn'],
                      init='activation')], ValueError,
                r"ScaledPrefix on .*MultiheadAttention: unknown "
                r"init='activation'; valid inits: \['random', 'scaled', "
                r"'activations'\]"),
    Case('prefix-form-host', 'tuner config',
         "the joint prefix form on deformable attention (`form='joint'`, "
         "preset `attn` of Deformable DETR)",
         lambda tmp: _build([dict(type='ScaledPrefix', presets=['attn'],
                                  form='joint')],
                            model=_small_deformable()),
         TypeError, r"prefix form='joint' does not apply to .*"
         r"MultiScaleDeformableAttention.*valid forms there: "
         r"\['parallel'\]"),
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


# ---------------------------------------------------------------- configs
@functools.lru_cache(maxsize=None)
def _load_cfg(path):
    from mmengine.config import Config
    return Config.fromfile(str(path))


def demo_layout(root: Path) -> Path:
    """What the demo target configs read: annotation files, image folder."""
    for split in ('train', 'val'):
        (root / 'target').mkdir(parents=True, exist_ok=True)
        (root / 'target' / f'{split}.json').write_text('{}')
    (root / 'images').mkdir(parents=True, exist_ok=True)
    return root


def demo_cfg(tmp: Path, options=None, layout=True):
    """The ET demo config pointed at ``tmp/petl_demo``; ``options`` as
    with ``--cfg-options``."""
    root = tmp / 'petl_demo'
    if layout:
        demo_layout(root)
    cfg = copy.deepcopy(_load_cfg(DEMO_ET))
    opts = {f'{p}_dataloader.dataset.data_root': f'{root}/'
            for p in ('train', 'val', 'test')}
    opts.update({f'{p}_evaluator.ann_file': f'{root}/target/val.json'
                 for p in ('val', 'test')})
    opts['load_from'] = None
    opts.update(options or {})
    cfg.merge_from_dict(opts)
    return cfg


def _check(cfg, mode='train', **kw):
    from mmpetl.utils.config_check import check_config
    check_config(cfg, mode=mode, **kw)


def _config_case(name, bad_input, options, match, mode='train',
                 layout=True):
    return Case(name, 'config', bad_input,
                lambda tmp: _check(demo_cfg(tmp, options, layout), mode),
                ConfigError, match)


def _repeat_dataset(tmp):
    cfg = demo_cfg(tmp)
    inner = cfg.train_dataloader.dataset.to_dict()
    inner['ann_file'] = 'target/train_v2.json'
    cfg.train_dataloader.dataset = dict(type='RepeatDataset', times=3,
                                        dataset=inner)
    _check(cfg)


def _coco_default_classes(tmp):
    cfg = copy.deepcopy(_load_cfg(COCO_DETR))
    cfg.merge_from_dict({'model.model.bbox_head.num_classes': 3})
    _check(cfg, check_paths=False)


CONFIG_CASES = [
    _config_case('data-not-generated',
                 'demo config run before generating the demo data '
                 '(data_root missing)', None,
                 r'train_dataloader\.dataset\.data_root: folder .*petl_demo '
                 r'does not exist.*synthetic_coco --out data/petl_demo',
                 layout=False),
    _config_case('ann-file-typo', 'annotation file name with a typo',
                 {'train_dataloader.dataset.ann_file': 'target/trian.json'},
                 r'train_dataloader\.dataset\.ann_file: annotation file '
                 r'.*target/trian\.json does not exist'),
    _config_case('image-folder-missing', 'image folder (`data_prefix.img`) '
                 'that does not exist',
                 {'val_dataloader.dataset.data_prefix.img': 'imgs/'},
                 r'val_dataloader\.dataset\.data_prefix\.img: image folder '
                 r'.*petl_demo/imgs does not exist'),
    _config_case('evaluator-ann-missing',
                 'evaluator (CocoMetric) `ann_file` that does not exist',
                 {'test_evaluator.ann_file': '/nonexistent/val.json'},
                 r'test_evaluator\.ann_file: annotation file '
                 r'/nonexistent/val\.json does not exist', mode='test'),
    Case('wrapped-dataset', 'config',
         'RepeatDataset wrapping a dataset whose ann_file is missing',
         _repeat_dataset, ConfigError,
         r'train_dataloader\.dataset\.dataset\.ann_file: annotation file '
         r'.*train_v2\.json does not exist'),
    _config_case('num-classes-vs-metainfo',
                 'head `num_classes` (80) differs from the dataset\'s '
                 '`metainfo.classes` (5)',
                 {'model.model.bbox_head.num_classes': 80},
                 r'model\.model\.bbox_head\.num_classes is 80 but '
                 r'train_dataloader\.dataset has 5 classes.*Fix: set '
                 r'`model\.model\.bbox_head\.num_classes=5`'),
    Case('num-classes-vs-default', 'config',
         'head `num_classes=3` on CocoDataset without `metainfo.classes` '
         '(its default: 80 COCO classes)', _coco_default_classes,
         ConfigError,
         r"num_classes is 3 but train_dataloader\.dataset has 80 classes "
         r"\(so do val_dataloader\.dataset\), "
         r"from CocoDataset's default METAINFO\['classes'\]"),
    _config_case('checkpoint-missing',
                 '`tools/test.py CONFIG CHECKPOINT` with a checkpoint path '
                 'that does not exist',
                 {'load_from': '/nonexistent/iter_200.pth'},
                 r'load_from: checkpoint /nonexistent/iter_200\.pth does '
                 r'not exist', mode='test'),
    _config_case('tuner-file-missing',
                 '`tools/test.py ... --tuner` with a path that does not '
                 'exist',
                 {'custom_hooks': [dict(type='mmpetl.LoadTunerHook',
                                        tuner_checkpoint='/nonexistent/'
                                        'iter_200_tuner.pth')]},
                 r'tuner_checkpoint \(--tuner\): tuner checkpoint '
                 r'/nonexistent/iter_200_tuner\.pth does not exist',
                 mode='test'),
]


# ------------------------------------------------------------ checkpoints
TUNERS = [dict(type='ParallelAdapter', presets=['ffn'], bottleneck=8)]


def _base(tmp: Path) -> Path:
    from mmpetl.models import build_inner_model
    from tests.conftest import small_detr_cfg
    torch.manual_seed(0)
    model = build_inner_model(small_detr_cfg())
    path = tmp / 'base.pth'
    torch.save(dict(state_dict=model.state_dict()), path)
    return path


def _tuner(tmp: Path, base: Path, tuners=TUNERS) -> Path:
    from mmpetl.checkpoints import save_tuner_checkpoint
    model = _build(tuners, ['bbox_head'])
    model.load_state_dict(torch.load(base)['state_dict'], strict=False)
    path = tmp / 'iter_200_tuner.pth'
    save_tuner_checkpoint(model, str(path), str(base))
    return path


def _small_file(tmp: Path) -> Path:
    path = tmp / 'iter_200.pth'
    torch.save(dict(state_dict={'w': torch.randn(64, 64)}), path)
    return path


def _truncated(tmp):
    from mmpetl.utils import load_checkpoint_file
    path = _small_file(tmp)
    path.write_bytes(path.read_bytes()[:2000])
    load_checkpoint_file(str(path))


def _truncated_safetensors(tmp):
    from mmpetl.checkpoints import (load_tuner_checkpoint,
                                    save_tuner_checkpoint)
    path = tmp / 'iter_200_tuner.safetensors'
    save_tuner_checkpoint(_build(TUNERS, ['bbox_head']), str(path))
    path.write_bytes(path.read_bytes()[:-1000])
    load_tuner_checkpoint(str(path))


def _not_a_checkpoint(tmp):
    from mmpetl.utils import load_checkpoint_file
    path = tmp / 'iter_200.pth'
    path.write_text('<html>404 Not Found</html>')
    load_checkpoint_file(str(path))


class _Payload:
    """Unpickling this would create a folder: code run from a file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.makedirs, (self.marker, )


def _pickled_code(tmp):
    from mmpetl.utils import load_checkpoint_file
    marker = tmp / 'payload_ran'
    path = tmp / 'iter_200.pth'
    torch.save(dict(state_dict={'w': torch.zeros(2)},
                    meta=_Payload(marker)), path)
    try:
        load_checkpoint_file(str(path))
    finally:
        assert not marker.exists(), 'the pickled code ran'


def _missing_file(tmp):
    from mmpetl.utils import load_checkpoint_file
    load_checkpoint_file(str(tmp / 'iter_2000.pth'))


def _full_as_tuner(tmp):
    from mmpetl.checkpoints import apply_tuner_checkpoint
    path = _small_file(tmp)
    apply_tuner_checkpoint(str(path), str(path))


def _other_base(tmp, change):
    from mmpetl.checkpoints import apply_tuner_checkpoint
    base = _base(tmp)
    tuner = _tuner(tmp, base)
    state = torch.load(base)['state_dict']
    change(state)
    other = tmp / 'other_base.pth'
    torch.save(dict(state_dict=state), other)
    apply_tuner_checkpoint(str(other), str(tuner))


def _same_arch_other_weights(state):
    state['backbone.conv1.weight'] += 1


def _other_arch(state):
    state['backbone.conv1.weight'] = torch.zeros(64, 3, 3, 3)


def _unpinned(tmp):
    """A tuner checkpoint without any base pin (an older mmpetl run without
    load_from) applied to a base."""
    from mmpetl.checkpoints import apply_tuner_checkpoint
    base = _base(tmp)
    path = _tuner(tmp, base)
    ckpt = torch.load(path, weights_only=True)
    for key in list(ckpt['meta']):
        if key.startswith('base_'):
            ckpt['meta'][key] = None
    torch.save(ckpt, path)
    apply_tuner_checkpoint(str(base), str(path))


def _file_pin_url_base(tmp):
    """A tuner checkpoint pinned by base file sha256 (older mmpetl) loaded
    by `tools/test.py --tuner` whose base (`load_from`) is a URL."""
    from mmengine.logging import MMLogger

    from mmpetl.checkpoints import base_meta
    from mmpetl.engine.hooks.tuner_checkpoint_hook import LoadTunerHook
    base = _base(tmp)
    path = _tuner(tmp, base)
    ckpt = torch.load(path, weights_only=True)
    ckpt['meta'] = {k: v for k, v in ckpt['meta'].items()
                    if not k.startswith('base_')}
    ckpt['meta'].update(base_meta(str(base)))
    torch.save(ckpt, path)
    model = _build(TUNERS, ['bbox_head'])
    model.load_state_dict(torch.load(base)['state_dict'], strict=False)
    runner = SimpleNamespace(
        _load_from='https://example.com/models/base.pth', model=model,
        logger=MMLogger.get_instance('mmpetl_bad'))
    LoadTunerHook(str(path)).before_test(runner)


def _load_tuner(tmp, model_tuners):
    from mmengine.logging import MMLogger

    from mmpetl.engine.hooks.tuner_checkpoint_hook import LoadTunerHook
    base = _base(tmp)
    tuner = _tuner(tmp, base)
    model = _build(model_tuners, ['bbox_head'])
    runner = SimpleNamespace(_load_from=None, model=model,
                             logger=MMLogger.get_instance('mmpetl_bad'))
    LoadTunerHook(str(tuner)).before_test(runner)


CHECKPOINT_CASES = [
    Case('ckpt-truncated', 'checkpoint',
         'truncated checkpoint (a download or copy cut short)',
         _truncated, CheckpointError,
         r'cannot load .*iter_200\.pth with safe loading.*truncated, '
         r'corrupt'),
    Case('ckpt-safetensors-truncated', 'checkpoint',
         'truncated `.safetensors` tuner checkpoint',
         _truncated_safetensors, CheckpointError,
         r'cannot read .*iter_200_tuner\.safetensors as safetensors.*'
         r'truncated or corrupt'),
    Case('ckpt-not-torch', 'checkpoint',
         'a file that is not a checkpoint (an HTML error page)',
         _not_a_checkpoint, CheckpointError,
         r'cannot load .*not a torch checkpoint'),
    Case('ckpt-pickled-code', 'checkpoint',
         'checkpoint carrying pickled code (`__reduce__` calling '
         '`os.makedirs`): nothing runs', _pickled_code,
         CheckpointError,
         r'refused to load .*iter_200\.pth: unpickling it would call '
         r'or create `os\.makedirs`.*nothing from the file was run'),
    Case('ckpt-missing', 'checkpoint', 'checkpoint path that does not '
         'exist', _missing_file, FileNotFoundError,
         r'checkpoint not found: .*iter_2000\.pth'),
    Case('full-as-tuner', 'checkpoint',
         'a full checkpoint given where a tuner checkpoint is expected',
         _full_as_tuner, CheckpointError,
         r'not an mmpetl tuner checkpoint.*`\*_tuner\.pth`'),
    Case('tuner-other-base', 'checkpoint',
         'tuner checkpoint applied to another base (same architecture, '
         'other weights)',
         lambda tmp: _other_base(tmp, _same_arch_other_weights),
         BaseMismatchError,
         r'trained on base `base\.pth` \(frozen tensors sha256 '
         r'[0-9a-f]{12}\.\.\.\), but .*other_base\.pth has frozen tensors '
         r'sha256 [0-9a-f]{12}\.\.\. \(same architecture, other weights\)'
         r'.*--force-base'),
    Case('tuner-unpinned', 'checkpoint',
         'tuner checkpoint that records no base (written by an older '
         'mmpetl from a run without `load_from`) applied to a base',
         _unpinned, UnpinnedTunerError,
         r'iter_200_tuner\.pth records no base.*Pass force=True '
         r'\(--force-base\).*re-save it'),
    Case('tuner-file-pin-url', 'checkpoint',
         'tuner checkpoint pinned by its base file\'s sha256 (older mmpetl) '
         'with `load_from` a URL (`tools/test.py --tuner`)',
         _file_pin_url_base, BaseMismatchError,
         r'pinned to the sha256 of its base file `base\.pth`.*https://'
         r'example\.com/models/base\.pth is not a local file.*local file.*'
         r'--force-base'),
    Case('tuner-other-arch', 'checkpoint',
         'tuner checkpoint applied to a base of another architecture',
         lambda tmp: _other_base(tmp, _other_arch), BaseMismatchError,
         r'trained on base `base\.pth`.*different architecture: \d+ frozen '
         r'tensors whose keys/shapes differ'),
    Case('tuner-other-sizes', 'checkpoint',
         'tuner checkpoint (bottleneck 8) loaded into a model built with '
         'bottleneck 16 (`tools/test.py --tuner`)',
         lambda tmp: _load_tuner(tmp, [dict(
             type='ParallelAdapter', presets=['ffn'], bottleneck=16)]),
         ShapeMismatchError,
         r'iter_200_tuner\.pth: 12 tensor\(s\) have other shapes.*'
         r'encoder\.layers\.0\.ffn\.adapter\.branch\.down\.weight: '
         r'model \(16, 256\) vs file \(8, 256\).*and 2 more.*use the '
         r'config it was trained with'),
    Case('tuner-other-tuners', 'checkpoint',
         'tuner checkpoint loaded into a model with other tuners',
         lambda tmp: _load_tuner(tmp, [dict(type='LoRA',
                                            presets=['attn'], rank=2)]),
         KeyError, r'tensors this model does not have.*trained with '
         r'other tuners'),
]


# ------------------------------------------------------ tasks, inference
def _tool(name: str):
    """A module of tools/ (tools/infer.py, tools/test.py) by file."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        f'mmpetl_tool_{name}', ROOT / 'tools' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _infer_args(tmp, *extra):
    infer = _tool('infer')
    return infer, infer.parse_args(
        [str(tmp), str(DEMO_ET), '--weights', str(tmp / 'base.pth'),
         '--out-dir', str(tmp / 'out')] + list(extra))


def _infer_unknown_task(tmp):
    infer, args = _infer_args(tmp, '--tuner', f'garments={tmp}/a.pth',
                              '--tuner', f'shoes={tmp}/b.pth', '--task',
                              'shirts')
    infer.check_inputs(args)


def _infer_other_base(tmp):
    from mmpetl.checkpoints import (content_pin, tensor_digests,
                                    write_tuner_checkpoint)
    from mmpetl.checkpoints.format import MARKER
    base = tmp / 'base.pth'
    torch.save(dict(state_dict={'w': torch.zeros(4)}), base)
    pin = content_pin(tensor_digests({'w': torch.ones(4)}))  # another base
    (tmp / 'a.png').write_bytes(b'')
    write_tuner_checkpoint(dict(state_dict={'t': torch.zeros(2)}, meta=dict(
        pin, base_checkpoint='other_base.pth', **{MARKER: 1})),
        str(tmp / 'a_tuner.pth'))
    infer, args = _infer_args(tmp, '--tuner', f'garments={tmp}/a_tuner.pth')
    infer.check_inputs(args)


def _unreadable_image(tmp):
    from mmpetl.apis import read_image
    path = tmp / 'photo_017.jpg'
    path.write_bytes(b'\xff\xd8\xff\xe0' + b'\0' * 60)  # a cut-off JPEG
    read_image(str(path))


def _test_tool_task_classes(tmp):
    """tools/test.py with two tasks; task `boots` comes from a tuner file
    written before class names were recorded, its head has 3 classes, its
    dataset (the demo target) 5."""
    from mmpetl.checkpoints.format import MARKER
    test = _tool('test')
    cfg = demo_cfg(tmp)
    cfg.work_dir = str(tmp / 'work')
    torch.save(dict(state_dict={}), tmp / 'base.pth')
    for name, classes in (('garments', 5), ('boots', 3)):
        meta = {MARKER: 1}
        if name == 'garments':
            meta['classes'] = [f'c{i}' for i in range(classes)]
        torch.save(dict(state_dict={
            'bbox_head.cls_branches.0.weight': torch.zeros(classes, 128)},
            meta=meta), tmp / f'{name}_tuner.pth')
    args = SimpleNamespace(
        tuner=[f'garments={tmp}/garments_tuner.pth',
               f'boots={tmp}/boots_tuner.pth'], task_data=[], out=None,
        show_dir=None, checkpoint=str(tmp / 'base.pth'), force_base=False,
        amp=False)
    test.task_configs(args, cfg)


def _two_task_bank(tuners=(), parallel=None):
    """A TaskBank with tasks P and Q on a small DETR (random tensors)."""
    from mmpetl.apis import TaskBank
    from mmpetl.models import PETLModel
    from tests.conftest import small_detr_cfg
    cfg = small_detr_cfg()
    cfg['test_cfg'] = dict(max_per_img=10)
    model = PETLModel(model=cfg, tuners=list(tuners), parallel=parallel,
                      trainable=['bbox_head']).eval()
    bank = TaskBank(model)
    for name in 'PQ':
        bank.add(name, {k: v.detach() + torch.rand(()) for k, v in
                        model.tuner_state_dict().items()})
    return bank


def _mixed_batch(bank):
    from tests.conftest import det_batch
    inputs, samples = det_batch(2)
    bank.predict(inputs, samples, ['P', 'Q'])


def _mixed_merged_lora(tmp):
    bank = _two_task_bank([dict(type='LoRA', presets=['attn'], rank=2)])
    bank.model.merge_for_deploy()
    _mixed_batch(bank)


def _mixed_unipt(tmp):
    _mixed_batch(_two_task_bank(parallel=dict(type='UniPT', bottleneck=8)))


TASK_CASES = [
    Case('task-unknown', 'tasks',
         '`tools/infer.py ... --task shirts` where the tuners name the '
         'tasks `garments` and `shoes`', _infer_unknown_task, TaskError,
         r"unknown task 'shirts'; known tasks: 'garments', 'shoes'"),
    Case('task-other-base', 'tasks',
         '`tools/infer.py` with a tuner trained on another base (same '
         'architecture, other weights)', _infer_other_base,
         BaseMismatchError,
         r'trained on base `other_base\.pth` \(frozen tensors sha256 '
         r'[0-9a-f]{12}\.\.\.\).*base\.pth has frozen tensors sha256 .*'
         r'--force-base'),
    Case('task-classes-vs-head', 'tasks',
         '`tools/test.py` with two tasks; one tuner (written before class '
         'names were recorded) has a 3-class head, its dataset 5 classes',
         _test_tool_task_classes, ConfigError,
         r"task 'boots' \(.*boots_tuner\.pth\): 1 problem.*"
         r'model\.model\.bbox_head\.num_classes is 3 but '
         r'test_dataloader\.dataset has 5 classes'),
    Case('image-unreadable', 'tasks',
         'an image file that cannot be decoded (a cut-off JPEG)',
         _unreadable_image, ImageReadError,
         r'cannot read image .*photo_017\.jpg: the file is empty, '
         r'truncated or not an image \(64 bytes\)'),
    Case('mixed-merged-lora', 'tasks',
         'a mixed-task batch on a model whose LoRA was merged '
         '(`merge_for_deploy`)', _mixed_merged_lora, RoutingError,
         r'12 LoRA tuners are merged into the base weights.*'
         r'model\.unmerge\(\)'),
    Case('mixed-unroutable', 'tasks',
         'a mixed-task batch with UniPT (a network beside the whole model)',
         _mixed_unipt, RoutingError,
         r'UniPT cannot compute per sample of a mixed-task batch.*'
         r'set_task'),
]


# --------------------------------------------------------------- training
def _non_finite_loss(tmp):
    from mmpetl.engine.hooks import NonFiniteLossHook
    runner = SimpleNamespace(
        iter=41, rank=0, message_hub=SimpleNamespace(
            get_info=lambda key: 'work_dirs/et/iter_40.pth'))
    outputs = dict(loss_cls=torch.tensor(float('nan')),
                   loss_bbox=torch.tensor(0.25),
                   loss=torch.tensor(float('nan')))
    NonFiniteLossHook().after_train_iter(runner, 0, None, outputs)


def _frozen_check(tamper, load=None):
    """FrozenCheckHook around a 'training' that only runs ``tamper`` on a
    model whose first layer is frozen (``load`` edits it before training,
    as loading a checkpoint would)."""
    from mmpetl.engine.hooks import FrozenCheckHook
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    model[0].requires_grad_(False)
    if load:
        load(model)
    runner = SimpleNamespace(model=model, _load_from='base.pth',
                             logger=SimpleNamespace(info=lambda msg: None))
    hook = FrozenCheckHook()
    hook.before_train(runner)
    tamper(model)
    hook.after_train(runner)


def _frozen_moved(tmp):
    def tamper(model):
        with torch.no_grad():  # e.g. weight decay applied to a frozen tensor
            model[0].weight.mul_(0.999)
    _frozen_check(tamper)


def _frozen_unfrozen(tmp):
    # un-frozen by hand mid-run
    _frozen_check(lambda model: model[0].bias.requires_grad_(True))


def _non_finite_base(tmp):
    def load(model):  # a base saved before init_weights() filled it
        with torch.no_grad():
            model[0].weight[0, 0] = float('nan')
    _frozen_check(lambda model: None, load)


TRAINING_CASES = [
    Case('non-finite-loss', 'training',
         'a NaN loss (lr too high, bad data) at iteration 42',
         _non_finite_loss, NonFiniteLossError,
         r"non-finite loss at iteration 42 on rank\(s\) \[0\]; on this rank "
         r"\(0\): \{'loss_cls': nan, 'loss': nan\}.*last checkpoint is "
         r"work_dirs/et/iter_40\.pth"),
    Case('frozen-moved', 'training',
         'a frozen weight changed during training (weight decay on a '
         'frozen tensor)', _frozen_moved, FrozenParamsChanged,
         r"1 frozen parameters changed during training \(first: "
         r"\['0\.weight'\]\).*`trainable`"),
    Case('frozen-unfrozen', 'training',
         'a frozen parameter un-frozen by hand (`requires_grad_(True)`)',
         _frozen_unfrozen, FrozenParamsChanged,
         r"1 were un-frozen \(first: \['0\.bias'\]\)"),
    Case('non-finite-base', 'training',
         'base weights holding NaN (corrupt file, or saved before '
         '`init_weights()` filled mmdet\'s uninitialised tensors)',
         _non_finite_base, NonFiniteWeightsError,
         r"1 model tensors hold NaN or Inf before training \(first: "
         r"\['0\.weight'\]\); weights loaded from: base\.pth.*"
         r"init_weights\(\)"),
]


# ------------------------------------------------------------ tool flags
VIT_ARCH = ROOT / 'configs/_base_/archs/vit-b16_cifar100.py'


def _tta_classifier(tmp):
    """tools/test.py --tta on a ViT classifier config (no tta_model)."""
    _tool('test').use_tta(_load_cfg(VIT_ARCH))


def _auto_scale_lr_without_base(tmp):
    from mmengine.config import Config
    cfg = Config(dict(optim_wrapper=dict(optimizer=dict(type='AdamW',
                                                        lr=1e-4))))
    _tool('train').enable_auto_scale_lr(cfg)


def _infer_old_order(tmp):
    """mmpetl's former order: INPUTS... CONFIG BASE."""
    infer = _tool('infer')
    infer.check_inputs(infer.parse_args(
        [str(tmp / 'a.jpg'), str(DEMO_ET), str(tmp / 'base.pth'),
         '--tuner', str(tmp / 'a_tuner.pth')]))


def _infer_base_without_tuner(tmp):
    """tools/infer.py CONFIG --weights BASE without --tuner: the tuner
    tensors are not in the file."""
    t = torch.zeros(2)
    _tool('infer').check_whole(
        {'model.backbone.w': t, 'model.neck.adapter.down.weight': t},
        {'model.backbone.w': t}, 'base.pth', 'et.py')


TOOL_CASES = [
    Case('tta-unsupported', 'tools',
         '`tools/test.py CONFIG CKPT --tta` on a classifier config without '
         '`tta_model`/`tta_pipeline`', _tta_classifier, ValueError,
         r'--tta: the config has no tta_model and no tta_pipeline and its '
         r'test pipeline ends with PackInputs, not PackDetInputs.*'
         r'Add tta_model'),
    Case('auto-scale-lr-no-base', 'tools',
         '`tools/train.py --auto-scale-lr` on a config without '
         '`auto_scale_lr.base_batch_size`', _auto_scale_lr_without_base,
         ConfigError,
         r'--auto-scale-lr: the config has no auto_scale_lr\.'
         r'base_batch_size.*Add auto_scale_lr = dict\(enable=False, '
         r'base_batch_size=N\)'),
    Case('infer-old-order', 'tools',
         '`tools/infer.py IMAGES CONFIG BASE.pth` (the order before '
         'MMDetection\'s image_demo.py arguments)', _infer_old_order,
         ValueError,
         r'base\.pth is a checkpoint where the config goes: tools/infer\.py '
         r'takes MMDetection\'s image_demo\.py order, INPUTS\.\.\. CONFIG '
         r'--weights CHECKPOINT'),
    Case('infer-base-without-tuner', 'tools',
         '`tools/infer.py IMAGES CONFIG --weights BASE.pth` with a PETL '
         'config and no `--tuner`', _infer_base_without_tuner, ValueError,
         r'--weights base\.pth does not hold the model of et\.py: it lacks '
         r'1 of its tensors \(first: model\.neck\.adapter\.down\.weight\)'
         r'.*--tuner TUNER\.pth'),
]


# ------------------------------------- base loading, resume, routing, patches
def _base_missing_tensor(tmp):
    from mmpetl.checkpoints import build_tuned_model
    from mmpetl.models import build_inner_model
    from tests.conftest import small_detr_cfg
    state = build_inner_model(small_detr_cfg()).state_dict()
    del state['encoder.layers.0.ffn.layers.1.weight']
    build_tuned_model(dict(type='mmpetl.PETLModel', model=small_detr_cfg(),
                           tuners=TUNERS, trainable=['bbox_head']),
                      {'state_dict': state}, base_source='base.pth')


def _random_base(tmp):
    from mmpetl.engine.start import check_base_loaded, resolve_resume
    cfg = demo_cfg(tmp)  # load_from=None
    cfg.work_dir = str(tmp / 'work')
    resolve_resume(cfg, 'auto')  # `--resume` in a fresh work dir
    check_base_loaded(cfg)


def _routing_undeclared(tmp):
    from mmpetl.tuners.routing import TaskGroups, route_call
    groups = TaskGroups(2, [(torch.tensor([0]), {}, 'a'),
                            (torch.tensor([1]), {}, 'b')])
    route_call(lambda x, y: x + y, (torch.ones(2, 4), torch.ones(2, 4)),
               None, groups, torch.nn.Identity(), 0, 'MyTuner',
               in_dims=(0, None))


def _routing_declared_size(tmp):
    from mmpetl.tuners.routing import TaskGroups, route_call
    groups = TaskGroups(2, [(torch.tensor([0]), {}, 'a'),
                            (torch.tensor([1]), {}, 'b')])
    route_call(lambda x: x, (torch.ones(3, 4), ), None, groups,
               torch.nn.Identity(), 0, 'MyTuner', in_dims=0)


def _unknown_patch(tmp):
    import mmpetl
    mmpetl.apply_patches(['msda'])


LOADING_CASES = [
    Case('base-missing-tensor', 'checkpoint',
         'base checkpoint that lacks a frozen tensor of the config\'s model '
         '(export, `MultiTaskDetector`)', _base_missing_tensor,
         CheckpointError,
         r'base\.pth does not fit the model the config builds:.*1 frozen '
         r'tensor\(s\) of the model missing from it: encoder\.layers\.0\.'
         r'ffn\.layers\.1\.weight.*random tensors'),
    Case('petl-random-base', 'config',
         '`tools/train.py` of a PETL config with `load_from=None`, or '
         '`--resume` in a fresh work dir, and no pretrained `init_cfg`',
         _random_base, ConfigError,
         r'frozen base would be loaded from no checkpoint.*randomly '
         r'initialised frozen detector.*load_from=BASE\.pth.*'
         r'allow_random_base = True'),
    Case('routing-undeclared-input', 'tasks',
         'a routed tuner function reads a per-sample input it did not '
         'declare (`in_dims`, `routed_args`/`routed_kwargs`)',
         _routing_undeclared, RoutingError,
         r"MyTuner: task 'a' has 1 of the 2 samples but its routed output "
         r'has 2 rows.*Declare it'),
    Case('routing-declared-size', 'tasks',
         'a routed tuner function declares a per-sample input whose size '
         'is not a multiple of the batch (`in_dims`)',
         _routing_declared_size, RoutingError,
         r'MyTuner args\[0\]: declared to hold the 2 samples along '
         r'dimension 0, but it has shape \(3, 4\).*declare it None'),
    Case('unknown-patch', 'tools',
         '`mmpetl.apply_patches([\'msda\'])`: a patch name that does not '
         'exist', _unknown_patch, KeyError,
         r"unknown mmpetl patch\(es\) \['msda'\]; the patches are "
         r"\['atomic_checkpoint_save'"),
]


def all_cases() -> List[Case]:
    return (TUNER_CASES + CONFIG_CASES + CHECKPOINT_CASES + TASK_CASES +
            TRAINING_CASES + TOOL_CASES + LOADING_CASES)


# --------------------------------------------------------------- the table
def run_case(case: Case, tmp: Path) -> BaseException:
    """Run ``case.trigger``; return what it raised (AssertionError if it
    did not raise)."""
    try:
        case.trigger(tmp)
    except BaseException as err:  # noqa: B902  (we report any outcome)
        if isinstance(err, KeyboardInterrupt):
            raise
        return err
    return AssertionError(f'{case.name}: nothing was raised')


def message(err: BaseException) -> str:
    if isinstance(err, KeyError) and len(err.args) == 1 and \
            isinstance(err.args[0], str):
        return err.args[0]  # str(KeyError) adds quotes
    return str(err)


def normalise(text: str, tmp: Path) -> str:
    for path in sorted({str(tmp), os.path.realpath(tmp)}, key=len,
                       reverse=True):
        text = text.replace(path, '$TMP')
    text = text.replace(str(ROOT), '$REPO')
    return re.sub(r'\b[0-9a-f]{12}\.\.\.', '<sha>...', text)


def check(case: Case, err: BaseException, tmp: Path) -> Tuple[bool, str]:
    """Whether ``err`` is what the case expects, and why not."""
    if not isinstance(err, case.error):
        return False, (f'{case.name}: expected {case.error.__name__}, got '
                       f'{type(err).__name__}: {message(err)[:500]}')
    if not re.search(case.match, message(err), re.S):
        return False, (f'{case.name}: message does not match '
                       f'{case.match!r}: {message(err)[:800]}')
    return True, ''


MAX_CHARS = 600


def _cell(text: str) -> str:
    text = text.replace('&', '&amp;').replace('<', '&lt;').replace(
        '>', '&gt;').replace('|', '\\|')
    return '<br>'.join(line.rstrip() for line in text.splitlines())


def row(case: Case, err: BaseException, tmp: Path) -> str:
    text = normalise(message(err), tmp)
    if len(text) > MAX_CHARS:
        text = text[:MAX_CHARS].rstrip() + ' [...]'
    return (f'| `{case.name}` | {case.area} | {_cell(case.bad_input)} | '
            f'`{type(err).__name__}` | {_cell(text)} |')


HEADER = """# Bad inputs and what the user sees

Generated by `python tools/misc/bad_input_table.py` from the cases in
`tests/bad_inputs.py`; `tests/test_bad_inputs.py` runs every case, checks
the exception and its message, and that this table shows that message.
Temporary paths are shown as `$TMP`, hash prefixes as `<sha>`; long
messages are cut at {max_chars} characters.

Config mistakes are found by `mmpetl.utils.config_check.check_config`,
which `tools/train.py` and `tools/test.py` run before building anything;
tuner mistakes when the `PETLModel` is built; checkpoint problems when a
file is loaded; task and inference problems by `mmpetl.apis`,
`tools/infer.py` (before anything is written to `--out-dir`) and
`tools/test.py` (before the first task runs); the training ones by
`NonFiniteLossHook` and `FrozenCheckHook` (in
`configs/_base_/petl_runtime.py`).

| case | area | bad input | exception | what the user sees |
|---|---|---|---|---|
"""


def table(rows: List[str]) -> str:
    return HEADER.format(max_chars=MAX_CHARS) + '\n'.join(rows) + '\n'

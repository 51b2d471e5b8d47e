"""Tool flags: ``tools/test.py --tta``, ``tools/train.py
--auto-scale-lr``, ``tools/infer.py`` argument order and weights."""
import torch

from mmpetl.utils.config_check import ConfigError

from .common import DEMO_ET, ROOT, Case, load_cfg, tool


VIT_ARCH = ROOT / 'configs/_base_/archs/vit-b16_cifar100.py'


def _tta_classifier(tmp):
    """tools/test.py --tta on a ViT classifier config (no tta_model)."""
    tool('test').use_tta(load_cfg(VIT_ARCH))


def _auto_scale_lr_without_base(tmp):
    from mmengine.config import Config
    cfg = Config(dict(optim_wrapper=dict(optimizer=dict(type='AdamW',
                                                        lr=1e-4))))
    tool('train').enable_auto_scale_lr(cfg)


def _infer_old_order(tmp):
    """mmpetl's former order: INPUTS... CONFIG BASE."""
    infer = tool('infer')
    infer.check_inputs(infer.parse_args(
        [str(tmp / 'a.jpg'), str(DEMO_ET), str(tmp / 'base.pth'),
         '--tuner', str(tmp / 'a_tuner.pth')]))


def _infer_base_without_tuner(tmp):
    """tools/infer.py CONFIG --weights BASE without --tuner: the tuner
    tensors are not in the file."""
    t = torch.zeros(2)
    tool('infer').check_whole(
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

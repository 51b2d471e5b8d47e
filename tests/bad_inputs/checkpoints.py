"""Checkpoint files: unreadable, unsafe, of the wrong kind, or a tuner
checkpoint that does not fit its base or model."""
import os
from pathlib import Path
from types import SimpleNamespace

import torch

from mmpetl.checkpoints import (BaseMismatchError, ShapeMismatchError,
                                UnpinnedTunerError)
from mmpetl.utils import CheckpointError

from .common import TUNERS, Case, build_petl


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
    model = build_petl(tuners, ['bbox_head'])
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
    save_tuner_checkpoint(build_petl(TUNERS, ['bbox_head']), str(path))
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
    model = build_petl(TUNERS, ['bbox_head'])
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
    model = build_petl(model_tuners, ['bbox_head'])
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

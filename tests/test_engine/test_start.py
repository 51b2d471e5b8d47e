"""Where training starts: ``--resume`` with nothing to resume keeps the
base (``load_from``), and a PETL model whose frozen base no checkpoint
fills does not train."""
import sys
from pathlib import Path

import pytest
from mmengine.config import Config

from mmpetl.engine.start import (UnloadedBaseError, check_base_loaded,
                                 resolve_resume)
from tests.conftest import small_detr_cfg

ROOT = Path(__file__).resolve().parents[2]


def petl(work_dir, load_from=None, **extra):
    return Config(dict(
        model=dict(type='mmpetl.PETLModel', model=small_detr_cfg(),
                   tuners=[dict(type='ParallelAdapter', presets=['ffn'])]),
        work_dir=str(work_dir), load_from=load_from, **extra))


def test_resume_in_a_fresh_work_dir_keeps_load_from(tmp_path):
    cfg = petl(tmp_path, load_from='base.pth')
    note = resolve_resume(cfg, 'auto')
    assert cfg.load_from == 'base.pth' and not cfg.resume
    assert 'nothing to resume' in note and 'load_from=base.pth' in note
    check_base_loaded(cfg)


def test_resume_with_a_last_checkpoint_resumes_it(tmp_path):
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'iter_2.pth'))
    cfg = petl(tmp_path, load_from='base.pth')
    note = resolve_resume(cfg, 'auto')
    assert cfg.resume is True and cfg.load_from is None
    assert note.endswith(f'{tmp_path}/iter_2.pth')
    check_base_loaded(cfg)
    explicit = petl(tmp_path, load_from='base.pth')
    resolve_resume(explicit, 'ckpt.pth')
    assert explicit.resume is True and explicit.load_from == 'ckpt.pth'
    assert resolve_resume(petl(tmp_path), None) is None


def test_a_petl_model_on_a_random_base_is_refused(tmp_path):
    cfg = petl(tmp_path)
    resolve_resume(cfg, 'auto')
    with pytest.raises(UnloadedBaseError, match=r'randomly initialised '
                       r'frozen detector.*load_from=BASE\.pth.*'
                       r'allow_random_base = True'):
        check_base_loaded(cfg)


def test_legitimate_starts_without_load_from_pass(tmp_path):
    # an explicit opt-in (an experiment on a random frozen model)
    check_base_loaded(petl(tmp_path, allow_random_base=True))
    # the model loads weights itself (an ImageNet backbone)
    cfg = petl(tmp_path)
    cfg.model.model.backbone.init_cfg = dict(type='Pretrained',
                                             checkpoint='vit.pth')
    check_base_loaded(cfg)
    # a plain detector (the demo's source training) trains from its init
    check_base_loaded(Config(dict(model=small_detr_cfg(), load_from=None,
                                  work_dir=str(tmp_path))))


def test_train_tool_resume_in_a_fresh_work_dir(tmp_path):
    """``tools/train.py CONFIG --resume`` in a fresh work dir: load_from
    stays the config's (MMDetection's tool set it to None)."""
    sys.path.insert(0, str(ROOT / 'tools'))
    try:
        import train
    finally:
        sys.path.pop(0)
    config = ROOT / 'configs/demo/et-deformable-detr_mnv2_demo-target.py'
    args = train.build_parser().parse_args(
        [str(config), '--work-dir', str(tmp_path), '--resume'])
    cfg = train.build_cfg(args)
    assert cfg.load_from == Config.fromfile(str(config)).load_from
    assert cfg.load_from and not cfg.resume
    check_base_loaded(cfg)
    (tmp_path / 'last_checkpoint').write_text('iter_2.pth')
    cfg = train.build_cfg(args)
    assert cfg.resume and cfg.load_from is None

"""The detection path end to end, through the real tools, on demo data.

train (base, source) -> publish -> train ET (target) -> tuner checkpoint ->
apply -> test, with a tiny schedule; a mismatched base is refused; and a
2-process gloo run of tools/dist_train.sh keeps the ranks' tuners equal.
"""
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmpetl.demo.synthetic_coco import make_transfer_dataset

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
SOURCE = ROOT / 'configs/demo/deformable-detr_mnv2_demo-source.py'
ET = ROOT / 'configs/demo/et-deformable-detr_mnv2_demo-target.py'


def data_options(data_root, domain, iters=2, batch=2):
    ann = f'{data_root}/{domain}'
    return [
        f'train_dataloader.dataset.data_root={data_root}/',
        f'val_dataloader.dataset.data_root={data_root}/',
        f'test_dataloader.dataset.data_root={data_root}/',
        f'val_evaluator.ann_file={ann}/val.json',
        f'test_evaluator.ann_file={ann}/val.json',
        f'train_cfg.max_iters={iters}', f'train_cfg.val_interval={iters}',
        f'default_hooks.checkpoint.interval={iters}',
        f'train_dataloader.batch_size={batch}',
        'val_dataloader.batch_size=4', 'test_dataloader.batch_size=4',
        'default_hooks.logger.interval=1', 'randomness.seed=0',
        'randomness.deterministic=True',
    ]


def run(args, **kw):
    proc = subprocess.run([str(a) for a in args], capture_output=True,
                          text=True, cwd=ROOT, **kw)
    return proc


def ok(proc):
    assert proc.returncode == 0, (proc.stdout[-3000:] + proc.stderr[-5000:])
    return proc.stdout + proc.stderr


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('e2e')
    data = tmp / 'data'
    make_transfer_dataset(str(data), source_sizes=(12, 8),
                          target_sizes=(12, 8), verbose=False)
    ok(run([PY, 'tools/train.py', SOURCE, '--work-dir', tmp / 'base',
            '--cfg-options'] + data_options(data, 'source')))
    published = ok(run([PY, 'tools/model_converters/publish_model.py',
                        tmp / 'base/iter_2.pth', tmp / 'base/demo-base.pth']))
    base = next((tmp / 'base').glob('demo-base_*.pth'))
    assert base.name in published
    log = ok(run([PY, 'tools/train.py', ET, '--work-dir', tmp / 'et',
                  '--cfg-options', f'load_from={base}'] +
                 data_options(data, 'target')))
    return dict(tmp=tmp, data=data, base=base, train_log=log)


def test_training_logs_metric_report_and_tuner_checkpoint(setup):
    log = setup['train_log']
    assert 'coco/bbox_mAP' in log  # CocoMetric (pycocotools) ran
    assert 'tuner tensors are not in the loaded checkpoint' in log
    assert 'TOTAL trainable' in log and 'DeformablePrefix' in log
    assert 'deformable attention runs on cpu: PyTorch fallback' in log
    assert 'frozen tensors bit-identical after training' in log
    tuner = setup['tmp'] / 'et/iter_2_tuner.pth'
    full = setup['tmp'] / 'et/iter_2.pth'
    assert tuner.exists()
    assert tuner.stat().st_size * 10 < full.stat().st_size
    meta = torch.load(tuner, weights_only=True)['meta']
    assert meta['base_checkpoint'] == setup['base'].name
    assert meta['iter'] == 2


def test_apply_then_test_predicts_exactly_like_trained_model(setup):
    tmp, data, base = setup['tmp'], setup['data'], setup['base']
    opts = ['--cfg-options'] + data_options(data, 'target')
    ok(run([PY, 'tools/model_converters/apply_tuner.py', base,
            tmp / 'et/iter_2_tuner.pth', tmp / 'et/applied.pth']))
    trained = ok(run([PY, 'tools/test.py', ET, tmp / 'et/iter_2.pth',
                      '--work-dir', tmp / 't1', '--out',
                      tmp / 'trained.pkl'] + opts))
    applied = ok(run([PY, 'tools/test.py', ET, tmp / 'et/applied.pth',
                      '--work-dir', tmp / 't2', '--out',
                      tmp / 'applied.pkl'] + opts))
    direct = ok(run([PY, 'tools/test.py', ET, base, '--tuner',
                     tmp / 'et/iter_2_tuner.pth', '--work-dir', tmp / 't3',
                     '--out', tmp / 'direct.pkl'] + opts))
    assert 'coco/bbox_mAP' in trained and 'coco/bbox_mAP' in applied
    assert 'loaded' in direct and 'tuner tensors' in direct
    results = [pickle.load(open(tmp / f'{n}.pkl', 'rb'))
               for n in ('trained', 'applied', 'direct')]
    assert len(results[0]) == 8
    for other in results[1:]:
        for a, b in zip(results[0], other):
            for key in ('bboxes', 'scores', 'labels'):
                assert torch.equal(a['pred_instances'][key],
                                   b['pred_instances'][key])


def test_mismatched_base_is_refused_by_test_tool(setup):
    tmp, data = setup['tmp'], setup['data']
    # same weights as the base, but not the file the tuners were tied to
    proc = run([PY, 'tools/test.py', ET, tmp / 'base/iter_2.pth', '--tuner',
                tmp / 'et/iter_2_tuner.pth', '--work-dir', tmp / 't4',
                '--cfg-options'] + data_options(data, 'target'))
    assert proc.returncode != 0
    assert 'was trained on base' in proc.stderr and '--force-base' in \
        proc.stderr


DUMP_CONFIG = """
_base_ = '{et}'
custom_imports = dict(imports=['mmpetl', 'tests.dist_dump_hook'],
                      allow_failed_imports=False)
custom_hooks = _base_.custom_hooks + [
    dict(type='mmpetl.DumpTrainableHook', out_dir='{out}')]
"""


def test_two_process_gloo_training_keeps_ranks_in_sync(setup, tmp_path):
    data, base = setup['data'], setup['base']
    cfg = tmp_path / 'dist_cfg.py'
    cfg.write_text(DUMP_CONFIG.format(et=ET, out=tmp_path))
    env = dict(os.environ, PORT='29517', OMP_NUM_THREADS='1')
    out = ok(run(['bash', 'tools/dist_train.sh', cfg, 2, '--work-dir',
                  tmp_path / 'work', '--cfg-options', f'load_from={base}'] +
                 data_options(data, 'target', iters=3, batch=1), env=env))
    assert '2 processes on CPU with the gloo backend' in out
    ranks = [torch.load(tmp_path / f'trainable_rank{r}.pth') for r in (0, 1)]
    start = torch.load(base, weights_only=True)['state_dict']
    assert ranks[0].keys() == ranks[1].keys()
    moved = 0
    for key in ranks[0]:
        assert torch.equal(ranks[0][key], ranks[1][key]), key
        if key in start and not torch.equal(ranks[0][key], start[key]):
            moved += 1
    assert moved > 0  # the heads trained, identically on both ranks

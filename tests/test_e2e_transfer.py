"""The detection path end to end, through the real tools, on demo data.

train (base, source) -> publish -> train ET (target) -> tuner checkpoint ->
apply -> test, with a tiny schedule; a mismatched base is refused; a
2-process gloo run of tools/dist_train.sh keeps the ranks' tuners equal
and updates them like one process with the joint batch; a run killed
with SIGKILL and resumed ends bit-identical to an uninterrupted one.
"""
import json
import os
import pickle
import signal
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
TARGET_CLASSES = ('Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot')


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
    log = ok(run([PY, 'tools/train.py', ET, '--work-dir', tmp / 'et'] +
                 et_options(data, base)))
    return dict(tmp=tmp, data=data, base=base, train_log=log)


def et_options(data, base):
    """The ET run of `setup`: 4 iterations, checkpoints (all kept) after 2
    and 4; also the uninterrupted run the resume test compares with."""
    return ['--cfg-options', f'load_from={base}'] + data_options(
        data, 'target', iters=4) + [
            'default_hooks.checkpoint.interval=2',
            'default_hooks.checkpoint.max_keep_ckpts=-1']


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
    # the task's class names, for inference (tools/infer.py)
    assert meta['classes'] == list(TARGET_CLASSES)


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


def test_test_tool_tta_wraps_the_tuned_model(setup, tmp_path):
    """--tta on the demo detector config (no tta_model/tta_pipeline):
    MMDetection's default (the image and its flip, merged by NMS) wraps
    the PETL model, the tuner still loads into it, and the merged
    predictions are not the single view's."""
    tmp, data, base = setup['tmp'], setup['data'], setup['base']
    command = [PY, 'tools/test.py', ET, base, '--tuner',
               tmp / 'et/iter_4_tuner.pth', '--cfg-options'] + \
        data_options(data, 'target')
    plain = ok(run(command[:6] + ['--work-dir', tmp_path / 'plain', '--out',
                                  tmp_path / 'plain.pkl'] + command[6:]))
    tta = ok(run(command[:6] + ['--tta', '--work-dir', tmp_path / 'tta',
                                '--out', tmp_path / 'tta.pkl'] +
                 command[6:]))
    assert 'no tta_model in the config' in tta
    assert 'tuner tensors from' in tta and 'tuner tensors from' in plain
    assert 'coco/bbox_mAP' in tta
    one, merged = (pickle.load(open(tmp_path / f'{n}.pkl', 'rb'))
                   for n in ('plain', 'tta'))
    assert len(one) == len(merged) == 8
    assert any(a['pred_instances']['bboxes'].shape !=
               b['pred_instances']['bboxes'].shape or not torch.equal(
                   a['pred_instances']['bboxes'],
                   b['pred_instances']['bboxes'])
               for a, b in zip(one, merged))


def test_mismatched_base_is_refused_by_test_tool(setup):
    tmp, data = setup['tmp'], setup['data']
    # the base's tensors, one of them changed: other weights
    ckpt = torch.load(tmp / 'base/iter_2.pth', weights_only=True)
    state = ckpt['state_dict']
    key = next(k for k in state if k.startswith('backbone.'))
    state[key] = state[key] + 1e-3
    torch.save(dict(state_dict=state), tmp / 'other_base.pth')
    proc = run([PY, 'tools/test.py', ET, tmp / 'other_base.pth', '--tuner',
                tmp / 'et/iter_2_tuner.pth', '--work-dir', tmp / 't4',
                '--cfg-options'] + data_options(data, 'target'))
    assert proc.returncode != 0
    assert 'was trained on base' in proc.stderr and '--force-base' in \
        proc.stderr


def test_test_tool_evaluates_several_tasks_mmdet_style(setup, tmp_path):
    """Two TASK=TUNER pairs, each with its own data root (the second a
    copy of the first, at another path): MMDetection's metric lines per
    task, a summary line per task, per-task outputs."""
    import shutil
    tmp, data, base = setup['tmp'], setup['data'], setup['base']
    copy = tmp_path / 'copy'
    shutil.copytree(data, copy)
    out = ok(run([PY, 'tools/test.py', ET, base,
                  '--tuner', f'it2={tmp}/et/iter_2_tuner.pth',
                  '--tuner', f'it4={tmp}/et/iter_4_tuner.pth',
                  '--task-data', f'it2={data}/', '--task-data',
                  f'it4={copy}/', '--work-dir', tmp_path / 'work',
                  '--out', tmp_path / 'preds.pkl', '--cfg-options'] +
                 data_options(data, 'target')))
    assert not [line for line in out.splitlines() if line.startswith('| ')]
    headers = [out.index(f'task {t} ({tmp}/et/iter_{t[-1]}_tuner.pth)')
               for t in ('it2', 'it4')]
    copypaste = [i for i in range(len(out))
                 if out.startswith('bbox_mAP_copypaste', i)]
    # the evaluator's own lines, once in each task's section
    assert len(copypaste) == 2 and headers[0] < copypaste[0] < \
        headers[1] < copypaste[1]
    summary = {line.split(':')[0][5:]: dict(
        kv.split(': ') for kv in line.split(': ', 1)[1].split('  '))
        for line in out.splitlines() if line.startswith('task it')
        and ': ' in line}
    assert sorted(summary) == ['it2', 'it4']
    assert all(0.0 <= float(m['coco/bbox_mAP']) <= 1.0
               for m in summary.values())
    for task, root in (('it2', data), ('it4', copy)):
        found = pickle.load(open(tmp_path / f'preds_{task}.pkl', 'rb'))
        assert len(found) == 8
        assert all(r['img_path'].startswith(f'{root}/') for r in found)
        assert (tmp_path / 'work' / task).is_dir()


def test_demo_ends_with_infer_on_target_val_images(setup, tmp_path):
    """The last step of `make demo` (tools/demo/run_demo.py run_infer):
    tools/infer.py with the base and the ET tuner on the first target-val
    images writes vis + preds named after each image."""
    import importlib.util
    from types import SimpleNamespace
    spec = importlib.util.spec_from_file_location(
        'mmpetl_run_demo', ROOT / 'tools/demo/run_demo.py')
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    tmp, data = setup['tmp'], setup['data']
    args = SimpleNamespace(data_root=str(data), work_dir=str(tmp_path))
    command, out = demo.run_infer(args, str(setup['base']),
                                  str(tmp / 'et/iter_4_tuner.pth'), num=3)
    assert command.startswith('python tools/infer.py ')
    assert out == str(tmp_path / 'infer')
    for stem in ('000001', '000002', '000003'):
        assert (tmp_path / 'infer/vis' / f'{stem}.png').stat().st_size > 0
        record = json.loads((tmp_path / 'infer/preds' / f'{stem}.json')
                            .read_text())
        assert record['task'] == 'target' and record['scores']
        assert set(record['label_names']) <= set(TARGET_CLASSES)


DUMP_CONFIG = """
_base_ = '{et}'
custom_imports = dict(imports=['mmpetl', 'tests.dist_hooks'],
                      allow_failed_imports=False)
custom_hooks = _base_.custom_hooks + [
    dict(type='mmpetl.DumpTrainableHook', out_dir='{out}')]
"""


def dist_options(data, base, batch):
    """3 iterations; no flips (with one seed both ranks draw the same flip
    sequence, one process with the joint batch does not); batches in the
    sampler's order (AspectRatioBatchSampler would group one process's
    batch by aspect ratio, the ranks' batches of 1 not)."""
    return ['--cfg-options', f'load_from={base}'] + data_options(
        data, 'target', iters=3, batch=batch) + [
            'train_dataloader.dataset.pipeline.2.prob=0.0',
            'train_dataloader.batch_sampler=None']


@pytest.fixture(scope='module')
def two_procs(setup, tmp_path_factory):
    """tools/dist_train.sh, 2 gloo processes with batch 1 each; each rank
    dumps its trainable tensors after training."""
    tmp = tmp_path_factory.mktemp('dist')
    cfg = tmp / 'dist_cfg.py'
    cfg.write_text(DUMP_CONFIG.format(et=ET, out=tmp))
    env = dict(os.environ, PORT='29517', OMP_NUM_THREADS='1')
    out = ok(run(['bash', 'tools/dist_train.sh', cfg, 2, '--work-dir',
                  tmp / 'work'] +
                 dist_options(setup['data'], setup['base'], batch=1),
                 env=env))
    ranks = [torch.load(tmp / f'trainable_rank{r}.pth') for r in (0, 1)]
    return dict(log=out, ranks=ranks, work=tmp / 'work')


def test_two_process_gloo_training_keeps_ranks_in_sync(setup, two_procs):
    assert '2 processes on CPU with the gloo backend' in two_procs['log']
    ranks = two_procs['ranks']
    start = torch.load(setup['base'], weights_only=True)['state_dict']
    assert ranks[0].keys() == ranks[1].keys()
    moved = 0
    for key in ranks[0]:
        assert torch.equal(ranks[0][key], ranks[1][key]), key
        if key in start and not torch.equal(ranks[0][key], start[key]):
            moved += 1
    assert moved > 0  # the heads trained, identically on both ranks


def test_two_processes_update_like_one_with_the_joint_batch(
        setup, two_procs, tmp_path):
    """2 gloo processes with batch 1 each take the same 3 steps as one
    process with batch 2. The DefaultSampler gives rank r the samples
    r, r+2, ... of the shuffled order, so the joint batches are the same;
    DETR's losses divide by the box count averaged over the ranks and DDP
    averages the gradients, so the gradients are equal up to float
    summation order (batch of 2 vs 1 in convolutions and reductions, the
    all-reduce).

    Tolerance: every trainable tensor within 1e-5 (absolute) of the
    1-process run; measured max 9.6e-8 (an adapter weight). A real
    mismatch moves tensors by the size of the updates, ~4e-4 for the heads
    and ~8e-4 for the tuners after 3 AdamW steps (lr 1e-4..1.75e-4, x2 for
    tuners); e.g. other batches (AspectRatioBatchSampler) gave 5.5e-4.
    AdamW and the gradient clipping normalise the updates, so a wrong
    gradient *scale* would not show in the weights: the logged grad_norm
    (before clipping, after the all-reduce) must match too, relative 1e-5
    (measured 3.7e-8).
    """
    data, base = setup['data'], setup['base']
    cfg = tmp_path / 'one_cfg.py'
    cfg.write_text(DUMP_CONFIG.format(et=ET, out=tmp_path))
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS='1')
    ok(run([PY, 'tools/train.py', cfg, '--work-dir', tmp_path / 'work'] +
           dist_options(data, base, batch=2), env=env))
    one = torch.load(tmp_path / 'trainable_rank0.pth')
    two = two_procs['ranks'][0]
    start = torch.load(base, weights_only=True)['state_dict']
    assert one.keys() == two.keys()
    # both start from the base plus the same seeded tuner init (DDP
    # broadcasts rank 0's), so the updates differ as the end values do
    diffs = {k: (one[k] - two[k]).abs().max().item() for k in one}
    worst = max(diffs, key=diffs.get)
    assert diffs[worst] <= 1e-5, (worst, diffs[worst])
    heads = [k for k in one if k in start]
    assert heads and min((one[k] - start[k]).abs().max().item()
                         for k in heads) >= 1e-4  # the tolerance is small
    (log_one, ), (log_two, ) = (_train_scalars(tmp_path / 'work'),
                                _train_scalars(two_procs['work']))
    assert sorted(log_one) == sorted(log_two) == [1, 2, 3]
    for step in log_one:
        assert log_one[step]['grad_norm'] == pytest.approx(
            log_two[step]['grad_norm'], rel=1e-5), step


BITFIT_CONFIG = """
_base_ = '{et}'
model = dict(tuners=[], trainable=['bbox_head', 'bias'])
custom_imports = dict(imports=['mmpetl', 'tests.dist_hooks'],
                      allow_failed_imports=False)
custom_hooks = _base_.custom_hooks + [
    dict(type='mmpetl.DumpTrainableHook', out_dir='{out}')]
"""


def test_bitfit_in_frozen_stages_trains_under_ddp(setup, tmp_path):
    """BitFit on the demo's MobileNetV2 (frozen_stages=13, re-frozen in
    every train() call) with 2 gloo processes for 3 iterations: the biases
    of the frozen stages stay trainable, so DDP gets their gradients
    (before the fix: "Expected to have finished reduction" at iteration 2)
    and they move, identically on both ranks."""
    cfg = tmp_path / 'bitfit.py'
    cfg.write_text(BITFIT_CONFIG.format(et=ET, out=tmp_path))
    env = dict(os.environ, PORT='29519', OMP_NUM_THREADS='1')
    ok(run(['bash', 'tools/dist_train.sh', cfg, 2, '--work-dir',
            tmp_path / 'work'] +
           dist_options(setup['data'], setup['base'], batch=1), env=env))
    ranks = [torch.load(tmp_path / f'trainable_rank{r}.pth') for r in (0, 1)]
    start = torch.load(setup['base'], weights_only=True)['state_dict']
    frozen_stage = [k for k in ranks[0]
                    if k.startswith('backbone.features.0.')]
    assert frozen_stage  # the stem's BatchNorm bias
    for key in frozen_stage:
        assert torch.equal(ranks[0][key], ranks[1][key]), key
        assert not torch.equal(ranks[0][key], start[key]), key


NAN_CONFIG = """
_base_ = '{et}'
custom_imports = dict(imports=['mmpetl', 'tests.dist_hooks'],
                      allow_failed_imports=False)
custom_hooks = _base_.custom_hooks + [
    dict(type='mmpetl.NaNOnOneRankHook', rank=1, at_iter=1)]
"""


def test_nan_on_one_rank_stops_every_rank_before_the_checkpoint(
        setup, tmp_path):
    """Rank 1's loss is NaN at iteration 2 (rank 0's is finite, but the
    all-reduced gradients are not): both ranks stop with the same error
    and rank 0 does not write iteration 2's checkpoint."""
    cfg = tmp_path / 'nan.py'
    cfg.write_text(NAN_CONFIG.format(et=ET))
    env = dict(os.environ, PORT='29521', OMP_NUM_THREADS='1')
    work = tmp_path / 'work'
    proc = run(['bash', 'tools/dist_train.sh', cfg, 2, '--work-dir', work] +
               dist_options(setup['data'], setup['base'], batch=1) +
               ['default_hooks.checkpoint.interval=1'], env=env,
               timeout=600)
    assert proc.returncode != 0
    err = proc.stdout + proc.stderr
    assert err.count('non-finite loss at iteration 2 on rank(s) [1]') >= 2, \
        err[-6000:]
    assert 'this rank (0) was finite' in err
    assert (work / 'iter_1.pth').exists()
    assert not (work / 'iter_2.pth').exists()


KILL_CONFIG = """
_base_ = '{et}'
custom_imports = dict(imports=['mmpetl', 'tests.kill_hook'],
                      allow_failed_imports=False)
custom_hooks = _base_.custom_hooks + [
    dict(type='mmpetl.SigkillHook', kill_at=3)]
"""


def _train_scalars(work_dir):
    """[{step: logged train scalars}] of every run in work_dir (from
    <timestamp>/vis_data/scalars.json), oldest run first."""
    runs = []
    for path in sorted(Path(work_dir).glob('*/vis_data/scalars.json')):
        records = map(json.loads, path.read_text().splitlines())
        runs.append({rec['step']: rec for rec in records if 'loss' in rec})
    return runs


def _training_values(rec):
    # losses (means over the log window: pre-kill history counts), lr;
    # not the wall times and ETA
    return {k: v for k, v in rec.items()
            if k.startswith('loss') or k in ('lr', 'base_lr', 'grad_norm')}


def test_sigkill_then_resume_ends_bit_identical(setup, tmp_path):
    """The ET run of `setup`, SIGKILLed after iteration 3 of 4 (the last
    checkpoint is iteration 2) and resumed with `--resume`, ends exactly
    (torch.equal) where the uninterrupted run ended: weights, tuner
    checkpoint, optimizer, schedulers, message hub; the logs of the two
    parts cover every iteration with the same values.

    RandomFlip stays on: no RNG state is checkpointed, but the resumed run
    is seeded the same and MMEngine's loop skips the consumed batches by
    running the loader (num_workers=0: the pipeline draws the same flips).
    """
    data, base, ref = setup['data'], setup['base'], setup['tmp'] / 'et'
    cfg, work = tmp_path / 'killed.py', tmp_path / 'work'
    cfg.write_text(KILL_CONFIG.format(et=ET))
    # threads as in `setup` (results may depend on how reductions are
    # split between threads)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    # the reference's options; without its final validation, which runs
    # after the compared checkpoint is written (and takes time)
    opts = [o for o in et_options(data, base)
            if not o.startswith(('val_', 'test_'))] + [
                'val_dataloader=None', 'val_cfg=None', 'val_evaluator=None']
    proc = run([PY, 'tools/train.py', cfg, '--work-dir', work] + opts,
               env=env)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert (work / 'iter_2.pth').exists()
    assert not (work / 'iter_4.pth').exists()
    # the same command (without the kill) plus --resume
    resumed = ok(run([PY, 'tools/train.py', ET, '--work-dir', work,
                      '--resume'] + opts))
    assert f'resumed from the latest checkpoint {work}/iter_2.pth' in resumed

    # tuners (and heads): the tuner checkpoints, bit for bit
    a = torch.load(ref / 'iter_4_tuner.pth', weights_only=True)
    b = torch.load(work / 'iter_4_tuner.pth', weights_only=True)
    assert a['state_dict'].keys() == b['state_dict'].keys()
    for key, value in a['state_dict'].items():
        assert torch.equal(value, b['state_dict'][key]), key
    # the resumed run's tuners still name the base they belong to
    for key in ('base_checkpoint', 'base_content_sha256',
                'base_content_keys_hash', 'iter'):
        assert a['meta'][key] == b['meta'][key], key
    assert b['meta']['base_checkpoint'] == base.name

    # full checkpoints: weights, optimizer, schedulers, message hub
    a = torch.load(ref / 'iter_4.pth', weights_only=True)
    b = torch.load(work / 'iter_4.pth', weights_only=True)
    assert a['state_dict'].keys() == b['state_dict'].keys()
    for key, value in a['state_dict'].items():
        assert torch.equal(value, b['state_dict'][key]), key
    opt_a, opt_b = a['optimizer'], b['optimizer']
    assert opt_a['param_groups'] == opt_b['param_groups']
    assert opt_a['state'].keys() == opt_b['state'].keys() != set()
    for idx, state in opt_a['state'].items():
        for name, value in state.items():
            assert torch.equal(value, opt_b['state'][idx][name]), (idx, name)
    assert a['param_schedulers'] == b['param_schedulers']
    for key in ('iter', 'epoch', 'seed'):
        assert a['meta'][key] == b['meta'][key], key
    hub_a, hub_b = a['message_hub'], b['message_hub']
    assert hub_a['runtime_info']['iter'] == hub_b['runtime_info']['iter']
    logged = [k for k in hub_a['log_scalars'] if 'loss' in k or 'lr' in k]
    assert 'train/loss' in logged and 'train/lr' in logged
    for key in logged:  # the whole history, pre-kill iterations included
        for attr in ('_log_history', '_count_history'):
            assert (getattr(hub_a['log_scalars'][key], attr).tolist() ==
                    getattr(hub_b['log_scalars'][key], attr).tolist()), key

    # logs: the killed run's files are kept, and the two parts together
    # log iterations 1..4 with the uninterrupted run's values
    (ref_run, ), runs = _train_scalars(ref), _train_scalars(work)
    assert sorted(ref_run) == [1, 2, 3, 4] and len(runs) == 2
    assert sorted(runs[0]) == [1, 2, 3]  # iteration 3 ran before the kill
    assert sorted(runs[1]) == [3, 4]  # and again after the resume
    for part in runs:
        for step, rec in part.items():
            assert _training_values(rec) == _training_values(ref_run[step])
            assert 'loss_cls' in _training_values(rec)
    logs = sorted(work.glob('*/*.log'))
    assert len(logs) == 2 and 'Iter(train) [3/4]' in logs[0].read_text()

"""tools/infer.py: MMDetection's image_demo.py arguments, outputs in
DetInferencer's layout, several tasks, a whole (applied) checkpoint
without --tuner, an unreadable image, and bad input that leaves the output
folder untouched.

The tool's ``main(argv)`` runs in this process (the same code the command
line runs, without paying the imports once per call).
"""
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from mmpetl.apis import RoutingError
from tests.test_apis.common import CLASSES, detector

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope='module')
def infer():
    spec = importlib.util.spec_from_file_location(
        'mmpetl_infer_tool', ROOT / 'tools' / 'infer.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def det(files):
    """The API on the same config and base, tasks A and B."""
    return detector(files, 'AB')


def _argv(files, out, *tuners, extra=()):
    return [str(files['image_dir']), str(files['config']),
            '--weights', str(files['base'])] + [a for name in tuners for a in (
                '--tuner', f'{name}={files["tuners"][name]}')] + [
                    '--out-dir', str(out), '--batch-size', '3'] + list(extra)


def _files(folder):
    return sorted(p.relative_to(folder).as_posix()
                  for p in Path(folder).rglob('*') if p.is_file())


def test_one_task_writes_vis_and_preds_like_the_api(infer, files, det,
                                                    tmp_path, capsys):
    out = tmp_path / 'out'
    assert infer.main(_argv(files, out, 'B', extra=['--pred-score-thr',
                                                    '0.0'])) == 0
    stems = [p.stem for p in files['images']]
    assert _files(out) == sorted([f'preds/{s}.json' for s in stems] +
                                 [f'vis/{s}.png' for s in stems])
    assert '4 of 4 images x 1 task(s) (B)' in capsys.readouterr().out
    want = det.predict([str(p) for p in files['images']], task='B',
                       batch_size=3)
    import mmcv
    for path, sample in zip(files['images'], want):
        record = json.loads((out / 'preds' / f'{path.stem}.json')
                            .read_text())
        assert record['task'] == 'B'
        pred = sample.pred_instances
        np.testing.assert_allclose(record['scores'], pred.scores.numpy(),
                                   rtol=0, atol=1e-6)
        np.testing.assert_allclose(record['bboxes'], pred.bboxes.numpy(),
                                   rtol=0, atol=1e-4)
        assert record['labels'] == pred.labels.tolist()
        assert record['label_names'] == [CLASSES['B'][i]
                                         for i in record['labels']]
        drawn = mmcv.imread(str(out / 'vis' / f'{path.stem}.png'))
        source = mmcv.imread(str(path))
        assert drawn.shape == source.shape  # boxes drawn on the image
        assert not np.array_equal(drawn, source)


def test_several_tasks_each_image_through_every_task(infer, files, det,
                                                     tmp_path, monkeypatch,
                                                     capsys):
    """No --task: one mixed batch per image chunk, outputs per task; a
    model that cannot route runs one task per forward, same outputs."""
    out = tmp_path / 'out'
    assert infer.main(_argv(files, out, 'A', 'B')) == 0
    for task in 'AB':
        assert len(list((out / task / 'preds').glob('*.json'))) == 4
        assert len(list((out / task / 'vis').glob('*.png'))) == 4
        record = json.loads((out / task / 'preds' / 'img_1.json')
                            .read_text())
        assert record['task'] == task
        assert set(record['label_names']) <= set(CLASSES[task])
    a, b = (json.loads((out / t / 'preds/img_0.json').read_text())
            for t in 'AB')
    assert a['scores'] != b['scores']

    def refuse():
        raise RoutingError('cannot route here')

    monkeypatch.setattr(det.bank, 'check_routable', refuse)
    apart = tmp_path / 'apart'
    assert infer.run(det, [str(p) for p in files['images']], ['A', 'B'],
                     str(apart), 0.3, 3) == []
    assert 'note: cannot route here' in capsys.readouterr().err
    for task in 'AB':
        for path in files['images']:
            mixed, alone = (json.loads((root / task / 'preds' /
                                        f'{path.stem}.json').read_text())
                            for root in (out, apart))
            np.testing.assert_allclose(mixed['scores'], alone['scores'],
                                       rtol=0, atol=1e-4)


def test_an_unreadable_image_is_skipped_and_listed(infer, files, tmp_path,
                                                   capsys):
    folder = tmp_path / 'images'
    shutil.copytree(files['image_dir'], folder)
    (folder / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\n' + b'0' * 40)
    out = tmp_path / 'out'
    argv = _argv(files, out, 'A', extra=['--task', 'A'])
    argv[0] = str(folder)
    assert infer.main(argv) == 1
    err = capsys.readouterr().err
    assert '1 image(s) could not be read and were skipped' in err
    assert f'{folder / "broken.png"}: cannot read image' in err
    assert len(list((out / 'preds').glob('*.json'))) == 4
    assert not (out / 'preds' / 'broken.json').exists()
    assert not list(out.rglob('.tmp_*'))


@pytest.mark.parametrize('case', ['unknown-task', 'other-base',
                                  'no-images', 'task-twice', 'old-order',
                                  'no-weights', 'base-without-tuner'])
def test_bad_input_writes_nothing(infer, files, tmp_path, capsys, case):
    out = tmp_path / 'out'
    argv = _argv(files, out, 'A', 'C')
    if case == 'old-order':  # mmpetl's former INPUTS... CONFIG BASE
        argv = [str(files['image_dir']), str(files['config']),
                str(files['base']), '--out-dir', str(out)]
        match = (f"INPUTS... CONFIG --weights CHECKPOINT: tools/infer.py "
                 f"... {files['config']} --weights {files['base']}")
    elif case == 'no-weights':
        argv = [str(files['image_dir']), str(files['config']),
                '--out-dir', str(out)]
        match = 'no --weights: give the checkpoint'
    elif case == 'base-without-tuner':  # the tuners would run at init
        argv = _argv(files, out)
        match = (f'--weights {files["base"]} does not hold the model of '
                 f'{files["config"]}: it lacks')
    elif case == 'unknown-task':
        argv += ['--task', 'D']
        match = "unknown task 'D'; known tasks: 'A', 'C'"
    elif case == 'other-base':
        other = tmp_path / 'other.pth'  # same architecture, one tensor moved
        import torch
        state = torch.load(files['base'], weights_only=True)['state_dict']
        key = next(k for k in state if k.startswith('backbone.'))
        state[key] = state[key] + 1
        torch.save(dict(state_dict=state), other)
        argv[argv.index('--weights') + 1] = str(other)
        match = 'this tuner checkpoint was trained on base `base.pth`'
    elif case == 'no-images':
        argv[0] = str(tmp_path / 'nothing' / '*.jpg')
        match = 'no image found at'
    else:
        argv += ['--tuner', f'A={files["tuners"]["B"]}']
        match = "task name(s) ['A'] given twice"
    assert infer.main(argv) == 2
    err = capsys.readouterr().err
    assert match in err and f'nothing was written to {out}' in err
    assert not out.exists()


def test_mmdetection_image_demo_defaults(infer, files):
    """The defaults of MMDetection 3.3's demo/image_demo.py (device: its
    cuda:0 where CUDA is there, else cpu)."""
    import torch
    args = infer.parse_args([str(files['image_dir']), str(files['config'])])
    assert (args.out_dir, args.batch_size, args.pred_score_thr,
            args.palette, args.weights, args.tuner) == (
                'outputs', 1, 0.3, 'none', None, None)
    assert args.device == ('cuda:0' if torch.cuda.is_available() else 'cpu')
    assert not (args.show or args.no_save_vis or args.no_save_pred or
                args.print_result)


def test_no_save_flags_and_print_result(infer, files, tmp_path, capsys):
    """--no-save-vis/--no-save-pred leave their half out; with both
    nothing is written and --print-result prints what preds/ holds."""
    full, vis_only, pred_only, none = (tmp_path / n for n in (
        'full', 'vis', 'pred', 'none'))
    assert infer.main(_argv(files, full, 'A', extra=['--palette',
                                                     'random'])) == 0
    assert infer.main(_argv(files, vis_only, 'A',
                            extra=['--no-save-pred'])) == 0
    assert infer.main(_argv(files, pred_only, 'A',
                            extra=['--no-save-vis'])) == 0
    capsys.readouterr()
    assert infer.main(_argv(files, none, 'A', extra=[
        '--no-save-vis', '--no-save-pred', '--print-result'])) == 0
    stems = sorted(p.stem for p in files['images'])
    assert _files(vis_only) == [f'vis/{s}.png' for s in stems]
    assert _files(pred_only) == [f'preds/{s}.json' for s in stems]
    assert not none.exists()
    printed = [json.loads(line) for line in
               capsys.readouterr().out.splitlines()]
    assert sorted(Path(r.pop('image')).stem for r in printed) == stems
    written = [json.loads((full / 'preds' / f'{Path(p).stem}.json')
                          .read_text()) for p in sorted(files['images'])]
    assert sorted(printed, key=lambda r: r['scores']) == sorted(
        written, key=lambda r: r['scores'])
    assert (pred_only / 'preds/img_0.json').read_text() == (
        full / 'preds/img_0.json').read_text()


def test_applied_checkpoint_runs_without_tuner(infer, files, det, tmp_path):
    """An applied checkpoint (base + task A's tuner in one file) with the
    PETL config and no --tuner: task A's detections and class names."""
    from mmpetl.checkpoints import apply_tuner_checkpoint
    applied = tmp_path / 'applied_A.pth'
    apply_tuner_checkpoint(str(files['base']), str(files['tuners']['A']),
                           str(applied))
    out = tmp_path / 'out'
    assert infer.main([str(files['image_dir']), str(files['config']),
                       '--weights', str(applied), '--out-dir', str(out),
                       '--pred-score-thr', '0']) == 0
    want = det.predict([str(p) for p in files['images']], task='A',
                       batch_size=1)
    for path, sample in zip(files['images'], want):
        record = json.loads((out / 'preds' / f'{path.stem}.json')
                            .read_text())
        assert record['task'] == 'applied_A'
        np.testing.assert_allclose(record['scores'],
                                   sample.pred_instances.scores.numpy(),
                                   rtol=0, atol=1e-4)
        assert record['label_names'] == [CLASSES['A'][i]
                                         for i in record['labels']]
        assert (out / 'vis' / f'{path.stem}.png').stat().st_size > 0


def test_unload_releases_tasks_and_model(det, files):
    det.unload()
    assert det.tasks == [] and det.model is None
    with pytest.raises(RuntimeError, match='was unloaded'):
        det.predict(str(files['images'][0]), task='B')

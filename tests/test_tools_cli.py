"""The tools take MMDetection 3.3's command lines.

Each tool's parser is built in-process (``build_parser``) and compared with
the flags of MMDetection's own tool, committed in
``tests/data/mmdet_tool_flags.json`` (the installed mmdet ships no tools):
a missing flag, another default or other choices fail. ``--help`` runs for
every tool, and the deprecated ``tools/analysis/`` paths still run theirs.
Then what the new flags do: ``--show``/``--wait-time``, ``--tta``,
``--auto-scale-lr``, print_config, browse_dataset and analyze_logs.
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mmengine.config import Config

from tests.conftest import load_tool

ROOT = Path(__file__).resolve().parents[1]
FLAGS = json.loads((ROOT / 'tests/data/mmdet_tool_flags.json').read_text())
TOOLS = FLAGS['tools']
DEMO_ET = ROOT / 'configs/demo/et-deformable-detr_mnv2_demo-target.py'
DEMO_SOURCE = ROOT / 'configs/demo/deformable-detr_mnv2_demo-source.py'


@pytest.fixture(scope='module')
def parsers():
    return {path: load_tool(path).build_parser() for path in TOOLS}


def _actions(parser: argparse.ArgumentParser):
    """``({option string: action}, [positional dests], {name: subparser})``."""
    options, positionals, subs = {}, [], {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            subs.update(action.choices)
        elif action.option_strings:
            options.update({s: action for s in action.option_strings})
        else:
            positionals.append(action.dest)
    return options, positionals, subs


def _compare(where: str, parser, spec: dict, not_applicable: dict):
    options, positionals, _ = _actions(parser)
    assert positionals == spec['positionals'], where
    missing = [f for f in spec['flags']
               if f not in options and f not in not_applicable]
    assert not missing, f'{where} lacks MMDetection\'s {missing}'
    for flag, default in spec.get('defaults', {}).items():
        assert options[flag].default == default, (where, flag)
    for flag, choices in spec.get('choices', {}).items():
        assert list(options[flag].choices) == choices, (where, flag)


@pytest.mark.parametrize('path', list(TOOLS))
def test_tool_takes_mmdetections_flags(parsers, path):
    spec = TOOLS[path]
    not_applicable = spec.get('not_applicable', {})
    assert all(f in spec.get('flags', []) or 'subcommands' in spec
               for f in not_applicable)  # only MMDetection's flags excused
    if 'subcommands' in spec:
        _, _, subs = _actions(parsers[path])
        assert sorted(subs) == sorted(spec['subcommands'])
        for name, sub in spec['subcommands'].items():
            _compare(f'{path} {name}', subs[name], sub, not_applicable)
    else:
        _compare(path, parsers[path], spec, not_applicable)


def test_a_missing_flag_is_found(parsers):
    """The comparison fails on a tool without one of MMDetection's flags
    (a parser rebuilt without --wait-time)."""
    spec = TOOLS['tools/test.py']
    short = argparse.ArgumentParser()
    for action in parsers['tools/test.py']._actions:
        if action.option_strings and '--wait-time' not in \
                action.option_strings and '-h' not in action.option_strings:
            short.add_argument(*action.option_strings,
                               default=action.default,
                               choices=action.choices)
        elif not action.option_strings:
            short.add_argument(action.dest)
    with pytest.raises(AssertionError, match='--wait-time'):
        _compare('tools/test.py', short, spec, {})


@pytest.mark.parametrize('path', list(TOOLS))
def test_help_runs(parsers, path, capsys):
    with pytest.raises(SystemExit) as exit_:
        parsers[path].parse_args(['--help'])
    assert exit_.value.code == 0
    assert 'usage:' in capsys.readouterr().out


def test_old_analysis_path_runs_the_moved_tool():
    proc = subprocess.run(
        [sys.executable, 'tools/analysis/benchmark.py', '--help'],
        capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'tools/analysis/benchmark.py is deprecated' in proc.stderr
    assert 'tools/analysis_tools/petl_benchmark.py' in proc.stderr
    assert '--archs' in proc.stdout  # petl_benchmark.py's own help


# ----------------------------------------------------------- tools/test.py
def _test_args(*extra):
    test = load_tool('tools/test.py')
    return test, test.parse_args([str(DEMO_ET), 'base.pth'] + list(extra))


def test_show_and_wait_time_reach_the_visualization_hook():
    test, args = _test_args('--show', '--wait-time', '0.5', '--show-dir',
                            'shown')
    cfg = test.build_cfg(args, show_dir=args.show_dir)
    vis = cfg.default_hooks.visualization
    assert (vis.draw, vis.show, vis.wait_time, vis.test_out_dir) == (
        True, True, 0.5, 'shown')
    test, args = _test_args()
    assert not test.build_cfg(args).default_hooks.visualization.get('show')


def test_tta_wraps_the_model_in_mmdetections_default():
    test, args = _test_args('--tta')
    cfg = test.build_cfg(args)
    plain = cfg.model.to_dict()
    test.use_tta(cfg)
    assert cfg.model.type == 'DetTTAModel'
    assert cfg.model.module.to_dict() == plain
    steps = cfg.test_dataloader.dataset.pipeline
    assert steps[-1]['type'] == 'TestTimeAug'
    assert [t['prob'] for t in steps[-1]['transforms'][0]] == [1., 0.]
    assert 'flip' in steps[-1]['transforms'][1][0]['meta_keys']


def test_tta_keeps_the_configs_own_tta_model_and_pipeline():
    test, args = _test_args()
    cfg = test.build_cfg(args)
    own = dict(type='DetTTAModel', tta_cfg=dict(
        nms=dict(type='nms', iou_threshold=0.7), max_per_img=7))
    cfg.tta_model = own
    cfg.tta_pipeline = [dict(type='LoadImageFromFile'),
                        dict(type='TestTimeAug', transforms=[[dict(
                            type='PackDetInputs')]])]
    test.use_tta(cfg)
    assert cfg.model.tta_cfg.max_per_img == 7
    assert cfg.test_dataloader.dataset.pipeline == cfg.tta_pipeline


def test_tuner_hooks_reach_the_model_inside_tta():
    """LoadTunerHook loads into unwrap_model(runner.model): with --tta
    that is the PETL model inside the DetTTAModel."""
    from mmdet.models import DetTTAModel

    from mmpetl.models import PETLModel
    from mmpetl.utils import unwrap_model
    from tests.conftest import small_detr_cfg
    model = PETLModel(model=small_detr_cfg(), tuners=[],
                      trainable=['bbox_head'])
    tta = DetTTAModel(module=model, tta_cfg=dict(
        nms=dict(type='nms', iou_threshold=0.5), max_per_img=10))
    assert unwrap_model(tta) is model and unwrap_model(model) is model


# ---------------------------------------------------------- tools/train.py
def test_auto_scale_lr_turns_on_mmengines_scaling():
    train = load_tool('tools/train.py')
    args = train.parse_args([str(ROOT / 'configs/et_deformable_detr_coco.py'),
                             '--auto-scale-lr'])
    cfg = train.build_cfg(args)
    base = Config.fromfile(str(ROOT / 'configs/et_deformable_detr_coco.py'))
    assert cfg.auto_scale_lr == dict(base.auto_scale_lr, enable=True)
    args = train.parse_args([str(ROOT / 'configs/et_deformable_detr_coco.py')])
    assert not train.build_cfg(args).auto_scale_lr.get('enable')


# ------------------------------------------------------ print_config.py
def test_print_config_prints_the_merged_config(tmp_path, capsys):
    tool = load_tool('tools/misc/print_config.py')
    saved = tmp_path / 'sub' / 'whole.json'
    assert tool.main([str(DEMO_ET), '--cfg-options',
                      'train_cfg.max_iters=7', '--save-path',
                      str(saved)]) == 0
    out = capsys.readouterr().out
    assert out.startswith('Config:\n') and 'max_iters=7' in out
    assert json.loads(saved.read_text())['train_cfg']['max_iters'] == 7
    assert tool.main([str(DEMO_ET), '--save-path',
                      str(tmp_path / 'x.txt')]) == 2
    assert not (tmp_path / 'x.txt').exists()


# ---------------------------------------------------- browse_dataset.py
@pytest.fixture(scope='module')
def demo_data(tmp_path_factory):
    from mmpetl.demo.synthetic_coco import make_transfer_dataset
    data = tmp_path_factory.mktemp('browse') / 'data'
    make_transfer_dataset(str(data), source_sizes=(3, 2),
                          target_sizes=(3, 2), verbose=False)
    return data


def test_browse_dataset_writes_images_with_boxes(demo_data, tmp_path,
                                                 capsys):
    import mmcv
    tool = load_tool('tools/analysis_tools/browse_dataset.py')
    out = tmp_path / 'browse'
    assert tool.main([str(DEMO_SOURCE), '--not-show', '--output-dir',
                      str(out), '--cfg-options',
                      f'train_dataloader.dataset.data_root={demo_data}/'
                      ]) == 0
    drawn = sorted(out.iterdir())
    assert len(drawn) == 3
    assert '3 images with ground-truth boxes written' in \
        capsys.readouterr().out
    # the image as the training pipeline gives it, with boxes drawn on it
    cfg = Config.fromfile(str(DEMO_SOURCE))
    cfg.train_dataloader.dataset.data_root = f'{demo_data}/'
    from mmengine.registry import DATASETS, init_default_scope
    init_default_scope('mmdet')
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    for index in range(len(dataset)):
        item = dataset[index]
        name = Path(item['data_samples'].img_path).name
        plain = item['inputs'].permute(1, 2, 0).numpy()
        picture = mmcv.imread(str(out / name))
        assert picture.shape == plain.shape
        assert not np.array_equal(picture, plain)


def test_browse_dataset_refuses_what_draws_for_nobody(tmp_path, capsys,
                                                      monkeypatch):
    tool = load_tool('tools/analysis_tools/browse_dataset.py')
    assert tool.main([str(DEMO_SOURCE), '--not-show']) == 2
    assert '--not-show without --output-dir' in capsys.readouterr().err
    monkeypatch.delenv('DISPLAY', raising=False)
    monkeypatch.delenv('WAYLAND_DISPLAY', raising=False)
    monkeypatch.setattr(sys, 'platform', 'linux')
    assert tool.main([str(DEMO_SOURCE), '--output-dir',
                      str(tmp_path / 'o')]) == 2
    assert 'no display' in capsys.readouterr().err
    assert not (tmp_path / 'o').exists()


# ------------------------------------------------------ analyze_logs.py
def _iteration_log(path: Path):
    """An iteration-based MMEngine scalars.json: 6 logged steps, a
    validation after step 3 and after step 6."""
    times = [0.9, 0.2, 0.4, 0.8, 0.3, 0.5]
    lines = []
    for i, t in enumerate(times, 1):
        lines.append(dict(lr=1e-4, loss=2.0 - 0.1 * i, time=t, iter=i,
                          step=i, memory=100))
        if i % 3 == 0:
            lines.append({'coco/bbox_mAP': 0.1 * i, 'data_time': 0.01,
                          'time': 0.05, 'step': i})
    path.write_text('\n'.join(json.dumps(x) for x in lines) + '\n')
    return times


def test_cal_train_time_per_stretch_between_validations(tmp_path, capsys):
    tool = load_tool('tools/analysis_tools/analyze_logs.py')
    log = tmp_path / 'scalars.json'
    times = _iteration_log(log)
    args = tool.parse_args(['cal_train_time', str(log)])
    stats = tool.cal_train_time([tool.load_json_log(str(log))], args)[0]
    first, second = np.mean(times[1:3]), np.mean(times[4:6])  # no outliers
    assert stats['slowest'] == (1 if first > second else 2)
    assert stats['mean'] == pytest.approx(np.mean(times[1:3] + times[4:6]))
    assert stats['std'] == pytest.approx(np.std([first, second]))
    args = tool.parse_args(['cal_train_time', str(log),
                            '--include-outliers'])
    stats = tool.cal_train_time([tool.load_json_log(str(log))], args)[0]
    assert stats['mean'] == pytest.approx(np.mean(times))
    assert 'average iter time' in capsys.readouterr().out


def test_plot_curve_draws_training_and_validation_values(tmp_path, capsys):
    tool = load_tool('tools/analysis_tools/analyze_logs.py')
    log = tmp_path / 'scalars.json'
    _iteration_log(log)
    loaded = tool.load_json_log(str(log))
    xs, ys, label, is_val = tool.curve(loaded, 'bbox_mAP', str(log))
    assert (xs, label, is_val) == ([3, 6], 'iter', True)
    assert ys == pytest.approx([0.3, 0.6])
    xs, ys, _, is_val = tool.curve(loaded, 'loss', str(log))
    assert xs == [1, 2, 3, 4, 5, 6] and not is_val
    out = tmp_path / 'curves.png'
    assert tool.main(['plot_curve', str(log), '--keys', 'loss', 'bbox_mAP',
                      '--out', str(out)]) == 0
    assert out.stat().st_size > 0
    assert tool.main(['plot_curve', str(log), '--keys', 'segm_mAP']) == 2
    err = capsys.readouterr().err
    assert "holds no 'segm_mAP'; it has:" in err and 'coco/bbox_mAP' in err

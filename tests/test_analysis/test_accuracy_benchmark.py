"""The accuracy benchmark: its summary statistics, and one tiny real run."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / 'tools' / 'analysis_tools'))
sys.path.insert(0, str(ROOT / 'tools' / 'demo'))
import accuracy_benchmark as bench  # noqa: E402


def _run(method, seed, m):
    return dict(method=method, seed=seed, bbox_mAP=m, bbox_AP50=2 * m,
                trainable_pct=5.0, trainable=10, stored='tuner',
                checkpoint_mib=1.0, minutes=2.0, size='b=12, l=50')


def test_summary_reports_seeds_mean_spread_and_delta_to_full_ft():
    rows = bench.summarize([
        _run('full-ft', 0, 0.30), _run('etta', 0, 0.28),
        _run('full-ft', 1, 0.26), _run('etta', 1, 0.30)])
    by = {r['method']: r for r in rows}
    assert by['etta']['seeds'] == [0, 1]
    assert by['etta']['values'] == [0.28, 0.30]
    assert by['etta']['mean'] == pytest.approx(0.29)
    assert by['etta']['std'] == pytest.approx(0.0141421, abs=1e-6)
    assert (by['etta']['min'], by['etta']['max']) == (0.28, 0.30)
    assert by['etta']['delta_vs_full'] == pytest.approx(0.01)
    text = bench.markdown(rows, dict(date='d', machine='m', command='c',
                                     base='b', setting='s', seeds='0 1'))
    assert by['etta']['map_per_pct'] == pytest.approx(0.29 / 5.0)
    assert '| etta | b=12, l=50 | 10 | 5.00% | tuner 1.00 MiB | 0.290 | ' \
        '0.014 | 0.280–0.300 | +1.0 pt | 0.0580 | 0.580 |' in text


def test_every_method_builds_on_the_demo_model():
    """Each entry of BUDGET_METHODS (knobs at a small size) and of the
    fixed-size METHODS is a valid PETL config on the demo detector (a typo
    would only show after an hour of benchmark otherwise)."""
    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope

    from mmpetl.injection.budget import fill_spec, spec_knobs
    init_default_scope('mmdet')
    heads = list(Config.fromfile(ROOT / 'configs/demo' /
                                 bench.ET_CONFIG).model.trainable)
    budget = {
        f'budget:{m}': (config, fill_spec(spec, {k: 4 for k in spec_knobs(
            spec)}, heads)) for m, (config, spec) in
        bench.BUDGET_METHODS.items()}
    assert {'etta-joint', 'etta-steer', 'etta-reweight', 'unipt'} <= set(
        bench.BUDGET_METHODS)
    for method, (config, overrides) in list(bench.METHODS.items()) + list(
            budget.items()):
        cfg = Config.fromfile(ROOT / 'configs' / 'demo' / config)
        if overrides:
            cfg.merge_from_dict({f'model.{k}': v
                                 for k, v in overrides.items()})
        model = MODELS.build(cfg.model)
        total = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters()
                        if p.requires_grad)
        if method.endswith('full-ft'):
            assert trainable > 0.5 * total
        else:
            assert 0 < trainable < 0.1 * total, method


def test_accuracy_benchmark_end_to_end(tmp_path):
    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope

    from mmpetl.demo.synthetic_coco import make_transfer_dataset
    data = tmp_path / 'data'
    make_transfer_dataset(str(data), source_sizes=(8, 4),
                          target_sizes=(8, 4), verbose=False)
    # a published base, as `make demo` leaves it (untrained is enough here)
    init_default_scope('mmdet')
    cfg = Config.fromfile(ROOT / 'configs/demo/'
                          'deformable-detr_mnv2_demo-source.py')
    base = MODELS.build(cfg.model)
    # mmdet allocates some parameters (level_embed, ...) with torch.Tensor()
    # and fills them only in init_weights(): without it they hold whatever
    # memory was there, NaN at times (CI saw a NaN Hungarian cost)
    base.init_weights()
    assert all(torch.isfinite(v).all() for v in base.state_dict().values()
               if v.is_floating_point())
    (tmp_path / 'demo' / 'base').mkdir(parents=True)
    torch.save(dict(state_dict=base.state_dict(), meta={}),
               tmp_path / 'demo/base/deformable-detr_mnv2_demo-source_'
               '20260101-00000000.pth')
    out = tmp_path / 'out'
    args = [sys.executable, 'tools/analysis_tools/accuracy_benchmark.py',
            '--methods', 'heads-only', 'lora', '--seeds', '0', '--iters', '1',
            '--data-root', f'{data}/', '--demo-work-dir',
            str(tmp_path / 'demo'), '--work-dir', str(tmp_path / 'work'),
            '--out-dir', str(out), '--reuse', '--budget', '5']
    proc = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads((out / 'accuracy_transfer.json').read_text())
    rows = {r['method']: r for r in result['rows']}
    assert set(rows) == {'heads-only', 'lora'}
    assert rows['lora']['trainable'] > rows['heads-only']['trainable']
    # budget-matched: LoRA's rank sized for 5% of the run's own model
    run = next(r for r in result['runs'] if r['method'] == 'lora')
    rank = run['knobs']['r']
    assert run['size'] == rows['lora']['size'] == f'r={rank}'
    assert run['budget'] == 5.0 and 4.7 < run['trainable_pct'] < 5.3
    assert run['overrides']['tuners'][0]['rank'] == rank
    assert result['header']['sizes']['lora']['knobs'] == {'r': rank}
    assert rows['lora']['map_per_pct'] == pytest.approx(
        rows['lora']['mean'] / rows['lora']['trainable_pct'])
    table = (out / 'accuracy_transfer.md').read_text()
    assert '| size |' in table and '| mAP per trainable % |' in table
    assert f'| lora | r={rank} |' in table
    assert rows['lora']['stored'] == 'tuner'
    assert all(r['seeds'] == [0] for r in rows.values())
    assert result['runs'][0]['iters'] == 1
    assert '| lora |' in (out / 'accuracy_transfer.md').read_text()
    # each run logs into its own folder (MMEngine's visualizer is one per
    # name and process: the runs must not share it)
    for method in ('heads-only', 'lora'):
        logs = list((tmp_path / 'work' / f'{method}_seed0').rglob(
            'vis_data/2*.json'))
        assert len(logs) == 1 and 'coco/bbox_mAP' in logs[0].read_text()
    # finished runs are reused, not trained again
    again = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count('reusing the finished run') == 2
    # ... but not at another budget or size (bench.reusable below)
    assert bench.reusable(json.loads(
        (tmp_path / 'work' / 'runs.json').read_text()), result['runs'][0][
            'base'], 1, 5.0, {'lora': f'r={rank}'}).keys() == {('lora', 0)}


def test_runs_are_reused_only_at_the_same_budget_and_size():
    runs = [dict(method='lora', seed=0, base='b.pth', iters_asked=None,
                 budget=5.0, size='r=19'),
            dict(method='heads-only', seed=0, base='b.pth',
                 iters_asked=None, budget=5.0, size='–'),
            dict(method='lora', seed=1, base='b.pth', iters_asked=None,
                 size='r=16')]  # before budgets: never reused
    sizes = {'lora': 'r=19', 'heads-only': '–'}
    assert bench.reusable(runs, 'b.pth', None, 5.0, sizes).keys() == {
        ('lora', 0), ('heads-only', 0)}
    assert bench.reusable(runs, 'b.pth', None, 3.0, sizes) == {}
    assert bench.reusable(runs, 'b.pth', None, 5.0, dict(
        sizes, lora='r=20')).keys() == {('heads-only', 0)}
    assert bench.reusable(runs, 'c.pth', None, 5.0, sizes) == {}
    assert bench.reusable(runs, 'b.pth', 2, 5.0, sizes) == {}


def test_cached_plans_are_keyed_on_the_planner_rule(tmp_path, monkeypatch):
    """A plan cached under an older sizing rule is not served after the
    rule changes (that once reused ETTA's l=50 plans after the rule chose
    l=8): the cache key holds PLANNER_RULE."""
    import argparse
    args = argparse.Namespace(work_dir=str(tmp_path), budget=5.0)
    plans, failed = bench.plan_methods(args, ['adapter'])
    assert not failed
    cache = json.loads((tmp_path / 'plans.json').read_text())
    (key, ) = cache
    assert json.loads(key)['rule'] == bench.PLANNER_RULE
    # a different size in the cache under the same key is what is served
    cache[key]['knobs'] = dict(b=7)
    (tmp_path / 'plans.json').write_text(json.dumps(cache))
    assert bench.plan_methods(args, ['adapter'])[0]['adapter'].knobs == \
        dict(b=7)
    # under another rule it is planned again
    monkeypatch.setattr(bench, 'PLANNER_RULE', 'another rule')
    again = bench.plan_methods(args, ['adapter'])[0]['adapter']
    assert again.knobs == plans['adapter'].knobs != dict(b=7)

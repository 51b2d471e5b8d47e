"""The prefix ablation tool: its variants and a tiny run end to end."""
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / 'tools' / 'analysis_tools'))
import prefix_ablation as ablation  # noqa: E402


def test_variants_differ_only_in_what_their_names_say():
    vit_tuners = {n: v[0]['tuners']
                  for n, v in ablation.vit_variants().items()
                  if v[0] and 'tuners' in v[0]}
    det_tuners = {n: v[1]['tuners']
                  for n, v in ablation.detection_variants().items()
                  if v[1] and 'tuners' in v[1]}
    for variants in (vit_tuners, det_tuners):
        for form in ('joint', 'parallel'):
            for init in ('scaled', 'activations'):
                tuners = variants[f'prefix:{form}-{init}']
                prefixes = [t for t in tuners if t['type'] == 'ScaledPrefix']
                assert prefixes and all(t['init'] == init for t in prefixes)
        assert 'etta:parallel-scaled+prefix-lr10' in variants
    for variants in (vit_tuners, det_tuners):
        lr10 = variants['etta:parallel-scaled+prefix-lr10']
        base = variants['etta:parallel-scaled']
        assert [t.get('lr_mult', 1) for t in lr10][0] == 1
        assert {t.get('lr_mult', 1) for t in lr10[1:]} == {10}
        assert [{k: v for k, v in t.items() if k != 'lr_mult'}
                for t in lr10] == base
    # the old deformable branch: random prefixes behind a zero scale
    old = ablation.det_prefixes('old')
    assert {t.get('scale') for t in old} == {None, 0.0}


def test_tiny_vit_ablation_writes_tables_and_trajectories(tmp_path):
    out = tmp_path / 'out'
    ablation.main([
        '--tasks', 'vit', '--seeds', '0', '--vit-iters', '12',
        '--vit-base-iters', '3', '--work-dir', str(tmp_path / 'w'),
        '--out-dir', str(out), '--variants', 'heads-only', 'prefix:old',
        'etta:parallel-scaled+prefix-lr10'])
    result = json.loads((out / 'prefix_ablation.json').read_text())
    rows = {r['method']: r for r in result['rows']['vit']}
    assert set(rows) == {'heads-only', 'prefix:old',
                         'etta:parallel-scaled+prefix-lr10'}
    assert rows['heads-only']['trainable_pct'] < rows['prefix:old'][
        'trainable_pct'] < rows['etta:parallel-scaled+prefix-lr10'][
            'trainable_pct']
    run = next(r for r in result['runs']['vit']
               if r['method'] == 'etta:parallel-scaled+prefix-lr10')
    kinds = run['trajectory'][-1][1]
    assert {'ScaledPrefix', 'ParallelAdapter'} <= set(kinds)
    assert kinds['ScaledPrefix']['scale'] != 1.0  # s was trained
    table = (out / 'prefix_ablation.md').read_text()
    assert '| prefix:old |' in table and 'vs heads-only' in table
    assert (out / 'prefix_ablation.png').stat().st_size > 0
    # --report-only trains nothing: a variant without runs has no row
    ablation.main([
        '--tasks', 'vit', '--seeds', '0', '--vit-base-iters', '3',
        '--work-dir', str(tmp_path / 'w'), '--out-dir', str(out),
        '--report-only', '--variants', 'heads-only', 'lora'])
    result = json.loads((out / 'prefix_ablation.json').read_text())
    assert {r['method'] for r in result['rows']['vit']} == {
        'heads-only', 'prefix:old', 'etta:parallel-scaled+prefix-lr10'}


def test_report_only_keeps_one_base_and_trains_nothing(tmp_path):
    """A base published after the runs (``make demo`` again) must not empty
    the detection table: --report-only reports the base with most runs."""
    runs = [dict(method='heads-only', seed=s, base='old.pth') for s in
            (0, 1)] + [dict(method='adapter', seed=0, base='new.pth')]
    folder = tmp_path / 'detection'
    folder.mkdir()
    (folder / 'runs.json').write_text(json.dumps(runs))
    args = ablation.parse_args(['--work-dir', str(tmp_path),
                                '--report-only', '--data-root',
                                str(tmp_path / 'absent')])
    kept, base = ablation.run_detection(args)
    assert set(kept) == {('heads-only', 0), ('heads-only', 1)}
    assert all(r['base'] == 'old.pth' for r in kept.values())
    assert base.startswith('old.pth')
    assert not (tmp_path / 'absent').exists()  # no dataset, no base made

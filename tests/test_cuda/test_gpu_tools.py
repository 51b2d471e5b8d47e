"""The GPU run's tools, on CPU: what the one device call relies on.

Not marked ``cuda``: these run everywhere. tools/gpu/device_run.sh parses;
tools/demo/run_demo.py's ``--amp``/``--device``/``--methods`` reach the
configs and refuse what cannot run; a tiny demo (2 iterations per run, ET
only, on CPU) writes what tools/gpu/check_demo.py checks, and the checker
flags a non-finite loss and a missing tuner checkpoint;
tools/gpu/import_check.py finds required imports and leaves optional ones
(inside ``try ... except ImportError``) out.
"""
import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import load_tool

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope='module')
def demo():
    return load_tool('tools/demo/run_demo.py')


def test_device_run_script_parses():
    script = ROOT / 'tools/gpu/device_run.sh'
    proc = subprocess.run(['bash', '-n', str(script)], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr


def test_demo_flags(demo, monkeypatch):
    args = demo.parse_args(['--amp', 'bfloat16', '--device', 'cuda',
                            '--methods', 'et', 'full'])
    assert (args.amp, args.device, args.methods) == ('bfloat16', 'cuda',
                                                     ['et', 'full'])
    assert demo.parse_args([]).methods == ['et', 'full', 'heads']
    with pytest.raises(SystemExit):  # the PNG and infer steps need ET
        demo.parse_args(['--methods', 'full'])
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    with pytest.raises(SystemExit, match='--device cuda: torch.cuda'):
        demo.check_device(args)
    with pytest.raises(SystemExit, match='--amp needs CUDA'):
        demo.check_device(demo.parse_args(['--amp', 'float16']))
    demo.check_device(demo.parse_args(['--device', 'cpu']))
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    with pytest.raises(SystemExit, match='CUDA_VISIBLE_DEVICES='):
        demo.check_device(demo.parse_args(['--device', 'cpu']))
    cfg = demo.demo_config(demo.METHODS[0][1], 'w', 'data/', amp='bfloat16')
    assert cfg.optim_wrapper.type == 'mmpetl.AmpOptimWrapper'
    assert cfg.optim_wrapper.dtype == 'bfloat16'
    plain = demo.demo_config(demo.METHODS[1][1], 'w', 'data/')
    assert plain.optim_wrapper.get('type', 'OptimWrapper') == 'OptimWrapper'


def test_tiny_demo_and_its_check(demo, tmp_path, monkeypatch):
    """run_demo.main with 2 iterations per run and ET only, on CPU (no
    predictions PNG, no infer step); then check_demo on what it wrote,
    and on broken copies."""
    make = demo.make_transfer_dataset
    monkeypatch.setattr(demo, 'make_transfer_dataset', functools.partial(
        make, source_sizes=(8, 4), target_sizes=(8, 4), verbose=False))
    original_cfg = demo.demo_config

    def tiny(name, work_dir, data_root, amp=None, **options):
        cfg = original_cfg(name, work_dir, data_root, amp=amp, **options)
        cfg.train_cfg.max_iters = cfg.train_cfg.val_interval = 2
        cfg.default_hooks.checkpoint.interval = 2
        cfg.default_hooks.logger.interval = 1
        cfg.train_dataloader.batch_size = 2
        return cfg

    monkeypatch.setattr(demo, 'demo_config', tiny)
    # steps 4-5 (a PNG, tools/infer.py in a subprocess) are tested in
    # tests/test_e2e_transfer.py; here they only cost time
    monkeypatch.setattr(demo, 'save_predictions_png', lambda *a: None)
    monkeypatch.setattr(demo, 'run_infer', lambda *a: ('(skipped)', ''))
    work = tmp_path / 'demo'
    monkeypatch.setattr(sys, 'argv', [
        'run_demo.py', '--work-dir', str(work), '--data-root',
        str(tmp_path / 'data'), '--device', 'cpu', '--methods', 'et'])
    demo.main()
    table = json.loads((work / 'transfer_table.json').read_text())
    assert [r['method'] for r in table['rows']] == [demo.METHODS[0][0]]
    assert table['rows'][0]['device'] == 'cpu'
    assert table['rows'][0]['amp'] == 'fp32'
    assert 'on cpu, fp32' in (work / 'transfer_table.md').read_text()
    check = load_tool('tools/gpu/check_demo.py')
    problems, lines = check.check(work, tmp_path / 'keep', 'cpu')
    assert problems == [] and len(lines) == 1, problems
    assert 'all finite: True' in lines[0]
    kept = tmp_path / 'keep' / Path(table['rows'][0]['tuner_file']).parent.name
    assert list(kept.glob('*_tuner.pth')) and list(kept.glob('*scalars.json'))
    # on CUDA it would have been the wrong device
    problems, _ = check.check(work, tmp_path / 'keep2', 'cuda')
    assert any('trained on cpu, not cuda' in p for p in problems)
    # a non-finite loss in the log, and a missing tuner checkpoint
    scalars = next(Path(table['rows'][0]['tuner_file']).parent.glob(
        '*/vis_data/scalars.json'))
    lines_in = scalars.read_text().splitlines()
    record = json.loads(lines_in[0])
    record['loss'] = float('nan')
    scalars.write_text('\n'.join([json.dumps(record)] + lines_in[1:]))
    Path(table['rows'][0]['tuner_file']).unlink()
    problems, _ = check.check(work, tmp_path / 'keep3', 'cpu')
    assert any('non-finite losses' in p for p in problems), problems
    assert any('tuner checkpoint' in p and 'missing' in p
               for p in problems), problems


def test_import_scan(tmp_path):
    check = load_tool('tools/gpu/import_check.py')
    source = tmp_path / 'user.py'
    source.write_text(
        'import os\nimport numpy as np\nfrom . import sibling\n'
        'try:\n    import optional_pkg\nexcept ImportError:\n    pass\n'
        'def f():\n    from not_installed_pkg.sub import x\n')
    found = check.imported_modules(source)
    assert set(found) == {'os', 'numpy', 'not_installed_pkg'}
    missing, _ = check.scan(patterns=[], extra=[str(source)])
    assert [m for m, _ in missing] == ['not_installed_pkg']
    assert missing[0][1].endswith('user.py:9')
    missing, count = check.scan()  # the files the GPU run executes
    assert missing == [] and count > 50


def test_import_check_drops_only_the_demo(monkeypatch, capsys):
    """A module only the demo needs is reported and does not fail the
    check (device_run.sh then skips the demo); any other one fails it."""
    import importlib.util
    check = load_tool('tools/gpu/import_check.py')
    find_spec = importlib.util.find_spec
    absent = set()
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *a: None
                        if name in absent else find_spec(name, *a))
    absent.add('torchvision')
    assert check.before_build([], require_cuda=False) == 0
    out = capsys.readouterr().out
    assert 'demo-only modules missing: torchvision' in out
    absent.add('safetensors')
    assert check.before_build([], require_cuda=False) == 1
    out = capsys.readouterr().out
    assert 'safetensors: not installed (imported by mmpetl/' in out


def test_device_run_steps_are_bounded(tmp_path):
    """device_run.sh's run(): a step stops at its cap (its children too),
    one with under 20 s of the deadline left is skipped, both recorded in
    steps.tsv, and the results are packed after each step."""
    text = (ROOT / 'tools/gpu/device_run.sh').read_text()
    funcs = [text[text.index(f'\n{name}() {{') + 1:] for name in
             ('left', 'log', 'pack', 'run')]
    funcs = [f[:f.index('\n}\n') + 3] if f.startswith('run') else
             f[:f.index('\n') + 1] for f in funcs]
    script = tmp_path / 'harness.sh'
    script.write_text('set -u\nT0=$(date +%s); DEADLINE=100\n'
                      f'R={tmp_path}/res; OUT={tmp_path}/out\n'
                      'mkdir -p $R $OUT\n' + ''.join(funcs) +
                      "run capped 2 bash -c 'sleep 30 & wait'\n"
                      'run quick 50 bash -c "exit 3"\n'
                      'T0=$(( T0 - 90 ))\n'
                      'run late 50 true\n')
    proc = subprocess.run(['bash', str(script)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    rows = [r.split('\t') for r in
            (tmp_path / 'res/steps.tsv').read_text().splitlines()]
    assert [r[:2] for r in rows] == [['capped', '124'], ['quick', '3'],
                                     ['late', 'skipped']]
    assert int(rows[0][2]) < 10  # stopped at its 2 s cap
    assert 'TIMED OUT after 2 s' in proc.stdout
    listing = subprocess.run(['tar', 'tzf', str(tmp_path / 'out/results.tgz')],
                             capture_output=True, text=True).stdout
    assert './capped.log' in listing and './steps.tsv' in listing

"""tools/analysis_tools/task_benchmark.py at its --quick settings: every
field is there, and each row's sizes equal what this test counts on the
model the tool's config builds (no timing asserted, no hard-coded count).
"""
import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_run_writes_json_and_markdown(tmp_path):
    spec = importlib.util.spec_from_file_location(
        'mmpetl_task_benchmark',
        ROOT / 'tools/analysis_tools/task_benchmark.py')
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.ROOT = str(tmp_path)  # --readme: tmp_path/benchmarks/README.md
    (tmp_path / 'benchmarks').mkdir()
    (tmp_path / 'benchmarks' / 'README.md').write_text(
        'intro\n<!-- tasks-bench:start -->\nold\n<!-- tasks-bench:end -->\n'
        'rest\n')
    result = bench.main(['--quick', '--out-dir', str(tmp_path), '--config',
                         str(ROOT / bench.CONFIG), '--readme'])
    saved = json.loads((tmp_path / 'tasks.json').read_text())
    assert saved['rows'] == json.loads(json.dumps(result['rows']))
    header = saved['header']
    assert {'date', 'machine', 'software', 'command', 'setting'} <= set(
        header)
    assert f'--quick --out-dir {tmp_path} --config' in header['command']
    # each row against the model the tool's config builds, counted here
    # without the tool's code: the trained parameters plus the tuners'
    # buffers are a task's tensors
    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope
    cfg = Config.fromfile(str(ROOT / bench.CONFIG))
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    rows = saved['rows']
    assert [r['bottleneck'] for r in rows] == [0, 16]  # --quick's sizes
    text = (tmp_path / 'tasks.md').read_text()
    counts = []
    for row in rows:
        model = MODELS.build(bench.model_cfg(cfg, row['bottleneck'],
                                             32)).eval()
        tensors = [p for p in model.parameters() if p.requires_grad]
        tensors += [b for _, t in model.tuner_modules() for b in t.buffers()]
        count = sum(t.numel() for t in tensors)
        counts.append(count)
        assert row['task_params'] == count, row
        assert row['tensors'] == len(tensors), row
        assert row['total_params'] == sum(p.numel()
                                          for p in model.parameters())
        nbytes = sum(t.numel() * t.element_size() for t in tensors)
        assert abs(row['task_mib'] * 2**20 - nbytes) < 1e-6 * nbytes
        assert row['switch_ms'] > 0 and row['rebuild_ms'] > 0
        tuner = 'heads only' if not row['bottleneck'] else \
            f'adapters b={row["bottleneck"]} + prefixes l=32'
        # the table shows the measured row
        assert f'| {tuner} | {count:,} | {len(tensors)} | ' \
            f'{nbytes / 2**20:.2f} | {row["switch_ms"]:.2f} |' in text
    # adapters and prefixes add tensors beside the heads'
    assert counts[1] > counts[0] and rows[1]['tensors'] > rows[0]['tensors']
    mixed = saved['mixed']
    assert (mixed['tasks'], mixed['batch'], mixed['bottleneck']) == (2, 2, 16)
    assert min(mixed['mixed_ms'], mixed['by_task_ms'],
               mixed['one_task_ms']) > 0
    assert f'| one routed forward (mixed) | {mixed["mixed_ms"]:.0f} |' in text
    assert '--quick' in text
    readme = (tmp_path / 'benchmarks' / 'README.md').read_text()
    assert readme.startswith('intro\n<!-- tasks-bench:start -->\n- date: ')
    assert text.split('\n## ', 1)[1].split('\n', 1)[1][:200] in readme
    assert 'old' not in readme
    assert readme.endswith('<!-- tasks-bench:end -->\nrest\n')

"""tools/analysis_tools/task_benchmark.py at its --quick settings: every
field is there and the numbers are what their names say (no timing asserted)."""
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
    heads, adapters = saved['rows']
    assert (heads['bottleneck'], adapters['bottleneck']) == (0, 16)
    for row in saved['rows']:  # fp32 tensors: 4 bytes per parameter
        assert abs(row['task_mib'] * 2**20 - 4 * row['task_params']) < 1
        assert row['switch_ms'] > 0 and row['rebuild_ms'] > 0
        assert row['rebuild_over_switch'] == row['rebuild_ms'] / \
            row['switch_ms']
    # adapters + prefixes add tensors to the heads' (16 head tensors)
    assert heads['tensors'] == 16 and adapters['tensors'] > 16
    assert adapters['task_params'] > heads['task_params']
    mixed = saved['mixed']
    assert mixed['tasks'] == 2 and mixed['batch'] == 2
    assert mixed['mixed_ips'] == 1000.0 * 2 / mixed['mixed_ms']
    text = (tmp_path / 'tasks.md').read_text()
    assert '| heads only | 68,370 |' in text
    assert 'one routed forward (mixed)' in text and '--quick' in text
    readme = (tmp_path / 'benchmarks' / 'README.md').read_text()
    assert readme.startswith('intro\n<!-- tasks-bench:start -->\n- date: ')
    assert '| heads only | 68,370 |' in readme and 'old' not in readme
    assert readme.endswith('<!-- tasks-bench:end -->\nrest\n')

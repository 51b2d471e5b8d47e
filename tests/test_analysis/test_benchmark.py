"""The speed/memory benchmark: its measurements, ratios, targets, outputs.

Timings are never asserted (they live in the benchmark's results); what is
tested is that each number measures what it says.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from mmpetl.analysis import check_targets, deploy, with_ratios
from mmpetl.analysis.measure import (build_base_model, cpu_tensor_peak_mib,
                                     interleaved_medians, synthetic_batch)
from mmpetl.analysis.report import markdown_report
from tests.conftest import load_tool, small_deformable_cfg

ROOT = Path(__file__).resolve().parents[2]
MIB = 2**20


def _mlp(width):
    return nn.Sequential(nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, width))


def _step_peak(model, x, optim='sgd'):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-3) if optim == 'sgd' else \
        torch.optim.Adam(params, lr=1e-3, foreach=False)

    def step():  # the order of MMEngine's OptimWrapper.update_params
        model(x).square().mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # optimizer state exists from here on, as after a warm-up
    return cpu_tensor_peak_mib(model, opt, step)


def test_cpu_tensor_peak_counts_weights_grads_state_and_activations():
    torch.manual_seed(0)
    width, batch = 1024, 256
    weight = width * width * 4 / MIB  # one Linear's weight, MiB
    act = batch * width * 4 / MIB
    x = torch.randn(batch, width)
    full = _step_peak(_mlp(width), x)
    # 2 weights + 2 gradients, plus the batch's activations and their
    # gradients (about 9 of them here)
    assert 4 * weight <= full <= 4 * weight + 10 * act + 1
    frozen = _mlp(width)
    frozen[0].requires_grad_(False)
    # the first layer gets no gradient: 2 weights + 1 gradient + fewer
    # activations (their gradients before the second layer are skipped)
    part = _step_peak(frozen, x)
    assert 3 * weight <= part <= 3 * weight + 10 * act + 1
    assert part < full - 2 * act
    # Adam keeps 2 moments per weight, and its step makes two
    # weight-sized temporaries (sqrt, div) for one weight at a time
    adam = _step_peak(_mlp(width), x, optim='adam')
    assert adam - full == pytest.approx(6 * weight, abs=2 * act + 0.5)


def test_synthetic_batch_goes_through_the_data_preprocessor():
    from mmdet.registry import MODELS
    from mmengine.registry import init_default_scope
    init_default_scope('mmdet')
    model = MODELS.build(small_deformable_cfg())
    data = synthetic_batch('detection', 2, (64, 96), num_classes=3)
    out = model.data_preprocessor(data, training=True)
    assert out['inputs'].shape[:2] == (2, 3)
    assert out['inputs'].shape[-2:] == (64, 96)
    boxes = out['data_samples'][0].gt_instances.bboxes
    assert boxes.shape == (6, 4)
    assert (boxes[:, 2:] > boxes[:, :2]).all()
    assert (boxes[:, [0, 2]] <= 96).all() and (boxes[:, [1, 3]] <= 64).all()


def test_deploy_merges_lora_and_counts_base_params_only():
    from mmpetl.models import PETLModel
    model = PETLModel(model=small_deformable_cfg(),
                      tuners=[dict(type='LoRA', presets=['ffn'], rank=4)],
                      trainable=['bbox_head'])
    base = sum(p.numel() for n, p in model.named_parameters()
               if '.lora' not in n)
    tuners = len(model.tuner_modules())
    model.eval()
    for _, tuner in model.tuner_modules():  # trained (non-zero) updates
        torch.nn.init.normal_(tuner.lora_B, std=0.1)
    x = torch.randn(2, 5, 256)
    ffn = model.encoder.layers[0].ffn
    before = ffn(x)
    info = deploy(model)
    assert tuners == 8  # (2 encoder + 2 decoder FFNs) x 2 Linears
    assert info['lora_merged'] == tuners
    assert info['deploy_params'] == base
    torch.testing.assert_close(ffn(x), before)


def test_base_model_is_the_petl_configs_model_without_tuners():
    from mmengine.config import Config
    from mmpetl.models import PETLModel
    from mmpetl.tuners import BaseTuner
    inner = small_deformable_cfg()
    cfg = Config(dict(model=dict(
        type='mmpetl.PETLModel', model=inner, trainable=['bbox_head'],
        tuners=[dict(type='ParallelAdapter', presets=['ffn'],
                     bottleneck=8)])))
    base = build_base_model(cfg, torch.device('cpu'))
    tuned = PETLModel(**{k: v for k, v in cfg.model.items() if k != 'type'})
    assert not base.training
    assert not any(isinstance(m, BaseTuner) for m in base.modules())
    assert any(isinstance(m, BaseTuner) for m in tuned.modules())
    tuner_keys = {k for k in tuned.state_dict() if 'tuner' in k or
                  'adapter' in k}
    assert tuner_keys and set(base.state_dict()) == \
        set(tuned.state_dict()) - tuner_keys
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(1.0)  # as after training
    copied = build_base_model(cfg, torch.device('cpu'), weights_from=tuned)
    theirs = tuned.state_dict()
    for key, value in copied.state_dict().items():
        torch.testing.assert_close(value, theirs[key])
    assert build_base_model(Config(dict(model=inner)),
                            torch.device('cpu')) is None  # vanilla config


def test_interleaved_medians_alternate_the_functions():
    calls = []
    medians = interleaved_medians(
        [lambda: calls.append('a'), lambda: calls.append('b')],
        warmup=1, iters=3, sync=lambda: None)
    assert len(medians) == 2 and all(m >= 0 for m in medians)
    # warm-up a b, then a b / b a / a b: no function runs twice in a row
    # except at the turn, and each ran 1 + 3 times
    assert calls == ['a', 'b', 'a', 'b', 'b', 'a', 'a', 'b']


def _row(method, arch='a', **kw):
    row = dict(arch=arch, method=method, trainable_pct=5.0, is_petl=True,
               checkpoint_mib=1.0, peak_mem_mib=100.0, step_ms=100.0,
               infer_ms=10.0, infer_deployed_ms=None, amp='fp32',
               trainable_params=10, deploy_params=100,
               backbone_autograd=False, device='cpu')
    row.update(kw)
    return row


def test_ratios_are_to_full_ft_of_the_same_arch_and_targets_follow():
    rows = with_ratios([
        _row('full-ft', is_petl=False, trainable_pct=100.0,
             checkpoint_mib=50.0, peak_mem_mib=1000.0, step_ms=200.0,
             backbone_autograd=True),
        _row('etta', arch='deformable', peak_mem_mib=600.0, step_ms=150.0,
             infer_ms=12.0),
        _row('full-ft', arch='deformable', is_petl=False,
             trainable_pct=100.0, checkpoint_mib=50.0, peak_mem_mib=1000.0,
             step_ms=200.0, infer_ms=10.0),
        _row('lora', peak_mem_mib=300.0, infer_ms=12.0,
             infer_deployed_ms=10.1),
        _row('unipt', peak_mem_mib=150.0),
        _row('prefix', error='Traceback...\nRuntimeError: boom'),
    ])
    by = {(r['arch'], r['method']): r for r in rows}
    assert by['deformable', 'etta']['mem_ratio'] == pytest.approx(0.6)
    assert by['deformable', 'etta']['step_ratio'] == pytest.approx(0.75)
    assert by['a', 'lora']['ckpt_shrink'] == pytest.approx(50.0)
    assert 'mem_ratio' not in by['a', 'prefix']
    checks = {(c['method'], c['target']): c['passed']
              for c in check_targets(rows)}
    assert checks['etta', 'ET-Deformable-DETR peak memory <= 0.5x full FT'] \
        is False
    assert checks['etta', 'ET-Deformable-DETR step time <= 0.85x full FT']
    assert checks['etta', 'frozen backbone runs without autograd']
    assert checks['etta', 'inference latency <= 1.10x base'] is False
    assert checks['lora', 'inference after merging LoRA <= 1.02x base']
    assert checks['unipt', 'UniPT peak memory <= 0.2x full FT']
    # a base model timed beside the tuned one is the reference, not the
    # full fine-tuning run
    side = with_ratios([
        _row('full-ft', is_petl=False, infer_ms=10.0),
        _row('lora', infer_ms=12.0, infer_base_ms=11.0,
             infer_deployed_ms=11.5, infer_deployed_base_ms=11.5)])[1]
    assert side['infer_ratio'] == pytest.approx(12.0 / 11.0)
    assert side['infer_deployed_ratio'] == pytest.approx(1.0)
    text = markdown_report(rows, check_targets(rows), dict(
        device_kind='CPU', date='d', machine='m', software='s',
        command='c', setting='x'))
    assert '| etta | 10 | 5.00% |' in text
    assert '0.60×' in text and '**FAIL**' in text
    assert 'failed: RuntimeError: boom' in text


TINY = """
_base_ = []
default_scope = 'mmdet'
model = {model}
optim_wrapper = dict({optim}, optimizer=dict(type='AdamW', lr=1e-4))
"""


def test_benchmark_tool_end_to_end(tmp_path):
    """Two tiny configs through the real tool: one subprocess each, JSON,
    Markdown and PNG written, the full-ft row is its own reference."""
    inner = small_deformable_cfg(test_cfg=dict(max_per_img=10))
    (tmp_path / 'full-ft_tiny.py').write_text(TINY.format(
        model=repr(inner), optim="type='OptimWrapper'"))
    petl = dict(type='mmpetl.PETLModel', model=inner, trainable=['bbox_head'],
                tuners=[dict(type='ParallelAdapter', presets=['ffn'],
                             bottleneck=8),
                        dict(type='ScaledPrefix', presets=['attn'],
                             num_prefix=4)])
    (tmp_path / 'etta_tiny.py').write_text(TINY.format(
        model=repr(petl),
        optim="constructor='mmpetl.PETLOptimWrapperConstructor'"))
    out = tmp_path / 'out'
    proc = subprocess.run(
        [sys.executable, 'tools/analysis_tools/petl_benchmark.py', '--configs',
         str(tmp_path / 'full-ft_tiny.py'), str(tmp_path / 'etta_tiny.py'),
         '--device', 'cpu', '--input-size', '64', '64', '--batch', '2',
         '--warmup', '1', '--iters', '1', '--infer-iters', '1',
         '--out-dir', str(out)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads((out / 'speed_memory.json').read_text())
    rows = {r['method']: r for r in result['rows']}
    assert set(rows) == {'full-ft', 'etta'}
    full, et = rows['full-ft'], rows['etta']
    assert full['mem_ratio'] == 1.0 and full['step_ratio'] == 1.0
    assert not full['is_petl'] and et['is_petl']
    assert et['trainable_params'] < full['trainable_params']
    assert et['checkpoint_mib'] * 5 < full['checkpoint_mib']
    assert et['backbone_autograd'] is False  # frozen: no autograd graph
    assert full['backbone_autograd'] is True
    assert et['peak_mem_mib'] < full['peak_mem_mib']
    # what autograd keeps, per module: nothing of the frozen backbone
    assert full['saved_by_module_mib']['backbone'] > 0
    assert 'backbone' not in et['saved_by_module_mib']
    assert et['saved_by_module_mib']['encoder'] > 0
    assert et['saved_total_mib'] < full['saved_total_mib']
    assert et['checkpointed_layers'] == [] and \
        et['checkpoint_inputs_mib'] == 0
    assert et['losses_finite'] and full['losses_finite']
    assert et['infer_base_ms'] > 0 and full['infer_base_ms'] is None
    assert et['infer_ratio'] == pytest.approx(
        et['infer_ms'] / et['infer_base_ms'])
    assert result['header']['command'].startswith(
        'python tools/analysis_tools/petl_benchmark.py --configs')
    md = (out / 'speed_memory.md').read_text()
    assert '## tiny' in md and 'cores' in md
    assert '- machine load: 1-min load average' in md  # is it quiet?
    # which deformable attention ran on the CPU (mmpetl's op by default)
    assert 'mmpetl.ops.ms_deform_attn' in result['header'][
        'deformable_attention']
    assert '- deformable attention: PyTorch fallback (mmpetl' in md
    assert (out / 'speed_memory.png').stat().st_size > 10_000
    assert (out / 'speed_memory_ckpt.png').stat().st_size > 10_000
    assert '](speed_memory_ckpt.png)' in md and '| saved MiB |' in md


def test_checkpointing_targets_and_chart(tmp_path):
    from mmpetl.analysis.report import plot_ckpt_chart
    rows = with_ratios([
        _row('full-ft', arch='deformable', is_petl=False,
             trainable_pct=100.0, peak_mem_mib=1000.0, step_ms=200.0),
        _row('heads-only', arch='deformable', peak_mem_mib=240.0),
        _row('etta', arch='deformable', peak_mem_mib=600.0, step_ms=140.0),
        _row('etta+ckpt', arch='deformable', peak_mem_mib=390.0,
             step_ms=201.0, saved_total_mib=12.5),
        _row('unipt', arch='deformable', peak_mem_mib=253.0),
        _row('full-ft', arch='detr', is_petl=False, trainable_pct=100.0,
             peak_mem_mib=1000.0),
        _row('heads-only', arch='detr', peak_mem_mib=240.0),
        _row('unipt', arch='detr', peak_mem_mib=251.0),
        _row('etta+ckpt', arch='detr', peak_mem_mib=900.0),
    ])
    checks = {(c['arch'], c['method'], c['target']): c
              for c in check_targets(rows)}
    mem = checks['deformable', 'etta+ckpt',
                 'ET-Deformable-DETR+ckpt peak memory <= 0.40x full FT']
    assert mem['value'] == pytest.approx(0.39) and mem['passed']
    step = checks['deformable', 'etta+ckpt',
                  'ET-Deformable-DETR+ckpt step time <= 1.0x full FT']
    assert step['value'] == pytest.approx(1.005) and not step['passed']
    # the Deformable DETR targets are not applied to DETR
    assert not any(k[:2] == ('detr', 'etta+ckpt') and 'ET-Def' in k[2]
                   for k in checks)
    # UniPT against heads-only of the same architecture: 5% at most
    near = checks['deformable', 'unipt',
                  'UniPT peak memory <= 1.05x heads-only']
    far = checks['detr', 'unipt', 'UniPT peak memory <= 1.05x heads-only']
    assert near['value'] == pytest.approx(253 / 240) and not near['passed']
    assert far['value'] == pytest.approx(251 / 240) and far['passed']
    text = markdown_report(rows, check_targets(rows), dict(
        device_kind='CPU', date='d', machine='m', software='s',
        command='c', setting='x'), ckpt_chart='c.png')
    assert '| etta+ckpt | 10 | 5.00% | 100 | 1.00 MiB (tuner, 1× ' \
        'smaller) | 390 | 0.39× | 12 | 201 | 1.00× |' in text
    assert '](c.png)' in text
    path = tmp_path / 'ckpt.png'
    assert plot_ckpt_chart(rows, str(path)) == str(path)
    assert path.stat().st_size > 10_000
    assert plot_ckpt_chart([rows[0] | dict(error='x')],
                           str(tmp_path / 'none.png')) is None


def test_default_methods_skip_the_pairs_without_a_config():
    tool = load_tool('tools/analysis_tools/petl_benchmark.py')
    pairs, skipped = tool.config_list(tool.parse_args([]))
    methods = {(arch, m) for arch, m, _ in pairs}
    for arch in ('detr_r50_coco', 'deformable-detr_r50_coco'):
        assert (arch, 'etta+ckpt') in methods
        assert (arch, 'lora+ckpt') in methods
    assert ('vit-b16_cifar100', 'etta') in methods
    assert ('vit-b16_cifar100', 'etta+ckpt') not in methods
    assert 'etta+ckpt_vit-b16_cifar100' in skipped
    # a method asked for by name runs where it ships, the other pairs are
    # listed; one that ships for none of the archs asked (a typo) stops
    pairs, skipped = tool.config_list(tool.parse_args(
        ['--methods', 'etta+ckpt']))
    assert {m for _, m, _ in pairs} == {'full-ft', 'etta+ckpt'}
    assert skipped == ['etta+ckpt_vit-b16_cifar100']
    with pytest.raises(SystemExit, match="no config for method 'etta\\+ckpt'"
                       " on any of \\['vit-b16_cifar100'\\]"):
        tool.config_list(tool.parse_args(
            ['--archs', 'vit-b16_cifar100', '--methods', 'etta+ckpt']))
    with pytest.raises(SystemExit, match="method 'eta'"):
        tool.config_list(tool.parse_args(['--methods', 'eta']))


def test_amp_on_cpu_is_refused_with_the_reason():
    proc = subprocess.run(
        [sys.executable, 'tools/analysis_tools/petl_benchmark.py',
         '--device', 'cpu', '--amp', 'bfloat16'], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode != 0
    assert '--amp needs --device cuda' in proc.stderr


def test_dino_rows_join_the_default_run_and_missing_pairs_are_listed():
    """--archs with DINO and the default methods: DINO's shipped configs
    run in the same run, its pairs without a config are reported as not
    measured; a method named explicitly must exist for one arch."""
    tool = load_tool('tools/analysis_tools/petl_benchmark.py')
    assert 'dino-4scale_r50_coco' in tool.EXTRA_ARCHS
    args = tool.parse_args(['--archs', 'detr_r50_coco',
                            'dino-4scale_r50_coco'])
    configs, skipped = tool.config_list(args)
    dino = {m for a, m, _ in configs if a == 'dino-4scale_r50_coco'}
    assert {'full-ft', 'etta', 'lora'} <= dino
    assert 'unipt_dino-4scale_r50_coco' in skipped
    assert not any(s.endswith('_detr_r50_coco') for s in skipped)
    with pytest.raises(SystemExit, match="no config for method 'unipt'"):
        tool.config_list(tool.parse_args([
            '--archs', 'dino-4scale_r50_coco', '--methods', 'unipt']))
    # with explicit methods too, DINO's missing pairs are listed
    configs, skipped = tool.config_list(tool.parse_args([
        '--archs', 'detr_r50_coco', 'dino-4scale_r50_coco', '--methods',
        'etta', 'unipt']))
    assert ('dino-4scale_r50_coco', 'etta') in {(a, m) for a, m, _ in
                                                configs}
    assert skipped == ['unipt_dino-4scale_r50_coco']
    header = dict(device_kind='CPU', date='d', machine='m', software='s',
                  command='c', setting='x', not_measured=skipped)
    assert 'not measured (no config): ' + ', '.join(skipped) in \
        markdown_report([], [], header)


def test_readme_sections_keep_a_partial_run_apart(tmp_path, monkeypatch):
    """``--readme`` with another ``--name`` writes its own section and
    leaves the full table alone."""
    bench = load_tool('tools/analysis_tools/petl_benchmark.py')
    assert bench.readme_marker('cpu', 'speed_memory') == 'bench-cpu'
    assert bench.readme_marker('gpu', 'ckpt_dino') == 'bench-gpu-ckpt_dino'
    page = tmp_path / 'benchmarks' / 'README.md'
    page.parent.mkdir()
    page.write_text('<!-- bench-cpu:start -->\nfull\n<!-- bench-cpu:end -->\n'
                    '<!-- bench-cpu-ckpt_dino:start -->\n'
                    '<!-- bench-cpu-ckpt_dino:end -->\n')
    monkeypatch.setattr(bench, 'ROOT', str(tmp_path))
    bench.write_readme('# title\n\n![chart](ckpt_dino.png)\n## arch\nrow\n',
                       'cpu', 'ckpt_dino')
    text = page.read_text()
    assert 'full' in text  # the full table stays
    section = text.split('ckpt_dino:start -->')[1]
    assert '](results/cpu/ckpt_dino.png)' in section
    assert '#### arch' in section and 'title' not in section

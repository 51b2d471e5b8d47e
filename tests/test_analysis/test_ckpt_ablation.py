"""The checkpointing ablation tool: its variants, and a tiny run end to end
(small Deformable DETR models in place of the R50 configs)."""
import json
import sys
from pathlib import Path

import torch

from mmpetl.models import PETLModel, build_inner_model
from tests.conftest import small_deformable_cfg

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / 'tools' / 'analysis_tools'))
import ckpt_ablation as ablation  # noqa: E402

ETTA = [dict(type='ParallelAdapter', presets=['ffn'], bottleneck=8),
        dict(type='ScaledPrefix', presets=['attn'], num_prefix=4)]


def test_variants_pair_each_attention_with_its_own_full_fine_tuning():
    rows = ablation.variants(['mmcv', 'mmpetl'])
    assert [(r[0], r[3]) for r in rows[:3]] == [
        ('full-ft', 'mmcv'), ('etta', 'mmcv'),
        ('etta+ckpt, keep nothing', 'mmcv')]
    ours = [r for r in rows if r[3] == 'mmpetl']
    assert [r[2] for r in ours] == [
        None, None, [], ['dropout_masks'], ['ms_deform_attn'],
        ['dropout_masks', 'ms_deform_attn']]


def small_build(method, keep, fallback):
    from mmengine.optim import build_optim_wrapper
    torch.manual_seed(0)
    if method == 'full-ft':
        model = build_inner_model(small_deformable_cfg(), None)
        model.init_weights()
    else:
        model = PETLModel(
            model=small_deformable_cfg(), tuners=ETTA,
            trainable=['bbox_head'],
            activation_checkpointing=None if keep is None else dict(
                layers=ablation.LAYERS, keep=keep))
    return model, build_optim_wrapper(model, dict(
        type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-4)))


def test_tiny_run_writes_exact_gradients_and_ratios(tmp_path, monkeypatch):
    monkeypatch.setattr(ablation, 'build', small_build)
    out = tmp_path / 'out'
    ablation.main(['--warmup', '1', '--iters', '1', '--size', '64', '64',
                   '--out-dir', str(out)])
    result = json.loads((out / 'ckpt_ablation.json').read_text())
    rows = {(r['variant'], r['fallback']): r for r in result['rows']}
    assert len(rows) == 9
    for (variant, fallback), row in rows.items():
        if variant.startswith('etta+ckpt'):
            assert row['grad_diff'] == 0.0, (variant, fallback)
        else:
            assert row['grad_diff'] is None
        if variant == 'full-ft':
            assert row['step_x'] == 1.0 and row['mem_x'] == 1.0
    plain = rows['etta', 'mmpetl']
    nothing = rows['etta+ckpt, keep nothing', 'mmpetl']
    both = rows['etta+ckpt, keep masks + attn out', 'mmpetl']
    assert nothing['saved_mib'] < both['saved_mib'] < plain['saved_mib']
    # MMCV's function keeps every sample; mmpetl's op its inputs
    assert rows['etta', 'mmpetl']['saved_mib'] < rows['etta',
                                                      'mmcv']['saved_mib']
    table = (out / 'ckpt_ablation.md').read_text()
    assert "| mmpetl's op (mmpetl.ops.ms_deform_attn) | etta+ckpt, keep " \
        'masks + attn out |' in table
    assert '- load: 1-min load average' in table

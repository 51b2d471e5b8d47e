"""The placement ablation: each placement tunes only what it names, at
the budget."""
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / 'tools' / 'analysis_tools'))
import placement_ablation as ablation  # noqa: E402


def test_vit_placements_run_at_the_budget(tmp_path):
    out = tmp_path / 'out'
    ablation.main(['--model', 'vit', '--placements', 'lora-qkv',
                   'lora-proj', '--seeds', '0', '--iters', '2',
                   '--base-iters', '2', '--batch', '8', '--work-dir',
                   str(tmp_path / 'w'), '--out-dir', str(out)])
    result = json.loads((out / 'vit_placement_ablation.json').read_text())
    runs = {r['method']: r for r in result['runs']}
    assert set(runs) == {'lora-qkv', 'lora-proj'}
    for run in runs.values():
        assert 4.0 < run['trainable_pct'] <= 5.0
        assert 0.0 <= run['top1'] <= 1.0
    # qkv is 3x wider than proj: the same budget buys a smaller rank
    rank = {m: int(r['size'].split('=')[1]) for m, r in runs.items()}
    assert rank['lora-proj'] > rank['lora-qkv']
    text = (out / 'vit_placement_ablation.md').read_text()
    assert text.startswith('# mmpetl placement ablation (vit)')
    assert '| lora-qkv | r=' in text


@pytest.mark.parametrize('model', ['vit', 'detector'])
def test_every_placement_tunes_only_the_linears_it_names(model):
    """Built at its planned size, a placement's LoRA sits on its own
    linears and nowhere else."""
    import re

    from mmengine.config import Config

    from mmpetl.injection.budget import plan_method
    from mmpetl.models import PETLModel
    if model == 'vit':
        from mmengine.registry import init_default_scope
        init_default_scope('mmpretrain')
        cfg, heads = ablation.vit.vit_cfg(), ablation.vit.HEADS
    else:
        et = Config.fromfile(str(ROOT / 'configs' / 'demo' /
                                 ablation.det.ET_CONFIG))
        cfg, heads = et.model.model.to_dict(), list(et.model.trainable)
    expect = dict(qkv=r'\.qkv$', proj=r'\.proj$',
                  sampling=r'\.(sampling_offsets|attention_weights)$',
                  values=r'\.(value_proj|output_proj)$',
                  ffn=r'\.ffn\.')
    for name, spec in ablation.PLACEMENTS[model].items():
        key = name.split('-')[-1]
        if not name.startswith('lora-') or key not in expect:
            continue  # the combined placements and the adapter
        plan = plan_method(cfg, spec, 5.0, heads, name)
        petl = PETLModel(model=cfg, **plan.args)
        names = [record.name for record in petl.injected]
        assert names and all(record.tuner_type == 'LoRA'
                             for record in petl.injected), name
        assert all(re.search(expect[key], n) for n in names), (name, names)

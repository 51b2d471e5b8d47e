"""The ViT classification-transfer benchmark: data split, methods, a run."""
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / 'tools' / 'analysis_tools'))
import vit_accuracy_benchmark as vit  # noqa: E402


def test_splits_are_disjoint_classes_renumbered():
    src = vit.load_split([0, 1, 2, 3, 4])
    tgt = vit.load_split([5, 6, 7, 8, 9])
    for images, labels in (src[:2], tgt[:2], src[2:], tgt[2:]):
        assert images.dtype == torch.uint8 and images.shape[1:] == (1, 28,
                                                                    28)
        assert sorted(labels.unique().tolist()) == [0, 1, 2, 3, 4]
    assert len(src[1]) == len(tgt[1]) == 1500 and len(tgt[3]) == 500
    assert not torch.equal(src[0][:50], tgt[0][:50])


def test_batches_cover_each_epoch_and_depend_on_the_seed():
    a = torch.cat(list(vit.batches(10, 4, 5, seed=0)))
    assert sorted(a[:8].tolist()) != list(range(8))  # shuffled
    assert sorted(torch.cat(list(vit.batches(10, 5, 2, 0))).tolist()) == \
        list(range(10))  # one epoch: every index once
    b = torch.cat(list(vit.batches(10, 4, 5, seed=1)))
    assert not torch.equal(a, b)


def test_benchmark_runs_and_reports_each_method(tmp_path):
    out = tmp_path / 'out'
    vit.main(['--methods', 'full-ft', 'etta', 'vpt-deep', '--seeds', '0',
              '--iters', '3', '--base-iters', '3', '--batch', '8',
              '--work-dir', str(tmp_path / 'w'), '--out-dir', str(out)])
    result = json.loads((out / 'vit_accuracy_transfer.json').read_text())
    rows = {r['method']: r for r in result['rows']}
    assert rows['full-ft']['trainable_pct'] == 100.0
    # budget-matched (default 5%): each knob sized on this d=96 ViT
    runs = {r['method']: r for r in result['runs']}
    assert runs['vpt-deep']['knobs'] == {'p': 61}  # 4 layers x 61 x 96
    assert runs['etta']['knobs'] == {'b': 22, 'l': 8}
    assert runs['full-ft']['size'] == '–' and runs['etta']['budget'] == 5.0
    for method in ('vpt-deep', 'etta'):
        assert abs(rows[method]['trainable_pct'] - 5.0) < 0.1
        assert rows[method]['top1_per_pct'] == (
            rows[method]['mean'] / rows[method]['trainable_pct'])
    assert result['header']['sizes']['etta']['size'] == 'b=22, l=8'
    table = (out / 'vit_accuracy_transfer.md').read_text()
    assert '| etta | b=22, l=8 |' in table and '| vpt-deep | p=61 |' in \
        table and '| top-1 per trainable % |' in table
    assert all(0.0 <= r['mean'] <= 1.0 for r in rows.values())
    assert (tmp_path / 'w' / 'vit_source_3.pth').exists()  # cached base
    assert 'vpt-deep' in (out / 'vit_accuracy_transfer.md').read_text()

"""Count every method on every architecture and write the method tables.

    python tools/misc/method_table.py [--write]

Builds each config in configs/methods/ (full-size models, no data, no
downloads) and counts its trainable parameters; with --write the tables
replace those between the method-table markers of docs/methods.md. Three
tables: every method on DETR, Deformable DETR and ViT-B/16, the methods
shipped for the rest of the DETR family (DINO R50 and Swin-L, Conditional
DETR, DAB-DETR), and every method's measured accuracy at one budget with
its accuracy per trainable % (read from the accuracy benchmarks' JSON in
benchmarks/results/cpu/).
"""
import argparse
import glob
import json
import os.path as osp
import re
import sys

from mmengine.config import Config
from mmengine.registry import MODELS, init_default_scope

import mmpetl  # noqa: F401

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
ARCHS = [('detr_r50_coco', 'DETR R50'),
         ('deformable-detr_r50_coco', 'Deformable DETR R50'),
         ('vit-b16_cifar100', 'ViT-B/16')]
FAMILY_ARCHS = [('dino-4scale_r50_coco', 'DINO 4-scale R50'),
                ('dino-5scale_swin-l_coco', 'DINO 5-scale Swin-L'),
                ('conditional-detr_r50_coco', 'Conditional DETR R50'),
                ('dab-detr_r50_coco', 'DAB-DETR R50')]
# method: (name, formula, where it goes)
METHODS = {
    'full-ft': ('full fine-tuning', 'every weight trains', 'everywhere'),
    'heads-only': ('heads only', 'frozen model, new heads', 'heads'),
    'bitfit': ('BitFit', 'only biases (and heads) train', 'every bias'),
    'adapter': ('parallel adapter', 'FFN(x) + s·up(act(down(x)))',
                'every FFN, b=256'),
    'serial-adapter': ('serial adapter (Houlsby)',
                       'x + m + s·up(act(down(m))), m = MLP(x)',
                       'every FFN, b=64'),
    'lora': ('LoRA', "W + (α/r)·B·A, B=0 at init",
             'attention q/k/v/out (MSDA value/out/offsets), FFN Linears, '
             'r=16'),
    'prefix': ('prefix tuning', 'softmax(q[P_k;K]) [P_v;V]',
               'every attention, l=50'),
    'etta': ('ETTA (ET-*)',
             'adapters in FFNs + scaled prefix Attn + s·Attn(Q,P_k,P_v) '
             "(form='parallel'; ETTA's joint (1-λ)Attn + s·λ·Attn_P: "
             "form='joint'); MSDA: + s·W_o·Attn(q,P_k,P_v)",
             'every FFN (b=256) and attention (l=50)'),
    'etta-steer': ('ETTA-steer (variant)',
                   'adapters in FFNs + steering prefixes: MSDA offsets and '
                   'logits + s·a·S, a = softmax(q P_kᵀ), plus the value '
                   "branch (form='steer+parallel'); MHA q' = q + s·a·P_q "
                   "(form='reweight+parallel')",
                   'every FFN (b=296) and attention (l=8)'),
    'etta-reweight': ('ETTA-reweight (variant)',
                      "adapters in FFNs + q' = q + s·a·P_q, a = "
                      'softmax(q P_kᵀ): re-weights the frozen keys, plus the '
                      "value branch (form='reweight+parallel')",
                      'every FFN (b=288) and attention (l=16)'),
    'utuning': ('U-Tuning, Dual-U-Tuner', 'OP(x) + U(x)',
                'every attention and FFN, b=64'),
    'utuning-mha': ('U-Tuning, MHA-U-Tuner', 'Attn(x) + U(x)',
                    'every attention, b=64'),
    'utuning-ffn': ('U-Tuning, FFN-U-Tuner', 'FFN(x) + U(x)',
                    'every FFN, b=64'),
    'utuning-sequential': ('U-Tuning, sequential Dual', 'OP(x) + U(OP(x))',
                           'every attention and FFN, b=64'),
    'utuning-first-layer': ('U-Tuning, first layer only', 'OP(x) + U(x)',
                            'attention and FFN of layer 0, b=64'),
    'unipt-local': ('UniPT-local (variant)',
                    "UniPT whose decoder-side tokens also read the frozen "
                    "encoder memory sampled at each query's reference "
                    "points (local_read=True)",
                    'as UniPT, plus the memory at the reference points of '
                    'the decoder layers read (Deformable DETR)'),
    'unipt': ('UniPT', 'the authors\' side network fed detached '
              'activations: encoder side memory S, decoder queries mix S '
              '(ReLU + L1), per-image confidences, h + LN(Linear(ReLU(·)))',
              'beside the model: every other encoder/decoder layer + the '
              'last, encoder levels of stride >= 32 (DETR) / embeddings + '
              'every block, recomputed in training (ViT), width d/2'),
    'vpt-shallow': ('VPT-shallow', '[cls, P, x] before layer 1',
                    'ViT input, 10 prompts'),
    'vpt-deep': ('VPT-deep', '[cls, P_i, x] before every layer i',
                 'every ViT layer, 10 prompts'),
}
START, END = '<!-- method-table:start -->', '<!-- method-table:end -->'
#: the accuracy benchmarks' results: (file, what the value is)
ACCURACY = [('benchmarks/results/cpu/accuracy_transfer.json',
             'detection mAP'),
            ('benchmarks/results/cpu/vit_accuracy_transfer.json',
             'ViT top-1')]
#: benchmark methods that are forms of a METHODS row
FORMS = {'etta-joint': "ETTA, joint form (form='joint')"}
DOC = osp.join('docs', 'methods.md')


def method_configs():
    """``{method: [config paths]}`` of configs/methods/. A variant
    ``{method}+{how}_{arch}.py`` (``etta+ckpt``: activation checkpointing)
    trains the parameters of its method, so it has no row of its own."""
    found = {}
    for path in sorted(glob.glob(osp.join(ROOT, 'configs/methods/*.py'))):
        method = osp.basename(path).split('_')[0]
        if '+' not in method:
            found.setdefault(method, []).append(path)
    return found


def count(path):
    cfg = Config.fromfile(path)
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    model = MODELS.build(cfg.model)
    total = sum(p.numel() for p in model.parameters())
    if not hasattr(model, 'tuner_modules'):  # a vanilla model: full FT
        return total, total
    return sum(p.numel() for p in model.parameters() if p.requires_grad), \
        total


def config_path(method, arch):
    return osp.join(ROOT, 'configs', 'methods', f'{method}_{arch}.py')


def build_table(archs=ARCHS, only_shipped=False):
    """One row per method, one column per architecture; ``only_shipped``:
    only the methods with a config for one of ``archs``."""
    rows = ['| method | formula | where | ' +
            ' | '.join(title for _, title in archs) + ' |',
            '|---|---|---|' + '---:|' * len(archs)]
    for key, (name, formula, where) in METHODS.items():
        if only_shipped and not any(osp.exists(config_path(key, arch))
                                    for arch, _ in archs):
            continue
        cells = []
        for arch, _ in archs:
            path = config_path(key, arch)
            if not osp.exists(path):
                cells.append('n/a')
                continue
            trainable, total = count(path)
            cells.append(f'{trainable / 1e6:.2f}M ({100 * trainable / total:.2f}%)')
        rows.append(f'| {name} | {formula} | {where} | ' + ' | '.join(cells) +
                    ' |')
    return '\n'.join(rows)


def accuracy_table(root=ROOT):
    """Every benchmarked method: its size, trainable %, accuracy (mean ±
    std over seeds) and accuracy per trainable %, on each transfer."""
    results = []
    for path, what in ACCURACY:
        with open(osp.join(root, path)) as f:
            data = json.load(f)
        results.append((what, {r['method']: r for r in data['rows']},
                        data['header']['budget'].split(':')[0]))
    methods = []
    for _, rows, _ in results:
        methods += [m for m in rows if m not in methods]
    head = ['method']
    for what, _, _ in results:
        head += [f'{what}: size, trainable %', 'mean ± std',
                 'per trainable %']
    lines = ['| ' + ' | '.join(head) + ' |',
             '|---' + '|---|---:|---:' * len(results) + '|']
    seeds = set()
    for method in methods:
        cells = [FORMS.get(method) or METHODS.get(method, (method, ))[0]]
        for _, rows, _ in results:
            r = rows.get(method)
            if r is None:
                cells += ['n/a'] * 3
                continue
            seeds.add(len(r['seeds']))
            per = r.get('map_per_pct', r.get('top1_per_pct'))
            cells += [f"{r['size']}, {r['trainable_pct']:.2f}%",
                      f"{r['mean']:.3f} ± {r['std']:.3f}", f'{per:.4f}']
        lines.append('| ' + ' | '.join(cells) + ' |')
    budgets = sorted({b for _, _, b in results})
    count = f'{min(seeds)}' if len(seeds) == 1 else \
        f'{min(seeds)}-{max(seeds)}'
    return ('Measured at one budget (' + ', '.join(budgets) +
            f'; {count} seeds; '
            'the d = 128 demo detector and the d = 96 ViT, not the models '
            'above; [benchmarks/README.md](../benchmarks/README.md'
            '#measured-results) has dates, commands and every seed):\n\n' +
            '\n'.join(lines))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--write', action='store_true',
                        help=f'write the tables into {DOC}')
    args = parser.parse_args()
    missing = set(method_configs()) - set(METHODS)
    if missing:
        sys.exit(f'configs/methods has methods the table does not know: '
                 f'{sorted(missing)}')
    known_archs = {a for a, _ in ARCHS + FAMILY_ARCHS}
    stray = sorted(
        osp.basename(p)
        for p in glob.glob(osp.join(ROOT, 'configs/methods/*.py'))
        if osp.basename(p)[:-3].split('_', 1)[1] not in known_archs)
    if stray:
        sys.exit(f'configs/methods has architectures the table does not '
                 f'know: {stray}')
    table = (build_table() + '\n\nThe rest of the DETR family: the methods '
             'shipped for it (DINO Swin-L: also in the Swin backbone, '
             '`backbone_attn`/`backbone_ffn`; the trainable heads of DINO '
             'include its denoising label embedding).\n\n' +
             build_table(FAMILY_ARCHS, only_shipped=True) +
             '\n\nTrainable parameters (and % of all '
             'parameters), counted by `tools/misc/method_table.py` from '
             '`configs/methods/`; n/a: the method does not apply (VPT needs a '
             "ViT's token sequence).\n\n" + accuracy_table())
    print(table)
    if args.write:
        doc = osp.join(ROOT, DOC)
        text = open(doc).read()
        if START not in text:
            sys.exit(f'{DOC} has no {START} marker')
        text = re.sub(re.escape(START) + '.*?' + re.escape(END),
                      START + '\n' + table + '\n' + END, text, flags=re.S)
        open(doc, 'w').write(text)


if __name__ == '__main__':
    main()

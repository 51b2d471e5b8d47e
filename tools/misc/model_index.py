"""Write the model index: one ``metafile.yml`` per algorithm and the root
``model-index.yml``, in MMDetection's model-index format.

    python tools/misc/model_index.py           # prints what would change
    python tools/misc/model_index.py --write   # writes the files

Every shipped config (``configs/*.py``, ``configs/methods/*.py``,
``configs/demo/*.py``) is one model of its algorithm's collection
(``configs/metafiles/<algorithm>/metafile.yml``). Metadata: the training
data, the epochs of the entry configs (from the ``{N}xb{B}-{E}e`` part of
their name), and where a benchmark measured the config (or the method
config an entry inherits): the trainable parameters (%) and the storage
per task (the tuner checkpoint; the whole model for full fine-tuning),
from ``benchmarks/results/cpu/speed_memory.json`` and, for the demo
configs, ``accuracy_transfer.json``, whose bbox mAP on the demo target
(mean of its seeds) is the only measured result. Nothing is downloadable,
so no model lists ``Weights``.
"""
import argparse
import glob
import json
import os.path as osp
import re
import sys
from typing import Dict, List, Optional, Sequence, Tuple

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
RESULTS = 'benchmarks/results/cpu'
INDEX = 'model-index.yml'
METAFILES = 'configs/metafiles'

# algorithm -> (collection name, architecture terms, what it is)
COLLECTIONS = {
    'etta': ('ETTA', ['Parallel Adapter', 'Scaled Prefix'],
             'adapters beside every FFN, scaled prefixes in every '
             'attention (the ET-* detectors); its variants etta-steer and '
             'etta-reweight use the steering / re-weighting prefix forms'),
    'adapter': ('Parallel Adapter', ['Parallel Adapter'],
                'adapters beside every FFN'),
    'serial-adapter': ('Serial Adapter', ['Serial Adapter'],
                       'Houlsby adapters after every FFN'),
    'lora': ('LoRA', ['LoRA'], 'low-rank updates of the attention and '
             'FFN Linears'),
    'prefix': ('Prefix Tuning', ['Prefix Tuning'],
               'learned keys and values in every attention'),
    'bitfit': ('BitFit', ['BitFit'], 'only the biases (and heads) train'),
    'utuning': ('U-Tuning', ['U-Tuner'], 'U-Tuners beside attention '
                'and FFN operators'),
    'unipt': ('UniPT', ['UniPT'], 'a network beside the frozen model, '
              'fed its detached layer outputs; its variant unipt-local '
              'also reads the encoder memory at the reference points'),
    'vpt': ('VPT', ['Visual Prompt Tuning'], 'prompt tokens in a ViT'),
    'heads-only': ('Heads Only', ['Frozen Model'],
                   'a frozen model with new heads'),
    'full-ft': ('Full Fine-Tuning', ['Full Fine-Tuning'],
                'every weight trains (the reference)'),
}
DEMO = {  # demo config -> (algorithm, accuracy_transfer.json method)
    # the accuracy benchmark's etta is budget-sized (b=166, l=8), not this
    # config's ETTA (b=128, l=32): no number of it belongs to this config
    'et-deformable-detr_mnv2_demo-target.py': ('etta', None),
    'deformable-detr_mnv2_demo-target-full.py': ('full-ft', 'full-ft'),
    'deformable-detr_mnv2_demo-target-heads.py': ('heads-only',
                                                  'heads-only'),
    'deformable-detr_mnv2_demo-source.py': ('full-ft', None),
}


def shipped_configs(root: str = ROOT) -> List[str]:
    """Every shipped config, relative to the repository root."""
    found = []
    for pattern in ('configs/*.py', 'configs/methods/*.py',
                    'configs/demo/*.py'):
        found += sorted(osp.relpath(p, root) for p in
                        glob.glob(osp.join(root, pattern)))
    return found


def algorithm_of(config: str) -> str:
    """The algorithm (collection) a shipped config belongs to."""
    name = osp.basename(config)
    folder = osp.basename(osp.dirname(config))
    if folder == 'demo':
        return DEMO[name][0]
    if folder != 'methods':  # the entry configs are ET-*: ETTA
        return 'etta'
    method = name.split('_')[0].split('+')[0]
    if method.startswith('utuning'):
        return 'utuning'
    if method.startswith('etta'):  # ETTA's variants (etta-steer, ...)
        return 'etta'
    if method.startswith('vpt'):
        return 'vpt'
    if method.startswith('unipt'):  # UniPT's variant unipt-local
        return 'unipt'
    return method


def method_config(config: str, root: str = ROOT) -> Optional[str]:
    """The method config an entry config inherits (its only ``_base_``),
    or the config itself."""
    if osp.basename(osp.dirname(config)) != 'configs':
        return config
    text = open(osp.join(root, config)).read()
    bases = re.findall(r"\./(methods/[\w.+-]+\.py)", text)
    if len(bases) == 1:
        return f'configs/{bases[0]}'
    inherited = re.findall(r"\./(et-[\w.+-]+\.py)", text)
    if len(inherited) == 1:
        return method_config(f'configs/{inherited[0]}', root)
    return config


def _load(name: str, root: str) -> dict:
    path = osp.join(root, RESULTS, name)
    return json.load(open(path)) if osp.isfile(path) else {'rows': []}


def measurements(root: str = ROOT) -> Tuple[Dict, Dict]:
    """``({config: speed_memory row}, {method: accuracy_transfer row})``."""
    speed = {r['config']: r for r in _load('speed_memory.json', root)['rows']
             if 'config' in r}
    accuracy = {r['method']: r
                for r in _load('accuracy_transfer.json', root)['rows']}
    return speed, accuracy


def training_data(config: str) -> str:
    name = osp.basename(config)
    if osp.basename(osp.dirname(config)) == 'demo':
        return ('petl_demo source (synthetic)' if 'source' in name else
                'petl_demo target (synthetic)')
    return 'CIFAR-100' if 'cifar100' in name else 'COCO'


def model_entry(config: str, speed: Dict, accuracy: Dict,
                root: str = ROOT) -> dict:
    """One model of the index: Name, In Collection, Config, Metadata
    (and Results where a benchmark measured them)."""
    algorithm = algorithm_of(config)
    name = osp.splitext(osp.basename(config))[0]
    meta = {'Training Data': training_data(config)}
    schedule = re.search(r'_(\d+)xb(\d+)-(\d+)e_', name)
    if schedule:
        meta['Training Resources'] = f'{schedule.group(1)}x GPUs'
        meta['Batch Size'] = int(schedule.group(1)) * int(schedule.group(2))
        meta['Epochs'] = int(schedule.group(3))
    results = []
    row = speed.get(method_config(config, root))
    if row is not None:
        meta['Trainable Parameters (%)'] = round(row['trainable_pct'], 2)
        meta['Storage per Task (MiB)'] = round(row['checkpoint_mib'], 2)
    demo = DEMO.get(osp.basename(config)) \
        if osp.basename(osp.dirname(config)) == 'demo' else None
    if demo and demo[1] in accuracy:
        acc = accuracy[demo[1]]
        meta['Trainable Parameters (%)'] = round(acc['trainable_pct'], 2)
        meta['Storage per Task (MiB)'] = round(acc['checkpoint_mib'], 2)
        results.append({'Task': 'Object Detection',
                        'Dataset': 'petl_demo target (synthetic)',
                        'Metrics': {'box AP': round(100 * acc['mean'], 1),
                                    'box AP@0.5': round(100 * acc['ap50'],
                                                        1)}})
    entry = {'Name': name, 'In Collection': COLLECTIONS[algorithm][0],
             'Config': config, 'Metadata': meta}
    if results:
        entry['Results'] = results
    return entry


def _scalar(value) -> str:
    if isinstance(value, str):
        return value if re.fullmatch(r'[\w./+\- ()%@]+', value) and \
            not value[0].isdigit() else json.dumps(value)
    return json.dumps(value)


def to_yaml(data, indent: int = 0) -> str:
    """Block YAML of dicts, lists and scalars (what the index holds)."""
    pad = ' ' * indent
    lines = []
    if isinstance(data, dict):
        for key, value in data.items():
            if isinstance(value, (dict, list)) and value:
                lines.append(f'{pad}{key}:')
                lines.append(to_yaml(value, indent + 2))
            else:
                lines.append(f'{pad}{key}: {_scalar(value)}')
    else:
        for item in data:
            if isinstance(item, dict):
                body = to_yaml(item, indent + 2).splitlines()
                lines.append(f'{pad}- {body[0].lstrip()}')
                lines += body[1:]
            else:
                lines.append(f'{pad}- {_scalar(item)}')
    return '\n'.join(lines)


def build_index(root: str = ROOT) -> Dict[str, str]:
    """``{path: text}`` of every metafile and the root model index."""
    speed, accuracy = measurements(root)
    models: Dict[str, List[dict]] = {}
    for config in shipped_configs(root):
        models.setdefault(algorithm_of(config), []).append(
            model_entry(config, speed, accuracy, root))
    header = ('# Generated by tools/misc/model_index.py --write from the '
              'shipped configs and\n# benchmarks/results/cpu/*.json; do not '
              'edit by hand.\n')
    files = {}
    for algorithm in sorted(models):
        name, architecture, what = COLLECTIONS[algorithm]
        collection = {'Name': name, 'Metadata': {
            'Training Techniques': ['AdamW', 'Parameter-Efficient '
                                    'Transfer Learning'],
            'Architecture': architecture},
            'README': 'docs/methods.md', 'Description': what}
        text = to_yaml({'Collections': [collection],
                        'Models': models[algorithm]})
        files[f'{METAFILES}/{algorithm}/metafile.yml'] = header + text + '\n'
    files[INDEX] = header + to_yaml({'Import': [
        f'{METAFILES}/{a}/metafile.yml' for a in sorted(models)]}) + '\n'
    return files


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--write', action='store_true',
                        help='write the files (default: list what differs)')
    args = parser.parse_args(argv)
    stale = []
    for path, text in build_index().items():
        full = osp.join(ROOT, path)
        old = open(full).read() if osp.isfile(full) else None
        if old == text:
            continue
        stale.append(path)
        if args.write:
            import os
            os.makedirs(osp.dirname(full) or '.', exist_ok=True)
            with open(full, 'w') as f:
                f.write(text)
    verb = 'wrote' if args.write else 'out of date'
    print(f'{verb}: {", ".join(stale)}' if stale else 'model index is up to '
          'date')
    return 1 if stale and not args.write else 0


if __name__ == '__main__':
    sys.exit(main())

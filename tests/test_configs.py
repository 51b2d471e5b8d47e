"""The shipped configs build through MMEngine with mmdet::/mmpretrain:: bases."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import MODELS, init_default_scope

import mmpetl  # noqa: F401
from tests.conftest import load_tool

ROOT = Path(__file__).resolve().parents[1]


def build(path, **overrides):
    cfg = Config.fromfile(str(ROOT / path))
    cfg.merge_from_dict(overrides)
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    return cfg, MODELS.build(cfg.model)


def test_et_deformable_detr_coco_full_size():
    cfg, model = build('configs/et_deformable_detr_coco.py')
    assert type(model).__name__ == 'PETLModel'
    assert cfg.optim_wrapper.constructor == 'mmpetl.PETLOptimWrapperConstructor'
    names = {n for n, _ in model.tuner_modules()}
    for i in range(6):  # 6 encoder + 6 decoder layers
        assert f'encoder.layers.{i}.ffn.adapter' in names
        assert f'encoder.layers.{i}.self_attn.prefix' in names
        assert f'decoder.layers.{i}.ffn.adapter' in names
        assert f'decoder.layers.{i}.self_attn.attn.prefix' in names
        assert f'decoder.layers.{i}.cross_attn.prefix' in names
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    assert 0.01 <= trainable / total <= 0.10
    assert model.bbox_head.num_classes == 80


def test_et_detr_r50_coco_builds():
    _, model = build('configs/et-detr_r50_8xb2-150e_coco.py')
    names = {n for n, _ in model.tuner_modules()}
    assert 'decoder.layers.5.cross_attn.attn.prefix' in names
    assert 'encoder.layers.5.ffn.adapter' in names


def test_et_vit_cifar100_builds_small():
    # the real ViT-B is slow to build on CPU; same config, smaller arch
    cfg, model = build(
        'configs/et-vit-b16_8xb16-200e_cifar100.py',
        **{'model.model.backbone.arch': 'deit-tiny',
           'model.model.head.in_channels': 192})
    assert cfg.default_scope == 'mmpretrain'
    assert cfg.train_dataloader.dataset.type == 'CIFAR100'
    assert model.head.num_classes == 100
    names = {n for n, _ in model.tuner_modules()}
    assert 'backbone.layers.11.ffn.adapter' in names
    assert 'backbone.layers.0.attn.prefix' in names
    out = model(torch.randn(1, 3, 224, 224), mode='tensor')
    assert out.shape == (1, 100)


def test_print_injection_dry_run():
    out = subprocess.run(
        [sys.executable, str(ROOT / 'tools/misc/print_injection.py'),
         str(ROOT / 'configs/et_deformable_detr_coco.py')],
        capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert 'decoder.layers.5.cross_attn' in out
    assert 'DeformablePrefix' in out and 'ParallelAdapter' in out
    assert 'tuners: 30 modules' in out  # 12 FFN + 6 MSDA enc + 6+6 dec attn
    assert 'trainable:' in out and 'TOTAL trainable' in out


def test_et_detr_vit_backbone_config_builds_small():
    _, model = build(
        'configs/et-detr_vit-b16_8xb2-150e_coco.py',
        **{'model.model.backbone.arch': 'deit-tiny',
           'model.model.backbone.img_size': 64,
           'model.model.backbone.init_cfg': None,
           'model.model.neck.in_channels': [192]})
    names = {n for n, _ in model.tuner_modules()}
    assert 'backbone.layers.11.ffn.adapter' in names
    assert 'backbone.layers.0.attn.prefix' in names
    assert 'decoder.layers.5.cross_attn.attn.prefix' in names
    assert not any(p.requires_grad for p in model.backbone.parameters()
                   if not any(p is q for _, t in model.tuner_modules()
                              for q in t.parameters()))


def test_activation_checkpointing_base_config_turns_it_on(tmp_path, capsys):
    """configs/_base_/activation_checkpointing.py + one line: the method's
    model (type, tuners, trainable: the arch base's `_delete_` merge is
    kept) gains the key, it survives a dump/reload, and print_injection
    lists the 12 checkpointed layers."""
    path = 'configs/methods/etta+ckpt_deformable-detr_r50_coco.py'
    cfg = Config.fromfile(str(ROOT / path))
    plain = Config.fromfile(
        str(ROOT / 'configs/methods/etta_deformable-detr_r50_coco.py'))
    assert cfg.model.activation_checkpointing == ['encoder_layers',
                                                  'decoder_layers']
    assert cfg.model.to_dict() == dict(
        plain.model.to_dict(),
        activation_checkpointing=['encoder_layers', 'decoder_layers'])
    cfg.dump(str(tmp_path / 'dumped.py'))
    again = Config.fromfile(str(tmp_path / 'dumped.py'))
    assert again.model.to_dict() == cfg.model.to_dict()
    load_tool('tools/misc/print_injection.py').main([str(ROOT / path)])
    out = capsys.readouterr().out
    assert 'tuners: 30 modules' in out
    assert 'activation checkpointing: 12 modules, recomputed in backward' \
        in out
    for name in ('encoder.layers.0', 'decoder.layers.5'):
        assert f'\n{name} ' in out


def zoo_weights(folder, package='mmdet'):
    """URLs of the checkpoints the installed MMDetection's (or
    MMPretrain's) metafile lists for a config folder: configs name them
    at ``load_from`` exactly as the model zoo does."""
    module = __import__(package)
    text = (Path(module.__file__).parent / '.mim' / 'configs' / folder /
            'metafile.yml').read_text()
    return set(re.findall(r'Weights:\s*(\S+)', text))


# config, mmdet config folder, tuner names that must be there
NEW_ET = {
    'configs/et-dino-4scale_r50_8xb2-12e_coco.py': (
        'dino', ['encoder.layers.5.self_attn.prefix',
                 'decoder.layers.5.self_attn.attn.prefix',
                 'decoder.layers.5.cross_attn.prefix',
                 'decoder.layers.5.ffn.adapter']),
    'configs/et-conditional-detr_r50_8xb2-50e_coco.py': (
        'conditional_detr', ['encoder.layers.5.self_attn.attn.prefix',
                             'decoder.layers.5.self_attn.prefix',
                             'decoder.layers.5.cross_attn.prefix',
                             'decoder.layers.0.ffn.adapter']),
    'configs/et-dab-detr_r50_8xb2-50e_coco.py': (
        'dab_detr', ['decoder.layers.0.self_attn.prefix',
                     'decoder.layers.5.cross_attn.prefix',
                     'encoder.layers.5.ffn.adapter']),
    'configs/et-dino-5scale_swin-l_8xb2-12e_coco.py': (
        'dino', ['backbone.stages.0.blocks.1.attn.w_msa.prefix',
                 'backbone.stages.2.blocks.17.attn.w_msa.prefix',
                 'backbone.stages.3.blocks.1.ffn.adapter',
                 'decoder.layers.5.cross_attn.prefix',
                 'encoder.layers.5.ffn.adapter']),
}


@pytest.mark.parametrize('path', list(NEW_ET))
def test_et_configs_of_the_detr_family_full_size(path):
    """ET-DINO (R50, Swin-L), ET-Conditional-DETR, ET-DAB-DETR build at
    full size on their mmdet:: bases: tuners where ETTA puts them, 1-10%
    trainable, a model-zoo checkpoint name at load_from."""
    folder, expected = NEW_ET[path]
    cfg, model = build(path)
    names = {n for n, _ in model.tuner_modules()}
    assert set(expected) <= names
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    assert 0.01 <= trainable / total <= 0.10
    assert cfg.load_from in zoo_weights(folder)
    if folder == 'dino':  # new classes: a new denoising label embedding
        assert model.dn_query_generator.label_embedding.weight.requires_grad
    if folder == 'conditional_detr':  # P_k in the [content; pos] space
        prefix = model.decoder.layers[5].cross_attn.prefix
        assert prefix.prefix_k.shape == (50, 512)


def test_new_method_configs_name_zoo_checkpoints():
    for arch, folder in [('dino-4scale_r50_coco', 'dino'),
                         ('dino-5scale_swin-l_coco', 'dino'),
                         ('conditional-detr_r50_coco', 'conditional_detr'),
                         ('dab-detr_r50_coco', 'dab_detr')]:
        for path in [f'configs/_base_/archs/{arch}.py',
                     f'configs/methods/full-ft_{arch}.py']:
            load_from = Config.fromfile(str(ROOT / path)).load_from
            assert load_from in zoo_weights(folder), path
    for path, folder in [('configs/_base_/archs/detr_r50_coco.py', 'detr'),
                         ('configs/_base_/archs/deformable-detr_r50_coco.py',
                          'deformable_detr')]:
        load_from = Config.fromfile(str(ROOT / path)).load_from
        assert load_from in zoo_weights(folder), path
    vit = Config.fromfile(
        str(ROOT / 'configs/_base_/archs/vit-b16_cifar100.py')).load_from
    assert vit in zoo_weights('vision_transformer', 'mmpretrain')


# ------------------------------------------- names, one source of truth
ENTRY_METHODS = {  # entry config (MMDetection's naming) -> its method
    'et-conditional-detr_r50_8xb2-50e_coco.py':
        'etta_conditional-detr_r50_coco.py',
    'et-dab-detr_r50_8xb2-50e_coco.py': 'etta_dab-detr_r50_coco.py',
    'et-deformable-detr_r50_16xb2-50e_coco.py':
        'etta_deformable-detr_r50_coco.py',
    'et-detr_r50_8xb2-150e_coco.py': 'etta_detr_r50_coco.py',
    'et-dino-4scale_r50_8xb2-12e_coco.py': 'etta_dino-4scale_r50_coco.py',
    'et-dino-5scale_swin-l_8xb2-12e_coco.py':
        'etta_dino-5scale_swin-l_coco.py',
    'et-vit-b16_8xb16-200e_cifar100.py': 'etta_vit-b16_cifar100.py',
}
NAME = re.compile(r'[a-z0-9.+]+(-[a-z0-9.+]+)*(_[a-z0-9.+]+(-[a-z0-9.+]+)*)*'
                  r'\.py')


def test_config_names_use_one_separator_rule():
    """`-` inside a component, `_` between components (MMDetection's
    scheme); entry configs carry the `{N}xb{B}-{E}e` schedule part; the
    arch and tuner bases are named like the methods."""
    for folder in ('configs', 'configs/methods', 'configs/demo',
                   'configs/_base_/archs', 'configs/_base_/tuners'):
        for path in sorted((ROOT / folder).glob('*.py')):
            if path.name == 'et_deformable_detr_coco.py':
                continue  # the entry the README and the mission name
            assert NAME.fullmatch(path.name), path
    for path in (ROOT / 'configs').glob('et-*.py'):
        assert re.search(r'_\d+xb\d+-\d+e_', path.name), path
    methods = {p.name.split('_')[0].split('+')[0]
               for p in (ROOT / 'configs/methods').glob('*.py')}
    tuners = {p.stem for p in (ROOT / 'configs/_base_/tuners').glob('*.py')}
    assert tuners - {'utuning'} <= methods | {'utuning'}


@pytest.mark.parametrize('entry', list(ENTRY_METHODS))
def test_entry_config_is_its_method_config(entry):
    """Each ET entry config only inherits its method config: nothing of
    its own can drift (the ViT's bottleneck is etta.py's 256, ETTA's
    budget: ~6.3% of ViT-B/16 trainable, as on the detectors)."""
    text = (ROOT / 'configs' / entry).read_text()
    code = [line for line in text.splitlines()
            if line.strip() and not line.startswith('#')]
    assert code == [f"_base_ = ['./methods/{ENTRY_METHODS[entry]}']"]
    assert (ROOT / 'configs/methods' / ENTRY_METHODS[entry]).exists()
    if 'vit' in entry:
        etta = Config.fromfile(str(ROOT / 'configs/_base_/tuners/etta.py'))
        cfg = Config.fromfile(str(ROOT / 'configs' / entry))
        assert [t.to_dict() if hasattr(t, 'to_dict') else dict(t)
                for t in cfg.model.tuners] == [
                    t.to_dict() if hasattr(t, 'to_dict') else dict(t)
                    for t in etta.tuners]


def test_readme_entry_inherits_the_mmdetection_named_config():
    old = Config.fromfile(str(ROOT / 'configs/et_deformable_detr_coco.py'))
    new = Config.fromfile(
        str(ROOT / 'configs/et-deformable-detr_r50_16xb2-50e_coco.py'))
    assert old.model.to_dict() == new.model.to_dict()
    assert old.load_from == new.load_from


def test_model_index_lists_every_shipped_config():
    """model-index.yml imports one metafile per algorithm; together they
    list every shipped config once, every listed config exists, and the
    files are what tools/misc/model_index.py writes now."""
    import yaml
    tool = load_tool('tools/misc/model_index.py')
    index = yaml.safe_load((ROOT / 'model-index.yml').read_text())
    listed = []
    for metafile in index['Import']:
        data = yaml.safe_load((ROOT / metafile).read_text())
        collections = {c['Name'] for c in data['Collections']}
        for model in data['Models']:
            assert model['In Collection'] in collections
            assert {'Training Data'} <= set(model['Metadata'])
            assert 'Weights' not in model  # nothing is downloadable
            listed.append(model['Config'])
    assert len(listed) == len(set(listed))
    assert all((ROOT / path).is_file() for path in listed)
    shipped = [p.relative_to(ROOT).as_posix() for folder in
               ('configs', 'configs/methods', 'configs/demo')
               for p in (ROOT / folder).glob('*.py')]
    assert sorted(listed) == sorted(shipped)
    for path, text in tool.build_index().items():
        assert (ROOT / path).read_text() == text, \
            f'{path} is stale: run python tools/misc/model_index.py --write'


def test_model_index_numbers_come_from_the_benchmarks():
    import json

    import yaml
    speed = {r['config']: r for r in json.loads(
        (ROOT / 'benchmarks/results/cpu/speed_memory.json').read_text())[
            'rows']}
    data = yaml.safe_load(
        (ROOT / 'configs/metafiles/etta/metafile.yml').read_text())
    models = {m['Config']: m for m in data['Models']}
    row = speed['configs/methods/etta_deformable-detr_r50_coco.py']
    for config in ('configs/methods/etta_deformable-detr_r50_coco.py',
                   'configs/et-deformable-detr_r50_16xb2-50e_coco.py',
                   'configs/et_deformable_detr_coco.py'):
        meta = models[config]['Metadata']
        assert meta['Trainable Parameters (%)'] == round(
            row['trainable_pct'], 2)
        assert meta['Storage per Task (MiB)'] == round(
            row['checkpoint_mib'], 2)
    # a config no benchmark measured has no numbers
    assert 'Trainable Parameters (%)' not in models[
        'configs/et-conditional-detr_r50_8xb2-50e_coco.py']['Metadata']


@pytest.mark.parametrize('name', sorted(
    p.name for p in (ROOT / 'configs' / 'demo').glob('*.py')))
def test_demo_configs_are_seeded(name):
    """`make demo` is reproducible: every demo config (the target ones
    inherit it from the source config) fixes MMEngine's seed."""
    cfg = Config.fromfile(str(ROOT / "configs" / "demo" / name))
    assert cfg.get('randomness', {}).get('seed') == 0

"""Every DETR-family detector of the *installed* MMDetection takes mmpetl's
tuners, found from its config folders, not from a hand list.

Discovery: every ``type='X'`` in the package's ``.mim/configs`` whose class
in MMDetection's registry subclasses ``DetectionTransformer`` names a
family; every config in the folders that define one is loaded and one
variant is kept per (detector, backbone, box refinement, two-stage), e.g.
Deformable DETR plain / refine / refine + two-stage and DINO R50 / Swin-L.
A family MMDetection adds later is picked up the same way and runs the same
checks (a backbone with no shrink rule fails, naming it); a family that
cannot run offline is skipped with its reason in ``SKIP``.

Each variant is shrunk by ``tests/conftest.py``'s ``small_family_cfg``
(ResNet-18 or a one-block-per-stage Swin-T with a shifted-window block,
1 encoder + 2 decoder layers, 10 queries; 64 px images) and wrapped with
the shipped ETTA, LoRA and parallel-adapter tuner configs
(``configs/_base_/tuners``; their ``backbone_*`` twins too where the
backbone has attention/FFN blocks).
Checks: the vanilla state-dict keys are kept; what trains is exactly the
tuners plus the class-dependent parts (found by building the detector with
another number of classes: the heads, and DINO's label embedding); the
tuners stay within budget; the methods are exact at init; one loss step
reaches every tuner and no frozen weight.
"""
import functools
import re
from pathlib import Path

import mmdet
import pytest
import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.registry import init_default_scope

from mmpetl.injection.presets import detect_arch, matching_presets
from mmpetl.models import PETLModel, build_inner_model
from mmpetl.tuners import TunerHostError
from mmpetl.utils import quiet_init_weights
from tests.conftest import det_batch, small_family_cfg

ROOT = Path(__file__).resolve().parents[2]
MMDET_CONFIGS = Path(mmdet.__file__).parent / '.mim' / 'configs'
#: families that cannot run here, with the reason
SKIP = {
    'GroundingDINO': 'builds a Hugging Face BERT text encoder '
                     '(bert-base-uncased) that is downloaded at build time; '
                     'nothing may download in the tests',
}
#: tuner parameters per base parameter, at most (the shipped configs
#: measure 4-6% at full size; small models have relatively wider tuners)
TUNER_BUDGET = 0.10
METHODS = ('etta', 'lora', 'adapter')


def _detr_classes():
    """{name: class} of every DETR-family detector MMDetection registers."""
    from mmdet.models.detectors.base_detr import DetectionTransformer
    from mmdet.registry import MODELS
    init_default_scope('mmdet')
    return {name: cls for name, cls in MODELS.module_dict.items()
            if isinstance(cls, type) and
            issubclass(cls, DetectionTransformer) and
            cls is not DetectionTransformer}


@functools.lru_cache(None)
def family_configs():
    """{class name: [configs that declare it]} found in the package."""
    classes = _detr_classes()
    found = {}
    for path in sorted(MMDET_CONFIGS.glob('*/**/*.py')):
        declared = set(re.findall(r"type\s*=\s*['\"]([\w.]+)['\"]",
                                  path.read_text()))
        for name in sorted(declared & set(classes)):
            found.setdefault(name, []).append(path)
    return found


@functools.lru_cache(None)
def variants():
    """``(id, config path)``: one config per (detector, backbone, refine,
    two-stage) among the configs of the folders defining a family."""
    classes = _detr_classes()
    folders = sorted({p.relative_to(MMDET_CONFIGS).parts[0]
                      for name, paths in family_configs().items()
                      if name not in SKIP for p in paths})
    chosen = {}
    for folder in folders:
        for path in sorted((MMDET_CONFIGS / folder).glob('**/*.py')):
            model = Config.fromfile(str(path)).get('model', {})
            if model.get('type') not in classes or model['type'] in SKIP:
                continue
            key = (model['type'], model['backbone']['type'],
                   'refine' if model.get('with_box_refine') else '',
                   'twostage' if model.get('as_two_stage') else '')
            chosen.setdefault('-'.join(k for k in key if k), path)
    return sorted(chosen.items())


def class_dependent(path: Path):
    """Parameter names whose shape changes with the number of classes."""
    shapes = [{n: p.shape for n, p in build_inner_model(
        small_family_cfg(path, k)).named_parameters()} for k in (3, 4)]
    return sorted(n for n in shapes[0] if shapes[0][n] != shapes[1][n])


@functools.lru_cache(None)
def vanilla(variant: str):
    """(config dict, initialised vanilla model, class-dependent modules)"""
    path = dict(variants())[variant]
    cfg = small_family_cfg(path)
    torch.manual_seed(0)
    model = build_inner_model(cfg)
    quiet_init_weights(model)
    heads = sorted({'bbox_head' if n.startswith('bbox_head.') else
                    n.rsplit('.', 1)[0] for n in class_dependent(path)})
    return cfg, model.eval(), heads


def shipped_tuners(method: str, model: nn.Module):
    """The shipped tuner config, also in a transformer backbone."""
    tuners = Config.fromfile(
        str(ROOT / 'configs/_base_/tuners' / f'{method}.py')).tuners
    names = [n for n, _ in model.named_modules() if n]
    here = matching_presets(names, detect_arch(model))
    out = []
    for tuner in tuners:
        tuner = dict(tuner)
        tuner['presets'] = list(tuner['presets']) + [
            f'backbone_{p}' for p in tuner['presets']
            if f'backbone_{p}' in here]
        out.append(tuner)
    return out


def flat_tensors(out):
    if torch.is_tensor(out):
        return [out]
    flat = []
    for item in out:
        flat += flat_tensors(item) if isinstance(item, (list, tuple)) else (
            [item] if torch.is_tensor(item) else [])
    return flat


def seeded_loss(model, batch):
    """Training loss with dropout off and DINO's denoising noise fixed."""
    torch.manual_seed(1)
    inputs, samples = batch
    loss, _ = model.parse_losses(model(inputs, samples, mode='loss'))
    return loss


# -- the tests ---------------------------------------------------------------
def test_discovery_finds_every_registered_family():
    """Every DETR-family class MMDetection registers is found in its
    configs or skipped with a reason, and the known ones are there."""
    found = family_configs()
    registered = set(_detr_classes())
    assert registered <= set(found) | set(SKIP), (
        f'DETR-family detectors with no config to test: '
        f'{sorted(registered - set(found) - set(SKIP))}')
    assert set(SKIP) <= registered, 'a SKIP entry names no family any more'
    ids = [v for v, _ in variants()]
    for expected in ('DETR-ResNet', 'DeformableDETR-ResNet',
                     'DeformableDETR-ResNet-refine',
                     'DeformableDETR-ResNet-refine-twostage',
                     'DINO-ResNet-refine-twostage',
                     'DINO-SwinTransformer-refine-twostage',
                     'ConditionalDETR-ResNet', 'DABDETR-ResNet'):
        assert expected in ids
    # every non-skipped family has a variant
    assert {v.split('-')[0] for v in ids} == set(found) - set(SKIP)


CASES = [(v, m) for v, _ in variants() for m in METHODS]


@pytest.mark.parametrize('variant,method', CASES,
                         ids=[f'{v}-{m}' for v, m in CASES])
def test_family_takes_tuners(variant, method):
    cfg, base, heads = vanilla(variant)
    tuners = shipped_tuners(method, base)
    model = PETLModel(model=cfg, tuners=tuners, trainable=heads)
    # vanilla keys kept: a vanilla state dict loads, only tuner keys are new
    loaded = model.load_state_dict(base.state_dict(), strict=False)
    assert loaded.missing_keys == [] and loaded.unexpected_keys == []
    tuner_keys = {k for k in model.state_dict()
                  if any(k.startswith(n + '.')
                         for n, _ in model.tuner_modules())}
    assert set(model.state_dict()) - tuner_keys == set(base.state_dict())
    # what trains: the tuners and the class-dependent parts, nothing else
    tuner_ids = model.tuner_parameter_ids()
    head_names = {n for n, _ in model.named_parameters()
                  if any(n.startswith(h + '.') for h in heads)}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == head_names | {
        n for n, p in model.named_parameters() if id(p) in tuner_ids}
    tuner_params = sum(p.numel() for p in model.parameters()
                       if id(p) in tuner_ids)
    base_params = sum(p.numel() for p in base.parameters())
    assert 0 < tuner_params <= TUNER_BUDGET * base_params
    # exact at init (ETTA: parallel prefixes with P_v = 0; zero-init B/up)
    batch = det_batch()
    model.eval()
    with torch.no_grad():
        got = flat_tensors(model(*batch, mode='tensor'))
        expected = flat_tensors(base(*batch, mode='tensor'))
    assert len(got) == len(expected) > 0
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # one loss step: every tuner runs and learns, no frozen weight does
    model.train()
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.eval()
    for _, tuner in model.tuner_modules():
        tuner.recording = True
    seeded_loss(model, batch).backward()
    assert not [n for n, p in model.named_parameters()
                if not p.requires_grad and p.grad is not None]
    idle = []
    for name, tuner in model.tuner_modules():
        assert tuner.last_stats, f'{name} was not in the forward'
        if not any(p.grad is not None and p.grad.abs().max() > 0
                   for p in tuner.parameters()):
            idle.append((name, tuner))
    check_idle_tuners_are_flat(model, batch, idle)


def check_idle_tuners_are_flat(model, batch, idle):
    """A tuner without gradient must be one the loss cannot see: DETR's,
    Conditional DETR's and DAB-DETR's first decoder self-attention starts
    from zero content, so all its values are the value bias and a LoRA on
    its q/k/v changes nothing (see mmpetl.tuners.lora); at this random init
    that bias is 0 in DETR, so its out_proj LoRA sees zeros too.
    Randomising such tuners leaves the loss as it was (a tuner cut off from
    the forward would pass this, but not the ``last_stats`` check)."""
    if not idle:
        return
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.eval()
    for name, _ in idle:  # the one place this is known to happen
        assert 'decoder.layers.0.self_attn' in name, (
            f'{name} got no gradient at step 0')
    with torch.no_grad():
        before = seeded_loss(model, batch)
        for _, tuner in idle:
            for p in tuner.parameters():
                p.normal_(0, 1.0)
        after = seeded_loss(model, batch)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)


def test_unipt_still_refuses_dino():
    variant = next(v for v, _ in variants() if v.startswith('DINO-'))
    cfg, _, heads = vanilla(variant)
    with pytest.raises(TunerHostError, match='UniPT does not support '
                       'DINO-style denoising'):
        PETLModel(model=cfg, tuners=[], parallel=dict(type='UniPT'),
                  trainable=heads)


def test_dino_label_embedding_is_class_dependent():
    """Why the DINO arch configs train it with the heads."""
    path = dict(variants())['DINO-ResNet-refine-twostage']
    assert class_dependent(path) == sorted(
        [n for n in class_dependent(path) if n.startswith('bbox_head.')] +
        ['dn_query_generator.label_embedding.weight'])

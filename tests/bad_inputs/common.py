"""What the cases share: the :class:`Case` record, paths, a small PETL
model, the demo config pointed at a temporary folder and the tools by
file."""
import copy
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Pattern, Type, Union

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / 'docs' / 'bad_inputs.md'
DEMO_ET = ROOT / 'configs/demo/et-deformable-detr_mnv2_demo-target.py'
COCO_DETR = ROOT / 'configs/et-detr_r50_8xb2-150e_coco.py'


@dataclass
class Case:
    name: str  # short id (pytest id, table anchor)
    area: str
    bad_input: str  # what the user did
    trigger: Callable[[Path], None]
    error: Type[BaseException]
    match: Union[str, Pattern]


def build_petl(tuners, trainable=(), model=None, **kwargs):
    """A ``PETLModel`` with ``tuners`` on a small DETR (or ``model``)."""
    from mmpetl.models import PETLModel
    from tests.conftest import small_detr_cfg
    return PETLModel(model=model or small_detr_cfg(), tuners=tuners,
                     trainable=list(trainable), **kwargs)


@functools.lru_cache(maxsize=None)
def load_cfg(path):
    """The config at ``path``, read once: deep-copy it to change it."""
    from mmengine.config import Config
    return Config.fromfile(str(path))


def demo_layout(root: Path) -> Path:
    """What the demo target configs read: annotation files, image folder."""
    for split in ('train', 'val'):
        (root / 'target').mkdir(parents=True, exist_ok=True)
        (root / 'target' / f'{split}.json').write_text('{}')
    (root / 'images').mkdir(parents=True, exist_ok=True)
    return root


def demo_cfg(tmp: Path, options=None, layout=True):
    """The ET demo config pointed at ``tmp/petl_demo``; ``options`` as
    with ``--cfg-options``."""
    root = tmp / 'petl_demo'
    if layout:
        demo_layout(root)
    cfg = copy.deepcopy(load_cfg(DEMO_ET))
    opts = {f'{p}_dataloader.dataset.data_root': f'{root}/'
            for p in ('train', 'val', 'test')}
    opts.update({f'{p}_evaluator.ann_file': f'{root}/target/val.json'
                 for p in ('val', 'test')})
    opts['load_from'] = None
    opts.update(options or {})
    cfg.merge_from_dict(opts)
    return cfg


# the tuners of the checkpoint cases: an FFN adapter, bottleneck 8
TUNERS = [dict(type='ParallelAdapter', presets=['ffn'], bottleneck=8)]


def tool(name: str):
    """A module of tools/ (tools/infer.py, tools/test.py) by file."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        f'mmpetl_tool_{name}', ROOT / 'tools' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

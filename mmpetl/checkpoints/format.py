"""The tuner checkpoint format: what a PETL run keeps per task.

A tuner checkpoint holds only what the run trained (tuner tensors and the
declared trainable parts such as the heads) plus ``meta``::

    meta = dict(
        mmpetl_tuner_checkpoint=1,      # format marker
        mmpetl_version='0.1.0',
        tuners=[...], trainable=...,    # the PETLModel's config
        base_content_sha256='...',      # the frozen tensors it trained on
        base_content_keys_hash='...',   # sha256 of their (key, shape) list
        base_content_tensors=N,         # their count
        base_checkpoint='name.pth')     # the base's file name (or None)

The pin is computed from the model when the file is written (see
:mod:`mmpetl.checkpoints.base`), so it holds however the base was loaded
(a local file, a URL, ``init_cfg``). Files written by older mmpetl carry
``base_sha256``/``base_keys_hash`` (the base file's hashes) instead.

One shared base checkpoint plus a small tuner checkpoint per task rebuild
the full model. A path ending in ``.safetensors`` stores the same content
as safetensors (tensors + ``meta`` as JSON in the file's metadata): no
pickle at all. Both are written atomically (:func:`mmpetl.utils.atomic_write`).
"""
import datetime
import json
import os
from typing import Dict, Optional

from mmpetl.utils import (CheckpointError, atomic_save, atomic_write,
                          load_checkpoint_file)
from .base import model_pin

__all__ = ['MARKER', 'tuner_checkpoint', 'write_tuner_checkpoint',
           'save_tuner_checkpoint', 'load_tuner_checkpoint']

MARKER = 'mmpetl_tuner_checkpoint'
SAFETENSORS_META = 'mmpetl_meta'


def tuner_checkpoint(model, base_path: Optional[str] = None,
                     extra_meta: Optional[Dict] = None) -> Dict:
    """The tuner checkpoint dict of a ``PETLModel``.

    The base pin is the model's frozen tensors as they are now (hashed
    once per call), whatever file they came from.

    Args:
        model: a ``PETLModel``.
        base_path: the base checkpoint the model was loaded from; only its
            file name is recorded (``base_checkpoint``), the pin comes from
            the model.
        extra_meta: merged into ``meta`` last (``base_checkpoint`` here
            names the base too; pin keys here are ignored).
    """
    state = {k: v.detach().cpu() for k, v in model.tuner_state_dict().items()}
    trainable = getattr(model, 'trainable_patterns', [])
    meta = {
        MARKER: 1,
        'mmpetl_version': __import__('mmpetl').__version__,
        'tuners': [dict(c) for c in getattr(model, 'tuner_cfgs', [])],
        'trainable': trainable if isinstance(trainable, str) else
        list(trainable),
        'time': datetime.datetime.now().isoformat(timespec='seconds'),
    }
    meta['base_checkpoint'] = os.path.basename(str(base_path)) \
        if base_path else None
    meta.update(extra_meta or {})
    for key in ('base_sha256', 'base_keys_hash'):  # file pins: not ours
        meta.pop(key, None)
    meta.update(model_pin(model, state))
    return {'state_dict': state, 'meta': meta}


def _is_safetensors(path: str) -> bool:
    return str(path).endswith('.safetensors')


def write_tuner_checkpoint(ckpt: Dict, path: str) -> None:
    """Write a tuner checkpoint dict atomically: torch format, or
    safetensors when ``path`` ends in ``.safetensors``."""
    if not _is_safetensors(path):
        atomic_save(ckpt, path)
        return
    from safetensors.torch import save_file

    # safetensors refuses shared or strided storage: own copies
    tensors = {k: v.detach().cpu().contiguous().clone()
               for k, v in ckpt['state_dict'].items()}
    atomic_write(path, lambda tmp: save_file(
        tensors, tmp, metadata={SAFETENSORS_META: json.dumps(ckpt['meta'])}))


def save_tuner_checkpoint(model, path: str, base_path: Optional[str] = None,
                          extra_meta: Optional[Dict] = None) -> Dict:
    """Write :func:`tuner_checkpoint` of ``model`` to ``path`` (atomic;
    ``.safetensors`` or torch format) and return it."""
    ckpt = tuner_checkpoint(model, base_path, extra_meta)
    write_tuner_checkpoint(ckpt, path)
    return ckpt


def _load_safetensors(path: str) -> Dict:
    from safetensors import safe_open
    if not os.path.isfile(path):
        raise FileNotFoundError(f'checkpoint not found: {path}')
    try:
        with safe_open(path, framework='pt', device='cpu') as f:
            metadata = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:
        raise CheckpointError(
            f'cannot read {path} as safetensors ({type(err).__name__}: '
            f'{str(err)[:200]}): the file is truncated or corrupt. Re-copy '
            f'it, or use the `.pth` tuner checkpoint of the same run.'
        ) from err
    try:
        meta = json.loads(metadata[SAFETENSORS_META])
    except (KeyError, ValueError) as err:
        raise CheckpointError(
            f'{path} is a safetensors file without mmpetl meta '
            f'(`{SAFETENSORS_META}` in its metadata): not an mmpetl tuner '
            f'checkpoint. Write it with save_tuner_checkpoint(model, '
            f'\'x.safetensors\').') from err
    return {'state_dict': state, 'meta': meta}


def load_tuner_checkpoint(path: str) -> Dict:
    """A tuner checkpoint, ``.pth`` (safe loading) or ``.safetensors``."""
    ckpt = _load_safetensors(path) if _is_safetensors(path) else \
        load_checkpoint_file(path)
    if not ckpt.get('meta', {}).get(MARKER):
        raise CheckpointError(
            f'{path} is not an mmpetl tuner checkpoint (no meta.{MARKER}); '
            f'pass it as the base checkpoint instead, or give the '
            f'`*_tuner.pth` file written beside each training checkpoint.')
    return ckpt

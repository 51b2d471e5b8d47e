"""Which base a tuner checkpoint belongs to, and shape checks.

A tuner checkpoint is pinned to the frozen tensors it was trained on, not
to a file: ``base_content_sha256`` is a sha256 over every frozen tensor of
the model (everything but the tuners and the trained parts) when the tuner
checkpoint was written: names, dtypes, shapes and bytes, in sorted key
order. ``base_content_keys_hash`` hashes the sorted ``(key, shape)`` list
(the architecture, to tell "other weights" from "another model" in
errors). A base re-saved with identical tensors, or loaded from a URL,
pins the same; a changed tensor does not.

Verifying hashes the base's tensors under the same rule: from a file
(:func:`file_digests`, cached per path, size and mtime) or from a model
that loaded it (:func:`frozen_digests`). Tuner checkpoints written by
older mmpetl are pinned by the base file's sha256 (``base_sha256``); they
are verified against the file as before. A tuner checkpoint with no pin
at all is refused unless the caller forces it (``--force-base``).
"""
import functools
import hashlib
import os
from typing import Callable, Dict, Iterable, Optional, Tuple

import torch
from mmengine.logging import print_log

from mmpetl.utils import CheckpointError, load_checkpoint_file, sha256_file

__all__ = ['BaseMismatchError', 'ShapeMismatchError', 'UnpinnedTunerError',
           'keys_hash', 'state_dict_of', 'base_meta', 'base_sha256',
           'check_base', 'check_shapes', 'tensor_digests', 'frozen_digests',
           'file_digests', 'content_pin', 'model_pin', 'PIN_SHA', 'PIN_KEYS']

PIN_SHA = 'base_content_sha256'
PIN_KEYS = 'base_content_keys_hash'
# key -> (dtype, shape, sha256 of the bytes)
Digests = Dict[str, Tuple[str, Tuple[int, ...], str]]


class BaseMismatchError(CheckpointError):
    pass


class ShapeMismatchError(CheckpointError):
    pass


class UnpinnedTunerError(BaseMismatchError):
    """A tuner checkpoint that records no base at all."""


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
    base checkpoint file (all None without one): the file pin of tuner
    checkpoints written by older mmpetl, still verified by
    :func:`check_base`."""
    if not path:
        return dict(base_checkpoint=None, base_sha256=None,
                    base_keys_hash=None)
    return dict(base_checkpoint=os.path.basename(path),
                base_sha256=base_sha256(path),
                base_keys_hash=_file_keys_hash(path))


# -- pinning by tensor content ---------------------------------------------
def _tensor_sha256(tensor: torch.Tensor) -> str:
    data = tensor.detach().to('cpu').contiguous().reshape(-1)
    if not data.numel():
        return hashlib.sha256(b'').hexdigest()
    return hashlib.sha256(data.view(torch.uint8).numpy()).hexdigest()


def tensor_digests(state: Dict[str, torch.Tensor]) -> Digests:
    """``key -> (dtype, shape, sha256 of the bytes)`` of every tensor."""
    return {k: (str(v.dtype).replace('torch.', ''), tuple(v.shape),
                _tensor_sha256(v))
            for k, v in state.items() if isinstance(v, torch.Tensor)}


def _tuner_prefixes(model) -> Tuple[str, ...]:
    modules = getattr(model, 'tuner_modules', None)
    return tuple(n + '.' for n, _ in modules()) if modules else ()


def frozen_digests(model, exclude: Iterable[str] = ()) -> Digests:
    """Digests of a model's state without its tuners (found structurally)
    and without the keys in ``exclude``.

    Args:
        model: a ``PETLModel`` (or any module: then only ``exclude`` is
            left out).
        exclude: keys left out, e.g. the trained parts (the heads).
    """
    skip = set(exclude)
    prefixes = _tuner_prefixes(model)
    return tensor_digests({k: v for k, v in model.state_dict().items()
                           if k not in skip and not k.startswith(prefixes)})


@functools.lru_cache(maxsize=4)
def _file_digests_cached(path: str, size: int, mtime_ns: int) -> Digests:
    return tensor_digests(state_dict_of(load_checkpoint_file(path)))


def file_digests(path: str) -> Digests:
    """Digests of a checkpoint file's tensors, computed once per (path,
    size, mtime)."""
    stat = os.stat(path)
    return _file_digests_cached(os.path.realpath(path), stat.st_size,
                                stat.st_mtime_ns)


def content_pin(digests: Digests,
                exclude: Iterable[str] = ()) -> Dict[str, object]:
    """The pin of the tensors in ``digests`` but not in ``exclude``.

    Returns:
        dict: ``base_content_sha256`` (names, dtypes, shapes and bytes, in
        sorted key order), ``base_content_keys_hash`` (sorted keys and
        shapes) and ``base_content_tensors`` (their count).
    """
    skip = set(exclude)
    keys = sorted(k for k in digests if k not in skip)
    content = hashlib.sha256()
    for key in keys:
        dtype, shape, digest = digests[key]
        content.update(f'{key}\t{dtype}\t{shape}\t{digest}\n'.encode())
    arch = repr([(k, tuple(digests[k][1])) for k in keys])
    return {PIN_SHA: content.hexdigest(),
            PIN_KEYS: hashlib.sha256(arch.encode()).hexdigest(),
            'base_content_tensors': len(keys)}


def model_pin(model, exclude: Iterable[str]) -> Dict[str, object]:
    """:func:`content_pin` of a model's frozen tensors: what a tuner
    checkpoint written now (holding the keys ``exclude``) is pinned to."""
    return content_pin(frozen_digests(model, exclude))


def check_base(tuner_ckpt: Dict, base_path: Optional[str],
               force: bool = False, sha256: Optional[str] = None,
               arch_hash: Optional[Callable[[], str]] = None,
               digests: Optional[Digests] = None,
               tuner_path: Optional[str] = None) -> None:
    """Refuse a base other than the one the tuners were trained on.

    The tuner checkpoint's pin (see the module docstring) is compared
    with the base's frozen tensors, the tuner checkpoint's own keys left
    out: taken from ``digests`` when given (a model that loaded the base,
    :func:`frozen_digests`), else read from ``base_path``.

    Args:
        tuner_ckpt: a loaded tuner checkpoint.
        base_path: the base checkpoint file (or where the model's base came
            from, for messages, when ``digests`` is given; may be a URL).
        force: accept a base with other weights of the same architecture,
            and a tuner checkpoint that records no base.
        sha256: the base file's sha256 if already known (older pins).
        arch_hash: returns the base file's keys hash; only called on a
            mismatch of an older pin (default: read from ``base_path``).
        digests: the base's tensor digests, instead of reading the file.
        tuner_path: the tuner checkpoint's file, for messages.

    Raises:
        BaseMismatchError: naming both hashes and the fix.
        UnpinnedTunerError: the tuner checkpoint records no base and
            ``force`` is False.
    """
    meta = tuner_ckpt['meta']
    what = f'tuner checkpoint {tuner_path}' if tuner_path else \
        'this tuner checkpoint'
    where = base_path or 'the loaded model'
    if meta.get(PIN_SHA):
        if digests is None:
            digests = file_digests(base_path)
        got = content_pin(digests, tuner_ckpt['state_dict'])
        if got[PIN_SHA] == meta[PIN_SHA]:
            return
        same_arch = got[PIN_KEYS] == meta.get(PIN_KEYS)
        detail = ('same architecture, other weights' if same_arch else
                  f'a different architecture: {got["base_content_tensors"]}'
                  f' frozen tensors whose keys/shapes differ from the '
                  f'{meta.get("base_content_tensors")} it was trained with')
        _refuse(
            f'{what} was trained on base `{meta.get("base_checkpoint")}` '
            f'(frozen tensors sha256 {meta[PIN_SHA][:12]}...), but {where} '
            f'has frozen tensors sha256 {got[PIN_SHA][:12]}... ({detail}). '
            + ('Use the base it was trained on, or pass force=True '
               '(--force-base) to apply it anyway.' if same_arch else
               'Use the base it was trained on, with the config it was '
               'trained with (--force-base does not apply tuners to another '
               'architecture).'), force and same_arch)
        return
    if meta.get('base_sha256'):  # pinned by file (older mmpetl)
        _check_file_pin(meta, what, base_path, force, sha256, arch_hash)
        return
    if not force:
        raise UnpinnedTunerError(
            f'{what} records no base (no base_content_sha256 or base_sha256 '
            f'in its meta: written by an older mmpetl without a base '
            f'checkpoint, or by hand), so nothing shows that {where} holds '
            f'the weights its tuners were trained on. Pass force=True '
            f'(--force-base) to apply it anyway, or re-save it with '
            f'mmpetl.checkpoints.save_tuner_checkpoint(model, path) from a '
            f'model that holds its base: that pins the base\'s tensors.')
    print_log(f'mmpetl: {what} records no base; applied to {where} '
              f'anyway (force)', logger='current', level=30)


def _refuse(message: str, force: bool) -> None:
    if not force:
        raise BaseMismatchError(message)
    print_log(f'mmpetl: applied anyway (force): {message}', logger='current',
              level=30)


def _check_file_pin(meta: Dict, what: str, base_path: Optional[str],
                    force: bool, sha256: Optional[str],
                    arch_hash: Optional[Callable[[], str]]) -> None:
    """The pin of older tuner checkpoints: the base file's sha256."""
    want_sha, want_keys = meta['base_sha256'], meta.get('base_keys_hash')
    if sha256 is None and not (base_path and os.path.isfile(base_path)):
        _refuse(
            f'{what} is pinned to the sha256 of its base file '
            f'`{meta.get("base_checkpoint")}` ({want_sha[:12]}...; written '
            f'by an older mmpetl), and {base_path or "no base file"} is not '
            f'a local file to compare. Give the base checkpoint as a local '
            f'file, or pass force=True (--force-base) to apply it anyway.',
            force)
        return
    got_sha = sha256 or base_sha256(base_path)
    if got_sha == want_sha:
        return
    same_arch = (arch_hash or (lambda: _file_keys_hash(base_path)))() == \
        want_keys
    message = (
        f'{what} was trained on base `{meta.get("base_checkpoint")}` '
        f'(file sha256 {want_sha[:12]}...; pinned by file by an older '
        f'mmpetl), but {base_path} has sha256 {got_sha[:12]}... '
        + ('(same architecture, other weights or the same weights saved '
           'again)' if same_arch else
           '(a different architecture: its keys/shapes differ)') +
        '. Use the base it was trained on, or pass force=True '
        '(--force-base) to apply it anyway; re-save the tuner checkpoint '
        'with this mmpetl to pin it by tensor content.')
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

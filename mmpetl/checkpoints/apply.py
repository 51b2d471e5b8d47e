"""Base checkpoint + tuner checkpoint -> one full mmpetl checkpoint."""
from typing import Dict, Optional, Sequence

from mmpetl.utils import atomic_save, load_checkpoint_file
from mmpetl.utils.matching import parameter_matches
from .base import check_base, check_shapes, state_dict_of, tensor_digests
from .format import MARKER, load_tuner_checkpoint

__all__ = ['apply_tuner_checkpoint', 'load_tuner_state', 'check_tuner_fits']


def apply_tuner_checkpoint(base_path: str, tuner_path: str,
                           out_path: Optional[str] = None,
                           force: bool = False) -> Dict:
    """base + tuners -> one checkpoint a ``PETLModel`` config loads whole.

    Parts trained beside the tuners (the heads) replace the base's even when
    their shapes differ (a new dataset has its own classes); every other
    tensor must fit the base. To fold LoRA into the weights and get a plain
    MMDetection checkpoint, see :func:`mmpetl.checkpoints.export_checkpoint`.

    Args:
        base_path: the shared base checkpoint.
        tuner_path: a tuner checkpoint written by mmpetl.
        out_path: where to write the result (atomic); None: only return it.
        force: apply to a base with other weights (same architecture), or
            a tuner checkpoint that records no base.

    Returns:
        dict: ``{'state_dict', 'meta'}``.
    """
    tuner = load_tuner_checkpoint(tuner_path)
    base = load_checkpoint_file(base_path)
    state = state_dict_of(base)
    check_base(tuner, base_path, force, digests=tensor_digests(state),
               tuner_path=tuner_path)
    tuned = tuner['state_dict']
    trainable = tuner['meta'].get('trainable') or []
    check_shapes(state, {k: v for k, v in tuned.items()
                         if not parameter_matches(k, trainable)},
                 f'{tuner_path} does not fit {base_path}',
                 'Use the base checkpoint the tuners were trained on.',
                 expected_name='base', given_name='tuner')
    state.update(tuned)
    meta = dict(base.get('meta', {}) or {})
    meta['mmpetl'] = {k: v for k, v in tuner['meta'].items() if k != MARKER}
    result = {'state_dict': state, 'meta': meta}
    if out_path:
        atomic_save(result, out_path)
    return result


def check_tuner_fits(current: Dict, tuner: Dict, source: str,
                     resizable: Sequence[str] = ()) -> None:
    """Refuse tuner tensors a model does not have or cannot hold.

    Args:
        current: the model's state dict (tensors or parameters by key).
        tuner: a loaded tuner checkpoint (:func:`load_tuner_checkpoint`).
        source: the file it came from, for messages.
        resizable: keys whose shape may differ (a head with other classes).

    Raises:
        KeyError: tensors the model does not have (other tuners).
        ShapeMismatchError: tensors of other shapes (other sizes/classes).
    """
    unknown = [k for k in tuner['state_dict'] if k not in current]
    if unknown:
        raise KeyError(
            f'{source} has {len(unknown)} tensors this model does not have '
            f'(first: {unknown[:3]}): it was trained with other tuners; use '
            f'the config it was trained with.')
    skip = set(resizable)
    check_shapes(current, {k: v for k, v in tuner['state_dict'].items()
                           if k not in skip}, source,
                 'It was trained with other tuner sizes or another model: '
                 'use the config it was trained with.')


def load_tuner_state(model, tuner: Dict, source: str) -> None:
    """Load a tuner checkpoint's tensors into a built ``PETLModel``.

    Args:
        model: the ``PETLModel`` (base weights already loaded).
        tuner: a loaded tuner checkpoint (:func:`load_tuner_checkpoint`).
        source: the file it came from, for messages.

    Raises:
        KeyError: tensors the model does not have (other tuners).
        ShapeMismatchError: tensors of other shapes (other sizes/classes).
    """
    check_tuner_fits(model.state_dict(), tuner, source)
    model.load_state_dict(tuner['state_dict'], strict=False)

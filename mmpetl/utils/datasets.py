"""Walking dataset wrappers, and the classes a dataset names.

MMEngine/MMDetection wrap datasets in others: ``RepeatDataset``,
``ClassBalancedDataset`` and ``MultiImageMixDataset`` hold one (``dataset``),
``ConcatDataset`` several (``datasets``). Code that sets a data root, a
pipeline or classes, or checks paths, acts on the real datasets inside:
:func:`dataset_leaves` is the one walk that finds them, for dataset configs
and for built dataset objects alike.
"""
from collections.abc import Mapping
from typing import Any, List, Optional, Tuple

__all__ = ['dataset_leaves', 'metainfo_classes']


def _inner(dataset, name: str):
    """``dataset[name]`` of a config (a mapping), ``dataset.name`` of an
    object; None when absent."""
    if isinstance(dataset, Mapping):
        return dataset.get(name)
    return getattr(dataset, name, None)


def _is_dataset(obj) -> bool:
    return obj is not None and not isinstance(obj, (str, bytes, list, tuple))


def dataset_leaves(dataset, key: str = 'dataset') -> List[Tuple[str, Any]]:
    """The real datasets inside wrappers, depth first, with their keys.

    A wrapper with ``datasets`` (``ConcatDataset``) contributes each of its
    datasets' leaves; one with ``dataset`` (``RepeatDataset``,
    ``ClassBalancedDataset``, ``MultiImageMixDataset``) its dataset's; any
    other dataset is a leaf. Works on dataset configs (mappings: the keys)
    and built datasets (the attributes).

    Args:
        dataset: a dataset config (dict/ConfigDict) or a dataset object;
            anything else (None, a string) has no leaves.
        key: how ``dataset`` is reached, the start of the returned keys
            (e.g. ``'train_dataloader.dataset'``).

    Returns:
        list[tuple[str, Any]]: ``(key, leaf)`` pairs, e.g.
        ``('test_dataloader.dataset.datasets[1].dataset', {...})``; the
        leaves are the objects themselves (editing one edits the config).
    """
    if not _is_dataset(dataset):
        return []
    many = _inner(dataset, 'datasets')
    if isinstance(many, (list, tuple)):
        out = []
        for i, inner in enumerate(many):
            out += dataset_leaves(inner, f'{key}.datasets[{i}]')
        return out
    one = _inner(dataset, 'dataset')
    # a config's `dataset` is walked into when it is a config too (a
    # wrapper config holding a built dataset is itself the leaf)
    if isinstance(one, Mapping) or (
            _is_dataset(one) and not isinstance(dataset, Mapping)):
        return dataset_leaves(one, f'{key}.dataset')
    return [(key, dataset)]


def metainfo_classes(dataset) -> Optional[tuple]:
    """The class names a dataset config or object states in its metainfo
    (``metainfo['classes']``; a built dataset's metainfo includes its
    type's default ``METAINFO``), or None when it names none.

    Args:
        dataset: a dataset config (mapping) or a built dataset (its
            ``metainfo``; a wrapper's is its first dataset's).

    Returns:
        tuple | None: the classes as given (a list or tuple of them).
    """
    try:
        metainfo = _inner(dataset, 'metainfo') or {}
        classes = metainfo.get('classes')
    except (AttributeError, TypeError):
        return None
    return tuple(classes) if isinstance(classes, (list, tuple)) else None

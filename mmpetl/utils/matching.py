r"""Target matching: one pure function over module names (as in HF PEFT).

* a ``str`` is a regular expression that must match the *whole* name;
* a list/tuple of ``str`` matches a name equal to an item or ending with
  ``'.' + item`` (dotted suffix: ``'ffn'`` matches ``encoder.layers.0.ffn``
  but not ``encoder.layers.0.my_ffn``).

Tuner ``targets``/``exclude`` match module names with :func:`name_matches`;
``PETLModel(trainable=...)`` and tuner checkpoints select *parameters* with
:func:`parameter_matches`, the same rule applied to the parameter's name and
to every module that contains it (``['bbox_head']`` selects every head
parameter, ``['bias']`` every bias, ``r'.*\.bias'`` too).

Names in, names out: it imports no other room, so ``injection`` (tuner
targets, ``trainable``) and ``checkpoints`` (which tensors a tuner
checkpoint holds) share it; ``mmpetl.injection.matching`` re-exports it.
"""
import difflib
import re
from typing import Iterable, List, Optional, Sequence, Union

Targets = Union[str, Sequence[str]]

__all__ = ['name_matches', 'select_names', 'nearest_names', 'Targets',
           'parameter_matches', 'select_parameters']


def name_matches(name: str, targets: Targets) -> bool:
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith('.' + t) for t in targets)


def parameter_matches(param_name: str, targets: Targets) -> bool:
    """Whether ``targets`` name the parameter or a module containing it."""
    parts = param_name.split('.')
    return any(
        name_matches('.'.join(parts[:i]), targets)
        for i in range(1, len(parts) + 1))


def select_parameters(param_names: Sequence[str],
                      targets: Targets) -> List[str]:
    """The parameter names ``targets`` select; every list item (or the
    regex) must select something.

    Raises:
        ValueError: naming the item that selects nothing and the nearest
            module/parameter names.
    """
    param_names = list(param_names)
    items = [targets] if isinstance(targets, str) else list(targets)
    for item in items:
        target = item if isinstance(targets, str) else [item]
        if not any(parameter_matches(n, target) for n in param_names):
            modules = sorted({n.rsplit('.', i)[0] for n in param_names
                              for i in range(1, n.count('.') + 1)})
            kind = ('regex' if isinstance(targets, str) else
                    'name (exact or dotted suffix)')
            raise ValueError(
                f'trainable {kind} {item!r} matches no module or parameter. '
                f'Nearest names: '
                f'{nearest_names(item, modules + param_names)}. A string is '
                f'a full-name regex; a list holds names matched exactly or '
                f'as dotted suffixes.')
    return [n for n in param_names if parameter_matches(n, targets)]


def select_names(names: Iterable[str], targets: Optional[Targets],
                 exclude: Optional[Targets] = None) -> List[str]:
    """Names matching ``targets`` (all when None) and not ``exclude``."""
    return [
        n for n in names
        if (targets is None or name_matches(n, targets)) and not (
            exclude is not None and name_matches(n, exclude))
    ]


def nearest_names(targets: Targets, names: Sequence[str],
                  num: int = 5) -> List[str]:
    """The module names closest to what the user typed, for errors."""
    queries = [targets] if isinstance(targets, str) else list(targets)
    names = list(names)
    found: List[str] = []
    for query in queries:
        # compare with full names and with their last components
        tails = {n.rsplit('.', 1)[-1]: n for n in names}
        close = difflib.get_close_matches(query, names, n=num, cutoff=0.4)
        close += [tails[t] for t in difflib.get_close_matches(
            query.rsplit('.', 1)[-1], list(tails), n=num, cutoff=0.5)]
        found += [c for c in close if c not in found]
    return found[:num]

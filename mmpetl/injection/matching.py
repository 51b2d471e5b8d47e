"""Target matching: one pure function over module names (as in HF PEFT).

* a ``str`` is a regular expression that must match the *whole* name;
* a list/tuple of ``str`` matches a name equal to an item or ending with
  ``'.' + item`` (dotted suffix: ``'ffn'`` matches ``encoder.layers.0.ffn``
  but not ``encoder.layers.0.my_ffn``).
"""
import difflib
import re
from typing import Iterable, List, Optional, Sequence, Union

Targets = Union[str, Sequence[str]]

__all__ = ['name_matches', 'select_names', 'nearest_names', 'Targets']


def name_matches(name: str, targets: Targets) -> bool:
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith('.' + t) for t in targets)


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

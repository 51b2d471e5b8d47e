"""The old ``tools/analysis/`` paths: each runs its tool's new home.

MMDetection keeps its analysis tools in ``tools/analysis_tools/``; mmpetl's
moved there (``benchmark.py`` became ``petl_benchmark.py``: MMDetection's
``benchmark.py`` measures other things). The old paths keep working for one
release: they print where the tool went and run it with the same arguments.
"""
import os.path as osp
import runpy
import sys

NEW_HOME = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))),
                    'analysis_tools')


def run_moved(old_file: str, new_name: str) -> None:
    """Print the deprecation note and run ``tools/analysis_tools/<new_name>``
    as ``__main__`` with this process's arguments.

    Args:
        old_file: the wrapper's ``__file__``.
        new_name: the tool's file name in ``tools/analysis_tools/``.
    """
    new = osp.join(NEW_HOME, new_name)
    print(f'note: tools/analysis/{osp.basename(old_file)} is deprecated and '
          f'will be removed in the next release: run '
          f'tools/analysis_tools/{new_name} (same arguments)',
          file=sys.stderr)
    sys.argv[0] = new
    sys.path.insert(0, NEW_HOME)
    runpy.run_path(new, run_name='__main__')

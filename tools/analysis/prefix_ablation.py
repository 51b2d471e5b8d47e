"""Deprecated path, kept for one release: prints a note and runs
tools/analysis_tools/prefix_ablation.py with the same arguments."""
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from moved import run_moved  # noqa: E402

if __name__ == '__main__':
    run_moved(__file__, 'prefix_ablation.py')

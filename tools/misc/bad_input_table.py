"""Run every known bad input and write the table of what the user sees.

    python tools/misc/bad_input_table.py [--out docs/bad_inputs.md] [--check]

The cases (bad input, trigger, expected exception and message) live in
tests/bad_inputs/ (one module per area); tests/test_bad_inputs.py runs the
same cases. Each case gets a fresh temporary folder. A case that does not
raise what it should is reported and the exit status is 1 (the table is
still written, with what actually happened). --check writes nothing and
fails if the committed table differs from a fresh one.
"""
import argparse
import os.path as osp
import sys
import tempfile
import time
from pathlib import Path

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, ROOT)

from tests.bad_inputs import DOC, all_cases, check, row, run_case, table  # noqa: E402,E501


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', default=str(DOC))
    parser.add_argument('--check', action='store_true',
                        help='compare with --out instead of writing it')
    return parser.parse_args()


def main():
    args = parse_args()
    rows, failures = [], []
    start = time.time()
    for case in all_cases():
        with tempfile.TemporaryDirectory(prefix='bad_input_') as tmp:
            err = run_case(case, Path(tmp))
            ok, why = check(case, err, Path(tmp))
            rows.append(row(case, err, Path(tmp)))
        print(f'{"ok  " if ok else "FAIL"} {case.name}: '
              f'{type(err).__name__}', flush=True)
        if not ok:
            failures.append(why)
    text = table(rows)
    if args.check:
        current = Path(args.out).read_text() if osp.isfile(args.out) else ''
        if current != text:
            failures.append(f'{args.out} is out of date: run '
                            f'python tools/misc/bad_input_table.py')
    else:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
        print(f'wrote {args.out}: {len(rows)} cases')
    print(f'{time.time() - start:.1f} s')
    for why in failures:
        print(why, file=sys.stderr)
    sys.exit(1 if failures else 0)


if __name__ == '__main__':
    main()

"""Write a generated section between ``<!-- name:start -->`` and
``<!-- name:end -->`` markers of a Markdown page (``--readme`` of the
benchmark tools)."""
import os.path as osp

__all__ = ['BENCHMARK_PAGE', 'write_benchmark_section',
           'write_between_markers']

#: where benchmark tools copy their tables (``--readme``)
BENCHMARK_PAGE = osp.join('benchmarks', 'README.md')


def write_benchmark_section(root: str, name: str, body: str) -> None:
    """Write ``body`` between the ``name`` markers of the benchmarks page
    (``<root>/benchmarks/README.md``); image links relative to
    ``benchmarks/`` as the tools write them."""
    write_between_markers(osp.join(root, BENCHMARK_PAGE), name, body)


def write_between_markers(path: str, name: str, body: str) -> None:
    """Replace what stands between ``<!-- name:start -->`` and
    ``<!-- name:end -->`` in ``path`` (the README) by ``body``."""
    start, end = f'<!-- {name}:start -->', f'<!-- {name}:end -->'
    with open(path) as f:
        text = f.read()
    if start not in text or end not in text:
        raise SystemExit(f'{path} has no {start} ... {end} markers')
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    with open(path, 'w') as f:
        f.write(head + start + '\n' + body.strip() + '\n' + end + tail)

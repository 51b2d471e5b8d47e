"""Extract the small Fashion-MNIST subset that the offline demo ships.

The demo must not need apt (nor any download) at run time, so a class
balanced subset of Fashion-MNIST is committed as
``mmpetl/demo/assets/fashion_mnist_subset.npz``. This script records how
it was made::

    cd /tmp/fm && apt-get download dataset-fashion-mnist && dpkg -x *.deb x
    python tools/demo/extract_fashion_mnist.py \
        --src /tmp/fm/x/usr/share/datasets/fashion-mnist

Fashion-MNIST (Zalando Research) is distributed under the MIT licence.
"""
import argparse
import gzip
import os.path as osp
import struct

import numpy as np

DEFAULT_SRC = '/tmp/fm/x/usr/share/datasets/fashion-mnist'
DEFAULT_OUT = osp.join(
    osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))), 'mmpetl',
    'demo', 'assets', 'fashion_mnist_subset.npz')
CLASSES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal',
           'Shirt', 'Sneaker', 'Bag', 'Ankle boot')


def read_idx(path: str) -> np.ndarray:
    """Read a (gzipped) idx file into a numpy array."""
    opener = gzip.open if path.endswith('.gz') else open
    with opener(path, 'rb') as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack('>HBB', data[:4])
    assert zero == 0 and dtype_code == 0x08, f'not a uint8 idx file: {path}'
    shape = struct.unpack('>' + 'I' * ndim, data[4:4 + 4 * ndim])
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def class_balanced(images: np.ndarray, labels: np.ndarray, per_class: int,
                   rng: np.random.Generator):
    """Pick ``per_class`` random images of every class, sorted by label."""
    keep = []
    for c in range(len(CLASSES)):
        idx = np.flatnonzero(labels == c)
        keep.append(np.sort(rng.choice(idx, per_class, replace=False)))
    keep = np.concatenate(keep)
    return images[keep], labels[keep]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--src', default=DEFAULT_SRC)
    parser.add_argument('--out', default=DEFAULT_OUT)
    parser.add_argument('--train-per-class', type=int, default=300)
    parser.add_argument('--test-per-class', type=int, default=100)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    out = {}
    for split, prefix, n in (('train', 'train', args.train_per_class),
                             ('test', 't10k', args.test_per_class)):
        images = read_idx(osp.join(args.src, f'{prefix}-images-idx3-ubyte.gz'))
        labels = read_idx(osp.join(args.src, f'{prefix}-labels-idx1-ubyte.gz'))
        out[f'{split}_images'], out[f'{split}_labels'] = class_balanced(
            images, labels, n, rng)
    out['classes'] = np.array(CLASSES)
    np.savez_compressed(args.out, **out)
    print(f'wrote {args.out}: ' + ', '.join(
        f'{k} {v.shape}' for k, v in out.items()))


if __name__ == '__main__':
    main()

"""A small, deterministic source -> target detection transfer in COCO format.

Fashion-MNIST garments are alpha-blended onto crops of real photos (the
sample images bundled in the scikit-image wheel), so every box is the exact
tight box of the pasted pixels. Two domains with disjoint classes:

* ``source``: Fashion-MNIST classes 0-4 (T-shirt/top ... Coat), garments
  in light grey tones;
* ``target``: classes 5-9 (Sandal ... Ankle boot), garments in saturated
  colours: new classes (the target needs a new classifier) and a shifted
  appearance.

Layout written by :func:`make_transfer_dataset`::

    root/manifest.json                 # the generation parameters
    root/source/{train,val}.json       # COCO annotations
    root/target/{train,val}.json
    root/images/{source,target}/{train,val}/000000.jpg

Nothing is downloaded: the garments come from the committed
``mmpetl/demo/assets/fashion_mnist_subset.npz`` (train objects from its
train split, val objects from its test split) and the photos from
``skimage/data``. Command line::

    python -m mmpetl.demo.synthetic_coco --out data/petl_demo
"""
import argparse
import json
import os
import os.path as osp
import time
from importlib.util import find_spec
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

__all__ = [
    'SOURCE_CLASSES', 'TARGET_CLASSES', 'make_transfer_dataset',
    'render_image', 'load_backgrounds', 'load_fashion_mnist'
]

FASHION_MNIST_CLASSES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress',
                         'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag',
                         'Ankle boot')
SOURCE_CLASSES = FASHION_MNIST_CLASSES[:5]
TARGET_CLASSES = FASHION_MNIST_CLASSES[5:]
DOMAINS = {'source': (0, 1, 2, 3, 4), 'target': (5, 6, 7, 8, 9)}

ASSET = osp.join(osp.dirname(osp.abspath(__file__)), 'assets',
                 'fashion_mnist_subset.npz')
# Real photos shipped inside the scikit-image wheel (no pooch fetch). The
# binary silhouettes (horse, logo) and tiny images are left out.
BACKGROUNDS = ('astronaut.png', 'coffee.png', 'chelsea.png', 'rocket.jpg',
               'camera.png', 'coins.png', 'brick.png', 'grass.png',
               'gravel.png', 'motorcycle_left.png', 'motorcycle_right.png',
               'retina.jpg', 'hubble_deep_field.jpg', 'moon.png', 'page.png',
               'text.png', 'clock_motion.png', 'ihc.png', 'cell.png',
               'color.png')
# Bump when the rendering changes: a manifest of another version regenerates.
VERSION = 1
# alpha = clip(intensity * ALPHA_GAIN, 0, 1); pixels below ALPHA_MIN are not
# pasted, so the box is the tight box of what is visible.
ALPHA_GAIN = 2.5 / 255.
ALPHA_MIN = 0.1


def load_fashion_mnist(path: str = ASSET) -> Dict[str, np.ndarray]:
    """Load the committed Fashion-MNIST subset."""
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def load_backgrounds(names: Sequence[str] = BACKGROUNDS) -> List[np.ndarray]:
    """Load scikit-image's bundled photos as RGB uint8 arrays.

    They are read straight from the installed package's ``data`` folder,
    never through ``skimage.data``'s fetchers.
    """
    spec = find_spec('skimage')
    if spec is None or not spec.submodule_search_locations:
        raise ImportError('the demo dataset needs scikit-image for its '
                          'background photos: pip install scikit-image')
    data_dir = osp.join(list(spec.submodule_search_locations)[0], 'data')
    images = []
    for name in names:
        with Image.open(osp.join(data_dir, name)) as img:
            images.append(np.asarray(img.convert('RGB')))
    return images


def _background(rng: np.random.Generator, photos: List[np.ndarray], h: int,
                w: int) -> np.ndarray:
    """A random crop (scale, position, flip) of a random photo, resized."""
    photo = photos[rng.integers(len(photos))]
    ph, pw = photo.shape[:2]
    scale = rng.uniform(0.35, 1.0)
    ch = max(8, int(min(ph, pw * h / w) * scale))
    cw = max(8, min(pw, int(round(ch * w / h))))
    y = rng.integers(0, ph - ch + 1)
    x = rng.integers(0, pw - cw + 1)
    crop = Image.fromarray(photo[y:y + ch, x:x + cw])
    crop = np.asarray(crop.resize((w, h), Image.BILINEAR))
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return crop.astype(np.float32)


def _garment(rng: np.random.Generator, digit: np.ndarray,
             size: int) -> np.ndarray:
    """Resize a garment so its longer side is ``size``; return its alpha.

    The returned alpha is trimmed to the tight box of its visible pixels.
    """
    alpha = np.clip(digit.astype(np.float32) * ALPHA_GAIN, 0, 1)
    ys, xs = np.nonzero(alpha >= ALPHA_MIN)
    alpha = alpha[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    h, w = alpha.shape
    ratio = size / max(h, w)
    nh, nw = max(4, int(round(h * ratio))), max(4, int(round(w * ratio)))
    alpha = np.asarray(
        Image.fromarray(alpha, mode='F').resize((nw, nh), Image.BILINEAR))
    alpha = np.where(alpha >= ALPHA_MIN, np.clip(alpha, 0, 1), 0)
    ys, xs = np.nonzero(alpha)
    return alpha[ys.min():ys.max() + 1, xs.min():xs.max() + 1]


def _colour(rng: np.random.Generator, domain: str) -> np.ndarray:
    """Garment colour: light greys for the source, saturated for target."""
    if domain == 'source':
        return np.full(3, rng.uniform(170, 255), np.float32) + rng.uniform(
            -15, 15, 3).astype(np.float32)
    hue = rng.uniform(0, 6)
    rgb = np.clip(np.abs((hue + np.array([0., 4., 2.])) % 6 - 3) - 1, 0, 1)
    return (60 + 195 * rgb).astype(np.float32)


def render_image(rng: np.random.Generator,
                 photos: List[np.ndarray],
                 images: np.ndarray,
                 labels: np.ndarray,
                 domain: str,
                 img_size: Tuple[int, int] = (160, 192),
                 obj_size: Tuple[int, int] = (20, 70),
                 num_objects: Tuple[int, int] = (1, 4),
                 max_tries: int = 30) -> Tuple[np.ndarray, List[Dict]]:
    """Render one image.

    Args:
        rng: The random generator (the only source of randomness).
        photos: Background photos (RGB uint8).
        images: Fashion-MNIST images of the domain's classes.
        labels: Their Fashion-MNIST labels.
        domain: ``'source'`` or ``'target'`` (the garment colours).
        img_size: Range of the image's height and width (each drawn).
        obj_size: Range of a garment's longer side in pixels.
        num_objects: Inclusive range of garments per image.
        max_tries: Placement attempts per garment; a garment that finds
            no free place is dropped (boxes never overlap, so every box is
            the tight box of the garment's visible pixels).

    Returns:
        tuple: The RGB uint8 image and a list of objects, each a dict with
        ``bbox`` (x, y, w, h), ``label`` (Fashion-MNIST label) and
        ``mask`` (the full-image alpha of the pasted garment).
    """
    h, w = (int(v) for v in rng.integers(img_size[0], img_size[1] + 1, 2))
    canvas = _background(rng, photos, h, w)
    objects = []
    boxes = []
    for _ in range(rng.integers(num_objects[0], num_objects[1] + 1)):
        idx = rng.integers(len(images))
        size = int(rng.integers(obj_size[0], min(obj_size[1], h, w) + 1))
        alpha = _garment(rng, images[idx], size)
        colour = _colour(rng, domain)
        shade = 0.45 + 0.55 * alpha  # keep the garment's texture
        ah, aw = alpha.shape
        for _ in range(max_tries):
            y = int(rng.integers(0, h - ah + 1))
            x = int(rng.integers(0, w - aw + 1))
            if all(x + aw <= bx or bx + bw <= x or y + ah <= by
                   or by + bh <= y for bx, by, bw, bh in boxes):
                break
        else:
            continue
        region = canvas[y:y + ah, x:x + aw]
        fg = colour[None, None] * shade[..., None]
        a = alpha[..., None]
        canvas[y:y + ah, x:x + aw] = a * fg + (1 - a) * region
        mask = np.zeros((h, w), np.float32)
        mask[y:y + ah, x:x + aw] = alpha
        boxes.append((x, y, aw, ah))
        objects.append(
            dict(bbox=[x, y, aw, ah], label=int(labels[idx]), mask=mask))
    return np.clip(canvas + 0.5, 0, 255).astype(np.uint8), objects


def _make_split(root: str, domain: str, split: str, num_images: int,
                seed: int, photos: List[np.ndarray], fm: Dict[str, np.ndarray],
                render_kwargs: Dict) -> Dict:
    """Render one split's images and write its COCO json."""
    fm_split = 'train' if split == 'train' else 'test'
    keep = np.isin(fm[f'{fm_split}_labels'], DOMAINS[domain])
    images = fm[f'{fm_split}_images'][keep]
    labels = fm[f'{fm_split}_labels'][keep]
    first = DOMAINS[domain][0]
    names = FASHION_MNIST_CLASSES[first:first + len(DOMAINS[domain])]
    rng = np.random.default_rng(
        [seed, list(DOMAINS).index(domain), ('train', 'val').index(split)])

    img_dir = osp.join(root, 'images', domain, split)
    os.makedirs(img_dir, exist_ok=True)
    coco = dict(
        info=dict(description=f'mmpetl demo {domain} {split}'),
        images=[],
        annotations=[],
        categories=[
            dict(id=i + 1, name=name, supercategory='garment')
            for i, name in enumerate(names)
        ])
    for img_id in range(1, num_images + 1):
        img, objects = render_image(rng, photos, images, labels, domain,
                                    **render_kwargs)
        file_name = f'{domain}/{split}/{img_id:06d}.jpg'
        Image.fromarray(img).save(
            osp.join(root, 'images', file_name), quality=95)
        coco['images'].append(
            dict(
                id=img_id,
                file_name=file_name,
                height=img.shape[0],
                width=img.shape[1]))
        for obj in objects:
            x, y, bw, bh = obj['bbox']
            coco['annotations'].append(
                dict(
                    id=len(coco['annotations']) + 1,
                    image_id=img_id,
                    category_id=obj['label'] - first + 1,
                    bbox=[x, y, bw, bh],
                    area=bw * bh,
                    iscrowd=0))
    os.makedirs(osp.join(root, domain), exist_ok=True)
    with open(osp.join(root, domain, f'{split}.json'), 'w') as f:
        json.dump(coco, f)
    return dict(images=num_images, instances=len(coco['annotations']))


def make_transfer_dataset(root: str,
                          seed: int = 0,
                          img_size: Tuple[int, int] = (160, 192),
                          obj_size: Tuple[int, int] = (20, 70),
                          num_objects: Tuple[int, int] = (1, 4),
                          source_sizes: Tuple[int, int] = (1000, 200),
                          target_sizes: Tuple[int, int] = (400, 150),
                          force: bool = False,
                          verbose: bool = True) -> Dict:
    """Write the source and target detection datasets under ``root``.

    Idempotent: ``root/manifest.json`` records the parameters, and a root
    whose manifest matches them (and whose annotation files exist) is left
    as it is.

    Args:
        root: Output folder (e.g. ``data/petl_demo``).
        seed: Random seed; the same seed writes the same files.
        img_size: Range of image heights and widths in pixels.
        obj_size: Range of a garment's longer side in pixels.
        num_objects: Inclusive range of garments per image.
        source_sizes: Numbers of (train, val) source images.
        target_sizes: Numbers of (train, val) target images.
        force: Regenerate even when the manifest matches.
        verbose: Print a summary.

    Returns:
        dict: The manifest: parameters and per-split image and instance
        counts.
    """
    params = dict(
        version=VERSION,
        seed=seed,
        img_size=list(img_size),
        obj_size=list(obj_size),
        num_objects=list(num_objects),
        source_sizes=list(source_sizes),
        target_sizes=list(target_sizes))
    manifest_file = osp.join(root, 'manifest.json')
    ann_files = [
        osp.join(root, d, f'{s}.json') for d in DOMAINS
        for s in ('train', 'val')
    ]
    if not force and osp.isfile(manifest_file) and all(
            map(osp.isfile, ann_files)):
        with open(manifest_file) as f:
            manifest = json.load(f)
        if manifest.get('params') == params:
            if verbose:
                print(f'{root}: already generated with these parameters')
            return manifest

    start = time.time()
    os.makedirs(root, exist_ok=True)
    if osp.isfile(manifest_file):
        os.remove(manifest_file)  # a crash mid-way leaves no valid manifest
    photos = load_backgrounds()
    fm = load_fashion_mnist()
    render_kwargs = dict(
        img_size=img_size, obj_size=obj_size, num_objects=num_objects)
    stats = {}
    for domain, sizes in (('source', source_sizes), ('target',
                                                     target_sizes)):
        for split, num in zip(('train', 'val'), sizes):
            stats[f'{domain}/{split}'] = _make_split(root, domain, split, num,
                                                     seed, photos, fm,
                                                     render_kwargs)
    manifest = dict(params=params, splits=stats)
    with open(manifest_file, 'w') as f:
        json.dump(manifest, f, indent=2)
    if verbose:
        summary = ', '.join(f'{k}: {v["images"]} images / '
                            f'{v["instances"]} boxes'
                            for k, v in stats.items())
        print(f'wrote {root} in {time.time() - start:.1f}s ({summary})')
    return manifest


def parse_args(argv: Optional[Sequence[str]] = None):
    parser = argparse.ArgumentParser(
        description='Write the demo source/target COCO datasets.')
    parser.add_argument('--out', default='data/petl_demo')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--source-sizes', type=int, nargs=2,
                        default=(1000, 200), metavar=('TRAIN', 'VAL'))
    parser.add_argument('--target-sizes', type=int, nargs=2,
                        default=(400, 150), metavar=('TRAIN', 'VAL'))
    parser.add_argument('--force', action='store_true',
                        help='regenerate even if the manifest matches')
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    make_transfer_dataset(
        args.out,
        seed=args.seed,
        source_sizes=tuple(args.source_sizes),
        target_sizes=tuple(args.target_sizes),
        force=args.force)


if __name__ == '__main__':
    main()

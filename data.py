"""Datasets in EDM's format, dataset conversion, and the procedural toy world.

    python data.py toy                                   # writes datasets/toy-16x16.zip (deterministic)
    python data.py convert --source cifar-10-python.tar.gz --dest datasets/cifar10-32x32.zip
    python data.py convert --source ~/imagenet/train --dest datasets/imagenet-64x64.zip --resolution 64 --transform center-crop
    python data.py info --data datasets/toy-16x16.zip     # check a dataset and print what it holds

EDM's layout (EDM's dataset_tool.py and training/dataset.py): an uncompressed zip (or folder) of PNGs named
`{i//1000:05d}/img{i:08d}.png` and a `dataset.json` with `{"labels": [[name, int], ...]}` or `{"labels": null}`.
Images are uint8 CHW, labels one-hot.
"""

import argparse
import importlib
import io
import json
import os
import sys
import tarfile
import zipfile

import numpy as np
from PIL import Image, ImageDraw

import ckpt

IMAGE_EXT = ('.png', '.jpg', '.jpeg', '.bmp', '.webp', '.ppm', '.tif', '.tiff')


class DatasetError(Exception):
    pass


class ImageDataset:
    """EDM zip or folder -> uint8 [C,R,R] images and float32 one-hot labels ([0] when unlabelled).

    Start-up checks what is cheap: the zip's directory, dataset.json against the file list, and the first image's
    size and channels. Every later image is checked when decoded, and an error names the file."""

    def __init__(self, path, resolution=None, use_labels=True, cache=True):
        self.path, self.cache = path, {} if cache else None
        if not os.path.exists(path):
            raise DatasetError(f'dataset {path} not found. Make it with `python data.py convert ...` '
                               f'(or `python data.py toy`); see README.md.')
        if os.path.isdir(path):
            self._zip = None
            names = [os.path.relpath(os.path.join(root, f), path).replace(os.sep, '/')
                     for root, _, files in os.walk(path) for f in files]
        else:
            try:
                self._zip = zipfile.ZipFile(path)
                names = self._zip.namelist()
            except (zipfile.BadZipFile, OSError) as e:
                raise DatasetError(f'{path}: not a readable zip ({e}); the file is truncated or corrupt — '
                                   f'recreate it with `python data.py convert`') from None
        self.names = sorted(n for n in names if n.lower().endswith(IMAGE_EXT))
        if not self.names:
            raise DatasetError(f'{path}: no images found')
        self.labels = self._read_labels(names) if use_labels else None
        self.label_dim = int(self.labels.max()) + 1 if self.labels is not None else 0
        first = self.image(0)
        self.num_channels, self.resolution = first.shape[0], first.shape[1]
        if first.shape[1] != first.shape[2]:
            raise DatasetError(f'{path}: {self.names[0]} is {first.shape[2]}x{first.shape[1]}, images must be square')
        if resolution is not None and self.resolution != resolution:
            raise DatasetError(f'{path}: images are {self.resolution}x{self.resolution} but {resolution}x{resolution} '
                               f'was asked for; convert with --resolution {resolution}')

    def _read_labels(self, names):
        if 'dataset.json' not in names:
            return None
        try:
            labels = json.loads(self._read('dataset.json'))['labels']
        except (ValueError, KeyError) as e:
            raise DatasetError(f'{self.path}: dataset.json is malformed ({e})') from None
        if labels is None:
            return None
        labels = dict(labels)
        present = set(self.names)  # once: ImageNet has 1.28M names
        missing = [n for n in labels if n not in present]
        if missing:
            raise DatasetError(f'{self.path}: dataset.json labels {len(missing)} files that are not in the dataset, '
                               f'e.g. {missing[0]}')
        unlabelled = [n for n in self.names if n not in labels]
        if unlabelled:
            raise DatasetError(f'{self.path}: {len(unlabelled)} images have no label in dataset.json, e.g. {unlabelled[0]}')
        return np.array([labels[n] for n in self.names], dtype=np.int64)

    def _read(self, name):
        if self._zip is not None:
            return self._zip.read(name)
        with open(os.path.join(self.path, name), 'rb') as f:
            return f.read()

    def __len__(self):
        return len(self.names)

    def image(self, i):
        if self.cache is not None and i in self.cache:
            return self.cache[i]
        name = self.names[i]
        try:
            img = np.asarray(Image.open(io.BytesIO(self._read(name))))
        except Exception as e:
            raise DatasetError(f'{self.path}: cannot decode {name} ({type(e).__name__}: {e})') from None
        img = img[:, :, None] if img.ndim == 2 else img
        img = img.transpose(2, 0, 1)
        if hasattr(self, 'resolution') and img.shape != (self.num_channels, self.resolution, self.resolution):
            raise DatasetError(f'{self.path}: {name} has shape {list(img.shape)}, expected '
                               f'{[self.num_channels, self.resolution, self.resolution]} like the first image')
        if self.cache is not None:
            self.cache[i] = img
        return img

    def label(self, i):
        if self.labels is None:
            return np.zeros([0], np.float32)
        onehot = np.zeros([self.label_dim], np.float32)
        onehot[self.labels[i]] = 1
        return onehot

    def batch(self, indices):
        """uint8 [N,C,R,R] and float32 [N,label_dim]."""
        return np.stack([self.image(i) for i in indices]), np.stack([self.label(i) for i in indices])


class InfiniteSampler:
    """A seeded, epoch-wise shuffled stream of indices. Global position p is what `nimg` counts, so resuming from
    the number of images seen continues the same stream; rank r of W takes its own slice of each global batch."""

    def __init__(self, n, seed=0):
        self.n, self.seed, self._epoch, self._perm = n, seed, None, None

    def _at(self, p):
        epoch, i = divmod(p, self.n)
        if epoch != self._epoch:
            self._epoch, self._perm = epoch, np.random.RandomState((self.seed + epoch) % 2 ** 32).permutation(self.n)
        return int(self._perm[i])

    def indices(self, nimg, batch, rank=0, world=1):
        per_rank = batch // world
        start = nimg + rank * per_rank
        return [self._at(p) for p in range(start, start + per_rank)]

# ----------------------------------------------------------------------------------------------------------------
# Writing EDM's layout.

def write_dataset(dest, images, labels=None):
    """images: iterable of uint8 HWC arrays; labels: list of ints or None. Uncompressed PNGs, fixed timestamps,
    written to a temporary file and renamed, so the output is deterministic and never half-written."""
    entries = []

    def write(f):
        with zipfile.ZipFile(f, 'w', compression=zipfile.ZIP_STORED) as z:
            for i, img in enumerate(images):
                name = f'{i // 1000:05d}/img{i:08d}.png'
                buf = io.BytesIO()
                Image.fromarray(img).save(buf, format='png', compress_level=0, optimize=False)
                z.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), buf.getvalue())
                entries.append(name)
            meta = dict(labels=[[n, int(l)] for n, l in zip(entries, labels)] if labels is not None else None)
            z.writestr(zipfile.ZipInfo('dataset.json', date_time=(1980, 1, 1, 0, 0, 0)), json.dumps(meta))
    ckpt.atomic_write(dest, write)
    return len(entries)


def _resize(img, resolution, transform):
    """HWC uint8 -> resolution^2, as EDM's dataset tool: LANCZOS resize, optional center crop first."""
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    img = img[:, :, :3]
    if resolution is None:
        return img
    pil = Image.fromarray(img)
    if transform == 'center-crop':
        s = min(pil.size)
        left, top = (pil.size[0] - s) // 2, (pil.size[1] - s) // 2
        pil = pil.crop((left, top, left + s, top + s))
    elif pil.size[0] != pil.size[1]:
        raise DatasetError(f'non-square image {pil.size}: use --transform center-crop')
    if pil.size != (resolution, resolution):
        pil = pil.resize((resolution, resolution), Image.Resampling.LANCZOS)
    return np.asarray(pil)


CIFAR_URL = 'https://www.cs.toronto.edu/~kriz/cifar.html'
_CIFAR_GLOBALS = {(m, n) for m in ('numpy.core.multiarray', 'numpy._core.multiarray') for n in ('_reconstruct', 'scalar')} | \
                 {('numpy', 'ndarray'), ('numpy', 'dtype')}


def _cifar_global(module, name):
    """CIFAR's batches are pickles of plain arrays: only what those need, so a crafted file cannot run code."""
    return getattr(importlib.import_module(module), name) if (module, name) in _CIFAR_GLOBALS else None


def read_cifar10(source):
    """The 50k training images of cifar-10-python.tar.gz with labels, in data_batch_1..5 order."""
    images, labels = [], []
    with tarfile.open(source, 'r:gz') as tar:
        for b in range(1, 6):
            member = tar.getmember(f'cifar-10-batches-py/data_batch_{b}')
            try:
                d = ckpt.SafeUnpickler(tar.extractfile(member), _cifar_global, 'a CIFAR batch', encoding='bytes').load()
            except ckpt.UnsafePickleError as e:
                raise DatasetError(f'{source}: {e}; it is not the cifar-10-python.tar.gz from {CIFAR_URL}') from None
            images.append(np.asarray(d[b'data'], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels += list(d[b'labels'])
    return np.concatenate(images), labels


def read_folder(source):
    """Images under source, sorted; labels from top-level folder names (as EDM does for ImageNet) if all have one."""
    files = sorted(os.path.relpath(os.path.join(r, f), source) for r, _, fs in os.walk(source) for f in fs
                   if f.lower().endswith(IMAGE_EXT))
    tops = [f.split(os.sep)[0] if os.sep in f else None for f in files]
    classes = sorted(set(tops)) if None not in tops else None
    labels = [classes.index(t) for t in tops] if classes else None
    return files, labels


def convert(source, dest, resolution=None, transform=None):
    if source.endswith('.tar.gz') and 'cifar-10' in os.path.basename(source):
        images, labels = read_cifar10(source)
        images = (_resize(img, resolution, transform) for img in images)
    elif os.path.isdir(source):
        files, labels = read_folder(source)
        if not files:
            raise DatasetError(f'{source}: no images found')
        images = (_resize(np.asarray(Image.open(os.path.join(source, f)).convert('RGB')), resolution, transform) for f in files)
    else:
        raise DatasetError(f'{source}: expected cifar-10-python.tar.gz or a folder of images')
    n = write_dataset(dest, images, labels)
    print(f'wrote {n} images{" with labels" if labels else ""} to {dest}')

# ----------------------------------------------------------------------------------------------------------------
# The toy world: coloured shapes on coloured backgrounds. Class = shape; colours, position and size are random.
# Drawn at 4x and downsampled (LANCZOS) so edges are anti-aliased but crisp: sharp vs blurry is visible by eye.

TOY_COLOURS = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200),
               (245, 130, 48), (145, 30, 180), (240, 240, 240), (20, 20, 20)]
TOY_SHAPES = ['circle', 'square', 'triangle', 'cross']


def toy_image(rng, cls, resolution=16, scale=4):
    S = resolution * scale
    fg, bg = rng.choice(len(TOY_COLOURS), size=2, replace=False)
    img = Image.new('RGB', (S, S), TOY_COLOURS[bg])
    d = ImageDraw.Draw(img)
    r = rng.uniform(0.22, 0.36) * S
    cx, cy = rng.uniform(r, S - r, size=2)
    shape, c = TOY_SHAPES[cls], TOY_COLOURS[fg]
    if shape == 'circle':
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=c)
    elif shape == 'square':
        d.rectangle([cx - r * 0.85, cy - r * 0.85, cx + r * 0.85, cy + r * 0.85], fill=c)
    elif shape == 'triangle':
        d.polygon([(cx, cy - r), (cx - r, cy + r * 0.8), (cx + r, cy + r * 0.8)], fill=c)
    else:
        w = r * 0.35
        d.rectangle([cx - r, cy - w, cx + r, cy + w], fill=c)
        d.rectangle([cx - w, cy - r, cx + w, cy + r], fill=c)
    return np.asarray(img.resize((resolution, resolution), Image.Resampling.LANCZOS))


def toy_world(n=20000, resolution=16, seed=0):
    rng = np.random.RandomState(seed)
    labels = [int(i % len(TOY_SHAPES)) for i in range(n)]
    return [toy_image(rng, c, resolution) for c in labels], labels


def toy_path(resolution=16):
    return os.path.join('datasets', f'toy-{resolution}x{resolution}.zip')


def make_toy(dest=None, n=20000, resolution=16, seed=0):
    dest = dest or toy_path(resolution)
    images, labels = toy_world(n, resolution, seed)
    write_dataset(dest, images, labels)
    return dest


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description='EDM-format datasets: convert, inspect, and the toy world.')
    sub = parser.add_subparsers(dest='cmd', required=True)
    c = sub.add_parser('convert', help='CIFAR-10 tarball or image folder -> EDM zip')
    c.add_argument('--source', required=True, help='cifar-10-python.tar.gz or a folder (labels from top-level folders)')
    c.add_argument('--dest', required=True, help='output zip, e.g. datasets/cifar10-32x32.zip')
    c.add_argument('--resolution', type=int, default=None, help='output size (LANCZOS); default: keep')
    c.add_argument('--transform', choices=['center-crop'], default=None, help='crop non-square images first')
    t = sub.add_parser('toy', help='write the procedural toy dataset')
    t.add_argument('--dest', default=None, help='default datasets/toy-RxR.zip')
    t.add_argument('--n', type=int, default=20000, help='number of images')
    t.add_argument('--resolution', type=int, default=16, help='image size')
    t.add_argument('--seed', type=int, default=0, help='the world is a function of this seed')
    i = sub.add_parser('info', help='check a dataset and print its size and labels')
    i.add_argument('--data', required=True)
    args = parser.parse_args()
    try:
        if args.cmd == 'convert':
            convert(args.source, args.dest, args.resolution, args.transform)
        elif args.cmd == 'toy':
            print(f'wrote {make_toy(args.dest, args.n, args.resolution, args.seed)}')
        else:
            ds = ImageDataset(args.data)
            for k in range(len(ds)):
                ds.image(k)
            print(f'{args.data}: {len(ds)} images, {ds.num_channels}x{ds.resolution}x{ds.resolution}, label_dim {ds.label_dim}')
    except DatasetError as e:
        sys.exit(f'error: {e}')

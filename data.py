"""Datasets in EDM's format, dataset conversion, and the procedural toy world.

    python data.py toy                                   # writes datasets/toy-16x16.zip (deterministic)
    python data.py convert --source cifar-10-python.tar.gz --dest datasets/cifar10-32x32.zip
    python data.py convert --source ~/imagenet/train --dest datasets/imagenet-64x64.zip --resolution 64x64 --transform center-crop
    python data.py convert --source ~/afhq/train --dest datasets/afhqv2-64x64.zip --resolution 64x64
    python data.py info --data datasets/toy-16x16.zip     # check a dataset and print what it holds

EDM's layout (EDM's dataset_tool.py and training/dataset.py): an uncompressed zip (or folder) of PNGs named
`{i//1000:05d}/img{i:08d}.png` and a `dataset.json` with `{"labels": [[name, int], ...]}` or `{"labels": null}`.
Images are uint8 CHW, labels one-hot.
"""

import argparse
import hashlib
import importlib
import io
import json
import os
import pickle
import sys
import tarfile
import warnings
import zipfile
import zlib

import numpy as np
from PIL import Image, ImageDraw, UnidentifiedImageError

import ckpt

IMAGE_EXT = ('.png', '.jpg', '.jpeg', '.bmp', '.webp', '.ppm', '.tif', '.tiff')


class DatasetError(Exception):
    pass


MAX_CLASSES = 100000  # ImageNet-21k has 21,841; a larger label is a mistake, and its one-hot would not fit


def open_archive(path):
    """(zip or None, member names) of an EDM dataset zip or folder; names that leave the dataset are refused."""
    if os.path.isdir(path):
        names = [os.path.relpath(os.path.join(root, f), path).replace(os.sep, '/')
                 for root, _, files in os.walk(path, followlinks=True) for f in files]  # class folders may be links
        return None, names
    try:
        archive = zipfile.ZipFile(path)
        names = archive.namelist()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise DatasetError(f'{path}: not a readable zip ({e}); the file is truncated or corrupt — '
                           f'recreate it with `python data.py convert`') from None
    for name in names:
        parts = name.replace('\\', '/').split('/')
        if name.startswith(('/', '\\')) or '..' in parts or ':' in parts[0]:
            raise DatasetError(f'{path}: member {name!r} is an absolute path or climbs out of the dataset; refused — '
                               f'a dataset holds relative names only (recreate it with `python data.py convert`)')
    return archive, names


def read_member(path, archive, name):
    """The bytes of one member of a dataset zip (CRC-checked by zipfile) or folder; damage names the member."""
    try:
        if archive is not None:
            return archive.read(name)
        with open(os.path.join(path, name), 'rb') as f:
            return f.read()
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
        raise DatasetError(f'{path}: cannot read {name} ({e}); the dataset is damaged — recreate it with '
                           f'`python data.py convert`') from None


def parse_labels(blob, where):
    """dataset.json's bytes -> {name: class index} or None ({"labels": null}); a wrong shape stops with what it is."""
    usage = '; it must be {"labels": [["00000/img00000000.png", 6], ...]} or {"labels": null}'
    try:
        meta = json.loads(blob)
    except (ValueError, UnicodeDecodeError) as e:
        raise DatasetError(f'{where}: dataset.json is not valid JSON ({e}){usage}') from None
    if not isinstance(meta, dict) or 'labels' not in meta:
        what = 'an object without "labels"' if isinstance(meta, dict) else f'a JSON {type(meta).__name__}, not an object'
        raise DatasetError(f'{where}: dataset.json is {what}{usage}')
    if meta['labels'] is None:
        return None
    if not isinstance(meta['labels'], list):
        raise DatasetError(f'{where}: "labels" in dataset.json is a {type(meta["labels"]).__name__}{usage}')
    labels = {}
    for entry in meta['labels']:
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)):
            raise DatasetError(f'{where}: dataset.json entry {json.dumps(entry)[:80]} is not a [name, label] pair{usage}')
        name, label = entry
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < MAX_CLASSES:
            raise DatasetError(f'{where}: dataset.json gives {name} the label {json.dumps(label)[:40]}; labels are class '
                               f'indices, integers from 0 to {MAX_CLASSES - 1}')
        if labels.setdefault(name, label) != label:
            raise DatasetError(f'{where}: dataset.json labels {name} twice, as {labels[name]} and {label}')
    return labels


class ImageDataset:
    """EDM zip or folder -> uint8 [C,R,R] images and float32 one-hot labels ([0] when unlabelled).

    Start-up checks what is cheap: the zip's directory, dataset.json against the file list, and the first image's
    size and channels. Every later image is checked when decoded, and an error names the file."""

    def __init__(self, path, resolution=None, use_labels=True, cache=True):
        self.path, self.cache, self.use_labels = path, {} if cache else None, use_labels
        if not os.path.exists(path):
            raise DatasetError(f'dataset {path} not found. Make it with `python data.py convert ...` '
                               f'(or `python data.py toy`); see README.md.')
        self._zip, names = open_archive(path)
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
        labels = parse_labels(read_member(self.path, self._zip, 'dataset.json'), self.path)
        if labels is None:
            return None
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
        return read_member(self.path, self._zip, name)

    def fingerprint(self):
        """A short hash of every member's name and CRC (zip) or size and mtime (folder): it changes when the
        dataset does, so statistics cached under it never go stale."""
        if self._zip is not None:
            items = [(i.filename, i.CRC, i.file_size) for i in self._zip.infolist()]
        else:
            items = [(n, os.stat(os.path.join(self.path, n)).st_size, os.stat(os.path.join(self.path, n)).st_mtime_ns)
                     for n in self.names]
        return hashlib.sha256(json.dumps(items).encode()).hexdigest()[:10]

    def describe(self):
        return f'{self.num_channels}x{self.resolution}x{self.resolution} images with label_dim {self.label_dim}'

    def check_network(self, net, source):
        """Refuse a network (from source) that makes other images than this dataset holds: one line naming both."""
        if (net.img_channels, net.img_resolution, net.label_dim) != (self.num_channels, self.resolution, self.label_dim):
            made = f'{net.img_channels}x{net.img_resolution}x{net.img_resolution} images with label_dim {net.label_dim}'
            hint = ' (train.py --cond 0 turned its labels off)' if net.label_dim and not self.use_labels else ''
            raise DatasetError(f'the network ({source}) makes {made}, but {self.path} holds {self.describe()}{hint}. '
                               'Pick matching --init/--data.')

    def __len__(self):
        return len(self.names)

    def image(self, i):
        if self.cache is not None and i in self.cache:
            return self.cache[i]
        name = self.names[i]
        blob = self._read(name)
        try:
            img = np.asarray(Image.open(io.BytesIO(blob)))
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

def write_dataset(dest, images, labels=None, progress=None):
    """images: iterable of uint8 HWC arrays, or None for an image the transform skipped (its number stays unused, as
    in EDM's tool); labels: one int per image, or None. Uncompressed PNGs, fixed timestamps, written to a temporary
    file and renamed, so the output is deterministic and never half-written. Returns the number written."""
    entries = []

    def write(f):
        with zipfile.ZipFile(f, 'w', compression=zipfile.ZIP_STORED) as z:
            for i, img in enumerate(images):
                if progress:
                    progress.update(1)
                if img is None:
                    continue
                name = f'{i // 1000:05d}/img{i:08d}.png'
                buf = io.BytesIO()
                Image.fromarray(img).save(buf, format='png', compress_level=0, optimize=False)
                z.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), buf.getvalue())
                entries.append((name, labels[i] if labels is not None else None))
            meta = dict(labels=[[n, int(l)] for n, l in entries] if labels is not None else None)
            z.writestr(zipfile.ZipInfo('dataset.json', date_time=(1980, 1, 1, 0, 0, 0)), json.dumps(meta))
    ckpt.atomic_write(dest, write)
    return len(entries)

# ----------------------------------------------------------------------------------------------------------------
# Conversion, as EDM's dataset_tool.py: sources, transforms, and the checks it makes.

CIFAR_URL = 'https://www.cs.toronto.edu/~kriz/cifar.html'
_CIFAR_GLOBALS = {(m, n) for m in ('numpy.core.multiarray', 'numpy._core.multiarray') for n in ('_reconstruct', 'scalar')} | \
                 {('numpy', 'ndarray'), ('numpy', 'dtype')}


def _cifar_global(module, name):
    """CIFAR's batches are pickles of plain arrays: only what those need, so a crafted file cannot run code."""
    return getattr(importlib.import_module(module), name) if (module, name) in _CIFAR_GLOBALS else None


def read_cifar10(source):
    """The 50k training images of cifar-10-python.tar.gz with labels, in data_batch_1..5 order."""
    images, labels = [], []
    fix = f'download cifar-10-python.tar.gz again from {CIFAR_URL}'
    try:
        with tarfile.open(source, 'r:gz') as tar:
            for b in range(1, 6):
                name = f'cifar-10-batches-py/data_batch_{b}'
                try:
                    member = tar.getmember(name)
                except KeyError:
                    raise DatasetError(f'{source}: has no {name}; {fix}') from None
                batch = ckpt.SafeUnpickler(tar.extractfile(member), _cifar_global, 'a CIFAR batch', encoding='bytes').load()
                rows = np.asarray(batch[b'data'], np.uint8) if isinstance(batch, dict) and b'data' in batch else None
                if rows is None or rows.ndim != 2 or rows.shape[1] != 3072 or len(batch.get(b'labels', [])) != len(rows):
                    raise DatasetError(f'{source}: {name} does not hold 3072-byte image rows with one label each; {fix}')
                images.append(rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
                labels += [int(label) for label in batch[b'labels']]
    except ckpt.UnsafePickleError as e:
        raise DatasetError(f'{source}: {e}; it is not the cifar-10-python.tar.gz from {CIFAR_URL}') from None
    except (tarfile.TarError, EOFError, zlib.error, OSError, pickle.UnpicklingError, ValueError, TypeError) as e:
        raise DatasetError(f'{source}: truncated or not a gzip tarball of CIFAR-10 ({type(e).__name__}: {e}); {fix}') from None
    return np.concatenate(images), labels


def path_order(name):
    """EDM sorts a folder's files as pathlib paths: by their parts, so 'a/b.png' comes before 'a-c.png'."""
    return name.split('/')


def source_labels(names, meta, source):
    """EDM's rule: the labels of the source's dataset.json (meta: its bytes) when it has them, else top-level folder
    names when there are two or more (files at the top level form the class ''); None unless every image has one."""
    labels = parse_labels(meta, source) if meta is not None else None
    if not labels:
        tops = [n.split('/')[0] if '/' in n else '' for n in names]
        classes = sorted(set(tops))
        labels = {n: classes.index(t) for n, t in zip(names, tops)} if len(classes) > 1 else {}
    return [labels[n] for n in names] if labels and all(n in labels for n in names) else None


def read_image(where, blob):
    """Decoded RGB HWC uint8; any failure (not an image, truncated, over PIL's decompression-bomb limit) names it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('error', Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(blob)) as img:
                return np.asarray(img.convert('RGB'))
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        why = f"more pixels than PIL's decompression-bomb limit of {Image.MAX_IMAGE_PIXELS:,}"
    except UnidentifiedImageError:
        why = 'not an image that PIL can read, or its header is damaged'
    except (OSError, ValueError, SyntaxError) as e:
        why = f'truncated or damaged ({e})'
    raise DatasetError(f'{where}: cannot read this image: {why}; remove or replace the file')


def open_source(source):
    """(names, load(name) -> RGB HWC uint8, labels or None) of a CIFAR-10 tarball, a folder or a zip of images."""
    if not os.path.exists(source):
        raise DatasetError(f'--source {source} not found')
    if source.endswith('.tar.gz') and 'cifar-10' in os.path.basename(source):
        images, labels = read_cifar10(source)
        return list(range(len(images))), images.__getitem__, labels
    if not (os.path.isdir(source) or zipfile.is_zipfile(source)):
        raise DatasetError(f'--source {source}: expected cifar-10-python.tar.gz, a folder of images or a zip of images')
    archive, members = open_archive(source)
    names = sorted((n for n in members if n.lower().endswith(IMAGE_EXT)), key=path_order if archive is None else None)
    if not names:
        raise DatasetError(f'--source {source}: no images found')
    meta = read_member(source, archive, 'dataset.json') if 'dataset.json' in members else None
    if archive is None:
        def load(name):
            path = os.path.join(source, name)
            if os.path.islink(path) and not os.path.exists(path):
                raise DatasetError(f'{path}: a link to {os.readlink(path)}, which does not exist; fix or remove the link')
            return read_image(path, read_member(source, None, name))
    else:
        load = lambda name: read_image(f'{source}: {name}', read_member(source, archive, name))
    return names, load, source_labels(names, meta, source)


def parse_resolution(text):
    """--resolution: 'R' or 'WxH', positive integers (an argparse type)."""
    try:
        width, height = (int(v) for v in (text.lower().split('x') if 'x' in text.lower() else (text, text)))
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r} is not R or WxH (e.g. 64 or 64x64)') from None
    if width <= 0 or height <= 0:
        raise argparse.ArgumentTypeError(f'{text} must be positive')
    return width, height


def transform_image(img, size, transform):
    """EDM's transforms (LANCZOS): none (resize to size if given), center-crop (square crop, then resize) and
    center-crop-wide (crop to the output's aspect ratio, resize, centre on a square black canvas; None = too small,
    the image is skipped, as EDM's tool does)."""
    if size is None:
        return img
    width, height = size
    if transform == 'center-crop':
        crop = min(img.shape[:2])
        top, left = (img.shape[0] - crop) // 2, (img.shape[1] - crop) // 2
        img = img[top:top + crop, left:left + crop]
    elif transform == 'center-crop-wide':
        crop_height = int(np.round(width * img.shape[0] / img.shape[1]))
        if img.shape[1] < width or crop_height < height:
            return None
        top = (img.shape[0] - crop_height) // 2
        img = img[top:top + crop_height]
    if img.shape[:2] != (height, width):
        img = np.asarray(Image.fromarray(img).resize((width, height), Image.Resampling.LANCZOS))
    if transform == 'center-crop-wide':
        canvas = np.zeros([width, width, 3], np.uint8)
        canvas[(width - height) // 2:(width - height) // 2 + height] = img
        img = canvas
    return img


def check_dest(source, dest, overwrite):
    """Refuse every --dest that would lose a file the user did not mean to replace."""
    if not dest.endswith('.zip'):
        raise DatasetError(f'--dest {dest}: give a .zip file name (the dataset is written as one uncompressed zip)')
    if os.path.isdir(dest):
        raise DatasetError(f'--dest {dest} is a directory; give a .zip file name')
    ckpt.check_writable(dest, DatasetError)
    if not os.path.exists(dest):
        return
    if os.path.exists(source) and os.path.samefile(source, dest):
        raise DatasetError(f'--dest {dest} is the --source itself; give another file name')
    ours = zipfile.is_zipfile(dest) and 'dataset.json' in zipfile.ZipFile(dest).namelist()
    if not ours:
        raise DatasetError(f'--dest {dest} exists and is not a dataset zip; refusing to overwrite it — give another name')
    if not overwrite:
        raise DatasetError(f'--dest {dest} exists; add --overwrite to replace it, or give another name')


def convert(source, dest, resolution=None, transform=None, overwrite=False, log=print):
    """EDM's dataset tool: every output image the same size, square and a power of two, else one line naming the
    first image that is not and the option that would fix it. Nothing is written under dest until it is complete."""
    check_dest(source, dest, overwrite)
    size = (resolution, resolution) if isinstance(resolution, int) else resolution
    if transform and size is None:
        raise DatasetError(f'--transform {transform} needs --resolution (the output size, e.g. 64 or 64x64)')
    names, load, labels = open_source(source)
    first = []

    def images():
        for name in names:
            img = transform_image(load(name), size, transform)
            where = os.path.join(source, name) if isinstance(name, str) else f'{source}: image {name}'
            if img is not None and not first:
                first.append((where, img.shape))
                height, width = img.shape[:2]
                if width != height:
                    raise DatasetError(f'{where} is {width}x{height}: images must be square; give --resolution R '
                                       f'(with --transform center-crop to keep the aspect ratio)')
                if width & (width - 1):
                    raise DatasetError(f'{where} is {width}x{height}: the size must be a power of two; give --resolution '
                                       f'{2 ** round(np.log2(width))}')
            elif img is not None and img.shape != first[0][1]:
                raise DatasetError(f'{where} is {img.shape[1]}x{img.shape[0]} but {first[0][0]} is '
                                   f'{first[0][1][1]}x{first[0][1][0]}: give --resolution R to bring every image to one size')
            yield img
    n = write_dataset(dest, images(), labels, ckpt.Progress(f'converting {source}', len(names), show=log is print))
    skipped = f' ({len(names) - n} too small for center-crop-wide, skipped)' if n < len(names) else ''
    log(f'wrote {n} images{" with labels" if labels else ""} to {dest}{skipped}')

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


def toy_colours(images):
    """(foreground, background) colour index of each toy image (uint8 [N,R,R,3], NHWC as sample.py's npz): every pixel
    goes to its nearest TOY_COLOURS entry; the background is the commonest one on the border, the foreground the
    commonest other one (-1 if fewer than 4 pixels hold any: no shape). A mode census of generated toy images."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f'the colour census reads RGB toy images [N,R,R,3], not an array of shape {images.shape}')
    palette = np.asarray(TOY_COLOURS, dtype=np.float32)
    nearest = ((images[..., None, :] - palette) ** 2).sum(-1).argmin(-1)  # [N,R,R]
    border = np.concatenate([nearest[:, 0], nearest[:, -1], nearest[:, 1:-1, 0], nearest[:, 1:-1, -1]], axis=1)
    count = lambda idx: np.stack([(idx == k).sum(1) for k in range(len(palette))], axis=1)  # [N, colours]
    bg = count(border).argmax(1)
    inner = count(nearest.reshape(len(images), -1))
    inner[np.arange(len(images)), bg] = 0
    fg = np.where(inner.max(1) >= 4, inner.argmax(1), -1)
    return fg, bg


def colour_census(images):
    """How a set of toy images covers the 56 (foreground, background) colour pairs the world draws uniformly: the
    share with no shape, the pairs seen, and the total variation distance of the pair histogram from uniform (0: even;
    a finite sample of the world itself is above 0, so compare at equal N)."""
    fg, bg = toy_colours(images)
    n, k = len(fg), len(TOY_COLOURS)
    hist = np.zeros([k, k])
    np.add.at(hist, (fg[fg >= 0], bg[fg >= 0]), 1)
    pairs = hist[~np.eye(k, dtype=bool)] / max(hist.sum(), 1)
    return dict(n=n, no_shape=float((fg < 0).mean()), pairs_seen=int((pairs > 0).sum()), pairs=len(pairs),
                pair_tv=float(np.abs(pairs - 1 / len(pairs)).sum() / 2),
                fg=np.bincount(fg[fg >= 0], minlength=k) / n, bg=np.bincount(bg, minlength=k) / n)


def toy_path(resolution=16, log=None):
    """The toy world's dataset file; with log, written there first (deterministically) if it is missing."""
    path = os.path.join('datasets', f'toy-{resolution}x{resolution}.zip')
    if log and not os.path.exists(path):
        log(f'writing the toy world to {path} (once) ...')
        make_toy(path, resolution=resolution)
    return path


def make_toy(dest=None, n=20000, resolution=16, seed=0):
    dest = dest or toy_path(resolution)
    images, labels = toy_world(n, resolution, seed)
    write_dataset(dest, images, labels)
    return dest


def main(argv=None):
    parser = ckpt.Parser(prog='data.py', description='EDM-format datasets: convert, inspect, and the toy world.')
    sub = parser.add_subparsers(dest='cmd', required=True)
    c = sub.add_parser('convert', help="CIFAR-10 tarball, image folder or image zip -> EDM zip (EDM's dataset_tool)")
    c.add_argument('--source', required=True, help='cifar-10-python.tar.gz, or a folder/zip of images (labels from its '
                                                   'dataset.json, else from top-level folder names)')
    c.add_argument('--dest', required=True, help='output zip, e.g. datasets/cifar10-32x32.zip')
    c.add_argument('--resolution', type=parse_resolution, default=None, help='output size R or WxH (LANCZOS); default: keep')
    c.add_argument('--transform', choices=['center-crop', 'center-crop-wide'], default=None,
                   help='crop to a square (or, wide: to WxH, centred on a WxW canvas) before resizing')
    c.add_argument('--overwrite', action='store_true', help='replace a dataset zip that --dest already holds')
    t = sub.add_parser('toy', help='write the procedural toy dataset')
    t.add_argument('--dest', default=None, help='default datasets/toy-RxR.zip')
    t.add_argument('--n', type=ckpt.number(int, 0), default=20000, help='number of images')
    t.add_argument('--resolution', type=ckpt.number(int, 0), default=16, help='image size')
    t.add_argument('--seed', type=ckpt.number(int, 0, inclusive=True), default=0, help='the world is a function of this seed')
    i = sub.add_parser('info', help='check a dataset (every image) and print its size and labels')
    i.add_argument('--data', required=True)
    args = parser.parse_args(argv)
    try:
        if args.cmd == 'convert':
            convert(args.source, args.dest, args.resolution, args.transform, args.overwrite)
        elif args.cmd == 'toy':
            print(f'wrote {make_toy(args.dest, args.n, args.resolution, args.seed)}')
        else:
            ds = ImageDataset(args.data)
            for k in range(len(ds)):
                ds.image(k)
            print(f'{args.data}: {len(ds)} images, {ds.num_channels}x{ds.resolution}x{ds.resolution}, label_dim {ds.label_dim}')
    except DatasetError as e:
        sys.exit(f'error: {e}')


if __name__ == '__main__':
    main()

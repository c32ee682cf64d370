"""Checkpoint I/O (safe unpickling, downloads into a cache, atomic writes, our checkpoint format, training states)
and the command-line helpers every script shares.

    python ckpt.py edm-cifar10-32x32-cond-vp             # download once into the cache, load safely, print a summary
    python ckpt.py runs/toy-d2o/network-snapshot-000012000.pt
    python ckpt.py --download vgg16_bn inception         # fetch files into the cache (names, official EDM names, URLs)
    python ckpt.py --files                               # the weight files: URL, where each goes, size and SHA-256 here

Public names:
    SafeUnpickler(file, allow, what)     unpickles only the globals allow(module, name) returns; anything else raises
                                         UnsafePickleError naming it (EDM pickles, the FID detector, CIFAR batches)
    read_checkpoint(src) -> (net, meta)  an EDM .pkl (never executed) or our checkpoint, as unet.py's own class
    load_edm(src)                        read_checkpoint without the metadata
    save_checkpoint(path, net, **meta)   our format: plain tensors + JSON-able metadata, loadable with weights_only
    download(url, what), cache_dir()     one download into $D2O_CACHE (default ~/.cache/d2o), SHA-256 checked where
                                         the file name carries one; offline, the error says where to put the file
    WEIGHTS, weight_files(names, weights) the published backbone and detector files: found through --weights /
                                         $D2O_WEIGHTS (folders, files, NAME=FILE) or the cache, else downloaded;
                                         offline, one error names every missing file
    atomic_write(path, write), atomic_text(path, text), atomic_save(obj, path), load_verified(path)
    resume_point, save_state, open_rundir, append_metrics, read_metrics, read_fids, state_dicts, load_state_dicts
                                         train.py's run directory: states, status lines and FIDs, options
    Parser, number(kind, low), Progress  every script's command line: one-line errors, progress of long steps
    typed_flags, resume_flags            which flags were typed; a resumed run keeps its own flags

Loading an official EDM checkpoint with EDM's own code runs code from the file: its pickles embed the source of
networks.py and exec it. Here the file is read with an allow-list of globals mapped to local, side-effect-free
functions; tensors are rebuilt (bounds-checked) from the raw bytes; the embedded source stays inert text.
"""

import argparse
import glob
import hashlib
import io
import json
import math
import os
import pickle
import re
import resource
import struct
import sys
import tempfile
import time
import urllib.request
import zipfile
from collections import OrderedDict

import numpy as np
import torch

import unet

# ----------------------------------------------------------------------------------------------------------------
# Command lines: every mistake a user can type ends in one line on stderr, and long steps show their progress.

class Parser(argparse.ArgumentParser):
    """argparse with one-line errors and no abbreviated flags (a shortened flag must not silently mean another)."""
    def __init__(self, *args, allow_abbrev=False, **kwargs):
        super().__init__(*args, allow_abbrev=allow_abbrev, **kwargs)

    def error(self, message):  # one line instead of the usage block
        sys.exit(f'error: {message} (python {self.prog} --help lists the flags)')


def number(kind, low, inclusive=False):
    """An argparse type: a finite number above low (at least low if inclusive)."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f'{text!r} is not a {kind.__name__}') from None
        if not math.isfinite(value) or value < low or (value == low and not inclusive):
            raise argparse.ArgumentTypeError(f'{text} must be {">=" if inclusive else ">"} {low}')
        return value
    return parse


UNSET = object()


def typed_flags(parser, argv=None):
    """(args, typed): the flags, and the names of those typed on the command line (argparse leaves a value that is
    already in the namespace alone, so pre-filling it with a sentinel tells typed flags from defaults)."""
    defaults = vars(parser.parse_args([]))
    args = parser.parse_args(argv, argparse.Namespace(**dict.fromkeys(defaults, UNSET)))
    typed = {k for k, v in vars(args).items() if v is not UNSET}
    for k in defaults.keys() - typed:
        setattr(args, k, defaults[k])
    return args, typed


def resume_flags(parser, args, typed, saved, where, fixed, changeable):
    """A resumed run keeps its own flags (saved), except changeable ones typed now; a typed fixed flag that differs
    stops with one line. Returns the changes, e.g. ['--lr 0.0001 -> 0.0003']."""
    changes = []
    for k in fixed + changeable:
        flag, now, old = '--' + k.replace('_', '-'), getattr(args, k), saved.get(k, parser.get_default(k))
        same_path = k in ('init', 'arch', 'data') and os.path.normpath(str(now)) == os.path.normpath(str(old))
        if k not in typed or (k == 'disc' and now == 'auto'):
            setattr(args, k, old)
        elif k in fixed and now != old and not same_path:
            sys.exit(f'error: {flag} {now} differs from the {old} that the run in {where} was started with, and it '
                     f'cannot change mid-run; to start a new run instead, give another --rundir')
        elif now != old:
            changes.append(f'{flag} {old} -> {now}')
    return changes


class Progress:
    """Progress of a long step: done/total, rate and ETA on one line that updates in place on a terminal, or a plain
    line every `every` seconds (and at the end) when stdout is a file or a CI log. show=False (ranks other than 0)
    prints nothing. update() takes the count of this step, or the estimate over all ranks."""

    def __init__(self, what, total, show=True, unit='images', every=30.0):
        self.what, self.total, self.show, self.unit, self.every = what, total, show, unit, every
        self.done, self.start, self.last, self.tty, self.ended = 0, time.time(), time.time(), sys.stdout.isatty(), False
        if show and not self.tty:
            print(f'{what}: {total} {unit} ...', flush=True)

    def update(self, count):
        self.done += count
        now, finished = time.time(), self.done >= self.total
        if not self.show or self.ended or not (self.tty or finished or now - self.last >= self.every):
            return
        self.ended = finished  # the closing line once, however often update(0) comes after it
        self.last, rate = now, self.done / max(now - self.start, 1e-9)
        eta = f'ETA {(self.total - self.done) / rate / 60:.1f} min' if rate > 0 else 'no ETA yet'  # nothing done yet
        line = (f'{self.what}: {self.done} {self.unit} in {now - self.start:.0f} s ({rate:.1f}/s)' if finished else
                f'{self.what}: {self.done}/{self.total} {self.unit}, {rate:.1f}/s, {eta}')
        print('\r' + line.ljust(90) if self.tty else line, end='\n' if finished or not self.tty else '', flush=True)


def status_line(nimg, it, total_kimg, stats, tick_nimg, tick_start, t_start, device):
    """train.py's status line of the images since tick_nimg (speed, mean losses, peak memory, ETA) -> (the line as a
    dict for metrics.jsonl, the text to print)."""
    dt = time.time() - tick_start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB -> GiB
    mem = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == 'cuda' else rss
    line = dict(kimg=nimg / 1000, it=it, sec_per_kimg=dt / ((nimg - tick_nimg) / 1000), img_per_s=(nimg - tick_nimg) / dt,
                mem_gb=mem, time=time.time() - t_start, **{k: float(np.mean(v)) for k, v in stats.items()})
    eta = (total_kimg * 1000 - nimg) / 1000 * line['sec_per_kimg']
    losses = '  '.join(f'{k} {v:.4f}' for k, v in line.items() if k.startswith('loss'))
    return line, (f'kimg {nimg / 1000:8.3f}  it {it:6d}  sec/kimg {line["sec_per_kimg"]:7.2f}  img/s '
                  f'{line["img_per_s"]:7.1f}  {losses}  mem {mem:.2f}GB  eta {max(eta, 0) / 60:.1f}min')

# ----------------------------------------------------------------------------------------------------------------
# Safe loading of EDM's persistence pickles (EDM's torch_utils/persistence.py writes them). EDM's own loader exec()s the source code embedded in
# the file; this one maps a short allow-list of globals to local, side-effect-free functions and refuses the rest.

class UnsafePickleError(pickle.UnpicklingError):
    pass


class SafeUnpickler(pickle.Unpickler):
    """Unpickles only the globals that allow(module, name) returns (None: refused, naming the global), so a crafted
    file cannot run code; persistent ids go to persistent(pid), or are refused. Used for EDM snapshots, the
    TorchScript FID detector (fid.py) and CIFAR-10's batches (data.py)."""
    def __init__(self, file, allow, what, persistent=None, **kwargs):
        super().__init__(file, **kwargs)
        self.allow, self.what, self.persistent = allow, what, persistent

    def find_class(self, module, name):
        found = self.allow(module, name)
        if found is None:
            raise UnsafePickleError(f'refused global {module}.{name} in {self.what}: it is never needed there, and '
                                    f'loading it could run code')
        return found

    def persistent_load(self, pid):
        if self.persistent is None:
            raise UnsafePickleError(f'refused persistent id {pid!r} in {self.what}')
        return self.persistent(pid)


class PersistentObject:
    """An EDM `persistent_class` instance, kept as inert data. Its embedded module source is text, never run."""
    def __init__(self, meta):
        if not isinstance(meta, dict) or meta.get('type') != 'class' or not isinstance(meta.get('state'), dict):
            raise UnsafePickleError('malformed EDM persistence record (expected type "class" with a state dict)')
        self.class_name, self.state = meta.get('class_name'), meta['state']
        src = meta.get('module_src', '')
        self.module_src_sha256 = hashlib.sha256(str(src).encode()).hexdigest()

    @property
    def init_kwargs(self):
        return self.state.get('_init_kwargs', {})

    def state_dict(self, prefix=''):
        """nn.Module.state_dict() order: own parameters, own persistent buffers, then children, skipping None."""
        return _module_state_dict(self.state, prefix)


class _ModuleDictStub:
    """torch.nn.ModuleDict pickles by reference (NEWOBJ + BUILD); keep only its state."""
    def __setstate__(self, state):
        self.state = state


def _module_state_dict(state, prefix):
    out = OrderedDict()
    for name, p in state.get('_parameters', {}).items():
        if p is not None:
            out[prefix + name] = p.detach()
    skip = state.get('_non_persistent_buffers_set', set())
    for name, b in state.get('_buffers', {}).items():
        if b is not None and name not in skip:
            out[prefix + name] = b
    for name, m in state.get('_modules', {}).items():
        if m is None:
            continue
        if not isinstance(m, (PersistentObject, _ModuleDictStub)):
            raise UnsafePickleError(f'unexpected object {type(m).__name__} in module tree at {prefix + name}')
        out.update(_module_state_dict(m.state, prefix + name + '.'))
    return out


class _NumpyDType:
    """numpy.dtype(str, align, copy) + BUILD(state); numeric kinds only (no object dtypes)."""
    def __init__(self, spec, align=False, copy=True):
        self.dtype = np.dtype(str(spec))
        if self.dtype.kind not in 'biufc':
            raise UnsafePickleError(f'refused numpy dtype {spec!r} (only numeric dtypes are allowed)')

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ('<', '>', '|', '='):
            self.dtype = self.dtype.newbyteorder(state[1])


def _numpy_scalar(dtype, data=None):
    if not isinstance(dtype, _NumpyDType) or not isinstance(data, bytes):
        raise UnsafePickleError('refused numpy scalar that is not a numeric value')
    return np.frombuffer(data, dtype=dtype.dtype, count=1)[0].item()


_STORAGE_DTYPES = dict(FloatStorage=torch.float32, DoubleStorage=torch.float64, HalfStorage=torch.float16,
                       BFloat16Storage=torch.bfloat16, LongStorage=torch.int64, IntStorage=torch.int32,
                       ShortStorage=torch.int16, CharStorage=torch.int8, ByteStorage=torch.uint8, BoolStorage=torch.bool)


class _StorageType:
    def __init__(self, name):
        self.name, self.dtype = name, _STORAGE_DTYPES[name]


def _storage_type(module, name):
    return _StorageType(name) if module == 'torch' and name in _STORAGE_DTYPES else None


def _storage_record(pid):
    if (not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != 'storage' or not isinstance(pid[1], _StorageType)
            or not isinstance(pid[4], int)):
        raise UnsafePickleError(f'refused persistent id {pid!r} in a tensor storage record')
    return dict(dtype=pid[1].dtype, key=str(pid[2]), numel=pid[4])


def _load_storage_bytes(data):
    """Parse a legacy (non-zip) torch.save of a single storage and return it as a flat tensor."""
    if not isinstance(data, bytes):
        raise UnsafePickleError('tensor storage record is not bytes')
    f = io.BytesIO(data)
    try:
        legacy = lambda: SafeUnpickler(f, _storage_type, 'a tensor storage record', _storage_record).load()
        magic, protocol, sys_info = (legacy() for _ in range(3))
        if magic != 0x1950a86a20f9469cfc6c or protocol != 1001 or not sys_info.get('little_endian', False):
            raise UnsafePickleError('tensor storage record has an unknown header')
        record, keys = legacy(), legacy()
    except (EOFError, AttributeError, TypeError, ValueError) as e:
        raise UnsafePickleError(f'corrupt tensor storage record: {e}') from None
    if not isinstance(record, dict) or keys != [record['key']]:
        raise UnsafePickleError('tensor storage record must hold exactly one storage')
    (count,) = struct.unpack('<q', f.read(8))
    itemsize = torch.empty([], dtype=record['dtype']).element_size()
    raw = f.read(count * itemsize)
    if count != record['numel'] or len(raw) != count * itemsize:
        raise UnsafePickleError('tensor storage record is truncated or its size does not match')
    return torch.frombuffer(bytearray(raw), dtype=record['dtype']) if count else torch.empty(0, dtype=record['dtype'])


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    if not isinstance(storage, torch.Tensor) or storage.dim() != 1:
        raise UnsafePickleError('tensor record does not point at a storage')
    size, stride, offset = tuple(int(s) for s in size), tuple(int(s) for s in stride), int(offset)
    if len(size) != len(stride) or offset < 0 or any(s < 0 for s in size + stride):
        raise UnsafePickleError('tensor record has an invalid size, stride or offset')
    if all(size):
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= storage.numel():
            raise UnsafePickleError(f'tensor view of size {list(size)} at offset {offset} reads past the end of its '
                                    f'storage ({storage.numel()} elements)')
    return torch.as_strided(storage, size, stride, offset).clone()


def _rebuild_parameter(data, requires_grad=True, backward_hooks=None):
    if not isinstance(data, torch.Tensor):
        raise UnsafePickleError('parameter record does not hold a tensor')
    return torch.nn.Parameter(data, requires_grad=bool(requires_grad))


EDM_GLOBALS = {
    ('torch_utils.persistence', '_reconstruct_persistent_obj'): PersistentObject,
    ('collections', 'OrderedDict'): OrderedDict,
    ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor,
    ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
    ('torch.storage', '_load_from_bytes'): _load_storage_bytes,
    ('torch.nn.modules.container', 'ModuleDict'): _ModuleDictStub,
    ('numpy', 'dtype'): _NumpyDType,
    ('numpy._core.multiarray', 'scalar'): _numpy_scalar,  # numpy >= 2
    ('numpy.core.multiarray', 'scalar'): _numpy_scalar,   # numpy 1.x (the 2022 official files)
}


def safe_unpickle(f):
    """Unpickle an EDM snapshot (file object) without executing anything from it."""
    try:
        return SafeUnpickler(f, lambda module, name: EDM_GLOBALS.get((module, name)), 'an EDM snapshot').load()
    except UnsafePickleError:
        raise
    except Exception as e:  # a truncated or corrupt file
        raise pickle.UnpicklingError(f'could not read the pickle ({type(e).__name__}: {e}); is the file complete?') from None

# ----------------------------------------------------------------------------------------------------------------
# Sources, download cache and our own checkpoint format.

def cache_dir():
    return os.environ.get('D2O_CACHE', os.path.join(os.path.expanduser('~'), '.cache', 'd2o'))


def expected_sha256(url):
    """The SHA-256 prefix a publisher puts in the file name (torchvision's, timm's, DeiT's: name-<hex>.pth), or None."""
    match = re.search(r'-([0-9a-f]{8,64})\.[a-z]+$', os.path.basename(url.split('?')[0]))
    return match.group(1) if match else None


class DownloadError(RuntimeError):
    """A file that could not be fetched: its url, where it would go (dest) and why (reason)."""
    def __init__(self, url, dest, reason, what='file'):
        self.url, self.dest, self.reason = url, dest, reason
        super().__init__(f'could not download the {what} from {url} ({reason}). Download it on a machine with internet '
                         f'and place it at {dest} (or set D2O_CACHE to the folder that holds it, or pass the local path).')


def download(url, what='file'):
    """Download url once into the cache, verifying the SHA-256 the file name carries; offline, say where to put the
    file by hand. Nothing is left under the cache name unless the whole file arrived and matched."""
    dest = os.path.join(cache_dir(), os.path.basename(url.split('?')[0]))
    if os.path.isfile(dest):
        return dest
    expected = expected_sha256(url)

    def fetch(f):
        digest = hashlib.sha256()
        with urllib.request.urlopen(url, timeout=30) as response:
            while chunk := response.read(1 << 20):
                f.write(chunk)
                digest.update(chunk)
        if expected and not digest.hexdigest().startswith(expected):
            raise ValueError(f'its SHA-256 is {digest.hexdigest()[:len(expected)]}..., but the file name says {expected}...')
    print(f'downloading {url} -> {dest}', file=sys.stderr)
    try:
        atomic_write(dest, fetch)
    except Exception as e:
        raise DownloadError(url, dest, f'{type(e).__name__}: {e}', what) from None
    return dest

# Published weight files the networks read (besides EDM's checkpoints and reference statistics): the projected D's
# backbones (torchvision, timm, DeiT) and NVIDIA's Inception for FID. README's "Files the project downloads" lists them.
WEIGHTS = {
    'vgg16_bn': 'https://download.pytorch.org/models/vgg16_bn-6c64b313.pth',
    'efficientnet_lite0': 'https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-weights/tf_efficientnet_lite0-0aa007d2.pth',
    'deit_base_distilled': 'https://dl.fbaipublicfiles.com/deit/deit_base_distilled_patch16_224-df68dfff.pth',
    'inception': 'https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt',
}


def _split_entry(entry):
    """'NAME=FILE' -> (NAME, FILE); a folder or file (even one with '=' in its path) -> ('', path)."""
    name, sep, path = entry.partition('=')
    return (name, path) if sep and not os.path.exists(entry) else ('', entry)


def weight_entries(text=None):
    """The places to look for weight files: --weights (comma-separated) then $D2O_WEIGHTS (os.pathsep-separated).
    Each is a folder holding files under their published names, such a file, or NAME=FILE for a renamed one."""
    entries = [e for e in (text or '').split(',') if e] + [e for e in os.environ.get('D2O_WEIGHTS', '').split(os.pathsep) if e]
    published = [os.path.basename(url) for url in WEIGHTS.values()]
    for entry in entries:
        name, path = _split_entry(entry)
        if name and name not in WEIGHTS:
            raise ValueError(f'weights {entry!r}: {name!r} is not one of {", ".join(WEIGHTS)}')
        if not os.path.exists(path):
            raise FileNotFoundError(f'weights {entry!r}: {path} not found')
        if not name and os.path.isfile(path) and os.path.basename(path) not in published:
            raise ValueError(f'weights {entry!r}: a file must keep its published name ({", ".join(published)}) or be '
                             f'given as NAME=FILE')
    return entries


def weights_flag(text):
    """argparse type of --weights: checked as the run starts, not after minutes of set-up."""
    try:
        weight_entries(text)
    except (ValueError, OSError) as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix(f'weights {text!r}: ')) from None
    return text


def find_weights(name, weights=None):
    """The local copy of the published file `name` (a key of WEIGHTS): from --weights/$D2O_WEIGHTS, else the cache;
    None if there is none."""
    base = os.path.basename(WEIGHTS[name])
    for entry in weight_entries(weights):
        key, path = _split_entry(entry)
        if key == name or (not key and os.path.basename(path) == base and os.path.isfile(path)):
            return path
        if not key and os.path.isfile(os.path.join(path, base)):
            return os.path.join(path, base)
    cached = os.path.join(cache_dir(), base)
    return cached if os.path.isfile(cached) else None


def weight_files(names, weights=None):
    """{name: local path} of the named published files, downloading the missing ones; offline, one error that names
    every file still missing and where it goes."""
    found, failed = {}, {}
    for name in names:
        try:
            found[name] = find_weights(name, weights) or download(WEIGHTS[name], f'{name} weights')
        except DownloadError as e:
            failed[name] = e
    if failed:
        raise RuntimeError(f'{len(failed)} weight file(s) neither given (--weights, D2O_WEIGHTS) nor in {cache_dir()}, and the '
                           f'download failed ({next(iter(failed.values())).reason}):\n' +
                           ''.join(f'  {name}: {e.url}\n' for name, e in failed.items()) +
                           f'Fetch them on a machine with internet (python ckpt.py --download {" ".join(failed)}) and copy '
                           f'them into {cache_dir()}, or point --weights or D2O_WEIGHTS at a folder holding them.')
    return found


def resolve(src, what='checkpoint'):
    """Local path, URL or official name -> local path."""
    if os.path.isfile(src):
        return src
    if src in unet.OFFICIAL or src.removesuffix('.pkl') in unet.OFFICIAL:
        return download(unet.EDM_URL + src.removesuffix('.pkl') + '.pkl', what)
    if src.startswith(('http://', 'https://')):
        return download(src, what)
    raise FileNotFoundError(f'{what} {src!r} not found: give a path, a URL, or one of {", ".join(unet.OFFICIAL)}')


CKPT_FORMAT = 'd2o-checkpoint-1'


def _plain(v):
    if isinstance(v, (list, tuple)):
        return [_plain(u) for u in v]
    if isinstance(v, dict):
        return {str(k): _plain(u) for k, u in v.items()}
    return v.item() if isinstance(v, np.generic) else v


def save_checkpoint(path, net, **meta):
    """torch.save of plain tensors + JSON-able metadata, written atomically. Loadable with weights_only=True."""
    ckpt = dict(format=CKPT_FORMAT, class_name=getattr(net, 'precond', type(net).__name__),
                init_kwargs=json.loads(json.dumps(_plain(net.init_kwargs))), meta=json.loads(json.dumps(meta)),
                state_dict={k: v.detach().cpu().clone() for k, v in net.state_dict().items()})
    atomic_save(ckpt, path)


def save_snapshot(rundir, nimg, G_ema, D=None, best=False, **meta):
    """A run's snapshot at nimg images: network-snapshot-*.pt (G_ema), disc-snapshot-*.pt (D, if given) and, when
    best, network-best.pt."""
    save_checkpoint(os.path.join(rundir, f'network-snapshot-{nimg:09d}.pt'), G_ema, **meta)
    if D is not None:
        save_checkpoint(os.path.join(rundir, f'disc-snapshot-{nimg:09d}.pt'), D, **dict(meta, kind='disc'))
    if best:
        save_checkpoint(os.path.join(rundir, 'network-best.pt'), G_ema, **meta)


def atomic_write(path, write):
    """write(file) into PATH.PID.tmp, then rename it to PATH: a crash leaves the old file or the new one, never half of
    one (a killed write leaves only the .tmp, which train.py removes at start-up)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f'{path}.{os.getpid()}.tmp'
    try:
        with open(tmp, 'wb') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def check_writable(path, error=ValueError):
    """Before long work that ends in atomic_write(path): stop now, with one line, if path cannot be written (a folder,
    a place without write permission, a file where a folder should be), not after the work."""
    if os.path.isdir(path):
        raise error(f'--dest {path} is a folder; give a file name')
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as e:
        raise error(f'--dest {path}: cannot write there ({e.strerror}); give a writable place') from None


def atomic_text(path, text):
    """atomic_write of a text file (UTF-8)."""
    atomic_write(path, lambda f: f.write(text.encode()))


def atomic_save(obj, path):
    atomic_write(path, lambda f: torch.save(obj, f))


def load_verified(path):
    """torch.load(weights_only=True) of a torch zip after checking the CRC-32 of every member, which torch.load does
    not do (flipped bytes inside a tensor would load silently). Errors name the file and what is wrong."""
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, EOFError) as e:
        raise ValueError(f'{path} is not a complete torch file ({e}); was it truncated?') from None
    if bad is not None:
        raise ValueError(f'{path} is damaged: {bad} inside it fails its CRC-32 check')
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:  # torch's message advises weights_only=False, which would run the file's code
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        reason = next((line.split('WeightsUnpickler error:')[-1].strip() for line in lines
                       if 'GLOBAL' in line or 'WeightsUnpickler' in line), lines[-1] if lines else type(e).__name__)
        raise UnsafePickleError(f'{path} was refused: {reason} (our files hold only tensors and plain values)') from None
    except Exception as e:
        raise ValueError(f'{path} could not be read ({type(e).__name__}: {e})') from None


def _build(class_name, init_kwargs, state_dict, src):
    if class_name not in unet.PRECONDS:
        raise UnsafePickleError(f'{src}: network class {class_name!r} is not one we can rebuild '
                                f'(known: {", ".join(unet.PRECONDS)})')
    kwargs = _plain(dict(init_kwargs))
    try:
        net = unet.PRECONDS[class_name](**kwargs)
        missing = net.load_state_dict(state_dict, strict=False)
    except TypeError as e:
        raise ValueError(f'{src}: cannot build {class_name} from the recorded constructor arguments: {e}') from None
    if missing.missing_keys or missing.unexpected_keys:
        raise ValueError(f'{src}: weights do not match the architecture: missing {missing.missing_keys[:5]}, '
                         f'unexpected {missing.unexpected_keys[:5]}')
    net.load_state_dict(state_dict, strict=True)
    return net.eval().requires_grad_(False)


def read_checkpoint(src):
    """(net, meta) from a path/URL/official name. meta is {} for EDM pickles, ours otherwise."""
    path = resolve(src)
    with open(path, 'rb') as f:
        head = f.read(4)
    if head[:2] == b'PK':  # a zip: torch.save, i.e. our own format
        ckpt = load_verified(path)
        if not isinstance(ckpt, dict) or ckpt.get('format') != CKPT_FORMAT:
            raise ValueError(f'{path}: a torch file, but not a d2o checkpoint (no format {CKPT_FORMAT!r})')
        return _build(ckpt['class_name'], ckpt['init_kwargs'], ckpt['state_dict'], path), ckpt['meta']
    with open(path, 'rb') as f:
        data = safe_unpickle(f)
    ema = data.get('ema') if isinstance(data, dict) else None
    if not isinstance(ema, PersistentObject):
        raise ValueError(f'{path}: not an EDM snapshot (expected a dict with an "ema" network)')
    return _build(ema.class_name, ema.init_kwargs, ema.state_dict(), path), {}


def load_edm(src):
    """An EDM network (EDM .pkl, loaded without executing it, or our checkpoint): our own class, eval mode."""
    return read_checkpoint(src)[0]


def starting_net(init, arch=None, seed=0):
    """The network a run starts from, in train mode: the checkpoint --init (path, URL or official name) or, for
    init 'random', a fresh network (seeded) of --arch's architecture (a name in unet.ARCHS or a checkpoint to copy).
    -> (net, where it came from). A bad flag raises ValueError with one line naming it."""
    src = init if init != 'random' else arch
    if src is None:
        raise ValueError('--init random needs --arch (an official EDM name, "toy", or a checkpoint to copy)')
    if init == 'random' and src in unet.ARCHS:
        kwargs, cls = unet.ARCHS[src], unet.EDMPrecond
    elif init == 'random' and not os.path.isfile(src) and '://' not in src and not src.endswith(('.pkl', '.pt')):
        raise ValueError(f'--arch {src!r} is no architecture ({", ".join(unet.ARCHS)}) and no checkpoint file')
    else:
        try:
            net, _ = read_checkpoint(src)
        except (OSError, ValueError, RuntimeError, pickle.UnpicklingError) as e:
            message = ' '.join(str(e).split())
            raise ValueError(f'{"--arch" if init == "random" else "--init"} ' +
                             (message if src in message else f'{src}: {message}')) from None
        if init != 'random':
            return net.train().requires_grad_(True), init
        kwargs, cls = net.init_kwargs, type(net)
    torch.manual_seed(seed)  # identical on every rank (and DDP broadcasts rank 0's anyway)
    return cls(**kwargs).train(), f'random ({src} architecture)'

# ----------------------------------------------------------------------------------------------------------------
# train.py's run directory: training states verified on load, the newest two kept, named by images seen so that
# names never collide and sort in order.

def state_file(rundir, nimg):
    return os.path.join(rundir, f'training-state-{nimg:09d}.pt')


def state_files(rundir):
    """rundir's training states, oldest first (their names sort by images seen)."""
    return sorted(glob.glob(os.path.join(rundir, 'training-state-*.pt')))


def state_nimg(path):
    """The images seen by the state that state_file named path."""
    return int(os.path.basename(path)[len('training-state-'):-len('.pt')])


def read_state(path):
    state = load_verified(path)
    if not isinstance(state, dict) or not {'G', 'G_ema', 'opt_G', 'nimg', 'it', 'args'} <= state.keys():
        raise ValueError(f'{path}: not a training state written by train.py')
    return state


def newest_state(rundir, log):
    """(path, state) of the newest state that verifies, falling back to older ones with a message; (None, None) in a
    run directory without states. States that exist but none verifies: stop, never start afresh over a run's files."""
    paths = state_files(rundir)[::-1]
    for i, path in enumerate(paths):
        try:
            return path, read_state(path)
        except (ValueError, pickle.UnpicklingError) as e:
            log(f'warning: {e}; ' + (f'falling back to the previous state {paths[i + 1]}' if i + 1 < len(paths) else 'no older state'))
    if paths:
        sys.exit(f'error: none of the {len(paths)} training states in {rundir} is usable (see above); move them away to '
                 f'start afresh there, or give another --rundir')
    return None, None


def resume_point(rundir, resume, log):
    """(path, state) that --resume names: "auto" the newest good state in rundir ((None, None) if none), "new" none
    (start over there), else a file. "auto" in a directory whose records go past 0 kimg but that has no state (deleted,
    or a fresh clone of a repository that keeps records only) stops: starting over would replace those records."""
    if os.path.exists(rundir) and not os.path.isdir(rundir):
        sys.exit(f'error: --rundir {rundir} is a file, not a directory; give a directory for the run')
    if resume == 'new':
        return None, None
    try:
        path, state = newest_state(rundir, log) if resume == 'auto' else (resume, read_state(resume))
    except (OSError, ValueError, pickle.UnpicklingError) as e:
        sys.exit(f'error: --resume {e}')
    recorded = max([record['kimg'] for record in read_metrics(rundir)], default=0)
    if state is None and recorded > 0:
        sys.exit(f'error: {rundir} records a run to {recorded:g} kimg (metrics.jsonl) but holds no training state to '
                 f'resume from; give another --rundir, or --resume new to start over and replace its records')
    return path, state


def kept_states(state_path, rundir):
    """The list save_state starts pruning from: the resumed state if it is one of rundir's, else none."""
    here = state_path and os.path.dirname(os.path.abspath(state_path)) == os.path.abspath(rundir)
    return [state_path] if here else []


def save_state(state, rundir, kept):
    """Write the state, then delete every state but it and the one before (kept: newest last, updated here)."""
    kept.append(state_file(rundir, state['nimg']))
    atomic_save(state, kept[-1])
    del kept[:-2]
    for old in state_files(rundir):
        if old not in kept:
            os.remove(old)


def open_rundir(rundir, nimg, options):
    """Before a run writes: remove what killed writes left (*.tmp), keep the status lines up to the resumed state (a
    killed run may have written lines after its last state, or half a line; a run at 0 kimg writes all again, the
    start's FID too), and record the options."""
    os.makedirs(rundir, exist_ok=True)
    for tmp in glob.glob(os.path.join(rundir, '*.tmp')):
        os.remove(tmp)
    path = os.path.join(rundir, 'metrics.jsonl')
    if os.path.isfile(path):
        keep = [record for record in read_metrics(rundir) if round(record['kimg'] * 1000) <= nimg] if nimg else []
        atomic_text(path, ''.join(json.dumps(record) + '\n' for record in keep))
    atomic_text(os.path.join(rundir, 'options.json'), json.dumps(options, indent=1))


def append_metrics(rundir, line):
    with open(os.path.join(rundir, 'metrics.jsonl'), 'a') as f:
        f.write(json.dumps(line) + '\n')


def read_metrics(rundir):
    """The records of rundir/metrics.jsonl in order, up to the first damaged one (half a line: a run killed while
    writing it); [] without the file."""
    records, path = [], os.path.join(rundir, 'metrics.jsonl')
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                try:
                    record = json.loads(line)
                    float(record['kimg'])
                except (ValueError, KeyError, TypeError):
                    break
                records.append(record)
    return records


def read_fids(rundir):
    """The (kimg, FID) pairs that rundir/metrics.jsonl records: a run's FID history (train.py resumes it from here)."""
    return [(record['kimg'], record['fid']) for record in read_metrics(rundir) if record.get('fid') is not None]


def state_dicts(objects, **values):
    """A training state: the state_dict() of each named object (networks, optimizers, scalers) plus plain values."""
    return dict({name: obj.state_dict() for name, obj in objects.items()}, **values)


def load_state_dicts(objects, state):
    """The inverse of state_dicts for the objects; an empty saved dict (a disabled GradScaler's) is skipped."""
    for name, obj in objects.items():
        if state.get(name):
            obj.load_state_dict(state[name])


def file_report(path):
    """Size and SHA-256 of a local file (python ckpt.py --files), to compare with a copy elsewhere."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return f'{os.path.getsize(path):,} bytes, SHA-256 {digest.hexdigest()}'


if __name__ == '__main__':
    parser = Parser(prog='ckpt.py', description='Fetch and safely load checkpoints; list and fetch the weight files.')
    parser.add_argument('src', nargs='?', help='official EDM name, path or URL of a .pkl or our .pt')
    parser.add_argument('--download', metavar='NAME|URL', nargs='+', help=f'download into the cache: {", ".join(WEIGHTS)}, '
                        'an official EDM name, or a URL')
    parser.add_argument('--files', action='store_true', help='list the weight files: URL, where each goes, what is found here')
    parser.add_argument('--weights', type=weights_flag, default=None, help='folders or files holding weight files (comma-separated)')
    args = parser.parse_args()
    try:
        if args.download:
            for src in args.download:
                if src not in WEIGHTS and src.removesuffix('.pkl') not in unet.OFFICIAL and '://' not in src:
                    parser.error(f'--download {src}: not one of {", ".join(WEIGHTS)}, an official EDM name '
                                 f'(python unet.py --list) or a URL')
                print(weight_files([src])[src] if src in WEIGHTS else resolve(src))
        elif args.files:
            for name, url in WEIGHTS.items():
                path = find_weights(name, args.weights)
                print(f'{name}: {url}\n  goes to {os.path.join(cache_dir(), os.path.basename(url))}\n  here: '
                      f'{f"{path}, {file_report(path)}" if path else "missing"}')
        elif args.src:
            net, meta = read_checkpoint(args.src)
            print(f'{type(net).__name__}/{type(net.model).__name__}: {net.img_resolution}x{net.img_resolution}, label_dim '
                  f'{net.label_dim}, {unet.num_params(net):,} parameters, {len(net.state_dict())} tensors; {meta or "EDM pickle"}')
        else:
            parser.print_help()
    except (OSError, ValueError, RuntimeError, pickle.UnpicklingError) as e:
        sys.exit(f'error: {e}')

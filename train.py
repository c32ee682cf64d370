"""D2O: turn a pretrained EDM diffusion model into a one-step generator by fine-tuning it with a GAN loss only.

    python train.py                                    # D2O on the toy world from the committed teacher (CPU)
    python train.py --freeze 1                         # D2O-F: the residual blocks' 3x3 convs stay frozen
    python train.py --init random                      # ablation: the same GAN from random initialisation
    python train.py --loss edm --init random --data toy --kimg 400   # pretrain a teacher with EDM's loss
    torchrun --standalone --nproc_per_node=8 train.py --data imagenet64
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 train.py --data cifar10

Each iteration: a G step (non-saturating loss on fresh z), a D step (fresh z, fakes from the just-updated G, the
real batch), and every 16 iterations a lazy R1 step on reals. Progress is counted in images (kimg). A run directory
holds metrics.jsonl, sample grids, G_ema snapshots (our checkpoint format) and the full training state; running the
same command again continues exactly from the newest state.
"""

import argparse
import contextlib
import copy
import gc
import glob
import json
import math
import os
import pickle
import resource
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

import data
import disc
import fid as fidlib
import freeze as freezing
import sample
import unet

# Per-dataset recipes (spec d2o.md 6). The official losses sum over the per-GPU batch (64 images; 128 on ImageNet)
# while R1 is a batch mean, so its effective R1 weight is gamma/B_gpu relative to a per-sample-mean GAN loss. Our
# losses are batch means (the balance no longer depends on the GPU count), so r1_gamma = 1e-4 / B_gpu_official.
PRESETS = {
    'cifar10':      dict(data='datasets/cifar10-32x32.zip', cond=False, init='edm-cifar10-32x32-uncond-ve', lr=1e-4, dlr=1e-4, batch=256, kimg=5000, r1_gamma=1e-4 / 64, ema=500),
    'cifar10-cond': dict(data='datasets/cifar10-32x32.zip', cond=True, init='edm-cifar10-32x32-cond-ve', lr=1e-4, dlr=1e-4, batch=256, kimg=5000, r1_gamma=1e-4 / 64, ema=500),
    'afhqv2-64':    dict(data='datasets/afhqv2-64x64.zip', cond=False, init='edm-afhqv2-64x64-uncond-ve', lr=2e-5, dlr=4e-5, batch=256, kimg=10000, r1_gamma=1e-4 / 64, ema=500),
    'ffhq-64':      dict(data='datasets/ffhq-64x64.zip', cond=False, init='edm-ffhq-64x64-uncond-ve', lr=2e-5, dlr=4e-5, batch=256, kimg=10000, r1_gamma=1e-4 / 64, ema=500),
    'imagenet64':   dict(data='datasets/imagenet-64x64.zip', cond=True, init='edm-imagenet-64x64-cond-adm', lr=8e-6, dlr=4e-5, batch=512, kimg=10000, r1_gamma=1e-4 / 128, ema=50000),
    'toy':          dict(data=data.toy_path(16), cond=True, init='assets/toy-edm.pt', lr=1e-4, dlr=1e-4, batch=16, kimg=12, r1_gamma=0.1, ema=500, dwidth=64, fid_num=500, fid_ref=1000),
}
# Architectures for --init random when the init source is not a file (the toy teacher's, an official one's).
ARCHS = {'toy': dict(model_type='SongUNet', img_resolution=16, img_channels=3, label_dim=4, model_channels=32,
                     channel_mult=[1, 2, 2], num_blocks=2, attn_resolutions=[8], dropout=0.0, embedding_type='positional',
                     encoder_type='standard', decoder_type='standard', channel_mult_noise=1, resample_filter=[1, 1])}
EDM_LOSS = dict(lr=1e-3, lr_rampup=10000, ema=500, betas=(0.9, 0.999))  # EDM's defaults for --loss edm
RESNET_DLR = 2e-3  # the ResNet D has equalized-lr layers, which train at StyleGAN2's lr scale (the presets' dlr is for the projected D)

class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line on stderr instead of the usage block
        sys.exit(f'error: {message} (python train.py --help lists the flags)')


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


POSITIVE, POSITIVE_INT, NONNEG, NONNEG_INT = number(float, 0), number(int, 0), number(float, 0, True), number(int, 0, True)
parser = Parser(description='D2O / D2O-F GAN fine-tuning of EDM models, and EDM pretraining.', allow_abbrev=False)
parser.add_argument('--data', default='toy', help=f'preset ({", ".join(PRESETS)}) or a dataset zip/folder')
parser.add_argument('--cond', type=int, default=None, choices=[0, 1], help='use class labels (default: preset, or whether the data has them)')
parser.add_argument('--init', default=None, help='official EDM name, .pkl/.pt path or URL, or "random"')
parser.add_argument('--arch', default=None, help='architecture for --init random: official name, "toy", or a checkpoint')
parser.add_argument('--freeze', type=int, default=0, choices=sorted(freezing.LEVELS), help='0: D2O, 1: D2O-F (2, 3: more)')
parser.add_argument('--loss', default='d2o', choices=['d2o', 'edm'], help="d2o: GAN fine-tuning; edm: EDM's denoising loss")
# optimisation
parser.add_argument('--batch', type=POSITIVE_INT, default=None, help='total batch over all GPUs')
parser.add_argument('--batch-gpu', type=POSITIVE_INT, default=None, help='micro-batch per GPU; gradients accumulate up to batch/world')
parser.add_argument('--kimg', type=POSITIVE, default=None, help='training duration in thousands of images (raise it to extend a run)')
parser.add_argument('--lr', type=POSITIVE, default=None, help='G learning rate (Adam, betas (0, 0.99); EDM loss (0.9, 0.999))')
parser.add_argument('--dlr', type=POSITIVE, default=None, help='D learning rate (scaled by interval/(interval+1) for lazy R1)')
parser.add_argument('--lr-rampup', type=NONNEG, default=None, help='linear lr warm-up in kimg (EDM loss: 10000)')
parser.add_argument('--r1-gamma', type=NONNEG, default=None, help='R1 weight on real images (batch-mean losses)')
parser.add_argument('--r1-interval', type=POSITIVE_INT, default=16, help='lazy R1 every this many iterations (official: 16)')
parser.add_argument('--ema', type=NONNEG, default=None, help='EMA half-life in kimg (capped at 5%% of images seen)')
parser.add_argument('--ema-rampup', type=NONNEG, default=0.05, help='EMA half-life at most this fraction of images seen')
parser.add_argument('--disc', default='auto', choices=['auto', 'resnet', 'projected'],
                    help='projected: the official D on pretrained backbones; auto: projected for the official presets when its weight files are in the cache, else resnet')
parser.add_argument('--dwidth', type=POSITIVE_INT, default=None, help='ResNet D channels at full resolution')
parser.add_argument('--precision', default=None, choices=['bf16', 'fp16', 'fp32'], help='G compute (default: bf16 on CUDA, fp32 on CPU)')
parser.add_argument('--seed', type=NONNEG_INT, default=0, help='seed for initialisation, data order and noise')
# logging and checkpoints
parser.add_argument('--rundir', default=None, help='run directory (default runs/{data}-{loss}[-f{freeze}][-random])')
parser.add_argument('--resume', default='auto', help='"auto": the newest good state in the run directory; or a state file')
parser.add_argument('--tick', type=POSITIVE, default=None, help='status line every this many kimg')
parser.add_argument('--snap', type=POSITIVE, default=None, help='snapshot, grid and state every this many kimg')
parser.add_argument('--fid-every', type=NONNEG, default=0, help='FID every this many kimg (0: only at start and end)')
parser.add_argument('--fid-num', type=NONNEG_INT, default=None, help='generated images per FID, 0: no FID (default 5000; toy 500)')
parser.add_argument('--fid-ref', type=POSITIVE_INT, default=None, help='real images in the reference statistics (default 50000; toy 1000)')

# What a run is: a resume refuses a different value. Flags that may change mid-run take effect when given again;
# batch_gpu, precision, rundir and resume belong to the session.
FIXED = ('data', 'cond', 'init', 'arch', 'loss', 'freeze', 'batch', 'disc', 'dwidth', 'seed')
CHANGEABLE = ('kimg', 'lr', 'dlr', 'lr_rampup', 'r1_gamma', 'r1_interval', 'ema', 'ema_rampup', 'tick', 'snap',
              'fid_every', 'fid_num', 'fid_ref')
UNSET = object()


def parse_flags(argv=None):
    """(args, typed): the flags, and the names of those typed on the command line (argparse leaves a value that is
    already in the namespace alone, so pre-filling it with a sentinel tells typed flags from defaults)."""
    defaults = vars(parser.parse_args([]))
    args = parser.parse_args(argv, argparse.Namespace(**dict.fromkeys(defaults, UNSET)))
    typed = {k for k, v in vars(args).items() if v is not UNSET}
    for k in defaults.keys() - typed:
        setattr(args, k, defaults[k])
    return args, typed


def resume_flags(args, typed, saved, where):
    """Flags of a resumed run: the run's own, except changeable ones typed now. A typed fixed flag that differs from
    the run's stops with one line. Returns the changes, e.g. ['--lr 0.0001 -> 0.0003']."""
    changes = []
    for k in FIXED + CHANGEABLE:
        flag, now, old = '--' + k.replace('_', '-'), getattr(args, k), saved.get(k, parser.get_default(k))
        if k not in typed or (k == 'disc' and now == 'auto'):
            setattr(args, k, old)
        elif k in FIXED and now != old and not (k in ('init', 'arch', 'data') and os.path.normpath(str(now)) == os.path.normpath(str(old))):
            sys.exit(f'error: {flag} {now} differs from the {old} that the run in {where} was started with, and it cannot '
                     f'change mid-run; to start a new run instead, give another --rundir')
        elif now != old:
            changes.append(f'{flag} {old} -> {now}')
    return changes

# ------------------------------------------------------------------------------------------------------------------
# Training states: verified on load, the newest two kept, named by images seen so that names never collide.

def state_file(rundir, nimg):
    return os.path.join(rundir, f'training-state-{nimg:09d}.pt')


def read_state(path):
    state = unet.load_verified(path)
    if not isinstance(state, dict) or not {'G', 'G_ema', 'opt_G', 'nimg', 'it', 'args'} <= state.keys():
        raise ValueError(f'{path}: not a training state written by train.py')
    return state


def newest_state(rundir, log):
    """(path, state) of the newest state that verifies, falling back to older ones with a message; (None, None) in a
    run directory without states. States that exist but none verifies: stop, never start afresh over a run's files."""
    paths = sorted(glob.glob(os.path.join(rundir, 'training-state-*.pt')), reverse=True)
    for i, path in enumerate(paths):
        try:
            return path, read_state(path)
        except (ValueError, pickle.UnpicklingError) as e:
            log(f'warning: {e}; ' + (f'falling back to the previous state {paths[i + 1]}' if i + 1 < len(paths) else 'no older state'))
    if paths:
        sys.exit(f'error: none of the {len(paths)} training states in {rundir} is usable (see above); move them away to '
                 f'start afresh there, or give another --rundir')
    return None, None


def trim_metrics(path, nimg):
    """Keep the status lines up to the resumed state: a killed run may have written lines after its last state, or
    half a line."""
    if not os.path.isfile(path):
        return
    keep = []
    with open(path) as f:
        for line in f:
            try:
                if round(json.loads(line)['kimg'] * 1000) > nimg:
                    break
            except (ValueError, KeyError, TypeError):
                break
            keep.append(line)
    unet.atomic_write(path, lambda f: f.write(''.join(keep).encode()))

def g_loss(logits):
    """Non-saturating G loss per sample: softplus(-l), mean over positions, summed over D's branches."""
    return sum(F.softplus(-l).flatten(1).mean(1) for l in logits)


def d_loss(fake_logits, real_logits):
    return sum(F.softplus(l).flatten(1).mean(1) for l in fake_logits) + sum(F.softplus(-l).flatten(1).mean(1) for l in real_logits)


def r1_penalty(D, x, c):
    """||d(sum of all logits)/dx_i||^2 per sample, w.r.t. the real image; create_graph for the double backward."""
    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(sum(l.sum() for l in D(x, c)), x, create_graph=True)
    return grad.square().flatten(1).sum(1)


def edm_loss(net, x, c, sigma, noise, sigma_data=0.5):
    """EDM's denoising loss per sample (mean over pixels), weight (sigma^2 + sd^2) / (sigma sd)^2."""
    weight = (sigma ** 2 + sigma_data ** 2) / (sigma * sigma_data) ** 2
    return (weight * (net(x + noise * sigma, sigma, c) - x).square()).flatten(1).mean(1)


class DObjective(torch.nn.Module):
    """D's loss as one forward, so that DDP sees each D parameter once per backward (fake and real passes, or R1)."""
    def __init__(self, D):
        super().__init__()
        self.D = D

    def forward(self, real, fake, c, r1_weight=0.0):
        if r1_weight:
            # R1 leaves parameters that only shift the logits (the ResNet D's output bias) without a gradient, and DDP's
            # reducer then waits for them forever. 0 x each trainable parameter gives every one an exact zero gradient
            # for the cost of one sum, where find_unused_parameters would search the graph on every step.
            untouched = sum(q.sum() for q in self.D.parameters() if q.requires_grad) * 0
            return r1_weight * r1_penalty(self.D, real, c) + untouched
        return d_loss(self.D(fake, c), self.D(real, c))


def build_net(args, preset):
    """The network to train, as our EDM preconditioner, plus a note of where it came from."""
    src = args.init if args.init != 'random' else args.arch or preset.get('arch') or preset.get('init')
    if src is None:
        sys.exit('error: --init random needs --arch (an official EDM name, "toy", or a checkpoint to copy the architecture of)')
    if args.init == 'random' and (src in ARCHS or src in unet.OFFICIAL):
        kwargs, cls = ARCHS.get(src) or unet.OFFICIAL[src], unet.EDMPrecond
    else:
        try:
            net, _ = unet.read_checkpoint(src)
        except (OSError, ValueError, RuntimeError, pickle.UnpicklingError) as e:
            message = ' '.join(str(e).split())
            sys.exit(f'error: --{"init" if args.init != "random" else "arch"} ' + (message if src in message else f'{src}: {message}'))
        if args.init != 'random':
            return net.train().requires_grad_(True), args.init
        kwargs, cls = net.init_kwargs, type(net)
    torch.manual_seed(args.seed)  # identical on every rank (and DDP broadcasts rank 0's anyway)
    return cls(**kwargs).train(), f'random ({src} architecture)'


def without_augment(net):
    """D2O never feeds augment labels; rebuild without EDM's augment layer so every G parameter is used."""
    if net.model.map_augment is None:
        return net
    new = type(net)(**dict(net.init_kwargs, augment_dim=0))
    new.load_state_dict({k: v for k, v in net.state_dict().items() if 'map_augment' not in k})
    return new.train()


def resolve_flags(argv, world, device, log):
    """The run's flags (the preset's defaults, or a resumed run's own values with the changes typed now) and its
    newest good state. Reads files only: every refusal happens before anything in the run directory changes."""
    args, typed = parse_flags(argv)
    name = f'{os.path.splitext(os.path.basename(args.data))[0]}-{args.loss}' + (f'-f{args.freeze}' if args.freeze else '') \
        + ('-random' if args.init == 'random' else '')
    args.rundir = args.rundir or os.path.join('runs', name)
    if os.path.exists(args.rundir) and not os.path.isdir(args.rundir):
        sys.exit(f'error: --rundir {args.rundir} is a file, not a directory; give a directory for the run')
    if args.resume == 'auto':
        state_path, state = newest_state(args.rundir, log)
    else:
        try:
            state_path, state = args.resume, read_state(args.resume)
        except (OSError, ValueError, pickle.UnpicklingError) as e:
            sys.exit(f'error: --resume {e}')
    changes = resume_flags(args, typed, state['args'], state_path) if state else []
    preset = dict(PRESETS.get(args.data, dict(data=args.data, init=None, lr=1e-4, dlr=1e-4, batch=64, kimg=1000, r1_gamma=0.1, ema=500)))
    edm = args.loss == 'edm'
    defaults = dict(init=preset['init'], batch=preset['batch'], kimg=preset['kimg'], lr=EDM_LOSS['lr'] if edm else preset['lr'],
                    lr_rampup=EDM_LOSS['lr_rampup'] if edm else 0, r1_gamma=preset['r1_gamma'],
                    ema=EDM_LOSS['ema'] if edm else preset['ema'], dwidth=preset.get('dwidth', 64),
                    precision='bf16' if device.type == 'cuda' else 'fp32', tick=max(preset['kimg'] / 20, 1), snap=preset['kimg'] / 4,
                    fid_num=preset.get('fid_num', 5000), fid_ref=preset.get('fid_ref', 50000), cond=int(preset.get('cond', True)))
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.init is None:
        sys.exit('error: give --init (an EDM checkpoint, our checkpoint, or "random")')
    per_gpu = args.batch // world
    args.batch_gpu = args.batch_gpu or per_gpu
    if args.batch % world or per_gpu % args.batch_gpu:
        sys.exit(f'error: --batch {args.batch} must split into {world} GPUs x whole micro-batches of --batch-gpu {args.batch_gpu}')
    return args, preset, state_path, state, changes


def main(argv=None):
    rank, world, local = int(os.environ.get('RANK', 0)), int(os.environ.get('WORLD_SIZE', 1)), int(os.environ.get('LOCAL_RANK', 0))
    device = torch.device('cuda', local) if torch.cuda.is_available() else torch.device('cpu')
    log = print if rank == 0 else (lambda *args, **kw: None)
    resolved = resolve_flags(argv, world, device, log)
    # DDP from torchrun's environment
    if world > 1:
        torch.distributed.init_process_group('nccl' if device.type == 'cuda' else 'gloo', device_id=device if device.type == 'cuda' else None)
    if device.type == 'cuda':
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = True
    try:
        train(*resolved, rank, world, device, log)
        if world > 1:
            # Leave together, with train()'s DDP wrappers already freed: a rank that tears down gloo while its peer
            # still writes a snapshot, or that exits with DDP's reducer still holding the group, can abort at exit.
            gc.collect()
            torch.distributed.barrier()
    finally:
        if world > 1:
            torch.distributed.destroy_process_group()


def train(args, preset, state_path, state, changes, rank, world, device, log):
    edm, per_gpu = args.loss == 'edm', args.batch // world
    accum = per_gpu // args.batch_gpu

    # ---------------------------------------------------------------- data and networks
    path = preset['data']
    if args.data == 'toy' and not os.path.exists(path) and rank == 0:
        log(f'writing the toy world to {path} (once) ...')
        data.make_toy(path)
    if world > 1:
        torch.distributed.barrier()
    try:
        dataset = data.ImageDataset(path, use_labels=bool(args.cond))
    except data.DatasetError as e:
        sys.exit(f'error: {e}')
    net, source = build_net(args, preset)
    if (net.img_resolution, net.img_channels, net.label_dim) != (dataset.resolution, dataset.num_channels, dataset.label_dim):
        sys.exit(f'error: the network ({source}) is {net.img_channels}x{net.img_resolution}x{net.img_resolution} with '
                 f'label_dim {net.label_dim}, but {path} holds {dataset.num_channels}x{dataset.resolution}x{dataset.resolution} '
                 f'images with label_dim {dataset.label_dim}{" (labels off: --cond 0)" if not args.cond else ""}. Pick a matching --init/--data.')
    if edm:
        G = net  # the denoiser itself is trained
    else:
        G = unet.D2OGenerator(without_augment(net))
        pair = disc.PAIRS['cifar' if dataset.resolution <= 32 else 'deit']  # the official pairs: VGG for 32x32, DeiT for 64x64
        if args.disc == 'auto':
            args.disc = 'projected' if args.data in PRESETS and args.data != 'toy' and disc.backbones_available(pair) else 'resnet'
        if args.dlr is None:
            args.dlr = RESNET_DLR if args.disc == 'resnet' else preset['dlr']
        torch.manual_seed(args.seed)
        try:
            D = disc.ProjectedD(pair, dataset.label_dim, seed=args.seed) if args.disc == 'projected' else \
                disc.ResNetD(dataset.resolution, dataset.num_channels, dataset.label_dim, args.dwidth)
        except RuntimeError as e:
            sys.exit(f'error: {e}')
        D = D.to(device, memory_format=torch.channels_last if device.type == 'cuda' else torch.preserve_format)
        d_params = [q for q in D.parameters() if q.requires_grad]  # the projected D's backbones stay frozen
    frozen, total = freezing.freeze(G, args.freeze, verbose=rank == 0)
    G.to(device)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    trainable = [q for q in G.parameters() if q.requires_grad]
    ddp = lambda m: torch.nn.parallel.DistributedDataParallel(m, device_ids=[device] if device.type == 'cuda' else None) if world > 1 else m
    G_ddp = ddp(G)
    lazy = args.r1_interval / (args.r1_interval + 1)  # lazy-regularisation correction of D's lr and beta2
    opt_G = torch.optim.Adam(trainable, lr=args.lr, betas=EDM_LOSS['betas'] if edm else (0.0, 0.99), eps=1e-8)
    if not edm:
        opt_D = torch.optim.Adam(d_params, lr=args.dlr * lazy, betas=(0.0, 0.99 ** lazy), eps=1e-8)
        D_ddp = ddp(DObjective(D))
    amp = args.precision != 'fp32'
    amp_dtype = torch.bfloat16 if args.precision == 'bf16' else torch.float16
    autocast = lambda: torch.autocast(device.type, amp_dtype) if amp else contextlib.nullcontext()
    scaler = torch.amp.GradScaler(device.type, enabled=args.precision == 'fp16')

    # ---------------------------------------------------------------- resume: the state's weights and counters
    nimg, it = 0, 0
    if state:
        G.load_state_dict(state['G']), G_ema.load_state_dict(state['G_ema']), opt_G.load_state_dict(state['opt_G'])
        if state['scaler'] and scaler.is_enabled():  # an fp32/bf16 run's scaler state is empty
            scaler.load_state_dict(state['scaler'])
        if not edm:
            D.load_state_dict(state['D']), opt_D.load_state_dict(state['opt_D'])
            for group in opt_D.param_groups:  # the loaded state brings the old ones back
                group['betas'] = (0.0, 0.99 ** lazy)
        nimg, it = state['nimg'], state['it']
        log(f'resumed from {state_path} at {nimg / 1000:g} kimg' + (f'; changed: {", ".join(changes)}' if changes else ''))
    if rank == 0:  # nothing in the run directory changes before this point
        os.makedirs(args.rundir, exist_ok=True)
        for tmp in glob.glob(os.path.join(args.rundir, '*.tmp')):  # left by a write that was killed
            os.remove(tmp)
        trim_metrics(os.path.join(args.rundir, 'metrics.jsonl'), nimg)
    log(f'{"EDM pretraining" if edm else "D2O" + ("-F" if args.freeze == 1 else "")} of {source} on {path} '
        f'({len(dataset)} images, {dataset.resolution}x{dataset.resolution}, label_dim {dataset.label_dim})')
    d_desc = f'ProjectedD on {" + ".join(pair)}' if not edm and args.disc == 'projected' else f'ResNetD width {args.dwidth}'
    log(f'G: {total:,} parameters, {total - frozen:,} trainable; ' + ('' if edm else f'D: {d_desc}, {sum(q.numel() for q in d_params):,} trainable parameters; ')
        + f'batch {args.batch} = {world} GPU(s) x {accum} x {args.batch_gpu}; {args.precision} on {device.type}; run dir {args.rundir}')
    if rank == 0:
        unet.atomic_write(os.path.join(args.rundir, 'options.json'),
                          lambda f: f.write(json.dumps(dict(vars(args), world=world, source=source), indent=1).encode()))

    sampler = data.InfiniteSampler(len(dataset), args.seed)
    grid_seeds = list(range(64))
    fid = fidlib.LoopFID(path, dataset, args.fid_num, args.fid_ref, device, rank, world, log) if args.fid_num else None
    if fid and state:
        fid.history = [tuple(kv) for kv in state.get('fid_history', [])]
    kept = [state_path] if state and os.path.dirname(os.path.abspath(state_path)) == os.path.abspath(args.rundir) else []
    del state  # its tensors are loaded: do not hold a second copy through the run

    crossed = lambda every: nimg // max(int(every * 1000), 1) > (nimg - args.batch) // max(int(every * 1000), 1)

    def snapshot(line=None, final=False):
        """G_ema checkpoint + grid, the status line, then the full state (rank 0), each written atomically; FID if the
        detector is there. The state comes last: a run killed before it resumes from the previous one and rewrites
        everything after it the same way."""
        kind = 'denoiser' if edm else 'generator'
        method = sample.Sampler(G_ema, 'heun', num_steps=18) if edm else sample.Sampler(G_ema, 'generator')
        fid_value = fid(method, nimg / 1000) if fid and (final or nimg == 0 or (args.fid_every and crossed(args.fid_every))) else None
        if fid_value is not None:
            log(f'FID {fid_value:.2f} at {nimg / 1000:g} kimg ({args.fid_num} images vs {fid.ref_desc})', flush=True)
        if world > 1:
            check_ranks_agree(dict(G=G, D=D) if not edm else dict(G=G), log)
        if rank != 0:
            return
        images = torch.cat([sample.quantize(method(grid_seeds[i:i + 16], device)[0]).cpu() for i in range(0, 64, 16)])
        sample.save_grid(images, os.path.join(args.rundir, f'grid-{nimg:09d}.png'), cols=8)
        meta = dict(kind=kind, trained_from=source, data=path, kimg=nimg / 1000, freeze=args.freeze, loss=args.loss, fid=fid_value, fid_num=args.fid_num)
        unet.save_checkpoint(os.path.join(args.rundir, f'network-snapshot-{nimg:09d}.pt'), G_ema, **meta)
        if fid_value is not None and fid_value <= min(v for _, v in fid.history):  # the official code picks this by hand
            unet.save_checkpoint(os.path.join(args.rundir, 'network-best.pt'), G_ema, **meta)
        if line is not None:
            with open(os.path.join(args.rundir, 'metrics.jsonl'), 'a') as f:
                f.write(json.dumps(dict(line, fid=fid_value)) + '\n')
        state = dict(G=G.state_dict(), G_ema=G_ema.state_dict(), opt_G=opt_G.state_dict(), scaler=scaler.state_dict(),
                     nimg=nimg, it=it, args=json.loads(json.dumps(vars(args))), fid_history=fid.history if fid else [])
        if not edm:
            state.update(D=D.state_dict(), opt_D=opt_D.state_dict())
        kept.append(state_file(args.rundir, nimg))
        unet.atomic_save(state, kept[-1])
        del kept[:-2]  # the newest two: a damaged newest state falls back to the one before
        for old in glob.glob(os.path.join(args.rundir, 'training-state-*.pt')):
            if old not in kept:
                os.remove(old)

    def step(opt, module, params, micro_loss, stage):
        """zero_grad, accumulate over micro-batches (DDP syncs on the last), check finiteness, step."""
        opt.zero_grad(set_to_none=True)
        total_loss = torch.zeros([], device=device)
        for k in range(accum):
            sync = contextlib.nullcontext() if world == 1 or k == accum - 1 else module.no_sync()
            with sync:
                loss = micro_loss(slice(k * args.batch_gpu, (k + 1) * args.batch_gpu)).sum() / per_gpu  # batch mean
                scaler.scale(loss).backward() if stage == 'G' else loss.backward()
            total_loss += loss.detach()
        if world > 1:
            torch.distributed.all_reduce(total_loss)
            total_loss /= world
        loss_ok = math.isfinite(total_loss.item())
        grads_ok = scaler.is_enabled() and stage == 'G' or all(torch.isfinite(q.grad).all() for q in params if q.grad is not None)
        if not (loss_ok and grads_ok):
            raise FloatingPointError(f'non-finite {stage} {"gradient" if loss_ok else "loss"} (loss {total_loss.item()}) at '
                                     f'iteration {it}, {nimg / 1000:.3f} kimg. The last good state is kept in {args.rundir}; lower '
                                     f'--lr/--dlr, raise --r1-gamma or use --precision fp32, then rerun to resume from it.')
        scaler.step(opt) if stage == 'G' else opt.step()
        scaler.update() if stage == 'G' else None
        return total_loss.item()

    # ---------------------------------------------------------------- the loop
    if nimg == 0:
        snapshot()  # the starting point: grid, checkpoint and FID of the initial G
    stats, tick_start, tick_nimg, t_start = {}, time.time(), nimg, time.time()
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats()
    try:
        while nimg < args.kimg * 1000:
            # All randomness of an iteration comes from (seed, iteration, rank): resuming needs no RNG state.
            torch.manual_seed(int(np.random.SeedSequence([args.seed, it, rank]).generate_state(1)[0]))
            x, c = dataset.batch(sampler.indices(nimg, args.batch, rank, world))
            x = torch.from_numpy(x).to(device).float() / 127.5 - 1
            c = torch.from_numpy(c).to(device) if dataset.label_dim else None
            cs = lambda s: c[s] if c is not None else None
            shape = [per_gpu, dataset.num_channels, dataset.resolution, dataset.resolution]
            for group in opt_G.param_groups:  # set every iteration: a resume with a new --lr takes effect
                group['lr'] = args.lr * min(nimg / (args.lr_rampup * 1000), 1) if args.lr_rampup else args.lr
            if edm:
                sigma = (torch.randn([per_gpu, 1, 1, 1], device=device) * 1.2 - 1.2).exp()  # ln sigma ~ N(-1.2, 1.2^2)
                noise = torch.randn(shape, device=device)

                def edm_micro(s):
                    with autocast():
                        return edm_loss(G_ddp, x[s], cs(s), sigma[s], noise[s])
                add(stats, 'loss_edm', step(opt_G, G_ddp, trainable, edm_micro, 'G'))
            else:
                for group in opt_D.param_groups:
                    group['lr'] = args.dlr * lazy
                z_g, z_d = torch.randn(shape, device=device), torch.randn(shape, device=device)
                for q in d_params:
                    q.requires_grad_(False)

                def g_micro(s):
                    with autocast():
                        fake = G_ddp(z_g[s], cs(s))
                    return g_loss(D(fake.float(), cs(s)))
                add(stats, 'loss_G', step(opt_G, G_ddp, trainable, g_micro, 'G'))
                for q in d_params:
                    q.requires_grad_(True)

                def d_micro(s):
                    with torch.no_grad(), autocast():
                        fake = G(z_d[s], cs(s))
                    return D_ddp(x[s], fake.float(), cs(s))
                add(stats, 'loss_D', step(opt_D, D_ddp, d_params, d_micro, 'D'))
                if it > 0 and it % args.r1_interval == 0:  # lazy R1, weighted by the interval
                    r1 = lambda s: D_ddp(x[s], None, cs(s), r1_weight=args.r1_interval * args.r1_gamma / 2)
                    add(stats, 'loss_R1', step(opt_D, D_ddp, d_params, r1, 'R1'))

            # EMA with half-life in images, at most ema_rampup of the images seen (before this batch).
            h = min(args.ema * 1000, args.ema_rampup * nimg) if args.ema_rampup else args.ema * 1000
            beta = 0.5 ** (args.batch / max(h, 1e-8))
            with torch.no_grad():
                for pe, pn in zip(G_ema.parameters(), G.parameters()):
                    pe.lerp_(pn.detach(), 1 - beta)
            nimg += args.batch
            it += 1

            done = nimg >= args.kimg * 1000
            snap = done or crossed(args.snap)
            if snap or nimg - tick_nimg >= args.tick * 1000:
                dt = time.time() - tick_start
                sec_per_kimg = dt / ((nimg - tick_nimg) / 1000)
                mem = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == 'cuda' else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
                line = dict(kimg=nimg / 1000, it=it, sec_per_kimg=sec_per_kimg, img_per_s=(nimg - tick_nimg) / dt,
                            mem_gb=mem, time=time.time() - t_start, **{k: float(np.mean(v)) for k, v in stats.items()})
                eta = (args.kimg * 1000 - nimg) / 1000 * sec_per_kimg
                log(f'kimg {nimg / 1000:8.3f}  it {it:6d}  sec/kimg {sec_per_kimg:7.2f}  img/s {line["img_per_s"]:7.1f}  '
                    + '  '.join(f'{k} {v:.4f}' for k, v in line.items() if k.startswith('loss'))
                    + f'  mem {mem:.2f}GB  eta {max(eta, 0) / 60:.1f}min', flush=True)
                if snap:
                    snapshot(line, final=done)
                elif rank == 0:
                    with open(os.path.join(args.rundir, 'metrics.jsonl'), 'a') as f:
                        f.write(json.dumps(line) + '\n')
                stats, tick_start, tick_nimg = {}, time.time(), nimg
    except FloatingPointError as e:
        log(f'error: {e}')
        raise SystemExit(1)
    if fid and fid.off:
        log(f'FID skipped: {fid.off}')
    elif fid and fid.history:
        first, last = fid.history[0], fid.history[-1]
        best = min(fid.history, key=lambda kv: kv[1])
        what = "the teacher's raw one-step output D(80z; 80)" if not edm and first[0] == 0 else 'the network'
        log(f'FID of {args.fid_num} generated images vs {fid.ref_desc}: before ({first[0]:g} kimg, {what}) {first[1]:.2f}; '
            f'after ({last[0]:g} kimg) {last[1]:.2f}; best {best[1]:.2f} at {best[0]:g} kimg')
    log(f'done: {nimg / 1000:g} kimg in {args.rundir}')


def check_ranks_agree(modules, log):
    """Every rank must hold rank 0's parameters (DDP keeps them in sync; this catches a bug that would not)."""
    for name, m in modules.items():
        for pname, param in m.named_parameters():
            if param.requires_grad:  # frozen ones (the projected D's backbones) cannot drift, and are large
                ref = param.detach().clone()
                torch.distributed.broadcast(ref, src=0)
                if not torch.equal(ref, param.detach()):
                    raise RuntimeError(f'{name}.{pname} differs between ranks')
    log(f'ranks agree: {", ".join(modules)} trainable parameters identical on all {torch.distributed.get_world_size()} ranks')


def add(stats, key, value):
    stats.setdefault(key, []).append(value)


if __name__ == '__main__':
    main()

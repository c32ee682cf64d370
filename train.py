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
import glob
import json
import math
import os
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
R1_INTERVAL = 16
RESNET_DLR = 2e-3  # the ResNet D has equalized-lr layers, which train at StyleGAN2's lr scale (the presets' dlr is for the projected D)

p = argparse.ArgumentParser(description='D2O / D2O-F GAN fine-tuning of EDM models, and EDM pretraining.')
p.add_argument('--data', default='toy', help=f'preset ({", ".join(PRESETS)}) or a dataset zip/folder')
p.add_argument('--cond', type=int, default=None, help='use class labels (default: preset, or whether the data has them)')
p.add_argument('--init', default=None, help='official EDM name, .pkl/.pt path or URL, or "random"')
p.add_argument('--arch', default=None, help='architecture for --init random: official name, "toy", or a checkpoint')
p.add_argument('--freeze', type=int, default=0, choices=sorted(freezing.LEVELS), help='0: D2O, 1: D2O-F (2, 3: more)')
p.add_argument('--loss', default='d2o', choices=['d2o', 'edm'], help="d2o: GAN fine-tuning; edm: EDM's denoising loss")
# optimisation
p.add_argument('--batch', type=int, default=None, help='total batch over all GPUs')
p.add_argument('--batch-gpu', type=int, default=None, help='micro-batch per GPU; gradients accumulate up to batch/world')
p.add_argument('--kimg', type=float, default=None, help='training duration in thousands of images')
p.add_argument('--lr', type=float, default=None, help='G learning rate (Adam, betas (0, 0.99); EDM loss (0.9, 0.999))')
p.add_argument('--dlr', type=float, default=None, help='D learning rate (scaled by 16/17 for lazy R1)')
p.add_argument('--lr-rampup', type=float, default=None, help='linear lr warm-up in kimg (EDM loss: 10000)')
p.add_argument('--r1-gamma', type=float, default=None, help='R1 weight on real images (batch-mean losses)')
p.add_argument('--ema', type=float, default=None, help='EMA half-life in kimg (capped at 5%% of images seen)')
p.add_argument('--ema-rampup', type=float, default=0.05, help='EMA half-life at most this fraction of images seen')
p.add_argument('--disc', default='auto', choices=['auto', 'resnet', 'projected'],
               help='projected: the official D on pretrained backbones; auto: projected for the official presets when its weight files are in the cache, else resnet')
p.add_argument('--dwidth', type=int, default=None, help='ResNet D channels at full resolution')
p.add_argument('--precision', default=None, choices=['bf16', 'fp16', 'fp32'], help='G compute (default: bf16 on CUDA, fp32 on CPU)')
p.add_argument('--seed', type=int, default=0, help='seed for initialisation, data order and noise')
# logging and checkpoints
p.add_argument('--rundir', default=None, help='run directory (default runs/{data}-{loss}[-f{freeze}][-random])')
p.add_argument('--resume', default='auto', help='"auto": newest state in the run directory; a state path; or "none"')
p.add_argument('--tick', type=float, default=None, help='status line every this many kimg')
p.add_argument('--snap', type=float, default=None, help='snapshot, grid and state every this many kimg')
p.add_argument('--fid-every', type=float, default=0, help='FID every this many kimg (0: only at start and end)')
p.add_argument('--fid-num', type=int, default=None, help='generated images per FID, 0: no FID (default 5000; toy 500)')
p.add_argument('--fid-ref', type=int, default=None, help='real images in the reference statistics (default 50000; toy 1000)')


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
            return r1_weight * r1_penalty(self.D, real, c)
        return d_loss(self.D(fake, c), self.D(real, c))


def build_net(a, preset):
    """The network to train, as our EDM preconditioner, plus a note of where it came from."""
    if a.init != 'random':
        net, meta = unet.read_checkpoint(a.init)
        return net.train().requires_grad_(True), a.init
    src = a.arch or preset.get('arch') or preset.get('init')
    if src is None:
        sys.exit('error: --init random needs --arch (an official EDM name, "toy", or a checkpoint to copy the architecture of)')
    if src in ARCHS or src in unet.OFFICIAL:
        kwargs, cls = ARCHS.get(src) or unet.OFFICIAL[src], unet.EDMPrecond
    else:
        ref, _ = unet.read_checkpoint(src)
        kwargs, cls = ref.init_kwargs, type(ref)
    torch.manual_seed(a.seed)  # identical on every rank (and DDP broadcasts rank 0's anyway)
    return cls(**kwargs).train(), f'random ({src} architecture)'


def without_augment(net):
    """D2O never feeds augment labels; rebuild without EDM's augment layer so every G parameter is used."""
    if net.model.map_augment is None:
        return net
    new = type(net)(**dict(net.init_kwargs, augment_dim=0))
    new.load_state_dict({k: v for k, v in net.state_dict().items() if 'map_augment' not in k})
    return new.train()


def main(argv=None):
    a = p.parse_args(argv)
    # ---------------------------------------------------------------- set-up: DDP from torchrun's environment
    rank, world, local = int(os.environ.get('RANK', 0)), int(os.environ.get('WORLD_SIZE', 1)), int(os.environ.get('LOCAL_RANK', 0))
    device = torch.device('cuda', local) if torch.cuda.is_available() else torch.device('cpu')
    if world > 1:
        torch.distributed.init_process_group('nccl' if device.type == 'cuda' else 'gloo', device_id=device if device.type == 'cuda' else None)
    if device.type == 'cuda':
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = True
    log = print if rank == 0 else (lambda *args, **kw: None)

    preset = dict(PRESETS.get(a.data, dict(data=a.data, init=None, lr=1e-4, dlr=1e-4, batch=64, kimg=1000, r1_gamma=0.1, ema=500)))
    edm = a.loss == 'edm'
    defaults = dict(init=preset['init'], batch=preset['batch'], kimg=preset['kimg'], lr=EDM_LOSS['lr'] if edm else preset['lr'],
                    lr_rampup=EDM_LOSS['lr_rampup'] if edm else 0, r1_gamma=preset['r1_gamma'],
                    ema=EDM_LOSS['ema'] if edm else preset['ema'], dwidth=preset.get('dwidth', 64),
                    precision='bf16' if device.type == 'cuda' else 'fp32', tick=max(preset['kimg'] / 20, 1), snap=preset['kimg'] / 4,
                    fid_num=preset.get('fid_num', 5000), fid_ref=preset.get('fid_ref', 50000))
    for k, v in defaults.items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    if a.init is None:
        sys.exit('error: give --init (an EDM checkpoint, our checkpoint, or "random")')
    per_gpu = a.batch // world
    a.batch_gpu = a.batch_gpu or per_gpu
    if a.batch % world or per_gpu % a.batch_gpu:
        sys.exit(f'error: --batch {a.batch} must split into {world} GPUs x whole micro-batches of --batch-gpu {a.batch_gpu}')
    accum = per_gpu // a.batch_gpu
    name = f'{os.path.splitext(os.path.basename(a.data))[0]}-{a.loss}' + (f'-f{a.freeze}' if a.freeze else '') + ('-random' if a.init == 'random' else '')
    a.rundir = a.rundir or os.path.join('runs', name)

    # ---------------------------------------------------------------- data and networks
    path = preset['data']
    if a.data == 'toy' and not os.path.exists(path) and rank == 0:
        log(f'writing the toy world to {path} (once) ...')
        data.make_toy(path)
    if world > 1:
        torch.distributed.barrier()
    try:
        cond = a.cond if a.cond is not None else preset.get('cond', True)
        dataset = data.ImageDataset(path, use_labels=bool(cond))
    except data.DatasetError as e:
        sys.exit(f'error: {e}')
    net, source = build_net(a, preset)
    if (net.img_resolution, net.img_channels, net.label_dim) != (dataset.resolution, dataset.num_channels, dataset.label_dim):
        sys.exit(f'error: the network ({source}) is {net.img_channels}x{net.img_resolution}x{net.img_resolution} with '
                 f'label_dim {net.label_dim}, but {path} holds {dataset.num_channels}x{dataset.resolution}x{dataset.resolution} '
                 f'images with label_dim {dataset.label_dim}{" (labels off: --cond 0)" if not cond else ""}. Pick a matching --init/--data.')
    if edm:
        G = net  # the denoiser itself is trained
    else:
        G = unet.D2OGenerator(without_augment(net))
        pair = disc.PAIRS['cifar' if dataset.resolution <= 32 else 'deit']  # the official pairs: VGG for 32x32, DeiT for 64x64
        if a.disc == 'auto':
            a.disc = 'projected' if a.data in PRESETS and a.data != 'toy' and disc.backbones_available(pair) else 'resnet'
        if a.dlr is None:
            a.dlr = RESNET_DLR if a.disc == 'resnet' else preset['dlr']
        torch.manual_seed(a.seed)
        try:
            D = disc.ProjectedD(pair, dataset.label_dim, seed=a.seed) if a.disc == 'projected' else \
                disc.ResNetD(dataset.resolution, dataset.num_channels, dataset.label_dim, a.dwidth)
        except RuntimeError as e:
            sys.exit(f'error: {e}')
        D = D.to(device, memory_format=torch.channels_last if device.type == 'cuda' else torch.preserve_format)
        d_params = [q for q in D.parameters() if q.requires_grad]  # the projected D's backbones stay frozen
    frozen, total = freezing.freeze(G, a.freeze, verbose=rank == 0)
    G.to(device)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    trainable = [p for p in G.parameters() if p.requires_grad]
    ddp = lambda m: torch.nn.parallel.DistributedDataParallel(m, device_ids=[device] if device.type == 'cuda' else None) if world > 1 else m
    G_ddp = ddp(G)
    if edm:
        opt_G = torch.optim.Adam(trainable, lr=a.lr, betas=EDM_LOSS['betas'], eps=1e-8)
    else:
        opt_G = torch.optim.Adam(trainable, lr=a.lr, betas=(0.0, 0.99), eps=1e-8)
        c = R1_INTERVAL / (R1_INTERVAL + 1)  # lazy-regularisation correction of lr and beta2
        opt_D = torch.optim.Adam(d_params, lr=a.dlr * c, betas=(0.0, 0.99 ** c), eps=1e-8)
        D_ddp = ddp(DObjective(D))
    amp = a.precision != 'fp32'
    amp_dtype = torch.bfloat16 if a.precision == 'bf16' else torch.float16
    autocast = lambda: torch.autocast(device.type, amp_dtype) if amp else contextlib.nullcontext()
    scaler = torch.amp.GradScaler(device.type, enabled=a.precision == 'fp16')

    # ---------------------------------------------------------------- resume: the newest full state
    nimg, it = 0, 0
    state_path = None if a.resume == 'none' else a.resume if a.resume != 'auto' else (sorted(glob.glob(os.path.join(a.rundir, 'training-state-*.pt'))) or [None])[-1]
    if state_path:
        s = torch.load(state_path, map_location=device, weights_only=True)
        G.load_state_dict(s['G']), G_ema.load_state_dict(s['G_ema']), opt_G.load_state_dict(s['opt_G']), scaler.load_state_dict(s['scaler'])
        if not edm:
            D.load_state_dict(s['D']), opt_D.load_state_dict(s['opt_D'])
        nimg, it = s['nimg'], s['it']
        log(f'resumed from {state_path} at {nimg / 1000:.1f} kimg')
    if rank == 0:
        os.makedirs(a.rundir, exist_ok=True)
    log(f'{"EDM pretraining" if edm else "D2O" + ("-F" if a.freeze == 1 else "")} of {source} on {path} '
        f'({len(dataset)} images, {dataset.resolution}x{dataset.resolution}, label_dim {dataset.label_dim})')
    d_desc = f'ProjectedD on {" + ".join(pair)}' if not edm and a.disc == 'projected' else f'ResNetD width {a.dwidth}'
    log(f'G: {total:,} parameters, {total - frozen:,} trainable; ' + ('' if edm else f'D: {d_desc}, {sum(q.numel() for q in d_params):,} trainable parameters; ')
        + f'batch {a.batch} = {world} GPU(s) x {accum} x {a.batch_gpu}; {a.precision} on {device.type}; run dir {a.rundir}')
    if rank == 0:
        with open(os.path.join(a.rundir, 'options.json'), 'w') as f:
            json.dump(dict(vars(a), world=world, source=source), f, indent=1)

    sampler = data.InfiniteSampler(len(dataset), a.seed)
    grid_seeds = list(range(64))
    fid = fidlib.LoopFID(path, dataset, a.fid_num, a.fid_ref, device, rank, world, log) if a.fid_num else None

    crossed = lambda every: nimg // int(every * 1000) > (nimg - a.batch) // int(every * 1000)

    def snapshot(final=False):
        """G_ema checkpoint + grid + full state (rank 0), written atomically; FID if the detector is there."""
        kimg = nimg // 1000
        kind = 'denoiser' if edm else 'generator'
        method = sample.Sampler(G_ema, 'heun', num_steps=18) if edm else sample.Sampler(G_ema, 'generator')
        fid_value = fid(method, nimg / 1000) if fid and (final or nimg == 0 or (a.fid_every and crossed(a.fid_every))) else None
        if fid_value is not None:
            log(f'FID {fid_value:.2f} at {nimg / 1000:g} kimg ({a.fid_num} images vs {fid.ref_desc})', flush=True)
        if world > 1:
            check_ranks_agree(dict(G=G, D=D) if not edm else dict(G=G), log)
        if rank != 0:
            return fid_value
        images = torch.cat([sample.quantize(method(grid_seeds[i:i + 16], device)[0]).cpu() for i in range(0, 64, 16)])
        sample.save_grid(images, os.path.join(a.rundir, f'grid-{kimg:06d}.png'), cols=8)
        meta = dict(kind=kind, trained_from=source, data=path, kimg=nimg / 1000, freeze=a.freeze, loss=a.loss, fid=fid_value, fid_num=a.fid_num)
        unet.save_checkpoint(os.path.join(a.rundir, f'network-snapshot-{kimg:06d}.pt'), G_ema, **meta)
        if fid_value is not None and fid_value <= min(v for _, v in fid.history):  # the official code picks this by hand
            unet.save_checkpoint(os.path.join(a.rundir, 'network-best.pt'), G_ema, **meta)
        state = dict(G=G.state_dict(), G_ema=G_ema.state_dict(), opt_G=opt_G.state_dict(), scaler=scaler.state_dict(),
                     nimg=nimg, it=it, args=json.loads(json.dumps(vars(a))))
        if not edm:
            state.update(D=D.state_dict(), opt_D=opt_D.state_dict())
        new = os.path.join(a.rundir, f'training-state-{kimg:06d}.pt')
        unet.atomic_save(state, new)
        for old in glob.glob(os.path.join(a.rundir, 'training-state-*.pt')):  # keep only the newest state
            if old != new:
                os.remove(old)
        return fid_value

    def step(opt, module, params, micro_loss, stage):
        """zero_grad, accumulate over micro-batches (DDP syncs on the last), check finiteness, step."""
        opt.zero_grad(set_to_none=True)
        total_loss = torch.zeros([], device=device)
        for k in range(accum):
            sync = contextlib.nullcontext() if world == 1 or k == accum - 1 else module.no_sync()
            with sync:
                loss = micro_loss(slice(k * a.batch_gpu, (k + 1) * a.batch_gpu)).sum() / per_gpu  # batch mean
                scaler.scale(loss).backward() if stage == 'G' else loss.backward()
            total_loss += loss.detach()
        if world > 1:
            torch.distributed.all_reduce(total_loss)
            total_loss /= world
        loss_ok = math.isfinite(total_loss.item())
        grads_ok = scaler.is_enabled() and stage == 'G' or all(torch.isfinite(p.grad).all() for p in params if p.grad is not None)
        if not (loss_ok and grads_ok):
            raise FloatingPointError(f'non-finite {stage} {"gradient" if loss_ok else "loss"} (loss {total_loss.item()}) at '
                                     f'iteration {it}, {nimg / 1000:.3f} kimg. The last good state is kept in {a.rundir}; lower '
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
        while nimg < a.kimg * 1000:
            # All randomness of an iteration comes from (seed, iteration, rank): resuming needs no RNG state.
            torch.manual_seed(int(np.random.SeedSequence([a.seed, it, rank]).generate_state(1)[0]))
            x, c = dataset.batch(sampler.indices(nimg, a.batch, rank, world))
            x = torch.from_numpy(x).to(device).float() / 127.5 - 1
            c = torch.from_numpy(c).to(device) if dataset.label_dim else None
            cs = lambda s: c[s] if c is not None else None
            shape = [per_gpu, dataset.num_channels, dataset.resolution, dataset.resolution]
            if edm:
                lr = a.lr * min(nimg / max(a.lr_rampup * 1000, 1e-8), 1) if a.lr_rampup else a.lr
                for g in opt_G.param_groups:
                    g['lr'] = lr
                sigma = (torch.randn([per_gpu, 1, 1, 1], device=device) * 1.2 - 1.2).exp()  # ln sigma ~ N(-1.2, 1.2^2)
                noise = torch.randn(shape, device=device)

                def edm_micro(s):
                    with autocast():
                        return edm_loss(G_ddp, x[s], cs(s), sigma[s], noise[s])
                add(stats, 'loss_edm', step(opt_G, G_ddp, trainable, edm_micro, 'G'))
            else:
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
                if it > 0 and it % R1_INTERVAL == 0:  # lazy R1, weighted by the interval
                    r1 = lambda s: D_ddp(x[s], None, cs(s), r1_weight=R1_INTERVAL * a.r1_gamma / 2)
                    add(stats, 'loss_R1', step(opt_D, D_ddp, d_params, r1, 'R1'))

            # EMA with half-life in images, at most ema_rampup of the images seen (before this batch).
            h = min(a.ema * 1000, a.ema_rampup * nimg) if a.ema_rampup else a.ema * 1000
            beta = 0.5 ** (a.batch / max(h, 1e-8))
            with torch.no_grad():
                for pe, pn in zip(G_ema.parameters(), G.parameters()):
                    pe.lerp_(pn.detach(), 1 - beta)
            nimg += a.batch
            it += 1

            done = nimg >= a.kimg * 1000
            snap = done or crossed(a.snap)
            if snap or nimg - tick_nimg >= a.tick * 1000:
                dt = time.time() - tick_start
                sec_per_kimg = dt / ((nimg - tick_nimg) / 1000)
                mem = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == 'cuda' else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
                line = dict(kimg=nimg / 1000, it=it, sec_per_kimg=sec_per_kimg, img_per_s=(nimg - tick_nimg) / dt,
                            mem_gb=mem, time=time.time() - t_start, **{k: float(np.mean(v)) for k, v in stats.items()})
                eta = (a.kimg * 1000 - nimg) / 1000 * sec_per_kimg
                log(f'kimg {nimg / 1000:8.1f}  it {it:6d}  sec/kimg {sec_per_kimg:7.2f}  img/s {line["img_per_s"]:7.1f}  '
                    + '  '.join(f'{k} {v:.4f}' for k, v in line.items() if k.startswith('loss'))
                    + f'  mem {mem:.2f}GB  eta {max(eta, 0) / 60:.1f}min', flush=True)
                if snap:
                    line['fid'] = snapshot(final=done)
                if rank == 0:
                    with open(os.path.join(a.rundir, 'metrics.jsonl'), 'a') as f:
                        f.write(json.dumps(line) + '\n')
                stats, tick_start, tick_nimg = {}, time.time(), nimg
    except FloatingPointError as e:
        log(f'error: {e}')
        raise SystemExit(1)
    finally:
        if world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if fid and fid.off:
        log(f'FID skipped: {fid.off}')
    elif fid and fid.history:
        first, last = fid.history[0], fid.history[-1]
        best = min(fid.history, key=lambda kv: kv[1])
        what = "the teacher's raw one-step output D(80z; 80)" if not edm and first[0] == 0 else 'the network'
        log(f'FID of {a.fid_num} generated images vs {fid.ref_desc}: before ({first[0]:g} kimg, {what}) {first[1]:.2f}; '
            f'after ({last[0]:g} kimg) {last[1]:.2f}; best {best[1]:.2f} at {best[0]:g} kimg')
    log(f'done: {nimg / 1000:.1f} kimg in {a.rundir}')


def check_ranks_agree(modules, log):
    """Every rank must hold rank 0's parameters (DDP keeps them in sync; this catches a bug that would not)."""
    for name, m in modules.items():
        for pname, p in m.named_parameters():
            ref = p.detach().clone()
            torch.distributed.broadcast(ref, src=0)
            if not torch.equal(ref, p.detach()):
                raise RuntimeError(f'{name}.{pname} differs between ranks')
    log(f'ranks agree: {", ".join(modules)} parameters identical on all {torch.distributed.get_world_size()} ranks')


def add(stats, key, value):
    stats.setdefault(key, []).append(value)


if __name__ == '__main__':
    main()

"""D2O: turn a pretrained EDM diffusion model into a one-step generator by fine-tuning it with a GAN loss only.

    python train.py                                    # D2O on the toy world from the committed teacher and D (CPU)
    python train.py --freeze 1                         # D2O-F: the residual blocks' 3x3 convs stay frozen
    python train.py --init random                      # ablation: the same GAN from random initialisation
    python train.py --loss edm --init random --arch toy --kimg 500   # pretrain a teacher with EDM's loss
    torchrun --standalone --nproc_per_node=8 train.py --data imagenet64
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 train.py --data cifar10

Each iteration of --loss d2o: a G step (non-saturating loss on fresh z), a D step (fresh z, fakes from the just-updated
G, the real batch), and every 16 iterations a lazy R1 step on reals. Each --loss is one iteration function in loss.py
(--loss edm: EDM's loss on the denoiser itself). Progress is counted in images (kimg). A run directory holds
metrics.jsonl, grids, G_ema snapshots and the newest two training states; the same command again continues exactly.
"""

import contextlib
import copy
import json
import os
import sys
import time
import types

import numpy as np
import torch

import ckpt
import data
import disc
import fid
import freeze
import loss
import sample
import unet

# Per-dataset recipes: the official D2O code's train.sh (dlr, r1_gamma: the projected D's). Its GAN losses sum over the
# per-GPU batch (64; ImageNet 128) while R1 is a batch mean; ours are batch means, so r1_gamma = 1e-4 / B_gpu of theirs.
PRESETS = {
    'cifar10': dict(data='datasets/cifar10-32x32.zip', init='edm-cifar10-32x32-uncond-ve',
                    lr=1e-4, dlr=1e-4, batch=256, kimg=5000, r1_gamma=1e-4 / 64, ema=500),
    'cifar10-cond': dict(data='datasets/cifar10-32x32.zip', init='edm-cifar10-32x32-cond-ve',
                         lr=1e-4, dlr=1e-4, batch=256, kimg=5000, r1_gamma=1e-4 / 64, ema=500),
    'afhqv2-64': dict(data='datasets/afhqv2-64x64.zip', init='edm-afhqv2-64x64-uncond-ve',
                      lr=2e-5, dlr=4e-5, batch=256, kimg=10000, r1_gamma=1e-4 / 64, ema=500),
    'ffhq-64': dict(data='datasets/ffhq-64x64.zip', init='edm-ffhq-64x64-uncond-ve',
                    lr=2e-5, dlr=4e-5, batch=256, kimg=10000, r1_gamma=1e-4 / 64, ema=500),
    'imagenet64': dict(data='datasets/imagenet-64x64.zip', init='edm-imagenet-64x64-cond-adm',
                       lr=8e-6, dlr=4e-5, batch=512, kimg=10000, r1_gamma=1e-4 / 128, ema=50000),
    # toy: batch 8 and a D pretrained as a toy classifier are ahead at equal images (README, the toy D2O study); 16 kimg
    # fits 10 min on 2 CPU cores (20 took 10-11 min)
    'toy': dict(data=data.toy_path(16), init='assets/toy-edm.pt', disc='resnet',
                lr=1e-4, batch=8, kimg=16, ema=500, dwidth=64, fid_num=500, fid_ref=1000, dinit='assets/toy-disc.pt'),
}
CUSTOM = dict(init=None, lr=1e-4, dlr=1e-4, batch=64, kimg=1000, r1_gamma=1e-4 / 64, ema=500)  # any other --data
EDM_LOSS = dict(lr=1e-3, lr_rampup=10000, ema=500, betas=(0.9, 0.999))  # EDM's defaults for --loss edm

# ------------------------------------------------------------------------------------------------------------------
# Flags. Every mistake a user can type ends in one line on stderr.

POSITIVE, POSITIVE_INT = ckpt.number(float, 0), ckpt.number(int, 0)
NONNEG, NONNEG_INT = ckpt.number(float, 0, inclusive=True), ckpt.number(int, 0, inclusive=True)
parser = ckpt.Parser(prog='train.py', description='D2O / D2O-F GAN fine-tuning of EDM models, and EDM pretraining.')
flag = parser.add_argument
flag('--data', default='toy', help=f'preset ({", ".join(PRESETS)}) or a dataset zip/folder')
flag('--cond', type=int, default=None, choices=[0, 1], help='use labels (default: if the net has them)')
flag('--init', default=None, help='official EDM name, .pkl/.pt path or URL, or "random"')
flag('--arch', default=None, help='for --init random: an official name, "toy" (toy16, toy24, toy64: its widths), or a checkpoint')
flag('--freeze', type=int, default=0, choices=sorted(freeze.LEVELS), help='0: D2O, 1: D2O-F')
flag('--reinit', default=None, choices=sorted(freeze.REINIT), help="re-initialise the teacher's in/out layers or rest")
flag('--gsigma', type=POSITIVE, default=None, help="G(z) = D(gsigma z; gsigma): G's noise level (D2O: 80, SiD: 2.5)")
flag('--loss', default='d2o', choices=list(loss.LOSSES), help="D2O's GAN loss, DiffRatio's (our reconstruction), EDM's")
flag('--gan', default='ns', choices=['ns', 'rp'], help="d2o: D2O's non-saturating, or RpGAN's + R2 (arXiv 2501.05441)")
flag('--divergence', default='rkl', choices=sorted(loss.DIVERGENCES), help='diffratio: reverse KL or Jensen-Shannon')
flag('--sigma-mean', type=float, default=-1.2, help="diffratio: ln sigma ~ N(mean, std^2) (EDM's law)")
flag('--sigma-std', type=POSITIVE, default=1.2, help='diffratio: std of ln sigma')
# optimisation
flag('--batch', type=POSITIVE_INT, default=None, help='total batch over all GPUs')
flag('--batch-gpu', type=POSITIVE_INT, default=None, help='micro-batch per GPU (accumulated)')
flag('--kimg', type=POSITIVE, default=None, help='length in thousands of images (raise to extend)')
flag('--lr', type=POSITIVE, default=None, help='G learning rate (Adam)')
flag('--beta1', type=NONNEG, default=0.0, help="G's Adam beta1 (momentum) in the GAN losses (D2O: 0; D's stays 0)")
flag('--dlr', type=POSITIVE, default=None, help='D learning rate (x interval/(interval+1) for lazy R1)')
flag('--dlr-trunk', type=NONNEG, default=1.0, help="D's trunk (all but its output layer and label projection) at this "
     "x --dlr: below 1 keeps more of a --dinit D's features")
flag('--lr-rampup', type=NONNEG, default=None, help='linear lr warm-up in kimg (EDM loss: 10000)')
flag('--r1-gamma', type=NONNEG, default=None, help='R1 weight on real images (default per D kind; 0: no R1)')
flag('--r1-interval', type=POSITIVE_INT, default=16, help='lazy R1 every this many iterations')
flag('--d-steps', type=POSITIVE_INT, default=1, help='D steps per G step (GAN losses)')
flag('--d-fakes', default='fresh', choices=['fresh', 'g-step'], help="the first D step's fakes: fresh (D2O) or G's own")
flag('--ema', type=NONNEG, default=None, help='EMA half-life in kimg (capped at 5%% of images seen)')
flag('--ema-rampup', type=NONNEG, default=0.05, help='EMA half-life <= this x images seen')
flag('--disc', default='auto', choices=['auto', 'resnet', 'projected', 'ratio', 'teacher'], help='auto: projected '
     "if its files are found, else resnet; ratio: diffratio's; teacher: on a trainable copy of G's starting encoder")
flag('--dinit', default='auto', help="start D from a disc-snapshot-*.pt; none: fresh, seeded; auto: the preset's "
     "trained D (toy: assets/toy-disc.pt) if it has D's kind and shape, else fresh")
flag('--dsigma', type=POSITIVE, default=0.1, help='--disc teacher: the noise level its encoder sees images at')
flag('--weights', type=ckpt.weights_flag, default=None, help='folders or files of the backbone and FID detector '
     'weights, comma-separated (also $D2O_WEIGHTS)')
flag('--dwidth', type=POSITIVE_INT, default=None, help='ResNet / ratio D channels at full resolution')
flag('--ddepth', type=POSITIVE_INT, default=1, help='ResNet / ratio D residual blocks per resolution')
flag('--dpatch', type=int, default=0, choices=[0, 1], help='ResNet D: also a logit per position at each lower resolution')
flag('--precision', default=None, choices=['bf16', 'fp16', 'fp32'], help='G and D compute (default GPU bf16, CPU fp32)')
flag('--compile', action='store_true', help="torch.compile G's and D's forward (not R1's)")
flag('--seed', type=NONNEG_INT, default=0, help='seed for initialisation, data order and noise')
# logging and checkpoints
flag('--rundir', default=None, help='run directory (default runs/{data}-{loss}[-f{freeze}][-random])')
flag('--resume', default='auto', help='"auto": the newest good state in the run directory, "new": start over, or a file')
flag('--tick', type=POSITIVE, default=None, help='status line every this many kimg')
flag('--snap', type=POSITIVE, default=None, help='snapshot, grid and state every this many kimg')
flag('--fid-every', type=NONNEG, default=0, help='FID every this many kimg (0: only at start and end)')
flag('--fid-num', type=NONNEG_INT, default=None, help='images per FID (0: no FID)')
flag('--fid-ref', type=POSITIVE_INT, default=None, help='real images for FID statistics (default 50000)')

# A resume refuses another value of FIXED, takes CHANGEABLE when typed again; the rest belong to the session.
FIXED = ('data', 'cond', 'init', 'arch', 'reinit', 'gsigma', 'loss', 'gan', 'divergence', 'freeze', 'batch', 'disc',
         'dinit', 'beta1', 'dlr_trunk', 'dwidth', 'ddepth', 'dpatch', 'dsigma', 'seed')
CHANGEABLE = ('kimg', 'lr', 'dlr', 'lr_rampup', 'r1_gamma', 'r1_interval', 'd_steps', 'd_fakes', 'sigma_mean',
              'sigma_std', 'ema', 'ema_rampup', 'tick', 'snap', 'fid_every', 'fid_num', 'fid_ref')


def resolve_flags(argv, world, device, log):
    """The flags (the preset's defaults, or a resumed run's own values plus what is typed now), the preset and the
    newest good state. Reads files only: every refusal comes before anything in the run directory changes."""
    args, typed = ckpt.typed_flags(parser, argv)
    stem = os.path.splitext(os.path.basename(args.data))[0]
    name = f'{stem}-{args.loss}' + (f'-f{args.freeze}' if args.freeze else '')
    args.rundir = args.rundir or os.path.join('runs', name + ('-random' if args.init == 'random' else ''))
    state_path, state = ckpt.resume_point(args.rundir, args.resume, log)
    if state:  # runs from before --gsigma, --gan and --dinit (or --dinit none): G at D2O's 80, D2O's loss, a fresh D
        state['args'] = dict(gsigma=80.0, gan='ns') | state['args'] | dict(dinit=state['args'].get('dinit') or 'none')
    changes = ckpt.resume_flags(parser, args, typed, state['args'], state_path, FIXED, CHANGEABLE) if state else []
    preset = PRESETS.get(args.data, dict(CUSTOM, data=args.data))
    recipe = dict(gsigma=80.0, dwidth=64, lr_rampup=0, fid_num=5000, fid_ref=50000, tick=max(preset['kimg'] / 20, 1),
                  snap=preset['kimg'] / 4, precision='bf16' if device.type == 'cuda' else 'fp32')
    recipe |= preset | (EDM_LOSS if args.loss == 'edm' else {})  # D's lr and R1 weight: by D kind (build_run)
    for k in ('init', 'gsigma', 'batch', 'kimg', 'lr', 'lr_rampup', 'ema', 'dwidth', 'precision', 'tick', 'snap',
              'fid_num', 'fid_ref'):
        setattr(args, k, recipe[k] if getattr(args, k) is None else getattr(args, k))
    if args.init is None:
        sys.exit('error: give --init (an EDM checkpoint, our checkpoint, or "random")')
    if args.gan != 'ns' and args.loss != 'd2o':
        sys.exit(f'error: --gan {args.gan} is a loss of D2O\'s GAN; --loss {args.loss} has its own')
    if args.beta1 >= 1:
        sys.exit(f'error: --beta1 {args.beta1:g}: Adam\'s beta1 must be below 1')
    if args.beta1 and args.loss == 'edm':
        sys.exit('error: --beta1 is G\'s momentum in a GAN loss; --loss edm keeps EDM\'s Adam betas (0.9, 0.999)')
    if args.d_fakes != 'fresh' and args.loss == 'edm':
        sys.exit(f'error: --d-fakes {args.d_fakes} sets the D step\'s fakes; --loss edm trains no D')
    if args.dinit not in ('auto', 'none') and args.loss == 'edm':
        sys.exit('error: --dinit starts a discriminator; --loss edm trains none')
    if args.reinit and args.init == 'random':
        sys.exit('error: --reinit re-initialises part of a teacher; give a teacher with --init, not "random"')
    args.batch_gpu = args.batch_gpu or args.batch // world
    if args.batch % world or (args.batch // world) % args.batch_gpu:
        sys.exit(f'error: --batch {args.batch} must split into {world} GPUs x whole micro-batches of '
                 f'--batch-gpu {args.batch_gpu}')
    return args, preset, state_path, state, changes

# ------------------------------------------------------------------------------------------------------------------
# Networks and optimizers.

def build_run(args, preset, net, source, dataset, rank, world, device, log, fresh=True):
    """G (the one-step generator, or for a denoiser loss the network itself), G_ema, D, their DDP wrappers and
    optimizers, the AMP context, and the counters, in one namespace that the iteration functions (loss.py) read.
    fresh: no state will be loaded, so D starts from --dinit if given."""
    run = types.SimpleNamespace(args=args, source=source, device=device, rank=rank, world=world, nimg=0, it=0,
                                kind=loss.LOSSES[args.loss][1], D=None, D_ddp=None, opt_D=None, d_params=[],
                                per_gpu=args.batch // world, accum=args.batch // world // args.batch_gpu)
    gpu = [device] if device.type == 'cuda' else None
    ddp = lambda module: torch.nn.parallel.DistributedDataParallel(module, device_ids=gpu) if world > 1 else module
    layout = torch.channels_last if device.type == 'cuda' else torch.preserve_format
    run.G = unet.D2OGenerator(unet.generator_net(net), args.gsigma) if run.kind == 'generator' else net
    if run.kind == 'generator':
        try:  # the projected D's --dlr and --r1-gamma: the preset's (toy: CUSTOM's); --dinit before DDP wraps D
            D, run.d_desc = disc.from_flags(args, loss.LOSSES[args.loss][2], CUSTOM | preset, dataset, run.G, log,
                                            fresh)
        except (RuntimeError, ValueError) as e:
            sys.exit(f'error: {e}')
        run.D = D.to(device, memory_format=layout)
        run.d_params = [param for param in run.D.parameters() if param.requires_grad]  # projected D: heads only
        groups, run.d_lr_scales = [run.d_params], [1.0]
        if args.dlr_trunk != 1:  # the trunk's group, then the head's
            groups, run.d_lr_scales = disc.trunk_and_head(run.D), [args.dlr_trunk, 1.0]
            run.d_desc += f', its trunk at {args.dlr_trunk:g} x --dlr'
        # foreach: Adam over all tensors at once, as on CUDA by default; the same numbers as the per-tensor loop on CPU
        run.opt_D = torch.optim.Adam([dict(params=group) for group in groups], betas=(0.0, 0.99), eps=1e-8,
                                     foreach=True)  # lr, beta2: set_rates
        run.D_fast = torch.compile(run.D) if args.compile else run.D  # R1's double backward runs D eagerly
        run.D_ddp = ddp(loss.DObjective(run.D, run.D_fast))
    run.frozen, run.total = freeze.freeze(run.G, args.freeze, verbose=rank == 0)
    run.G.to(device, memory_format=layout)
    run.G_ema = copy.deepcopy(run.G).eval().requires_grad_(False)
    run.g_params = [param for param in run.G.parameters() if param.requires_grad]
    run.G_ddp = torch.compile(ddp(run.G)) if args.compile else ddp(run.G)
    run.opt_G = torch.optim.Adam(run.g_params, betas=(args.beta1, 0.99) if run.D is not None else EDM_LOSS['betas'],
                                 eps=1e-8, foreach=True)
    amp_dtype, amp = torch.bfloat16 if args.precision == 'bf16' else torch.float16, args.precision != 'fp32'
    run.autocast = lambda: torch.autocast(device.type, amp_dtype) if amp else contextlib.nullcontext()
    run.scalers = {stage: torch.amp.GradScaler(device.type, enabled=args.precision == 'fp16') for stage in 'GD'}
    run.parts = dict(G=run.G, G_ema=run.G_ema, opt_G=run.opt_G, scaler_G=run.scalers['G'], scaler_D=run.scalers['D'])
    run.parts |= dict(D=run.D, opt_D=run.opt_D) if run.D is not None else {}  # what a state holds besides counters
    return run

# ------------------------------------------------------------------------------------------------------------------
# Snapshots: grid, G_ema checkpoint, FID and training state.

def crossed(run, every_kimg):
    """Did the last batch cross a multiple of every_kimg?"""
    every = max(int(every_kimg * 1000), 1)
    return run.nimg // every > (run.nimg - run.args.batch) // every


def snapshot(run, loop_fid, kept, log, line=None, final=False):
    """Grid, G_ema (and D) checkpoints, FID when due, the status line, then the state (rank 0), each written
    atomically. The state comes last: a run killed before it resumes from the previous one and writes all again."""
    args, nimg = run.args, run.nimg
    method = sample.Sampler(run.G_ema, 'generator' if run.kind == 'generator' else 'heun', num_steps=18)
    due = loop_fid and (final or nimg == 0 or (args.fid_every and crossed(run, args.fid_every)))
    fid_value = loop_fid(method, nimg / 1000) if due else None  # LoopFID prints the value
    if run.world > 1:
        sample.check_ranks_agree(dict(G=run.G, D=run.D) if run.D is not None else dict(G=run.G), log)
    if run.rank != 0:
        return
    images = torch.cat([sample.quantize(method(list(range(i, i + 16)), run.device)[0]).cpu() for i in range(0, 64, 16)])
    sample.save_grid(images, os.path.join(args.rundir, f'grid-{nimg:09d}.png'), cols=8)
    meta = dict(kind=run.kind, trained_from=run.source, data=args.data, kimg=nimg / 1000, freeze=args.freeze,
                loss=args.loss, fid=fid_value, fid_num=args.fid_num, sigma=getattr(run.G, 'sigma', None))
    verifier = run.D if type(run.D).__name__ in disc.SAVED else None  # sample.py --best-of's (not the projected D)
    best = fid_value is not None and fid_value <= min(v for _, v in loop_fid.history)  # the official code picks by hand
    ckpt.save_snapshot(args.rundir, nimg, run.G_ema, verifier, best, **meta)
    if line is not None or fid_value is not None:  # the start's FID (no status line yet) is a record too
        ckpt.append_metrics(args.rundir, dict(line or dict(kimg=0), fid=fid_value))
    ckpt.save_state(ckpt.state_dicts(run.parts, nimg=nimg, it=run.it, args=json.loads(json.dumps(vars(args)))),
                    args.rundir, kept)


def main(argv=None):
    with sample.distributed() as (rank, world, device):
        log = print if rank == 0 else (lambda *args, **kw: None)
        torch.backends.cudnn.benchmark = device.type == 'cuda'  # autotuned convs (sample.py: off, repeatable)
        args, preset, state_path, state, changes = resolve_flags(argv, world, device, log)
        run, dataset = setup(args, preset, state, state_path, changes, rank, world, device, log)
        history = ckpt.read_fids(args.rundir) if rank == 0 else []  # a resumed run's FIDs, as rank 0 recorded them
        loop_fid = fid.LoopFID(preset['data'], dataset, args.fid_num, args.fid_ref, device, rank, world, log,
                               args.weights, history) if args.fid_num else None
        kept = ckpt.kept_states(state_path, args.rundir)  # this run directory's states, pruned to the newest two
        del state  # loaded: do not hold a second copy of every tensor through the run
        train(run, dataset, loop_fid, kept, log)
        if loop_fid and (loop_fid.off or loop_fid.history):
            start = f"the teacher's raw one-step output D({args.gsigma:g}z; {args.gsigma:g})" \
                if run.kind == 'generator' else 'the network'
            log(loop_fid.summary(start))
        log(f'done: {run.nimg / 1000:g} kimg in {args.rundir}')


def setup(args, preset, state, state_path, changes, rank, world, device, log):
    """The dataset and the run (networks, optimizers, a loaded state); then, and only then, the run directory."""
    path = data.toy_path(16, log) if args.data == 'toy' and rank == 0 else preset['data']
    if world > 1:
        torch.distributed.barrier()
    try:  # the network to train, as our EDM preconditioner, and where it came from
        net, source = ckpt.starting_net(args.init, args.arch or preset.get('init'), args.seed)
    except ValueError as e:
        sys.exit(f'error: {e}')
    if args.reinit:  # the initialisation study: a part of the teacher re-initialised, the rest kept
        freeze.reinit(net, args.reinit, args.seed, verbose=log is print)
        source += f' with --reinit {args.reinit}'
    if args.cond is None:
        args.cond = int(net.label_dim > 0)
        log(f'--cond {args.cond}: the network has label_dim {net.label_dim}')
    try:
        dataset = data.ImageDataset(path, use_labels=bool(args.cond))
        dataset.check_network(net, source)
    except data.DatasetError as e:
        sys.exit(f'error: {e}')
    run = build_run(args, preset, net, source, dataset, rank, world, device, log, fresh=not state)
    if state:
        ckpt.load_state_dicts(run.parts, state)
        run.nimg, run.it = state['nimg'], state['it']
        changed = f'; changed: {", ".join(changes)}' if changes else ''
        log(f'resumed from {state_path} at {run.nimg / 1000:g} kimg{changed}')
    if rank == 0:  # nothing in the run directory changes before this point
        ckpt.open_rundir(args.rundir, run.nimg, dict(vars(args), world=world, source=run.source))
    method = dict(d2o='D2O', diffratio=f'DiffRatio ({args.divergence})').get(args.loss, 'EDM pretraining')
    method += {0: '', 1: ' with D2O-F freezing'}.get(args.freeze, f' with --freeze {args.freeze}')
    log(f'{method} of {run.source} on {path} ({len(dataset)} {dataset.describe()})')
    log(f'G: {run.total:,} parameters, {run.total - run.frozen:,} trainable; ' + (f'D: {run.d_desc}, '
        f'{sum(param.numel() for param in run.d_params):,} trainable parameters; ' if run.D is not None else '') +
        f'batch {args.batch} = {world} GPU(s) x {run.accum} x {args.batch_gpu}; {args.precision} on {device.type}; '
        f'run dir {args.rundir}')
    return run, dataset


def train(run, dataset, loop_fid, kept, log):
    """The loop: one iteration of --loss per batch, EMA, a status line every --tick, a snapshot every --snap."""
    args, device = run.args, run.device
    sampler, iteration = data.InfiniteSampler(len(dataset), args.seed), loss.LOSSES[args.loss][0]
    if run.nimg == 0:
        snapshot(run, loop_fid, kept, log)  # the starting point: grid, checkpoint and FID of the initial G
    stats, tick_start, tick_nimg, t_start = {}, time.time(), run.nimg, time.time()
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats()
    while run.nimg < args.kimg * 1000:
        # All randomness of an iteration comes from (seed, iteration): resuming needs no RNG state.
        torch.manual_seed(int(np.random.SeedSequence([args.seed, run.it]).generate_state(1)[0]))
        x, labels = dataset.batch(sampler.indices(run.nimg, args.batch, run.rank, run.world))
        x = torch.from_numpy(x).to(device).float() / 127.5 - 1
        labels = torch.from_numpy(labels).to(device) if dataset.label_dim else None
        loss.set_rates(run)
        try:
            for k, v in iteration(run, x, labels).items():
                stats.setdefault(k, []).append(v)
        except FloatingPointError as e:
            log(f'error: {e}')
            raise SystemExit(1)
        loss.ema_update(run.G_ema, run.G, args, run.nimg)
        run.nimg += args.batch
        run.it += 1

        done = run.nimg >= args.kimg * 1000
        snap = done or crossed(run, args.snap) or bool(loop_fid and args.fid_every and crossed(run, args.fid_every))
        if snap or run.nimg - tick_nimg >= args.tick * 1000:
            line, text = ckpt.status_line(run.nimg, run.it, args.kimg, stats, tick_nimg, tick_start, t_start, device)
            log(text, flush=True)
            if snap:  # FID is measured at snapshots, so --fid-every makes one
                snapshot(run, loop_fid, kept, log, line, final=done)
            elif run.rank == 0:
                ckpt.append_metrics(args.rundir, line)
            stats, tick_start, tick_nimg = {}, time.time(), run.nimg


if __name__ == '__main__':
    main()

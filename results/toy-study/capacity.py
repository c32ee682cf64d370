"""Two checks of what holds the toy D2O generator (issue #15), run from the project root:

    python results/toy-study/capacity.py pairs --seeds 10000-14999   # the teacher's Heun-18 map on 5,000 seeds (~16 min)
    python results/toy-study/capacity.py kd --kimg 100                # one-step regression onto it, FID every 10 kimg
    python results/toy-study/capacity.py recolour --images d2o.npz --dest real-like-d2o.npz   # then fid.py calc
    python results/toy-study/capacity.py pretrain-d --kimg 100 --dest results/toy-study/dcls/disc-cls.pt  # then --dinit

kd: can the teacher's network, used as D2O's one-step generator G(z) = D(80z; 80), represent the teacher's own
18-step Heun map z -> x? Knowledge distillation by regression (Luhman & Luhman, arXiv 2101.02388): pairs (z, label,
Heun-18 sample) from the teacher on seeds apart from the evaluation seeds, G initialised from the teacher as in D2O, the
L2 loss, Adam; FID of 500 one-step samples (seeds 0-499, as every toy row) against the toy reference statistics.
recolour: real images held out of the FID reference subset, drawn with the (shape colour, background) pairs that a
generated set shows (fid.py census): the FID that the generated set's colour frequencies alone would cost.
pretrain-d: a toy-world counterpart of the projected D's pretrained features (ImageNet classifiers at full scale): the
toy preset's ResNet D (class-conditional, width 64, seed 0) with its trunk trained to classify each real image's shape,
shape colour and background colour (a 20-way linear head in place of its projection output, then dropped); its output
and label embedding stay the fresh ones. Saved as a disc-snapshot for train.py --dinit, where the whole D trains on.
kd writes results/toy-study/kd/ (pairs, log.txt, samples-KIMG.npz); pretrain-d its --dest.
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
import disc  # noqa: E402
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


def pretrain_d(kimg, dest, batch=64, lr=1e-3, held=2000):
    if not dest:
        sys.exit('error: pretrain-d needs --dest (where to save the D, e.g. results/toy-study/dcls/disc-cls.pt)')
    ds = data.ImageDataset(data.toy_path(16, print))  # written first if missing
    images = np.stack([ds.image(i) for i in range(len(ds))])  # uint8 [N,3,16,16]
    fg, bg = data.toy_colours(images.transpose(0, 2, 3, 1))
    targets = torch.from_numpy(np.stack([ds.labels, fg, bg], axis=1)).long()  # shape, shape colour, background
    x_all = torch.from_numpy(images).float() / 127.5 - 1  # as train.py feeds reals to D
    D = disc.build('resnet', ds.resolution, ds.num_channels, ds.label_dim, 64, seed=0)[0]
    out, embed = D.out, D.embed
    sizes = [ds.label_dim, len(data.TOY_COLOURS), len(data.TOY_COLOURS)]
    D.out, D.embed = disc.EqLinear(out.weight.shape[1], sum(sizes)), None  # the classifier head, on D's trunk
    opt = torch.optim.Adam(D.parameters(), lr=lr, betas=(0.9, 0.99))
    order = torch.Generator().manual_seed(0)
    train_n = len(ds) - held

    def losses_and_accuracy(idx):
        logits = D(x_all[idx])[0].split(sizes, dim=1)
        ce = sum(torch.nn.functional.cross_entropy(lg, targets[idx, k], ignore_index=-1) for k, lg in enumerate(logits))
        return ce, [(lg.argmax(1) == targets[idx, k]).float().mean().item() for k, lg in enumerate(logits)]

    nimg, start = 0, time.time()
    while nimg < kimg * 1000:
        ce, _ = losses_and_accuracy(torch.randint(train_n, [batch], generator=order))
        opt.zero_grad(set_to_none=True)
        ce.backward()
        opt.step()
        nimg += batch
        if nimg // 10000 != (nimg - batch) // 10000 or nimg >= kimg * 1000:
            with torch.no_grad():
                held_ce, acc = losses_and_accuracy(torch.arange(train_n, len(ds)))
            print(f'kimg {nimg / 1000:.1f}: train CE {ce.item():.3f}, held-out CE {held_ce.item():.3f}, accuracy '
                  f'shape {acc[0]:.3f} colour {acc[1]:.3f} background {acc[2]:.3f} ({time.time() - start:.0f} s)',
                  flush=True)
    D.out, D.embed = out, embed  # the fresh output and label projection: D starts undecided on real vs fake
    os.makedirs(os.path.dirname(dest) or '.', exist_ok=True)
    ckpt.save_checkpoint(dest, D, kind='disc', pretrained=f'toy classifier, {kimg:g} kimg')
    print(f'saved {dest}')


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('cmd', choices=['pairs', 'kd', 'recolour', 'pretrain-d'])
    parser.add_argument('--seeds', type=sample.parse_seeds, default='10000-14999', help='pairs: teacher seeds')
    parser.add_argument('--kimg', type=float, default=100, help='kd, pretrain-d: training images, in thousands')
    parser.add_argument('--images', help='recolour: a generated npz')
    parser.add_argument('--dest', help='recolour: output npz; pretrain-d: the D file')
    args = parser.parse_args()
    os.makedirs(OUT, exist_ok=True)
    {'pairs': lambda: pairs(args.seeds), 'kd': lambda: kd(args.kimg),
     'recolour': lambda: recolour(args.images, args.dest),
     'pretrain-d': lambda: pretrain_d(args.kimg, args.dest)}[args.cmd]()

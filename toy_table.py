"""The toy replication table: the seed papers' claims measured at toy scale on a CPU.

    python toy_table.py                         # trains what is missing (resumable), samples, measures, writes the table
    python toy_table.py --kimg 40 --num 500     # the GAN budget per run, and the images per FID

Rows (all one-step rows at an equal image budget of --kimg per GAN run, FID of --num samples against the statistics
of --ref-num real toy images; small N biases FID upwards, fine for comparisons within the table):
  teacher, Heun 18 steps (35 NFE); teacher raw one-step output D(80z; 80);
  D2O; D2O-F (frozen %); the same GAN from random initialisation;
  teacher-vs-student: FID between D2O's samples and the teacher's at 2, 4, 6, 8, 10 Heun steps, beside each one's FID
  to the data; radially averaged power spectra of real images, the raw one-step output and D2O (CSV + PNG).
Outputs go to --out (table.md, grids, spectrum.csv/png, the runs).
"""

import argparse
import os
import time

import torch

import data
import fid
import freeze
import sample
import train
import unet

p = argparse.ArgumentParser(description='Regenerate the toy replication table.')
p.add_argument('--teacher', default='assets/toy-edm.pt', help='the toy teacher checkpoint')
p.add_argument('--kimg', type=float, default=40, help='images per GAN run, in thousands (equal budget)')
p.add_argument('--num', type=int, default=500, help='generated images per FID')
p.add_argument('--ref-num', type=int, default=1000, help='real images in the reference statistics')
p.add_argument('--out', default='results/toy', help='output folder')


def main():
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    path = data.toy_path(16)
    if not os.path.exists(path):
        data.make_toy(path)
    dataset = data.ImageDataset(path)
    detector = fid.load_detector()
    ref = fid.dataset_stats(path, dataset, detector, 'cpu', num=a.ref_num)[:2]

    runs = {}
    for key, extra in [('d2o', []), ('d2o-f', ['--freeze', '1']), ('random', ['--init', 'random', '--arch', a.teacher])]:
        rundir = os.path.join(a.out, key)
        args = ['--init', a.teacher, '--kimg', str(a.kimg), '--fid-num', '0', '--rundir', rundir, *extra]
        t = time.time()
        train.main(args)
        runs[key] = (sorted(f for f in os.listdir(rundir) if f.startswith('network-snapshot'))[-1], time.time() - t)
    teacher = unet.load_edm(a.teacher)
    frozen, total = freeze.freeze(unet.D2OGenerator(unet.load_edm(a.teacher)), 1, verbose=False)
    snapshot = lambda key: sample.load_sampler(os.path.join(a.out, key, runs[key][0]))[0]
    rows = [('heun-18', 'teacher, Heun 18 steps', sample.Sampler(teacher, 'heun', num_steps=18)),
            ('raw', 'teacher, raw one-step D(80z; 80)', sample.Sampler(teacher, 'raw')),
            ('d2o', 'D2O, one step', snapshot('d2o')),
            ('d2o-f', f'D2O-F ({100 * frozen / total:.1f}% frozen), one step', snapshot('d2o-f')),
            ('random', 'same GAN from random init, one step', snapshot('random'))]
    rows += [(f'heun-{k}', f'teacher, Heun {k} steps', sample.Sampler(teacher, 'heun', num_steps=k)) for k in (2, 4, 6, 8, 10)]

    seeds = list(range(a.num))
    images, stats = {}, {}
    for slug, name, s in rows:
        x = torch.cat([sample.quantize(s(seeds[i:i + 100], 'cpu')[0]) for i in range(0, len(seeds), 100)])
        images[slug] = x
        stats[slug] = fid.image_stats([x[i:i + 50] for i in range(0, len(x), 50)], detector, 'cpu')
        sample.save_grid(x[:64], os.path.join(a.out, f'grid-{slug}.png'), cols=8)
        print(f'{name}: FID {fid.frechet_distance(*stats[slug], *ref):.1f}', flush=True)

    table = ['| samples | NFE | FID to data | FID to D2O | grid |', '|---|---|---|---|---|']
    for slug, name, s in rows:
        to_d2o = '' if slug == 'd2o' else f'{fid.frechet_distance(*stats[slug], *stats["d2o"]):.1f}'
        table.append(f'| {name} | {s.nfe} | {fid.frechet_distance(*stats[slug], *ref):.1f} | {to_d2o} | grid-{slug}.png |')

    real = dataset.batch(range(a.num))[0]
    curves = {'real': fid.radial_spectrum(real), 'raw one-step': fid.radial_spectrum(images['raw']),
              'D2O': fid.radial_spectrum(images['d2o']), 'Heun 18': fid.radial_spectrum(images['heun-18'])}
    fid.write_spectra(curves, os.path.join(a.out, 'spectrum'))
    hi = {k: float(v[len(v) // 2:].sum() / v.sum()) for k, v in curves.items()}
    text = '\n'.join([f'Toy replication: {a.kimg:g} kimg per GAN run, FID of {a.num} samples vs {a.ref_num} real images.', '',
                      *table, '', 'High-frequency share of spectral power (radius >= R/4): '
                      + ', '.join(f'{k} {v:.3f}' for k, v in hi.items()), '',
                      'GAN run wall times: ' + ', '.join(f'{k} {t / 60:.1f} min' for k, (_, t) in runs.items())])
    with open(os.path.join(a.out, 'table.md'), 'w') as f:
        f.write(text + '\n')
    print(text)


if __name__ == '__main__':
    main()

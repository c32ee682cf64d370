"""The toy replication table: the seed papers' claims measured at toy scale on a CPU.

    python toy_table.py                         # trains what is missing (resumable), samples, measures, writes the table
    python toy_table.py --kimg 40 --num 500     # the GAN budget per run, and the images per FID
    python toy_table.py --jobs 3                # three GAN runs at once (default: one per CPU core)
    python toy_table.py --kimg 10 --runs d2o,diffratio-rkl,diffratio-js --out results/toy-10kimg   # some of the runs
    python toy_table.py --study results/toy-study --curves d2o,d2o-r1g1 --plot fid-curve-r1   # the D2O study's probes

Rows (all one-step rows at an equal image budget of --kimg per GAN run, FID of --num samples against the statistics
of --ref-num real toy images; small N biases FID upwards, fine for comparisons within the table):
  --num real images held out of the reference set (the FID floor at this N);
  teacher, Heun 18 steps (35 NFE); teacher raw one-step output D(80z; 80);
  D2O; D2O-F (frozen %), at D2O's G lr and at 3x and 5x it; the same GAN from random initialisation;
  DiffRatio (arXiv 2502.08005, our reconstruction) with the reverse-KL and the JS surrogate; DiffRatio from random
  init and from the teacher with its input/output layers or its inner blocks re-initialised (the paper's
  features-not-mapping study); D2O and DiffRatio best of 4, each scored by its own D (sample.BestOfN);
  teacher-vs-student: FID between D2O's samples and the teacher's at 2, 4, 6, 8, 10 Heun steps, beside each one's FID
  to the data; radially averaged power spectra of real images, the raw one-step output and D2O (CSV + PNG);
  FID against kimg of D2O and both DiffRatio forms, evaluated every --fid-every kimg in the runs (fid-curve.csv/png).
Outputs go to --out (table.md, grids, spectrum.csv/png, fid-curve.csv/png, the runs).

--study DIR tabulates train.py runs in DIR/NAME-sSEED (made with --fid-every; NAME "d2o" is the reference) instead, from
the records each run keeps (options.json, metrics.jsonl; not the training states, which need not be kept): each
probe's flags that differ from the reference's, its FIDs per seed and their mean -> DIR/study.md, and FID against kimg of
the probes or runs named in --curves -> DIR/PLOT.csv/png.
"""

import json
import os
import subprocess
import sys
import time

import numpy as np
import torch

import ckpt
import data
import disc
import fid
import freeze
import sample
import train
import unet

parser = ckpt.Parser(prog='toy_table.py', description='Regenerate the toy replication table.')
parser.add_argument('--teacher', default='assets/toy-edm.pt', help='the toy teacher checkpoint')
parser.add_argument('--kimg', type=ckpt.number(float, 0), default=40, help='images per GAN run, in thousands (equal budget)')
parser.add_argument('--num', type=ckpt.number(int, 0), default=500, help='generated images per FID')
parser.add_argument('--ref-num', type=ckpt.number(int, 0), default=1000, help='real images in the reference statistics')
parser.add_argument('--out', default='results/toy', help='output folder')
parser.add_argument('--jobs', type=ckpt.number(int, 0), default=os.cpu_count(), help='GAN runs trained at once')
parser.add_argument('--seed', type=ckpt.number(int, 0, inclusive=True), default=0, help='seed of every GAN run')
parser.add_argument('--runs', default=None, help='comma-separated GAN runs to train and tabulate (default: all of RUNS)')
parser.add_argument('--fid-every', type=ckpt.number(float, 0, inclusive=True), default=5,
                    help='kimg between the FIDs of the curves (0: no curves)')
parser.add_argument('--study', default=None, help='a folder of study runs (NAME-sSEED) to summarise instead')
parser.add_argument('--curves', default='', help='--study: comma-separated probes (the mean of their seeds) or runs '
                    '(NAME-sSEED) whose FID curves to draw')
parser.add_argument('--plot', default='fid-curve', help="--study: the curves' file name in the folder (.csv, .png)")
parser.add_argument('--upto', type=ckpt.number(float, 0), default=None, help='--study: draw the curves to this kimg')
# Options of a study run that do not change what it trains (or are in the table's own columns)
NOT_PROBED = ('rundir', 'resume', 'seed', 'kimg', 'tick', 'snap', 'fid_every', 'batch_gpu', 'precision', 'compile',
              'weights', 'world', 'source')

# The GAN runs: (key, train.py flags, with an FID curve?)
RUNS = [('d2o', [], True), ('d2o-f', ['--freeze', '1'], False), ('d2o-f-lr3e-4', ['--freeze', '1', '--lr', '3e-4'], False),
        ('d2o-f-lr5e-4', ['--freeze', '1', '--lr', '5e-4'], False),
        ('random', ['--init', 'random', '--arch', 'TEACHER'], False),
        ('diffratio-rkl', ['--loss', 'diffratio', '--divergence', 'rkl'], True),
        ('diffratio-js', ['--loss', 'diffratio', '--divergence', 'js'], True),
        ('diffratio-random', ['--loss', 'diffratio', '--init', 'random', '--arch', 'TEACHER'], False),
        ('diffratio-reinit-io', ['--loss', 'diffratio', '--reinit', 'io'], False),
        ('diffratio-reinit-inner', ['--loss', 'diffratio', '--reinit', 'inner'], False)]


def images_done(rundir, since):
    """Images a run launched at time `since` has trained on, from the last line of its metrics.jsonl; 0 while the file
    is older than the launch (the records of an earlier run, until train.py rewrites them) or has no line yet."""
    path = os.path.join(rundir, 'metrics.jsonl')
    records = ckpt.read_metrics(rundir) if os.path.isfile(path) and os.path.getmtime(path) >= since else []
    return round(records[-1]['kimg'] * 1000) if records else 0


def train_runs(args):
    """The GAN runs of --runs as `python train.py` processes, --jobs at a time with one thread each (measured here: two
    one-thread runs side by side make more images per second in all than one run on two threads). Each resumes if
    interrupted. -> {key: (snapshot path, wall minutes)}"""
    todo = [(key, [args.teacher if flag == 'TEACHER' else flag for flag in extra] +
             (['--fid-every', str(args.fid_every), '--fid-num', str(args.num), '--fid-ref', str(args.ref_num)]
              if curve and args.fid_every else ['--fid-num', '0'])) for key, extra, curve in RUNS if key in args.runs]
    running, runs, launched = [], {}, {}  # launched: rundir -> when its process started
    states = {key: ckpt.state_files(os.path.join(args.out, key)) for key, _ in todo}  # a run with one resumes
    target = round(args.kimg * 1000)  # a resumed run's images are not this launch's work: not in the rate or the ETA
    resumed = {os.path.join(args.out, key): min(ckpt.state_nimg(paths[-1]), target) if paths else 0
               for key, paths in states.items()}
    progress, done = ckpt.Progress('GAN runs', sum(target - n for n in resumed.values()), every=60), 0
    while todo or running:
        while todo and len(running) < args.jobs:
            key, extra = todo.pop(0)
            rundir = os.path.join(args.out, key)
            os.makedirs(rundir, exist_ok=True)
            resume = 'auto' if states[key] else 'new'  # 'new' over kept records
            cmd = [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), 'train.py'), '--init', args.teacher,
                   '--kimg', str(args.kimg), '--seed', str(args.seed), '--rundir', rundir, '--resume', resume, *extra]
            print(' '.join(cmd[1:]), f'> {rundir}/log.txt', flush=True)
            log = open(os.path.join(rundir, 'log.txt'), 'a')
            env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
            launched[rundir] = time.time()
            running.append((key, rundir, proc))
        time.sleep(1)
        for job in [j for j in running if j[2].poll() is not None]:
            key, rundir, proc = job
            running.remove(job)
            if proc.returncode:
                sys.exit(f'error: the {key} run failed; see {rundir}/log.txt (rerun to resume it)')
            snap = sorted(f for f in os.listdir(rundir) if f.startswith('network-snapshot'))[-1]
            runs[key] = (os.path.join(rundir, snap), (time.time() - launched[rundir]) / 60)  # its D: disc-snapshot-*.pt beside it
        # after the polls: a run seen ended has written its last line, so the closing progress line comes
        now = sum(max(min(images_done(rundir, t), target) - resumed[rundir], 0) for rundir, t in launched.items())
        progress.update(now - done)
        done = now
    return runs


def fid_records(rundir):
    """(options, {kimg: FID}) of a train.py run from the records it keeps, options.json and metrics.jsonl (the FIDs
    measured in the loop); None where they are missing or unreadable."""
    try:
        with open(os.path.join(rundir, 'options.json')) as f:
            options = json.load(f)
    except (OSError, ValueError):
        return None
    return options, dict(ckpt.read_fids(rundir))


def write_fid_curves(path, curves):
    """FID against kimg -> path.csv (every run, and each group's mean where it has several seeds) and path.png (a line
    per group: the mean of its runs at the kimg all of them reached). curves: {label: {run: {kimg: FID}}}."""
    rows, lines = [], {}
    for label, runs in curves.items():
        rows += [(run, kimg, value) for run, fids in runs.items() for kimg, value in sorted(fids.items())]
        kimgs = sorted(set.intersection(*(set(fids) for fids in runs.values())))
        lines[label] = (kimgs, [float(np.mean([fids[kimg] for fids in runs.values()])) for kimg in kimgs])
        rows += [(f'{label} mean', kimg, value) for kimg, value in zip(*lines[label])] if len(runs) > 1 else []
    text = 'run,kimg,fid\n' + ''.join(f'{run},{kimg:g},{value:.2f}\n' for run, kimg, value in rows)
    ckpt.atomic_text(path + '.csv', text)
    fid.plot_lines(lines, path + '.png', 'kimg ->', 'FID')


def study(out, curves, plot, upto=None):
    """study.md from the runs in out (see the module docstring): per probe its flags, FID at 5, 10 and 40 kimg (the
    targets' budget) and at its last evaluation, per seed, and the mean of the seeds at 10 kimg."""
    if not os.path.isdir(out):
        sys.exit(f'error: --study {out} is not a folder; give the folder of the study\'s runs (NAME-sSEED in it)')
    runs = {}  # name: (probe, seed, options, {kimg: FID})
    for name in sorted(os.listdir(out)):
        probe, _, seed = name.rpartition('-s')
        records = fid_records(os.path.join(out, name)) if probe and seed.isdigit() else None
        if records and records[1]:
            runs[name] = (probe, int(seed), *records)
    probes = {}
    for probe, seed, options, fids in runs.values():
        probes.setdefault(probe, {})[seed] = (options, {round(kimg): value for kimg, value in fids.items()})
    if 'd2o' not in probes:
        sys.exit(f'error: --study {out} holds no d2o-sSEED run (the reference, e.g. `python train.py --fid-every 5`) to '
                 'compare the probes with')
    groups = {}  # the curves: a probe, all its seeds; a run (NAME-sSEED), that one
    for item in curves:
        groups[item] = {name: {kimg: value for kimg, value in run[3].items() if upto is None or kimg <= upto}
                        for name, run in runs.items() if item in (name, run[0])}
        if not groups[item]:
            sys.exit(f'error: --curves {item} is neither a probe nor a run of {out} with FIDs; pick from '
                     f'{", ".join(sorted(probes))} (or one of their NAME-sSEED runs)')
    base_args = next(iter(probes['d2o'].values()))[0]  # a flag it lacks (older than the flag): the flag's default
    cell = lambda runs, kimg: ' / '.join(f'{fids[kimg]:.1f}' if kimg in fids else '-' for _, fids in runs.values())
    mean = lambda runs, kimg: f'{np.mean([fids[kimg] for _, fids in runs.values()]):.1f}' \
        if all(kimg in fids for _, fids in runs.values()) else '-'
    table = ['| probe | flags (vs d2o) | seeds | FID at 5 kimg | at 10 kimg | mean at 10 | at 40 kimg | '
             'last (kimg: FID per seed) |',
             '|---|---|---|---|---|---|---|---|']
    for probe, seeds in sorted(probes.items(), key=lambda item: (item[0] != 'd2o', item[0])):
        options = next(iter(seeds.values()))[0]
        flags = ' '.join(f'--{k.replace("_", "-")} {options[k]:g}' if isinstance(options[k], float) else
                         f'--{k.replace("_", "-")} {options[k]}' for k in options
                         if k not in NOT_PROBED and options[k] != base_args.get(k, train.parser.get_default(k)))
        last = ', '.join(f'{max(fids)}: {fids[max(fids)]:.1f}' for _, fids in seeds.values())
        table.append(f'| {probe} | {flags or "(none)"} | {", ".join(map(str, seeds))} | {cell(seeds, 5)} | '
                     f'{cell(seeds, 10)} | {mean(seeds, 10)} | {cell(seeds, 40)} | {last} |')
    text = '\n'.join([f'The toy D2O study: runs in {out}, FID of {base_args["fid_num"]} samples vs {base_args["fid_ref"]} '
                      'real images, per seed (a / b) and the mean of the seeds.', '', *table])
    ckpt.atomic_text(os.path.join(out, 'study.md'), text + '\n')
    print(text)
    if groups:
        write_fid_curves(os.path.join(out, plot), groups)


def table_rows(args, runs):
    """(slug, name, sampler) of every row but the real images, in table order; rows of runs not trained are left out."""
    teacher = ckpt.load_edm(args.teacher)
    frozen, total = freeze.freeze(unet.D2OGenerator(ckpt.load_edm(args.teacher)), 1, verbose=False)
    snapshot = lambda key: sample.load_sampler(runs[key][0])[0]
    best_of_4 = lambda key: sample.BestOfN(snapshot(key), disc.load_d(runs[key][0].replace('network-', 'disc-')), 4)
    run_rows = [('d2o', 'D2O, one step', 'd2o', snapshot),
                ('d2o-f', f'D2O-F ({100 * frozen / total:.1f}% frozen), one step', 'd2o-f', snapshot),
                ('d2o-f-lr3e-4', 'D2O-F at 3x the G lr (3e-4), one step', 'd2o-f-lr3e-4', snapshot),
                ('d2o-f-lr5e-4', 'D2O-F at 5x the G lr (5e-4), one step', 'd2o-f-lr5e-4', snapshot),
                ('random', 'same GAN from random init, one step', 'random', snapshot),
                ('diffratio-rkl', 'DiffRatio (reverse KL), one step', 'diffratio-rkl', snapshot),
                ('diffratio-js', 'DiffRatio (JS), one step', 'diffratio-js', snapshot),
                ('diffratio-random', 'DiffRatio (reverse KL) from random init', 'diffratio-random', snapshot),
                ('diffratio-reinit-io', 'DiffRatio, teacher with input/output layers re-initialised',
                 'diffratio-reinit-io', snapshot),
                ('diffratio-reinit-inner', 'DiffRatio, teacher with inner blocks re-initialised', 'diffratio-reinit-inner',
                 snapshot),
                ('d2o-best4', 'D2O, best of 4 by its D', 'd2o', best_of_4),
                ('diffratio-best4', 'DiffRatio (reverse KL), best of 4 by its ratio D', 'diffratio-rkl', best_of_4)]
    rows = [('heun-18', 'teacher, Heun 18 steps', sample.Sampler(teacher, 'heun', num_steps=18)),
            ('raw', 'teacher, raw one-step D(80z; 80)', sample.Sampler(teacher, 'raw'))]
    rows += [(slug, name, make(key)) for slug, name, key, make in run_rows if key in runs]
    return rows + [(f'heun-{k}', f'teacher, Heun {k} steps', sample.Sampler(teacher, 'heun', num_steps=k))
                   for k in (2, 4, 6, 8, 10)]


def measure(args, rows, dataset, detector, ref):
    """Samples of every row (seeds 0..num-1; the real row: images held out of the reference subset, the FID floor at
    this N), their grids, feature statistics and FID to the data. -> (images, stats, FID to data), keyed by slug."""
    in_ref = set(fid.subset(len(dataset), min(args.ref_num, len(dataset)), 0).tolist())
    held_out = [i for i in range(len(dataset)) if i not in in_ref][:args.num]
    seeds = list(range(args.num))
    images, stats, to_data = {}, {}, {}
    for slug, name, method in rows:
        if method is None:
            x = torch.from_numpy(dataset.batch(held_out)[0])
        else:
            progress, x = ckpt.Progress(f'sampling {name}', len(seeds)), []
            for i in range(0, len(seeds), 100):
                x.append(sample.quantize(method(seeds[i:i + 100], 'cpu')[0]))
                progress.update(len(x[-1]))
            x = torch.cat(x)
        images[slug] = x
        stats[slug] = fid.image_stats([x[i:i + 50] for i in range(0, len(x), 50)], detector, 'cpu')
        sample.save_grid(x[:64], os.path.join(args.out, f'grid-{slug}.png'), cols=8)
        to_data[slug] = fid.frechet_distance(*stats[slug], *ref)
        print(f'{name}: FID {to_data[slug]:.1f}', flush=True)
    return images, stats, to_data


def main(argv=None):
    args = parser.parse_args(argv)
    if args.study:
        return study(args.study, [name for name in args.curves.split(',') if name], args.plot, args.upto)
    args.runs = args.runs.split(',') if args.runs else [key for key, _, _ in RUNS]
    unknown = [key for key in args.runs if key not in [k for k, _, _ in RUNS]]
    if unknown or 'd2o' not in args.runs:
        parser.error(f'--runs {unknown[0]!r} is not a run' if unknown else '--runs must include d2o (every row is also '
                     'measured against it)')
    os.makedirs(args.out, exist_ok=True)
    path = data.toy_path(16, log=print)
    dataset = data.ImageDataset(path)
    detector = fid.load_detector()
    ref = fid.dataset_stats(path, dataset, detector, 'cpu', num=args.ref_num)[:2]
    runs = train_runs(args)
    rows = [('real', 'real images (held out of the reference set)', None)] + table_rows(args, runs)
    images, stats, to_data = measure(args, rows, dataset, detector, ref)

    table = ['| samples | NFE | FID to data | FID to D2O | grid |', '|---|---|---|---|---|']
    for slug, name, method in rows:
        to_d2o = '' if slug == 'd2o' else f'{fid.frechet_distance(*stats[slug], *stats["d2o"]):.1f}'
        table.append(f'| {name} | {method.nfe if method else ""} | {to_data[slug]:.1f} | {to_d2o} | ![](grid-{slug}.png) |')
    spectra = {'real': fid.radial_spectrum(images['real']), 'raw one-step': fid.radial_spectrum(images['raw']),
               'D2O': fid.radial_spectrum(images['d2o']), 'Heun 18': fid.radial_spectrum(images['heun-18'])}
    fid.write_spectra(spectra, os.path.join(args.out, 'spectrum'))
    if args.fid_every:
        curves = {'D2O': 'd2o', 'DiffRatio RKL': 'diffratio-rkl', 'DiffRatio JS': 'diffratio-js'}
        write_fid_curves(os.path.join(args.out, 'fid-curve'), {label: {key: fid_records(os.path.join(args.out, key))[1]}
                                                               for label, key in curves.items() if key in runs})
    hi = {k: float(v[len(v) // 2:].sum() / v.sum()) for k, v in spectra.items()}
    text = '\n'.join([f'Toy replication: {args.kimg:g} kimg per GAN run, seed {args.seed}, FID of {args.num} samples vs '
                      f'{args.ref_num} real images.', '', *table, '',
                      'High-frequency share of spectral power (radius >= R/4): ' + ', '.join(f'{k} {v:.3f}' for k, v in hi.items()),
                      '', f'GAN run wall times ({args.jobs} at a time, one thread each): ' +
                      ', '.join(f'{k} {t:.1f} min' for k, (_, t) in runs.items())])
    ckpt.atomic_text(os.path.join(args.out, 'table.md'), text + '\n')
    print(text)

if __name__ == '__main__':
    main()

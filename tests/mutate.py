"""Plant realistic one-line bugs one at a time and report which ones the test suite catches (not part of the suite).

    python tests/mutate.py                        # every mutant against the whole suite (about 1 hour on 2 CPU cores)
    python tests/mutate.py --list                 # the mutants and what each breaks
    python tests/mutate.py --only ema-per-iteration,fid-bgr
    python tests/mutate.py -k "train or fid"      # a subset of the suite: faster, and fewer catches

Each mutant replaces an exact piece of code. The project is copied to a temporary directory beside a link to
../shared (the tests read their fixtures there), the mutant is applied, and `pytest -x` runs there: a failing test
catches it, a passing suite lets it survive. The mutated file's own tests run first (test_<file>_...), then the
rest: a caught mutant costs seconds, a survivor the whole suite. A mutant whose text is no longer in the code is
reported as stale: update the list with the code. Keep the kill rate as the project grows: add a mutant for every
bug that got through.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (name, file, [(exact text, replacement), ...], what the bug does)
MUTANTS = [
    ('eps-shift', 'unet.py', [('c_skip = sd ** 2 / ((s - eps) ** 2 + sd ** 2)', 'c_skip = sd ** 2 / (s ** 2 + sd ** 2)'),
                              ('c_out = (s - eps) * sd / math.sqrt', 'c_out = s * sd / math.sqrt')],
     "the one-step generator's boundary coefficients without D2O's epsilon shift (EDM's plain ones)"),
    ('generator-dropout', 'unet.py', [('augment_dim=0, dropout=0)', 'augment_dim=0)')],
     "the generator keeps EDM's dropout in training (the official D2O configs set 0)"),
    ('r1-weight-interval', 'loss.py', [('r1_weight, r1_view = run.args.r1_interval * run.args.r1_gamma / 2,', 'r1_weight, r1_view = run.args.r1_gamma / 2,')],
     'the lazy R1 weight not multiplied by its interval'),
    ('r1-iteration', 'loss.py', [('run.it > 0 and run.it % run.args.r1_interval == 0', 'run.it % run.args.r1_interval == run.args.r1_interval - 1')],
     'lazy R1 one iteration early'),
    ('ema-per-iteration', 'loss.py', [('beta = 0.5 ** (args.batch / max(half_life, 1e-8))', 'beta = 0.5 ** (1 / max(half_life, 1e-8))')],
     'the EMA half-life counted in iterations instead of images'),
    ('ema-no-rampup', 'loss.py', [('half_life = min(args.ema * 1000, args.ema_rampup * nimg) if args.ema_rampup else args.ema * 1000', 'half_life = args.ema * 1000')],
     'the EMA ramp-up ignored'),
    ('grad-check-first-tensor', 'loss.py', [('bool(torch.stack(torch._foreach_norm(tensors, math.inf)).isfinite().all())', 'bool(tensors[0].isfinite().all())')],
     "the finiteness check reads only the first gradient tensor: a NaN elsewhere steps Adam and poisons the run"),
    ('ema-lerp-weight', 'loss.py', [('list(G.parameters()), 1 - beta)', 'list(G.parameters()), beta)')],
     'the EMA weights swapped: G_ema follows G almost at once instead of averaging it'),
    ('lr-rampup-units', 'loss.py', [('min(run.nimg / (args.lr_rampup * 1000), 1)', 'min(run.nimg / args.lr_rampup, 1)')],
     'the lr warm-up counted in images instead of kimg'),
    ('lazy-dlr', 'loss.py', [("group['lr'], group['betas'] = args.dlr * lazy,", "group['lr'], group['betas'] = args.dlr,")],
     "D's learning rate not scaled by interval/(interval+1) for lazy R1"),
    ('lazy-beta2', 'loss.py', [("(0.0, 0.99 ** lazy)\n\n", "(0.0, 0.99)\n\n")],
     "D's beta2 not scaled by interval/(interval+1) for lazy R1"),
    ('accum-sum', 'loss.py', [('.sum() / run.per_gpu', '.sum() / run.args.batch_gpu')],
     'losses summed over accumulation steps instead of averaged'),
    ('rank-loss-sum', 'loss.py', [('        total /= run.world\n', '')],
     'the logged loss summed over ranks instead of averaged'),
    ('same-noise-g-d', 'loss.py', [('z_g, z_d = global_randn(run, x.shape[1:]), global_randn(run, x.shape[1:])', 'z_g = z_d = global_randn(run, x.shape[1:])')],
     'the G and D steps share one z (D2O draws fresh noise per stage)'),
    ('noise-rank-share', 'loss.py', [('share = slice(run.rank * run.per_gpu,', 'share = slice(0 * run.per_gpu,')],
     'every rank uses the same noise'),
    ('sampler-rank-offset', 'data.py', [('start = nimg + rank * per_rank', 'start = nimg')],
     'the data sampler not offset by rank: every rank trains on the same images'),
    ('saturating-g-loss', 'loss.py', [('return sum(F.softplus(-l).flatten(1).mean(1) for l in logits)', 'return sum(-F.softplus(l).flatten(1).mean(1) for l in logits)')],
     'the saturating G loss instead of the non-saturating one'),
    ('edm-loss-weight', 'loss.py', [('weight = (sigma ** 2 + sigma_data ** 2) / (sigma * sigma_data) ** 2', 'weight = 1 / sigma ** 2')],
     "EDM's loss weight replaced by 1/sigma^2"),
    ('edm-sigma-mean', 'loss.py', [('* 1.2 - 1.2).exp()', '* 1.2 + 1.2).exp()')],
     "EDM's training noise levels centred at ln sigma = +1.2 instead of -1.2"),
    ('fid-bgr', 'fid.py', [('x = images.to(torch.float32)', 'x = images.flip(1).to(torch.float32)')],
     'the FID detector fed BGR instead of RGB'),
    ('fid-biased-cov', 'fid.py', [('n * torch.outer(mu, mu)) / (n - 1)', 'n * torch.outer(mu, mu)) / n')],
     'the biased covariance in the FID statistics'),
    ('projected-d-mean-std', 'disc.py', [("(VGG16BN, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))", "(VGG16BN, (0.229, 0.224, 0.225), (0.485, 0.456, 0.406))")],
     "VGG16-BN's normalisation mean and std swapped in the projected D"),
    ('projected-d-align-corners', 'disc.py', [("size=(224, 224), mode='bilinear', align_corners=False)", "size=(224, 224), mode='bilinear', align_corners=True)")],
     "the projected D's resize to 224 with align_corners=True"),
    ('deit-fused-attention', 'disc.py', [("return self.proj((attn @ v).transpose(1, 2)", "return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2)")],
     "DeiT's attention through the fused kernel, which R1's double backward cannot differentiate"),
    ('heun-no-correction', 'sample.py', [('        if i < num_steps - 1:  # Heun', '        if False:  # Heun')],
     "EDM's sampler without its second-order correction"),
    ('quantize-round', 'sample.py', [('(x * 127.5 + 128).clip(0, 255)', '(x * 127.5 + 127.5).clip(0, 255)')],
     "uint8 quantization truncating instead of EDM's round-half-up"),
    ('state-no-crc', 'ckpt.py', [('bad = z.testzip()', 'bad = None')],
     'training states loaded without checking their CRCs'),
    ('resume-no-opt-d', 'train.py', [("dict(D=run.D, opt_D=run.opt_D) if run.D", "dict(D=run.D) if run.D")],
     "a resume without D's optimizer state"),
    ('train-sampler-rank', 'train.py', [('sampler.indices(run.nimg, args.batch, run.rank, run.world)', 'sampler.indices(run.nimg, args.batch, 0, run.world)')],
     "train.py asks the sampler for rank 0's share on every rank"),
    ('d-logits-reduced-precision', 'loss.py', [('logits = [l.float() for l in run.D_fast(images, pick(s), **kw)]', 'logits = list(run.D_fast(images, pick(s), **kw))')],
     "the G loss reduced in D's autocast precision instead of fp32"),
    ('cond-not-from-network', 'train.py', [('args.cond = int(net.label_dim > 0)', 'args.cond = 1')],
     '--cond defaults to 1 whatever the network'),
    ('r1-gamma-not-per-d', 'disc.py', [("recipe = RECIPES.get(args.disc, preset)", "recipe = RECIPES['resnet']")],
     "the projected D gets the ResNet D's lr and R1 weight"),
    ('negative-label', 'data.py', [('not 0 <= label < MAX_CLASSES', 'not -MAX_CLASSES <= label < MAX_CLASSES')],
     'a negative label in dataset.json accepted (it wraps to the last class)'),
    ('member-climbs-out', 'data.py', [("or '..' in parts or", 'or')],
     "a zip member named '../x.png' accepted"),
    ('dest-overwritten', 'data.py', [('    if not overwrite:\n        raise', '    if False:\n        raise')],
     'an existing dataset zip replaced without --overwrite'),
    ('stale-reference-stats', 'fid.py', [("-{n}-{dataset.fingerprint()}.npz')", "-{n}.npz')")],
     "in-loop FID reuses statistics cached for another dataset of the same name"),
    ('grid-not-upscaled', 'sample.py', [('scale = max(1, -(-min_width // (cols * w)))', 'scale = 1')],
     'sample grids at native size'),
    ('freeze-skip-rule', 'freeze.py', [("in_block = any(s in name for s in ('block', 'up', 'down', 'in'))", "in_block = any(s in name for s in ('block', 'up', 'down'))")],
     "D2O-F's rule missing the 'in' blocks"),
    ('rkl-sign', 'loss.py', [('return -sum(l.flatten(1).mean(1) for l in logits)', 'return sum(l.flatten(1).mean(1) for l in logits)')],
     "DiffRatio's reverse-KL surrogate pushes G away from the data"),
    ('ratio-views-clean', 'loss.py', [('(images + sigma[s] * noise[s], dict(', '(images, dict(')],
     "DiffRatio's D and G see images without the noise of their noise level"),
    ('ratio-sigma-not-passed', 'loss.py', [('dict(sigma=sigma[s].flatten())', 'dict(sigma=torch.ones_like(sigma[s].flatten()))')],
     "the ratio D is told sigma = 1 whatever the noise level"),
    ('sigma-law-sign', 'loss.py', [('* run.args.sigma_std + run.args.sigma_mean).exp()', '* run.args.sigma_std - run.args.sigma_mean).exp()')],
     "DiffRatio's noise levels drawn around exp(+1.2) instead of exp(-1.2)"),
    ('d-steps-ignored', 'loss.py', [('for k in range(run.args.d_steps):', 'for k in range(1):')],
     '--d-steps has no effect'),
    ('best-of-n-argmin', 'sample.py', [('scores.argmax(1)', 'scores.argmin(1)')],
     'best-of-N keeps the candidate the verifier likes least'),
    ('reinit-io-misses-output', 'freeze.py', [("_aux_|", "")],
     "--reinit io keeps the output layers (and re-initialises them under --reinit inner)"),
    ('metrics-no-start-fid', 'train.py', [('if line is not None or fid_value is not None:', 'if line is not None:')],
     "metrics.jsonl lacks the FID at 0 kimg (the records toy_table.py --study reads)"),
    ('fresh-start-keeps-lines', 'ckpt.py', [("if round(record['kimg'] * 1000) <= nimg] if nimg else []", "if round(record['kimg'] * 1000) <= nimg]")],
     "a run started afresh in an old run's folder keeps that run's start line (its FID at 0 kimg twice)"),
    ('study-mean-one-seed', 'toy_table.py', [('float(np.mean([fids[kimg] for fids in runs.values()]))', 'float(next(iter(runs.values()))[kimg])')],
     "--study's curve of a probe is its first seed's, not the seeds' mean"),
    ('fid-history-not-resumed', 'train.py', [("history = ckpt.read_fids(args.rundir) if rank == 0 else []", "history = []")],
     "a resumed run forgets its earlier FIDs: its closing summary and best-snapshot flag see only this session's"),
    ('resnet-r1-gamma-0.1', 'disc.py', [("RECIPES = dict(resnet=dict(dlr=2e-3, r1_gamma=1.0)", "RECIPES = dict(resnet=dict(dlr=2e-3, r1_gamma=0.1)")],
     "the ResNet D's R1 weight is the former 0.1, not the toy study's 1"),
    ('rp-no-r2', 'loss.py', [('penalty = penalty if fake is None else penalty + r1_penalty(self.D, fake, labels, **fake_kw)', 'penalty = penalty')],
     '--gan rp without R2: the lazy step penalises the reals only'),
    ('rp-g-sign', 'loss.py', [('F.softplus(r - f)', 'F.softplus(f - r)')],
     "--gan rp: G's loss takes D's side (it pushes fakes below their paired reals)"),
    ('rp-r2-local-z', 'loss.py', [('z_r2 = global_randn(run, x.shape[1:]) if relativistic else None', 'z_r2 = torch.randn(x.shape) if relativistic else None')],
     "--gan rp: R2's fakes drawn per rank, so a run depends on its GPU count"),
    ('dinit-shape-unchecked', 'disc.py', [('fits = type(saved) is type(D) and saved.init_kwargs == D.init_kwargs', 'fits = type(saved) is type(D)')],
     '--dinit takes a D of another width: load_state_dict fails with a traceback, not one line'),
    ('dinit-typed-may-not-fit', 'disc.py', [("if dinit != 'auto' and not fits:", 'if False:')],
     'a typed --dinit of another shape is dropped without a word, and D starts fresh'),
    ('dinit-auto-records-the-file', 'disc.py', [("return 'none', f', fresh ({path} is another kind or shape)'",
                                                  "return path, f', fresh ({path} is another kind or shape)'")],
     "--dinit auto records the preset's D for a run whose D of another shape started fresh"),
    ('pretrain-keeps-head', 'disc.py', [('    D.out, D.embed = out, embed\n    return D, accuracy', '    return D, accuracy')],
     "disc.pretrain returns D with the classifier head in place of its output (and no label projection)"),
    ('dlr-trunk-on-head', 'train.py', [('disc.trunk_and_head(run.D), [args.dlr_trunk, 1.0]', 'disc.trunk_and_head(run.D), [1.0, args.dlr_trunk]')],
     "--dlr-trunk scales D's fresh head instead of its trunk"),
    ('patch-no-projection', 'disc.py', [('patches.append(project(self.patch_out[len(patches)](x)).flatten(1))', 'patches.append(self.patch_out[len(patches)](x)[:, :1].flatten(1))')],
     "--dpatch's heads ignore the label (no projection onto the label embedding)"),
    ('patch-head-in-trunk', 'disc.py', [("in ('out', 'embed', 'patch_out')", "in ('out', 'embed')")],
     "--dlr-trunk scales --dpatch's fresh heads with the trunk"),
    ('patch-dinit-drops-trunk', 'disc.py', [("fresh = D.load_state_dict(saved.state_dict(), strict=False).missing_keys", "fresh = [k for k in D.state_dict() if k.startswith('patch_out')]")],
     "--dpatch 1 --dinit FILE starts the whole D fresh, not from the file's trunk"),
    ('best-of-image-logit-only', 'sample.py', [('return sum(logits.flatten(1).mean(1) for logits in self.D(images, label))', 'return self.D(images, label)[0].flatten()')],
     "best-of-N with a patch D scores by its image logit alone, not what its GAN loss reads"),
    ('g-beta1-ignored', 'train.py', [("betas=(args.beta1, 0.99) if run.D", "betas=(0.0, 0.99) if run.D")],
     "--beta1 does not reach G's Adam: G trains without the momentum asked for"),
    ('d-fakes-after-g-step', 'loss.py', [('    z_d = None if reuse else global_randn(run, x.shape[1:])', '    z_d = z_g if reuse else global_randn(run, x.shape[1:])')],
     "--d-fakes g-step runs G again on the G step's z after its step, rather than reusing the images (no saving)"),
    ('d-fakes-one-micro-batch', 'loss.py', [('                fake = g_fakes[s.start]', '                fake = g_fakes[0]')],
     "--d-fakes g-step with accumulation gives every D micro-batch the first G micro-batch's images"),
    ('pretrain-no-colours', 'disc.py', [('    if colours:  # the shape', '    if False:  # the shape')],
     "disc.pretrain on the toy world classifies shapes only, not the colours that assets/toy-disc.pt learnt"),
    ('pretrain-adam-beta2', 'disc.py', [('opt = torch.optim.Adam(D.parameters(), lr=lr, betas=(0.9, 0.99))', 'opt = torch.optim.Adam(D.parameters(), lr=lr, betas=(0.9, 0.999))')],
     "disc.pretrain's Adam at PyTorch's default beta2, not the one assets/toy-disc.pt was trained with"),
    ('pretrain-dest-checked-late', 'disc.py', [('            ckpt.check_writable(args.dest)  # before the training, not after it\n', '')],
     "disc.py --pretrain finds out that --dest cannot be written only when it saves, after the training"),
    ('writable-no-probe', 'ckpt.py', [('        tempfile.TemporaryFile(dir=folder).close()\n', '')],
     "check_writable only makes the folder: a folder without write permission passes"),
]


def run_suite(tree, file, select, timeout):
    """pytest -x in tree: first the tests of the mutated file (named test_<file>_...), then the rest, so that a
    caught mutant costs seconds and a survivor has met the whole suite (or the -k selection). (outcome, test)."""
    stem = os.path.splitext(file)[0]
    stages = [f'({select}) and {stem}', f'({select}) and not {stem}'] if select else [stem, f'not {stem}']
    for stage in stages:
        cmd = [sys.executable, '-m', 'pytest', '-x', '-q', '-p', 'no:cacheprovider', 'test_all.py', '-k', stage]
        try:
            r = subprocess.run(cmd, cwd=tree, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return 'timeout', stage
        failed = re.findall(r'^(?:FAILED|ERROR) test_all\.py::(\S+)', r.stdout, re.M)
        if r.returncode not in (0, 5):  # 5: no test selected
            return 'caught', failed[0] if failed else (r.stdout.strip().splitlines() or [''])[-1]
    return 'survived', ''


def main():
    parser = argparse.ArgumentParser(description='Mutation check of the test suite: which planted bugs does it catch?')
    parser.add_argument('--only', default=None, help='comma-separated mutant names (default: all)')
    parser.add_argument('-k', dest='select', default=None, help="pytest -k expression: run only part of the suite")
    parser.add_argument('--timeout', type=float, default=1800, help='seconds per mutant before it counts as a timeout')
    parser.add_argument('--list', action='store_true', help='list the mutants and exit')
    args = parser.parse_args()
    names = [m[0] for m in MUTANTS]
    chosen = args.only.split(',') if args.only else names
    unknown = [n for n in chosen if n not in names]
    if unknown:
        sys.exit(f'error: unknown mutant(s) {", ".join(unknown)}; --list shows them')
    if args.list:
        for name, file, _, what in MUTANTS:
            print(f'{name:28s} {file:10s} {what}')
        return
    shared = os.path.realpath(os.path.join(ROOT, '..', 'shared'))
    if not os.path.isdir(shared):
        sys.exit(f'error: {shared} not found; the tests need ../shared/fixtures beside the project')
    results = []
    with tempfile.TemporaryDirectory(prefix='d2o-mutate-') as tmp:
        os.symlink(shared, os.path.join(tmp, 'shared'))
        for name, file, edits, what in (m for m in MUTANTS if m[0] in chosen):
            tree = os.path.join(tmp, 'project')
            shutil.rmtree(tree, ignore_errors=True)
            shutil.copytree(ROOT, tree, ignore=shutil.ignore_patterns('.git', 'runs', 'refs', 'out', '__pycache__', '*.zip'))
            path = os.path.join(tree, file)
            source = open(path).read()
            if any(source.count(old) != 1 for old, _ in edits):
                results.append((name, 'stale', f'text not found once in {file}', 0.0, what))
            else:
                for old, new in edits:
                    source = source.replace(old, new)
                open(path, 'w').write(source)
                t0 = time.time()
                outcome, test = run_suite(tree, file, args.select, args.timeout)
                results.append((name, outcome, test, time.time() - t0, what))
            name, outcome, test, seconds, _ = results[-1]
            print(f'{name:28s} {outcome:9s} {seconds:6.0f}s  {test}', flush=True)
    counts = {k: sum(r[1] == k for r in results) for k in ('caught', 'survived', 'stale', 'timeout')}
    print(f'\n{len(results)} mutants: ' + ', '.join(f'{v} {k}' for k, v in counts.items()))
    for name, outcome, _, _, what in results:
        if outcome != 'caught':
            print(f'  {outcome}: {name} ({what})')


if __name__ == '__main__':
    main()

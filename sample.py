"""Sampling: one step from D2O generators, EDM's Heun sampler for diffusion teachers, EDM's per-seed latents.

    python sample.py --net runs/toy-d2o/network-snapshot-000012000.pt --seeds 0-63 --grid grid.png
    python sample.py --net edm-cifar10-32x32-cond-vp --seeds 0-49999 --outdir out/edm --subdirs   # Heun, 18 steps
    python sample.py --net assets/toy-edm.pt --raw --seeds 0-999 --npz raw.npz     # the teacher's D(80z; 80)
    python sample.py --net assets/toy-edm.pt --raw --sigma 2.5 --seeds 0-999 --npz raw.npz   # D(2.5z; 2.5)
    python sample.py --net runs/toy-diffratio/network-snapshot-000040000.pt --best-of 4 --npz best.npz   # D as verifier
    torchrun --standalone --nproc_per_node=8 sample.py --net ... --seeds 0-49999 --outdir out/x

Method: our generator checkpoints sample in one network evaluation. A diffusion network (EDM .pkl or our teacher
checkpoint) uses EDM's Heun sampler with EDM's recommended settings for its resolution (18 steps at 32x32, 40 at
64x64, 256 stochastic steps for ImageNet-64) unless --steps/--churn say otherwise; --raw gives its one-step output.
Seeds: one torch.Generator per seed (latents first, then the class index, then per-step noise), so a seed gives the
same image whatever the batch size or number of ranks. EDM's generate.py uses CUDA generators: on CUDA the latents
equal EDM's; CPU generators give other (equally valid) latents.
"""

import contextlib
import gc
import math
import os
import sys

import numpy as np
import torch
from PIL import Image

import ckpt
import disc
import unet


class StackedRandomGenerator:
    """One generator per seed; draws are stacked along the batch axis (EDM's scheme)."""
    def __init__(self, device, seeds):
        self.generators = [torch.Generator(device).manual_seed(int(s) % (1 << 32)) for s in seeds]

    def randn(self, size, **kwargs):
        return torch.stack([torch.randn(size[1:], generator=g, **kwargs) for g in self.generators])

    def randn_like(self, x):
        return self.randn(x.shape, dtype=x.dtype, layout=x.layout, device=x.device)

    def randint(self, *args, size, **kwargs):
        return torch.stack([torch.randint(*args, size=size[1:], generator=g, **kwargs) for g in self.generators])


def edm_sampler(net, latents, class_labels=None, randn_like=torch.randn_like, num_steps=18, sigma_min=0.002,
                sigma_max=80, rho=7, S_churn=0, S_min=0, S_max=float('inf'), S_noise=1):
    """EDM's Heun sampler (Algorithm 2), float64 state; NFE = 2*num_steps - 1."""
    sigma_min, sigma_max = max(sigma_min, net.sigma_min), min(sigma_max, net.sigma_max)
    i = torch.arange(num_steps, dtype=torch.float64, device=latents.device)
    t_steps = (sigma_max ** (1 / rho) + i / (num_steps - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    t_steps = torch.cat([net.round_sigma(t_steps), torch.zeros_like(t_steps[:1])])
    x_next = latents.to(torch.float64) * t_steps[0]
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
        x_cur = x_next
        gamma = min(S_churn / num_steps, math.sqrt(2) - 1) if S_min <= t_cur <= S_max else 0
        t_hat = net.round_sigma(t_cur + gamma * t_cur)
        # EDM draws this noise at every step, even when gamma = 0, so the RNG streams advance the same way.
        x_hat = x_cur + (t_hat ** 2 - t_cur ** 2).sqrt() * S_noise * randn_like(x_cur)
        d_cur = (x_hat - net(x_hat, t_hat, class_labels).to(torch.float64)) / t_hat
        x_next = x_hat + (t_next - t_hat) * d_cur
        if i < num_steps - 1:  # Heun correction; the last step is Euler
            d_prime = (x_next - net(x_next, t_next, class_labels).to(torch.float64)) / t_next
            x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)
    return x_next


def recommended(net):
    """EDM's recommended Heun settings for a network (EDM's README and generate.py)."""
    if net.img_resolution >= 64 and net.label_dim >= 1000:
        return dict(num_steps=256, S_churn=40, S_min=0.05, S_max=50, S_noise=1.003)
    return dict(num_steps=40 if net.img_resolution >= 64 else 18)


def quantize(x):
    """[-1,1] float -> uint8 exactly as EDM: clip(x*127.5 + 128) truncated, i.e. round-half-up."""
    return (x * 127.5 + 128).clip(0, 255).to(torch.uint8)


def latents_and_labels(rnd, n, net, device, class_idx=None):
    z = rnd.randn([n, net.img_channels, net.img_resolution, net.img_resolution], device=device)
    labels = None
    if net.label_dim:
        if class_idx is not None and not 0 <= class_idx < net.label_dim:
            raise ValueError(f'--class {class_idx} is out of range: the network has {net.label_dim} classes (0-{net.label_dim - 1})')
        idx = rnd.randint(net.label_dim, size=[n], device=device)
        labels = torch.eye(net.label_dim, device=device)[idx]
        if class_idx is not None:
            labels[:, :] = 0
            labels[:, class_idx] = 1
    elif class_idx is not None:
        raise ValueError('--class given, but the network is unconditional')
    return z, labels


class Sampler:
    """Maps seeds to images in [-1,1] with one of: 'generator' (D2O, 1 NFE), 'raw' (D(sigma z; sigma), 1 NFE; D2O's
    sigma is 80), 'heun'."""
    def __init__(self, net, method, sigma=80.0, **heun_kwargs):
        self.net, self.method, self.sigma, self.heun_kwargs = net, method, sigma, heun_kwargs
        if method == 'heun':
            self.nfe = 2 * heun_kwargs.get('num_steps', 18) - 1
        else:
            self.nfe = 1

    @torch.no_grad()
    def __call__(self, seeds, device, class_idx=None, labels=None):
        """Images for the seeds; labels, if given, replace the ones the seeds draw (best-of-N's candidates)."""
        rnd = StackedRandomGenerator(device, seeds)
        z, drawn = latents_and_labels(rnd, len(seeds), self.net, device, class_idx)
        labels = drawn if labels is None else labels
        if self.method == 'generator':
            x = self.net(z, labels)
        elif self.method == 'raw':
            sigma = torch.tensor(self.sigma, dtype=torch.float64, device=device)
            x = self.net(z.to(torch.float64) * sigma, sigma, labels)
        else:
            x = edm_sampler(self.net, z, labels, randn_like=rnd.randn_like, **self.heun_kwargs)
        return x, labels


def derived_seed(seed, k):
    """The seed of a seed's k-th extra candidate (best-of-N)."""
    return int(np.random.SeedSequence([seed, k]).generate_state(1)[0])


class BestOfN:
    """The density ratio as a verifier (arXiv 2502.08005 v5, abstract; its scoring rule is not public, this one is
    ours): per seed, N candidates with the seed's class (candidate 0 is the seed's own sample, candidate k that of
    derived_seed(seed, k)), each scored by a trained D's logit, an estimate of log p_data(x) / p_G(x); the highest is
    kept. A noise-conditioned ratio D scores the mean logit over SIGMAS, one noise draw per seed shared by its
    candidates; the ResNet D scores the clean image, the N candidates of a seed as one batch (its minibatch-std), by
    its image logit plus, with patch heads, each head's mean over positions (what its GAN loss reads)."""
    SIGMAS = (0.05, 0.2, 0.5)

    def __init__(self, sampler, D, n):
        self.sampler, self.D, self.n = sampler, D, n
        self.method, self.nfe = f'{sampler.method}, best of {n}', sampler.nfe * n

    @torch.no_grad()
    def __call__(self, seeds, device, class_idx=None):
        x, labels = self.sampler(seeds, device, class_idx)
        if self.n == 1:
            return x, labels
        candidates = torch.stack([x] + [self.sampler([derived_seed(s, k) for s in seeds], device, labels=labels)[0]
                                        for k in range(1, self.n)], 1)  # [seeds, N, C, H, W]
        scores = torch.stack([self.score(seed, images, labels[i:i + 1] if labels is not None else None)
                              for i, (seed, images) in enumerate(zip(seeds, candidates))])
        return candidates[torch.arange(len(seeds)), scores.argmax(1)], labels

    def score(self, seed, images, label):
        """The N candidates of one seed -> N scores."""
        label = label.expand(len(images), -1) if label is not None else None
        if not isinstance(self.D, disc.RatioD):  # the ResNet D: the clean images
            return sum(logits.flatten(1).mean(1) for logits in self.D(images, label))
        generator = torch.Generator(images.device).manual_seed(derived_seed(seed, 0))  # k = 0: no candidate's seed
        noise = torch.randn([len(self.SIGMAS), *images.shape[1:]], generator=generator, device=images.device)
        sigma = lambda value: torch.full([len(images)], value, device=images.device)
        return torch.stack([self.D(images + value * noise[j], label, sigma(value))[0].flatten()
                            for j, value in enumerate(self.SIGMAS)]).mean(0)


def load_sampler(src, raw=False, steps=None, churn=None, device='cpu', sigma=80.0):
    net, meta = ckpt.read_checkpoint(src)
    net = net.to(device)
    if meta.get('kind') == 'generator':
        return Sampler(unet.D2OGenerator(net, meta.get('sigma') or 80.0).eval(), 'generator'), meta  # older: 80
    if raw:
        return Sampler(net, 'raw', sigma), meta
    kw = recommended(net)
    if steps is not None:
        kw = dict(kw, num_steps=steps)
    if churn is not None:
        kw = dict(kw, S_churn=churn)
    return Sampler(net, 'heun', **kw), meta


def save_grid(images, path, cols=None, min_width=512):
    """uint8 [N,C,H,W] -> one PNG, cols images per row, upscaled by a whole factor (nearest neighbour: pixels stay
    crisp) to at least min_width pixels, so that a viewer does not show a grid of 16x16 images as a stamp."""
    images = images.cpu().numpy() if torch.is_tensor(images) else np.asarray(images)
    n, c, h, w = images.shape
    cols = cols or int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    grid = np.zeros([rows * h, cols * w, c], np.uint8)
    for i, img in enumerate(images):
        r, k = divmod(i, cols)
        grid[r * h:(r + 1) * h, k * w:(k + 1) * w] = img.transpose(1, 2, 0)
    scale = max(1, -(-min_width // (cols * w)))
    grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    ckpt.atomic_write(path, lambda f: Image.fromarray(grid[:, :, 0] if c == 1 else grid).save(f, format='PNG'))


def parse_seeds(s):
    out = []
    for part in s.split(','):
        a, _, b = part.partition('-')
        out += list(range(int(a), int(b) + 1)) if b else [int(a)]
    return out


@contextlib.contextmanager
def distributed():
    """torchrun's environment -> (rank, world, device) for train.py, sample.py and fid.py: each rank on its own GPU
    (set_device, so NCCL's collectives do not all land on GPU 0; TF32 off), one process group (NCCL on GPUs, gloo on
    CPU). On a clean exit the ranks leave together, after a rank's DDP wrappers are freed: a rank that tears gloo down
    while its peer still writes files, or exits with DDP's reducer still holding the group, can abort at exit."""
    rank, world, local = (int(os.environ.get(k, d)) for k, d in (('RANK', 0), ('WORLD_SIZE', 1), ('LOCAL_RANK', 0)))
    device = torch.device('cuda', local) if torch.cuda.is_available() else torch.device('cpu')
    if device.type == 'cuda':  # exact fp32 matmuls and convolutions (TF32 off)
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    if world > 1:
        torch.distributed.init_process_group('nccl' if device.type == 'cuda' else 'gloo', device_id=device if device.type == 'cuda' else None)
    try:
        yield rank, world, device
        if world > 1:
            gc.collect()
            torch.distributed.barrier()
    finally:
        if world > 1:
            torch.distributed.destroy_process_group()


def check_ranks_agree(modules, log):
    """Every rank must hold rank 0's trainable parameters (DDP keeps them in sync; this catches a bug that would not).
    Frozen ones (the projected D's backbones) cannot drift, and are large."""
    for name, module in modules.items():
        for pname, param in module.named_parameters():
            if param.requires_grad:
                ref = param.detach().clone()
                torch.distributed.broadcast(ref, src=0)
                if not torch.equal(ref, param.detach()):
                    raise RuntimeError(f'{name}.{pname} differs between ranks')
    log(f'ranks agree: {", ".join(modules)} trainable parameters identical on all {torch.distributed.get_world_size()} ranks')


def rank_batches(seeds, batch, rank, world):
    """EDM's split: ceil(n / (batch*world))*world nearly equal batches, rank r takes r::world."""
    num = max(int(math.ceil(len(seeds) / (batch * world))) * world, 1)
    return [b.tolist() for b in torch.as_tensor(seeds).tensor_split(num)][rank::world]


def main():
    parser = ckpt.Parser(prog='sample.py', description='Sample images with per-seed determinism.')
    parser.add_argument('--net', required=True, help='our checkpoint, EDM .pkl path/URL, or official EDM name')
    parser.add_argument('--seeds', default='0-63', help='e.g. 0-49999 or 0,5,7-9')
    parser.add_argument('--class', dest='class_idx', type=ckpt.number(int, 0, inclusive=True), default=None, help='fixed class (conditional nets)')
    parser.add_argument('--batch', type=ckpt.number(int, 0), default=64, help='images per batch per rank (does not change the images)')
    parser.add_argument('--raw', action='store_true', help="a diffusion net's one-step output D(sigma z; sigma)")
    parser.add_argument('--sigma', type=ckpt.number(float, 0), default=None, help="--raw's noise level (default 80, D2O's)")
    parser.add_argument('--steps', type=ckpt.number(int, 0), default=None, help='Heun steps (default: EDM recommended for the net)')
    parser.add_argument('--churn', type=ckpt.number(float, 0, inclusive=True), default=None, help='S_churn for stochastic Heun')
    parser.add_argument('--outdir', default=None, help='write {seed:06d}.png here')
    parser.add_argument('--subdirs', action='store_true', help='thousand-subfolders as EDM: {seed - seed%%1000:06d}/')
    parser.add_argument('--npz', default=None, help='write all images (NHWC uint8 arr_0, labels arr_1) to this npz')
    parser.add_argument('--grid', default=None, help='write the first 64 images as a grid PNG')
    parser.add_argument('--compile', action='store_true', help='torch.compile the network (pays off for many images)')
    parser.add_argument('--best-of', type=ckpt.number(int, 0), default=1, help='candidates per seed, the best kept by a D')
    parser.add_argument('--verifier', default=None, help='--best-of\'s D (default: the disc-snapshot beside --net)')
    args = parser.parse_args()
    if args.sigma is not None and not args.raw:
        parser.error('--sigma is the noise level of --raw; give --raw too')
    verifier = args.verifier or os.path.join(os.path.dirname(args.net), os.path.basename(args.net).replace('network-', 'disc-'))
    if args.best_of > 1 and not os.path.isfile(verifier):
        parser.error(f'--best-of needs a D saved by train.py: {verifier} not found (give --verifier PATH)')

    with distributed() as (rank, world, device):
        sampler, _ = load_sampler(args.net, args.raw, args.steps, args.churn, device, args.sigma or 80.0)
        if args.compile:
            sampler.net = torch.compile(sampler.net)
        if args.best_of > 1:
            sampler = BestOfN(sampler, disc.load_d(verifier).to(device), args.best_of)
        seeds = parse_seeds(args.seeds)
        if rank == 0:
            print(f'{args.net}: {sampler.method} sampling ({sampler.nfe} NFE), {len(seeds)} seeds on {world} rank(s)')
        packed, progress = [], ckpt.Progress('sampling', len(seeds), show=rank == 0)
        for batch in rank_batches(seeds, args.batch, rank, world):
            if not batch:
                continue
            x, labels = sampler(batch, device, args.class_idx)
            images = quantize(x).cpu()
            for seed, img in zip(batch, images):
                if args.outdir:
                    folder = os.path.join(args.outdir, f'{seed - seed % 1000:06d}') if args.subdirs else args.outdir
                    os.makedirs(folder, exist_ok=True)
                    Image.fromarray(img.permute(1, 2, 0).squeeze(2).numpy()).save(os.path.join(folder, f'{seed:06d}.png'))
            packed.append((batch, images, labels.argmax(1).cpu() if labels is not None else None))
            progress.update(len(batch) * world)
        if world > 1:
            gathered = [None] * world
            torch.distributed.all_gather_object(gathered, packed)
            packed = [b for g in gathered for b in g]
        if rank == 0 and (args.npz or args.grid):
            packed.sort(key=lambda b: b[0][0])
            images = torch.cat([b[1] for b in packed])
            if args.npz:
                arrays = dict(arr_0=images.permute(0, 2, 3, 1).numpy())
                if packed[0][2] is not None:
                    arrays['arr_1'] = torch.cat([b[2] for b in packed]).numpy()
                ckpt.atomic_write(args.npz, lambda f: np.savez(f, **arrays))
            if args.grid:
                save_grid(images[:64], args.grid)


if __name__ == '__main__':
    try:
        main()
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        sys.exit(f'error: {e}')

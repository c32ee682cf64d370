"""Discriminators. Every D has one interface: D(images in [-1,1] [N,C,R,R], one-hot labels [N,L] or None) -> a list
of logit tensors, each [N, P] (P positions; the GAN losses average over positions, R1 sums over them).

    python disc.py --resolution 32 --labels 10                           # the ResNet D's size
    python disc.py --resolution 32 --width 32 --bench                    # time one forward+backward
    python disc.py --projected vgg16_bn,efficientnet_lite0 --bench       # the official D (needs the weight files)
    python disc.py --pretrain 2000 --data toy --dest assets/toy-disc.pt  # the toy preset's D: a classifier first

ResNetD needs no pretrained weights: a StyleGAN2-style residual CNN at the data's native resolution (equalized
learning rate, leaky ReLU, minibatch-std, projection conditioning on class labels), randomly initialised as in
the seed papers' ablations. Its width is a flag, and patch heads (train.py --dpatch) judge each position as the
projected D's heads do. --pretrain first trains its trunk as a classifier of a dataset's labels (toy world: and
colours), for train.py --dinit: the toy preset's D starts so (pretrain below).

ProjectedD is the official D2O discriminator (Projected GAN / StyleGAN-XL; the official D2O code's
training/discriminator.py and pg_modules/): frozen ImageNet feature
networks (EfficientNet-lite0 plus VGG16-BN or DeiT-B), each cut into four stages, frozen random cross-channel and
cross-scale mixing, and four trainable spectral-norm heads per network. The feature networks are written here in
plain PyTorch with the state_dict keys of the public weight files (timm's tf_efficientnet_lite0, torchvision's
vgg16_bn, FB's deit_base_distilled_patch16_224), which are read from a path, the cache, or their public URLs.
The random projections come from a fixed seed, so every rank and every resumed run holds the same ones.
"""

import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

import ckpt
import data
import unet


class EqConv(torch.nn.Module):
    """Conv with equalized learning rate: N(0,1) weights scaled by 1/sqrt(fan_in) at run time."""
    def __init__(self, cin, cout, k, bias=True):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(cout, cin, k, k))
        self.bias = torch.nn.Parameter(torch.zeros(cout)) if bias else None
        self.gain, self.pad = 1 / math.sqrt(cin * k * k), k // 2

    def forward(self, x):
        return F.conv2d(x, self.weight * self.gain, self.bias, padding=self.pad)


class EqLinear(torch.nn.Module):
    def __init__(self, cin, cout, bias=True):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(cout, cin))
        self.bias = torch.nn.Parameter(torch.zeros(cout)) if bias else None
        self.gain = 1 / math.sqrt(cin)

    def forward(self, x):
        return F.linear(x, self.weight * self.gain, self.bias)


def lrelu(x):
    return F.leaky_relu(x, 0.2) * math.sqrt(2)  # gain sqrt(2) keeps activations at unit scale


class ResBlock(torch.nn.Module):
    def __init__(self, cin, cout, down=True):
        super().__init__()
        self.conv0, self.conv1 = EqConv(cin, cin, 3), EqConv(cin, cout, 3)
        self.skip, self.down = EqConv(cin, cout, 1, bias=False), down

    def forward(self, x):
        y = lrelu(self.conv1(lrelu(self.conv0(x))))
        if self.down:
            y, x = F.avg_pool2d(y, 2), F.avg_pool2d(x, 2)
        return (y + self.skip(x)) / math.sqrt(2)


def block_plan(resolution, width, max_width, depth):
    """(in channels, out channels, halves the resolution) of each residual block from full resolution down to 4x4:
    depth blocks per resolution, the last of which halves it; and the channels at 4x4."""
    ch = lambda res: min(width * (resolution // res), max_width)
    sizes = [resolution >> k for k in range(int(math.log2(resolution // 4)))]
    return [(ch(res), ch(res // 2) if i == depth - 1 else ch(res), i == depth - 1) for res in sizes
            for i in range(depth)], ch(4)


def minibatch_std(x, group=4):
    """Append the mean std over groups of consecutive samples (consecutive, so micro-batches that are multiples of
    the group see the same groups as the full batch)."""
    n, c, h, w = x.shape
    g = next(s for s in (group, 2, 1) if n % s == 0)
    y = x.reshape(n // g, g, c, h, w)
    y = (y.var(dim=1, unbiased=False) + 1e-8).sqrt().mean(dim=[1, 2, 3])  # [n/g]
    y = y.repeat_interleave(g).reshape(n, 1, 1, 1).expand(n, 1, h, w)
    return torch.cat([x, y], dim=1)


class ResNetD(torch.nn.Module):
    """patch=1 adds a logit per position after each halving of the resolution (8x8 and 4x4 at 16 px), beside the
    image's logit, as the projected D's heads judge each position of four feature scales (arXiv 2111.01007)."""
    def __init__(self, resolution, channels=3, label_dim=0, width=64, max_width=512, cmap_dim=128, depth=1, patch=0):
        super().__init__()
        self.init_kwargs = dict(resolution=resolution, channels=channels, label_dim=label_dim, width=width,
                                max_width=max_width, cmap_dim=cmap_dim, depth=depth)
        self.init_kwargs |= dict(patch=patch) if patch else {}  # files from before patch heads load as they were
        self.resolution, self.label_dim = resolution, label_dim
        plan, c = block_plan(resolution, width, max_width, depth)
        self.from_rgb = EqConv(channels, min(width, max_width), 1)
        self.blocks = torch.nn.ModuleList([ResBlock(*block) for block in plan])
        self.conv = EqConv(c + 1, c, 3)
        self.fc = EqLinear(c * 16, c)
        self.out = EqLinear(c, cmap_dim if label_dim else 1)
        self.embed = EqLinear(label_dim, cmap_dim, bias=False) if label_dim else None  # projection conditioning
        self.patch_out = torch.nn.ModuleList([EqConv(cout, cmap_dim if label_dim else 1, 1)
                                              for _, cout, down in plan if down and patch])  # created last: seeds keep D

    def forward(self, x, c=None):
        cmap = self.embed(c) if self.embed is not None else None
        project = lambda y: y if cmap is None else \
            (y * cmap.reshape(*cmap.shape, *[1] * (y.ndim - 2))).sum(dim=1, keepdim=True) / math.sqrt(y.shape[1])
        x, patches = lrelu(self.from_rgb(x)), []
        for block in self.blocks:
            x = block(x)
            if block.down and self.patch_out:
                patches.append(project(self.patch_out[len(patches)](x)).flatten(1))  # [N, positions]
        x = lrelu(self.conv(minibatch_std(x)))
        return [project(self.out(lrelu(self.fc(x.flatten(1)))))] + patches


class RatioD(torch.nn.Module):
    """The density-ratio network of --loss diffratio, D(x_sigma, c, sigma) -> [logit d]: trained with the logistic
    loss (real = 1) on noised images, its optimum is d = log p_data,sigma(x) - log p_G,sigma(x), and its x-gradient the
    score difference (arXiv 2502.08005, Abstract). The paper's network is not public; this one is ours: the ResNet D's
    residual trunk on c_in(sigma) x_sigma (EDM's input scaling), the noise level's embedding (EDM's c_noise =
    ln(sigma)/4, positional features, one layer) added to every block's input, projection conditioning on the noise
    level plus the class. No minibatch-std, so a sample's logit does not depend on the others in its batch (best-of-N
    scores candidates with it)."""
    def __init__(self, resolution, channels=3, label_dim=0, width=64, max_width=512, cmap_dim=128, sigma_data=0.5,
                 depth=1):
        super().__init__()
        self.init_kwargs = dict(resolution=resolution, channels=channels, label_dim=label_dim, width=width,
                                max_width=max_width, cmap_dim=cmap_dim, sigma_data=sigma_data, depth=depth)
        self.resolution, self.label_dim, self.sigma_data = resolution, label_dim, sigma_data
        plan, c = block_plan(resolution, width, max_width, depth)
        self.map_noise = unet.PositionalEmbedding(cmap_dim, endpoint=True)
        self.map_layer = EqLinear(cmap_dim, cmap_dim)
        self.embed = EqLinear(label_dim, cmap_dim, bias=False) if label_dim else None
        self.from_rgb = EqConv(channels, min(width, max_width), 1)
        self.affine, self.blocks = torch.nn.ModuleList(), torch.nn.ModuleList()
        for cin, cout, down in plan:  # created in this order: a seed gives the same D as before depth existed
            self.affine.append(EqLinear(cmap_dim, cin))
            self.blocks.append(ResBlock(cin, cout, down))
        self.conv = EqConv(c, c, 3)
        self.fc = EqLinear(c * 16, c)
        self.out = EqLinear(c, cmap_dim)

    def forward(self, x, c=None, sigma=None):
        sigma = sigma.to(torch.float32).reshape(-1)
        emb = lrelu(self.map_layer(self.map_noise(sigma.log() / 4)))
        if self.embed is not None:
            emb = emb + self.embed(c)
        x = lrelu(self.from_rgb(x / (sigma ** 2 + self.sigma_data ** 2).sqrt().reshape(-1, 1, 1, 1)))
        for affine, block in zip(self.affine, self.blocks):
            x = block(x + affine(emb)[:, :, None, None])
        x = self.out(lrelu(self.fc(lrelu(self.conv(x)).flatten(1))))
        return [(x * emb).sum(dim=1, keepdim=True) / math.sqrt(x.shape[1])]


class TeacherD(torch.nn.Module):
    """--disc teacher: D's trunk is a trainable copy of G's starting network's embedding and encoder (from a teacher:
    the teacher's features; DMD2, arXiv 2405.14867, trains its GAN classifier on the diffusion network's bottleneck).
    The image enters at one noise level sigma (--dsigma; the preconditioner's c_in and c_noise, no noise added, class
    labels into the embedding as the teacher takes them); the bottleneck goes through GroupNorm, SiLU and a 1x1 conv to
    one logit per position, with projection conditioning on the class. The decoder is not part of it."""
    def __init__(self, precond, precond_kwargs, sigma=0.1, cmap_dim=128):
        super().__init__()
        self.init_kwargs = dict(precond=precond, precond_kwargs=precond_kwargs, sigma=sigma, cmap_dim=cmap_dim)
        self.trunk = unet.PRECONDS[precond](**precond_kwargs)
        for name in ('dec', 'out_norm', 'out_conv'):  # the decoder (ADM's output layers sit outside dec)
            if hasattr(self.trunk.model, name):
                delattr(self.trunk.model, name)
        self.sigma, self.label_dim = sigma, self.trunk.label_dim
        channels = [block.out_channels for block in self.trunk.model.enc.values()][-1]
        self.norm = unet.GroupNorm(channels, eps=1e-6)
        self.out = EqConv(channels, cmap_dim if self.label_dim else 1, 1)
        self.embed = EqLinear(self.label_dim, cmap_dim, bias=False) if self.label_dim else None

    @classmethod
    def from_generator(cls, G, sigma=0.1):
        """A TeacherD whose trunk starts as G's network (a D2OGenerator) minus its decoder."""
        D = cls(G.precond, G.init_kwargs, sigma)
        own = D.trunk.model.state_dict()
        D.trunk.model.load_state_dict({k: v for k, v in G.model.state_dict().items() if k in own})
        return D

    def forward(self, x, c=None):
        _, _, c_in, c_noise = self.trunk.coefs(torch.full([x.shape[0], 1, 1, 1], self.sigma, device=x.device))
        model = self.trunk.model
        h, _ = model.encode(x * c_in, model.embed(c_noise.flatten(), self.trunk.labels(c, x.device)))
        logits = self.out(F.silu(self.norm(h)))
        if self.embed is not None:
            logits = (logits * self.embed(c)[:, :, None, None]).sum(dim=1, keepdim=True) / math.sqrt(logits.shape[1])
        return [logits.flatten(1)]


SAVED = {'ResNetD': ResNetD, 'RatioD': RatioD, 'TeacherD': TeacherD}  # the Ds train.py saves beside its snapshots
# Each D kind's own --dlr and --r1-gamma (the projected D's come with train.py's presets): the ResNet and ratio Ds'
# equalized-lr layers train at StyleGAN2's lr scale; the teacher D's trunk is a diffusion network's encoder in plain
# parametrisation, at G's lr scale. The R1 weights are the toy's: for the ResNet D, gamma 1 beat 0.1 at 40 kimg at two
# seeds and by ~20 FID at 200 (results/toy-study, README "The toy D2O study"); the others were tuned at 0.1.
RECIPES = dict(resnet=dict(dlr=2e-3, r1_gamma=1.0), ratio=dict(dlr=2e-3, r1_gamma=0.1),
               teacher=dict(dlr=1e-4, r1_gamma=0.1))


def from_flags(args, kinds, preset, dataset, G, log=print, fresh=False):
    """train.py's D from its flags: --disc auto resolved (choose), then the kind's own --dlr and --r1-gamma unless
    given (the projected D's: the preset's), written back into args; fresh (no state will be loaded): its weights
    from --dinit (start_from), written back as the file D started from or 'none'. -> (D, its description)"""
    args.disc = choose(args.disc, args.loss, kinds, preset.get('disc'), dataset.resolution, args.weights, log)
    if args.dpatch and args.disc != 'resnet':
        raise ValueError(f"--dpatch: patch heads are the ResNet D's, not --disc {args.disc}'s (give --disc resnet, or "
                         'leave --dpatch at 0)')
    if args.disc == 'projected' and args.dlr_trunk != 1:
        raise ValueError("--dlr-trunk: the projected D's trunk (its feature networks) is frozen; give --disc resnet, "
                         'ratio or teacher, or leave --dlr-trunk at 1')
    recipe = RECIPES.get(args.disc, preset)
    args.dlr = args.dlr or recipe['dlr']
    args.r1_gamma = recipe['r1_gamma'] if args.r1_gamma is None else args.r1_gamma
    D, desc = build(args.disc, dataset.resolution, dataset.num_channels, dataset.label_dim, args.dwidth, args.weights,
                    args.seed, G, args.dsigma, args.ddepth, args.dpatch)
    note = ''
    if fresh:
        args.dinit, note = start_from(D, args.dinit, preset.get('dinit', 'none'))
    return D, desc + note


def build(kind, resolution, channels, label_dim, width=64, weights=None, seed=0, G=None, sigma=0.1, depth=1, patch=0):
    """train.py's D by its --disc name (projected, resnet, ratio, or teacher: on G's network), seeded, and a
    description of it."""
    torch.manual_seed(seed)
    if kind == 'projected':
        pair = backbones_for(resolution)
        return ProjectedD(pair, label_dim, weights, seed), f'ProjectedD on {" + ".join(pair)}'
    if kind == 'teacher':
        return TeacherD.from_generator(G, sigma), f"TeacherD (G's starting encoder, trainable) at sigma {sigma:g}"
    D = ResNetD(resolution, channels, label_dim, width, depth=depth, patch=patch) if kind == 'resnet' else \
        RatioD(resolution, channels, label_dim, width, depth=depth)
    return D, f'{type(D).__name__} width {width} depth {depth}' + (' (noise-conditioned)' if kind == 'ratio' else '') + \
        (', patch heads' if patch else '')


def load_d(path):
    """A D that train.py saved beside its G snapshots (disc-snapshot-*.pt: the ResNet D or the ratio D), in eval
    mode: the verifier of sample.py --best-of."""
    saved = ckpt.load_verified(path)
    if not isinstance(saved, dict) or saved.get('format') != ckpt.CKPT_FORMAT or saved.get('class_name') not in SAVED:
        raise ValueError(f'{path}: not a discriminator saved by train.py (disc-snapshot-*.pt of a ResNet or ratio D)')
    D = SAVED[saved['class_name']](**saved['init_kwargs'])
    D.load_state_dict(saved['state_dict'])
    return D.eval().requires_grad_(False)


def start_from(D, dinit, preset_dinit='none'):
    """train.py --dinit: D's weights from a D that train.py saved (disc-snapshot-*.pt) of the same kind and shape,
    as GAN transfer learning starts D from a trained one (FreezeD, arXiv 2002.10964). 'none': D as built; 'auto':
    the preset's D if it has D's kind and shape, else D as built. -> (the file D started from or 'none', a note for
    D's description)"""
    path = preset_dinit if dinit == 'auto' else dinit
    if path == 'none':
        return 'none', ''
    if not os.path.isfile(path):
        raise ValueError(f'--dinit {path}: no such file (give a disc-snapshot-*.pt of an earlier run, or "none")')
    try:
        saved = load_d(path)
    except (ValueError, ckpt.UnsafePickleError) as e:
        raise ValueError(f'--dinit {e}') from None
    # a D without patch heads starts a D with them: the heads start fresh, as its output layer did after --pretrain
    trunk = lambda d: {k: v for k, v in d.init_kwargs.items() if k != 'patch'}
    patch = lambda d: d.init_kwargs.get('patch', 0)
    fits = type(saved) is type(D) and trunk(saved) == trunk(D) and patch(saved) in (0, patch(D))
    if dinit != 'auto' and not fits:
        raise ValueError(f'--dinit {path}: a {type(saved).__name__} {saved.init_kwargs}, not the {type(D).__name__} '
                         f'{D.init_kwargs} of these flags (--disc, --dwidth, --ddepth, --dpatch, the dataset)')
    if not fits:  # auto, where the preset's D is of another kind or shape
        return 'none', f', fresh ({path} is another kind or shape)'
    fresh = D.load_state_dict(saved.state_dict(), strict=False).missing_keys  # the patch heads only: fits
    return path, f', from {path}' + (' (its patch heads fresh)' if fresh else '')


def trunk_and_head(D):
    """D's trainable parameters as (trunk, head) for train.py --dlr-trunk: the head is its output layers and label
    projection, which every D starts fresh (--pretrain puts them back fresh); the trunk is the rest, what a pretrained
    D brings (the projected D has none trainable: from_flags refuses it)."""
    named = [(name.split('.')[0] in ('out', 'embed', 'patch_out'), param) for name, param in D.named_parameters()
             if param.requires_grad]
    return [param for is_head, param in named if not is_head], [param for is_head, param in named if is_head]


def pretrain(dataset, kimg, colours=False, width=64, depth=1, seed=0, batch=64, lr=1e-3, log=print):
    """A ResNet D for train.py --dinit whose trunk first learnt to classify the real images of an ImageDataset: by
    their labels and, with colours (the toy world), their shape and background colours (data.toy_colours). A linear
    head in place of D's output learns them by cross-entropy (Adam; the last tenth of the images held out, their
    accuracy every 10 kimg); then D gets back its fresh output and label projection, so that it starts undecided on
    real vs fake and only the trunk carries what it learnt. Where ImageNet features do not fit (the toy world), the
    counterpart of the projected D's pretrained features (and of DMD2's GAN classifier on the teacher's features,
    arXiv 2405.14867)."""
    images = np.stack([dataset.image(i) for i in range(len(dataset))])  # uint8 [N,C,R,R]
    columns = [dataset.labels] if dataset.label_dim else []
    sizes = [dataset.label_dim] if dataset.label_dim else []
    if colours:  # the shape's colour (-1: no shape, left out of the loss) and the background's
        columns += list(data.toy_colours(images.transpose(0, 2, 3, 1)))
        sizes += [len(data.TOY_COLOURS)] * 2
    if not columns:
        raise ValueError('the dataset has no labels to classify (give a labelled dataset, or the toy world)')
    if len(dataset) < 20:
        raise ValueError(f'{len(dataset)} images are too few to train on and hold a tenth out (give at least 20)')
    names = (['label'] if dataset.label_dim else []) + (['shape colour', 'background'] if colours else [])
    targets = torch.from_numpy(np.stack(columns, axis=1)).long()
    x_all = torch.from_numpy(images).float() / 127.5 - 1  # as train.py feeds reals to D
    D = build('resnet', dataset.resolution, dataset.num_channels, dataset.label_dim, width, seed=seed, depth=depth)[0]
    out, embed = D.out, D.embed
    D.out, D.embed = EqLinear(out.weight.shape[1], sum(sizes)), None  # the classifier head, on D's trunk
    opt = torch.optim.Adam(D.parameters(), lr=lr, betas=(0.9, 0.99))
    order = torch.Generator().manual_seed(seed)
    train_n = len(dataset) - len(dataset) // 10

    def loss_and_accuracy(idx):
        logits = D(x_all[idx])[0].split(sizes, dim=1)
        ce = sum(F.cross_entropy(lg, targets[idx, k], ignore_index=-1) for k, lg in enumerate(logits))
        return ce, [(lg.argmax(1) == targets[idx, k]).float().mean().item() for k, lg in enumerate(logits)]

    nimg, start = 0, time.time()
    while nimg < kimg * 1000:
        ce, _ = loss_and_accuracy(torch.randint(train_n, [batch], generator=order))
        opt.zero_grad(set_to_none=True)
        ce.backward()
        opt.step()
        nimg += batch
        if nimg // 10000 != (nimg - batch) // 10000 or nimg >= kimg * 1000:
            with torch.no_grad():
                held_ce, accuracy = loss_and_accuracy(torch.arange(train_n, len(dataset)))
            log(f'kimg {nimg / 1000:.1f}: train CE {ce.item():.3f}, held-out CE {held_ce.item():.3f}, accuracy ' +
                ', '.join(f'{n} {a:.3f}' for n, a in zip(names, accuracy)) + f' ({time.time() - start:.0f} s)',
                flush=True)
    D.out, D.embed = out, embed
    return D, accuracy


# ----------------------------------------------------------------------------------------------------------------
# Feature networks (frozen). Each returns its four stage outputs.

class SameConv(torch.nn.Conv2d):
    """TensorFlow 'SAME' padding: strided convs pad from the input size, the odd pixel after (timm's tf_ models)."""
    def forward(self, x):
        k, s = self.kernel_size[0], self.stride[0]
        if s == 1:
            return F.conv2d(x, self.weight, self.bias, 1, k // 2, 1, self.groups)
        pads = []
        for size in (x.shape[-1], x.shape[-2]):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, s, 0, 1, self.groups)


def bn(c, eps):
    return torch.nn.BatchNorm2d(c, eps=eps)


class DepthwiseSeparable(torch.nn.Module):
    def __init__(self, cin, cout, k):
        super().__init__()
        self.conv_dw, self.bn1 = SameConv(cin, cin, k, 1, groups=cin, bias=False), bn(cin, 1e-3)
        self.conv_pw, self.bn2 = SameConv(cin, cout, 1, bias=False), bn(cout, 1e-3)

    def forward(self, x):
        return self.bn2(self.conv_pw(F.relu6(self.bn1(self.conv_dw(x)))))


class InvertedResidual(torch.nn.Module):
    def __init__(self, cin, cout, k, stride, expand=6):
        super().__init__()
        mid, self.skip = cin * expand, stride == 1 and cin == cout
        self.conv_pw, self.bn1 = SameConv(cin, mid, 1, bias=False), bn(mid, 1e-3)
        self.conv_dw, self.bn2 = SameConv(mid, mid, k, stride, groups=mid, bias=False), bn(mid, 1e-3)
        self.conv_pwl, self.bn3 = SameConv(mid, cout, 1, bias=False), bn(cout, 1e-3)

    def forward(self, x):
        y = F.relu6(self.bn2(self.conv_dw(F.relu6(self.bn1(self.conv_pw(x))))))
        y = self.bn3(self.conv_pwl(y))
        return x + y if self.skip else y


class EfficientNetLite0(torch.nn.Module):
    """timm tf_efficientnet_lite0 up to blocks[6]; stages: stem+blocks[0:2], [2], [3:5], [5:7]."""
    channels = (24, 40, 112, 320)
    unused = ('conv_head.', 'bn2.', 'classifier.')

    def __init__(self):
        super().__init__()
        self.conv_stem, self.bn1 = SameConv(3, 32, 3, 2, bias=False), bn(32, 1e-3)
        plan = [(1, 3, 1, 16), (2, 3, 2, 24), (2, 5, 2, 40), (3, 3, 2, 80), (3, 5, 1, 112), (4, 5, 2, 192), (1, 3, 1, 320)]
        blocks, cin = [], 32
        for i, (n, k, stride, cout) in enumerate(plan):
            stage = [DepthwiseSeparable(cin, cout, k)] if i == 0 else [InvertedResidual(cin if j == 0 else cout, cout, k, stride if j == 0 else 1) for j in range(n)]
            blocks.append(torch.nn.Sequential(*stage))
            cin = cout
        self.blocks = torch.nn.Sequential(*blocks)

    def forward(self, x):
        x = self.blocks[0:2](F.relu6(self.bn1(self.conv_stem(x))))
        s1 = self.blocks[2](x)
        s2 = self.blocks[3:5](s1)
        return [x, s1, s2, self.blocks[5:7](s2)]


class VGG16BN(torch.nn.Module):
    """torchvision vgg16_bn `features`; stages: [0:13], [13:23], [23:33], [33:43] (the last max-pool is unused)."""
    channels = (128, 256, 512, 512)
    unused = ('classifier.',)

    def __init__(self):
        super().__init__()
        layers, cin = [], 3
        for v in [64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'M', 512, 512, 512, 'M']:
            if v == 'M':
                layers.append(torch.nn.MaxPool2d(2, 2))
            else:
                layers += [torch.nn.Conv2d(cin, v, 3, padding=1), bn(v, 1e-5), torch.nn.ReLU()]
                cin = v
        self.features = torch.nn.Sequential(*layers)

    def forward(self, x):
        out = []
        for a, b in [(0, 13), (13, 23), (23, 33), (33, 43)]:
            x = self.features[a:b](x)
            out.append(x)
        return out


class Attention(torch.nn.Module):
    def __init__(self, dim=768, heads=12):
        super().__init__()
        self.heads, self.qkv, self.proj = heads, torch.nn.Linear(dim, dim * 3), torch.nn.Linear(dim, dim)

    def forward(self, x):
        n, t, c = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)  # [q; k; v] blocks
        # Written out, as timm's DeiT: R1 differentiates twice through D, which fused attention kernels cannot.
        attn = (q @ k.transpose(-2, -1) * (c // self.heads) ** -0.5).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(n, t, c))


class Mlp(torch.nn.Module):
    def __init__(self, dim=768, hidden=3072):
        super().__init__()
        self.fc1, self.fc2 = torch.nn.Linear(dim, hidden), torch.nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))  # exact (erf) GELU


class Block(torch.nn.Module):
    def __init__(self, dim=768):
        super().__init__()
        self.norm1, self.attn = torch.nn.LayerNorm(dim, eps=1e-6), Attention(dim)
        self.norm2, self.mlp = torch.nn.LayerNorm(dim, eps=1e-6), Mlp(dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Conv2d(3, 768, 16, 16)


class DeiTBase(torch.nn.Module):
    """deit_base_distilled_patch16_224 at 224x224; stages: outputs of blocks 2, 5, 8, 11 (before the final norm),
    cls and dist tokens dropped, as [B,768,14,14]."""
    channels = (768, 768, 768, 768)
    unused = ('norm.', 'head.', 'head_dist.')

    def __init__(self):
        super().__init__()
        self.cls_token, self.dist_token = torch.nn.Parameter(torch.zeros(1, 1, 768)), torch.nn.Parameter(torch.zeros(1, 1, 768))
        self.pos_embed = torch.nn.Parameter(torch.zeros(1, 198, 768))
        self.patch_embed = PatchEmbed()
        self.blocks = torch.nn.Sequential(*[Block() for _ in range(12)])

    def forward(self, x):
        n = x.shape[0]
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(n, -1, -1), self.dist_token.expand(n, -1, -1), x], dim=1) + self.pos_embed
        out = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in (2, 5, 8, 11):
                out.append(x[:, 2:].transpose(1, 2).reshape(n, 768, 14, 14))
        return out


BACKBONES = {  # name -> (network, input mean, input std); the weight files' URLs are in ckpt.WEIGHTS
    'efficientnet_lite0': (EfficientNetLite0, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    'vgg16_bn': (VGG16BN, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    'deit_base_distilled': (DeiTBase, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
PAIRS = {'cifar': ('vgg16_bn', 'efficientnet_lite0'), 'deit': ('deit_base_distilled', 'efficientnet_lite0')}


def backbones_for(resolution):
    return PAIRS['cifar' if resolution <= 32 else 'deit']  # as the official code: VGG at 32x32, DeiT at 64x64


def load_backbone(name, path):
    """The feature network `name` with the weights of the file at path; a damaged or wrong file is named in the error,
    with what was expected and what was found."""
    net = BACKBONES[name][0]()
    expected = f'the {name} weights ({os.path.basename(ckpt.WEIGHTS[name])})'
    try:
        sd = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # truncated, not a torch file, or holding more than tensors
        reason = str(e).strip().splitlines()[0][:150] if str(e).strip() else type(e).__name__
        raise ValueError(f'{path}: damaged or not a weight file ({os.path.getsize(path):,} bytes; torch says: {reason})\n'
                         f'  expected {expected}; fetch it again: {ckpt.WEIGHTS[name]}') from None
    sd = sd if isinstance(sd, dict) else {}
    sd = sd['model'] if isinstance(sd.get('model'), dict) else sd  # DeiT's file keeps its weights under "model"
    sd = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor) and not k.startswith(net.unused)}
    own = net.state_dict()
    wrong = [k for k in own if k not in sd or sd[k].shape != own[k].shape]
    if wrong or len(sd) != len(own):
        key = wrong[0] if wrong else next(k for k in sd if k not in own)
        example = key if key in sd else next((k for k in sd if k not in own), None)
        found = f'{len(sd)} tensors' + (f' such as {example} {list(sd[example].shape)}' if example else '')
        raise ValueError(f'{path}: not {expected}\n  expected {len(own)} tensors such as {key} '
                         f'{list(own[key].shape) if key in own else "(none)"}; found {found}')
    net.load_state_dict(sd, strict=True)
    return net


def missing_backbones(names, weights=None):
    """The published file names of the named backbones that are neither given (--weights, $D2O_WEIGHTS) nor cached."""
    return [os.path.basename(ckpt.WEIGHTS[n]) for n in names if ckpt.find_weights(n, weights) is None]


def choose(requested, loss, kinds, preferred, resolution, weights=None, log=print):
    """train.py's --disc: one of the --loss's D kinds (kinds). auto (said why in log): the loss's only kind, else the
    preset's, else the projected D when its backbone files are found (--weights, $D2O_WEIGHTS, the cache), else the
    ResNet D."""
    if requested != 'auto':
        if requested not in kinds:
            raise ValueError(f'--loss {loss} takes --disc {" or ".join(kinds)}, not {requested}')
        return requested
    if len(kinds) == 1:
        kind, why = kinds[0], 'the D of this --loss'
    elif preferred:
        kind, why = preferred, 'the preset'
    else:
        pair = backbones_for(resolution)
        missing = missing_backbones(pair, weights)
        kind, why = ('resnet', f'{", ".join(missing)} not given (--weights) nor in the cache; fetch them with `python '
                     f'ckpt.py --download {" ".join(pair)}`') if missing else ('projected', 'backbone files found')
    log(f'--disc auto: {kind} ({why})')
    return kind

# ----------------------------------------------------------------------------------------------------------------
# The projected discriminator.

class Projector(torch.nn.Module):
    """Frozen random mixing (the official pg_modules/projector.py, proj_type 2): CCM 1x1 convs to [64,128,256,512], then CSM top-down fusion
    (add, x2 bilinear with align_corners, 1x1 conv) to [64,64,128,256] channels at twice each stage's size.
    For DeiT, random readout convs first bring its 14x14 stages to 56/28/14/7."""
    def __init__(self, channels, deit=False):
        super().__init__()
        if deit:
            self.readout = torch.nn.ModuleList([
                torch.nn.Sequential(torch.nn.Conv2d(768, 96, 1), torch.nn.ConvTranspose2d(96, 96, 4, 4)),
                torch.nn.Sequential(torch.nn.Conv2d(768, 192, 1), torch.nn.ConvTranspose2d(192, 192, 2, 2)),
                torch.nn.Conv2d(768, 384, 1),
                torch.nn.Sequential(torch.nn.Conv2d(768, 768, 1), torch.nn.Conv2d(768, 768, 3, 2, 1))])
            channels = (96, 192, 384, 768)
        self.ccm = torch.nn.ModuleList([torch.nn.Conv2d(c, o, 1) for c, o in zip(channels, (64, 128, 256, 512))])
        self.csm = torch.nn.ModuleList([torch.nn.Conv2d(c, o, 1) for c, o in ((64, 64), (128, 64), (256, 128), (512, 256))])

    def forward(self, feats):
        if hasattr(self, 'readout'):
            feats = [r(f) for r, f in zip(self.readout, feats)]
        c = [m(f) for m, f in zip(self.ccm, feats)]
        up = lambda x: F.interpolate(x, scale_factor=2, mode='bilinear', align_corners=True)
        out, x = [None] * 4, None
        for k in (3, 2, 1, 0):
            x = self.csm[k](up(c[k] if x is None else x + c[k]))
            out[k] = x
        return out


def down_block(cin, cout):
    sn = torch.nn.utils.parametrizations.spectral_norm
    return torch.nn.Sequential(sn(torch.nn.Conv2d(cin, cout, 4, 2, 1)), torch.nn.BatchNorm2d(cout), torch.nn.LeakyReLU(0.2))


class Head(torch.nn.Module):
    """DownBlocks from the declared size to 8x8, then a 4x4 valid conv: 1 logit, or 64-d for projection conditioning."""
    def __init__(self, nc, start, label_dim, cmap_dim=64):
        super().__init__()
        ch = {16: 256, 32: 128, 64: 64, 128: 64, 8: 512}
        ch[start] = nc
        sizes = [start >> i for i in range(int(math.log2(start // 8)) + 1)]
        self.blocks = torch.nn.Sequential(*[down_block(ch[a], ch[b]) for a, b in zip(sizes[:-1], sizes[1:])])
        sn = torch.nn.utils.parametrizations.spectral_norm
        self.out = sn(torch.nn.Conv2d(512, cmap_dim if label_dim else 1, 4, 1, 0, bias=False))
        self.embed = torch.nn.Linear(label_dim, cmap_dim, bias=False) if label_dim else None
        if self.embed is not None:
            torch.nn.init.normal_(self.embed.weight)

    def forward(self, x, c):
        o = self.out(self.blocks(x))
        if self.embed is None:
            return o.flatten(1)
        cmap = F.leaky_relu(self.embed(c), 0.2) * math.sqrt(2)
        return ((o * cmap[:, :, None, None]).sum(1) / math.sqrt(o.shape[1])).flatten(1)


class ProjectedD(torch.nn.Module):
    """Frozen feature networks + frozen random projections + trainable heads; one logit vector per network."""
    def __init__(self, backbones=PAIRS['cifar'], label_dim=0, weights=None, seed=0, pretrained=True):
        super().__init__()
        self.names = list(backbones)  # pretrained=False: random backbones, for counting FLOPs (bench.py --flops)
        files = ckpt.weight_files(self.names, weights) if pretrained else {}  # weights: as train.py's --weights
        self.nets = torch.nn.ModuleDict({n: load_backbone(n, files[n]) if pretrained else BACKBONES[n][0]()
                                         for n in self.names})
        g = torch.random.fork_rng(devices=[])
        with g:  # the random projections are a function of the seed: identical on every rank, saved with D
            torch.manual_seed(seed)
            self.proj = torch.nn.ModuleDict({n: Projector(BACKBONES[n][0].channels, deit=n.startswith('deit')) for n in self.names})
        self.nets.requires_grad_(False)
        self.proj.requires_grad_(False)
        self.heads = torch.nn.ModuleDict({n: torch.nn.ModuleList([Head(nc, s, label_dim) for nc, s in zip((64, 64, 128, 256), (128, 64, 32, 16))])
                                          for n in self.names})
        for n in self.names:
            mean, std = BACKBONES[n][1:]
            self.register_buffer(f'mean_{n}', torch.tensor(mean).reshape(1, 3, 1, 1))
            self.register_buffer(f'std_{n}', torch.tensor(std).reshape(1, 3, 1, 1))
        self.train()  # puts the feature networks in eval mode from the start

    def train(self, mode=True):
        super().train(mode)
        self.nets.eval()  # BatchNorm of the feature networks always uses its running statistics
        return self

    def forward(self, x, c=None):
        out = []
        for n in self.names:
            y = ((x + 1) / 2 - getattr(self, f'mean_{n}')) / getattr(self, f'std_{n}')
            y = F.interpolate(y, size=(224, 224), mode='bilinear', align_corners=False)
            feats = self.proj[n](self.nets[n](y))
            out.append(torch.cat([h(f, c) for h, f in zip(self.heads[n], feats)], dim=1))
        return out


if __name__ == '__main__':
    parser = ckpt.Parser(prog='disc.py', description='Build a discriminator and print its size (and speed), or '
                         'pretrain a ResNet D as a classifier for train.py --dinit.')
    parser.add_argument('--resolution', type=ckpt.number(int, 0), default=32, help='image size')
    parser.add_argument('--labels', type=ckpt.number(int, 0, inclusive=True), default=0, help='number of classes (0: unconditional)')
    parser.add_argument('--width', type=ckpt.number(int, 0), default=64, help='channels at full resolution')
    parser.add_argument('--depth', type=ckpt.number(int, 0), default=1, help='residual blocks per resolution')
    parser.add_argument('--batch', type=ckpt.number(int, 0), default=8, help='batch for --bench')
    parser.add_argument('--bench', action='store_true', help='time forward+backward')
    parser.add_argument('--projected', default=None, help=f'backbone pair, e.g. vgg16_bn,efficientnet_lite0 (of {", ".join(BACKBONES)})')
    parser.add_argument('--weights', type=ckpt.weights_flag, default=None, help='folders or files holding the backbone weights')
    parser.add_argument('--pretrain', type=ckpt.number(float, 0), default=None, help='kimg: train a ResNet D on --data '
                        'as a classifier of its labels (toy: and colours), save it to --dest (its size from --data)')
    parser.add_argument('--data', default='toy', help='--pretrain: a dataset zip/folder, or "toy" (the toy world)')
    parser.add_argument('--dest', default=None, help='--pretrain: where to save the D (a .pt for train.py --dinit)')
    args = parser.parse_args()
    unknown = [n for n in (args.projected or '').split(',') if args.projected and n not in BACKBONES]
    if unknown:
        parser.error(f'--projected: unknown backbone {unknown[0]!r}; pick from {", ".join(BACKBONES)}')
    if args.pretrain:
        if not args.dest:
            parser.error('--pretrain needs --dest (where to save the D, e.g. assets/toy-disc.pt)')
        try:
            ckpt.check_writable(args.dest)  # before the training, not after it
            dataset = data.ImageDataset(data.toy_path(16, print) if args.data == 'toy' else args.data)
            D, _ = pretrain(dataset, args.pretrain, args.data == 'toy', args.width, args.depth)
        except (data.DatasetError, ValueError) as e:
            sys.exit(f'error: {e}')
        name = os.path.splitext(os.path.basename(args.data))[0]
        ckpt.save_checkpoint(args.dest, D, kind='disc', pretrained=f'{name} classifier, {args.pretrain:g} kimg')
        print(f'saved {args.dest}: start train.py from it with --dinit {args.dest}')
        sys.exit(0)
    try:
        D = ProjectedD(args.projected.split(','), args.labels, args.weights) if args.projected else \
            ResNetD(args.resolution, 3, args.labels, args.width, depth=args.depth)
    except (OSError, ValueError, RuntimeError) as e:
        sys.exit(f'error: {e}')
    trainable = sum(p.numel() for p in D.parameters() if p.requires_grad)
    print(f'{type(D).__name__} {args.resolution}x{args.resolution}: {trainable:,} trainable, '
          f'{sum(p.numel() for p in D.parameters()) - trainable:,} frozen parameters')
    if args.bench:
        x = torch.randn(args.batch, 3, args.resolution, args.resolution, requires_grad=True)
        c = torch.eye(args.labels)[torch.arange(args.batch) % args.labels] if args.labels else None
        sum(l.sum() for l in D(x, c)).backward()  # warm-up
        t = time.perf_counter()
        for _ in range(5):
            sum(l.sum() for l in D(x, c)).backward()
        print(f'forward+backward, batch {args.batch}: {(time.perf_counter() - t) / 5 * 1000:.1f} ms')

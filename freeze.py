"""The D2O-F freezing rule (the official D2O code's --freeze): freeze the 3x3 convs of every residual block and the attention
output projections, train everything else (norms, embeddings, skips, qkv, input and output layers). Also the rule of
the initialisation study (train.py --reinit; arXiv 2502.08005, Sec. 1: the teacher helps through its features, not its
latent-to-output mapping): which tensors are the mapping's ends, and which the features.

    python freeze.py edm-cifar10-32x32-uncond-ve            # print the frozen fraction of each level
    python freeze.py edm-imagenet-64x64-cond-adm --level 1

Level 0 freezes nothing, 1 is D2O-F ('conv', 'proj'), 2 adds 'qkv', 3 adds 'skip'. A parameter is frozen when its name
is inside a residual block (contains 'block', 'up', 'down' or 'in') and contains one of the level's substrings; with
EDM's module names that selects exactly the parameters of UNetBlocks (*_block{k}, *_up, *_down, *_in0, *_in1).
"""

import argparse
import re

import torch

LEVELS = {0: (), 1: ('conv', 'proj'), 2: ('conv', 'proj', 'qkv'), 3: ('conv', 'proj', 'qkv', 'skip')}


def is_frozen(name, level):
    in_block = any(s in name for s in ('block', 'up', 'down', 'in'))
    return in_block and any(s in name for s in LEVELS[level])


def freeze(net, level, verbose=True):
    """Set requires_grad=False on the level's parameters (do it once, before DDP and the optimizer).
    Returns (frozen, total) parameter counts and prints a one-line summary."""
    if level not in LEVELS:
        raise ValueError(f'freeze level must be one of {sorted(LEVELS)}, got {level}')
    frozen = total = 0
    for name, p in net.named_parameters():
        total += p.numel()
        if is_frozen(name, level):
            p.requires_grad_(False)
            frozen += p.numel()
    if verbose:
        print(f'froze {frozen:,} of {total:,} parameters ({100 * frozen / max(total, 1):.2f}%)')
    return frozen, total


def is_io_layer(name):
    """The ends of the latent-to-output mapping: the first conv (image -> features), the image-pyramid paths of
    SongUNet's skip/residual encoders and decoders (*_aux_*), and the output norm and conv (features -> image)."""
    return re.search(r'\.enc\.\d+x\d+_conv\.|_aux_|\.out_norm\.|\.out_conv\.', name) is not None


REINIT = {'io': is_io_layer, 'inner': lambda name: not is_io_layer(name)}  # inner: the blocks and the embedding MLP


def reinit(net, part, seed=0, verbose=True):
    """Replace the weights of one part of the network ('io' or 'inner') by a fresh initialisation (the network's own
    initialiser, seeded), keep the rest. Returns the number of parameters re-initialised."""
    torch.manual_seed(seed)
    fresh = dict(type(net)(**net.init_kwargs).named_parameters())
    count = 0
    with torch.no_grad():
        for name, param in net.named_parameters():
            if REINIT[part](name):
                param.copy_(fresh[name])
                count += param.numel()
    if verbose:
        print(f'--reinit {part}: re-initialised {count:,} of {sum(p.numel() for p in net.parameters()):,} parameters')
    return count


if __name__ == '__main__':
    import unet
    parser = argparse.ArgumentParser(description='Frozen fractions of the D2O-F rule for an EDM architecture.')
    parser.add_argument('arch', help='official EDM name (architecture only, nothing is downloaded)')
    parser.add_argument('--level', type=int, default=None, help='one level (default: all)')
    parser.add_argument('--augment-dim', type=int, default=0, help="EDM's augment layer (D2O does not build it)")
    args = parser.parse_args()
    for level in [args.level] if args.level is not None else sorted(LEVELS):
        with torch.device('meta'):
            net = unet.EDMPrecond(**dict(unet.OFFICIAL[args.arch], augment_dim=args.augment_dim))
        print(f'level {level}: ', end='')
        freeze(net, level)

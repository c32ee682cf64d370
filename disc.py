"""Discriminators. Every D has one interface: D(images in [-1,1] [N,C,R,R], one-hot labels [N,L] or None) -> a list
of logit tensors, each [N, P] (P positions; the GAN losses average over positions, R1 sums over them).

    python disc.py --resolution 32 --labels 10              # print the ResNet D's size
    python disc.py --resolution 32 --width 32 --bench       # time one forward+backward on this device

ResNetD needs no pretrained weights: a StyleGAN2-style residual CNN at the data's native resolution (equalized
learning rate, leaky ReLU, minibatch-std, projection conditioning on class labels), randomly initialised as in
the seed papers' ablations. Its width is a flag.
"""

import argparse
import math
import time

import torch
import torch.nn.functional as F


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
    def __init__(self, cin, cout):
        super().__init__()
        self.conv0, self.conv1 = EqConv(cin, cin, 3), EqConv(cin, cout, 3)
        self.skip = EqConv(cin, cout, 1, bias=False)

    def forward(self, x):
        y = F.avg_pool2d(lrelu(self.conv1(lrelu(self.conv0(x)))), 2)
        return (y + self.skip(F.avg_pool2d(x, 2))) / math.sqrt(2)


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
    def __init__(self, resolution, channels=3, label_dim=0, width=64, max_width=512, cmap_dim=128):
        super().__init__()
        self.resolution, self.label_dim = resolution, label_dim
        ch = lambda res: min(width * (resolution // res), max_width)
        self.from_rgb = EqConv(channels, ch(resolution), 1)
        self.blocks = torch.nn.ModuleList()
        res = resolution
        while res > 4:
            self.blocks.append(ResBlock(ch(res), ch(res // 2)))
            res //= 2
        c = ch(4)
        self.conv = EqConv(c + 1, c, 3)
        self.fc = EqLinear(c * 16, c)
        self.out = EqLinear(c, cmap_dim if label_dim else 1)
        self.embed = EqLinear(label_dim, cmap_dim, bias=False) if label_dim else None  # projection conditioning

    def forward(self, x, c=None):
        x = lrelu(self.from_rgb(x))
        for block in self.blocks:
            x = block(x)
        x = lrelu(self.conv(minibatch_std(x)))
        x = self.out(lrelu(self.fc(x.flatten(1))))
        if self.embed is not None:
            x = (x * self.embed(c)).sum(dim=1, keepdim=True) / math.sqrt(x.shape[1])
        return [x]


if __name__ == '__main__':
    p = argparse.ArgumentParser(description='Build a discriminator and print its size (and speed).')
    p.add_argument('--resolution', type=int, default=32, help='image size')
    p.add_argument('--labels', type=int, default=0, help='number of classes (0: unconditional)')
    p.add_argument('--width', type=int, default=64, help='channels at full resolution')
    p.add_argument('--batch', type=int, default=8, help='batch for --bench')
    p.add_argument('--bench', action='store_true', help='time forward+backward')
    a = p.parse_args()
    D = ResNetD(a.resolution, 3, a.labels, a.width)
    print(f'ResNetD {a.resolution}x{a.resolution}: {sum(p.numel() for p in D.parameters()):,} trainable parameters')
    if a.bench:
        x = torch.randn(a.batch, 3, a.resolution, a.resolution, requires_grad=True)
        c = torch.eye(a.labels)[torch.arange(a.batch) % a.labels] if a.labels else None
        sum(l.sum() for l in D(x, c)).backward()  # warm-up
        t = time.perf_counter()
        for _ in range(5):
            sum(l.sum() for l in D(x, c)).backward()
        print(f'forward+backward, batch {a.batch}: {(time.perf_counter() - t) / 5 * 1000:.1f} ms')

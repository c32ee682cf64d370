"""The training objectives. Each --loss of train.py is one iteration function here: it runs that iteration's
optimizer steps on the real batch and returns its losses. Adding a loss is adding a function and its entry in LOSSES.

    d2o   D2O (arXiv 2506.09376, Sec. 3): a one-step G fine-tuned from the teacher against a D with the non-saturating
          GAN loss and lazy R1; no diffusion loss, no teacher queries
    edm   EDM's denoising loss (arXiv 2206.00364): pretrains a teacher (the toy's assets/toy-edm.pt)

An iteration function takes (run, x, labels): `run` is train.py's namespace of the networks, their DDP wrappers,
optimizers, AMP context and counters; x the real batch in [-1, 1], labels one-hot or None.

    python loss.py        # the losses' values at zero logits, a check by hand: log 2 and 2 log 2
"""

import contextlib
import math

import torch
import torch.nn.functional as F

# ------------------------------------------------------------------------------------------------------------------
# Losses, per sample (the loop takes batch means).

def g_loss(logits):
    """Non-saturating G loss: softplus(-l), mean over positions, summed over D's branches."""
    return sum(F.softplus(-l).flatten(1).mean(1) for l in logits)


def d_loss(fake_logits, real_logits):
    fake = sum(F.softplus(l).flatten(1).mean(1) for l in fake_logits)
    return fake + sum(F.softplus(-l).flatten(1).mean(1) for l in real_logits)


def r1_penalty(D, x, labels):
    """||d(sum of all logits)/dx_i||^2 per sample, w.r.t. the real image; create_graph for the double backward."""
    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(sum(l.float().sum() for l in D(x, labels)), x, create_graph=True)
    return grad.square().flatten(1).sum(1)


def edm_loss(net, x, labels, sigma, noise, sigma_data=0.5):
    """EDM's denoising loss (mean over pixels), weight (sigma^2 + sd^2) / (sigma sd)^2 (arXiv 2206.00364, Table 1)."""
    weight = (sigma ** 2 + sigma_data ** 2) / (sigma * sigma_data) ** 2
    return (weight * (net(x + noise * sigma, sigma, labels) - x).square()).flatten(1).mean(1)


class DObjective(torch.nn.Module):
    """D's loss as one forward, so that DDP sees each D parameter once per backward (fake and real passes, or R1)."""
    def __init__(self, D, fast=None):
        super().__init__()
        self.D = D
        object.__setattr__(self, 'fast', D if fast is None else fast)  # D's compiled forward, out of the module tree

    def forward(self, real, fake, labels, r1_weight=0.0):
        if r1_weight:
            # R1 leaves parameters that only shift the logits (the ResNet D's output bias) without a gradient, and DDP's
            # reducer then waits for them forever. 0 x each trainable parameter gives every one an exact zero gradient
            # for the cost of one sum, where find_unused_parameters would search the graph on every step.
            untouched = sum(param.sum() for param in self.D.parameters() if param.requires_grad) * 0
            return r1_weight * r1_penalty(self.D, real, labels) + untouched
        logits = [[l.float() for l in self.fast(images, labels)] for images in (fake, real)]  # losses in fp32 under AMP
        return d_loss(*logits)

# ------------------------------------------------------------------------------------------------------------------
# One iteration per --loss: run its optimizer steps on the real batch x (labels or None) and return its losses.

def step(run, opt, module, params, micro_loss, stage):
    """zero_grad, accumulate the batch mean over micro-batches (DDP syncs on the last), check finiteness, step."""
    opt.zero_grad(set_to_none=True)
    scaler, total = run.scalers['G' if stage == 'G' else 'D'], torch.zeros([], device=run.device)
    for k in range(run.accum):
        with contextlib.nullcontext() if run.world == 1 or k == run.accum - 1 else module.no_sync():
            loss = micro_loss(slice(k * run.args.batch_gpu, (k + 1) * run.args.batch_gpu)).sum() / run.per_gpu
            scaler.scale(loss).backward()
        total += loss.detach()
    if run.world > 1:
        torch.distributed.all_reduce(total)
        total /= run.world
    loss_ok = math.isfinite(total.item())
    grads = [param.grad for param in params if param.grad is not None]
    grads_ok = scaler.is_enabled() or all(torch.isfinite(grad).all() for grad in grads)  # fp16: the scaler skips
    if not (loss_ok and grads_ok):
        raise FloatingPointError(f'non-finite {stage} {"gradient" if loss_ok else "loss"} (loss {total.item()}) at '
                                 f'iteration {run.it}, {run.nimg / 1000:.3f} kimg. The last good state is kept in '
                                 f'{run.args.rundir}; lower --lr/--dlr, raise --r1-gamma or use --precision fp32, then '
                                 f'rerun to resume from it.')
    scaler.step(opt)  # without fp16, opt.step()
    scaler.update()
    return total.item()


def global_randn(run, shape):
    """This rank's share of noise drawn for the whole global batch: every rank draws the same numbers (seeded by
    iteration), so a run does not depend on how its batch is split over GPUs. A fresh contiguous tensor, as randn_like
    of a channels-last x would fill other positions for the same seed."""
    share = slice(run.rank * run.per_gpu, (run.rank + 1) * run.per_gpu)
    return torch.randn([run.args.batch, *shape], device=run.device)[share]


def d2o_iteration(run, x, labels):
    """D2O (arXiv 2506.09376, Sec. 3): a G step, a D step on fakes from the updated G, a lazy R1 step."""
    pick = lambda s: labels[s] if labels is not None else None
    z_g, z_d = global_randn(run, x.shape[1:]), global_randn(run, x.shape[1:])

    def g_step(s):
        with run.autocast():
            logits = run.D_fast(run.G_ddp(z_g[s], pick(s)), pick(s))
        return g_loss([l.float() for l in logits])

    def d_step(s):
        with torch.no_grad(), run.autocast():
            fake = run.G(z_d[s], pick(s))
        with run.autocast():
            return run.D_ddp(x[s], fake, pick(s))
    for param in run.d_params:  # the G step differentiates through D without updating it
        param.requires_grad_(False)
    losses = dict(loss_G=step(run, run.opt_G, run.G_ddp, run.g_params, g_step, 'G'))
    for param in run.d_params:
        param.requires_grad_(True)
    losses['loss_D'] = step(run, run.opt_D, run.D_ddp, run.d_params, d_step, 'D')
    if run.it > 0 and run.it % run.args.r1_interval == 0:  # lazy R1, weighted by the interval
        r1_weight = run.args.r1_interval * run.args.r1_gamma / 2
        def r1_step(s):
            with run.autocast():
                return run.D_ddp(x[s], None, pick(s), r1_weight)
        losses['loss_R1'] = step(run, run.opt_D, run.D_ddp, run.d_params, r1_step, 'R1')
    return losses


def edm_iteration(run, x, labels):
    """EDM's pretraining (arXiv 2206.00364): the denoiser at ln sigma ~ N(-1.2, 1.2^2)."""
    sigma = (global_randn(run, [1, 1, 1]) * 1.2 - 1.2).exp()
    noise = global_randn(run, x.shape[1:])

    def denoise(s):
        with run.autocast():
            return edm_loss(run.G_ddp, x[s], labels[s] if labels is not None else None, sigma[s], noise[s])
    return dict(loss_edm=step(run, run.opt_G, run.G_ddp, run.g_params, denoise, 'G'))


# Each --loss: its iteration and what it trains ('generator': a one-step G against a D; 'denoiser': EDM's network).
LOSSES = dict(d2o=(d2o_iteration, 'generator'), edm=(edm_iteration, 'denoiser'))


if __name__ == '__main__':
    print(f'losses: {", ".join(LOSSES)} (train.py --loss)')
    zero = [torch.zeros(1, 4)]
    print(f'g_loss(0) = {g_loss(zero).item():.6f} (log 2 = {math.log(2):.6f}); '
          f'd_loss(0, 0) = {d_loss(zero, zero).item():.6f} (2 log 2 = {2 * math.log(2):.6f})')

"""The training objectives. Each --loss of train.py is one iteration function here: it runs that iteration's
optimizer steps on the real batch and returns its losses. Adding a loss is adding a function and its entry in LOSSES.

    d2o        D2O (arXiv 2506.09376, Sec. 3): a one-step G fine-tuned from the teacher against a D with the
               non-saturating GAN loss and lazy R1; no diffusion loss, no teacher queries
    diffratio  DiffRatio (arXiv 2502.08005): the same one-step G, trained along the x-gradient of a log density ratio
               that a noise-conditioned D learns across noise levels (our reconstruction of the objective)
    edm        EDM's denoising loss (arXiv 2206.00364): pretrains a teacher (the toy's assets/toy-edm.pt)

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


def reverse_kl_g_loss(logits):
    """DiffRatio's reverse-KL surrogate -d (RECONSTRUCTION, see diffratio_iteration): with d = log p_data/p_G, the
    gradient of KL(p_G || p_data) through x is -grad_x d, the score difference of VSD/DMD without either score."""
    return -sum(l.flatten(1).mean(1) for l in logits)


def rp_g_loss(fake_logits, real_logits):
    """RpGAN's G loss (--gan rp; arXiv 2501.05441, Sec. 2): softplus(l_real - l_fake), each fake against the real
    image at its batch position, mean over positions, summed over D's branches."""
    return sum(F.softplus(r - f).flatten(1).mean(1) for f, r in zip(fake_logits, real_logits))


def rp_d_loss(fake_logits, real_logits):
    return sum(F.softplus(f - r).flatten(1).mean(1) for f, r in zip(fake_logits, real_logits))


# DiffRatio's G surrogates (--divergence). JS is the non-saturating GAN loss at each noise level: the exact JS
# gradient weighs grad_x d by sigmoid(d)/2 (the saturating form), the usual practical substitute by 1 - sigmoid(d).
DIVERGENCES = dict(rkl=reverse_kl_g_loss, js=g_loss)


def r1_penalty(D, x, labels, **kwargs):
    """||d(sum of all logits)/dx_i||^2 per sample, w.r.t. the real image; create_graph for the double backward."""
    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(sum(l.float().sum() for l in D(x, labels, **kwargs)), x, create_graph=True)
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

    def forward(self, real, fake, labels, r1_weight=0.0, real_kw=None, fake_kw=None, relativistic=False):
        """*_kw: D's keyword arguments for each set (a noise-conditioned D's sigma). With r1_weight: R1 on real, plus
        R2 (the same penalty on fakes) when fake is given. relativistic: RpGAN's paired loss instead of D2O's."""
        real_kw, fake_kw = real_kw or {}, fake_kw or {}
        if r1_weight:
            # R1 leaves parameters that only shift the logits (the ResNet D's output bias) without a gradient, and DDP's
            # reducer then waits for them forever. 0 x each trainable parameter gives every one an exact zero gradient
            # for the cost of one sum, where find_unused_parameters would search the graph on every step.
            untouched = sum(param.sum() for param in self.D.parameters() if param.requires_grad) * 0
            penalty = r1_penalty(self.D, real, labels, **real_kw)
            penalty = penalty if fake is None else penalty + r1_penalty(self.D, fake, labels, **fake_kw)
            return r1_weight * penalty + untouched
        logits = [[l.float() for l in self.fast(images, labels, **kw)]  # losses in fp32 under AMP
                  for images, kw in ((fake, fake_kw), (real, real_kw))]
        return (rp_d_loss if relativistic else d_loss)(*logits)

# ------------------------------------------------------------------------------------------------------------------
# One iteration per --loss: run its optimizer steps on the real batch x (labels or None) and return its losses.
# train.py's loop calls set_rates before each iteration and ema_update after it.

def set_rates(run):
    """Learning rates (with warm-up) and D's beta2 from the flags, every iteration: new ones take effect on resume."""
    args = run.args  # lazy R1 (StyleGAN2) scales D's lr and beta2 by interval / (interval + 1); without R1, by 1
    lazy = args.r1_interval / (args.r1_interval + 1) if args.r1_gamma else 1.0
    for group in run.opt_G.param_groups:
        group['lr'] = args.lr * min(run.nimg / (args.lr_rampup * 1000), 1) if args.lr_rampup else args.lr
    for group, scale in zip(run.opt_D.param_groups, run.d_lr_scales) if run.opt_D else []:  # scale: --dlr-trunk
        group['lr'], group['betas'] = args.dlr * lazy * scale, (0.0, 0.99 ** lazy)


@torch.no_grad()
def ema_update(G_ema, G, args, nimg):
    """EMA with a half-life in images, at most ema_rampup of the images seen before this batch."""
    half_life = min(args.ema * 1000, args.ema_rampup * nimg) if args.ema_rampup else args.ema * 1000
    beta = 0.5 ** (args.batch / max(half_life, 1e-8))
    torch._foreach_lerp_(list(G_ema.parameters()), list(G.parameters()), 1 - beta)


def all_finite(tensors):
    """No NaN or inf in any tensor (None: skipped): each one's max-norm, which NaN and inf carry through, in one
    call rather than one per tensor."""
    tensors = [t for t in tensors if t is not None]
    return not tensors or bool(torch.stack(torch._foreach_norm(tensors, math.inf)).isfinite().all())


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
    grads_ok = scaler.is_enabled() or all_finite([param.grad for param in params])  # fp16: the scaler skips
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


def clean(run, shape):
    """D2O's view of the images: as they are."""
    return lambda images, s: (images, {})


def noised(run, shape):
    """DiffRatio's view: x + sigma n with ln sigma ~ N(--sigma-mean, --sigma-std^2) per sample, drawn for the global
    batch, and sigma passed to the noise-conditioned D."""
    sigma = (global_randn(run, [1, 1, 1]) * run.args.sigma_std + run.args.sigma_mean).exp()
    noise = global_randn(run, shape)
    return lambda images, s: (images + sigma[s] * noise[s], dict(sigma=sigma[s].flatten()))


def gan_iteration(run, x, labels, view, generator_loss, relativistic=False):
    """A G step (D frozen) on fresh z, --d-steps D steps on fakes from the updated G (--d-fakes g-step: the first on
    the G step's own fakes, from before its step), and every --r1-interval iterations a lazy R1 step on reals.
    view(run, shape) draws what D sees of a set of images. relativistic: RpGAN, each fake against the real at its
    batch position (G's loss sees the reals' logits too), and R2 on fakes of a fresh z beside R1 in the lazy step
    (arXiv 2501.05441, Sec. 2)."""
    pick = lambda s: labels[s] if labels is not None else None
    reuse = run.args.d_fakes == 'g-step'  # the first D step takes the G step's fakes: one G forward fewer
    z_g = global_randn(run, x.shape[1:])
    z_d = None if reuse else global_randn(run, x.shape[1:])
    g_view, g_fakes = view(run, x.shape[1:]), {}

    def g_step(s):
        with run.autocast():
            fake = run.G_ddp(z_g[s], pick(s))
            if reuse:  # as G made them before its step, per micro-batch
                g_fakes[s.start] = fake.detach()
            images, kw = g_view(fake, s)
            logits = [l.float() for l in run.D_fast(images, pick(s), **kw)]
            if not relativistic:
                return generator_loss(logits)
            with torch.no_grad():  # D is frozen here: the reals' logits are constants of G's loss
                real_logits = [l.float() for l in run.D_fast(x[s], pick(s))]
        return generator_loss(logits, real_logits)
    for param in run.d_params:  # the G step differentiates through D without updating it
        param.requires_grad_(False)
    losses = dict(loss_G=step(run, run.opt_G, run.G_ddp, run.g_params, g_step, 'G'))
    for param in run.d_params:
        param.requires_grad_(True)
    d_losses = []
    for k in range(run.args.d_steps):
        z, real_view, fake_view = z_d if k == 0 else global_randn(run, x.shape[1:]), view(run, x.shape[1:]), \
            view(run, x.shape[1:])

        def d_step(s):
            if z is None:
                fake = g_fakes[s.start]
            else:
                with torch.no_grad(), run.autocast():
                    fake = run.G(z[s], pick(s))
            (real, real_kw), (fake, fake_kw) = real_view(x[s], s), fake_view(fake, s)
            with run.autocast():
                return run.D_ddp(real, fake, pick(s), real_kw=real_kw, fake_kw=fake_kw, relativistic=relativistic)
        d_losses.append(step(run, run.opt_D, run.D_ddp, run.d_params, d_step, 'D'))
    losses['loss_D'] = sum(d_losses) / len(d_losses)
    if run.args.r1_gamma and run.it > 0 and run.it % run.args.r1_interval == 0:  # lazy R1 by the interval; γ 0: none
        r1_weight, r1_view = run.args.r1_interval * run.args.r1_gamma / 2, view(run, x.shape[1:])
        z_r2 = global_randn(run, x.shape[1:]) if relativistic else None

        def r1_step(s):
            real, real_kw = r1_view(x[s], s)
            with torch.no_grad(), run.autocast():
                fake = run.G(z_r2[s], pick(s)) if relativistic else None
            with run.autocast():
                return run.D_ddp(real, fake, pick(s), r1_weight, real_kw=real_kw)
        losses['loss_R1'] = step(run, run.opt_D, run.D_ddp, run.d_params, r1_step, 'R1')
    return losses


def d2o_iteration(run, x, labels):
    """D2O (arXiv 2506.09376, Sec. 3): the non-saturating GAN loss on the images themselves (--gan rp: RpGAN's)."""
    if run.args.gan == 'rp':
        return gan_iteration(run, x, labels, clean, rp_g_loss, relativistic=True)
    return gan_iteration(run, x, labels, clean, g_loss)


def diffratio_iteration(run, x, labels):
    """DiffRatio (arXiv 2502.08005). RECONSTRUCTION: the paper's method section could not be read; its abstract
    gives the idea, the rest is a standard derivation. D learns the log density ratio d = log p_data,sigma -
    log p_G,sigma of noised images across noise levels by logistic classification; G moves along grad_x d through
    x_sigma = G(z) + sigma n (--divergence: reverse KL -d, or JS, the GAN loss at each level), with no teacher score
    and no student score network. Weight w(sigma) = 1 at every level."""
    return gan_iteration(run, x, labels, noised, DIVERGENCES[run.args.divergence])


def edm_iteration(run, x, labels):
    """EDM's pretraining (arXiv 2206.00364): the denoiser at ln sigma ~ N(-1.2, 1.2^2)."""
    sigma = (global_randn(run, [1, 1, 1]) * 1.2 - 1.2).exp()
    noise = global_randn(run, x.shape[1:])

    def denoise(s):
        with run.autocast():
            return edm_loss(run.G_ddp, x[s], labels[s] if labels is not None else None, sigma[s], noise[s])
    return dict(loss_edm=step(run, run.opt_G, run.G_ddp, run.g_params, denoise, 'G'))


# Each --loss: its iteration, what it trains ('generator': a one-step G against a D; 'denoiser': EDM's network) and
# the kinds of D it takes (train.py --disc; the first is its default under --disc auto when no other applies).
LOSSES = dict(d2o=(d2o_iteration, 'generator', ('resnet', 'projected', 'teacher')),
              diffratio=(diffratio_iteration, 'generator', ('ratio',)),
              edm=(edm_iteration, 'denoiser', ()))


if __name__ == '__main__':
    print(f'losses: {", ".join(LOSSES)} (train.py --loss)')
    zero = [torch.zeros(1, 4)]
    print(f'g_loss(0) = {g_loss(zero).item():.6f} (log 2 = {math.log(2):.6f}); '
          f'd_loss(0, 0) = {d_loss(zero, zero).item():.6f} (2 log 2 = {2 * math.log(2):.6f})')

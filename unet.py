"""EDM's networks and preconditioners, and the D2O one-step generator.

    python unet.py --list                                     # the nine official EDM checkpoints
    python unet.py edm-cifar10-32x32-cond-vp                   # build one (no weights), print its size

Public names (other files and users' scripts rely on them):
    SongUNet, DhariwalUNet                     EDM's U-Nets (DDPM++/NCSN++ and ADM), same state_dict keys as EDM
    EDMPrecond, VPPrecond, VEPrecond, iDDPMPrecond
                                               net(x, sigma, class_labels=None, augment_labels=None) -> D(x; sigma)
    D2OGenerator(net, sigma=80)                G(z, class_labels) = one evaluation at sigma (D2O: 80, eps-shifted)
    OFFICIAL, EDM_URL                          name -> constructor kwargs of EDM's nine releases, and where they are
    build_edm(name)                            an official network, randomly initialised, no weights

Loading weights (EDM .pkl files without executing them, our own checkpoints) is ckpt.py's job.
Everything here is written from the EDM paper and a written description of its public code; no EDM code is
included. Names and numbers (module names, inits, coefficients) follow EDM so official weights load by name.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F

# ----------------------------------------------------------------------------------------------------------------
# Primitive layers. Parameters stay fp32; they are cast to the activation dtype per call (as EDM does), so a
# network can run in fp16/bf16 on the GPU while the optimizer keeps fp32 master weights.

def weight_init(shape, mode, fan_in, fan_out):
    if mode == 'xavier_uniform': return math.sqrt(6 / (fan_in + fan_out)) * (torch.rand(*shape) * 2 - 1)
    if mode == 'xavier_normal':  return math.sqrt(2 / (fan_in + fan_out)) * torch.randn(*shape)
    if mode == 'kaiming_uniform': return math.sqrt(3 / fan_in) * (torch.rand(*shape) * 2 - 1)
    if mode == 'kaiming_normal':  return math.sqrt(1 / fan_in) * torch.randn(*shape)
    raise ValueError(f'unknown init mode {mode!r}')


class Linear(torch.nn.Module):
    def __init__(self, in_features, out_features, bias=True, init_mode='kaiming_normal', init_weight=1, init_bias=0):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        fans = dict(mode=init_mode, fan_in=in_features, fan_out=out_features)
        self.weight = torch.nn.Parameter(weight_init([out_features, in_features], **fans) * init_weight)
        self.bias = torch.nn.Parameter(weight_init([out_features], **fans) * init_bias) if bias else None

    def forward(self, x):
        x = x @ self.weight.to(x.dtype).t()
        return x + self.bias.to(x.dtype) if self.bias is not None else x


class Conv2d(torch.nn.Module):
    """kxk conv with optional 2x up/down resampling by a separable FIR filter; kernel=0 is a pure resampler."""
    def __init__(self, in_channels, out_channels, kernel, bias=True, up=False, down=False, resample_filter=[1, 1],
                 fused_resample=False, init_mode='kaiming_normal', init_weight=1, init_bias=0):
        assert not (up and down) and not (fused_resample and up)  # EDM only ever fuses the NCSN++ down path
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.up, self.down, self.fused_resample = up, down, fused_resample
        fans = dict(mode=init_mode, fan_in=in_channels * kernel * kernel, fan_out=out_channels * kernel * kernel)
        self.weight = torch.nn.Parameter(weight_init([out_channels, in_channels, kernel, kernel], **fans) * init_weight) if kernel else None
        self.bias = torch.nn.Parameter(weight_init([out_channels], **fans) * init_bias) if kernel and bias else None
        f = torch.as_tensor(resample_filter, dtype=torch.float32)
        f = torch.outer(f, f)[None, None] / f.sum() ** 2
        self.register_buffer('resample_filter', f if up or down else None)

    def forward(self, x):
        w = self.weight.to(x.dtype) if self.weight is not None else None
        b = self.bias.to(x.dtype) if self.bias is not None else None
        f = self.resample_filter.to(x.dtype) if self.resample_filter is not None else None
        w_pad = w.shape[-1] // 2 if w is not None else 0
        f_pad = (f.shape[-1] - 1) // 2 if f is not None else 0
        if self.fused_resample and self.down and w is not None:
            x = F.conv2d(x, w, padding=w_pad + f_pad)
            x = F.conv2d(x, f.tile([self.out_channels, 1, 1, 1]), groups=self.out_channels, stride=2)
        else:
            c = x.shape[1]
            if self.up:
                x = F.conv_transpose2d(x, (f * 4).tile([c, 1, 1, 1]), groups=c, stride=2, padding=f_pad)
            if self.down:
                x = F.conv2d(x, f.tile([c, 1, 1, 1]), groups=c, stride=2, padding=f_pad)
            if w is not None:
                x = F.conv2d(x, w, padding=w_pad)
        return x + b.reshape(1, -1, 1, 1) if b is not None else x


class GroupNorm(torch.nn.Module):
    """Group count = min(32, C // 4); it is not stored in checkpoints. Computed in fp32 for bf16/fp16 stability."""
    def __init__(self, num_channels, num_groups=32, min_channels_per_group=4, eps=1e-5):
        super().__init__()
        self.num_groups = min(num_groups, num_channels // min_channels_per_group)
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(num_channels))
        self.bias = torch.nn.Parameter(torch.zeros(num_channels))

    def forward(self, x):
        with torch.autocast(x.device.type, enabled=False):
            return F.group_norm(x.float(), self.num_groups, self.weight, self.bias, self.eps).to(x.dtype)


def attention(q, k, v):
    """q, k, v: [N*heads, C_head, HW]. Softmax over keys in fp32 whatever the autocast/activation dtype."""
    with torch.autocast(q.device.type, enabled=False):
        w = torch.einsum('ncq,nck->nqk', q.float(), k.float() / math.sqrt(k.shape[1])).softmax(dim=2)
    return torch.einsum('nqk,nck->ncq', w.to(v.dtype), v)


class UNetBlock(torch.nn.Module):
    def __init__(self, in_channels, out_channels, emb_channels, up=False, down=False, attention=False,
                 num_heads=None, channels_per_head=64, dropout=0, skip_scale=1, eps=1e-5, resample_filter=[1, 1],
                 resample_proj=False, adaptive_scale=True, init=dict(), init_zero=dict(init_weight=0), init_attn=None):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        # EDM trap: in ADM a block with fewer than 64 channels gets 0 heads, i.e. no attention at all.
        self.num_heads = 0 if not attention else num_heads if num_heads is not None else out_channels // channels_per_head
        self.dropout, self.skip_scale, self.adaptive_scale = dropout, float(skip_scale), adaptive_scale
        self.norm0 = GroupNorm(in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels, out_channels, 3, up=up, down=down, resample_filter=resample_filter, **init)
        self.affine = Linear(emb_channels, out_channels * (2 if adaptive_scale else 1), **init)
        self.norm1 = GroupNorm(out_channels, eps=eps)
        self.conv1 = Conv2d(out_channels, out_channels, 3, **init_zero)
        self.skip = None
        if out_channels != in_channels or up or down:
            kernel = 1 if resample_proj or out_channels != in_channels else 0  # kernel 0: only a resample_filter buffer
            self.skip = Conv2d(in_channels, out_channels, kernel, up=up, down=down, resample_filter=resample_filter, **init)
        if self.num_heads:
            self.norm2 = GroupNorm(out_channels, eps=eps)
            self.qkv = Conv2d(out_channels, out_channels * 3, 1, **(init_attn if init_attn is not None else init))
            self.proj = Conv2d(out_channels, out_channels, 1, **init_zero)

    def forward(self, x, emb):
        orig = x
        x = self.conv0(F.silu(self.norm0(x)))
        params = self.affine(emb)[:, :, None, None].to(x.dtype)
        if self.adaptive_scale:
            scale, shift = params.chunk(2, dim=1)
            x = F.silu(shift + self.norm1(x) * (scale + 1))
        else:
            x = F.silu(self.norm1(x + params))
        x = self.conv1(F.dropout(x, p=self.dropout, training=self.training))
        x = (x + (self.skip(orig) if self.skip is not None else orig)) * self.skip_scale
        if self.num_heads:
            n, c, h, w = x.shape
            # EDM's qkv channels are interleaved per channel: index 3*(head*C_head + c) + {0:q, 1:k, 2:v}.
            q, k, v = self.qkv(self.norm2(x)).reshape(n * self.num_heads, c // self.num_heads, 3, h * w).unbind(2)
            a = attention(q, k, v).reshape(n, c, h, w)
            x = (self.proj(a) + x) * self.skip_scale
        return x


class PositionalEmbedding(torch.nn.Module):
    """[cos, sin] of x times geometric frequencies; no state."""
    def __init__(self, num_channels, max_positions=10000, endpoint=False):
        super().__init__()
        self.num_channels, self.max_positions, self.endpoint = num_channels, max_positions, endpoint

    def forward(self, x):
        half = self.num_channels // 2
        freqs = torch.arange(half, dtype=torch.float32, device=x.device) / (half - (1 if self.endpoint else 0))
        freqs = (1 / self.max_positions) ** freqs
        x = torch.outer(x, freqs.to(x.dtype))
        return torch.cat([x.cos(), x.sin()], dim=1)


class FourierEmbedding(torch.nn.Module):
    """Random Fourier features; the frequencies are a buffer and must come from the checkpoint."""
    def __init__(self, num_channels, scale=16):
        super().__init__()
        self.register_buffer('freqs', torch.randn(num_channels // 2) * scale)

    def forward(self, x):
        x = torch.outer(x, (2 * np.pi * self.freqs).to(x.dtype))
        return torch.cat([x.cos(), x.sin()], dim=1)


def _label_dropout(labels, p, training):
    if training and p:
        keep = (torch.rand([labels.shape[0], 1], device=labels.device) >= p).to(labels.dtype)
        labels = labels * keep
    return labels

# ----------------------------------------------------------------------------------------------------------------
# The U-Nets. Module registration order is EDM's, so state_dict keys and order are identical.

def build_decoder(dec, cout, skips, img_resolution, channel_mult, model_channels, num_blocks, attention, block_kwargs,
                  after_level=None):
    """Both U-Nets' decoder, lowest resolution first: two middle blocks (or an up block), then num_blocks + 1 blocks
    that each take a skip; attention(idx, res) says which attend; after_level(level, res, cout) adds a U-Net's own
    layers after a level. Returns the output channels."""
    for level, mult in reversed(list(enumerate(channel_mult))):
        res = img_resolution >> level
        if level == len(channel_mult) - 1:
            dec[f'{res}x{res}_in0'] = UNetBlock(cout, cout, attention=True, **block_kwargs)
            dec[f'{res}x{res}_in1'] = UNetBlock(cout, cout, **block_kwargs)
        else:
            dec[f'{res}x{res}_up'] = UNetBlock(cout, cout, up=True, **block_kwargs)
        for idx in range(num_blocks + 1):
            cin, cout = cout + skips.pop(), model_channels * mult
            dec[f'{res}x{res}_block{idx}'] = UNetBlock(cin, cout, attention=attention(idx, res), **block_kwargs)
        if after_level:
            after_level(level, res, cout)
    return cout


class UNet(torch.nn.Module):
    """What both U-Nets share besides build_decoder: the encoder's forward pass (ADM's has no aux layers)."""
    def encode(self, x, emb):
        """The encoder: its output and the skips the decoder takes (also disc.TeacherD's trunk)."""
        skips, aux = [], x
        for name, block in self.enc.items():
            if 'aux_down' in name:
                aux = block(aux)
            elif 'aux_skip' in name:
                x = skips[-1] = x + block(aux)
            elif 'aux_residual' in name:
                x = skips[-1] = aux = (x + block(aux)) / math.sqrt(2)
            else:
                x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
                skips.append(x)
        return x, skips


class SongUNet(UNet):
    """DDPM++ (positional embedding, standard encoder) / NCSN++ (Fourier embedding, residual encoder, [1,3,3,1])."""
    def __init__(self, img_resolution, in_channels, out_channels, label_dim=0, augment_dim=0,
                 model_channels=128, channel_mult=[1, 2, 2, 2], channel_mult_emb=4, num_blocks=4, attn_resolutions=[16],
                 dropout=0.10, label_dropout=0, embedding_type='positional', channel_mult_noise=1,
                 encoder_type='standard', decoder_type='standard', resample_filter=[1, 1]):
        assert embedding_type in ['fourier', 'positional']
        assert encoder_type in ['standard', 'skip', 'residual']
        assert decoder_type in ['standard', 'skip']
        super().__init__()
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        noise_channels = model_channels * channel_mult_noise
        init = dict(init_mode='xavier_uniform')
        init_zero = dict(init_mode='xavier_uniform', init_weight=1e-5)  # EDM: tiny, not exactly zero
        init_attn = dict(init_mode='xavier_uniform', init_weight=math.sqrt(0.2))
        block_kwargs = dict(emb_channels=emb_channels, num_heads=1, dropout=dropout, skip_scale=math.sqrt(0.5), eps=1e-6,
                            resample_filter=resample_filter, resample_proj=True, adaptive_scale=False,
                            init=init, init_zero=init_zero, init_attn=init_attn)

        self.map_noise = PositionalEmbedding(noise_channels, endpoint=True) if embedding_type == 'positional' else FourierEmbedding(noise_channels)
        self.map_label = Linear(label_dim, noise_channels, **init) if label_dim else None
        self.map_augment = Linear(augment_dim, noise_channels, bias=False, **init) if augment_dim else None
        self.map_layer0 = Linear(noise_channels, emb_channels, **init)
        self.map_layer1 = Linear(emb_channels, emb_channels, **init)

        self.enc = torch.nn.ModuleDict()
        cout = caux = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, model_channels  # EDM: the first conv outputs model_channels, not mult[0] times it
                self.enc[f'{res}x{res}_conv'] = Conv2d(cin, cout, 3, **init)
            else:
                self.enc[f'{res}x{res}_down'] = UNetBlock(cout, cout, down=True, **block_kwargs)
                if encoder_type == 'skip':
                    self.enc[f'{res}x{res}_aux_down'] = Conv2d(caux, caux, 0, down=True, resample_filter=resample_filter)
                    self.enc[f'{res}x{res}_aux_skip'] = Conv2d(caux, cout, 1, **init)
                if encoder_type == 'residual':
                    self.enc[f'{res}x{res}_aux_residual'] = Conv2d(caux, cout, 3, down=True, resample_filter=resample_filter,
                                                                   fused_resample=True, **init)
                    caux = cout
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f'{res}x{res}_block{idx}'] = UNetBlock(cin, cout, attention=(res in attn_resolutions), **block_kwargs)
        skips = [block.out_channels for name, block in self.enc.items() if 'aux' not in name]

        self.dec = torch.nn.ModuleDict()

        def output_layers(level, res, cout):  # after a decoder level: the skip decoder's aux layers, the output's
            if decoder_type == 'skip' or level == 0:
                if decoder_type == 'skip' and level < len(channel_mult) - 1:
                    self.dec[f'{res}x{res}_aux_up'] = Conv2d(out_channels, out_channels, 0, up=True, resample_filter=resample_filter)
                self.dec[f'{res}x{res}_aux_norm'] = GroupNorm(cout, eps=1e-6)
                self.dec[f'{res}x{res}_aux_conv'] = Conv2d(cout, out_channels, 3, **init_zero)
        build_decoder(  # attention only in the last decoder block of a level
            self.dec, cout, skips, img_resolution, channel_mult, model_channels, num_blocks,
            lambda idx, res: idx == num_blocks and res in attn_resolutions, block_kwargs, output_layers)

    def embed(self, noise_labels, class_labels, augment_labels=None):
        emb = self.map_noise(noise_labels)
        emb = emb.reshape(emb.shape[0], 2, -1).flip(1).reshape(emb.shape)  # SongUNet: [sin, cos]
        if self.map_label is not None:
            labels = _label_dropout(class_labels, self.label_dropout, self.training)
            emb = emb + self.map_label(labels * math.sqrt(self.map_label.in_features))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = F.silu(self.map_layer0(emb))
        return F.silu(self.map_layer1(emb))

    def forward(self, x, noise_labels, class_labels, augment_labels=None):
        emb = self.embed(noise_labels, class_labels, augment_labels)
        x, skips = self.encode(x, emb)
        aux = tmp = None
        for name, block in self.dec.items():
            if 'aux_up' in name:
                aux = block(aux)
            elif 'aux_norm' in name:
                tmp = block(x)
            elif 'aux_conv' in name:
                tmp = block(F.silu(tmp))
                aux = tmp if aux is None else tmp + aux
            else:
                if x.shape[1] != block.in_channels:
                    x = torch.cat([x, skips.pop()], dim=1)
                x = block(x, emb)
        return aux


class DhariwalUNet(UNet):
    """ADM (Dhariwal & Nichol) as in EDM: adaptive scale/shift, 64 channels per attention head."""
    def __init__(self, img_resolution, in_channels, out_channels, label_dim=0, augment_dim=0,
                 model_channels=192, channel_mult=[1, 2, 3, 4], channel_mult_emb=4, num_blocks=3,
                 attn_resolutions=[32, 16, 8], dropout=0.10, label_dropout=0):
        super().__init__()
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        init = dict(init_mode='kaiming_uniform', init_weight=math.sqrt(1 / 3), init_bias=math.sqrt(1 / 3))
        init_zero = dict(init_mode='kaiming_uniform', init_weight=0, init_bias=0)
        block_kwargs = dict(emb_channels=emb_channels, channels_per_head=64, dropout=dropout, init=init, init_zero=init_zero)

        self.map_noise = PositionalEmbedding(model_channels)
        self.map_augment = Linear(augment_dim, model_channels, bias=False, **init_zero) if augment_dim else None
        self.map_layer0 = Linear(model_channels, emb_channels, **init)
        self.map_layer1 = Linear(emb_channels, emb_channels, **init)
        # Registered after map_layer1 (EDM's order); no bias, N(0,1) entries, no sqrt(label_dim) input scaling.
        self.map_label = Linear(label_dim, emb_channels, bias=False, init_mode='kaiming_normal',
                                init_weight=math.sqrt(label_dim)) if label_dim else None

        self.enc = torch.nn.ModuleDict()
        cout = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, model_channels * mult
                self.enc[f'{res}x{res}_conv'] = Conv2d(cin, cout, 3, **init)
            else:
                self.enc[f'{res}x{res}_down'] = UNetBlock(cout, cout, down=True, **block_kwargs)
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f'{res}x{res}_block{idx}'] = UNetBlock(cin, cout, attention=(res in attn_resolutions), **block_kwargs)
        skips = [block.out_channels for block in self.enc.values()]

        self.dec = torch.nn.ModuleDict()
        cout = build_decoder(self.dec, cout, skips, img_resolution, channel_mult, model_channels, num_blocks,
                             lambda idx, res: res in attn_resolutions, block_kwargs)
        self.out_norm = GroupNorm(cout)
        self.out_conv = Conv2d(cout, out_channels, 3, **init_zero)

    def embed(self, noise_labels, class_labels, augment_labels=None):
        emb = self.map_noise(noise_labels)  # ADM keeps [cos, sin]
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = F.silu(self.map_layer0(emb))
        emb = self.map_layer1(emb)
        if self.map_label is not None:
            emb = emb + self.map_label(_label_dropout(class_labels, self.label_dropout, self.training))
        return F.silu(emb)

    def forward(self, x, noise_labels, class_labels, augment_labels=None):
        emb = self.embed(noise_labels, class_labels, augment_labels)
        x, skips = self.encode(x, emb)
        for block in self.dec.values():
            if x.shape[1] != block.in_channels:
                x = torch.cat([x, skips.pop()], dim=1)
            x = block(x, emb)
        return self.out_conv(F.silu(self.out_norm(x)))

# ----------------------------------------------------------------------------------------------------------------
# Preconditioners: D(x; sigma) = c_skip x + c_out F(c_in x, c_noise). Each records its constructor call in
# `init_kwargs` so our checkpoints can rebuild it.

MODEL_TYPES = dict(SongUNet=SongUNet, DhariwalUNet=DhariwalUNet)


def _class_labels(label_dim, class_labels, device):
    if label_dim == 0:
        return None
    if class_labels is None:  # EDM: a conditional net without labels sees the zero label vector
        return torch.zeros([1, label_dim], device=device)
    return class_labels.to(torch.float32).reshape(-1, label_dim)


class Precond(torch.nn.Module):
    def __init__(self, img_resolution, img_channels, label_dim, use_fp16, model_type, model_kwargs, init_kwargs, out_mult=1):
        super().__init__()
        self.img_resolution, self.img_channels, self.label_dim, self.use_fp16 = img_resolution, img_channels, label_dim, use_fp16
        self.init_kwargs = dict(img_resolution=img_resolution, img_channels=img_channels, label_dim=label_dim,
                                use_fp16=use_fp16, model_type=model_type, **init_kwargs, **model_kwargs)
        self.model = MODEL_TYPES[model_type](img_resolution=img_resolution, in_channels=img_channels,
                                             out_channels=img_channels * out_mult, label_dim=label_dim, **model_kwargs)

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)

    def labels(self, class_labels, device):
        return _class_labels(self.label_dim, class_labels, device)

    def forward(self, x, sigma, class_labels=None, force_fp32=False, **model_kwargs):
        x = x.to(torch.float32)
        sigma = torch.as_tensor(sigma, device=x.device).to(torch.float32).reshape(-1, 1, 1, 1)
        dtype = torch.float16 if self.use_fp16 and not force_fp32 and x.device.type == 'cuda' else torch.float32
        c_skip, c_out, c_in, c_noise = self.coefs(sigma)
        F_x = self.model((c_in * x).to(dtype), c_noise.flatten(), class_labels=self.labels(class_labels, x.device), **model_kwargs)
        return c_skip * x + c_out * F_x[:, :self.img_channels].to(torch.float32)


class EDMPrecond(Precond):
    def __init__(self, img_resolution, img_channels, label_dim=0, use_fp16=False, sigma_min=0, sigma_max=float('inf'),
                 sigma_data=0.5, model_type='DhariwalUNet', **model_kwargs):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, model_kwargs,
                         dict(sigma_min=sigma_min, sigma_max=sigma_max, sigma_data=sigma_data))
        self.sigma_min, self.sigma_max, self.sigma_data = sigma_min, sigma_max, sigma_data

    def coefs(self, sigma):
        sd = self.sigma_data
        c_skip = sd ** 2 / (sigma ** 2 + sd ** 2)
        c_out = sigma * sd / (sigma ** 2 + sd ** 2).sqrt()
        c_in = 1 / (sd ** 2 + sigma ** 2).sqrt()
        return c_skip, c_out, c_in, sigma.log() / 4


class VPPrecond(Precond):
    def __init__(self, img_resolution, img_channels, label_dim=0, use_fp16=False, beta_d=19.9, beta_min=0.1, M=1000,
                 epsilon_t=1e-5, model_type='SongUNet', **model_kwargs):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, model_kwargs,
                         dict(beta_d=beta_d, beta_min=beta_min, M=M, epsilon_t=epsilon_t))
        self.beta_d, self.beta_min, self.M, self.epsilon_t = beta_d, beta_min, M, epsilon_t
        self.sigma_min, self.sigma_max = float(self.sigma(epsilon_t)), float(self.sigma(1))

    def sigma(self, t):
        t = torch.as_tensor(t)
        return ((0.5 * self.beta_d * t ** 2 + self.beta_min * t).exp() - 1).sqrt()

    def sigma_inv(self, sigma):
        sigma = torch.as_tensor(sigma)
        return ((self.beta_min ** 2 + 2 * self.beta_d * (1 + sigma ** 2).log()).sqrt() - self.beta_min) / self.beta_d

    def coefs(self, sigma):
        return 1, -sigma, 1 / (sigma ** 2 + 1).sqrt(), (self.M - 1) * self.sigma_inv(sigma)


class VEPrecond(Precond):
    def __init__(self, img_resolution, img_channels, label_dim=0, use_fp16=False, sigma_min=0.02, sigma_max=100,
                 model_type='SongUNet', **model_kwargs):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, model_kwargs,
                         dict(sigma_min=sigma_min, sigma_max=sigma_max))
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    def coefs(self, sigma):
        return 1, sigma, 1, (0.5 * sigma).log()


class iDDPMPrecond(Precond):
    def __init__(self, img_resolution, img_channels, label_dim=0, use_fp16=False, C_1=0.001, C_2=0.008, M=1000,
                 model_type='DhariwalUNet', **model_kwargs):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, model_kwargs,
                         dict(C_1=C_1, C_2=C_2, M=M), out_mult=2)  # the learned-variance half of F is discarded
        self.C_1, self.C_2, self.M = C_1, C_2, M
        u = torch.zeros(M + 1)
        for j in range(M, 0, -1):
            u[j - 1] = ((u[j] ** 2 + 1) / (self.alpha_bar(j - 1) / self.alpha_bar(j)).clip(min=C_1) - 1).sqrt()
        self.register_buffer('u', u)
        self.sigma_min, self.sigma_max = float(u[M - 1]), float(u[0])

    def alpha_bar(self, j):
        return (0.5 * np.pi * torch.as_tensor(j) / self.M / (self.C_2 + 1)).sin() ** 2

    def round_sigma(self, sigma, return_index=False):
        sigma = torch.as_tensor(sigma)
        index = torch.cdist(sigma.to(self.u.device).to(torch.float32).reshape(1, -1, 1), self.u.reshape(1, -1, 1)).argmin(2)
        result = index if return_index else self.u[index.flatten()].to(sigma.dtype)
        return result.reshape(sigma.shape).to(sigma.device)

    def coefs(self, sigma):
        c_noise = self.M - 1 - self.round_sigma(sigma, return_index=True).to(torch.float32)
        return 1, -sigma, 1 / (sigma ** 2 + 1).sqrt(), c_noise


PRECONDS = dict(EDMPrecond=EDMPrecond, VPPrecond=VPPrecond, VEPrecond=VEPrecond, iDDPMPrecond=iDDPMPrecond)

# ----------------------------------------------------------------------------------------------------------------
# The D2O one-step generator (the official D2O code's training/networks.py, D2OPrecond): G(z, y) = c_skip x + c_out
# F(c_in x, c_noise, y) with x = sigma z, sigma = 80, and the consistency-model eps-shift of c_skip/c_out (eps = 2e-3).
# Another sigma (train.py --gsigma) evaluates the teacher lower, as SiD does (sigma_init 2.5; arXiv 2404.04057). It
# holds the wrapped net's U-Net as `model`, so its state_dict has exactly the `model.*` keys of an EDM network and
# loads into EDMPrecond unchanged.

class D2OGenerator(torch.nn.Module):
    def __init__(self, net, sigma=80.0, eps=2e-3):
        super().__init__()
        self.model = net.model
        self.img_resolution, self.img_channels, self.label_dim = net.img_resolution, net.img_channels, net.label_dim
        self.init_kwargs, self.precond = dict(net.init_kwargs), type(net).__name__
        s = float(net.round_sigma(torch.tensor(sigma, dtype=torch.float64)))
        c_skip, c_out, c_in, c_noise = net.coefs(torch.tensor(s, dtype=torch.float64))
        if isinstance(net, EDMPrecond):
            sd = net.sigma_data
            c_skip = sd ** 2 / ((s - eps) ** 2 + sd ** 2)
            c_out = (s - eps) * sd / math.sqrt(s ** 2 + sd ** 2)  # the denominator uses sigma, not sigma - eps
        self.sigma = s
        self.c_skip, self.c_out, self.c_in, self.c_noise = (float(c) for c in (c_skip, c_out, c_in, c_noise))

    def forward(self, z, class_labels=None):
        x = z.to(torch.float32) * self.sigma
        c_noise = torch.full([x.shape[0]], self.c_noise, device=x.device)
        F_x = self.model(x * self.c_in, c_noise, class_labels=_class_labels(self.label_dim, class_labels, x.device))
        return self.c_skip * x + self.c_out * F_x[:, :self.img_channels].to(torch.float32)


def generator_net(net):
    """The network as D2O fine-tunes it: without EDM's augment layer (D2O never feeds augment labels, and DDP needs
    every parameter to be used) and with dropout 0 (the official D2O configs pass --dropout=0 over EDM's 0.10/0.13;
    the generator trains in train mode, where dropout would be active)."""
    kwargs = dict(net.init_kwargs, augment_dim=0, dropout=0)
    if kwargs == net.init_kwargs:
        return net
    new = type(net)(**kwargs)
    new.load_state_dict({k: v for k, v in net.state_dict().items() if 'map_augment' not in k})
    return new.train()

# ----------------------------------------------------------------------------------------------------------------
# The nine official EDM checkpoints (all EDMPrecond; 'vp'/'ve' name the DDPM++/NCSN++ architecture; EDM's README lists them).

EDM_URL = 'https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/'
DDPMPP = dict(model_type='SongUNet', embedding_type='positional', encoder_type='standard', decoder_type='standard',
              channel_mult_noise=1, resample_filter=[1, 1], model_channels=128, channel_mult=[2, 2, 2])
NCSNPP = dict(model_type='SongUNet', embedding_type='fourier', encoder_type='residual', decoder_type='standard',
              channel_mult_noise=2, resample_filter=[1, 3, 3, 1], model_channels=128, channel_mult=[2, 2, 2])
ADM = dict(model_type='DhariwalUNet', model_channels=192, channel_mult=[1, 2, 3, 4])


def _official(arch, res, label_dim, dropout, **kw):
    return dict(arch, img_resolution=res, img_channels=3, label_dim=label_dim, dropout=dropout, **kw)


OFFICIAL = {
    'edm-cifar10-32x32-cond-vp':   _official(DDPMPP, 32, 10, 0.13, augment_dim=9, use_fp16=False),
    'edm-cifar10-32x32-cond-ve':   _official(NCSNPP, 32, 10, 0.13, augment_dim=9, use_fp16=False),
    'edm-cifar10-32x32-uncond-vp': _official(DDPMPP, 32, 0, 0.13, augment_dim=9, use_fp16=False),
    'edm-cifar10-32x32-uncond-ve': _official(NCSNPP, 32, 0, 0.13, augment_dim=9, use_fp16=False),
    'edm-ffhq-64x64-uncond-vp':    _official(dict(DDPMPP, channel_mult=[1, 2, 2, 2]), 64, 0, 0.05, augment_dim=9, use_fp16=False),
    'edm-ffhq-64x64-uncond-ve':    _official(dict(NCSNPP, channel_mult=[1, 2, 2, 2]), 64, 0, 0.05, augment_dim=9, use_fp16=False),
    'edm-afhqv2-64x64-uncond-vp':  _official(dict(DDPMPP, channel_mult=[1, 2, 2, 2]), 64, 0, 0.25, augment_dim=9, use_fp16=False),
    'edm-afhqv2-64x64-uncond-ve':  _official(dict(NCSNPP, channel_mult=[1, 2, 2, 2]), 64, 0, 0.25, augment_dim=9, use_fp16=False),
    'edm-imagenet-64x64-cond-adm': _official(ADM, 64, 1000, 0.10, use_fp16=True),
}


# The toy teacher's architecture (assets/toy-edm.pt; train.py --init random --arch toy).
TOY = dict(model_type='SongUNet', img_resolution=16, img_channels=3, label_dim=4, model_channels=32, channel_mult=[1, 2, 2],
           num_blocks=2, attn_resolutions=[8], dropout=0.0, embedding_type='positional', encoder_type='standard',
           decoder_type='standard', channel_mult_noise=1, resample_filter=[1, 1])
# The toy net at other widths, for the toy study of teacher size (16, 24, 64 channels: 0.44M, 0.99M, 6.99M parameters;
# a width must keep every concatenated decoder input a multiple of GroupNorm's 32 groups, which rules out 48).
ARCHS = dict(OFFICIAL, toy=TOY, **{f'toy{width}': dict(TOY, model_channels=width) for width in (16, 24, 64)})  # --arch


def build_edm(name):
    """One of the nine official networks (EDMPrecond), randomly initialised: architecture only, no download."""
    if name not in OFFICIAL:
        raise KeyError(f'unknown EDM network {name!r}; known: {", ".join(OFFICIAL)}')
    return EDMPrecond(**OFFICIAL[name])

def num_params(net):
    return sum(p.numel() for p in net.parameters())


if __name__ == '__main__':
    import argparse
    parser = argparse.ArgumentParser(description="Build EDM's networks (python ckpt.py NAME loads their weights).")
    parser.add_argument('name', nargs='?', help='an official name (see --list)')
    parser.add_argument('--list', action='store_true', help='list the official checkpoints and their URLs')
    args = parser.parse_args()
    if args.list or not args.name:
        for name, kwargs in OFFICIAL.items():
            print(f'{name:30s} {kwargs["model_type"]:13s} {EDM_URL}{name}.pkl')
    else:
        net = build_edm(args.name)
        print(f'{type(net).__name__}/{type(net.model).__name__}: {net.img_resolution}x{net.img_resolution}, '
              f'label_dim {net.label_dim}, {num_params(net):,} parameters, {len(net.state_dict())} tensors')

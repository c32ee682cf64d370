"""The d2o test suite (CPU). Reads fixtures in place from ../shared/fixtures.

    python -m pytest -q test_all.py                 # everything (the README's test command)
    python -m pytest -q test_all.py -k unet         # one area
"""

import collections
import io
import json
import os
import pickle
import sys
import types
import warnings

import numpy as np
import pytest
import torch

import unet

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, '..', 'shared', 'fixtures')
EDM_FIX = ['edm_ddpmpp_cond', 'edm_ncsnpp_uncond', 'edm_adm_cond']
torch.set_num_threads(min(2, torch.get_num_threads()))


def fix(*parts):
    return os.path.join(FIX, *parts)


@pytest.fixture(scope='module', params=EDM_FIX)
def edm_fixture(request):
    name = request.param
    return name, unet.load_edm(fix('edm', name + '.pkl')), dict(np.load(fix('edm', name + '.npz')))

# ---------------------------------------------------------------------------------------------------------------
# unet.py: networks, preconditioners, safe loading, generator

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


def test_unet_refuses_unsafe_pickles(tmp_path):
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
        with pytest.raises(unet.UnsafePickleError, match=needle):
            unet.safe_unpickle(io.BytesIO(pickle.dumps(obj)))
    assert not marker.exists()

    # An unknown module.
    def evil(): pass
    blob = _pickle_with_fake_globals(lambda: Reduce(sys.modules['evilmod'].evil, ()), {'evilmod': _fake_module('evilmod', evil=evil)})
    with pytest.raises(unet.UnsafePickleError, match='evilmod.evil'):
        unet.safe_unpickle(io.BytesIO(blob))

    # An EDM persistence record whose embedded source would write a file: EDM's loader exec()s module_src.
    def _reconstruct_persistent_obj(meta): pass
    fakes = {'torch_utils': _fake_module('torch_utils'),
             'torch_utils.persistence': _fake_module('torch_utils.persistence', _reconstruct_persistent_obj=_reconstruct_persistent_obj)}
    src = f'open({str(marker)!r}, "w").write("pwned")'
    for class_name, error in [('Evil', unet.UnsafePickleError), ('EDMPrecond', ValueError)]:
        meta = dict(type='class', version=6, module_src=src, class_name=class_name, state=dict(_init_kwargs={}))
        blob = _pickle_with_fake_globals(lambda: dict(ema=Reduce(_reconstruct_persistent_obj, (meta,))), fakes)
        path = tmp_path / f'{class_name}.pkl'
        path.write_bytes(blob)
        with pytest.raises(error, match=class_name):
            unet.load_edm(str(path))
        assert not marker.exists()

    # A tensor view past its storage's end.
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        storage = torch.zeros(4).storage()
    with pytest.raises(unet.UnsafePickleError, match='past the end'):
        unet.safe_unpickle(io.BytesIO(pickle.dumps(Reduce(torch._utils._rebuild_tensor_v2,
                                                          (storage, 2, (5,), (1,), False, collections.OrderedDict())))))
    # The same machinery accepts an honest tensor pickle (a second code path: torch's own pickling).
    t = torch.arange(12.0).reshape(3, 4)[1:]
    torch.testing.assert_close(unet.safe_unpickle(io.BytesIO(pickle.dumps(t))), t)


def test_unet_truncated_pickle_is_clear(tmp_path):
    data = open(fix('edm', 'edm_ddpmpp_cond.pkl'), 'rb').read()
    path = tmp_path / 'cut.pkl'
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(pickle.UnpicklingError, match='complete'):
        unet.load_edm(str(path))


def test_unet_our_checkpoint_roundtrip(tmp_path, edm_fixture):
    name, net, ref = edm_fixture
    path = tmp_path / 'net.pt'
    unet.save_checkpoint(str(path), net, trained_from=name)
    assert not list(tmp_path.glob('*.tmp'))
    ckpt = torch.load(str(path), weights_only=True)  # plain tensors and JSON-able metadata only
    json.dumps(ckpt['init_kwargs']), json.dumps(ckpt['meta'])
    net2, meta = unet.read_checkpoint(str(path))
    assert type(net2) is type(net) and meta == dict(trained_from=name)
    for (k, a), (k2, b) in zip(net.state_dict().items(), net2.state_dict().items()):
        assert k == k2 and torch.equal(a, b)


def test_unet_offline_download_message(tmp_path, monkeypatch):
    monkeypatch.setenv('D2O_CACHE', str(tmp_path))
    monkeypatch.setattr(unet.urllib.request, 'urlopen', lambda *a, **k: (_ for _ in ()).throw(OSError('offline')))
    with pytest.raises(RuntimeError) as e:
        unet.load_edm('edm-cifar10-32x32-cond-vp')
    msg = str(e.value)
    assert unet.EDM_URL + 'edm-cifar10-32x32-cond-vp.pkl' in msg and str(tmp_path / 'edm-cifar10-32x32-cond-vp.pkl') in msg
    assert not list(tmp_path.iterdir())  # nothing half-written
    with pytest.raises(FileNotFoundError, match='not found'):
        unet.load_edm(str(tmp_path / 'nope.pkl'))


def test_unet_generator(edm_fixture):
    name, net, ref = edm_fixture
    G = unet.D2OGenerator(net)
    assert list(G.state_dict()) == list(net.state_dict())
    labels = torch.from_numpy(ref['class_labels']) if 'class_labels' in ref else None
    z = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out, den = G(z, labels), net(80 * z, torch.full([4], 80.0), labels)
    assert ((out - den).norm() / den.norm()).item() < 1e-4
    with torch.no_grad():
        assert torch.equal(G(z, labels), out)  # deterministic for a given z
    G.requires_grad_(True).train()
    G(z, labels).square().mean().backward()
    # Every parameter but EDM's augmentation-label layer (inert without augment labels, as in D2O) gets gradient.
    missing = [n for n, p in G.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == (['model.map_augment.weight'] if G.model.map_augment is not None else [])
    net.requires_grad_(False).eval()


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

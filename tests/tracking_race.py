"""N job processes that start at the same instant against one MLflow store, as the jobs of one grid do.

    python tests/tracking_race.py --uri sqlite:////tmp/x/mlflow.db --jobs 8 --rounds 5 [--json FILE]
    python tests/tracking_race.py --uri http://127.0.0.1:PORT ...   (a running ``mlflow server``)

Each round uses a fresh store (a SQLite URI gets a new file per round: ``.../round-K/mlflow.db``) or, for a server,
a fresh experiment. First the runner's part, once (what ``bench.run`` does before it submits anything:
:func:`bench.run.prepare_tracking`); then ``--jobs`` processes, forked from this one and released together by a
barrier, each do what a job does to the store at its start and at its end (:func:`bench.job.open_job_run`: create
the run with its tags and log its params), then, once every job has loaded its data (a second barrier), log
the training set as a dataset input (the same data set, so the same dataset row, for every job), then a few
metrics, the evaluation's tags and the end of the run). Then every run is
read back: FINISHED, with every param, tag, metric and the dataset input.

Prints, as its last line, ``{"rounds": [{"failures": [...], "runs_ok": n, ...}], "failures": total}``; exit 0 when
nothing failed. Every store access happens in a forked child (the parent never opens a connection a child could
inherit).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

N_METRICS = 5


def _configs(n: int):
    # Imported once here, not in every forked job (no store is opened: a child inherits no connection).
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
    from mlflow.tracking import MlflowClient  # noqa: F401

    from bench import job, registry  # noqa: F401

    return [registry.resolve({"variant": "wavediff", "dataset": "digits", "scale": "tiny", "seed": i,
                              "device": "cpu"}) for i in range(n)]


def _prepare(uri: str, experiment: str, q) -> None:
    try:
        os.environ["MLFLOW_TRACKING_URI"] = uri
        from bench.run import prepare_tracking

        parent = prepare_tracking(experiment, "race", "race-grid", "local")
        q.put(("ok", parent))
    except BaseException as e:  # noqa: BLE001  (reported to the parent)
        q.put(("error", f"prepare: {type(e).__name__}: {e}\n{traceback.format_exc()}"))


def _job(uri: str, experiment: str, parent: str, cfg, workdir: str, barrier, q) -> None:
    try:
        os.environ["MLFLOW_TRACKING_URI"] = uri
        from bench import registry
        from bench.job import open_job_run
        from bench.tracking import dataset_input

        jh, th = registry.job_hash(cfg), registry.train_hash(cfg)
        run_file = Path(workdir) / f"run-{jh}.json"
        train_set = dataset_input("digits", "train", "0123456789abcdef", 1797, (1, 32, 32), "sklearn digits",
                                  "code", context="train", used_for="training and the metrics' reference set")
        barrier.wait(timeout=60)
        tracker = open_job_run(cfg, jh, th, experiment, parent, {"grid": "race"}, run_file, device="cpu")
        barrier.wait(timeout=60)  # the jobs' data sets are loaded at the same moment
        tracker.log_datasets([train_set])
        for step in range(1, N_METRICS + 1):
            tracker.log_metrics({"loss_d": 1.0 / step, "loss_g": 2.0 / step}, step=step)
        tracker.flush()
        tracker.log_metrics({"fid": 10.0 + cfg.seed}, step=N_METRICS)
        tracker.set_tags({"metric_backbone_fid": "digits-classifier", "eval_precision": "fp32"})
        tracker.end("FINISHED")
        q.put(("ok", tracker.run_id))
    except BaseException as e:  # noqa: BLE001
        barrier.abort()  # the others do not wait for this one
        q.put(("error", f"job seed={cfg.seed}: {type(e).__name__}: {str(e)[:300]}"))


def _check(uri: str, experiment: str, configs, q) -> None:
    """Every job's run: FINISHED, all its params, tags, metric history and the dataset input."""
    try:
        from mlflow.tracking import MlflowClient

        from bench import registry
        from bench.tracking import flatten

        client = MlflowClient(uri)
        exp = client.get_experiment_by_name(experiment)
        runs = client.search_runs([exp.experiment_id], "tags.grid = 'race'") if exp else []
        runs = [r for r in runs if r.data.tags.get("kind") != "grid"]
        by_hash = {r.data.tags.get("job_hash"): r for r in runs}
        problems = []
        if len(runs) != len(configs):
            problems.append(f"{len(runs)} job runs in the store, expected {len(configs)}")
        for cfg in configs:
            run = by_hash.get(registry.job_hash(cfg))
            if run is None:
                problems.append(f"seed {cfg.seed}: no run")
                continue
            if run.info.status != "FINISHED":
                problems.append(f"seed {cfg.seed}: run {run.info.status}")
            if run.data.params != {k: v[:6000] for k, v in flatten(cfg).items()}:
                problems.append(f"seed {cfg.seed}: params differ")
            for tag in ("variant", "job_hash", "train_hash", "metric_backbone_fid", "mlflow.parentRunId"):
                if tag not in run.data.tags:
                    problems.append(f"seed {cfg.seed}: tag {tag} missing")
            steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss_d"))
            if steps != list(range(1, N_METRICS + 1)):
                problems.append(f"seed {cfg.seed}: loss_d steps {steps}")
            if run.data.metrics.get("fid") != 10.0 + cfg.seed:
                problems.append(f"seed {cfg.seed}: fid {run.data.metrics.get('fid')}")
            names = [d.dataset.name for d in run.inputs.dataset_inputs]
            if names != ["digits-train"]:
                problems.append(f"seed {cfg.seed}: dataset inputs {names}")
        q.put(("ok", problems))
    except BaseException as e:  # noqa: BLE001
        q.put(("error", [f"check: {type(e).__name__}: {e}"]))


def _in_child(ctx, target, *args, timeout: float = 120):
    q = ctx.Queue()
    p = ctx.Process(target=target, args=(*args, q))
    p.start()
    try:
        return q.get(timeout=timeout)
    finally:
        p.join(10)


def one_round(uri: str, experiment: str, configs, workdir: Path) -> dict:
    ctx = mp.get_context("fork")
    status, parent = _in_child(ctx, _prepare, uri, experiment)
    if status != "ok":
        return {"failures": [parent], "runs_ok": 0}
    barrier, q = ctx.Barrier(len(configs)), ctx.Queue()
    workdir.mkdir(parents=True, exist_ok=True)
    procs = [ctx.Process(target=_job, args=(uri, experiment, parent, cfg, str(workdir), barrier, q))
             for cfg in configs]
    t0 = time.monotonic()
    for p in procs:
        p.start()
    outcomes = []
    for _ in procs:
        try:
            outcomes.append(q.get(timeout=120))
        except Exception:  # noqa: BLE001
            outcomes.append(("error", "a job process reported nothing within 120 s"))
    for p in procs:
        p.join(10)
    seconds = time.monotonic() - t0
    failures = [msg for status, msg in outcomes if status != "ok"]
    status, problems = _in_child(ctx, _check, uri, experiment, configs)
    return {"failures": failures, "problems": problems, "runs_ok": len(configs) - len(failures), "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--uri", required=True, help="sqlite:///<dir>/mlflow.db (a fresh file per round) or http://...")
    ap.add_argument("--workdir", required=True, help="run files of the jobs (a fresh folder per round)")
    ap.add_argument("--jobs", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    configs = _configs(args.jobs)
    rounds = []
    for k in range(args.rounds):
        uri, experiment = args.uri, f"race-{k}-{os.getpid()}"
        if uri.startswith("sqlite:///"):
            db = Path(uri[len("sqlite:///"):])
            db = db.parent / f"round-{k}" / db.name
            db.parent.mkdir(parents=True, exist_ok=True)
            uri = f"sqlite:///{db}"
            os.environ["WAVEBENCH_ARTIFACT_ROOT"] = str(db.parent / "artifacts")
        rounds.append(one_round(uri, experiment, configs, Path(args.workdir) / f"round-{k}"))
    total = sum(len(r["failures"]) + len(r.get("problems") or []) for r in rounds)
    out = json.dumps({"rounds": rounds, "failures": total})
    print(out)
    if args.json:
        Path(args.json).write_text(out)
    return 0 if total == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

"""Screenshots of the MLflow UI as a user of this suite sees it, taken with headless Chromium.

    python scripts/ui-screenshots.py [--store URI] [--experiment NAME] [--out DIR] [--port N]

Without ``--store`` it fills a temporary SQLite store with one tiny grid first (wavediff and ddgan, micro-sized,
20 training steps on the embedded digits, through ``bench.run`` with the local executor; about a minute), so the
pictures show what every grid logs: the parent run and its job runs, the data sets, the system metrics. With
``--store`` (e.g. ``sqlite:///$PWD/mlflow.db``, the store ``make demo`` fills) it shows the latest grid of that
store, or of ``--experiment``. It starts ``mlflow server`` on 127.0.0.1 for that store, opens the URLs the suite
prints (bench.tracking.runs_table_url / run_url) and writes, under ``--out`` (default reports/out/ui):

- ``runs-table.png``: the experiment's runs table (``?workflowType=machine_learning``), job runs nested under
  the grid's parent run
- ``grid-runs.png``: the same table filtered to the grid's job runs (what a grid prints at its end)
- ``run-overview.png``: one job run's page: parameters, metrics, tags and its data sets (train, evaluation)
- ``run-system-metrics.png``: that run's "System metrics" tab (CPU, memory, ... while it ran)

Needs Chromium (Debian: ``apt-get install -y chromium``; or ``--chromium PATH``). Everything stays on 127.0.0.1.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import socket
import subprocess
import struct
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_chromium(explicit: str | None) -> str:
    for c in ([explicit] if explicit else []) + ["chromium", "chromium-browser", "google-chrome", "chrome"]:
        path = shutil.which(c) if c else None
        if path:
            return path
    raise SystemExit("no Chromium found: apt-get install -y chromium (or pass --chromium PATH)")


def fill_store(workdir: Path) -> str:
    """A tiny grid run into a fresh SQLite store under ``workdir``; returns the store's URI."""
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    os.environ.update({"MLFLOW_TRACKING_URI": uri, "WAVEBENCH_ARTIFACT_ROOT": str(workdir / "artifacts"),
                       "WAVEBENCH_RUNS": str(workdir / "runs"), "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1"})
    import yaml

    micro = {"dataset": "digits", "scale": "tiny", "device": "cpu", "train.max_steps": 20, "train.batch_size": 16,
             "train.log_every": 2, "model.generator.nf": 16, "model.generator.ch_mult": [1, 2],
             "model.generator.n_mlp": 1, "model.generator.z_emb_dim": 32, "model.generator.nz": 16,
             "model.discriminator.ngf": 8, "model.discriminator.num_layers": 2,
             "model.discriminator.t_emb_dim": 32, "eval.metrics.num_samples": 100, "eval.sample_batch_size": 100,
             "eval.grid_images": 16, "eval.timing.batch_size": 10, "eval.timing.warmup": 1,
             "eval.timing.repeats": 3, "eval.metrics.kid_subsets": 10, "eval.every_steps": 10,
             "eval.every_num_samples": 50}
    grid = {"name": "ui-screenshots", "experiment": "ui-screenshots", "defaults": micro,
            "axes": {"variant": ["wavediff", "ddgan"]}, "executor": {"name": "local", "timeout_min": 20}}
    path = workdir / "ui-screenshots.yaml"
    path.write_text(yaml.safe_dump(grid))
    from bench import run

    print(f"filling {uri} with a tiny grid ({path})", flush=True)
    if run.main(["--grid", str(path)]) != 0:
        raise SystemExit("the tiny grid failed; see its output above")
    return uri


def latest_grid(uri: str, experiment: str | None):
    """(experiment id, parent run id or None, its job runs, one job run) of the latest grid of the store (or of
    ``experiment``); without a grid, the latest run alone."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exps = [client.get_experiment_by_name(experiment)] if experiment else client.search_experiments()
    ids = [e.experiment_id for e in exps if e is not None]
    if not ids:
        raise SystemExit(f"no experiment {experiment!r} in {uri}" if experiment else f"no experiment in {uri}")
    parents = client.search_runs(ids, "tags.kind = 'grid'", max_results=1, order_by=["attributes.start_time DESC"])
    if parents:
        p = parents[0]
        kids = client.search_runs([p.info.experiment_id], f"tags.`mlflow.parentRunId` = '{p.info.run_id}'",
                                  order_by=["attributes.start_time DESC"])
        return p.info.experiment_id, p.info.run_id, kids, (kids[0] if kids else p)
    runs = client.search_runs(ids, max_results=1, order_by=["attributes.start_time DESC"])
    if not runs:
        raise SystemExit(f"no runs in {uri}")
    return runs[0].info.experiment_id, None, runs, runs[0]


def start_server(uri: str, artifacts: str | None, port: int, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", "127.0.0.1",
           "--port", str(port), "--workers", "1"]
    if artifacts:
        cmd += ["--default-artifact-root", artifacts]
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"mlflow server exited ({proc.returncode}); its log: {log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"mlflow server did not answer on 127.0.0.1:{port} within 90 s; its log: {log}")


class DevTools:
    """Headless Chromium driven through the DevTools protocol over a WebSocket (standard library only): open a URL,
    wait in real time while the page fetches its data and draws its charts, capture a PNG."""

    def __init__(self, chromium: str, profile: Path):
        self.proc = subprocess.Popen([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                                      "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
                                      "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        port = None
        deadline = time.monotonic() + 60
        while port is None and time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line and self.proc.poll() is not None:
                raise SystemExit(f"Chromium exited ({self.proc.returncode}) before it opened DevTools")
            m = re.search(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/", line)
            port = int(m.group(1)) if m else None
        if port is None:
            raise SystemExit("Chromium did not open its DevTools port within 60 s")
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()  # keep draining its log
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            page = next(t for t in json.load(r) if t["type"] == "page")
        self.sock = self._connect(page["webSocketDebuggerUrl"])
        self.next_id = 0

    @staticmethod
    def _connect(url: str) -> socket.socket:
        host, port, path = re.match(r"ws://([^:/]+):(\d+)(/.*)", url).groups()
        sock = socket.create_connection((host, int(port)), timeout=120)
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(1)
        if b" 101 " not in head.split(b"\r\n")[0]:
            raise SystemExit(f"DevTools refused the WebSocket: {head.decode(errors='replace')}")
        return sock

    def _recv_exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise SystemExit("DevTools closed the connection")
            buf += chunk
        return buf

    def _recv(self) -> dict:
        data = b""
        while True:
            b0, b1 = self._recv_exact(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._recv_exact(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._recv_exact(8))[0]
            data += self._recv_exact(n)
            if b0 & 0x80:  # the final fragment
                return json.loads(data)

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        payload = json.dumps({"id": self.next_id, "method": method, "params": params}).encode()
        mask = os.urandom(4)
        n = len(payload)
        head = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack(">H", n)
                                if n < 1 << 16 else bytes([0x80 | 127]) + struct.pack(">Q", n))
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
        while True:  # skip events until our answer
            msg = self._recv()
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise SystemExit(f"DevTools {method}: {msg['error']}")
                return msg.get("result", {})

    def text(self) -> str:
        """The page's visible text."""
        res = self.call("Runtime.evaluate", expression="document.body ? document.body.innerText : ''",
                        returnByValue=True)
        return res.get("result", {}).get("value", "")

    def screenshot(self, url: str, path: Path, width: int, height: int, wait_s: float,
                   expect: tuple[str, ...] = ()) -> list[str]:
        """Open ``url``, wait until its text shows every string of ``expect`` (at most ``wait_s`` seconds, and at
        least 3 s for the charts to draw), save a PNG; returns the expected strings that never appeared."""
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                  mobile=False)
        self.call("Page.navigate", url=url)
        start = time.monotonic()
        missing = list(expect)
        while time.monotonic() - start < wait_s:
            time.sleep(1.0)
            text = self.text()
            missing = [e for e in expect if e not in text]
            if not missing and time.monotonic() - start >= 3.0:
                break
        time.sleep(2.0)  # the last charts and images
        png = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(png))
        print(f"{path}  <- {url}" + (f"  (never showed: {', '.join(missing)})" if missing else ""), flush=True)
        return missing

    def close(self) -> None:
        try:
            self.sock.close()
        finally:
            self.proc.terminate()
            self.proc.wait(timeout=30)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python scripts/ui-screenshots.py", description=__doc__.split("\n")[0])
    ap.add_argument("--store", default=None, help="MLflow tracking URI (default: a temporary store with a tiny grid)")
    ap.add_argument("--artifacts", default=None, help="artifact root of --store (default: WAVEBENCH_ARTIFACT_ROOT "
                                                      "or <repo>/mlartifacts)")
    ap.add_argument("--experiment", default=None, help="show this experiment's latest grid (default: the store's)")
    ap.add_argument("--out", default=str(ROOT / "reports" / "out" / "ui"), help="where the PNGs go")
    ap.add_argument("--port", type=int, default=0, help="port of the temporary mlflow server (default: a free one)")
    ap.add_argument("--chromium", default=None, help="Chromium executable (default: chromium on PATH)")
    ap.add_argument("--wait-s", type=float, default=30.0, help="seconds a page may take to show its runs")
    args = ap.parse_args(argv)
    chromium = find_chromium(args.chromium)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ui-screenshots-") as tmp:
        tmp = Path(tmp)
        if args.store:
            uri = args.store
            artifacts = args.artifacts or os.environ.get("WAVEBENCH_ARTIFACT_ROOT") or str(ROOT / "mlartifacts")
        else:
            uri, artifacts = fill_store(tmp), str(tmp / "artifacts")
        from bench.tracking import run_url, runs_table_url

        exp_id, parent, kids, run = latest_grid(uri, args.experiment)
        port = args.port or free_port()
        server = start_server(uri, artifacts, port, tmp / "server.log")
        base = f"http://127.0.0.1:{port}"
        try:
            names = tuple(k.info.run_name for k in kids)
            datasets = tuple(f"{d.dataset.name} ({d.dataset.digest})" for d in run.inputs.dataset_inputs)
            pages = [("runs-table.png", runs_table_url(exp_id, None, base), 900, names)]
            if parent:
                pages.append(("grid-runs.png", runs_table_url(exp_id, parent, base), 900, names))
            page = run_url(exp_id, run.info.run_id, base)
            pages += [("run-overview.png", page + "?workflowType=machine_learning", 1700,
                       (run.info.run_name, *datasets)),
                      ("run-system-metrics.png", page + "/system-metrics?workflowType=machine_learning", 1300,
                       ("cpu_utilization_percentage",) if "system_metrics" in run.data.tags else ())]
            browser = DevTools(chromium, tmp / "chromium-profile")
            missing = []
            try:
                for name, url, height, expect in pages:
                    missing += [f"{name}: {m}" for m in browser.screenshot(url, out / name, 1600, height, args.wait_s,
                                                                         expect)]
            finally:
                browser.close()
        finally:
            os.killpg(server.pid, 15)
            server.wait(timeout=30)
    if missing:
        print("the UI did not show: " + "; ".join(missing), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

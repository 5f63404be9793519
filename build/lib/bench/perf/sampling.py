"""Section 2, ``sampling``, at the papers' CIFAR-10 configurations: (a) the whole T=4 sampler of ddgan / wavediff /
wavediff-wg as evaluation runs it (batch 100, fixed x_T; CUDA graphs on a GPU); (b) one denoiser call ("per step")
of ddpm / wddm-unet-l1/-l2 / wddm-ukan-l1/-l2; (c) dvdp vs ddpm per sample (one call at each stage resolution,
weighted by the sampler's number of calls per stage); (d) on CUDA, the same samplers and the DDPM denoiser loop
with CUDA graphs vs eager, with the largest difference between their samples. Achieved TFLOP/s and, on GPUs with a
published peak, its share of that peak (the TF32 peak for fp32 with TF32 convolutions)."""
from __future__ import annotations

import collections
from typing import Callable

import torch

from bench import registry
from bench.evaluate import count_flops
from bench.perf.config import REFERENCES, PerfConfig
from bench.perf.timing import device_peak, fmt, interleaved, paired_ratio, ratio, say, stat, summarize, versus
from bench.sampling import EvalSampler

__all__ = ["GAN_GROUP", "STEP_GROUP", "DVDP_VARIANT", "config", "build", "run", "render", "metrics"]

GAN_GROUP = ("ddgan", "wavediff", "wavediff-wg")                  # baseline first
STEP_GROUP = ("ddpm", "wddm-unet-l1", "wddm-unet-l2", "wddm-ukan-l1", "wddm-ukan-l2")
DVDP_VARIANT = "dvdp"


def _of_peak(gflops_per_s: float, device: torch.device, numerics: str | None = None) -> dict:
    """Achieved TFLOP/s, and its share of the GPU's published dense peak for the numerics in use."""
    out = {"tflops_per_s": gflops_per_s / 1e3}
    if device.type == "cuda":
        numerics = numerics or ("tf32" if torch.backends.cudnn.allow_tf32 else "fp32")
        peak, source = device_peak(torch.cuda.get_device_name(device), numerics)
        out.update(peak_tflops=peak, peak_source=source,
                   pct_of_peak=None if peak is None else 100.0 * gflops_per_s / 1e3 / peak)
    return out


def config(name: str, pc: PerfConfig, dataset: str = "cifar10"):
    return registry.resolve({"variant": name, "dataset": dataset, "scale": pc.scale}, check_paths=False)


def build(cfg, pc: PerfConfig, device: torch.device):
    torch.manual_seed(pc.seed)
    return registry.build(cfg).to(device)


def _meta_flops(cfg, fn: Callable) -> int:
    """FLOPs of ``fn(system)`` with the system built on the meta device (shapes only, no arithmetic)."""
    with torch.device("meta"):
        return fn(registry.build(cfg))


def _net_call_flops(system, shape: tuple[int, ...]) -> int:
    x, t = torch.zeros(shape), torch.zeros(shape[0], dtype=torch.long)
    return count_flops(system.sampling_network, x, t)


def _dvdp_schedule(system, image_size: int) -> dict[int, int]:
    """Network calls of one DVDP sampling run per state resolution (side), from the sampler's own timesteps."""
    proc = system.process
    steps = None if system.sampler == "ddpm" else system.steps
    seq = proc.timesteps(system.sampler, steps, system.sampler_kwargs.get("spacing", "linear"))
    return dict(collections.Counter(proc.resolution_at(t, image_size) for t in seq))


def run(pc: PerfConfig, device: torch.device) -> dict:
    B = pc.sample_batch
    out: dict = {"batch": B, "rounds": pc.repeats, "sampler_rounds": pc.sampler_repeats, "warmup": pc.warmup,
                 "scale": pc.scale}

    # (a) GAN samplers: the whole T-step sampler including the final inverse transform, fixed x_T and noise.
    fns, info = {}, {}
    for name in GAN_GROUP:
        cfg = config(name, pc)
        system = build(cfg, pc, device)
        g = torch.Generator(device=device).manual_seed(pc.seed)
        x_T = torch.randn(system.state_shape(B), generator=g, device=device)
        sampler = EvalSampler(system, device)  # what a job's evaluation times: CUDA graphs on a GPU
        fns[name] = (lambda f, x: lambda: f(x, rng=torch.Generator(device=device).manual_seed(pc.seed)))(
            sampler, x_T)
        flops = _meta_flops(cfg, lambda s: count_flops(s.sample, torch.zeros(s.state_shape(1))))
        info[name] = {"gflops_per_sample": flops / 1e9, "nfe": system.nfe, "state": list(system.state_shape(1)[1:]),
                      "params_generator": sum(p.numel() for p in system.G.parameters())}
    say(f"sampling: {', '.join(GAN_GROUP)} (whole sampler, batch {B}, {pc.warmup} + {pc.sampler_repeats} rounds)")
    base = GAN_GROUP[0]
    for name, (s, speedup) in versus(interleaved(fns, device, pc.sampler_repeats, pc.warmup), base).items():
        info[name].update(seconds=s, gflops_per_s=info[name]["gflops_per_sample"] * B / s["median"],
                          speedup_vs_baseline=speedup, **_of_peak(info[name]["gflops_per_sample"] * B / s["median"],
                                                                  device))
    out["gan"] = {"baseline": base, "variants": info, "rounds": pc.sampler_repeats,
                  "cuda_graphs": sampler.protocol()["sampler_cuda_graphs"]}
    del fns

    # (b) one denoiser call (one sampler step) of ddpm / WDDM, and DVDP's calls at each stage resolution.
    fns, info = {}, {}
    systems = {}
    for name in STEP_GROUP:
        cfg = config(name, pc)
        system = systems[name] = build(cfg, pc, device)
        net = system.sampling_network.eval()
        shape = system.state_shape(B)
        x = torch.randn(shape, generator=torch.Generator().manual_seed(pc.seed)).to(device)
        t = torch.full((B,), system.diffusion.num_timesteps // 2, dtype=torch.long, device=device)
        fns[name] = (lambda n, a, b: lambda: n(a, b))(net, x, t)
        flops = _meta_flops(cfg, lambda s: _net_call_flops(s, s.state_shape(1)))
        info[name] = {"gflops_per_call_per_sample": flops / 1e9, "nfe": system.nfe, "state": list(shape[1:]),
                      "params_denoiser": sum(p.numel() for p in net.parameters())}
    cfg = config(DVDP_VARIANT, pc)
    dvdp = build(cfg, pc, device)
    dnet = dvdp.sampling_network.eval()
    size, ch = cfg.model.denoiser.image_size, cfg.model.denoiser.in_channels
    calls = _dvdp_schedule(dvdp, size)
    stage_flops = _meta_flops(cfg, lambda s: {r: _net_call_flops(s, (1, ch, r, r)) for r in calls})
    for r in sorted(calls, reverse=True):
        x = torch.randn((B, ch, r, r), generator=torch.Generator().manual_seed(pc.seed)).to(device)
        t = torch.full((B,), dvdp.diffusion.num_timesteps // 2, dtype=torch.long, device=device)
        fns[f"{DVDP_VARIANT}@{r}"] = (lambda n, a, b: lambda: n(a, b))(dnet, x, t)
    say(f"sampling: one denoiser call of {', '.join(fns)} (batch {B}, {pc.warmup} + {pc.repeats} rounds)")
    times = interleaved(fns, device, pc.repeats, pc.warmup)
    base = STEP_GROUP[0]
    for name, (s, speedup) in versus({n: times[n] for n in STEP_GROUP}, base).items():
        info[name].update(seconds=s, gflops_per_s=info[name]["gflops_per_call_per_sample"] * B / s["median"],
                          speedup_vs_baseline=speedup, projected_sampler_s=info[name]["nfe"] * s["median"],
                          **_of_peak(info[name]["gflops_per_call_per_sample"] * B / s["median"], device))
    out["step"] = {"baseline": base, "variants": info}

    # (c) DVDP vs DDPM per sample: sum over resolutions of (calls at that resolution) x (seconds per call) / B.
    ddpm_nfe = systems[base].nfe
    per_round_dvdp = [sum(n * times[f"{DVDP_VARIANT}@{r}"][i] for r, n in calls.items()) / B
                      for i in range(pc.repeats)]
    per_round_ddpm = [ddpm_nfe * t / B for t in times[base]]
    dvdp_flops = sum(n * stage_flops[r] for r, n in calls.items())
    ddpm_flops = ddpm_nfe * info[base]["gflops_per_call_per_sample"] * 1e9
    out["dvdp"] = {
        "calls_per_resolution": {str(r): n for r, n in sorted(calls.items(), reverse=True)},
        "seconds_per_call": {str(r): summarize(times[f"{DVDP_VARIANT}@{r}"]) for r in calls},
        "gflops_per_call_per_sample": {str(r): f / 1e9 for r, f in stage_flops.items()},
        "dvdp_s_per_sample": summarize(per_round_dvdp), "ddpm_s_per_sample": summarize(per_round_ddpm),
        "dvdp_gflops_per_sample": dvdp_flops / 1e9, "ddpm_gflops_per_sample": ddpm_flops / 1e9,
        "ddpm_nfe": ddpm_nfe, "sampler": dvdp.sampler, "turning_points": [list(tp) for tp in
                                                                           cfg.model.process.turning_points],
        "speedup_vs_ddpm": paired_ratio(per_round_ddpm, per_round_dvdp),
        "flop_ratio": ddpm_flops / dvdp_flops,
    }
    out["graphs"] = _graphs_vs_eager(pc, device)
    return out


LOOP_WARMUP = 2  # warm-up rounds of the DDPM denoiser loop in the CUDA-graphs comparison


def _graphs_vs_eager(pc: PerfConfig, device: torch.device) -> dict:
    """CUDA graphs vs eager for the GAN samplers and the DDPM denoiser loop (DDIM, ``pc.ddpm_loop_steps`` steps:
    one denoiser call and the update per step), interleaved; the samples of both arms are compared once."""
    if device.type != "cuda":
        return {"skipped": f"CUDA graphs need a CUDA device (this run: {device.type})"}
    B = pc.sample_batch
    arms: dict[str, Callable[[], object]] = {}
    info: dict[str, dict] = {}
    samplers = {}
    loop = f"ddpm (DDIM, {pc.ddpm_loop_steps} steps)"
    for name in GAN_GROUP + (loop,):
        cfg = config(name, pc) if name != loop else registry.resolve(
            {"variant": "ddpm", "dataset": "cifar10", "scale": pc.scale, "eval.sampler": "ddim",
             "eval.steps": pc.ddpm_loop_steps}, check_paths=False)
        system = build(cfg, pc, device)
        x_T = torch.randn(system.state_shape(B), generator=torch.Generator().manual_seed(pc.seed)).to(device)
        flops = count_flops(system.sample, x_T[:1], rng=torch.Generator(device=device).manual_seed(0)) / 1e9
        for arm, graphs in (("eager", False), ("graphs", True)):
            f = samplers[(name, arm)] = EvalSampler(system, device, cuda_graphs=graphs)
            arms[f"{name}|{arm}"] = (lambda f, x: lambda: f(x, rng=torch.Generator(device=device).manual_seed(0)))(
                f, x_T)
        a, b = (samplers[(name, arm)](x_T, rng=torch.Generator(device=device).manual_seed(0)) for arm in
                ("eager", "graphs"))
        info[name] = {"gflops_per_sample": flops, "max_abs_diff": (a - b).abs().max().item(),
                      "status": samplers[(name, "graphs")].protocol()["sampler_cuda_graphs"]}
    # One DDPM loop call is ddpm_loop_steps denoiser calls (1-2 s at batch 100 on an H200): it needs fewer warm-up
    # rounds than a 4-step GAN sampler (the first captures the graphs), and its rounds are timed on their own.
    loop_warmup = min(pc.warmup, LOOP_WARMUP)
    say(f"sampling: CUDA graphs vs eager, {', '.join(info)} (batch {B}, {pc.warmup} + {pc.sampler_repeats} rounds; "
        f"{loop_warmup} + {pc.sampler_repeats} for the DDPM loop)")
    loop_arms = {k: v for k, v in arms.items() if k.startswith(loop + "|")}
    times = interleaved({k: v for k, v in arms.items() if k not in loop_arms}, device, pc.sampler_repeats, pc.warmup)
    times.update(interleaved(loop_arms, device, pc.sampler_repeats, loop_warmup))
    info[loop]["warmup"] = loop_warmup
    for name, v in info.items():
        eager, graphs = times[f"{name}|eager"], times[f"{name}|graphs"]
        v.update(eager=summarize(eager), graphs=summarize(graphs), speedup=paired_ratio(eager, graphs),
                 eager_of_peak=_of_peak(v["gflops_per_sample"] * B / summarize(eager)["median"], device),
                 graphs_of_peak=_of_peak(v["gflops_per_sample"] * B / summarize(graphs)["median"], device))
    return {"batch": B, "rounds": pc.sampler_repeats, "samplers": info}


def _peak_cell(v: dict) -> str:
    if v.get("pct_of_peak") is None:
        return f"{fmt(v['tflops_per_s'])} TFLOP/s"
    return f"{fmt(v['tflops_per_s'])} TFLOP/s, {fmt(v['pct_of_peak'], 2)}% of {fmt(v['peak_tflops'])}"


def render(s: dict, res: dict) -> list[str]:
    L: list[str] = []
    B = s["batch"]
    L += ["", "## 2. Sampling", ""]
    L.append(f"CIFAR-10 configurations at scale {s['scale']}, batch {B}, fixed x_T and noise, "
             f"{s['warmup']} warm-up + {s['rounds']} timed rounds ({s['sampler_rounds']} for the whole GAN "
             f"samplers). GFLOPs = 2 x multiply-adds (torch "
             f"FlopCounterMode on the meta device; convolutions and matrix products only).")
    gan = s["gan"]
    comparable = s["scale"] == "paper" and B == 100  # the references' configuration
    L += ["", f"### Whole sampler (T=4, final inverse transform included), seconds per batch of {B}", "",
          "| variant | NFE | s / batch | speedup vs ddgan | GFLOPs / sample | achieved (share of peak) | G params |"
          + (" **reference** public code, 2 CPU threads, s / batch | **reference** paper, A100, s / batch |"
             if comparable else ""),
          "|---|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if comparable else "")]
    for name, v in gan["variants"].items():
        cpu_ref, gpu_ref = REFERENCES["gan_table"].get(name, ("-", "-"))
        L.append(f"| {name} | {v['nfe']} | {stat(v['seconds'])} | {ratio(v['speedup_vs_baseline'])} | "
                 f"{fmt(v['gflops_per_sample'])} | {_peak_cell(v)} | {v['params_generator'] / 1e6:.2f}M |"
                 + (f" {cpu_ref} | {gpu_ref} |" if comparable else ""))
    gv = gan["variants"]
    if "wavediff" in gv and "ddgan" in gv:
        L.append("")
        L.append(f"- measured here: ddgan / wavediff = {ratio(gv['wavediff']['speedup_vs_baseline'])} "
                 f"(FLOP ratio {gv['ddgan']['gflops_per_sample'] / gv['wavediff']['gflops_per_sample']:.2f}); "
                 f"ddgan / wavediff-wg = {ratio(gv['wavediff-wg']['speedup_vs_baseline'])}.")
    if not comparable:
        L.append(f"- the references below are for the paper configurations at batch 100 (this run: scale "
                 f"{s['scale']}, batch {B}): compare ratios only.")
    L.append(f"- **reference**: {REFERENCES['paper_gpu']}.")
    L.append(f"- **reference**: {REFERENCES['public_cpu']}.")

    st = s["step"]
    L += ["", f"### DDPM vs WDDM: per step (one denoiser call at batch {B}; NOT the whole sampler)", "",
          "| variant | state | s / step (batch) | speedup vs ddpm | GFLOPs / call / sample | achieved (share of peak) | "
          "NFE | projected s / batch, all NFE | params |",
          "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, v in st["variants"].items():
        L.append(f"| {name} | {'x'.join(map(str, v['state']))} | {stat(v['seconds'])} | "
                 f"{ratio(v['speedup_vs_baseline'])} | {fmt(v['gflops_per_call_per_sample'])} | "
                 f"{_peak_cell(v)} | {v['nfe']} | {fmt(v['projected_sampler_s'])} | "
                 f"{v['params_denoiser'] / 1e6:.2f}M |")
    L.append("")
    L.append("- per step = one network call at t = T/2 (the sampler's elementwise update is not included); "
             "the projected column is NFE x the median step, not a measurement of the whole sampler.")
    L.append(f"- **reference**: {REFERENCES['ddpm_table']}.")

    dv = s["dvdp"]
    calls = ", ".join(f"{n} calls at {r}x{r}" for r, n in dv["calls_per_resolution"].items())
    L += ["", "### DVDP vs DDPM, per sample", ""]
    L.append(f"DVDP ({dv['sampler']} sampler, turning points {dv['turning_points']}) makes {calls}; DDPM makes "
             f"{dv['ddpm_nfe']} calls at full resolution. Per-sample cost = sum over resolutions of (calls) x "
             f"(seconds of one call at batch {B} at that resolution) / {B}, each call measured in the same "
             f"rounds as DDPM's (the lift at the turning point and the elementwise updates are not included).")
    L += ["", "| | s / sample | GFLOPs / sample | speedup vs ddpm | FLOP ratio |", "|---|---:|---:|---:|---:|",
          f"| ddpm | {stat(dv['ddpm_s_per_sample'])} | {fmt(dv['ddpm_gflops_per_sample'])} | 1 | 1 |",
          f"| dvdp | {stat(dv['dvdp_s_per_sample'])} | {fmt(dv['dvdp_gflops_per_sample'])} | "
          f"{ratio(dv['speedup_vs_ddpm'])} | {fmt(dv['flop_ratio'])} |"]
    L.append("")
    L.append("Seconds per call at each resolution: " + "; ".join(
        f"{r}x{r}: {stat(v)} s" for r, v in dv["seconds_per_call"].items()) + ".")
    L.append(f"- sampling as evaluation runs it: CUDA graphs {gan.get('cuda_graphs', 'off')}; precision fp32 "
             f"(TF32 convolutions: {res['device'].get('tf32_conv', 'n/a')}).")

    gr = s.get("graphs", {})
    L += ["", "### CUDA graphs vs eager (whole sampler, seconds per batch)", ""]
    if "skipped" in gr:
        L.append(f"- skipped: {gr['skipped']}.")
        return L
    L += ["| sampler | eager s | graphs s | speedup | eager | graphs | max abs difference of the samples | status |",
          "|---|---:|---:|---:|---:|---:|---:|---|"]
    for name, v in gr["samplers"].items():
        L.append(f"| {name} | {stat(v['eager'])} | {stat(v['graphs'])} | {ratio(v['speedup'])} | "
                 f"{_peak_cell(v['eager_of_peak'])} | {_peak_cell(v['graphs_of_peak'])} | {v['max_abs_diff']:.1e} | "
                 f"{v['status']} |")
    loop = [f"{v['warmup']} for {name}" for name, v in gr["samplers"].items() if "warmup" in v]
    L += ["", f"- batch {gr['batch']}, {gr['rounds']} interleaved rounds after {s['warmup']} warm-up rounds"
              f"{' (' + ', '.join(loop) + ')' if loop else ''}; samples in [-1, 1]."]
    return L


def metrics(s: dict) -> dict[str, float]:
    m: dict[str, float] = {}
    for name, v in s["gan"]["variants"].items():
        m[f"sample_{name}_s_per_batch"] = v["seconds"]["median"]
        m[f"sample_{name}_speedup"] = v["speedup_vs_baseline"]["median"]
        m[f"sample_{name}_gflops_per_sample"] = v["gflops_per_sample"]
        m[f"sample_{name}_gflops_per_s"] = v["gflops_per_s"]
        if v.get("pct_of_peak") is not None:
            m[f"sample_{name}_pct_of_peak"] = v["pct_of_peak"]
    for name, v in s["step"]["variants"].items():
        m[f"step_{name}_s"] = v["seconds"]["median"]
        m[f"step_{name}_speedup"] = v["speedup_vs_baseline"]["median"]
        m[f"step_{name}_gflops_per_call_per_sample"] = v["gflops_per_call_per_sample"]
        m[f"step_{name}_gflops_per_s"] = v["gflops_per_s"]
    dv = s["dvdp"]
    m["dvdp_s_per_sample"] = dv["dvdp_s_per_sample"]["median"]
    m["dvdp_ddpm_s_per_sample"] = dv["ddpm_s_per_sample"]["median"]
    m["dvdp_speedup_vs_ddpm"] = dv["speedup_vs_ddpm"]["median"]
    m["dvdp_gflops_per_sample"] = dv["dvdp_gflops_per_sample"]
    for name, v in s.get("graphs", {}).get("samplers", {}).items():
        key = name.split(" ")[0]
        m[f"graphs_{key}_speedup_vs_eager"] = v["speedup"]["median"]
        m[f"graphs_{key}_s_per_batch"] = v["graphs"]["median"]
    return m

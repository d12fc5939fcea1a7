"""Fit a GPU's performance curves (`gpu_model.GpuFit`) to operator profiles.

Few parameters, fitted to many shapes, so that the curves generalise to models that have no
profile: the GEMM curve has five numbers (one a tile size chosen from a short list) for all
four GEMMs of every model and tensor-parallel degree of a GPU; the elementwise curve two.
They minimise the squared log error (relative error, so small and large token counts weigh
alike) with a small Nelder-Mead search over log-parameters (numpy only: the simulator does
not need scipy). The linear costs (prefill attention, CPU) are least-squares lines weighted
by 1 / measured time, again a relative error; the all-reduce keeps its measured curve.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from kvpager.sim.cost_model import profiles as prof
from kvpager.sim.cost_model.gpu_model import (
    WEIGHT_BYTES,
    GemmCurve,
    GpuFit,
    LayerDims,
    LinearCost,
    MeasuredCurve,
    StreamCurve,
)


def nelder_mead(f: Callable[[np.ndarray], float], x0: Sequence[float] | np.ndarray,
                step: float = 0.5, iters: int = 600, tol: float = 1e-10) -> np.ndarray:
    """Minimise f from x0 (the textbook simplex method: reflect, expand, contract, shrink)."""
    n = len(x0)
    pts = [np.asarray(x0, float)]
    for i in range(n):
        p = pts[0].copy()
        p[i] += step
        pts.append(p)
    vals = [f(p) for p in pts]
    for _ in range(iters):
        order = np.argsort(vals)
        pts, vals = [pts[i] for i in order], [vals[i] for i in order]
        if abs(vals[-1] - vals[0]) < tol:
            break
        centre = np.mean(pts[:-1], axis=0)
        refl = centre + (centre - pts[-1])
        fr = f(refl)
        if fr < vals[0]:
            exp = centre + 2 * (centre - pts[-1])
            fe = f(exp)
            pts[-1], vals[-1] = (exp, fe) if fe < fr else (refl, fr)
        elif fr < vals[-2]:
            pts[-1], vals[-1] = refl, fr
        else:
            con = centre + 0.5 * (pts[-1] - centre)
            fc = f(con)
            if fc < vals[-1]:
                pts[-1], vals[-1] = con, fc
            else:
                pts = [pts[0] + 0.5 * (p - pts[0]) for p in pts]
                vals = [f(p) for p in pts]
    return pts[int(np.argmin(vals))]


def dims_of(shape: prof.LayerShape, tp: int) -> LayerDims:
    return LayerDims.of(shape.hidden, shape.heads, shape.kv_heads, shape.head_size,
                        shape.intermediate, shape.gated, tp)


def _gemm_samples(rows: Sequence[prof.LinearRow]) -> tuple[np.ndarray, ...]:
    m, k, n, t = [], [], [], []
    for r in rows:
        for op, (kk, nn) in zip(prof.GEMM_OPS, dims_of(r.shape, r.tp).gemms(), strict=True):
            m.append(r.tokens)
            k.append(kk)
            n.append(nn)
            t.append(r.seconds[op])
    return tuple(np.array(a, float) for a in (m, k, n, t))


#: Row-tile sizes of tensor-core GEMM kernels that the fit chooses among.
TILES = (16, 32, 64, 128, 256)


def fit_gemm(rows: Sequence[prof.LinearRow], peak: float, hbm: float) -> GemmCurve:
    """The GEMM curve. The row tile is chosen among real kernel tile sizes (the loss is a
    step function of it, which a simplex cannot search); the bandwidth is held at or below
    the HBM peak `hbm`, so that the knee's shape is not bought with an impossible
    bandwidth."""
    m, k, n, t = _gemm_samples(rows)
    logt = np.log(t)
    best: tuple[float, GemmCurve] | None = None
    for tile in TILES:
        def curve(x: np.ndarray, tile: int = tile) -> GemmCurve:
            bw, eff, launch, p = np.exp(x)
            return GemmCurve(float(min(bw, hbm)), float(min(eff, 1.5)), float(launch),
                             float(1 + p), float(tile))

        def loss(x: np.ndarray, curve=curve) -> float:
            return float(np.mean((np.log(curve(x).seconds(m, k, n, peak)) - logt) ** 2))

        x = np.log([0.8 * hbm, 0.7, 5e-6, 3.0])
        for _ in range(3):  # restarts escape the simplex's early collapse
            x = nelder_mead(loss, x, step=0.3)
        if best is None or loss(x) < best[0]:
            best = (loss(x), curve(x))
    assert best is not None  # TILES is not empty
    return best[1]


def fit_elementwise(rows: Sequence[prof.LinearRow]) -> StreamCurve:
    nbytes, t = [], []
    for r in rows:
        sizes = dims_of(r.shape, r.tp).elementwise_bytes(np.array([r.tokens]))
        for op in prof.ELEMENTWISE_OPS:
            if op in r.seconds:
                nbytes.append(float(sizes[op][0]))
                t.append(r.seconds[op])
    fixed, slope = _relative_line(np.array(nbytes), np.array(t))
    return StreamCurve(bw=float(1.0 / max(slope, 1e-18)), launch=float(max(fixed, 0.0)))


def _relative_line(x: np.ndarray, t: np.ndarray, cols: Sequence[np.ndarray] = ()
                   ) -> np.ndarray:
    """Least squares of t ~ a + b x (+ further columns), each residual divided by t."""
    a = np.column_stack([np.ones_like(x), x, *cols]) / t[:, None]
    coef, *_ = np.linalg.lstsq(a, np.ones_like(t), rcond=None)
    return coef


def fit_allreduce(rows: Sequence[prof.CollectiveRow], points: int = 40
                  ) -> dict[int, MeasuredCurve]:
    """Per GPU count: the median time in each of `points` log-spaced size bins, made
    non-decreasing (a bigger message never takes less time; the residue is noise).
    No line fits both the small messages of decode (latency, NCCL's low-latency protocol)
    and the large ones of prefill (bandwidth), so the measured curve itself is kept."""
    out = {}
    for w in sorted({r.workers for r in rows}):
        size = np.array([r.size_bytes for r in rows if r.workers == w], float)
        secs = np.array([r.seconds for r in rows if r.workers == w])
        if len(np.unique(size)) < 2:
            continue
        edges = np.geomspace(size.min(), size.max() * (1 + 1e-9), points + 1)
        which = np.digitize(size, edges) - 1
        xs, ys = [], []
        for i in range(points):
            sel = which == i
            if sel.any():
                xs.append(float(np.median(size[sel])))
                ys.append(float(np.median(secs[sel])))
        out[w] = MeasuredCurve(tuple(xs), tuple(np.maximum.accumulate(ys).tolist()))
    return out


def decode_bytes(shape: prof.LayerShape, tp: int, batch: np.ndarray | int,
                 context: np.ndarray | int
                 ) -> np.ndarray:
    """KV bytes one layer's decode attention reads on one GPU."""
    kv = max(1, shape.kv_heads // tp) * shape.head_size
    return 2.0 * kv * WEIGHT_BYTES * np.asarray(batch, float) * np.asarray(context, float)


def fit_decode(rows: Sequence[prof.DecodeRow]) -> StreamCurve:
    b = np.array([r.batch for r in rows], float)
    c = np.array([r.context for r in rows], float)
    t = np.array([r.seconds for r in rows])
    nbytes = np.concatenate([decode_bytes(r.shape, r.tp, r.batch, r.context)[None]
                             for r in rows])
    fixed, per_byte, per_seq = _relative_line(nbytes, t, (b,))
    del c
    return StreamCurve(bw=float(1.0 / max(per_byte, 1e-18)), launch=float(max(fixed, 0.0)),
                       per_item=float(max(per_seq, 0.0)))


def prefill_flops(shape: prof.LayerShape, tp: int, chunk: float, before: float) -> float:
    """FLOPs of one layer's causal attention over a chunk (QK^T and PV), per GPU."""
    pairs = chunk * (before + (chunk + 1) / 2)
    return 4.0 * shape.heads // tp * shape.head_size * pairs


def fit_prefill(rows: Sequence[prof.PrefillRow]) -> LinearCost:
    x = np.array([prefill_flops(r.shape, r.tp, r.chunk, r.context_before) for r in rows])
    t = np.array([r.seconds for r in rows])
    fixed, slope = _relative_line(x, t)
    return LinearCost(max(float(fixed), 0.0), max(float(slope), 0.0))


def fit_cpu(rows: Sequence[prof.CpuRow]) -> LinearCost:
    """a + b x batch over every model and tp (the engine's CPU work is the host's, and the
    profile has each model at one tp only, so model and tp cannot be told apart)."""
    x = np.array([r.batch for r in rows], float)
    t = np.array([r.seconds for r in rows])
    fixed, slope = _relative_line(x, t)
    return LinearCost(max(float(fixed), 0.0), max(float(slope), 0.0))


@dataclass(frozen=True)
class ProfileSet:
    """What the profiles hold for one GPU."""

    gpu: str
    linear: dict[str, list[prof.LinearRow]]
    allreduce: list[prof.CollectiveRow]
    decode: list[prof.DecodeRow]
    prefill: list[prof.PrefillRow]
    cpu: list[prof.CpuRow]
    sources: tuple[str, ...]
    attention_gpu: str = ""  # where the attention rows were measured


def load_profiles(directory: Path, gpu_name: str, topology: str = "pairwise_nvlink"
                  ) -> ProfileSet:
    """Read every profile of one GPU (ProfileError on a bad folder or file)."""
    root = prof.profile_root(Path(directory))
    gpu = prof.gpu_folder(gpu_name)
    models = prof.compute_models(root, gpu)
    linear = {name: prof.read_linear(path, name) for name, path in models.items()}
    sources = [str(p) for p in models.values()]
    net = root / "network" / f"{gpu}_{topology}" / "all_reduce.csv"
    allreduce = []
    if net.is_file():
        allreduce = prof.read_all_reduce(net)
        sources.append(str(net))
    decode: list[prof.DecodeRow] = []
    prefill: list[prof.PrefillRow] = []
    cpu: list[prof.CpuRow] = []
    attention = root / "legacy" / gpu / "attention.csv"
    attention_gpu = gpu
    if not attention.is_file():  # the profiles measure attention on A100 only
        attention, attention_gpu = root / "legacy" / "a100" / "attention.csv", "a100"
    if attention.is_file():
        decode, prefill = prof.read_attention(attention)
        sources.append(str(attention))
    cpu_path = root / "legacy" / "a100" / "cpu_overheads.csv"  # host work: GPU-independent
    if cpu_path.is_file():
        cpu = prof.read_cpu(cpu_path)
        sources.append(str(cpu_path))
    return ProfileSet(gpu, linear, allreduce, decode, prefill, cpu, tuple(sources),
                      attention_gpu)


def fit_gpu(profiles: ProfileSet, peak_flops: float, hbm_bytes_per_s: float,
            exclude: Sequence[str] = (), attention_peaks: tuple[float, float] | None = None
            ) -> GpuFit:
    """Fit every curve of one GPU; `exclude` leaves models out (for held-out validation).

    attention_peaks: (FLOP/s, HBM bytes/s) of the GPU the attention rows were measured on,
    when that is another GPU: decode attention then keeps its measured fraction of HBM
    peak and prefill attention its fraction of FLOP/s peak (the kernels are memory and
    compute bound respectively), scaled to this GPU's peaks."""
    skip = {e.lower() for e in exclude}
    known = {n.lower() for name in profiles.linear for n in (name, name.split("/")[-1])}
    for e in exclude:
        if e.lower() not in known:
            raise prof.ProfileError(f"--exclude-model: no {profiles.gpu} profile of {e!r}; "
                                    f"have {', '.join(profiles.linear)}")
    rows = [r for name, rs in profiles.linear.items()
            if name.lower() not in skip and name.split("/")[-1].lower() not in skip for r in rs]
    if not rows:
        raise prof.ProfileError(f"{profiles.gpu}: no linear-operator profiles left to fit")
    decode = fit_decode(profiles.decode) if profiles.decode else None
    prefill = fit_prefill(profiles.prefill) if profiles.prefill else None
    attention_from = None
    if attention_peaks is not None and (decode or prefill):
        attention_from = profiles.attention_gpu
        flops_ratio = attention_peaks[0] / peak_flops
        bw_ratio = hbm_bytes_per_s / attention_peaks[1]
        if decode:
            decode = replace(decode, bw=decode.bw * bw_ratio)
        if prefill:
            prefill = replace(prefill, slope=prefill.slope * flops_ratio)
    return GpuFit(
        peak_flops=peak_flops,
        gemm=fit_gemm(rows, peak_flops, hbm_bytes_per_s),
        elementwise=fit_elementwise(rows),
        decode_attention=decode,
        prefill_attention=prefill,
        allreduce=fit_allreduce(profiles.allreduce),
        cpu_overhead=fit_cpu(profiles.cpu) if profiles.cpu else None,
        attention_from=attention_from)

"""Influence engine benchmark: rivals side by side in one process, medians and ratios.

    python benchmarks/bench_influence.py [--n 48] [--repeats 3] [--threads 2] [--write]

On the quick-profile UNet (`build("unet", channels=4, resolution=32, size="quick")`, float32)
with N random positive CE-like inputs:
1. engine (`hat_matrix`, vmap(grad) + Gram eigh + vmap(jvp) chunks) against a plain
   implementation of the same mathematics written here (one backward pass per example, SVD of
   the P x N gradient matrix, one `torch.func.jvp` call per basis vector);
2. the JVP stage for several `jvp_chunk` values, vmapped and looped, in units of one batched
   forward pass of the N inputs per basis vector;
3. peak memory of `hat_matrix` in a child process (peak RSS `VmHWM` minus the RSS before the
   call, model and data already loaded) against 1.5 x (N x P gradient floats + one JVP chunk),
   the chunk term measured the same way for one vmapped jvp call alone;
4. peers (optional, skipped with the reason when missing): captum TracInCP for the Euclidean
   matrix on the same model and batch.
The machine is shared and noisy: every time is a median over `--repeats` runs, and the
conclusions rest on ratios of rivals timed in the same process.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from pdeinf.influence import hat_matrix
from pdeinf.influence.gradients import output_jvps, trainable_parameters
from pdeinf.influence.hat import HatEngine
from pdeinf.training.loss import smse

HERE = Path(__file__).resolve().parent


def make_setup(n: int, seed: int = 0):
    from pdeinf.models import build

    torch.manual_seed(seed)
    model = build("unet", channels=4, resolution=32, size="quick").eval()
    g = torch.Generator().manual_seed(seed + 1)
    x = 1.0 + 0.3 * torch.rand(n, 4, 32, 32, generator=g)
    y = x + 0.05 * torch.randn(n, 4, 32, 32, generator=g)
    return model, x, y


def median_time(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def plain_hat(model, x, y, damping=1e-6, energy_tol=1e-4) -> torch.Tensor:
    """The same mathematics without batching: N backward passes, SVD, r separate jvp calls."""
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for n in range(x.shape[0]):
        grads = torch.autograd.grad(smse(model(x[n:n + 1]), y[n:n + 1]).sum(), params)
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    G = torch.stack(rows, dim=1).double()  # [P, N]
    U, s, _ = torch.linalg.svd(G, full_matrices=False)
    energy = torch.cumsum(s**2, 0) / (s**2).sum()
    r = int((energy < 1 - energy_tol).sum()) + 1
    Q = U[:, :r]
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    shapes = [p.shape for p in params]
    primals = {n: p.detach() for n, p in zip(names, params)}
    columns = []
    for a in range(r):
        pieces = torch.split(Q[:, a].float(), [p.numel() for p in params])
        tangent = {n: t.reshape(s_) for n, t, s_ in zip(names, pieces, shapes)}
        out = torch.func.jvp(lambda p: torch.func.functional_call(model, p, (x,)), (primals,), (tangent,))[1]
        columns.append(out.reshape(-1).double())
    JQ = torch.stack(columns, dim=1)
    eta = JQ.T @ JQ / JQ.shape[0] + damping * torch.eye(r, dtype=torch.float64)
    Gp = Q.T @ G
    return Gp.T @ torch.linalg.solve(eta, Gp)


def forward_time(model, x, repeats):
    with torch.no_grad():
        model(x)
        return median_time(lambda: model(x), repeats)[0]


def jvp_stage_table(model, x, y, repeats, chunks, directions):
    engine = HatEngine(model, x, y)
    span = engine.span
    n_dir = min(directions, span.rank)  # the cost per direction does not depend on how many
    params, layout = trainable_parameters(model)
    t_fwd = forward_time(model, x, repeats)
    rows = []
    for vmapped in (True, False):
        for k in chunks:
            if (not vmapped and k != chunks[0]) or (vmapped and k == 1):
                continue  # the loop ignores the chunk size; a chunk of 1 is the loop itself
            def stage(k=k, vmapped=vmapped):
                for start in range(0, n_dir, k):
                    cols = slice(start, min(start + k, n_dir))
                    output_jvps(model, x, span.basis_rows(cols), params=params, layout=layout,
                                vmap_tangents=vmapped)
            stage()  # warm-up
            t, _ = median_time(stage, repeats)
            rows.append({"mode": "vmap(jvp)" if vmapped else "loop of jvp", "chunk": k if vmapped else 1,
                         "seconds": t, "forward_units": t / (n_dir * t_fwd)})
    return t_fwd, span.rank, n_dir, rows


def _vm(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def memory_child(what: str, n: int, jvp_chunk: int) -> dict:
    """Runs in a fresh process: peak RSS growth of one call."""
    torch.set_num_threads(1)
    model, x, y = make_setup(n)
    params, layout = trainable_parameters(model)
    with torch.no_grad():
        model(x)
    before = _vm("VmRSS:")
    if what == "hat":
        res = hat_matrix(model, x, y, jvp_chunk=jvp_chunk)
        rank = res.rank
    else:  # one vmapped jvp chunk of random directions
        output_jvps(model, x, torch.randn(jvp_chunk, layout.size), params=params, layout=layout)
        rank = None
    return {"peak_delta": _vm("VmHWM:") - before, "P": layout.size, "rank": rank}


def measure_memory(n: int, jvp_chunk: int) -> dict:
    out = {}
    for what in ("hat", "chunk"):
        proc = subprocess.run([sys.executable, __file__, "--memory-child", what, "--n", str(n),
                               "--jvp-chunk", str(jvp_chunk)], capture_output=True, text=True, check=True)
        out[what] = json.loads(proc.stdout.strip().splitlines()[-1])
    P, r = out["hat"]["P"], out["hat"]["rank"]
    grads = n * P * 4
    m = n * 4 * 32 * 32
    bound = 1.5 * (grads + out["chunk"]["peak_delta"])
    return {"peak": out["hat"]["peak_delta"], "grads": grads, "chunk": out["chunk"]["peak_delta"],
            "jq_store": r * m * 4, "bound": bound, "P": P, "rank": r}


def captum_euclidean(model, x, y, repeats):
    try:
        from captum.influence import TracInCP
    except ImportError as err:
        return None, f"captum not importable: {err}"
    import tempfile

    from torch.utils.data import TensorDataset

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "c.pt"
        torch.save(model.state_dict(), ckpt)

        def loss_fn(out, target):  # per-example SMSE (captum's per-example loop path)
            return smse(out, target)
        loss_fn.reduction = "none"

        def load(m, path):
            m.load_state_dict(torch.load(path))
            return 1.0

        def run():
            tracin = TracInCP(model, TensorDataset(x, y), checkpoints=[str(ckpt)],
                              checkpoints_load_func=load, loss_fn=loss_fn, batch_size=x.shape[0],
                              sample_wise_grads_per_batch=False)
            return tracin.influence((x, y), show_progress=False)

        t, scores = median_time(run, repeats)
    return t, scores


class _SmallNet(torch.nn.Module):
    """Dense-size model for the peers' accuracy: zero padding, plain Conv2d (nngeometry's layers)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Conv2d(2, 3, 3, padding=1)
        self.b = torch.nn.Conv2d(3, 2, 3, padding=1)

    def forward(self, x):
        return x + self.b(torch.tanh(self.a(x)))


def nngeometry_peers(model, x, repeats, damping=1e-6) -> list[str]:
    """K-FAC / EK-FAC full-space influence G (F/d + damping)^-1 G^T: accuracy against the dense
    regression Fisher on a small float64 model, and whether it runs on the quick UNet."""
    try:
        from nngeometry.metrics import FIM
        from nngeometry.object import PMatDense, PMatEKFAC, PMatKFAC
    except ImportError as err:
        return [f"nngeometry not importable: {err}"]
    from torch.utils.data import DataLoader, TensorDataset

    rows = []
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        small = _SmallNet().double()
        g = torch.Generator().manual_seed(1)
        xs = 1.0 + torch.rand(6, 2, 6, 6, generator=g, dtype=torch.float64)
        ys = xs + 0.1 * torch.randn(6, 2, 6, 6, generator=g, dtype=torch.float64)
        fn = lambda *d: small(d[0]).reshape(d[0].shape[0], -1)
        loader = DataLoader(TensorDataset(xs, ys), batch_size=6)
        engine = HatEngine(small, xs, ys, energy_tol=0.0)
        G, d = engine.grads, xs[0].numel()
        sub = hat_matrix(small, xs, ys, damping=damping, energy_tol=0.0).pi

        def full_space(F):
            F = F.to(torch.float64)
            return G @ torch.linalg.solve(F / d + damping * torch.eye(F.shape[0]), G.T)

        dense = full_space(FIM(small, loader, PMatDense, variant="regression", function=fn).to_torch())
        rows.append(f"| dense regression Fisher, full space (reference) | 0 | "
                    f"{float((sub - dense).norm() / dense.norm()):.2f} |")
        for name, rep in (("K-FAC", PMatKFAC), ("EK-FAC", PMatEKFAC)):
            F = FIM(small, loader, rep, variant="regression", function=fn)
            if rep is PMatEKFAC:
                F.update_diag(loader)
            approx = full_space(F.to_torch())
            rows.append(f"| nngeometry {name}, full space | {float((approx - dense).norm() / dense.norm()):.2e} | "
                        f"{float((sub - approx).norm() / approx.norm()):.2f} |")
    finally:
        torch.set_default_dtype(prev)
    try:
        FIM(model, DataLoader(TensorDataset(x[:2], x[:2]), batch_size=2), PMatKFAC, variant="regression",
            function=lambda *d: model(d[0]).reshape(d[0].shape[0], -1))
        rows.append("| nngeometry K-FAC on the quick UNet | runs | |")
    except Exception as err:  # noqa: BLE001 - the reason is the result
        rows.append(f"| nngeometry K-FAC/EK-FAC on the quick UNet | cannot run: `{type(err).__name__}: "
                    f"{str(err).splitlines()[0][:120]}` | |")
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--jvp-chunk", type=int, default=4)
    ap.add_argument("--chunks", default="1,4,8")
    ap.add_argument("--jvp-directions", type=int, default=8,
                    help="basis vectors timed in the JVP-stage table")
    ap.add_argument("--write", action="store_true", help="write benchmarks/results_influence.md")
    ap.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child, args.n, args.jvp_chunk)))
        return 0
    torch.set_num_threads(args.threads)
    model, x, y = make_setup(args.n)
    command = (f"python benchmarks/bench_influence.py --n {args.n} --repeats {args.repeats} "
               f"--threads {args.threads} --jvp-chunk {args.jvp_chunk} --chunks {args.chunks} --jvp-directions {args.jvp_directions}"
               f"{' --write' if args.write else ''}")
    setting = (f"torch {torch.__version__}, {torch.get_num_threads()} threads; shared 2-core CPU "
               f"(noisy): medians of {args.repeats} runs, compare ratios, not absolute times.")
    lines = ["# Influence engine benchmark", "", f"Command: `{command}`", "", setting, ""]

    def say(text=""):
        print(text, flush=True)
        lines.append(text)

    P = sum(p.numel() for p in model.parameters())
    say(f"Model: quick UNet, P = {P} parameters, float32; N = {args.n} inputs 4x32x32.")
    say()
    # 1. engine vs plain
    hat_matrix(model, x[:4], y[:4])  # warm-up of the torch.func paths
    t_engine, res = median_time(lambda: hat_matrix(model, x, y, jvp_chunk=args.jvp_chunk), args.repeats)
    t_plain, ref = median_time(lambda: plain_hat(model, x, y), args.repeats)
    diff = float((res.pi - ref).norm() / ref.norm())
    say("| rival | median s | ratio plain/engine | rel. diff to plain |")
    say("|---|---|---|---|")
    say(f"| engine hat_matrix (jvp_chunk={args.jvp_chunk}) | {t_engine:.2f} | {t_plain / t_engine:.2f} | {diff:.1e} |")
    say(f"| plain (N backward, SVD, r jvp calls) | {t_plain:.2f} | 1.00 | 0 |")
    say(f"\nrank r = {res.rank} of N = {args.n}; target ratio >= 1.25.")
    say()
    # 2. JVP stage
    chunks = [int(c) for c in args.chunks.split(",")]
    t_fwd, r, n_dir, rows = jvp_stage_table(model, x, y, args.repeats, chunks, args.jvp_directions)
    say(f"JVP stage: {n_dir} of the r = {r} basis vectors, each over all N inputs; one batched "
        f"forward of the N inputs = {t_fwd * 1e3:.1f} ms.")
    say()
    say("| mode | tangents per call | median s | forward passes per basis vector |")
    say("|---|---|---|---|")
    for row in rows:
        say(f"| {row['mode']} | {row['chunk']} | {row['seconds']:.2f} | {row['forward_units']:.2f} |")
    say("\nTarget <= 2.5 forward passes per basis vector.")
    say()
    # 3. memory
    mem = measure_memory(args.n, args.jvp_chunk)
    mib = 1 / 2**20
    say("Peak memory of one hat_matrix call (child process, peak RSS VmHWM minus RSS before the call):")
    say()
    say("| quantity | MiB |")
    say("|---|---|")
    say(f"| measured peak growth | {mem['peak'] * mib:.1f} |")
    say(f"| N x P gradient floats (float32) | {mem['grads'] * mib:.1f} |")
    say(f"| one vmapped JVP chunk ({args.jvp_chunk} tangents), same method | {mem['chunk'] * mib:.1f} |")
    say(f"| JQ store r x M (float32, inside the peak) | {mem['jq_store'] * mib:.1f} |")
    say(f"| bound 1.5 x (grads + chunk) | {mem['bound'] * mib:.1f} |")
    say(f"| P x P float32 (never formed) | {P * P * 4 * mib:.0f} |")
    say(f"\npeak / bound = {mem['peak'] / mem['bound']:.2f}")
    say()
    # 4. peers
    t_cap, scores = captum_euclidean(model, x, y, args.repeats)
    t_eu, eu = median_time(lambda: hat_matrix(model, x, y, metric="euclidean"), args.repeats)
    say("| Euclidean G G^T | median s | rel. diff to engine |")
    say("|---|---|---|")
    say(f"| engine metric='euclidean' | {t_eu:.2f} | 0 |")
    if t_cap is None:
        say(f"| captum TracInCP | n/a | {scores} |")
    else:
        d = float((scores.double() - eu.pi).norm() / eu.pi.norm())
        say(f"| captum TracInCP (per-example loop path) | {t_cap:.2f} | {d:.1e} |")
    say()
    say("Curvature peers (small float64 conv net, P = 113, N = 6, damping 1e-6: dense answers are exact):")
    say()
    say("| peer | rel. diff to dense full-space | rel. diff of our subspace Pi to it |")
    say("|---|---|---|")
    for row in nngeometry_peers(model, x, args.repeats):
        say(row)
    try:
        import pydvl.influence.torch  # noqa: F401
        say("\npyDVL: importable (CG not wired into this script).")
    except Exception as err:  # noqa: BLE001
        say(f"\npyDVL CgInfluence cannot run here: `import pydvl.influence.torch` fails with "
            f"`{type(err).__name__}: {err}` (its [influence] extra needs dask `distributed` and zarr, "
            "not installed in this environment).")
    say()
    if args.write:
        (HERE / "results_influence.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

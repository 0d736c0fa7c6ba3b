"""Influence engine benchmark: rivals side by side in one process, medians and ratios.

    python benchmarks/bench_influence.py [--n 48] [--repeats 3] [--threads 2] [--write]

On the quick-profile UNet (`build("unet", channels=4, resolution=32, size="quick")`, float32)
with N random positive CE-like inputs:
1. engine (`hat_matrix`, vmap(grad) + Gram eigh + vmap(jvp) chunks) against a plain
   implementation of the same mathematics written here (one backward pass per example, SVD of
   the P x N gradient matrix, one `torch.func.jvp` call per basis vector);
2. the JVP stage for several `jvp_chunk` values (inputs per call, all N gradient directions
   vmapped, or looped), in units of one batched forward pass of the N inputs per basis vector;
3. peak memory of `hat_matrix` in a child process (peak RSS `VmHWM` minus the RSS before the
   call, model and data already loaded) against 1.5 x (N x P gradient floats + one JVP chunk),
   the chunk term measured the same way for one vmapped jvp call alone;
4. peers (optional, skipped with the reason when missing): captum TracInCP for the Euclidean
   matrix on the same model and batch; nngeometry K-FAC/EK-FAC; pyDVL's CG (block and plain)
   and direct influence on the subspace model theta_0 + Q alpha with a zero-residual Hessian
   (pdeinf.influence.peers: the same quantity as our Pi), timed on the UNet and checked
   against dense float64 answers on a small conv net (`--only-pydvl` runs just that part and,
   with `--write`, appends it to results_influence.md).
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
from pdeinf.influence.hat import HatEngine, restricted_gauss_newton
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


def jvp_stage_table(model, x, y, repeats, chunks, n_examples):
    """The engine's JVP stage (all N gradient directions, `k` examples per call) on the first
    `n_examples` inputs, scaled to the whole batch (each example block costs the same)."""
    engine = HatEngine(model, x, y)
    span = engine.span
    n_ex = min(n_examples, x.shape[0])
    scale = x.shape[0] / n_ex
    params, layout = trainable_parameters(model)
    t_fwd = forward_time(model, x, repeats)
    rows = []
    for vmapped in (True, False):
        for k in (chunks if vmapped else [n_ex]):  # loop: one direction over all timed inputs per call
            def stage(k=k, vmapped=vmapped):
                restricted_gauss_newton(model, x[:n_ex], span, jvp_chunk=k, vmap_tangents=vmapped,
                                        params=params, layout=layout)
            stage()  # warm-up
            t, _ = median_time(stage, repeats)
            rows.append({"mode": "vmap(jvp) over the N directions" if vmapped else "loop of jvp",
                         "chunk": k, "seconds": t * scale,
                         "forward_units": t * scale / (span.rank * t_fwd)})
    return t_fwd, span.rank, n_ex, rows


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
    else:  # one call of the JVP stage: N directions (allocated before, like the stored G) on k inputs
        tangents = torch.randn(n, layout.size)
        before = _vm("VmRSS:")
        output_jvps(model, x[:jvp_chunk], tangents, params=params, layout=layout)
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
    bound = 1.5 * (grads + out["chunk"]["peak_delta"])
    return {"peak": out["hat"]["peak_delta"], "grads": grads, "chunk": out["chunk"]["peak_delta"],
            "bound": bound, "P": P, "rank": r}


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


def _small_problem():
    """The float64 net and batch (N = 6) on which dense answers are exact, shared by the
    curvature-peer and pyDVL sections."""
    small = _SmallNet().double()
    g = torch.Generator().manual_seed(1)
    xs = 1.0 + torch.rand(6, 2, 6, 6, generator=g, dtype=torch.float64)
    ys = xs + 0.1 * torch.randn(6, 2, 6, 6, generator=g, dtype=torch.float64)
    return small, xs, ys


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
        small, xs, ys = _small_problem()
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


def dense_reference(model, x, y, damping, energy_tol=0.0):
    """Dense float64 answers from an explicit Jacobian (torch.autograd.functional.jacobian) and an
    SVD of the P x N gradient matrix: (subspace Pi, full-space G (J^T J / M + damping)^-1 G^T)."""
    params = [p for p in model.parameters() if p.requires_grad]
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    sizes = [p.numel() for p in params]
    theta = torch.cat([p.detach().reshape(-1) for p in params])

    def outputs(flat):
        pieces = torch.split(flat, sizes)
        weights = {n: t.reshape(p.shape) for n, t, p in zip(names, pieces, params)}
        return torch.func.functional_call(model, weights, (x,)).reshape(-1)

    J = torch.autograd.functional.jacobian(outputs, theta)  # [M, P]
    rows = []
    for n in range(x.shape[0]):
        grads = torch.autograd.grad(smse(model(x[n:n + 1]), y[n:n + 1]).sum(), params)
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    G = torch.stack(rows, dim=1)  # [P, N]
    U, s, _ = torch.linalg.svd(G, full_matrices=False)
    energy = torch.cumsum(s**2, 0) / (s**2).sum()
    r = min(int((energy < 1 - energy_tol).sum()) + 1, int((s > s[0] * 1e-10).sum()))
    Q = U[:, :r]
    M = J.shape[0]
    JQ = J @ Q
    Gp = Q.T @ G
    sub = Gp.T @ torch.linalg.solve(JQ.T @ JQ / M + damping * torch.eye(r), Gp)
    full = G.T @ torch.linalg.solve(J.T @ J / M + damping * torch.eye(J.shape[1]), G)
    return sub, full


def pydvl_unet(model, x, y, repeats, methods, fit_batch, damping=1e-6) -> list[str]:
    """pyDVL on the quick UNet and the same batch: its CG (and direct) influence on the subspace
    model theta_0 + Q alpha (pdeinf.influence.peers), the same quantity as our Pi. The basis Q
    comes from our engine, so pyDVL's time to the N x N matrix = our gradient+basis stage + its own."""
    try:
        import pydvl.influence.torch  # noqa: F401

        from pdeinf.influence.peers import pydvl_hat_matrix
    except Exception as err:  # noqa: BLE001 - the reason is the result
        return [(f"pyDVL cannot run here: `import pydvl.influence.torch` fails with "
                 f"`{type(err).__name__}: {err}`")]
    fit_batch = fit_batch if x.shape[0] % fit_batch == 0 else x.shape[0]

    def engine_basis():
        engine = HatEngine(model, x, y)
        _ = engine.span
        return engine

    def engine_all():
        engine = engine_basis()
        return engine.pi("gauss-newton", damping=damping)[0]

    warm = HatEngine(model, x[:4], y[:4])  # warm-up of both rivals' torch.func paths
    warm.pi("gauss-newton", damping=damping)
    for method in methods:
        pydvl_hat_matrix(model, x[:4], y[:4], warm.span, damping=damping, method=method, fit_batch=4)
    t_basis, engine = median_time(engine_basis, repeats)
    t_engine, ours = median_time(engine_all, repeats)
    rows = ["| rival | median s | + our gradient/basis stage, s | ratio total/engine | rel. diff to engine |",
            "|---|---|---|---|---|",
            f"| engine hat_matrix (gauss-newton) | {t_engine:.2f} | (inside) | 1.00 | 0 |"]
    for method in methods:
        t, theirs = median_time(lambda method=method: pydvl_hat_matrix(
            model, x, y, engine.span, damping=damping, method=method, fit_batch=fit_batch,
            rtol=1e-6), repeats)
        diff = float((theirs - ours).norm() / ours.norm())
        rows.append(f"| pyDVL {method} on the subspace model (fit batches of {fit_batch}) | {t:.2f} | "
                    f"{t + t_basis:.2f} | {(t + t_basis) / t_engine:.2f} | {diff:.1e} |")
    rows.append("")
    rows.append(f"rank r = {engine.span.rank}; damping {damping:g}; CG: rtol 1e-6, atol 0, at most 10 r "
                "iterations; float32, so the differences include float32 rounding of the solver.")
    return rows


def pydvl_small(damping=1e-6) -> list[str]:
    """Accuracy of pyDVL against the dense answers on a small float64 conv net (P = 113, N = 6)."""
    try:
        from pydvl.influence.torch import CgInfluence
        from torch.utils.data import DataLoader, TensorDataset

        from pdeinf.influence.peers import (
            PYDVL_METHODS,
            pydvl_hat_matrix,
            smse_targets,
            weighted_squared_error,
        )
    except Exception as err:  # noqa: BLE001
        return [f"pyDVL cannot run here: `{type(err).__name__}: {err}`"]
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        small, xs, ys = _small_problem()
        sub, full = dense_reference(small, xs, ys, damping)
        engine = HatEngine(small, xs, ys, energy_tol=0.0)
        ours = engine.pi("gauss-newton", damping=damping)[0]
        rel = lambda a, b: float((a - b).norm() / b.norm())
        rows = ["| quantity | computed by | rel. diff to the dense answer |", "|---|---|---|",
                f"| subspace Pi | engine hat_matrix | {rel(ours, sub):.1e} |"]
        for method in PYDVL_METHODS:
            theirs = pydvl_hat_matrix(small, xs, ys, engine.span, damping=damping, method=method,
                                      fit_batch=3, rtol=1e-12)
            rows.append(f"| subspace Pi | pyDVL {method}, subspace model, zero-residual Hessian | "
                        f"{rel(theirs, sub):.1e} |")
        with torch.no_grad():
            f = small(xs)
        fit = TensorDataset(xs, torch.cat([f, torch.full_like(f, 0.5)], dim=1))
        cg = CgInfluence(small, weighted_squared_error, regularization=damping, rtol=1e-12, atol=0.0,
                         maxiter=20 * 113, solve_simultaneously=True, warn_on_max_iteration=False)
        labelled = smse_targets(ys)
        theirs_full = cg.fit(DataLoader(fit, batch_size=6)).influences(xs, labelled, xs, labelled)
        rows.append(f"| full-space G (J^T J/M + damping)^-1 G^T | pyDVL cg-block, plain model | "
                    f"{rel(theirs_full, full):.1e} |")
        rows.append(f"| (full-space vs subspace: different objects) | dense | {rel(sub, full):.2f} |")
    finally:
        torch.set_default_dtype(prev)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--jvp-chunk", type=int, default=4)
    ap.add_argument("--chunks", default="1,4,8")
    ap.add_argument("--jvp-examples", type=int, default=8,
                    help="inputs timed in the JVP-stage table (scaled to N)")
    ap.add_argument("--pydvl-methods", default="cg-block,direct",
                    help="pyDVL solvers on the UNet (cg = one CG solve per column: slow)")
    ap.add_argument("--pydvl-fit-batch", type=int, default=8,
                    help="examples per pyDVL Hessian batch (its block CG vmaps over all N columns)")
    ap.add_argument("--only-pydvl", action="store_true", help="run only the pyDVL section")
    ap.add_argument("--write", action="store_true", help="write benchmarks/results_influence.md")
    ap.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child, args.n, args.jvp_chunk)))
        return 0
    torch.set_num_threads(args.threads)
    model, x, y = make_setup(args.n)
    command = (f"python benchmarks/bench_influence.py --n {args.n} --repeats {args.repeats} "
               f"--threads {args.threads} --jvp-chunk {args.jvp_chunk} --chunks {args.chunks} --jvp-examples {args.jvp_examples}"
               f" --pydvl-methods {args.pydvl_methods} --pydvl-fit-batch {args.pydvl_fit_batch}"
               f"{' --only-pydvl' if args.only_pydvl else ''}{' --write' if args.write else ''}")
    setting = (f"torch {torch.__version__}, {torch.get_num_threads()} threads; shared 2-core CPU "
               f"(noisy): medians of {args.repeats} runs, compare ratios, not absolute times.")
    lines = ["# Influence engine benchmark", "", f"Command: `{command}`", "", setting, ""]

    def say(text=""):
        print(text, flush=True)
        lines.append(text)

    P = sum(p.numel() for p in model.parameters())
    say(f"Model: quick UNet, P = {P} parameters, float32; N = {args.n} inputs 4x32x32.")
    say()
    if not args.only_pydvl:
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
        t_fwd, r, n_ex, rows = jvp_stage_table(model, x, y, args.repeats, chunks, args.jvp_examples)
        say(f"JVP stage (all N gradient directions, combined into the r = {r} basis vectors): timed on "
            f"{n_ex} of the N inputs and scaled to N; one batched forward of the N inputs = "
            f"{t_fwd * 1e3:.1f} ms.")
        say()
        say("| mode | inputs per call (jvp_chunk) | median s (whole batch) | forward passes per basis vector |")
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
        say(f"| one JVP call ({args.jvp_chunk} inputs x N directions, vmapped), same method | "
            f"{mem['chunk'] * mib:.1f} |")
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
        say()
    say(f"pyDVL CG influence on the same quick UNet and batch (N = {args.n}):")
    say()
    for row in pydvl_unet(model, x, y, args.repeats, args.pydvl_methods.split(","), args.pydvl_fit_batch):
        say(row)
    say()
    say("pyDVL against dense answers (small float64 conv net, P = 113, N = 6, damping 1e-6, fit batches of 3):")
    say()
    for row in pydvl_small():
        say(row)
    say()
    if args.write:
        out = HERE / "results_influence.md"
        if args.only_pydvl:  # a section appended to the full run's table
            lines[0] = "## pyDVL section"
            previous = out.read_text() if out.exists() else ""
            out.write_text(previous + "\n" + "\n".join(lines) + "\n")
        else:
            out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

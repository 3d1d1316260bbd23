#!/usr/bin/env python
"""PyTorch float64 references for MetaOptNet's SVM head (Lee, Maji, Ravichandran & Soatto
2019, "Meta-Learning with Differentiable Convex Optimization"), the multi-class
(Crammer-Singer) SVM fitted to each episode's support embeddings.

Run by hand (needs torch; the test suite does not):  python tests/reference/generate_metaoptnet.py

Written from the paper, independently of metalearn; inputs are float32, the references are
computed in float64 from them. The dual of the Crammer-Singer SVM (the paper's eq. 10 and
its dual), for support embeddings X (n, d), one-hot labels Y (n, m) and penalty C:

    max_A  -1/2 tr(A^T X X^T A) + tr(A^T Y)
    s.t.   sum_k A_ik = 0,  A_ik <= C Y_ik               (each support example i)

with the class weights w_k = sum_i A_ik x_i and logits = scale * Q X^T A.

Two references:
  * "exact": the QP solved exactly: its active set found by a long run of projected
    gradient, then the KKT system of that active set solved by torch.linalg.solve (the
    solution is certified: primal feasible, multipliers >= 0). Gradients are those of
    that linear solve (implicit differentiation of the KKT conditions, as qpth does).
  * "unrolled": accelerated projected gradient ascent (FISTA) for a fixed number of
    iterations from A = 0, step 1 / sqrt(||X X^T||_F^2 + 1e-12), each row projected onto
    its feasible set {a : sum a = 0, a <= C y_i} = C y_i - C * simplex (simplex
    projection by sorting, Duchi et al. 2008): the same algorithm as metalearn's, so the logits, the gradients and
    a Hessian-vector product agree op for op.

metaoptnet.npz:
  enc/W, enc/b          encoder Dense(10, tanh) on 4 inputs (Keras layout: x @ W + b)
  xs, ys, xq, yq        a 3-way 2-shot episode (ys, yq int64), 4 queries per class
  v/W                   a direction for a Hessian-vector product in W
  C, scale, iters       the SVM penalty, the logits' scale, the unrolled iteration count
  exact/dual            the exact dual solution A (n, m)
  exact/logits, loss, grad/W, grad/b, grad/scale
  unrolled/dual, logits, loss, grad/W, grad/b, grad/scale, hvp/W
  ridge/...             as exact/, the Gram matrix plus 1.0 I (the authors' code)
  proj/v, proj/out      rows and their projections onto the simplex (sum 1)
"""

import os

import numpy as np
import torch

torch.set_default_dtype(torch.float64)


def embed(W, b, x):
    return torch.tanh(x @ W + b)


def project_simplex(v, z=1.0):
    """Euclidean projection of each row of v onto {p >= 0, sum p = z}, by sorting
    (Duchi, Shalev-Shwartz, Singer & Chandra 2008, fig. 1)."""
    u, _ = torch.sort(v, dim=1, descending=True)
    css = torch.cumsum(u, dim=1) - z
    k = torch.arange(1, v.shape[1] + 1, dtype=v.dtype)
    rho = (u - css / k > 0).sum(1, keepdim=True)  # the number of positive entries
    tau = torch.gather(css, 1, rho - 1) / rho
    return torch.clamp(v - tau, min=0.0)


def dual_unrolled(K, Y, C, iters):
    """FISTA on the dual (as a minimisation of 1/2 tr(A^T K A) - tr(A^T Y))."""
    step = 1.0 / torch.sqrt((K * K).sum() + 1e-12)  # as metalearn's (finite at K = 0)
    A = torch.zeros_like(Y)
    Z = A
    t = 1.0
    for _ in range(iters):
        G = Y - K @ Z  # the dual's gradient (ascent direction)
        A_new = C * Y - C * project_simplex((C * Y - (Z + step * G)) / C)
        t_new = (1.0 + np.sqrt(1.0 + 4.0 * t * t)) / 2.0
        Z = A_new + ((t - 1.0) / t_new) * (A_new - A)
        A, t = A_new, t_new
    return A


def dual_exact(K, Y, C):
    """The QP's solution: the active set from 20000 projected-gradient steps (float64,
    detached), then the KKT system on it solved exactly (differentiable in K)."""
    with torch.no_grad():
        A = dual_unrolled(K, Y, C, 20000)
    n, m = Y.shape
    active = (A - C * Y).abs() < 1e-9  # A_ik = C Y_ik: the bound holds with equality
    # unknowns: A (n*m, row-major), nu (n). Rows: stationarity on free entries
    # (K A - Y)_ik + nu_i = 0, A_ik = C Y_ik on active ones, sum_k A_ik = 0.
    N = n * m
    M = torch.zeros(N + n, N + n)
    rhs = torch.zeros(N + n)
    KI = torch.kron(K, torch.eye(m))  # (K A)_ik = sum_j K_ij A_jk
    for i in range(n):
        for k in range(m):
            r = i * m + k
            if active[i, k]:
                M[r, r] = 1.0
                rhs[r] = C * Y[i, k]
            else:
                M[r, :N] = KI[r]  # an in-place copy autograd follows into K
                M[r, N + i] = 1.0
                rhs[r] = Y[i, k]
        M[N + i, i * m : (i + 1) * m] = 1.0
    sol = torch.linalg.solve(M, rhs)
    A_exact = sol[:N].reshape(n, m)
    nu = sol[N:]
    with torch.no_grad():  # the certificate: feasible, multipliers of active bounds >= 0
        assert (A_exact <= C * Y + 1e-10).all() and A_exact.sum(1).abs().max() < 1e-10
        mu = -((K @ A_exact - Y) + nu[:, None])
        assert (mu[active] >= -1e-10).all(), mu[active]
        assert (A_exact - A).abs().max() < 1e-8, (A_exact - A).abs().max()
        assert active.any() and (~active).any()  # a problem with both kinds of entries
    return A_exact


def head(W, b, scale, xs, ys, xq, n_way, C, solver):
    X, Q = embed(W, b, xs), embed(W, b, xq)
    Y = torch.nn.functional.one_hot(ys, n_way).double()
    A = solver(X @ X.T, Y, C)
    return scale * (Q @ X.T @ A), A  # w_k = sum_i A_ik x_i


def main(outdir):
    rng = np.random.default_rng(2019)
    n_way, k, q, din, d = 3, 2, 4, 4, 10
    W0 = (rng.standard_normal((din, d)) * 0.6).astype(np.float32)
    b0 = (rng.standard_normal(d) * 0.1).astype(np.float32)
    centers = rng.standard_normal((n_way, din)) * 1.5
    ys = np.repeat(np.arange(n_way), k)
    yq = np.repeat(np.arange(n_way), q)
    xs = (centers[ys] + rng.standard_normal((len(ys), din))).astype(np.float32)
    xq = (centers[yq] + rng.standard_normal((len(yq), din))).astype(np.float32)
    v = rng.standard_normal((din, d)).astype(np.float32)
    C, scale, iters = np.float32(0.5), np.float32(3.0), 8
    out = {"enc/W": W0, "enc/b": b0, "xs": xs, "ys": ys, "xq": xq, "yq": yq, "v/W": v}
    out.update({"C": C, "scale": scale, "iters": np.int64(iters)})
    t = lambda a: torch.tensor(np.asarray(a, np.float64))
    solvers = {
        "exact": lambda K, Y, C: dual_exact(K, Y, C),
        "unrolled": lambda K, Y, C: dual_unrolled(K, Y, C, iters),
        # the authors' code adds 1.0 to the Gram matrix's diagonal
        "ridge": lambda K, Y, C: dual_exact(K + torch.eye(len(K)), Y, C),
    }
    for name, solver in solvers.items():
        W = t(W0).requires_grad_()
        b = t(b0).requires_grad_()
        s = t(scale).requires_grad_()
        logits, A = head(W, b, s, t(xs), torch.tensor(ys), t(xq), n_way, float(C), solver)
        loss = torch.nn.functional.cross_entropy(logits, torch.tensor(yq))
        grads = torch.autograd.grad(loss, [W, b, s], create_graph=True)
        out[f"{name}/dual"] = A.detach().numpy()
        out[f"{name}/logits"] = logits.detach().numpy()
        out[f"{name}/loss"] = np.float64(loss.item())
        out[f"{name}/grad/W"] = grads[0].detach().numpy()
        out[f"{name}/grad/b"] = grads[1].detach().numpy()
        out[f"{name}/grad/scale"] = np.float64(grads[2].item())
        if name == "unrolled":
            (hvp,) = torch.autograd.grad((grads[0] * t(v)).sum(), [W])
            out[f"{name}/hvp/W"] = hvp.numpy()
            # the Hessian-vector product against central differences of the gradient
            eps = 1e-6
            fd = []
            for sign in (1.0, -1.0):
                Wp = (t(W0) + sign * eps * t(v)).requires_grad_()
                lg, _ = head(
                    Wp, t(b0), t(scale), t(xs), torch.tensor(ys), t(xq), n_way, float(C), solver
                )
                lp = torch.nn.functional.cross_entropy(lg, torch.tensor(yq))
                fd.append(torch.autograd.grad(lp, [Wp])[0])
            fd = (fd[0] - fd[1]) / (2 * eps)
            assert (fd - hvp).abs().max() < 1e-6 * (1 + hvp.abs().max()), (fd - hvp).abs().max()
    pv = rng.standard_normal((6, 5)) * 2.0
    pv[0] = [3.0, -1.0, 0.2, 0.2, 0.0]  # one row with ties
    out["proj/v"] = pv.astype(np.float32)
    out["proj/out"] = project_simplex(t(pv.astype(np.float32))).numpy()
    np.savez(os.path.join(outdir, "metaoptnet.npz"), **out)


if __name__ == "__main__":
    main(os.path.dirname(os.path.abspath(__file__)))

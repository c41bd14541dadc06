"""lme4's convergence checks (checkConv) on the optimum: the Hessian-scaled gradient and the Hessian's eigenvalues.

Shared by the linear and the generalized fits. Parameters on the boundary (a diagonal θ at 0) are left out, as lme4
leaves them out.
"""

from __future__ import annotations

import numpy as np

__all__ = ["GRAD_TOL", "HESS_TOL", "check_convergence"]

GRAD_TOL = 2e-3  # lme4's check.conv.grad tolerance
# lme4's check.conv.hess tolerance: an eigenvalue within it of zero is zero. The Hessian comes from central
# differences of the gradient, whose rounding noise is far above the 1e-12 ratio test below, so a flat direction
# must be told by this absolute rule (as lme4's checkHess does) or it is found, or not, by rounding.
HESS_TOL = 1e-6


def check_convergence(grad: np.ndarray, hessian: np.ndarray | None, interior: np.ndarray):
    """Returns (ok, eigenvalues or None, messages).

    As lme4: the gradient scaled by the Cholesky factor of the Hessian (R⁻¹g with H = RᵀR), taking per parameter the
    smaller of the scaled and the raw gradient, must stay under 0.002; a negative eigenvalue means a saddle (not a
    minimum); a tiny eigenvalue ratio means a nearly unidentifiable model.
    """
    messages: list[str] = []
    if hessian is None:
        return True, None, messages
    H = 0.5 * (hessian + hessian.T)[np.ix_(interior, interior)]
    g = np.asarray(grad)[interior]
    if not H.size:
        return True, None, messages
    if not np.all(np.isfinite(H)):
        messages.append("the Hessian of the objective is not finite at the optimum; standard errors are unavailable")
        return False, None, messages
    eig = np.linalg.eigvalsh(H)
    ok = True
    if eig.min() < -1e-6 * max(1.0, abs(eig.max())):
        messages.append("Model failed to converge: degenerate Hessian with negative eigenvalues")
        return False, eig, messages
    if np.any(np.abs(eig) < HESS_TOL):
        messages.append("Hessian is numerically singular: parameters are not uniquely determined")
        return ok, eig, messages
    if eig.max() > 0 and eig.min() / eig.max() < 1e-12:
        messages.append("Model is nearly unidentifiable: very large eigenvalue ratio")
        return ok, eig, messages
    try:
        R = np.linalg.cholesky(H).T
        scaled = np.linalg.solve(R, g)
    except np.linalg.LinAlgError:
        messages.append("unable to evaluate the scaled gradient: the Hessian is numerically singular")
        return ok, eig, messages
    worst = float(np.max(np.minimum(np.abs(scaled), np.abs(g)))) if g.size else 0.0
    if worst > GRAD_TOL:
        ok = False
        messages.append(
            f"Model failed to converge with max|grad| = {worst:.3g} (tol = {GRAD_TOL})"
        )
    return ok, eig, messages

"""Samplers: small pure functions that integrate from noise to data in sigma space.

Every sampler has the signature::

    sampler(model, x, sigmas, *, extra_args=None, callback=None, noise_sampler=None, control=None, **options) -> x

- ``model(x, sigma, **extra_args) -> denoised``: ``sigma`` is a float32 tensor of shape ``[batch]`` on x's device
  (one value per batch item; all equal except in DPM adaptive, which steps each item separately).
- ``x``: the starting latents, already scaled to ``sigmas[0]`` (``noise * sigmas[0]`` for txt2img).
- ``sigmas``: a descending schedule ending at 0 (see :mod:`modules.sampling.schedules`).
- ``callback(StepInfo)``: called once per step after the step's first model evaluation.
- ``noise_sampler(sigma, sigma_next) -> tensor`` of x's shape: required by the stochastic samplers (ancestral, SDE,
  LCM, Restart, DDIM with eta > 0); see :class:`modules.sampling.noise.SeededNoise`.
- ``control``: a :class:`SamplingControl`; when ``interrupted`` or ``skipped`` is set, the sampler returns the
  current x at the start of the next step, before any further model evaluation. A model evaluation may also stop
  inside itself by raising :class:`Interrupted`; it leaves the sampler carrying the x its step started from (what
  a stop before that step returns), and ``SamplerInfo.sample`` returns that x.

Nothing here keeps state between calls; the same inputs give the same outputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from modules.sampling.schedules import karras_sigmas

Denoiser = Callable[..., torch.Tensor]
NoiseSampler = Callable[[float, float], torch.Tensor]


@dataclass
class SamplingControl:
    """Flags the caller sets (from another thread) to stop sampling; samplers only read them.

    ``interrupted``: stop the job; ``skipped``: stop the current image (batch). Either makes the sampler return its
    current x before the next model evaluation; the caller decides what to do with it.
    """

    interrupted: bool = False
    skipped: bool = False

    @property
    def should_stop(self) -> bool:
        return self.interrupted or self.skipped


class Interrupted(Exception):
    """Raised by a model evaluation cut short by ``control``; ``x`` is set to the x its sampling step started from."""

    def __init__(self) -> None:
        super().__init__("sampling interrupted inside a model evaluation")
        self.x: torch.Tensor | None = None


@dataclass(frozen=True)
class StepInfo:
    """Progress of one sampling step, passed to ``callback``.

    ``step`` counts from 0; ``total`` is the number of steps the sampler will take (``None`` for DPM adaptive, whose
    step count is not known in advance). ``denoised`` is the model's current estimate of the clean latents.
    """

    step: int
    total: int | None
    sigma: float
    sigma_next: float
    x: torch.Tensor
    denoised: torch.Tensor


StepCallback = Callable[[StepInfo], None]


class _Run:
    """What one sampler call needs besides its own math: model calls, progress reports, the stop check."""

    def __init__(self, model: Denoiser, x: torch.Tensor, extra_args: dict | None,
                 callback: StepCallback | None, control: SamplingControl | None) -> None:
        self.model = model
        self.batch = x.shape[0]
        self.device = x.device
        self.extra_args = extra_args or {}
        self.callback = callback
        self.control = control
        self.step_start = x  # the x the current step started from: its first model evaluation's
        self._new_step = True

    def denoise(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        if self._new_step:
            self.step_start, self._new_step = x, False
        sigma_in = torch.as_tensor(sigma, dtype=torch.float32, device=self.device)
        if sigma_in.ndim == 0:
            sigma_in = sigma_in.expand(self.batch)
        try:
            return self.model(x, sigma_in, **self.extra_args)
        except Interrupted as e:
            e.x = self.step_start
            raise

    def begin_step(self) -> bool:
        """A step starts: whether to stop here instead (else its first model evaluation gives ``step_start``)."""
        self._new_step = True
        return self.control is not None and self.control.should_stop

    def steps(self, sigmas: torch.Tensor | list[float]) -> Iterator[tuple[int, float, float]]:
        """``(i, sigma, sigma_next)`` for each step, ending early when the control says stop."""
        values = sigmas.tolist() if isinstance(sigmas, torch.Tensor) else list(sigmas)
        for i in range(len(values) - 1):
            if self.begin_step():
                return
            yield i, float(values[i]), float(values[i + 1])

    def report(self, step: int, total: int | None, sigma: float, sigma_next: float,
               x: torch.Tensor, denoised: torch.Tensor) -> None:
        if self.callback is not None:
            self.callback(StepInfo(step, total, sigma, sigma_next, x, denoised))


def _require_noise(noise_sampler: NoiseSampler | None, sampler: str) -> NoiseSampler:
    if noise_sampler is None:
        raise ValueError(f"{sampler} is stochastic and needs a noise_sampler (see modules.sampling.noise)")
    return noise_sampler


def _to_d(x: torch.Tensor, sigma: float, denoised: torch.Tensor) -> torch.Tensor:
    """The probability-flow ODE derivative dx/dsigma."""
    return (x - denoised) / sigma


def ancestral_split(sigma: float, sigma_next: float, eta: float = 1.0) -> tuple[float, float]:
    """Split a step into a deterministic part down to ``sigma_down`` and fresh noise of std ``sigma_up``.

    ``sigma_down² + sigma_up² = sigma_next²``; eta = 0 is deterministic, eta = 1 the full ancestral (DDPM-like) step.
    """
    if eta == 0 or sigma_next == 0:
        return sigma_next, 0.0
    up = min(sigma_next, eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
    return math.sqrt(sigma_next**2 - up**2), up


def _total(sigmas: torch.Tensor) -> int:
    return len(sigmas) - 1


# --- first-order -----------------------------------------------------------------------------------------------

def euler(model, x, sigmas, *, extra_args=None, callback=None, noise_sampler=None, control=None):
    """Euler's method on the probability-flow ODE."""
    run = _Run(model, x, extra_args, callback, control)
    for i, s, s_next in run.steps(sigmas):
        denoised = run.denoise(x, s)
        run.report(i, _total(sigmas), s, s_next, x, denoised)
        x = x + _to_d(x, s, denoised) * (s_next - s)
    return x


def euler_ancestral(model, x, sigmas, *, extra_args=None, callback=None, noise_sampler=None, control=None,
                    eta=1.0, s_noise=1.0):
    """Euler a: an Euler step down to sigma_down, then fresh noise up to sigma_next."""
    noise_sampler = _require_noise(noise_sampler, "Euler a")
    run = _Run(model, x, extra_args, callback, control)
    for i, s, s_next in run.steps(sigmas):
        denoised = run.denoise(x, s)
        run.report(i, _total(sigmas), s, s_next, x, denoised)
        down, up = ancestral_split(s, s_next, eta)
        x = x + _to_d(x, s, denoised) * (down - s)
        if up > 0:
            x = x + noise_sampler(s, s_next) * (s_noise * up)
    return x


def lcm(model, x, sigmas, *, extra_args=None, callback=None, noise_sampler=None, control=None):
    """Latent Consistency Model sampling: jump to the denoised estimate, re-noise to the next sigma."""
    noise_sampler = _require_noise(noise_sampler, "LCM")
    run = _Run(model, x, extra_args, callback, control)
    for i, s, s_next in run.steps(sigmas):
        denoised = run.denoise(x, s)
        run.report(i, _total(sigmas), s, s_next, x, denoised)
        x = denoised
        if s_next > 0:
            x = x + noise_sampler(s, s_next) * s_next
    return x


def ddim(model, x, sigmas, *, extra_args=None, callback=None, noise_sampler=None, control=None, eta=0.0):
    """DDIM written in sigma space. With eta = 0 (A1111's default) a DDIM step is exactly an Euler step."""
    if eta > 0:
        noise_sampler = _require_noise(noise_sampler, "DDIM with eta > 0")
    run = _Run(model, x, extra_args, callback, control)
    for i, s, s_next in run.steps(sigmas):
        denoised = run.denoise(x, s)
        run.report(i, _total(sigmas), s, s_next, x, denoised)
        if s_next == 0:
            x = denoised
            continue
        eps = _to_d(x, s, denoised)
        a, a_prev = 1 / (1 + s**2), 1 / (1 + s_next**2)  # alphas_cumprod at the two sigmas
        std = eta * math.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))
        x = denoised + eps * math.sqrt(max(1 - a_prev - std**2, 0.0) / a_prev)
        if std > 0:
            x = x + noise_sampler(s, s_next) * (std / math.sqrt(a_prev))
    return x


# --- second-order single-step ----------------------------------------------------------------------------------

def heun(model, x, sigmas, *, extra_args=None, callback=None, noise_sampler=None, control=None):
    """Heun's method (trapezoidal correction); the last step to sigma 0 is an Euler step."""
    run = _Run(model, x, extra_args, callback, control)
    for i, s, s_next in run.steps(sigmas):
        denoised = run.denoise(x, s)
        run.report(i, _total(sigmas), s, s_next, x, denoised)
        d = _to_d(x, s, denoised)
        x_euler = x + d * (s_next - s)
        if s_next == 0:
            x = x_euler
        else:
            d_next = _to_d(x_euler, s_next, run.denoise(x_euler, s_next))
            x = x + (d + d_next) / 2 * (s_next - s)
    return x


def _log_midpoint(a: float, b: float) -> float:
    return math.sqrt(a * b)


def _dpm2_step(run: _Run, x: torch.Tensor, s: float, target: float, denoised: torch.Tensor) -> torch.Tensor:
    """One DPM2 step from ``s`` to ``target``: Euler to the log-midpoint, then the midpoint slope (Euler at 0)."""
    d = _to_d(x, s, denoised)
    if target == 0:
        return x + d * (target - s)
    s_mid = _log_midpoint(s, target)
    x_mid = x + d * (s_mid - s)
    return x + _to_d(x_mid, s_mid, run.denoise(x_mid, s_mid)) * (target - s)


def dpm2(model, x, sigmas, *, extra_args=None, callback=None, noise_sampler=None, control=None):
    """DPM-Solver-2 in Karras et al.'s form: the derivative at the log-midpoint sigma drives the whole step."""
    run = _Run(model, x, extra_args, callback, control)
    for i, s, s_next in run.steps(sigmas):
        denoised = run.denoise(x, s)
        run.report(i, _total(sigmas), s, s_next, x, denoised)
        x = _dpm2_step(run, x, s, s_next, denoised)
    return x


def dpm2_ancestral(model, x, sigmas, *, extra_args=None, callback=None, noise_sampler=None, control=None,
                   eta=1.0, s_noise=1.0):
    """DPM2 a: a DPM2 step down to sigma_down, then fresh noise up to sigma_next."""
    noise_sampler = _require_noise(noise_sampler, "DPM2 a")
    run = _Run(model, x, extra_args, callback, control)
    for i, s, s_next in run.steps(sigmas):
        denoised = run.denoise(x, s)
        run.report(i, _total(sigmas), s, s_next, x, denoised)
        down, up = ancestral_split(s, s_next, eta)
        x = _dpm2_step(run, x, s, down, denoised)
        if up > 0:
            x = x + noise_sampler(s, s_next) * (s_noise * up)
    return x


def dpmpp_2s_ancestral(model, x, sigmas, *, extra_args=None, callback=None, noise_sampler=None, control=None,
                       eta=1.0, s_noise=1.0):
    """DPM++ 2S a: a two-stage DPM-Solver++ step (data prediction) to sigma_down, then noise up to sigma_next."""
    noise_sampler = _require_noise(noise_sampler, "DPM++ 2S a")
    run = _Run(model, x, extra_args, callback, control)
    for i, s, s_next in run.steps(sigmas):
        denoised = run.denoise(x, s)
        run.report(i, _total(sigmas), s, s_next, x, denoised)
        down, up = ancestral_split(s, s_next, eta)
        if down == 0:
            x = x + _to_d(x, s, denoised) * (down - s)
            continue
        h = math.log(s / down)  # step length in lambda = -log(sigma)
        s_mid = s * math.exp(-h / 2)
        x_mid = (s_mid / s) * x - math.expm1(-h / 2) * denoised
        x = (down / s) * x - math.expm1(-h) * run.denoise(x_mid, s_mid)
        if up > 0:
            x = x + noise_sampler(s, s_next) * (s_noise * up)
    return x


def dpmpp_sde(model, x, sigmas, *, extra_args=None, callback=None, noise_sampler=None, control=None,
              eta=1.0, s_noise=1.0, r=0.5):
    """DPM++ SDE: a stochastic two-stage DPM-Solver++ step, the stage at lambda + r·h.

    Each of the two stages draws its own noise from ``noise_sampler`` (independent per call, not a Brownian tree).
    """
    noise_sampler = _require_noise(noise_sampler, "DPM++ SDE")
    run = _Run(model, x, extra_args, callback, control)
    for i, s, s_next in run.steps(sigmas):
        denoised = run.denoise(x, s)
        run.report(i, _total(sigmas), s, s_next, x, denoised)
        if s_next == 0:
            x = x + _to_d(x, s, denoised) * (s_next - s)
            continue
        h = math.log(s / s_next)
        s_mid = s * math.exp(-r * h)
        down, up = ancestral_split(s, s_mid, eta)
        x_mid = (down / s) * x - math.expm1(-math.log(s / down)) * denoised
        if up > 0:
            x_mid = x_mid + noise_sampler(s, s_mid) * (s_noise * up)
        denoised_mid = run.denoise(x_mid, s_mid)
        fac = 1 / (2 * r)
        mixed = (1 - fac) * denoised + fac * denoised_mid
        down, up = ancestral_split(s, s_next, eta)
        x = (down / s) * x - math.expm1(-math.log(s / down)) * mixed
        if up > 0:
            x = x + noise_sampler(s, s_next) * (s_noise * up)
    return x


# --- multistep ------------------------------------------------------------------------------------------------

_GAUSS_NODES, _GAUSS_WEIGHTS = (v.tolist() for v in np.polynomial.legendre.leggauss(4))  # exact to degree 7


def _lms_coefficient(order: int, sigmas: list[float], i: int, j: int) -> float:
    """Integral over [sigma_i, sigma_i+1] of the Lagrange basis polynomial of sigma_{i-j}.

    The basis (degree < 4) is built on the last ``order`` sigmas; 4-point Gauss–Legendre integrates it exactly.
    """
    nodes = [sigmas[i - k] for k in range(order)]
    a, b = sigmas[i], sigmas[i + 1]
    total = 0.0
    for u, w in zip(_GAUSS_NODES, _GAUSS_WEIGHTS):
        tau = (a + b) / 2 + (b - a) / 2 * u
        value = 1.0
        for k, node in enumerate(nodes):
            if k != j:
                value *= (tau - node) / (nodes[j] - node)
        total += w * value
    return total * (b - a) / 2


def lms(model, x, sigmas, *, extra_args=None, callback=None, noise_sampler=None, control=None, order=4):
    """Linear multistep (Adams–Bashforth on non-uniform sigmas) of up to ``order`` past derivatives."""
    run = _Run(model, x, extra_args, callback, control)
    values = sigmas.tolist()
    history: list[torch.Tensor] = []
    for i, s, s_next in run.steps(sigmas):
        denoised = run.denoise(x, s)
        run.report(i, _total(sigmas), s, s_next, x, denoised)
        history = (history + [_to_d(x, s, denoised)])[-order:]
        current = len(history)
        coeffs = [_lms_coefficient(current, values, i, j) for j in range(current)]
        x = x + sum(c * d for c, d in zip(coeffs, reversed(history)))
    return x


def dpmpp_2m(model, x, sigmas, *, extra_args=None, callback=None, noise_sampler=None, control=None):
    """DPM++ 2M: second-order multistep DPM-Solver++ (data prediction); first and last steps are first order."""
    run = _Run(model, x, extra_args, callback, control)
    previous: torch.Tensor | None = None
    h_last = 0.0
    for i, s, s_next in run.steps(sigmas):
        denoised = run.denoise(x, s)
        run.report(i, _total(sigmas), s, s_next, x, denoised)
        if s_next == 0:
            x = denoised
            continue
        h = math.log(s / s_next)
        target = denoised
        if previous is not None:
            r = h_last / h
            target = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * previous
        x = (s_next / s) * x - math.expm1(-h) * target
        previous, h_last = denoised, h
    return x


def dpmpp_2m_sde(model, x, sigmas, *, extra_args=None, callback=None, noise_sampler=None, control=None,
                 eta=1.0, s_noise=1.0, solver_type="midpoint"):
    """DPM++ 2M SDE: multistep second-order solver of the diffusion SDE ("midpoint" or "heun" correction)."""
    if solver_type not in ("midpoint", "heun"):
        raise ValueError(f"DPM++ 2M SDE solver_type must be 'midpoint' or 'heun', got {solver_type!r}")
    noise_sampler = _require_noise(noise_sampler, "DPM++ 2M SDE")
    run = _Run(model, x, extra_args, callback, control)
    previous: torch.Tensor | None = None
    h_last = 0.0
    for i, s, s_next in run.steps(sigmas):
        denoised = run.denoise(x, s)
        run.report(i, _total(sigmas), s, s_next, x, denoised)
        if s_next == 0:
            x = denoised
            continue
        h = math.log(s / s_next)
        eta_h = eta * h
        decay = -math.expm1(-h - eta_h)
        x = (s_next / s) * math.exp(-eta_h) * x + decay * denoised
        if previous is not None:
            weight = 0.5 * decay if solver_type == "midpoint" else 1 - decay / (h + eta_h)
            x = x + (weight * h / h_last) * (denoised - previous)
        if eta > 0:
            x = x + noise_sampler(s, s_next) * (s_next * math.sqrt(-math.expm1(-2 * eta_h)) * s_noise)
        previous, h_last = denoised, h
    return x


def dpmpp_3m_sde(model, x, sigmas, *, extra_args=None, callback=None, noise_sampler=None, control=None,
                 eta=1.0, s_noise=1.0):
    """DPM++ 3M SDE: third-order multistep solver of the diffusion SDE (lower order while history builds up)."""
    noise_sampler = _require_noise(noise_sampler, "DPM++ 3M SDE")
    run = _Run(model, x, extra_args, callback, control)
    prev1: torch.Tensor | None = None
    prev2: torch.Tensor | None = None
    h1 = h2 = 0.0
    for i, s, s_next in run.steps(sigmas):
        denoised = run.denoise(x, s)
        run.report(i, _total(sigmas), s, s_next, x, denoised)
        if s_next == 0:
            x = denoised
            continue
        h = math.log(s / s_next)
        h_eta = h * (eta + 1)
        x = math.exp(-h_eta) * x - math.expm1(-h_eta) * denoised
        phi_2 = math.expm1(-h_eta) / h_eta + 1
        if prev2 is not None:
            r0, r1 = h1 / h, h2 / h
            d1_0 = (denoised - prev1) / r0
            d1_1 = (prev1 - prev2) / r1
            d1 = d1_0 + (d1_0 - d1_1) * (r0 / (r0 + r1))
            d2 = (d1_0 - d1_1) / (r0 + r1)
            phi_3 = phi_2 / h_eta - 0.5
            x = x + phi_2 * d1 - phi_3 * d2
        elif prev1 is not None:
            x = x + phi_2 * (denoised - prev1) * (h / h1)
        if eta > 0:
            x = x + noise_sampler(s, s_next) * (s_next * math.sqrt(-math.expm1(-2 * h * eta)) * s_noise)
        prev1, prev2 = denoised, prev1
        h1, h2 = h, h1
    return x


_PLMS_WEIGHTS = {1: (3 / 2, -1 / 2), 2: (23 / 12, -16 / 12, 5 / 12), 3: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


def plms(model, x, sigmas, *, extra_args=None, callback=None, noise_sampler=None, control=None):
    """PLMS (pseudo linear multistep): Adams–Bashforth weights for equal steps on the derivative history.

    The first step, with no history, is a Heun step (two model evaluations), as in the original PLMS.
    """
    run = _Run(model, x, extra_args, callback, control)
    history: list[torch.Tensor] = []
    for i, s, s_next in run.steps(sigmas):
        denoised = run.denoise(x, s)
        run.report(i, _total(sigmas), s, s_next, x, denoised)
        d = _to_d(x, s, denoised)
        if history:
            weights = _PLMS_WEIGHTS[len(history)]
            d_step = sum(w * past for w, past in zip(weights, [d] + history[::-1]))
        elif s_next > 0:
            x_euler = x + d * (s_next - s)
            d_step = (d + _to_d(x_euler, s_next, run.denoise(x_euler, s_next))) / 2
        else:
            d_step = d
        history = (history + [d])[-3:]
        x = x + d_step * (s_next - s)
    return x


def _unipc_coefficients(rks: list[float], hh: float, order: int, variant: str) -> tuple[np.ndarray, np.ndarray, float]:
    """The UniPC linear system ``R rho = b`` (in float64) and the scale ``B(h)`` for ``hh = -h``."""
    b_h = hh if variant == "bh1" else math.expm1(hh)
    rows, rhs = [], []
    h_phi_k = math.expm1(hh) / hh - 1
    factorial = 1
    for k in range(1, order + 1):
        rows.append([rk ** (k - 1) for rk in rks])
        rhs.append(h_phi_k * factorial / b_h)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    return np.array(rows), np.array(rhs), b_h


def _unipc_differences(history: list[tuple[float, torch.Tensor]], order: int, h: float) -> tuple[list[float], list]:
    """Normalised differences of past data predictions relative to the newest one (``history[-1]``)."""
    lam0, m0 = history[-1]
    rks, diffs = [], []
    for k in range(1, order):
        lam_k, m_k = history[-(k + 1)]
        rk = (lam_k - lam0) / h
        rks.append(rk)
        diffs.append((m_k - m0) / rk)
    return rks + [1.0], diffs


def unipc(model, x, sigmas, *, extra_args=None, callback=None, noise_sampler=None, control=None,
          order=3, variant="bh1", lower_order_final=True):
    """UniPC (Zhao et al. 2023): multistep predictor (UniP) plus corrector (UniC) on data predictions.

    The corrector reuses the model evaluation of the next step, so each step costs one evaluation. ``variant``
    "bh1" (A1111's default) or "bh2" (diffusers' default) chooses B(h). A final step to sigma 0 returns the
    denoised estimate (the limit of the first-order step); there is no corrector after the last step.
    """
    if variant not in ("bh1", "bh2"):
        raise ValueError(f"UniPC variant must be 'bh1' or 'bh2', got {variant!r}")
    run = _Run(model, x, extra_args, callback, control)
    n = _total(sigmas)
    history: list[tuple[float, torch.Tensor]] = []  # (lambda = -log sigma, data prediction)
    x_before: torch.Tensor | None = None
    last_order = 0
    for i, s, s_next in run.steps(sigmas):
        denoised = run.denoise(x, s)
        run.report(i, n, s, s_next, x, denoised)
        lam = -math.log(s)
        if x_before is not None:  # UniC: correct x (reached by the last predictor) with the new evaluation
            lam0, m0 = history[-1]
            h = lam - lam0
            rks, diffs = _unipc_differences(history, last_order, h)
            rows, rhs, b_h = _unipc_coefficients(rks, -h, last_order, variant)
            rhos = np.array([0.5]) if last_order == 1 else np.linalg.solve(rows, rhs)
            corr = sum(float(rho) * d for rho, d in zip(rhos[:-1], diffs))
            x_first_order = (s / math.exp(-lam0)) * x_before - math.expm1(-h) * m0
            x = x_first_order - b_h * (corr + float(rhos[-1]) * (denoised - m0))
        history = (history + [(lam, denoised)])[-order:]
        step_order = min(order, n - i) if lower_order_final else order
        step_order = min(step_order, len(history))
        x_before, last_order = x, step_order
        if s_next == 0:
            x = denoised
            continue
        h = math.log(s / s_next)
        x_next = (s_next / s) * x - math.expm1(-h) * denoised
        if step_order >= 2:  # UniP
            rks, diffs = _unipc_differences(history, step_order, h)
            rows, rhs, b_h = _unipc_coefficients(rks, -h, step_order, variant)
            rhos = [0.5] if step_order == 2 else np.linalg.solve(rows[:-1, :-1], rhs[:-1]).tolist()
            x_next = x_next - b_h * sum(float(rho) * d for rho, d in zip(rhos, diffs))
        x = x_next
    return x


# --- restart ---------------------------------------------------------------------------------------------------

def restart(model, x, sigmas, *, extra_args=None, callback=None, noise_sampler=None, control=None,
            s_noise=1.0, restart_list=None):
    """Restart sampling (Xu et al. 2023): Heun steps, plus segments that re-noise back up and integrate again.

    ``restart_list`` maps a sigma (where a restart begins) to ``(steps, times, sigma_max_of_restart)``. Left as
    None, as in A1111: with 20 or more steps, 9 steps (or steps // 4 with 36+) are spent on 1 (or 2) restarts from
    sigma 0.1 to sigma 2, and the main pass becomes a Karras schedule of the remaining steps between the schedule's
    ends. With fewer than 20 steps it is plain Heun.
    """
    noise_sampler = _require_noise(noise_sampler, "Restart")
    sigmas = sigmas.detach().to("cpu", torch.float32)
    steps = _total(sigmas)
    if restart_list is None:
        restart_list = {}
        if steps >= 20:
            restart_steps, restart_times = (steps // 4, 2) if steps >= 36 else (9, 1)
            sigmas = karras_sigmas(steps - restart_steps * restart_times, float(sigmas[-2]), float(sigmas[0]))
            restart_list = {0.1: (restart_steps + 1, restart_times, 2.0)}
    starts = {int((sigmas - key).abs().argmin()): value for key, value in restart_list.items()}
    segments: list[tuple[float, float]] = []
    for i in range(len(sigmas) - 1):
        segments.append((float(sigmas[i]), float(sigmas[i + 1])))
        if i + 1 in starts:
            restart_steps, times, restart_max = starts[i + 1]
            top = int((sigmas - restart_max).abs().argmin())
            if top < i + 1:
                ladder = karras_sigmas(restart_steps, float(sigmas[i + 1]), float(sigmas[top]))[:-1].tolist()
                segments.extend(list(zip(ladder[:-1], ladder[1:])) * times)

    run = _Run(model, x, extra_args, callback, control)
    last = segments[0][0] if segments else 0.0
    for i, (s, s_next) in enumerate(segments):
        if run.begin_step():
            break
        if s > last:  # a restart: add noise to go back up from `last` to `s`
            x = x + noise_sampler(last, s) * (s_noise * math.sqrt(s**2 - last**2))
        denoised = run.denoise(x, s)
        run.report(i, len(segments), s, s_next, x, denoised)
        d = _to_d(x, s, denoised)
        x_euler = x + d * (s_next - s)
        if s_next == 0:
            x = x_euler
        else:
            x = x + (d + _to_d(x_euler, s_next, run.denoise(x_euler, s_next))) / 2 * (s_next - s)
        last = s_next
    return x


# --- DPM-Solver (eps form) with fixed and adaptive steps --------------------------------------------------------

class _EpsSolver:
    """DPM-Solver-1/2/3 steps in t = -log(sigma); ``t`` values are float64 tensors of shape [batch, 1, ...]."""

    def __init__(self, run: _Run) -> None:
        self.run = run

    def eps(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        sigma = torch.exp(-t)
        denoised = self.run.denoise(x, sigma.reshape(-1).to(torch.float32))
        return (x - denoised) / sigma.to(x.dtype)

    @staticmethod
    def sigma(t: torch.Tensor) -> torch.Tensor:
        return torch.exp(-t)

    def step_1(self, x, t, t_next, eps):
        h = t_next - t
        return x - (self.sigma(t_next) * torch.expm1(h)).to(x.dtype) * eps

    def stage(self, x, t, eps, r, h):
        """First stage of the 2/3-stage methods: the point at t + r·h and the eps there."""
        u = x - (self.sigma(t + r * h) * torch.expm1(r * h)).to(x.dtype) * eps
        return u, self.eps(u, t + r * h)

    def finish_2(self, x, t_next, h, eps, eps_r1, r1):
        c = self.sigma(t_next) * torch.expm1(h)
        return x - c.to(x.dtype) * eps - (c / (2 * r1)).to(x.dtype) * (eps_r1 - eps)

    def finish_3(self, x, t, t_next, h, eps, eps_r1, r1=1 / 3, r2=2 / 3):
        u2 = (x - (self.sigma(t + r2 * h) * torch.expm1(r2 * h)).to(x.dtype) * eps
              - (self.sigma(t + r2 * h) * (r2 / r1) * (torch.expm1(r2 * h) / (r2 * h) - 1)).to(x.dtype)
              * (eps_r1 - eps))
        eps_r2 = self.eps(u2, t + r2 * h)
        c = self.sigma(t_next)
        return (x - (c * torch.expm1(h)).to(x.dtype) * eps
                - (c / r2 * (torch.expm1(h) / h - 1)).to(x.dtype) * (eps_r2 - eps))

    def step(self, x, t, t_next, eps, order):
        if order == 1:
            return self.step_1(x, t, t_next, eps)
        h = t_next - t
        if order == 2:
            _, eps_r1 = self.stage(x, t, eps, 0.5, h)
            return self.finish_2(x, t_next, h, eps, eps_r1, 0.5)
        _, eps_r1 = self.stage(x, t, eps, 1 / 3, h)
        return self.finish_3(x, t, t_next, h, eps, eps_r1)


def _sigma_range(sigmas: torch.Tensor) -> tuple[float, float]:
    positive = sigmas[sigmas > 0]
    return float(positive.min()), float(positive.max())


def _batch_t(value: float, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],) + (1,) * (x.ndim - 1), value, dtype=torch.float64, device=x.device)


def dpm_fast(model, x, sigmas, *, extra_args=None, callback=None, noise_sampler=None, control=None,
             eta=1.0, s_noise=1.0):
    """DPM fast: DPM-Solver with orders 3, 3, …, (2, 1) on steps uniform in log-sigma.

    Uses only the schedule's range and length: ``len(sigmas) - 1`` model evaluations from sigmas[0] to the smallest
    non-zero sigma, where it stops (as in A1111, the result keeps that last small noise level). eta = 1, A1111's
    default, adds ancestral noise.
    """
    if eta > 0:
        noise_sampler = _require_noise(noise_sampler, "DPM fast")
    run = _Run(model, x, extra_args, callback, control)
    solver = _EpsSolver(run)
    sigma_min, sigma_max = _sigma_range(sigmas)
    evaluations = _total(sigmas)
    t_start, t_end = -math.log(sigma_max), -math.log(sigma_min)
    m = evaluations // 3 + 1
    ts = np.linspace(t_start, t_end, m + 1)
    orders = [3] * (m - 2) + [2, 1] if evaluations % 3 == 0 else [3] * (m - 1) + [evaluations % 3]
    for i, order in enumerate(orders):
        if run.begin_step():
            break
        t, t_next = float(ts[i]), float(ts[i + 1])
        s, s_next = math.exp(-t), math.exp(-t_next)
        target, up = t_next, 0.0
        if eta > 0:
            down, _ = ancestral_split(s, s_next, eta)
            target = min(t_end, -math.log(down))
            up = math.sqrt(max(s_next**2 - math.exp(-2 * target), 0.0))
        t_b = _batch_t(t, x)
        eps = solver.eps(x, t_b)
        run.report(i, len(orders), s, s_next, x, x - s * eps)
        x = solver.step(x, t_b, _batch_t(target, x), eps, order)
        if up > 0:
            x = x + noise_sampler(s, s_next) * (up * s_noise)
    return x


def dpm_adaptive(model, x, sigmas, *, extra_args=None, callback=None, noise_sampler=None, control=None,
                 eta=1.0, s_noise=1.0, order=3, rtol=0.05, atol=0.0078, h_init=0.05,
                 pcoeff=0.0, icoeff=1.0, dcoeff=0.0, accept_safety=0.81, max_attempts=10_000):
    """DPM adaptive: embedded DPM-Solver-(2,3) (or (1,2) with ``order=2``) with a PID step-size controller.

    Each batch item has its own step size and error control, so a batch gives the same results as single runs;
    all items advance in lockstep (one proposal each per model call) until every one reaches the smallest non-zero
    sigma of ``sigmas`` (the schedule's other values are not used). The step count is not known in advance
    (``StepInfo.total`` is None).
    """
    if order not in (2, 3):
        raise ValueError(f"DPM adaptive order must be 2 or 3, got {order}")
    if eta > 0:
        noise_sampler = _require_noise(noise_sampler, "DPM adaptive")
    run = _Run(model, x, extra_args, callback, control)
    solver = _EpsSolver(run)
    sigma_min, sigma_max = _sigma_range(sigmas)
    t_start, t_end = -math.log(sigma_max), -math.log(sigma_min)
    batch = x.shape[0]
    shape = (batch,) + (1,) * (x.ndim - 1)
    controller_order = 1.5 if eta > 0 else order
    b1 = (pcoeff + icoeff + dcoeff) / controller_order
    b2 = -(pcoeff + 2 * dcoeff) / controller_order
    b3 = dcoeff / controller_order
    s = np.full(batch, t_start)
    h = np.full(batch, h_init)
    inv_errors = np.zeros((batch, 3))
    started = np.zeros(batch, dtype=bool)
    x_prev = x
    for attempt in range(max_attempts):
        active = s < t_end - 1e-5
        if not active.any() or run.begin_step():
            break
        # finished items take a harmless dummy step whose result is discarded
        s_step = np.where(active, s, t_start)
        t_step = np.where(active, np.minimum(t_end, s + h), t_start + h_init)
        target, up = t_step.copy(), np.zeros(batch)
        if eta > 0:
            for k in range(batch):
                down, _ = ancestral_split(math.exp(-s_step[k]), math.exp(-t_step[k]), eta)
                target[k] = min(t_end, -math.log(down))
                up[k] = math.sqrt(max(math.exp(-2 * t_step[k]) - math.exp(-2 * target[k]), 0.0))
        t_b = torch.as_tensor(s_step, device=x.device).reshape(shape)
        t_next_b = torch.as_tensor(target, device=x.device).reshape(shape)
        eps = solver.eps(x, t_b)
        denoised = x - solver.sigma(t_b).to(x.dtype) * eps
        run.report(attempt, None, float(np.exp(-s_step[active]).max()), float(np.exp(-t_step[active]).max()),
                   x, denoised)
        step_h = t_next_b - t_b
        if order == 2:
            x_low = solver.step_1(x, t_b, t_next_b, eps)
            _, eps_r1 = solver.stage(x, t_b, eps, 0.5, step_h)
            x_high = solver.finish_2(x, t_next_b, step_h, eps, eps_r1, 0.5)
        else:
            _, eps_r1 = solver.stage(x, t_b, eps, 1 / 3, step_h)
            x_low = solver.finish_2(x, t_next_b, step_h, eps, eps_r1, 1 / 3)
            x_high = solver.finish_3(x, t_b, t_next_b, step_h, eps, eps_r1)
        delta = torch.maximum(torch.full_like(x_low, atol), rtol * torch.maximum(x_low.abs(), x_prev.abs()))
        error = (x_low - x_high).flatten(1).norm(dim=1) / delta.flatten(1).norm(dim=1)
        inv = 1 / (error.double().cpu().numpy() + 1e-8)
        inv_errors[~started] = inv[~started, None]
        inv_errors[:, 0] = inv
        factor = inv_errors[:, 0] ** b1 * inv_errors[:, 1] ** b2 * inv_errors[:, 2] ** b3
        factor = 1 + np.arctan(factor - 1)
        accept = active & (factor >= accept_safety)
        inv_errors[accept, 2] = inv_errors[accept, 1]
        inv_errors[accept, 1] = inv_errors[accept, 0]
        started |= active
        h = np.where(active, h * factor, h)
        # one draw per item and attempt (the sigma arguments are nominal: items are at different sigmas)
        noise = noise_sampler(math.exp(-t_start), math.exp(-t_end)) if eta > 0 else None
        keep = torch.as_tensor(accept, device=x.device).reshape(shape)
        x_new = x_high if noise is None else x_high + noise * torch.as_tensor(up * s_noise, device=x.device,
                                                                                dtype=x.dtype).reshape(shape)
        x_prev = torch.where(keep, x_low, x_prev)
        x = torch.where(keep, x_new, x)
        s = np.where(accept, t_step, s)
    return x

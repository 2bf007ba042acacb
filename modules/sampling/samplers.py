"""Samplers: small pure functions that integrate from noise to data in sigma space.

Every sampler has the signature::

    sampler(model, x, sigmas, *, extra_args=None, callback=None, noise_sampler=None, control=None, **options) -> x

- ``model(x, sigma, **extra_args) -> denoised``: ``sigma`` is a float32 tensor of shape ``[batch]`` on x's device
  (one value per batch item; all equal except in DPM adaptive, which steps each item separately).
- ``x``: the starting latents, already scaled to ``sigmas[0]`` (``noise * sigmas[0]`` for txt2img).
- ``sigmas``: a descending schedule ending at 0 (see :mod:`modules.sampling.schedules`).
- ``callback(StepInfo)``: called once per step after the step's first model evaluation.
- ``noise_sampler(sigma, sigma_next) -> tensor`` of x's shape: required by the stochastic samplers (ancestral, SDE,
  LCM, Restart, DDIM with eta > 0); see :class:`modules.sampling.noise.SeededNoise` and, for the SDE samplers,
  :class:`modules.sampling.noise.BrownianNoise`. DPM adaptive also passes ``rows=`` where the sampler takes it.
- ``control``: a :class:`SamplingControl`; when ``interrupted`` or ``skipped`` is set, the sampler returns the
  current x at the start of the next step, before any further model evaluation. A model evaluation may also stop
  inside itself by raising :class:`Interrupted`; it leaves the sampler carrying the x its step started from (what
  a stop before that step returns), and ``SamplerInfo.sample`` returns that x.

Nothing here keeps state between calls; the same inputs give the same outputs.
"""

from __future__ import annotations

import inspect
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


def _float32_lambda_points(device: torch.device, sigma: float, sigma_next: float, r: float) -> tuple[float, ...]:
    """sigma, the sigma at lambda + r·h, and sigma_next, each taken through lambda = -log(sigma) with float32 scalar
    tensors on ``device``.

    A1111's DPM++ SDE computes its sigmas this way, and its Brownian tree, queried at them, rounds times to 1e-6:
    the last bits of these values decide which noise comes out.
    """
    def scalar(value: float) -> torch.Tensor:
        return torch.tensor(value, dtype=torch.float32, device=device)

    lam, lam_next = -scalar(sigma).log(), -scalar(sigma_next).log()
    lam_mid = lam + (lam_next - lam) * r
    return tuple(float((-point).exp()) for point in (lam, lam_mid, lam_next))


def dpmpp_sde(model, x, sigmas, *, extra_args=None, callback=None, noise_sampler=None, control=None,
              eta=1.0, s_noise=1.0, r=0.5):
    """DPM++ SDE: a stochastic two-stage DPM-Solver++ step (Lu et al. 2022b), the stage at lambda + r·h.

    Both stages add noise; with A1111's Brownian-tree noise the stage's sigmas are A1111's float32 values
    (:func:`_float32_lambda_points`).
    """
    noise_sampler = _require_noise(noise_sampler, "DPM++ SDE")
    run = _Run(model, x, extra_args, callback, control)
    for i, s, s_next in run.steps(sigmas):
        denoised = run.denoise(x, s)
        run.report(i, _total(sigmas), s, s_next, x, denoised)
        if s_next == 0:
            x = x + _to_d(x, s, denoised) * (s_next - s)
            continue
        s, s_mid, s_next = _float32_lambda_points(run.device, s, s_next, r)
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


def _kernel_moments(big_h: float, count: int) -> list[float]:
    """``I_k = ∫_0^1 H e^{-H (1 - u)} u^k du`` for k < ``count``.

    In an exponential-integrator step whose x decays by ``e^{-H}``, a data prediction that varies as ``u^k`` over
    the step (u: the fraction of the step done) enters x with weight ``I_k``. ``I_0 = 1 - e^{-H}``, and
    integrating by parts, ``I_k = 1 - k I_{k-1} / H``.
    """
    moments = [-math.expm1(-big_h)]
    for k in range(1, count):
        moments.append(1 - k * moments[-1] / big_h)
    return moments


def _dpmpp_multistep(model, x, sigmas, *, extra_args, callback, control, noise_sampler, eta: float, s_noise: float,
                     order: int, exact_slope: bool):
    """Multistep DPM-Solver++ (Lu et al. 2022b) on data predictions, with SDE noise for ``eta > 0``.

    From sigma to sigma_next (h = log(sigma / sigma_next), decay H = (1 + eta) h) the exact solution for a data
    prediction D(u) over the step is ``x_next = e^{-H} x + ∫ D`` (kernel of :func:`_kernel_moments`) plus noise of
    std ``sigma_next sqrt(1 - e^{-2 eta h})``. D is extrapolated from this step's prediction and up to
    ``order - 1`` earlier ones, which sit at u = -r (r: their distance in lambda in units of h):
    D(u) ≈ D0 + a u (+ c u² from three predictions). The slope term gets weight ``I_1`` (``exact_slope``), or
    ``I_0 / 2``, its value at the step's midpoint (DPM++ 2M and 2M SDE "midpoint"). The curvature term gets
    ``I_2 / 2``, half its moment, as in the published third-order multistep update (A1111's numbers depend on
    it). A step to sigma 0 returns D0.
    """
    run = _Run(model, x, extra_args, callback, control)
    past: list[tuple[float, torch.Tensor]] = []  # (h of the step it started, prediction), most recent first
    for i, s, s_next in run.steps(sigmas):
        denoised = run.denoise(x, s)
        run.report(i, _total(sigmas), s, s_next, x, denoised)
        if s_next == 0:
            x = denoised
            continue
        h = math.log(s / s_next)
        big_h = (1 + eta) * h
        moments = _kernel_moments(big_h, 3)
        x = math.exp(-big_h) * x + moments[0] * denoised
        if past:
            r1 = past[0][0] / h
            slope = (denoised - past[0][1]) / r1
            if len(past) == 2:
                r2 = past[1][0] / h
                curvature = (slope - (past[0][1] - past[1][1]) / r2) / (r1 + r2)
                slope = slope + curvature * r1
                x = x + (moments[2] / 2) * curvature
            x = x + (moments[1] if exact_slope else moments[0] / 2) * slope
        if eta > 0:
            x = x + noise_sampler(s, s_next) * (s_next * math.sqrt(-math.expm1(-2 * eta * h)) * s_noise)
        past = [(h, denoised)] + past[:order - 2]
    return x


def dpmpp_2m(model, x, sigmas, *, extra_args=None, callback=None, noise_sampler=None, control=None):
    """DPM++ 2M: DPM-Solver++(2M) (Lu et al. 2022b), second-order multistep on data predictions."""
    return _dpmpp_multistep(model, x, sigmas, extra_args=extra_args, callback=callback, control=control,
                            noise_sampler=None, eta=0.0, s_noise=1.0, order=2, exact_slope=False)


def dpmpp_2m_sde(model, x, sigmas, *, extra_args=None, callback=None, noise_sampler=None, control=None,
                 eta=1.0, s_noise=1.0, solver_type="midpoint"):
    """DPM++ 2M SDE: SDE-DPM-Solver++(2M) (Lu et al. 2022b); ``solver_type`` "midpoint" or "heun" (exact slope)."""
    if solver_type not in ("midpoint", "heun"):
        raise ValueError(f"DPM++ 2M SDE solver_type must be 'midpoint' or 'heun', got {solver_type!r}")
    noise_sampler = _require_noise(noise_sampler, "DPM++ 2M SDE")
    return _dpmpp_multistep(model, x, sigmas, extra_args=extra_args, callback=callback, control=control,
                            noise_sampler=noise_sampler, eta=eta, s_noise=s_noise, order=2,
                            exact_slope=solver_type == "heun")


def dpmpp_3m_sde(model, x, sigmas, *, extra_args=None, callback=None, noise_sampler=None, control=None,
                 eta=1.0, s_noise=1.0):
    """DPM++ 3M SDE: the SDE multistep DPM-Solver++ (Lu et al. 2022b) taken to third order (lower while the
    history builds up)."""
    noise_sampler = _require_noise(noise_sampler, "DPM++ 3M SDE")
    return _dpmpp_multistep(model, x, sigmas, extra_args=extra_args, callback=callback, control=control,
                            noise_sampler=noise_sampler, eta=eta, s_noise=s_noise, order=3, exact_slope=True)


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


def _unipc_weights(nodes: list[float], h: float, variant: str) -> list[float]:
    """Weights of the differences ``(m_k - m_0) / r_k`` of data predictions at ``nodes`` r_k (UniPC's B(h)
    system, Zhao et al. 2023).

    Several nodes: the weights solve ``sum_k w_k r_k^(j-1) = I_j(h)`` for j = 1 … n (moments of
    :func:`_kernel_moments`), which integrates a prediction polynomial in lambda of degree n exactly; UniPC's
    B(h) cancels from that solution. A single node: UniPC fixes rho = 1/2, so the weight is B(h) / 2, with
    B(h) = h ("bh1") or 1 - e^{-h} ("bh2").
    """
    if len(nodes) == 1:
        return [0.5 * (h if variant == "bh1" else -math.expm1(-h))]
    powers = np.array([[r**j for r in nodes] for j in range(len(nodes))])
    return np.linalg.solve(powers, _kernel_moments(h, len(nodes) + 1)[1:]).tolist()


def _unipc_step(x: torch.Tensor, sigma: float, sigma_next: float, history: list[tuple[float, torch.Tensor]],
                order: int, variant: str, new: torch.Tensor | None = None) -> torch.Tensor:
    """x moved from ``sigma`` (the lambda of ``history[-1]``) to ``sigma_next``: the first-order data-prediction
    step plus UniPC's terms from the ``order - 1`` past predictions before ``history[-1]`` and, for the
    corrector, ``new``, the prediction at ``sigma_next``."""
    h = math.log(sigma / sigma_next)
    lam0, m0 = history[-1]
    terms = [((lam - lam0) / h, m) for lam, m in history[len(history) - order:-1]]
    if new is not None:
        terms.append((1.0, new))
    x = (sigma_next / sigma) * x - math.expm1(-h) * m0
    if terms:
        weights = _unipc_weights([r for r, _ in terms], h, variant)
        x = x + sum(w * (m - m0) / r for w, (r, m) in zip(weights, terms))
    return x


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
    history: list[tuple[float, torch.Tensor]] = []  # (lambda = -log sigma, data prediction), newest last
    predicted: tuple[torch.Tensor, float, int] | None = None  # the last predictor's start x, sigma and order
    for i, s, s_next in run.steps(sigmas):
        denoised = run.denoise(x, s)
        run.report(i, n, s, s_next, x, denoised)
        if predicted is not None:  # UniC: redo the last step with this evaluation as one more node
            x_start, s_start, step_order = predicted
            x = _unipc_step(x_start, s_start, s, history, step_order, variant, new=denoised)
        history = (history + [(-math.log(s), denoised)])[-order:]
        if s_next == 0:
            x = denoised
            continue
        step_order = min(order, n - i, len(history)) if lower_order_final else min(order, len(history))
        predicted = (x, s, step_order)
        x = _unipc_step(x, s, s_next, history, step_order, variant)
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


# --- DPM-Solver (noise prediction) with fixed and adaptive steps -------------------------------------------------
# In lambda = -log(sigma) the probability-flow ODE reads dx/dlambda = -sigma(lambda) eps(x, lambda). Taking eps as
# eps0 + (lambda' - lambda) * slope over a sub-step of length L = rho * h, it integrates exactly to
#     x_end = x - sigma_end (e^L - 1) eps0 - sigma_end (e^L - 1 - L) slope.
# DPM-Solver-1/2/3 are this with slopes estimated from eps at intermediate points. Lambdas here are float64
# tensors of shape [batch, 1, ...], one value per batch item.

def _eps_at(run: _Run, x: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    sigma = torch.exp(-lam)
    return (x - run.denoise(x, sigma.reshape(-1).to(torch.float32))) / sigma.to(x.dtype)


def _exp_step(x: torch.Tensor, lam: torch.Tensor, h: torch.Tensor, rho: float, eps0: torch.Tensor,
              later: tuple[torch.Tensor, float] | None = None) -> torch.Tensor:
    """x moved from ``lam`` to ``lam + rho h``; ``later`` = (eps at ``lam + r h``, r) gives eps its slope."""
    span = rho * h
    sigma_end = torch.exp(-(lam + span))
    x = x - (sigma_end * torch.expm1(span)).to(x.dtype) * eps0
    if later is not None:
        eps_r, r = later
        x = x - (sigma_end * (torch.expm1(span) - span) / (r * h)).to(x.dtype) * (eps_r - eps0)
    return x


def _dpm_solver(run: _Run, x: torch.Tensor, lam: torch.Tensor, lam_next: torch.Tensor, eps0: torch.Tensor,
                order: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """DPM-Solver-``order`` (Lu et al. 2022a) from ``lam`` to ``lam_next`` and the lower-order result embedded in it.

    Order 1 is the plain exponential step (no embedded result). Order 2 evaluates eps at r = 1/2 and moves with
    ``eps0 + (eps_r - eps0) / (2 r)`` (embedded: order 1). Order 3 evaluates eps at 1/3 and at 2/3 (the latter
    reached with the slope from 1/3) and takes the slope from 2/3 for the whole step (embedded: the order-2 move
    with r = 1/3).
    """
    h = lam_next - lam
    if order == 1:
        return _exp_step(x, lam, h, 1.0, eps0), None
    r1 = 0.5 if order == 2 else 1 / 3
    eps_r1 = _eps_at(run, _exp_step(x, lam, h, r1, eps0), lam + r1 * h)
    second = _exp_step(x, lam, h, 1.0, eps0 + (eps_r1 - eps0) / (2 * r1))
    if order == 2:
        return second, _exp_step(x, lam, h, 1.0, eps0)
    r2 = 2 / 3
    eps_r2 = _eps_at(run, _exp_step(x, lam, h, r2, eps0, (eps_r1, r1)), lam + r2 * h)
    return _exp_step(x, lam, h, 1.0, eps0, (eps_r2, r2)), second


def _ancestral_target(sigma: float, sigma_next: float, lam_end: float, eta: float) -> tuple[float, float]:
    """Where an ancestral DPM-Solver step really goes (a lambda, at most ``lam_end``) and the noise std that then
    brings it back to ``sigma_next``."""
    if eta == 0:
        return -math.log(sigma_next), 0.0
    down, _ = ancestral_split(sigma, sigma_next, eta)
    target = min(lam_end, -math.log(down))
    return target, math.sqrt(max(sigma_next**2 - math.exp(-2 * target), 0.0))


def _sigma_range(sigmas: torch.Tensor) -> tuple[float, float]:
    positive = sigmas[sigmas > 0]
    return float(positive.min()), float(positive.max())


def _per_item(values: np.ndarray | float, x: torch.Tensor) -> torch.Tensor:
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    return torch.as_tensor(np.broadcast_to(values, x.shape[:1]).copy(), dtype=torch.float64,
                           device=x.device).reshape(shape)


def _dpm_fast_orders(evaluations: int) -> list[int]:
    """Orders of DPM fast's steps: third order while evaluations last, the rest as one lower-order step; when
    three divides the count, the last three evaluations become a second- and a first-order step."""
    threes, rest = divmod(evaluations, 3)
    return [3] * (threes - 1) + [2, 1] if rest == 0 else [3] * threes + [rest]


def dpm_fast(model, x, sigmas, *, extra_args=None, callback=None, noise_sampler=None, control=None,
             eta=1.0, s_noise=1.0):
    """DPM fast: DPM-Solver (Lu et al. 2022a) with orders 3, 3, …, (2, 1) on steps uniform in log-sigma.

    Uses only the schedule's range and length: ``len(sigmas) - 1`` model evaluations from sigmas[0] to the smallest
    non-zero sigma, where it stops (as in A1111, the result keeps that last small noise level). eta = 1, A1111's
    default, adds ancestral noise.
    """
    if eta > 0:
        noise_sampler = _require_noise(noise_sampler, "DPM fast")
    run = _Run(model, x, extra_args, callback, control)
    sigma_min, sigma_max = _sigma_range(sigmas)
    orders = _dpm_fast_orders(_total(sigmas))
    grid = np.linspace(-math.log(sigma_max), -math.log(sigma_min), len(orders) + 1)
    for i, order in enumerate(orders):
        if run.begin_step():
            break
        s, s_next = math.exp(-grid[i]), math.exp(-grid[i + 1])
        target, up = _ancestral_target(s, s_next, float(grid[-1]), eta)
        lam = _per_item(grid[i], x)
        eps0 = _eps_at(run, x, lam)
        run.report(i, len(orders), s, s_next, x, x - s * eps0)
        x, _ = _dpm_solver(run, x, lam, _per_item(target, x), eps0, order)
        if up > 0:
            x = x + noise_sampler(s, s_next) * (up * s_noise)
    return x


def _pid_exponents(pcoeff: float, icoeff: float, dcoeff: float, order: float) -> np.ndarray:
    """Exponents of the last three log inverse errors in a PID step-size filter for a method of ``order``
    (Söderlind 2003, "Digital filters in adaptive time-stepping", ACM TOMS 29(1); after Gustafsson 1991, ACM TOMS
    17(4)): the step grows by ``exp(sum(exponent * log(1 / error)))``."""
    return np.array([pcoeff + icoeff + dcoeff, -(pcoeff + 2 * dcoeff), dcoeff]) / order


def _draw_rows(noise_sampler: NoiseSampler, sigma: float, sigma_next: float, rows: np.ndarray) -> torch.Tensor:
    """Noise for the flagged batch items only, where the noise sampler can tell them apart (``rows=``)."""
    if rows.all() or "rows" not in inspect.signature(noise_sampler).parameters:
        return noise_sampler(sigma, sigma_next)
    return noise_sampler(sigma, sigma_next, rows=rows.tolist())


def dpm_adaptive(model, x, sigmas, *, extra_args=None, callback=None, noise_sampler=None, control=None,
                 eta=1.0, s_noise=1.0, order=3, rtol=0.05, atol=0.0078, h_init=0.05,
                 pcoeff=0.0, icoeff=1.0, dcoeff=0.0, accept_safety=0.81, max_attempts=10_000):
    """DPM adaptive: DPM-Solver-23 (or -12 with ``order=2``) with adaptive steps (Lu et al. 2022a), the step size
    set by a PID filter (:func:`_pid_exponents`) with the limiter ``1 + arctan(f - 1)`` of Söderlind & Wang 2006
    ("Adaptive time-stepping and computational stability", J. Comput. Appl. Math. 185).

    Each attempt compares the two embedded results: error = RMS of ``(x_low - x_high) / max(atol, rtol *
    max(|x_low|, |x_prev|))`` (x_prev: x_low of the last accepted step); a step whose growth factor is below
    ``accept_safety`` is retried shorter. Each batch item has its own step size and error control and draws
    noise only when its own step is accepted, so a batch gives the same results as single runs (with a noise
    sampler that takes ``rows=``, like :class:`~modules.sampling.noise.SeededNoise`). All items advance in
    lockstep (one proposal each per model call) until every one reaches the smallest non-zero sigma of
    ``sigmas`` (the schedule's other values are not used); a finished item takes dummy steps whose results are
    discarded. The step count is not known in advance (``StepInfo.total`` is None).
    """
    if order not in (2, 3):
        raise ValueError(f"DPM adaptive order must be 2 or 3, got {order}")
    if eta > 0:
        noise_sampler = _require_noise(noise_sampler, "DPM adaptive")
    run = _Run(model, x, extra_args, callback, control)
    sigma_min, sigma_max = _sigma_range(sigmas)
    lam_start, lam_end = -math.log(sigma_max), -math.log(sigma_min)
    batch = x.shape[0]
    exponents = _pid_exponents(pcoeff, icoeff, dcoeff, 1.5 if eta > 0 else order)
    log_inv_errors = np.zeros((batch, 3))  # newest first; filled with the first error at an item's first attempt
    started = np.zeros(batch, dtype=bool)
    lam, h = np.full(batch, lam_start), np.full(batch, h_init)
    x_prev = x
    for attempt in range(max_attempts):
        active = lam < lam_end - 1e-5
        if not active.any() or run.begin_step():
            break
        lam_from = np.where(active, lam, lam_start)
        lam_to = np.where(active, np.minimum(lam_end, lam + h), lam_start + h_init)
        sig_from, sig_to = np.exp(-lam_from), np.exp(-lam_to)
        targets, ups = zip(*(_ancestral_target(a, b, lam_end, eta) for a, b in zip(sig_from, sig_to)))
        lam_b = _per_item(lam_from, x)
        eps0 = _eps_at(run, x, lam_b)
        run.report(attempt, None, float(sig_from[active].max()), float(sig_to[active].max()), x,
                   x - torch.exp(-lam_b).to(x.dtype) * eps0)
        x_high, x_low = _dpm_solver(run, x, lam_b, _per_item(np.array(targets), x), eps0, order)
        scale = torch.maximum(torch.full_like(x_low, atol), rtol * torch.maximum(x_low.abs(), x_prev.abs()))
        error = ((x_low - x_high) / scale).flatten(1).norm(dim=1) / math.sqrt(x[0].numel())
        log_inv = -np.log(error.double().cpu().numpy() + 1e-8)
        log_inv_errors[~started] = log_inv[~started, None]
        log_inv_errors[:, 0] = log_inv
        started |= active
        factor = 1 + np.arctan(np.exp(log_inv_errors @ exponents) - 1)
        accept = active & (factor >= accept_safety)
        log_inv_errors[accept, 1:] = log_inv_errors[accept, :-1]
        h = np.where(active, h * factor, h)
        if accept.any():
            keep = _per_item(accept, x).bool()
            if eta > 0:
                first = int(np.argmax(accept))
                noise = _draw_rows(noise_sampler, sig_from[first], sig_to[first], accept)
                x_high = x_high + noise * _per_item(np.array(ups) * s_noise, x).to(x.dtype)
            x_prev = torch.where(keep, x_low, x_prev)
            x = torch.where(keep, x_high, x)
            lam = np.where(accept, lam_to, lam)
    return x

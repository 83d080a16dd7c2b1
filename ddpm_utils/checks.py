"""Friendly checks for the exercise notebooks (`notebooks/exercises/`, made by `python -m ddpm_utils exercises`).

Each `check_*` runs the student's function on a few small cases and compares it with the
library's reference. On success it prints one line. On failure it raises `CheckFailed`, saying
which case failed, what was expected, what came back, and a hint. The hints are found by
comparing the answer with the results of the usual mistakes (a missing square root, 1-based t,
sin and cos swapped, ...): when the answer equals one of them, the hint names that mistake.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .diffusion import GaussianDiffusion, normal_kl
from .embeddings import sinusoidal_embedding
from .flow import FlowMatching
from .guidance import guided_eps
from .samplers import ddim_step, ddpm_step, dpm_solver_step
from .schedules import cosine_betas, linear_betas
from .unet import ResBlock


class CheckFailed(AssertionError):
    """A check found a wrong answer; the message explains what and why."""


def _show(v) -> str:
    if isinstance(v, torch.Tensor):
        if v.numel() <= 6:
            return f"tensor {[round(x, 5) for x in v.flatten().tolist()]} (shape {tuple(v.shape)})"
        first = [round(x, 5) for x in v.flatten()[:4].tolist()]
        return f"tensor of shape {tuple(v.shape)}, mean {v.float().mean().item():.5f}, first values {first}"
    return repr(v)


def _close(a, b, atol: float, rtol: float) -> bool:
    try:
        a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        return False
    return a.shape == b.shape and bool(torch.allclose(a, b, atol=atol, rtol=rtol))


def _call(name: str, case: str, fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except NotImplementedError:  # a stub: keep the error type, so "run all" stops at the first unwritten exercise
        raise NotImplementedError(f"{name}: not written yet. Replace `raise NotImplementedError()` with your code.") from None
    except Exception as e:  # the student's code crashed: say where, keep the original error attached
        raise CheckFailed(f"{name}, case {case}: your code raised {type(e).__name__}: {e}\n"
                          "hint: check the shapes; per-timestep values of shape (B,) must become (B, 1, 1, 1) "
                          "to broadcast against images (B, C, H, W).") from e


def _compare(name: str, case: str, got, expected, mistakes: dict | None = None, general_hint: str = "",
             atol: float = 1e-5, rtol: float = 1e-4) -> None:
    """Raise CheckFailed unless got == expected; name a mistake whose result equals `got`."""
    if got is None:
        raise CheckFailed(f"{name}, case {case}: your function returned None. Did you forget `return`?")
    if _close(got, expected, atol, rtol):
        return
    message = f"{name}, case {case}:\n  expected: {_show(expected)}\n  got:      {_show(got)}"
    exp_shape, got_shape = tuple(torch.as_tensor(expected).shape), tuple(getattr(got, "shape", ()))
    if isinstance(expected, torch.Tensor) and isinstance(got, torch.Tensor) and exp_shape != got_shape:
        message += (f"\n  hint: the shape is wrong ({got_shape} instead of {exp_shape}). A (B,) vector of per-timestep "
                    "values broadcasts wrongly against (B, C, H, W) images; reshape it to (B, 1, 1, 1).")
        raise CheckFailed(message)
    for hint, wrong in (mistakes or {}).items():
        if _close(got, wrong, atol, rtol):
            raise CheckFailed(f"{message}\n  hint: {hint}")
    raise CheckFailed(f"{message}\n  hint: {general_hint or 'compare your formula with the one in the text above, term by term.'}")


def _done(name: str, n: int) -> None:
    print(f"✓ {name}: all {n} cases agree with the library. Well done!")


# ---- notebook 01 -----------------------------------------------------------------------------

def check_log_normal(log_normal) -> None:
    """`log_normal(x, mean, var)`: log N(x; mean, var), elementwise (var is a variance)."""
    __tracebackhide__ = True  # IPython: a failed check shows the student's cell and the message
    x = torch.tensor([-1.0, 0.0, 0.5, 3.0], dtype=torch.float64)
    cases = [(0.0, 1.0), (2.0, 0.25), (-1.0, 4.0)]
    for mean, var in cases:
        got = _call("log_normal", f"mean = {mean}, var = {var}", log_normal, x, mean, var)
        expected = torch.distributions.Normal(mean, math.sqrt(var)).log_prob(x)
        mistakes = {
            "var is a variance; you used it as a standard deviation.": torch.distributions.Normal(mean, var).log_prob(x),
            "the normalising constant is -0.5 * log(2 pi var).": expected + 0.5 * math.log(2 * math.pi),
            "the whole bracket is multiplied by -1/2, including (x - mean)^2 / var.":
                -0.5 * (math.log(2 * math.pi) + math.log(var)) - (x - mean) ** 2 / var,
        }
        _compare("log_normal", f"x = {x.tolist()}, mean = {mean}, var = {var}", got, expected, mistakes)
    _done("log_normal", len(cases))


def check_kl_gauss(kl_gauss) -> None:
    """`kl_gauss(mq, sq, mp, sp)`: KL( N(mq, sq^2) || N(mp, sp^2) ) for floats (sq, sp: standard deviations)."""
    __tracebackhide__ = True  # IPython: a failed check shows the student's cell and the message
    cases = [(0.0, 1.0, 0.0, 1.0), (0.5, 0.8, -0.3, 1.3), (2.0, 0.3, 0.0, 1.0), (-1.0, 2.0, 1.0, 0.5)]
    for mq, sq, mp, sp in cases:
        expected = normal_kl(*(torch.tensor(v, dtype=torch.float64) for v in (mq, math.log(sq**2), mp, math.log(sp**2)))).item()
        got = _call("kl_gauss", f"({mq}, {sq}, {mp}, {sp})", kl_gauss, mq, sq, mp, sp)
        mistakes = {
            "you computed KL(p || q): swap the roles of the two Gaussians.":
                math.log(sq / sp) + (sp**2 + (mp - mq) ** 2) / (2 * sq**2) - 0.5,
            "sq and sp are standard deviations: square them where the formula has variances.":
                math.log(sp / sq) + (sq + (mq - mp) ** 2) / (2 * sp) - 0.5,
            "the log term is log(sp / sq), not log(sp^2 / sq^2) (or: it is missing).":
                2 * math.log(sp / sq) + (sq**2 + (mq - mp) ** 2) / (2 * sp**2) - 0.5,
            "don't forget the constant -1/2.": math.log(sp / sq) + (sq**2 + (mq - mp) ** 2) / (2 * sp**2),
        }
        _compare("kl_gauss", f"(mq, sq, mp, sp) = ({mq}, {sq}, {mp}, {sp})", got, expected, mistakes, atol=1e-9)
    _done("kl_gauss", len(cases))


# ---- notebook 02 -----------------------------------------------------------------------------

def _images(seed: int, b: int = 3):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 1, 4, 4, generator=g) * 2 - 1, torch.randn(b, 1, 4, 4, generator=g)


def check_q_sample(q_sample) -> None:
    """`q_sample(x0, t, noise, alphas_cumprod)`: x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise, t of shape (B,)."""
    __tracebackhide__ = True  # IPython: a failed check shows the student's cell and the message
    diffusion = GaussianDiffusion(linear_betas(100))
    abar = diffusion.alphas_cumprod
    cases = [torch.tensor([0, 50, 99]), torch.tensor([10, 10, 10]), torch.tensor([99, 0, 1])]
    for i, t in enumerate(cases):
        x0, noise = _images(i)
        got = _call("q_sample", f"t = {t.tolist()}", q_sample, x0, t, noise, abar)
        a = abar[t].view(-1, 1, 1, 1)
        shifted = abar[(t - 1).clamp(min=0)].view(-1, 1, 1, 1)
        mistakes = {
            "take square roots: x_t = sqrt(abar_t) * x0 + sqrt(1 - abar_t) * noise.": a * x0 + (1 - a) * noise,
            "sqrt(abar_t) multiplies x0 and sqrt(1 - abar_t) the noise, not the other way round.":
                (1 - a).sqrt() * x0 + a.sqrt() * noise,
            "code t is already 0-based (alphas_cumprod[t] is the paper's abar_{t+1}); do not subtract 1.":
                shifted.sqrt() * x0 + (1 - shifted).sqrt() * noise,
        }
        _compare("q_sample", f"t = {t.tolist()}", got, diffusion.q_sample(x0, t, noise), mistakes)
    _done("q_sample", len(cases))


def check_cosine_betas(cosine_betas_fn) -> None:
    """`cosine_betas_fn(T, s=0.008, max_beta=0.999)`: the cosine schedule's betas (T,)."""
    __tracebackhide__ = True  # IPython: a failed check shows the student's cell and the message
    cases = [(10, 0.008), (1000, 0.008), (50, 0.02)]
    for T, s in cases:
        got = _call("cosine_betas", f"T = {T}", cosine_betas_fn, T, s)
        t = torch.arange(T + 1, dtype=torch.float64)
        cos = torch.cos((t / T + s) / (1 + s) * math.pi / 2)
        f = cos**2
        unclipped = 1 - f[1:] / f[:-1]
        mistakes = {
            "clip the betas at max_beta = 0.999: the last one is 1 without it, and the last step divides by zero.": unclipped,
            "the cosine is squared: f(t) = cos(...)^2.":
(1 - cos[1:] / cos[:-1]).clamp(max=0.999),
            "abar(t) is f(t) / f(0), evaluated at t = 0..T (T + 1 points); beta_t = 1 - abar(t) / abar(t - 1).":
                (1 - f[1:] / f[0]).clamp(max=0.999),
        }
        _compare("cosine_betas", f"T = {T}, s = {s}", got, cosine_betas(T, s), mistakes, atol=1e-6)
    _done("cosine_betas", len(cases))


def check_posterior_coefficients(posterior_coefficients) -> None:
    """`posterior_coefficients(betas) -> (coef1, coef2, variance)`, each (T,): the posterior
    q(x_{t-1} | x_t, x_0) has mean coef1 * x_0 + coef2 * x_t and variance `variance`."""
    __tracebackhide__ = True  # IPython: a failed check shows the student's cell and the message
    cases = [linear_betas(10), cosine_betas(20), linear_betas(1000)]
    for betas in cases:
        T = len(betas)
        got = _call("posterior_coefficients", f"T = {T}", posterior_coefficients, betas)
        if not (isinstance(got, tuple | list) and len(got) == 3):
            raise CheckFailed(f"posterior_coefficients, T = {T}: return a tuple (coef1, coef2, variance), got {_show(got)}")
        d = GaussianDiffusion(betas)
        abar = torch.cumprod(1 - betas, 0)
        for name, value, expected in zip(("coef1", "coef2", "variance"), got,
                                         (d.posterior_mean_coef1, d.posterior_mean_coef2, d.posterior_variance), strict=True):
            mistakes = {
                "coef1 uses abar_{t-1} (alphas_cumprod_prev, with abar_0 = 1), not abar_t.": abar.sqrt() * betas / (1 - abar),
                "coef2 has sqrt(alpha_t), not alpha_t.": (1 - betas) * (1 - _prev(abar)) / (1 - abar),
                "the variance is beta_t (1 - abar_{t-1}) / (1 - abar_t); you returned beta_t.": betas,
                "abar_{t-1} at the first step is 1 (nothing has been noised yet): prepend a 1, do not roll.":
                    {"coef1": torch.roll(abar, 1).sqrt() * betas / (1 - abar),
                     "coef2": (1 - betas).sqrt() * (1 - torch.roll(abar, 1)) / (1 - abar),
                     "variance": betas * (1 - torch.roll(abar, 1)) / (1 - abar)}[name],
            }
            _compare("posterior_coefficients", f"{name}, T = {T}", value, expected.double(), mistakes, atol=1e-6)
    _done("posterior_coefficients", len(cases))


def _prev(abar: torch.Tensor) -> torch.Tensor:
    return torch.cat([torch.ones(1, dtype=abar.dtype), abar[:-1]])


# ---- notebook 03 -----------------------------------------------------------------------------

def check_sinusoidal_embedding(embed) -> None:
    """`embed(t, dim, max_period=10000)`: (B, dim) = cat([sin(t w), cos(t w)]), w_i = max_period^(-i / half)."""
    __tracebackhide__ = True  # IPython: a failed check shows the student's cell and the message
    cases = [(torch.tensor([0, 1, 10]), 8, 10000), (torch.tensor([999, 500]), 64, 10000), (torch.tensor([3, 7]), 16, 100)]
    for t, dim, max_period in cases:
        got = _call("embed", f"t = {t.tolist()}, dim = {dim}", embed, t, dim, max_period)
        half = dim // 2
        args = t.double()[:, None] * max_period ** (-torch.arange(half, dtype=torch.float64) / half)
        mistakes = {
            "sin comes first, then cos: cat([sin, cos]).": torch.cat([args.cos(), args.sin()], -1),
            "this is the interleaved layout (sin, cos, sin, cos, ...); the course concatenates: cat([sin, cos], dim=-1).":
                torch.stack([args.sin(), args.cos()], -1).flatten(1),
            "this is the variant with exponent -i / (half - 1) (many tutorials use it, so that the last frequency is "
            "exactly 1 / max_period): a valid embedding too, but the course, like Ho et al.'s code, uses -i / half.":
                torch.cat([(t.double()[:, None] * max_period ** (-torch.arange(half) / (half - 1))).sin(),
                           (t.double()[:, None] * max_period ** (-torch.arange(half) / (half - 1))).cos()], -1),
            "the exponent is -i / half (half = dim // 2), not -i / dim.":
                torch.cat([(t.double()[:, None] * max_period ** (-torch.arange(half) / dim)).sin(),
                           (t.double()[:, None] * max_period ** (-torch.arange(half) / dim)).cos()], -1),
        }
        _compare("embed", f"t = {t.tolist()}, dim = {dim}, max_period = {max_period}", got,
                 sinusoidal_embedding(t, dim, max_period), mistakes, atol=2e-4)  # float32 rounding of t * w
    _done("embed", len(cases))


def _rotation(k, dim, max_period=10000):
    half = dim // 2
    angle = k * max_period ** (-torch.arange(half, dtype=torch.float64) / half)
    cos, sin = torch.diag(angle.cos()), torch.diag(angle.sin())
    return torch.cat([torch.cat([cos, sin], 1), torch.cat([-sin, cos], 1)], 0)


def check_rotation(rotation) -> None:
    """`rotation(k, dim, max_period=10000)`: the (dim, dim) matrix R_k with emb(t + k) = R_k emb(t) for every t."""
    __tracebackhide__ = True  # IPython: a failed check shows the student's cell and the message
    cases = [(1, 8, 10000), (25, 32, 10000), (7, 16, 100)]
    for k, dim, max_period in cases:
        got = _call("rotation", f"k = {k}, dim = {dim}", rotation, k, dim, max_period)
        t = torch.arange(0, 50)
        emb = sinusoidal_embedding(t, dim, max_period).double()
        if isinstance(got, torch.Tensor) and got.shape == (dim, dim):
            shifted = sinusoidal_embedding(t + k, dim, max_period).double()
            if torch.allclose(emb @ got.double().T, shifted, atol=1e-4):
                continue  # any matrix with the property is right
        mistakes = {"this rotates backwards (by -k): the sin blocks have the wrong signs.": _rotation(-k, dim, max_period),
                    "the angle of frequency i is k * w_i; you left out k.": _rotation(1, dim, max_period)}
        _compare("rotation", f"k = {k}, dim = {dim}, max_period = {max_period}", got, _rotation(k, dim, max_period), mistakes,
                 general_hint="R_k acts on [sin | cos]: top rows [diag(cos kw), diag(sin kw)], bottom [-diag(sin kw), diag(cos kw)].")
    _done("rotation", len(cases))


# ---- notebook 04 -----------------------------------------------------------------------------

def check_res_block(block_class) -> None:
    """`block_class(in_ch, out_ch, emb_dim, groups)` with the library ResBlock's parameter names;
    forward(x, emb) must equal ResBlock's (in eval mode) for the same weights."""
    __tracebackhide__ = True  # IPython: a failed check shows the student's cell and the message
    cases = [(8, 16, 32), (16, 16, 8)]
    for in_ch, out_ch, emb_dim in cases:
        case = f"in_ch={in_ch}, out_ch={out_ch}, emb_dim={emb_dim}"
        torch.manual_seed(0)
        mine = _call("residual block", case, block_class, in_ch, out_ch, emb_dim, groups=4)
        library = ResBlock(in_ch, out_ch, emb_dim, dropout=0.0, groups=4).eval()
        try:
            library.load_state_dict(mine.state_dict())
        except RuntimeError as e:
            raise CheckFailed(f"residual block, {case}: its parameters differ from the library's ResBlock "
                              f"(norm1, conv1, emb_proj, norm2, conv2, skip): {e}") from None
        mine.eval()
        g = torch.Generator().manual_seed(1)
        x, emb = torch.randn(2, in_ch, 6, 6, generator=g), torch.randn(2, emb_dim, generator=g)
        with torch.no_grad():
            got = _call("residual block", case, mine, x, emb)
            h = library.conv1(F.silu(library.norm1(x)))
            tail = lambda h, block=library: block.conv2(F.silu(block.norm2(h)))  # noqa: E731
            mistakes = {
                "the time embedding is not used: add emb_proj(silu(emb)) to h, one value per channel ([:, :, None, None]).":
                    tail(h) + library.skip(x),
                "the residual connection is missing: return h + skip(x).": tail(h + library.emb_proj(F.silu(emb))[:, :, None, None]),
                "apply SiLU to the embedding before the projection: emb_proj(silu(emb)).":
                    tail(h + library.emb_proj(emb)[:, :, None, None]) + library.skip(x),
            }
            _compare("residual block", case, got, library(x, emb), mistakes)
    _done("residual block", len(cases))


def check_group_norm(group_norm) -> None:
    """`group_norm(x, num_groups, eps=1e-5)`: normalise each sample's groups of channels to mean 0,
    variance 1 (no learnable scale or shift), as F.group_norm does."""
    __tracebackhide__ = True  # IPython: a failed check shows the student's cell and the message
    g = torch.Generator().manual_seed(5)
    cases = [(torch.randn(2, 8, 5, 5, generator=g) * 3 + 1, 4), (torch.randn(3, 6, 4, 4, generator=g), 2),
             (torch.randn(2, 4, 3, 3, generator=g) * 0.1, 4)]
    for x, groups in cases:
        case = f"x of shape {tuple(x.shape)}, {groups} groups"
        got = _call("group_norm", case, group_norm, x, groups)
        B = x.shape[0]
        per_group = x.reshape(B, groups, -1)
        centred, biased_var = per_group - per_group.mean(-1, keepdim=True), per_group.var(-1, unbiased=False, keepdim=True)
        mistakes = {
            "statistics are per sample and group, not over the whole batch (that is BatchNorm's idea).":
                (x - x.mean(dim=(0, 2, 3), keepdim=True)) / (x.var(dim=(0, 2, 3), unbiased=False, keepdim=True) + 1e-5).sqrt(),
            "each group spans C / num_groups channels; you normalised every channel on its own (InstanceNorm).":
                (x - x.mean(dim=(2, 3), keepdim=True)) / (x.var(dim=(2, 3), unbiased=False, keepdim=True) + 1e-5).sqrt(),
            "use the biased variance (unbiased=False), as normalisation layers do.":
                (centred / (per_group.var(-1, keepdim=True) + 1e-5).sqrt()).reshape(x.shape),
            "divide by the standard deviation, sqrt(var + eps), not by the variance.":
                (centred / (biased_var + 1e-5)).reshape(x.shape),
        }
        _compare("group_norm", case, got, F.group_norm(x, groups, eps=1e-5), mistakes, atol=1e-4)
    _done("group_norm", len(cases))


# ---- notebook 05 -----------------------------------------------------------------------------

def check_ema_step(ema_step) -> None:
    """`ema_step(ema, weights, decay)`: the new EMA value decay * ema + (1 - decay) * weights."""
    __tracebackhide__ = True  # IPython: a failed check shows the student's cell and the message
    g = torch.Generator().manual_seed(6)
    cases = [0.9, 0.999, 0.0]
    for decay in cases:
        ema, weights = torch.randn(5, generator=g), torch.randn(5, generator=g)
        got = _call("ema_step", f"decay = {decay}", ema_step, ema.clone(), weights.clone(), decay)
        mistakes = {"the decay multiplies the old average, (1 - decay) the new weights.": decay * weights + (1 - decay) * ema}
        _compare("ema_step", f"decay = {decay}", got, decay * ema + (1 - decay) * weights, mistakes)
    _done("ema_step", len(cases))


class _Probe(torch.nn.Module):
    """A fixed, t-dependent stand-in network, so the loss has a known value."""

    num_classes = 10

    def forward(self, x, t, y=None):
        return 0.5 * x + 0.001 * t.view(-1, 1, 1, 1) + (0 if y is None else 0.01 * y.view(-1, 1, 1, 1))


def check_training_loss(loss_fn) -> None:
    """`loss_fn(model, x0, y, t, noise, alphas_cumprod)`: mean of (noise - model(x_t, t, y))^2."""
    __tracebackhide__ = True  # IPython: a failed check shows the student's cell and the message
    diffusion = GaussianDiffusion(linear_betas(100))
    abar, model = diffusion.alphas_cumprod, _Probe()
    cases = [torch.tensor([0, 50, 99]), torch.tensor([20, 20, 70])]
    for i, t in enumerate(cases):
        x0, noise = _images(10 + i)
        y = torch.tensor([1, 5, 9])
        got = _call("training loss", f"t = {t.tolist()}", loss_fn, model, x0, y, t, noise, abar)
        x_t = diffusion.q_sample(x0, t, noise)
        a = abar[t].view(-1, 1, 1, 1)
        mistakes = {
            "the target is the noise, not x0: mean((noise - model(x_t, t, y))^2).": ((x0 - model(x_t, t, y)) ** 2).mean(),
            "take the mean over all elements, not the sum.": ((noise - model(x_t, t, y)) ** 2).sum(),
            "x_t needs square roots: sqrt(abar_t) x0 + sqrt(1 - abar_t) noise.":
                ((noise - model(a * x0 + (1 - a) * noise, t, y)) ** 2).mean(),
            "square the error (mean squared error), do not take its absolute value.": (noise - model(x_t, t, y)).abs().mean(),
        }
        _compare("training loss", f"t = {t.tolist()}", got, diffusion.training_loss(model, x0, y, t=t, noise=noise), mistakes)
    _done("training loss", len(cases))


# ---- notebook 06 -----------------------------------------------------------------------------

def check_ancestral_step(step_fn) -> None:
    """`step_fn(diffusion, x_t, eps, t, z)` with int t: x_{t-1} = posterior mean at the clipped
    predicted x0, plus sqrt(beta_t) z (no noise at t = 0)."""
    __tracebackhide__ = True  # IPython: a failed check shows the student's cell and the message
    diffusion = GaussianDiffusion(cosine_betas(100))
    cases = [99, 50, 1, 0]
    for i, t in enumerate(cases):
        x_t, eps = _images(20 + i)
        x_t, z = x_t * 2, torch.randn(x_t.shape, generator=torch.Generator().manual_seed(i))
        got = _call("ancestral step", f"t = {t}", step_fn, diffusion, x_t, eps, t, z)
        tt = torch.full((x_t.shape[0],), t)
        expected, _ = ddpm_step(diffusion, eps, tt, x_t, z, variance="beta", clip_x0=True)
        unclipped, _ = ddpm_step(diffusion, eps, tt, x_t, z, variance="beta", clip_x0=False)
        tilde, _ = ddpm_step(diffusion, eps, tt, x_t, z, variance="posterior", clip_x0=True)
        mean, _ = ddpm_step(diffusion, eps, tt, x_t, torch.zeros_like(z), variance="beta", clip_x0=True)
        mistakes = {"clip the predicted x0 to [-1, 1] before forming the mean.": unclipped,
                    "this exercise uses sigma_t^2 = beta_t, not the posterior variance beta-tilde_t.": tilde}
        if t == 0:
            mistakes["no noise at the last step (t = 0): return the mean."] = mean + diffusion.betas[0].sqrt() * z
        else:
            mistakes["add sigma_t z with sigma_t = sqrt(beta_t) at every step but the last."] = mean
            mistakes["sigma_t is the square root of beta_t."] = mean + diffusion.betas[t] * z
        _compare("ancestral step", f"t = {t}", got, expected, mistakes)
    _done("ancestral step", len(cases))


def check_ddim_step(step_fn) -> None:
    """`step_fn(diffusion, x_t, eps, t, t_prev, eta, z)` with ints 0 <= t_prev < t: Eq. 12 of DDIM."""
    __tracebackhide__ = True  # IPython: a failed check shows the student's cell and the message
    diffusion = GaussianDiffusion(cosine_betas(100))
    cases = [(99, 79, 0.0), (60, 40, 0.5), (30, 0, 1.0)]
    for i, (t, s, eta) in enumerate(cases):
        x_t, eps = _images(30 + i)
        z = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(i))
        got = _call("DDIM step", f"t = {t}, t_prev = {s}, eta = {eta}", step_fn, diffusion, x_t, eps, t, s, eta, z)
        B = x_t.shape[0]
        expected, x0 = ddim_step(diffusion, eps, torch.full((B,), t), torch.full((B,), s), x_t, eta=eta, noise=z)
        a_s, a_t = diffusion.alphas_cumprod[s], diffusion.alphas_cumprod[t]
        sigma = eta * ((1 - a_s) / (1 - a_t) * (1 - a_t / a_s)).sqrt()
        mistakes = {
            "sigma^2 must come out of the direction term: sqrt(1 - abar_prev - sigma^2) * eps.":
                a_s.sqrt() * x0 + (1 - a_s).sqrt() * eps + sigma * z,
            "sigma is eta times the square root of (1 - abar_prev)/(1 - abar_t) * (1 - abar_t/abar_prev).":
                a_s.sqrt() * x0 + (1 - a_s - sigma**2 / eta**2).clamp(min=0).sqrt() * eps + sigma / max(eta, 1e-12) * z,
            "the first term is sqrt(abar_prev) times the predicted x0, not x_t.":
                a_s.sqrt() * x_t + (1 - a_s - sigma**2).sqrt() * eps + sigma * z,
        }
        _compare("DDIM step", f"t = {t}, t_prev = {s}, eta = {eta}", got, expected, mistakes)
    _done("DDIM step", len(cases))


# ---- notebook 07 -----------------------------------------------------------------------------

def check_drop_labels(drop_labels) -> None:
    """`drop_labels(y, p_uncond, null_label)`: each label replaced by `null_label` with probability p_uncond."""
    __tracebackhide__ = True  # IPython: a failed check shows the student's cell and the message
    n = 20_000
    y = torch.arange(n) % 10
    for p in (0.0, 0.1, 0.5, 1.0):
        got = _call("drop_labels", f"p_uncond = {p}", drop_labels, y.clone(), p, 10)
        if not isinstance(got, torch.Tensor) or got.shape != y.shape:
            raise CheckFailed(f"drop_labels, p_uncond = {p}: return labels of shape {tuple(y.shape)}, got {_show(got)}")
        dropped = got != y
        if not bool((got[dropped] == 10).all()):
            raise CheckFailed(f"drop_labels, p_uncond = {p}: a dropped label must become the null label 10, got "
                              f"{sorted(set(got[dropped].tolist()))[:5]}.\n  hint: torch.where(drop, null_label, y).")
        share, tolerance = dropped.float().mean().item(), 5 * math.sqrt(p * (1 - p) / n) + 1e-9
        if abs(share - p) > tolerance:
            hint = ("you dropped with probability 1 - p_uncond: drop where rand < p_uncond." if abs(share - (1 - p)) <= tolerance
                    else "draw one uniform number per label and drop where it is < p_uncond.")
            raise CheckFailed(f"drop_labels, p_uncond = {p}:\n  expected: about {p:.0%} of {n} labels dropped\n"
                              f"  got:      {share:.1%}\n  hint: {hint}")
    _done("drop_labels", 4)


def check_guided_eps(guided_fn) -> None:
    """`guided_fn(model, x, t, y, s, null_label)`: eps_uncond + s * (eps_cond - eps_uncond)."""
    __tracebackhide__ = True  # IPython: a failed check shows the student's cell and the message
    model = _Probe()
    cases = [0.0, 1.0, 3.0, 7.5]
    x, _ = _images(40)
    t, y = torch.tensor([10, 50, 90]), torch.tensor([2, 4, 6])
    for s in cases:
        got = _call("guided eps", f"s = {s}", guided_fn, model, x, t, y, s, 10)
        cond, uncond = model(x, t, y), model(x, t, torch.full_like(y, 10))
        mistakes = {
            "start from the unconditional prediction: eps_u + s * (eps_c - eps_u).": cond + s * (cond - uncond),
            "the difference points from unconditional to conditional: (eps_c - eps_u), not (eps_u - eps_c).":
                uncond + s * (uncond - cond),
            "the unconditional prediction uses the null label (null_label), for every image.": cond,
        }
        _compare("guided eps", f"s = {s}", got, guided_eps(model, x, t, y, s, 10), mistakes)
    _done("guided eps", len(cases))


# ---- notebook 08 -----------------------------------------------------------------------------

def check_folder_transform(to_model_input) -> None:
    """`to_model_input(image, size)`: a PIL image (already "L" or "RGB") -> float (C, size, size) in [-1, 1]:
    the shorter side resized to `size` (aspect ratio kept), the centre square cropped, 0..255 mapped to -1..1."""
    __tracebackhide__ = True  # IPython: a failed check shows the student's cell and the message
    from PIL import Image
    from torchvision.transforms import functional as TF

    from .folders import folder_transform

    g = torch.Generator().manual_seed(8)
    cases = [("RGB", 40, 24, 16), ("L", 20, 36, 12), ("RGB", 10, 10, 10), ("RGB", 12, 8, 16)]  # wide, tall, square, upscaled
    for mode, w, h, size in cases:
        pixels = torch.randint(0, 256, (h, w, 3 if mode == "RGB" else 1), generator=g, dtype=torch.uint8)
        image = Image.fromarray(pixels.squeeze(-1).numpy(), mode)
        case = f"a {w}x{h} {mode} image to {size}x{size}"
        got = _call("to_model_input", case, to_model_input, image, size)
        expected = folder_transform(size, 3 if mode == "RGB" else 1)(image).float() / 127.5 - 1
        as_tensor = lambda im: TF.pil_to_tensor(im).float() / 127.5 - 1  # noqa: E731
        resized = TF.resize(image, size)
        cropped = TF.pil_to_tensor(TF.center_crop(resized, size)).float()  # 0..255
        mistakes = {
            "keep the aspect ratio: resize the shorter side to `size` (TF.resize(image, size) with one number), then crop; "
            "resizing to (size, size) squashes the picture.": as_tensor(TF.resize(image, [size, size])),
            "crop the centre (TF.center_crop), not the top-left corner.": as_tensor(TF.crop(resized, 0, 0, size, size)),
            "map 0..255 to -1..1: x / 127.5 - 1 (x / 255 gives 0..1).": cropped / 255,
            "scale the pixel values: x / 127.5 - 1, not the raw 0..255.": cropped,
        }
        if isinstance(got, torch.Tensor) and got.shape != expected.shape:
            raise CheckFailed(f"to_model_input, case {case}: the shape is {tuple(got.shape)}, expected {tuple(expected.shape)} "
                              "(C, size, size).\n  hint: after resizing the shorter side, crop the centre square "
                              "(TF.center_crop(image, size)); TF.pil_to_tensor gives (C, H, W), channels first.")
        _compare("to_model_input", case, got, expected, mistakes, atol=1e-4,
                 general_hint="resize with TF.resize(image, size), then TF.center_crop(image, size), then "
                              "TF.pil_to_tensor(image).float() / 127.5 - 1.")
    _done("to_model_input", len(cases))


# ---- notebook 09 -----------------------------------------------------------------------------

def check_v_target(v_fn) -> None:
    """`v_fn(diffusion, x0, t, noise)`: v = sqrt(abar_t) noise - sqrt(1 - abar_t) x0 (Salimans & Ho 2022)."""
    __tracebackhide__ = True  # IPython: a failed check shows the student's cell and the message
    diffusion = GaussianDiffusion(cosine_betas(100))
    cases = [torch.tensor([0, 50, 99]), torch.tensor([10, 10, 80])]
    for i, t in enumerate(cases):
        x0, noise = _images(50 + i)
        got = _call("v target", f"t = {t.tolist()}", v_fn, diffusion, x0, t, noise)
        a = diffusion.alphas_cumprod[t].view(-1, 1, 1, 1)
        mistakes = {
            "v = sqrt(abar) eps - sqrt(1 - abar) x0: the noise gets sqrt(abar), the image sqrt(1 - abar).":
                (1 - a).sqrt() * noise - a.sqrt() * x0,
            "mind the sign: v = sqrt(abar) eps MINUS sqrt(1 - abar) x0.": (1 - a).sqrt() * x0 - a.sqrt() * noise,
            "v needs square roots: sqrt(abar_t) and sqrt(1 - abar_t).": a * noise - (1 - a) * x0,
            "that is x_t (a plus sign); v subtracts the image term.": a.sqrt() * noise + (1 - a).sqrt() * x0,
        }
        _compare("v target", f"t = {t.tolist()}", got, diffusion.v_target(x0, t, noise), mistakes)
    _done("v target", len(cases))


def check_learned_log_variance(fn) -> None:
    """`fn(diffusion, v, t)`: frac log beta_t + (1 - frac) log beta-tilde_t (clipped), frac = (v + 1) / 2."""
    __tracebackhide__ = True  # IPython: a failed check shows the student's cell and the message
    diffusion = GaussianDiffusion(cosine_betas(100))
    cases = [torch.tensor([0, 1, 50, 99]), torch.tensor([30, 30, 60, 90])]
    for i, t in enumerate(cases):
        v = torch.rand(4, 1, 2, 2, generator=torch.Generator().manual_seed(60 + i)) * 2 - 1
        got = _call("learned log-variance", f"t = {t.tolist()}", fn, diffusion, v, t)
        log_beta = diffusion.betas[t].log().view(-1, 1, 1, 1)
        log_tilde = diffusion.posterior_log_variance_clipped[t].view(-1, 1, 1, 1)
        frac = (v + 1) / 2
        mistakes = {
            "v lies in [-1, 1]; turn it into a fraction first: frac = (v + 1) / 2.": v * log_beta + (1 - v) * log_tilde,
            "frac = 1 (v = 1) is the upper end, log beta_t; frac = 0 is log beta-tilde_t.": frac * log_tilde + (1 - frac) * log_beta,
            "interpolate the log-variances, not the variances (Eq. 15 mixes in log space).":
                torch.log(frac * log_beta.exp() + (1 - frac) * log_tilde.exp()),
        }
        _compare("learned log-variance", f"t = {t.tolist()}", got, diffusion.learned_log_variance(v, t, v.shape), mistakes)
    _done("learned log-variance", len(cases))


# ---- notebook 10 -----------------------------------------------------------------------------
def _points(seed: int, n: int = 5) -> torch.Tensor:
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def check_score_from_eps(fn) -> None:
    """`fn(eps, abar)` with eps (B, D) and abar (B, 1): the score -eps / sqrt(1 - abar) (Tweedie / denoising score matching)."""
    __tracebackhide__ = True  # IPython: a failed check shows the student's cell and the message
    cases = [torch.tensor([[0.5], [0.9], [0.01], [0.3], [0.99]], dtype=torch.float64),
             torch.full((5, 1), 0.2, dtype=torch.float64)]
    for i, abar in enumerate(cases):
        eps = _points(70 + i)
        case = f"abar = {[round(a, 3) for a in abar.flatten().tolist()]}"
        got = _call("score from eps", case, fn, eps, abar)
        mistakes = {
            "the score points uphill, against the noise: put a minus sign in front.": eps / (1 - abar).sqrt(),
            "divide by the standard deviation sqrt(1 - abar), not the variance 1 - abar.": -eps / (1 - abar),
            "eps = -sqrt(1 - abar) * score, so the score DIVIDES eps by sqrt(1 - abar).": -(1 - abar).sqrt() * eps,
            "the noise's standard deviation in x_t is sqrt(1 - abar), not sqrt(abar).": -eps / abar.sqrt(),
        }
        _compare("score from eps", case, got, -eps / (1 - abar).sqrt(), mistakes)
    _done("score from eps", len(cases))


def check_dpm_solver_update(fn) -> None:
    """`fn(x_t, D, abar, abar_prev)`: x_prev = (sigma_prev / sigma) x_t - alpha_prev (exp(-h) - 1) D (DPM-Solver++)."""
    __tracebackhide__ = True  # IPython: a failed check shows the student's cell and the message
    diffusion = GaussianDiffusion(cosine_betas(1000))
    cases = [(torch.full((5,), 900), torch.full((5,), 700)), (torch.tensor([999, 500, 300, 100, 20]), torch.tensor([950, 400, 150, 50, 0]))]
    for i, (t, t_prev) in enumerate(cases):
        x_t, D = _points(80 + i), _points(90 + i).clamp(-2, 2)
        a, a_prev = diffusion.alphas_cumprod.double()[t].view(-1, 1), diffusion.alphas_cumprod.double()[t_prev].view(-1, 1)
        case = f"t = {t.tolist()} -> {t_prev.tolist()}"
        got = _call("DPM-Solver++ update", case, fn, x_t, D, a, a_prev)
        lam, lam_prev = 0.5 * torch.log(a / (1 - a)), 0.5 * torch.log(a_prev / (1 - a_prev))
        h = lam_prev - lam
        ratio = ((1 - a_prev) / (1 - a)).sqrt()
        mistakes = {
            "h = lambda_prev - lambda_t is positive (the log-SNR grows towards the data); you have its negative.":
                ratio * x_t - a_prev.sqrt() * torch.expm1(h) * D,
            "sigma = sqrt(1 - abar): the ratio sigma_prev / sigma_t needs a square root.": (1 - a_prev) / (1 - a) * x_t
                - a_prev.sqrt() * torch.expm1(-h) * D,
            "alpha_prev = sqrt(abar_prev): the data term needs a square root.": ratio * x_t - a_prev * torch.expm1(-h) * D,
            "mind the sign: exp(-h) - 1 is negative, and the update SUBTRACTS alpha_prev (exp(-h) - 1) D.":
                ratio * x_t + a_prev.sqrt() * torch.expm1(-h) * D,
            "lambda is log(alpha / sigma) = 0.5 log(abar / (1 - abar)), half the log-SNR.": ratio * x_t
                - a_prev.sqrt() * torch.expm1(-2 * h) * D,
        }
        want, _ = dpm_solver_step(diffusion, D, t, t_prev, x_t)
        _compare("DPM-Solver++ update", case, got, want, mistakes)
    _done("DPM-Solver++ update", len(cases))


# ---- notebook 11 -----------------------------------------------------------------------------
def _pair(name: str, case: str, got, what: str) -> tuple:
    """`got` if it is a pair, else a CheckFailed that asks for the pair `what`."""
    if not (isinstance(got, tuple) and len(got) == 2):
        raise CheckFailed(f"{name}, case {case}: return the pair {what}, got {_show(got)}")
    return got


def check_flow_pair(fn) -> None:
    """`fn(x0, z, t)` with t (B, 1): (x_t, u) = ((1 - t) x0 + t z, z - x0), the flow path and its velocity."""
    __tracebackhide__ = True  # IPython: a failed check shows the student's cell and the message
    flow = FlowMatching()
    for i, t in enumerate((torch.tensor([[0.0], [0.25], [0.5], [0.9], [1.0]], dtype=torch.float64),
                           torch.full((5, 1), 0.3, dtype=torch.float64))):
        x0, z = _points(110 + i), _points(120 + i)
        case = f"t = {t.flatten().tolist()}"
        x_t, u = _pair("flow pair", case, _call("flow pair", case, fn, x0, z, t), "(x_t, u)")
        mistakes = {
            "t = 0 is the data and t = 1 the noise: x_t = (1 - t) x0 + t z, not t x0 + (1 - t) z.": t * x0 + (1 - t) * z,
            "this is the variance-preserving path sqrt(1 - t) x0 + sqrt(t) z; the flow's is straight, with no square roots.":
                (1 - t).sqrt() * x0 + t.sqrt() * z,
        }
        _compare("flow pair (x_t)", case, x_t, flow.q_sample(x0, t.flatten(), z), mistakes)
        mistakes = {
            "the velocity points from data to noise, d x_t / dt = z - x0 (t grows towards the noise); you have x0 - z.": x0 - z,
            "the target is the velocity z - x0, not the noise z itself (that is the eps target of DDPM).": z,
            "the velocity of the straight path does not depend on t: d/dt [(1 - t) x0 + t z] = z - x0.": t * (z - x0),
        }
        _compare("flow pair (u)", case, u, flow.training_target(x0, t.flatten(), z), mistakes)
    _done("flow pair", 2)


def check_flow_euler_step(fn) -> None:
    """`fn(x_t, u, t, t_next)`: one Euler step of the flow ODE, x_t + (t_next - t) u (t_next < t: towards the data)."""
    __tracebackhide__ = True  # IPython: a failed check shows the student's cell and the message
    for i, (t, t_next) in enumerate(((1.0, 0.75), (0.4, 0.1), (0.2, 0.0))):
        x_t, u = _points(130 + i), _points(140 + i)
        case = f"t = {t} -> {t_next}"
        got = _call("flow Euler step", case, fn, x_t, u, t, t_next)
        dt = t_next - t
        mistakes = {
            "t falls as we walk to the data, so the step t_next - t is negative: x_t + (t_next - t) u (you went the wrong way).":
                x_t - dt * u,
            "the step is the velocity times the time step: x_t + (t_next - t) u, not x_t + u.": x_t + u,
            "the step is (t_next - t), not t_next alone.": x_t + t_next * u,
        }
        _compare("flow Euler step", case, got, x_t + dt * u, mistakes)
    _done("flow Euler step", 3)


def check_velocity_to_eps(fn) -> None:
    """`fn(u, x_t, t)` with t (B, 1): (eps, x0) = (x_t + (1 - t) u, x_t - t u) from x_t = (1 - t) x0 + t z, u = z - x0."""
    __tracebackhide__ = True  # IPython: a failed check shows the student's cell and the message
    flow = FlowMatching()
    for i, t in enumerate((torch.tensor([[0.1], [0.3], [0.5], [0.7], [0.95]], dtype=torch.float64),
                           torch.full((5, 1), 0.6, dtype=torch.float64))):
        x0, z = _points(150 + i), _points(160 + i)
        x_t, u = (1 - t) * x0 + t * z, z - x0
        z_lib, x0_lib = flow.eps_and_x0(u, x_t, t.flatten())
        case = f"t = {t.flatten().tolist()}"
        eps, x0_got = _pair("velocity to (eps, x0)", case, _call("velocity to (eps, x0)", case, fn, u, x_t, t), "(eps, x0)")
        mistakes = {
            "from x_t = x0 + t u: x0 = x_t - t u (you used 1 - t).": x_t - (1 - t) * u,
            "from x_t = x0 + t u: x0 = x_t MINUS t u.": x_t + t * u,
        }
        _compare("velocity to (eps, x0): x0", case, x0_got, x0_lib, mistakes)
        mistakes = {
            "from x_t = z - (1 - t) u: z = x_t + (1 - t) u (you used t).": x_t + t * u,
            "z = x_t + (1 - t) u: PLUS, since x_t sits (1 - t) u short of the noise.": x_t - (1 - t) * u,
            "eps is the noise z = x0 + u, not the velocity u.": u,
        }
        _compare("velocity to (eps, x0): eps", case, eps, z_lib, mistakes)
    _done("velocity to (eps, x0)", 2)


def _tiny_autoencoder():
    from .autoencoder import Autoencoder, AutoencoderConfig

    torch.manual_seed(170)
    ae = Autoencoder(AutoencoderConfig(base_channels=8)).eval()
    ae.scale.fill_(2.5)  # a measured scale would do; a round number makes the mistakes easy to tell apart
    return ae


def check_latent_roundtrip(to_latent, to_image) -> None:
    """`to_latent(ae, x)` = mean of q(z | x) times ae.scale; `to_image(ae, z)` = ae.decode(z / ae.scale)."""
    __tracebackhide__ = True  # IPython: a failed check shows the student's cell and the message
    ae = _tiny_autoencoder()
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(171)) * 2 - 1
    with torch.no_grad():
        mean, logvar = ae.encode(x)
        got = _call("to_latent", "3 digits", to_latent, ae, x)
        mistakes = {
            "scale the latent: diffusion runs on mean * ae.scale (unit standard deviation), not on the raw mean.": mean,
            "multiply by the scale (it is 1 / std of the latents); dividing makes them smaller still.": mean / ae.scale,
            "use the mean of q(z | x) (the first thing encode returns), not the log-variance.": logvar * ae.scale,
        }
        again = _call("to_latent", "3 digits", to_latent, ae, x)
        if isinstance(got, torch.Tensor) and isinstance(again, torch.Tensor) and not torch.equal(got, again):
            raise CheckFailed("to_latent, case 3 digits: two calls gave different latents. Use the mean of q(z | x), not a "
                              "random draw from it (the data set is encoded once and kept)")
        _compare("to_latent", "3 digits", got, mean * ae.scale, mistakes)
        z = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(172))
        got = _call("to_image", "3 latents", to_image, ae, z)
        mistakes = {
            "undo the scale before decoding: ae.decode(z / ae.scale); the decoder was trained on unscaled latents.": ae.decode(z),
            "divide by the scale to undo to_latent's multiplication (you multiplied).": ae.decode(z * ae.scale),
            "return the decoder's output itself here, without clipping it.": ae.decode(z / ae.scale).clamp(-1, 1),
        }
        _compare("to_image", "3 latents", got, ae.decode(z / ae.scale), mistakes)
    _done("latent round trip", 2)


def check_cross_attention(fn) -> None:
    """`fn(q, k, v)` with q (B, heads, N, d) from the image, k and v (B, heads, L, d) from the prompt's tokens:
    softmax(q k^T / sqrt(d)) v, the softmax over the L tokens; returns (B, heads, N, d)."""
    __tracebackhide__ = True  # IPython: a failed check shows the student's cell and the message
    g = torch.Generator().manual_seed(180)
    for N, L, d in ((6, 3, 4), (9, 5, 8)):
        q, k, v = (torch.randn(2, 2, n, d, generator=g, dtype=torch.float64) for n in (N, L, L))
        case = f"N = {N} positions, L = {L} tokens, d = {d}"
        scores = q @ k.transpose(-1, -2)  # (B, heads, N, L)
        mistakes = {
            "the softmax runs over the tokens (the last axis of q k^T, dim=-1): each image position takes a weighted mean of "
            "the prompt's words. Over dim=-2 each word spreads itself over the positions instead.": (scores / d**0.5).softmax(-2) @ v,
            "divide the scores by sqrt(d) before the softmax (Vaswani et al. 2017): without it large d saturates the softmax.":
                scores.softmax(-1) @ v,
            "the scale is 1 / sqrt(d), not 1 / d.": (scores / d).softmax(-1) @ v,
            "return the weighted values, softmax(...) @ v, not the weights alone.": (scores / d**0.5).softmax(-1),
        }
        got = _call("cross-attention", case, fn, q, k, v)
        _compare("cross-attention", case, got, (scores / d**0.5).softmax(-1) @ v, mistakes)
    _done("cross-attention", 2)


class _PromptProbe(torch.nn.Module):
    """A stand-in prompt model: its output depends on every token, differently per slot."""

    def forward(self, x, t, y):
        return x * (1 + (y.double() * torch.tensor([1.0, 10.0, 100.0], dtype=torch.float64)).sum(1)).view(-1, 1, 1, 1) / 1000


def check_prompt_guidance(fn) -> None:
    """`fn(model, x, t, prompt, scale, pad)`: classifier-free guidance on a prompt, with the empty prompt (every token
    the pad id) as the null condition: uncond + scale (cond - uncond)."""
    __tracebackhide__ = True  # IPython: a failed check shows the student's cell and the message
    model, g = _PromptProbe(), torch.Generator().manual_seed(190)
    x, t, pad = torch.randn(3, 1, 4, 4, generator=g, dtype=torch.float64), torch.tensor([10, 500, 900]), 14
    prompt = torch.tensor([[1, 3, 11], [0, pad, 7], [pad, pad, 5]])
    for scale in (3.0, 0.0, 1.5):
        case = f"scale {scale}"
        cond, uncond = model(x, t, prompt), model(x, t, torch.full_like(prompt, pad))
        class_only = prompt.clone()
        class_only[:, -1] = pad
        mistakes = {
            "the empty prompt is every token set to the pad id (torch.full_like(prompt, pad)); id 0 is the word 'thin'.":
                model(x, t, torch.zeros_like(prompt)) + scale * (cond - model(x, t, torch.zeros_like(prompt))),
            "the null condition is the whole prompt empty, not the prompt without its class word.":
                model(x, t, class_only) + scale * (cond - model(x, t, class_only)),
            "the guided prediction is uncond + scale (cond - uncond) (scale 1 = the plain conditional model); "
            "you have cond + scale (cond - uncond).": cond + scale * (cond - uncond),
        }
        got = _call("prompt guidance", case, fn, model, x, t, prompt, scale, pad)
        _compare("prompt guidance", case, got, uncond + scale * (cond - uncond), mistakes)
    _done("prompt guidance", 3)

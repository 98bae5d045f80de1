"""Sampling: the one logits -> probabilities transform, categorical sampling, and the exact
chain verification of speculative decoding (with Saguaro's rescaled proposal q').

Everything here is a batched pure function of tensors with leading batch dimension B, traceable
by `torch.compile(fullgraph=True)`. Randomness comes from per-row keys (`ssd.random`), so a row's
result never depends on the other rows of its batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from ssd import kernels
from ssd import random as rnd
from ssd.config import SamplingParams
from ssd.pytree import pytree_dataclass, static


@pytree_dataclass
class SamplingTensors:
    """Per-row sampling parameters as tensors of shape [B] (see :class:`SamplingParams`).

    Three static flags specialize the compiled code for the batch: `filtered` (some row uses
    top-k, top-p or min-p: the transform must sort), `greedy` (every row has temperature 0:
    draws are argmaxes, no noise) and `some_greedy` (some row has: the transform builds one-hot
    rows). They only skip work; results are the same either way.
    """

    temperature: Tensor
    top_k: Tensor
    top_p: Tensor
    min_p: Tensor
    filtered: bool = static(default=True)
    greedy: bool = static(default=False)
    some_greedy: bool = static(default=True)

    @staticmethod
    def from_params(
        params: SamplingParams | Sequence[SamplingParams],
        batch: int | None = None,
        device: torch.device | str | None = None,
    ) -> SamplingTensors:
        """One row per element of `params`, or `batch` copies of a single `SamplingParams`."""
        rows = [params] * (batch or 1) if isinstance(params, SamplingParams) else list(params)

        def col(name: str, dtype: torch.dtype) -> Tensor:
            return torch.tensor([getattr(r, name) for r in rows], dtype=dtype, device=device)

        return SamplingTensors(
            temperature=col("temperature", torch.float64),
            top_k=col("top_k", torch.int64),
            top_p=col("top_p", torch.float64),
            min_p=col("min_p", torch.float64),
            filtered=any(r.top_k > 0 or r.top_p < 1 or r.min_p > 0 for r in rows),
            greedy=all(r.temperature == 0 for r in rows),
            some_greedy=any(r.temperature == 0 for r in rows),
        )

    def repeat_rows(self, n: int) -> SamplingTensors:
        """Each row repeated n times (one per branch of a sequence)."""
        return SamplingTensors(
            temperature=self.temperature.repeat_interleave(n),
            top_k=self.top_k.repeat_interleave(n),
            top_p=self.top_p.repeat_interleave(n),
            min_p=self.min_p.repeat_interleave(n),
            filtered=self.filtered,
            greedy=self.greedy,
            some_greedy=self.some_greedy,
        )


def _per_row(x: Tensor, like: Tensor) -> Tensor:
    """Reshape a [B] tensor to broadcast against `like` of shape [B, ..., V]."""
    return x.to(like.device).reshape(x.shape[0], *([1] * (like.dim() - 1)))


def probs_from_logits(
    logits: Float[Tensor, "B *rest V"], st: SamplingTensors
) -> Float[Tensor, "B *rest V"]:
    """The distribution every path of the engine samples from, for logits [B, ..., V].

    Temperature, then top-k (exactly k tokens, ties broken toward lower ids), then top-p (the
    shortest most-likely prefix whose mass reaches top_p), then min-p (tokens with probability
    at least min_p times the largest). Temperature 0 rows are one-hot at the first argmax.
    Computes in float32, or float64 for float64 logits.
    """
    if logits.dim() < 2 or logits.shape[0] != st.temperature.shape[0]:
        raise ValueError(
            f"logits must be [B, ..., V] with B = {st.temperature.shape[0]} sampling rows, "
            f"got shape {tuple(logits.shape)}"
        )
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    z = logits.to(dtype)
    t = _per_row(st.temperature, z).to(dtype)
    greedy = t == 0
    z = z / torch.where(greedy, torch.ones_like(t), t)

    if st.filtered:
        z = z.masked_fill(~_kept(z, st), float("-inf"))
    probs = torch.softmax(z, dim=-1)
    if not st.some_greedy:
        return probs
    one_hot = torch.zeros_like(probs).scatter(-1, z.argmax(-1, keepdim=True), 1.0)
    return torch.where(greedy, one_hot, probs)


def _kept(z: Tensor, st: SamplingTensors) -> Tensor:
    """The tokens that survive top-k, then top-p, then min-p (bool, like z)."""
    sorted_z, order = torch.sort(z, dim=-1, descending=True, stable=True)
    vocab = z.shape[-1]
    rank = torch.arange(vocab, device=z.device)
    k = _per_row(st.top_k, z)
    keep = rank < torch.where(k > 0, k, vocab)
    sorted_p = torch.softmax(sorted_z.masked_fill(~keep, float("-inf")), dim=-1)
    mass_before = sorted_p.cumsum(-1) - sorted_p
    top_p = _per_row(st.top_p, z).to(z.dtype)
    keep = keep & ((mass_before < top_p) | (top_p >= 1))
    keep = keep & (sorted_p >= _per_row(st.min_p, z).to(z.dtype) * sorted_p[..., :1])
    return torch.zeros_like(keep).scatter(-1, order, keep)


def draw(
    probs: Float[Tensor, "*rows V"], key: Int[Tensor, "*rows 2"], greedy: bool
) -> Int[Tensor, "*rows"]:
    """`sample`, or the argmax when every row is one-hot (`greedy`, static): the same token."""
    return probs.argmax(-1) if greedy else sample(probs, key)


def sample(probs: Float[Tensor, "*rows V"], key: Int[Tensor, "*rows 2"]) -> Int[Tensor, "*rows"]:
    """One token per row of `probs` [B, ..., V] with keys [B, ..., 2]: argmax(p / Exp(1)).

    `probs` may be unnormalized (the argmax is scale-free). A token of weight 0 is never drawn;
    one-hot rows return their token. The noise and the ratio are float64: compiled and eager
    `log` may differ in the last bit, and at float64 such a difference flips a draw with
    probability ~1e-16 instead of ~1e-7.
    """
    if key.shape[:-1] != probs.shape[:-1]:
        raise ValueError(
            f"sample needs one key per distribution: probs {tuple(probs.shape)} vs keys "
            f"{tuple(key.shape)} (expected {(*probs.shape[:-1], 2)})"
        )
    if kernels.native_on(probs) and probs.dtype in (torch.float32, torch.float64):
        rows = probs.reshape(-1, probs.shape[-1])
        return torch.ops.ssd_cpu.exponential_race(rows, key.reshape(-1, 2)).view(probs.shape[:-1])
    noise = rnd.exponential(key, (probs.shape[-1],), dtype=torch.float64)
    return (probs.to(torch.float64) / noise).argmax(-1)


def saguaro_q(
    q: Float[Tensor, "B *rest V"], fanout: int | Int[Tensor, " B"], c: float | Float[Tensor, " B"]
) -> Float[Tensor, "B *rest V"]:
    """Saguaro's proposal q': the top-`fanout` tokens of q [B, ..., V] scaled by C, renormalized.

    Lowering q on the tokens the speculation cache holds raises their residual mass, so the
    recovery token lands in the cache more often. Verification must use this same q'. Ranks
    break ties toward lower ids, as in :func:`probs_from_logits`. `fanout` and `c` are scalars
    or [B] tensors.
    """
    c_t = torch.as_tensor(c, dtype=q.dtype, device=q.device)
    f_t = torch.as_tensor(fanout, device=q.device)
    if not torch.compiler.is_compiling():
        if bool(((c_t <= 0) | (c_t > 1)).any()):
            raise ValueError(f"Saguaro constant C must be in (0, 1], got {c}")
        if bool((f_t < 0).any()):
            raise ValueError(f"Saguaro fan-out must be >= 0, got {fanout}")
    if c_t.dim() == 1:
        c_t = _per_row(c_t, q)
    if f_t.dim() == 1:
        f_t = _per_row(f_t, q)
    w = torch.where(_top(q, f_t), c_t * q, q)
    return w / w.sum(-1, keepdim=True)


def _top(q: Tensor, f: Tensor) -> Tensor:
    """Whether each token is among the top-f of its row (f broadcast against q), ties toward
    lower ids. Eager code finds the f-th largest value with a top-k as deep as the largest f
    and takes the ties at it from the left; traced code (no data-dependent depth) ranks the
    whole row with a stable sort. Both give the same tokens."""
    if torch.compiler.is_compiling() or f.numel() == 0:
        order = torch.sort(q, dim=-1, descending=True, stable=True).indices
        rank = torch.empty_like(order).scatter_(
            -1, order, torch.arange(q.shape[-1], device=q.device).expand_as(order)
        )
        return rank < f
    depth = min(int(f.max()), q.shape[-1])
    if depth == 0:
        return torch.zeros_like(q, dtype=torch.bool)
    values = q.topk(depth, dim=-1).values
    f = f.expand(*q.shape[:-1], 1)
    at = values.gather(-1, (f - 1).clamp(min=0, max=depth - 1))  # the f-th largest value
    above = q > at
    ties = q == at
    wanted = f - above.sum(-1, keepdim=True)  # ties to take, from the lowest id on
    return (above | (ties & (ties.cumsum(-1) <= wanted))) & (f > 0)


# --- chain verification -------------------------------------------------------------------


@pytree_dataclass
class Verification:
    """Outcome of one verification round per row: `num_accepted` draft tokens [B], then
    `next_token` [B] (the recovery token, or the bonus token when all K were accepted)."""

    num_accepted: Tensor
    next_token: Tensor


def proposal_rows(
    q: Tensor | None, tokens: Tensor, point_mass: Tensor | None, vocab: int
) -> Tensor:
    """The proposal distributions [B, K, V] that verification tests against.

    Rows flagged in `point_mass` [B] (or all rows when `q` is None) were proposed
    deterministically (n-gram guess, cached guess): their true q is a point mass on the
    drafted token, which makes the ratio test "accept x with probability p(x)" and the residual
    "p with x removed".
    """
    one_hot = torch.nn.functional.one_hot(tokens, vocab)
    if q is None:
        return one_hot.to(torch.float32)
    one_hot = one_hot.to(q.dtype)
    if point_mass is None:
        return q
    return torch.where(point_mass.reshape(-1, 1, 1), one_hot, q)


def acceptance_probs(
    p: Float[Tensor, "B K1 V"], q: Float[Tensor, "B K V"], tokens: Int[Tensor, "B K"]
) -> Float[Tensor, "B K"]:
    """min(1, p_i(s_i) / q_i(s_i)) for the K drafted tokens: [B, K]."""
    return _ratio(_at(p[:, : tokens.shape[1]], tokens), _at(q, tokens))


def residual(
    p: Float[Tensor, "*rows V"], q: Float[Tensor, "*rows V"], normalize: bool = True
) -> Float[Tensor, "*rows V"]:
    """norm(max(0, p - q)); falls back to p where that has no mass (a probability-0 event).

    Sampling needs no normalization (see :func:`sample`), which also keeps the result free of
    reduction order, so compiled and eager agree bit for bit.
    """
    r = (p - q).clamp(min=0)
    if not normalize:
        return torch.where((r > 0).any(-1, keepdim=True), r, p)
    mass = r.sum(-1, keepdim=True)
    return torch.where(mass > 0, r / torch.where(mass > 0, mass, 1), p)


def verify_chain(
    p: Float[Tensor, "B K1 V"],
    q: Float[Tensor, "B K V"] | None,
    tokens: Int[Tensor, "B K"],
    key: Int[Tensor, "B 2"],
    point_mass: Bool[Tensor, " B"] | None = None,
) -> Verification:
    """Batched exact verification of K drafted tokens per row.

    p [B, K+1, V]: target distributions after [r, s_1..s_K]; q [B, K, V]: the distributions the
    drafts were sampled from (None, or rows flagged in `point_mass`, for deterministic
    proposals); tokens [B, K]; key [B, 2]. Accept s_{i+1} while u_i < min(1, p_i/q_i); at the
    first rejection draw from the residual, else draw the bonus token from p_K (an all-greedy
    batch needs only the argmax: `greedy_chain`).
    """
    check_verify_inputs(p, q, tokens, key, point_mass)
    b, k1, vocab = p.shape
    k = k1 - 1
    point = torch.ones(b, dtype=torch.bool, device=p.device) if q is None else point_mass
    # q only where it is read (the K drafted tokens, then the row at the first rejection), so
    # that no [B, K, V] one-hot or copy is built: the same values as `proposal_rows` gives.
    qx = torch.ones_like(tokens, dtype=p.dtype) if q is None else _at(q, tokens).to(p.dtype)
    if point is not None:
        qx = torch.where(point[:, None], 1.0, qx)
    keys = rnd.split(key, 2)
    u = rnd.uniform(keys[:, 0], (k,), dtype=p.dtype)
    accepted = u < _ratio(_at(p[:, :k], tokens), qx)
    n = accepted.to(torch.int64).cumprod(-1).sum(-1)
    q_n = torch.zeros_like(p[:, 0])  # q_K = 0: residual(p_K, 0) = p_K
    if k > 0:
        depth = n.clamp(max=k - 1)
        if q is not None:
            q_n = q.gather(1, depth.reshape(b, 1, 1).expand(b, 1, vocab)).squeeze(1).to(p.dtype)
        if point is not None:
            one_hot = torch.zeros_like(q_n).scatter(-1, tokens.gather(1, depth[:, None]), 1.0)
            q_n = torch.where(point[:, None], one_hot, q_n)
        q_n = torch.where((n < k)[:, None], q_n, 0.0)
    p_n = p.gather(1, n.reshape(b, 1, 1).expand(b, 1, vocab)).squeeze(1)
    dist = residual(p_n, q_n, normalize=False)
    return Verification(num_accepted=n, next_token=sample(dist, keys[:, 1]))


def _at(x: Tensor, tokens: Tensor) -> Tensor:
    """x[b, i, tokens[b, i]] for x [B, K, V] and tokens [B, K]."""
    return x.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def _ratio(px: Tensor, qx: Tensor) -> Tensor:
    """min(1, px / qx); where qx = 0 (a token q never proposes), 1 if px > 0, else 0."""
    ratio = torch.where(qx > 0, px / torch.where(qx > 0, qx, 1), (px > 0).to(px.dtype))
    return ratio.clamp(max=1)


def greedy_chain(logits: Float[Tensor, "B K1 V"], tokens: Int[Tensor, "B K"]) -> Verification:
    """`verify_chain` for an all-greedy batch, from the target's logits alone: each p row is
    one-hot at its first argmax, so s_{i+1} is accepted (probability p/q = 1/q >= 1) exactly when
    it is that argmax and rejected (probability 0) otherwise, whatever q it was drawn from, and
    the residual at the first rejection (or p_K) is that argmax again. No softmax, noise or
    [B, K+1, V] probabilities: at a vocabulary of 151936 those cost a verification several ms.
    """
    best = logits.argmax(-1)  # [B, K+1], the first maximum as probs_from_logits' one-hot
    n = (tokens == best[:, :-1]).to(torch.int64).cumprod(-1).sum(-1)
    return Verification(num_accepted=n, next_token=best.gather(1, n[:, None]).squeeze(1))


def chain_law(
    p: Float[Tensor, "B K1 V"],
    q: Float[Tensor, "B K V"] | None,
    tokens: Int[Tensor, "B K"],
    point_mass: Bool[Tensor, " B"] | None = None,
) -> tuple[Float[Tensor, "B K1"], Float[Tensor, "B K1 V"]]:
    """The exact law of :func:`verify_chain`'s outcome given the drafts, no sampling.

    Returns (P(num_accepted = k) [B, K+1], law of next_token given num_accepted = k [B, K+1, V]),
    built from the same acceptance and residual functions the sampler uses.
    """
    vocab = p.shape[-1]
    q = proposal_rows(q, tokens, point_mass, vocab).to(p.dtype)
    a = acceptance_probs(p, q, tokens)
    reach = torch.cat([torch.ones_like(a[:, :1]), a.cumprod(-1)], dim=1)  # P(n >= i)
    stop = reach * torch.cat([1 - a, torch.ones_like(a[:, :1])], dim=1)
    q_ext = torch.cat([q, torch.zeros_like(p[:, :1])], dim=1)
    return stop, residual(p, q_ext)


def check_verify_inputs(
    p: Tensor, q: Tensor | None, tokens: Tensor, key: Tensor, point_mass: Tensor | None
) -> None:
    """Shape checks always; value checks (token range) only outside compiled code."""
    if p.dim() != 3 or p.shape[1] < 1:
        raise ValueError(f"p must be [B, K+1, V], got shape {tuple(p.shape)}")
    b, k1, vocab = p.shape
    if tokens.shape != (b, k1 - 1):
        raise ValueError(f"tokens must be [B, K] = {(b, k1 - 1)}, got {tuple(tokens.shape)}")
    if q is not None and q.shape != (b, k1 - 1, vocab):
        raise ValueError(
            f"q must be [B, K, V] = {(b, k1 - 1, vocab)} to match p {tuple(p.shape)}, "
            f"got {tuple(q.shape)}"
        )
    if key.shape != (b, 2) or key.dtype != torch.int64:
        raise ValueError(
            f"key must be one int64 key per row, [B, 2] = {(b, 2)}, got {tuple(key.shape)}"
        )
    if point_mass is not None and point_mass.shape != (b,):
        raise ValueError(f"point_mass must be a [B] = {(b,)} mask, got {tuple(point_mass.shape)}")
    if tokens.dtype != torch.int64:
        raise ValueError(f"tokens must be int64 ids, got {tokens.dtype}")
    if not torch.compiler.is_compiling() and tokens.numel():
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or hi >= vocab:
            bad = lo if lo < 0 else hi
            raise ValueError(f"drafted token id {bad} is outside the vocabulary [0, {vocab})")

"""Vector quantisation with a learned codebook, as in VQ-VAE and VQGAN.

Each encoder output vector z_e is replaced by its nearest code e_k (van den Oord et al. 2017,
"Neural Discrete Representation Learning", https://arxiv.org/abs/1711.00937). The decoder's
gradient is copied to z_e unchanged (the straight-through estimator, eq. 3's sg[] trick), and the
commitment loss ``commitment * ||z_e - sg[e]||^2`` keeps the encoder close to its codes.

The codes themselves are learned in one of two ways (``update``):

* ``"ema"``: exponential moving averages of the encodings assigned to each code (van den Oord et
  al. 2017, appendix A.1; Razavi et al. 2019, VQ-VAE-2). Per code k, with decay gamma, n_k
  assignments and their sum s_k in a forward pass::

      N_k <- gamma N_k + (1 - gamma) n_k          m_k <- gamma m_k + (1 - gamma) s_k
      e_k  = m_k / N~_k,  N~_k = (N_k + eps) / (N + K eps) * N  (Laplace smoothing, N = sum_k N_k)

* ``"loss"``: codes are parameters trained by the codebook loss ``||sg[z_e] - e||^2``.

Dead-code restarts: a code whose moving-average count N_k falls below ``dead_threshold`` is moved
to a random encoding of the current batch (Dhariwal et al. 2020, Jukebox; Zeghidour et al. 2021).
A restarted code starts with N_k = ``dead_threshold`` and survives while it attracts at least
that many encodings per pass. N starts at zero, so the first training step places (nearly) every
code on a random encoding of the batch: a data-dependent initialisation, as in Jukebox. The
counts are kept in both modes; normalised they are the codes' unigram distribution, which the
family samples from until a token prior exists.

All of this state lives in buffers (saved with the weights, copied into the EMA model), and all
randomness comes from the generator the caller passes, so a resumed run continues bitwise.
Under ``torch.distributed`` the per-pass statistics are summed over ranks and rank 0's restarts
are broadcast, so every rank holds the same codebook.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["QuantizerOutput", "VectorQuantizer", "codebook_usage", "perplexity"]


class QuantizerOutput(NamedTuple):
    """What a training forward of :class:`VectorQuantizer` returns.

    Attributes:
        z_q: [B, D, h, w] quantised latents with straight-through gradient to z_e.
        indices: [B, h, w] int64 code of each position.
        loss: scalar, ``commitment * commit`` (+ the codebook loss in "loss" mode).
        commit: scalar, mean ||z_e - sg[e]||^2 per element (unweighted, for logging).
        counts: [K] float, assignments per code in this pass (this rank only).
    """

    z_q: Tensor
    indices: Tensor
    loss: Tensor
    commit: Tensor
    counts: Tensor


class VectorQuantizer(nn.Module):
    """Nearest-code quantisation of [B, D, h, w] latents; see the module docstring.

    Args:
        num_codes: codebook size K.
        dim: code dimension D (the latent channels).
        update: "ema" (moving-average codes, buffers) or "loss" (codes are parameters).
        decay: EMA decay gamma of the counts and sums.
        commitment: weight of the commitment loss.
        dead_threshold: restart codes whose EMA count per pass is below this (0 = never).
        eps: Laplace smoothing of the EMA counts.
    """

    def __init__(self, num_codes: int, dim: int, update: str = "ema", decay: float = 0.99,
                 commitment: float = 0.25, dead_threshold: float = 1.0, eps: float = 1e-5) -> None:
        super().__init__()
        if update not in ("ema", "loss"):
            raise ValueError(f"update must be 'ema' or 'loss', got {update!r}")
        self.num_codes, self.dim, self.update = num_codes, dim, update
        self.decay, self.commitment, self.dead_threshold, self.eps = decay, commitment, dead_threshold, eps
        codebook = torch.randn(num_codes, dim)
        if update == "ema":
            self.register_buffer("codebook", codebook)
            self.register_buffer("embed_sum", torch.zeros(num_codes, dim))
        else:
            self.codebook = nn.Parameter(codebook)
        self.register_buffer("cluster_size", torch.zeros(num_codes))

    # -- inference -------------------------------------------------------------------------

    def nearest(self, z: Tensor) -> Tensor:
        """Index of the nearest code (squared Euclidean) of each row of z [N, D] → [N] int64."""
        # fp32 even under autocast: a bf16 distance would pick the wrong code for close pairs
        with torch.autocast(z.device.type, enabled=False):
            z = z.float()
            e = self.codebook.detach().float()
            # ||z - e||^2 = ||z||^2 - 2 z.e + ||e||^2; ||z||^2 is the same for every code
            d = (e * e).sum(1)[None, :] - 2 * z @ e.t()  # [N, K]
            return d.argmin(1)

    def lookup(self, indices: Tensor) -> Tensor:
        """Codes of indices [B, h, w] → latents [B, D, h, w]."""
        return F.embedding(indices, self.codebook).permute(0, 3, 1, 2)

    def quantize(self, z_e: Tensor) -> tuple[Tensor, Tensor]:
        """Nearest codes without gradient or state update: (z_q [B, D, h, w], indices [B, h, w])."""
        B, D, h, w = z_e.shape
        indices = self.nearest(z_e.detach().permute(0, 2, 3, 1).reshape(-1, D)).view(B, h, w)
        return self.lookup(indices).to(z_e.dtype), indices

    def prior(self) -> Tensor:
        """Unigram code distribution [K] from the EMA counts (uniform before any training)."""
        total = self.cluster_size.sum()
        if total <= 0:
            return torch.full_like(self.cluster_size, 1.0 / self.num_codes)
        return self.cluster_size / total

    # -- training --------------------------------------------------------------------------

    def forward(self, z_e: Tensor, generator: torch.Generator | None = None) -> QuantizerOutput:
        """Quantise z_e [B, D, h, w]; in training mode also update the codebook state.

        Args:
            z_e: encoder outputs.
            generator: randomness of dead-code restarts (None = torch's global RNG).
        """
        z_q, indices = self.quantize(z_e)
        commit = F.mse_loss(z_e.float(), z_q.detach().float())
        loss = self.commitment * commit
        if self.update == "loss":
            loss = loss + F.mse_loss(z_q.float(), z_e.detach().float())
        counts = torch.bincount(indices.flatten(), minlength=self.num_codes).to(torch.float32)
        if self.training:
            flat = z_e.detach().float().permute(0, 2, 3, 1).reshape(-1, self.dim)
            self._update_state(flat, indices.flatten(), counts, generator)
        z_st = z_e + (z_q - z_e).detach()  # straight-through: forward z_q, backward identity
        return QuantizerOutput(z_st, indices, loss, commit.detach(), counts)

    @torch.no_grad()
    def _update_state(self, flat: Tensor, indices: Tensor, counts: Tensor,
                      generator: torch.Generator | None) -> None:
        """EMA counts (and codes in "ema" mode), then dead-code restarts."""
        counts = _all_reduce(counts.clone())
        w = 1.0 - self.decay
        self.cluster_size.lerp_(counts, w)
        if self.update == "ema":
            sums = torch.zeros_like(self.embed_sum).index_add_(0, indices, flat)  # [K, D]
            self.embed_sum.lerp_(_all_reduce(sums), w)
            total = self.cluster_size.sum()
            smoothed = (self.cluster_size + self.eps) / (total + self.num_codes * self.eps) * total
            self.codebook.copy_(self.embed_sum / smoothed[:, None])
        self._restart_dead(flat, generator)

    def _restart_dead(self, flat: Tensor, generator: torch.Generator | None) -> None:
        """Move codes with EMA count < dead_threshold to random rows of flat [N, D]."""
        dead = (self.cluster_size < self.dead_threshold).nonzero().flatten()
        if dead.numel() == 0:
            return
        pick = torch.randint(0, flat.shape[0], (dead.numel(),), generator=generator,
                             device=generator.device if generator is not None else flat.device)
        chosen = flat[pick.to(flat.device)]
        self.codebook.data[dead] = chosen.to(self.codebook.dtype)
        self.cluster_size[dead] = self.dead_threshold
        if self.update == "ema":
            self.embed_sum[dead] = chosen * self.dead_threshold
        _broadcast(self.codebook.data, self.cluster_size,
                   *((self.embed_sum,) if self.update == "ema" else ()))

    def extra_repr(self) -> str:
        return (f"num_codes={self.num_codes}, dim={self.dim}, update={self.update}, "
                f"decay={self.decay}, commitment={self.commitment}")


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------


def codebook_usage(counts: Tensor) -> float:
    """Fraction of the K codes assigned at least once, from counts [K]."""
    return float((counts > 0).float().mean())


def perplexity(counts: Tensor) -> float:
    """exp(entropy) of the code frequencies counts [K]: K for uniform use, 1 for a single code."""
    p = counts.float() / counts.sum().clamp(min=1)
    entropy = -(p * torch.log(p.clamp(min=1e-12))).sum()
    return float(entropy.exp())


# ---------------------------------------------------------------------------------------------
# Distributed helpers (no-ops in a single process)
# ---------------------------------------------------------------------------------------------


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_reduce(t: Tensor) -> Tensor:
    """Sum of t over ranks (in place)."""
    if _distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def _broadcast(*tensors: Tensor) -> None:
    """Rank 0's values of every tensor on all ranks."""
    if _distributed():
        for t in tensors:
            dist.broadcast(t, src=0)

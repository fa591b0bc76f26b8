"""Cosine vector quantizer: an EMA codebook of K unit vectors with k-means initialisation and
dead-code restarts.

Inputs and codes are l2-normalized, so the nearest code is the one of highest cosine similarity and
the codebook only learns directions; this keeps codes from drifting away from the data in norm
(one classic way codebooks die) and makes k-means on the sphere the natural initialisation.

The codebook is not a parameter: it follows the data by exponential moving averages of per-code
statistics, updated in training mode only (never by the optimizer):

    cluster_size  EMA of how many vectors chose each code (K,); its entropy is the codebook's
                  perplexity over the last ~1 / (1 - decay) steps, a smoother health signal than one batch
    embed_sum     EMA of the sum of the vectors that chose each code (K, D); a code is its direction

Under data parallelism every rank must hold the same codebook. The per-batch counts and sums are
all-reduced (summed) before the EMA update whenever torch.distributed is initialized, and the two
random steps (the k-means initialisation and the seeds of restarted codes) are broadcast from
rank 0, so the buffers stay identical on all ranks without any call from the training loop. This
requires every rank to run the quantizer's training forward in lockstep, as data parallelism does.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F


class Quantized(NamedTuple):
    quantized: torch.Tensor  # (..., D) the codes, with the straight-through gradient to the input
    codes: torch.Tensor  # (...,) long, index of the nearest code
    commit: torch.Tensor  # (...,) squared distance of each normalized input to its code (the commitment loss)
    usage: torch.Tensor  # () fraction of codes chosen by at least one valid vector of this batch
    perplexity: torch.Tensor  # () exp(entropy) of this batch's code histogram over valid vectors
    ema_perplexity: torch.Tensor  # () exp(entropy) of cluster_size


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _sample_rows(x: torch.Tensor, n: int) -> torch.Tensor:
    """n random rows of x (N, D), distinct when N >= n; the global torch RNG draws them."""
    index = torch.randperm(x.shape[0], device=x.device)[:n] if x.shape[0] >= n else \
        torch.randint(x.shape[0], (n,), device=x.device)
    return x[index]


def perplexity(counts: torch.Tensor) -> torch.Tensor:
    """exp(entropy) of a histogram (K,): the effective number of codes in use, 1 for an empty one."""
    p = counts / counts.sum().clamp_min(1e-12)
    return torch.exp(-(p * p.clamp_min(1e-12).log()).sum())


def spherical_kmeans(x: torch.Tensor, k: int, iters: int) -> torch.Tensor:
    """k unit-norm centres of the unit vectors x (N, D) by Lloyd's algorithm on cosine similarity.

    Seeds are k random rows of x; a centre that loses all its points keeps its previous position
    (the dead-code restart deals with it later).
    """
    centres = _sample_rows(x, k)
    for _ in range(iters):
        assign = (x @ centres.T).argmax(dim=1)
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k)
        centres = torch.where(counts[:, None] > 0, F.normalize(sums, dim=1), centres)
    return centres


class VectorQuantizer(nn.Module):
    """K = `size` unit codes of dimension `dim`; EMA `decay`; a code chosen by no valid vector for
    `dead_code_steps` training steps is restarted; `kmeans_iters` Lloyd iterations initialise it.

    The k-means initialisation uses the first training batch (rank 0's under data parallelism): it
    should hold at least K real tokens, else codes start as duplicates and wait for their restart.
    """

    def __init__(self, size: int, dim: int, decay: float, dead_code_steps: int, kmeans_iters: int):
        super().__init__()
        self.size, self.decay = size, decay
        self.dead_code_steps, self.kmeans_iters = dead_code_steps, kmeans_iters
        self.register_buffer("codebook", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("cluster_size", torch.zeros(size))
        self.register_buffer("embed_sum", torch.zeros(size, dim))
        self.register_buffer("unused_steps", torch.zeros(size, dtype=torch.long))  # training steps since last chosen
        self.register_buffer("initialized", torch.tensor(False))  # saved, so a reloaded codebook is not re-initialised
        # host-side knowledge that spares the training step its reads of device buffers (each one a host sync on a
        # GPU): whether `initialized` is known to be True, and for how many coming EMA steps no code can reach
        # dead_code_steps (each step adds at most 1 to unused_steps). Both are forgotten when buffers are loaded.
        self._known_initialized, self._steps_without_restart = False, 0

    def forward(self, z: torch.Tensor, valid: torch.Tensor, update: bool = True) -> Quantized:
        """Quantize z (..., D); only vectors with `valid` (...) True count in statistics and updates.

        With `update` and in training mode, the first call initialises the codebook by k-means on the
        valid vectors, and every call then updates the EMA statistics and restarts dead codes. The
        math runs in float32 whatever the input dtype; `quantized` comes back in the input's dtype.
        """
        if self.codebook.dtype != torch.float32:
            raise RuntimeError(f"the codebook buffers are {self.codebook.dtype}; EMA updates need float32 "
                               "(after casting the model to bf16, cast the quantizer back with .float())")
        dtype = z.dtype
        z = F.normalize(z.float(), dim=-1)
        flat, weight = z.reshape(-1, z.shape[-1]), valid.reshape(-1).float()
        learn = update and self.training
        if learn and not self._known_initialized:
            if not self.initialized:
                self._kmeans_init(flat.detach()[weight > 0])
            self._known_initialized = True
        with torch.no_grad():  # the assignment has no gradient; the straight-through estimator provides one
            codes = (flat @ self.codebook.T).argmax(dim=1)
            counts = torch.bincount(codes, weights=weight, minlength=self.size)
        code_vectors = self.codebook[codes]  # a copy: the update below may change the codebook
        batch_usage, batch_perplexity = (counts > 0).float().mean(), perplexity(counts)
        if learn:
            sums = torch.zeros_like(self.embed_sum).index_add_(0, codes, flat.detach() * weight[:, None])
            self._ema_update(counts, sums, flat.detach(), weight)
        commit = (flat - code_vectors).pow(2).sum(dim=1)
        quantized = flat + (code_vectors - flat).detach()
        shape = z.shape[:-1]
        return Quantized(quantized.view(z.shape).to(dtype), codes.view(shape), commit.view(shape), batch_usage,
                         batch_perplexity, perplexity(self.cluster_size))

    @torch.no_grad()
    def _kmeans_init(self, vectors: torch.Tensor) -> None:
        if vectors.shape[0] > 0:
            self.codebook.copy_(spherical_kmeans(vectors, self.size, self.kmeans_iters))
        if _distributed():
            dist.broadcast(self.codebook, src=0)
        self.initialized.fill_(True)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._known_initialized, self._steps_without_restart = False, 0  # new buffers: read them again

    @torch.no_grad()
    def _ema_update(self, counts: torch.Tensor, sums: torch.Tensor, flat: torch.Tensor, weight: torch.Tensor) -> None:
        """EMA step from this batch's per-code counts (K,) and sums (K, D); restart codes unused for too long
        on random rows of the batch's valid vectors (`flat` (N, D) where `weight` (N,) > 0)."""
        if _distributed():  # one all-reduce for both: a round trip costs more than the tiny model's step does
            both = torch.cat([counts[:, None], sums], dim=1)
            dist.all_reduce(both)
            counts, sums = both[:, 0], both[:, 1:]
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        used = counts > 0
        # an unused code keeps its direction: its embed_sum only shrinks until it is used or restarted
        self.codebook.copy_(torch.where(used[:, None], F.normalize(self.embed_sum, dim=1), self.codebook))
        self.unused_steps.add_(1).masked_fill_(used, 0)

        if self._steps_without_restart > 0:  # no code can be dead yet: nothing to read (the same on all ranks)
            self._steps_without_restart -= 1
            return
        dead = self.unused_steps >= self.dead_code_steps  # identical on all ranks: built from all-reduced counts
        # one host read: how many codes restart now, and the longest unused streak of those that stay
        n_dead, longest_kept = torch.stack([dead.sum(), self.unused_steps.masked_fill(dead, 0).max()]).tolist()
        if n_dead:
            self._restart(dead, n_dead, flat[weight > 0])
        self._steps_without_restart = self.dead_code_steps - 1 - longest_kept

    def _restart(self, dead: torch.Tensor, n_dead: int, vectors: torch.Tensor) -> None:
        # re-seed dead codes on random current inputs, where the data is now; a rank without any
        # valid input proposes the old codes and rank 0's proposal wins anyway
        seeds = _sample_rows(vectors, n_dead) if vectors.shape[0] > 0 else self.codebook[dead]
        if _distributed():
            dist.broadcast(seeds, src=0)
        self.codebook[dead] = seeds
        self.embed_sum[dead] = seeds
        self.cluster_size[dead] = 1.0
        self.unused_steps[dead] = 0

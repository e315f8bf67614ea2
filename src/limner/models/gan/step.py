"""The GAN's training step: the D/G alternation inside one trainer step (STYLE.md §2: it lives
here, not in the trainer).

One step, following StyleGAN2-ADA's phases (Karras et al. 2020, https://arxiv.org/abs/2006.06676)
with the R1 pass folded into the D pass on the steps that evaluate it:

1. D step: per micro-batch, fakes from G (no grad); real and fake images augmented
   (DiffAugment, Zhao et al. 2020); logistic loss (Goodfellow et al. 2014); on R1 steps the
   lazy R1 penalty on the real images, taken through the augmentation (Mescheder et al. 2018);
   backward; then ``ctx.optimizer_step("D")``.
2. G step: D frozen; fakes from G, which also tracks the mean w for truncation; augmented;
   non-saturating loss, plus MSGAN's mode-seeking term when its weight is set (the second half
   of the micro-batch then repeats the first half's conditions with other latents, Mao et al.
   2019); backward; then ``ctx.optimizer_step("G")``.
3. ADA: p is adjusted from the signs of D(real) when due.

All randomness (latents, augmentations) comes from ``ctx.generator()``, so resuming a run draws
the same numbers. Under DDP each phase calls the network it trains through ``ctx.net(name)``
(its gradients are synchronised) and the other one directly: G under ``no_grad`` in the D step,
D with ``requires_grad`` off in the G step. Because DDP runs with
``find_unused_parameters=False``, every trainable parameter of a module called through
``ctx.net`` must get a gradient; the family freezes encoder parameters the condition vector does
not use (e.g. the null condition, which a GAN never draws).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import Tensor, nn

from limner.conditioning.base import CondInputs
from limner.data.batch import Batch
from limner.models.base import StepContext
from limner.models.gan.augment import AdaptiveProbability, DiffAugment
from limner.models.gan.discriminator import Discriminator
from limner.models.gan.generator import Generator
from limner.models.gan.losses import LogisticLoss, R1Penalty, mode_seeking


@contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Turn off ``requires_grad`` of the module's trainable parameters, restoring only those."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


class _Mean:
    """Batch-size weighted means of per-micro-batch scalars."""

    def __init__(self, total: int) -> None:
        self.total, self.sums = total, {}

    def add(self, weight: int, **values: Tensor) -> None:
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + float(value.detach()) * weight / self.total

    def result(self) -> dict[str, float]:
        return dict(self.sums)


class GANStep:
    """One D step then one G step (see the module docstring).

    Args:
        G, D: the raw (unwrapped) networks; DDP wrappers come from ``ctx.net``.
        r1: the lazy R1 penalty.
        augment: the augmentation applied to every image D sees.
        ada: the augmentation probability (fixed or adaptive); its state is the family's.
        conditional: whether the networks take condition inputs.
        mode_seeking: weight of MSGAN's mode-seeking term in the G loss (0 = off).
    """

    def __init__(self, G: Generator, D: Discriminator, r1: R1Penalty, augment: DiffAugment,
                 ada: AdaptiveProbability, conditional: bool, mode_seeking: float = 0.0) -> None:
        self.G, self.D = G, D
        self.loss = LogisticLoss()
        self.r1, self.augment, self.ada = r1, augment, ada
        self.conditional = conditional
        self.mode_seeking = float(mode_seeking)

    def __call__(self, batch: Batch, ctx: StepContext) -> dict[str, float]:
        """Both phases and the ADA update; metrics: loss (= loss_G), loss_D, loss_G, D_real,
        D_fake (mean logits), r1 (mean ||grad||^2, on R1 steps), aug_p (p used this step),
        ada_rt (r_t, on adjustment steps) and, with mode seeking on, ms (its term before
        weighting: lower = more diverse)."""
        p = self.ada.p
        metrics = self.discriminator_step(batch, ctx, p)
        metrics.update(self.generator_step(batch, ctx, p))
        r_t = self.ada.end_step(ctx.step + 1)
        if r_t is not None:
            metrics["ada_rt"] = r_t
        metrics["aug_p"] = p
        metrics["loss"] = metrics["loss_G"]
        return metrics

    # ----------------------------------------------------------------- phases
    def discriminator_step(self, batch: Batch, ctx: StepContext, p: float) -> dict[str, float]:
        """Logistic D loss on augmented reals and fakes, plus lazy R1; one D update."""
        D_net = ctx.net("D")
        r1_due = self.r1.due(ctx.step)
        mean = _Mean(len(batch))
        for micro in ctx.micro_batches(batch):
            gen = ctx.generator()
            inputs = self.condition_inputs(micro)
            z = self.latents(len(micro), micro.images.device, gen)
            with torch.no_grad(), ctx.autocast():
                fake = self.G(z, inputs)
            real = micro.images.detach().requires_grad_(r1_due)
            with ctx.autocast():
                fake_logits = D_net(self.augment(fake, p, gen), inputs).float()
                real_logits = D_net(self.augment(real, p, gen), inputs).float()
            loss = self.loss.discriminator(real_logits, fake_logits).mean()
            values = dict(loss_D=loss, D_real=real_logits.mean(), D_fake=fake_logits.mean())
            if r1_due:
                r1 = self.r1(real_logits, real).mean()
                loss = loss + self.r1.weight * r1
                values["r1"] = r1
            ctx.backward(loss, "D")
            self.ada.observe(real_logits)
            mean.add(len(micro), **values)
        ctx.optimizer_step("D")
        return mean.result()

    def generator_step(self, batch: Batch, ctx: StepContext, p: float) -> dict[str, float]:
        """Non-saturating G loss (+ mode seeking) through the frozen D; one G update."""
        G_net = ctx.net("G")
        mean = _Mean(len(batch))
        with frozen(self.D):
            for micro in ctx.micro_batches(batch):
                gen = ctx.generator()
                seeking = self.mode_seeking > 0 and len(micro) >= 2
                inputs = self.condition_inputs(micro, paired=seeking)
                z = self.latents(len(micro), micro.images.device, gen)
                with ctx.autocast():
                    fake = G_net(z, inputs, update_w_avg=True)
                    logits = self.D(self.augment(fake, p, gen), inputs).float()
                loss = self.loss.generator(logits).mean()
                values = dict(loss_G=loss)
                if seeking:
                    ms = mode_seeking(fake, z)
                    loss = loss + self.mode_seeking * ms
                    values["ms"] = ms
                ctx.backward(loss, "G")
                mean.add(len(micro), **values)
        ctx.optimizer_step("G")
        return mean.result()

    # ----------------------------------------------------------------- inputs
    def latents(self, n: int, device: torch.device, gen: torch.Generator | None) -> Tensor:
        """z [n, z_dim] ~ N(0, I) from the step generator."""
        return torch.randn(n, self.G.config.z_dim, generator=gen, device=device)

    def condition_inputs(self, micro: Batch, paired: bool = False) -> CondInputs | None:
        """The micro-batch's captions or labels, prepared for both encoders (same config).

        ``paired``: rows h..2h-1 (h = B // 2) repeat rows 0..h-1, for the mode-seeking pairs.
        """
        if not self.conditional:
            return None
        inputs = self.G.encoder.prepare(captions=micro.captions, labels=micro.labels,
                                        batch_size=len(micro))
        if paired:
            B, h = len(micro), len(micro) // 2
            inputs = inputs[torch.cat([torch.arange(h), torch.arange(h), torch.arange(2 * h, B)])]
        return inputs.to(micro.images.device)

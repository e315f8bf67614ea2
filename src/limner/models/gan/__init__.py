"""A small-data GAN: StyleGAN2-lite generator, residual projection discriminator, logistic loss
with lazy R1, DiffAugment with an optional ADA probability, EMA generator and truncation."""

"""Variational autoencoders: a convolutional KL VAE and a VQ-VAE (the token transformer's
tokenizer), optionally conditional and optionally with a VQGAN patch discriminator.

References: Kingma & Welling 2014 (VAE); Higgins et al. 2017 (beta-VAE); Bowman et al. 2016 (KL
annealing); Sohn et al. 2015 (conditional VAE); van den Oord et al. 2017 (VQ-VAE); Razavi et
al. 2019 (VQ-VAE-2, EMA codebook); Esser et al. 2021 (VQGAN).
"""

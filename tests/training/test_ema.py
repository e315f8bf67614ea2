"""EMA: warm-up decay, swapped() restores training weights bitwise, counter round trip."""

from __future__ import annotations

import pytest
import torch

from limner.training.checkpoint import load_module_weights

from .toy_family import ToyDenoiser, ToyFamily, assert_same, make_trainer


def _perturb(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g))


def test_warmup_decay_then_cap():
    from limner.training.ema import EMA

    net = ToyDenoiser()
    ema = EMA({"m": net}, ["m"], decay=0.9)
    assert ema.current_decay() == pytest.approx(0.1)  # (1+0)/(10+0)
    ema.updates = 1000
    assert ema.current_decay() == pytest.approx(0.9)


def test_update_follows_the_formula_and_copies_buffers():
    from limner.training.ema import EMA

    net = ToyDenoiser()
    ema = EMA({"m": net}, ["m"], decay=0.5, warmup=False)
    before = {k: v.clone() for k, v in ema.shadow["m"].items()}
    _perturb(net, 0)
    net.calls += 5
    ema.update()
    for key, value in net.state_dict().items():
        if key == "calls":
            assert ema.shadow["m"][key] == 5
        else:
            assert torch.allclose(ema.shadow["m"][key], 0.5 * before[key] + 0.5 * value)
    assert ema.updates == 1


def test_swapped_restores_training_weights_bitwise():
    from limner.training.ema import EMA

    net = ToyDenoiser()
    ema = EMA({"m": net}, ["m"], decay=0.9)
    _perturb(net, 1)
    ema.update()
    _perturb(net, 2)
    training = {k: v.clone() for k, v in net.state_dict().items()}
    with ema.swapped():
        for key, value in net.state_dict().items():
            assert torch.equal(value, ema.shadow["m"][key].to(value.dtype))
        _perturb(net, 3)  # even if sampling code scribbles on the live weights
    assert_same(dict(net.state_dict()), training)


def test_swapped_restores_after_an_exception():
    from limner.training.ema import EMA

    net = ToyDenoiser()
    ema = EMA({"m": net}, ["m"], decay=0.9)
    _perturb(net, 4)
    training = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(RuntimeError), ema.swapped():
        raise RuntimeError("boom")
    assert_same(dict(net.state_dict()), training)


def test_ema_weights_and_counter_survive_a_resume(tmp_path):
    trainer = make_trainer(tmp_path, steps=6, save_every=6)
    trainer.fit()
    shadow = {k: v.clone() for k, v in trainer.ema.shadow["model"].items()}
    weights = {k: v.clone() for k, v in trainer.family.net.state_dict().items()}
    resumed = make_trainer(tmp_path, steps=6, resume=True)
    assert resumed.ema.updates == trainer.ema.updates == 6
    assert_same(resumed.ema.shadow["model"], shadow)
    # the training weights are the training weights, not the EMA copy
    assert_same(dict(resumed.family.net.state_dict()), weights)
    assert not torch.equal(shadow["conv1.weight"], weights["conv1.weight"])
    # the EMA file loads into the same architecture for sampling
    fresh = ToyFamily(seed=9)
    load_module_weights(fresh.net, trainer.last_checkpoint / "model_ema.safetensors")
    assert_same(dict(fresh.net.state_dict()), shadow)

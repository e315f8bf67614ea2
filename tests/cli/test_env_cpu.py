"""``limner env`` names the CPU model, which every speed figure depends on (issue 20)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from limner import environment

INTEL = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 143
model name\t: Intel(R) Xeon(R)  Platinum 8481C CPU @ 2.70GHz
cpu MHz\t\t: 2699.998
"""
POWER = "processor\t: 0\ncpu\t\t: POWER9 (architected), altivec supported\nclock\t\t: 2200.000000MHz\n"
ARM = "processor\t: 0\nBogoMIPS\t: 50.00\nCPU implementer\t: 0x41\nCPU part\t: 0xd0c\n"


def test_model_from_cpuinfo_text(tmp_path, monkeypatch):
    for text, want in ((INTEL, "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz"),
                       (POWER, "POWER9 (architected), altivec supported")):
        (tmp_path / "cpuinfo").write_text(text)
        assert environment.cpu_model(str(tmp_path / "cpuinfo")) == want
    # no model line (ARM kernels): lscpu's "Model name", then the platform module
    (tmp_path / "cpuinfo").write_text(ARM)
    monkeypatch.setattr(environment, "_model_from_lscpu", lambda: "Neoverse-N1")
    assert environment.cpu_model(str(tmp_path / "cpuinfo")) == "Neoverse-N1"
    monkeypatch.setattr(environment, "_model_from_lscpu", lambda: None)
    monkeypatch.setattr(environment.platform, "processor", lambda: "")
    assert environment.cpu_model(str(tmp_path / "absent")) == "unknown"


@pytest.mark.skipif(not Path("/proc/cpuinfo").is_file(), reason="needs /proc/cpuinfo")
def test_env_prints_this_machines_cpu_model(cli, tmp_path):
    names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
             if line.startswith("model name")]
    if not names:
        pytest.skip("this kernel's /proc/cpuinfo has no model name line")
    want = " ".join(names[0].split())
    assert json.loads(cli("env", "--json", cache=tmp_path).stdout)["cpu"]["model"] == want
    assert f"  model{' ' * 18}{want}" in cli("env", cache=tmp_path).stdout.splitlines()


def test_cpu_signature_tells_cpus_of_one_name_apart(tmp_path):
    """"AMD EPYC" alone covers Zen 3 (AVX2) and Zen 4 (AVX-512): the family/model numbers differ."""
    (tmp_path / "zen3").write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\n"
                                   "model\t\t: 1\nmodel name\t: AMD EPYC\n")
    (tmp_path / "zen4").write_text("processor\t: 0\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC\n")
    (tmp_path / "arm").write_text("processor\t: 0\nCPU implementer\t: 0x41\nModel\t\t: Neoverse-N1\n")
    assert environment.cpu_signature(str(tmp_path / "zen3")) == "family 25 model 1"
    assert environment.cpu_signature(str(tmp_path / "zen4")) == "family 25 model 17"
    assert environment.cpu_signature(str(tmp_path / "arm")) is None
    assert environment.cpu_signature(str(tmp_path / "absent")) is None
    described = environment.cpu_description()
    assert described.startswith(environment.cpu_model())
    assert torch.backends.cpu.get_cpu_capability() in described


def test_cpu_caches_from_sysfs(tmp_path):
    """Data and unified caches in level order, instruction caches left out; None without sysfs."""
    for index, (level, kind, size) in enumerate([("1", "Data", "48K"), ("1", "Instruction", "32K"),
                                                 ("3", "Unified", "107520K"), ("2", "Unified", "2048K")]):
        folder = tmp_path / f"index{index}"
        folder.mkdir()
        for name, value in (("level", level), ("type", kind), ("size", size)):
            (folder / name).write_text(value + "\n")
    (tmp_path / "uevent").write_text("")
    assert environment.cpu_caches(str(tmp_path)) == "L1d 48K, L2 2048K, L3 107520K"
    assert environment.cpu_caches(str(tmp_path / "absent")) is None


@pytest.mark.skipif(not Path("/sys/devices/system/cpu/cpu0/cache").is_dir(), reason="needs Linux sysfs caches")
def test_env_prints_this_machines_caches(cli, tmp_path):
    caches = json.loads(cli("env", "--json", cache=tmp_path).stdout)["cpu"]["caches"]
    assert caches == environment.cpu_caches() and caches.startswith("L1")

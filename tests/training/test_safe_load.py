"""Never unpickle payloads: format by content, weights_only only (RELIABILITY.md B.21-B.23, B.26)."""

from __future__ import annotations

import io
import pathlib
import pickle
import struct
import tarfile
import zipfile

import pytest
import torch

from limner.errors import CheckpointError
from limner.training.checkpoint import load_module_weights
from limner.training.safe_load import detect_format, load_safetensors, load_state

from .toy_family import ToyDenoiser


class Payload:
    """Harmless stand-in for malware: unpickling it creates a sentinel file."""

    def __init__(self, sentinel: pathlib.Path):
        self.sentinel = sentinel

    def __reduce__(self):
        return (pathlib.Path.touch, (self.sentinel,))


def _raw_pickle(sentinel):
    return pickle.dumps({"state_dict": Payload(sentinel)}, protocol=2)


def _zip_pickle(sentinel):
    buf = io.BytesIO()
    torch.save({"weights": torch.zeros(2), "evil": Payload(sentinel)}, buf)
    return buf.getvalue()


def _legacy_pickle(sentinel):
    buf = io.BytesIO()
    torch.save({"evil": Payload(sentinel)}, buf, _use_new_zipfile_serialization=False)
    return buf.getvalue()


def _tar_pickle(sentinel):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = _raw_pickle(sentinel)
        info = tarfile.TarInfo("pickle")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _pickle_that_breaks(sentinel):
    return _raw_pickle(sentinel)[:-5] + b"\x00garbage"


MAKERS = {"raw": _raw_pickle, "zip": _zip_pickle, "legacy": _legacy_pickle, "tar": _tar_pickle,
          "broken": _pickle_that_breaks}
NAMES = ["state.pt", "model.pt", "model.safetensors", "model.SAFETENSORS", "model.SafeTensors",
         "model.ckpt", "model"]


@pytest.mark.parametrize("kind", list(MAKERS))
@pytest.mark.parametrize("name", NAMES)
def test_payloads_are_refused_and_never_run(tmp_path, kind, name):
    sentinel = tmp_path / "pwned"
    path = tmp_path / name
    path.write_bytes(MAKERS[kind](sentinel))
    with pytest.raises(CheckpointError, match="refusing to unpickle|not a valid safetensors|not a readable"):
        load_state(path)
    with pytest.raises(CheckpointError) as err:
        load_module_weights(ToyDenoiser(), path)
    assert "safetensors" in str(err.value)
    with pytest.raises(CheckpointError):
        load_safetensors(path)
    assert not sentinel.exists()


def test_refusal_message_points_to_safe_formats(tmp_path):
    sentinel = tmp_path / "pwned"
    path = tmp_path / "state.pt"
    path.write_bytes(_zip_pickle(sentinel))
    with pytest.raises(CheckpointError, match="limner only loads safetensors.*weights_only"):
        load_state(path)
    assert not sentinel.exists()


def test_format_is_decided_by_content(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "w.pt"))
    assert detect_format(tmp_path / "w.pt") == "safetensors"
    torch.save({"x": torch.zeros(2)}, tmp_path / "s.safetensors")
    assert detect_format(tmp_path / "s.safetensors") == "torch-zip"
    assert load_state(tmp_path / "s.safetensors")["x"].shape == (2,)


def _safetensors_bytes(header: bytes, data: bytes = b"") -> bytes:
    return struct.pack("<Q", len(header)) + header + data


MALFORMED = {
    "length_past_end": struct.pack("<Q", 10_000) + b'{"a":1}',
    "length_2_63": struct.pack("<Q", 2**63) + b"{}",
    "not_json": _safetensors_bytes(b"{not json at all}"),
    "not_utf8": _safetensors_bytes(b'{"\xff\xfe": 1}'),
    "offsets_past_end": _safetensors_bytes(
        b'{"x":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}', b"\0" * 8),
    "end_before_begin": _safetensors_bytes(
        b'{"x":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}}', b"\0" * 4),
    "shape_mismatch": _safetensors_bytes(
        b'{"x":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}', b"\0" * 8),
    "trailing_bytes": _safetensors_bytes(
        b'{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', b"\0" * 4 + b"PK\x03\x04evil"),
    "unknown_dtype": _safetensors_bytes(
        b'{"x":{"dtype":"Q99","shape":[1],"data_offsets":[0,4]}}', b"\0" * 4),
    "negative_dim": _safetensors_bytes(
        b'{"x":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}', b"\0" * 4),
    "empty": b"",
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_safetensors_are_clear_errors(tmp_path, case):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(MALFORMED[case])
    with pytest.raises(CheckpointError, match="safetensors|refusing"):
        load_safetensors(path)


def test_zip_without_pickle_payload_but_foreign_globals_is_refused(tmp_path):
    path = tmp_path / "state.pt"
    torch.save({"opt": torch.optim.SGD}, path)  # a class reference, not plain data
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        load_state(path)


def test_not_a_zip_torch_file(tmp_path):
    path = tmp_path / "state.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("hello.txt", "hi")
    with pytest.raises(CheckpointError):
        load_state(path)

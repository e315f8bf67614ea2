"""Family declarations: options checked with field-named errors, CLI choices built from them, and
front ends that read capabilities and needed runs instead of family names."""

from __future__ import annotations

import pickle

import pytest

from limner.cli.main import main
from limner.errors import UsageError
from limner.models.declaration import Capability, FamilyDeclaration, OptionSpec, request_options
from limner.models.registry import FAMILIES, declaration, declarations

TOP_K = OptionSpec("top_k", int, "keep the k likeliest tokens; 0 = all", min=0)
TOP_P = OptionSpec("top_p", float, "nucleus mass", min=0, max=1, min_open=True)
DECL = FamilyDeclaration("toy", options=(TOP_K, TOP_P), capabilities=frozenset({Capability.inpaint}))


def test_usage_error_carries_its_field():
    e = UsageError("must be at least 1, got 0", field="top_k")
    assert (e.field, e.reason, str(e)) == ("top_k", "must be at least 1, got 0", "--top-k: must be at least 1, got 0")
    legacy = UsageError("--sigma-max: must be > 0")  # older raise sites get a field from their flag
    assert (legacy.field, legacy.reason) == ("sigma_max", "must be > 0")
    assert UsageError("RUN_DIR: not a folder").field is None
    again = pickle.loads(pickle.dumps(e))  # crosses process boundaries (job workers) intact
    assert (again.field, again.reason) == ("top_k", e.reason)
    assert str(UsageError("not settable", field="family.P_mean")).startswith("--set family.P_mean:")


@pytest.mark.parametrize("values, field, needle", [
    ({"top_k": -1}, "top_k", ">= 0"),
    ({"top_k": 2.5}, "top_k", "integer"),
    ({"top_p": 0.0}, "top_p", "in (0, 1]"),
    ({"top_p": float("nan")}, "top_p", "finite"),
    ({"top_p": "x"}, "top_p", "number"),
    ({"steps": 4}, "steps", "takes no steps option (its options: top_k, top_p)"),
])
def test_check_options_names_the_field(values, field, needle):
    with pytest.raises(UsageError) as exc:
        DECL.check_options(values, family="toy")
    assert exc.value.field == field and needle in exc.value.reason


def test_check_options_converts_and_skips_unset():
    assert DECL.check_options({"top_k": "5", "top_p": 1, "other": None}, family="toy") == {"top_k": 5, "top_p": 1.0}
    assert DECL.supports("inpaint") and not DECL.supports(Capability.reconstruct)
    assert request_options({"steps": 3, "top_k": 2}) == {"steps": 3, "options": {"top_k": 2}}


def test_every_family_declares_json_able_options():
    import json

    for name, decl in declarations().items():
        data = json.loads(json.dumps(decl.to_json()))
        assert data["summary"] and all(o["help"] for o in data["options"]), name
        for need in decl.needs:
            assert need.family in FAMILIES and need.provenance
    assert declaration("vae").supports(Capability.reconstruct)
    assert [n.option for n in declaration("latent-diffusion").needs] == ["vae"]


def test_cli_choices_come_from_declarations(capsys):
    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    help_text = capsys.readouterr().out
    for name, decl in declarations().items():
        for spec in decl.options:
            assert "--" + spec.name.replace("_", "-") in help_text, (name, spec.name)


def test_a_run_option_the_family_does_not_declare_is_refused(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    code = main(["train", str(data), "--out", str(tmp_path / "o"), "--family", "gan", "--vae", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert "--vae: applies to --family latent-diffusion only, not 'gan'" in err


def test_pipeline_checks_a_request_against_the_loaded_family():
    from types import SimpleNamespace

    from limner.generation.pipeline import check_options
    from limner.generation.request import GenerationRequest

    gan = SimpleNamespace(name="gan", declaration=declaration("gan"))
    with pytest.raises(UsageError) as exc:
        check_options(gan, GenerationRequest(run="r", steps=4))
    assert exc.value.field == "steps" and "gan" in str(exc.value)
    toy = SimpleNamespace(name="toy", declaration=DECL)
    checked = check_options(toy, GenerationRequest(run="r", options={"top_k": "3"}))
    assert checked.options == {"top_k": 3} and checked.steps is None

"""Shell completion of Hydra overrides through the Typer front (`--install-completion`)."""

from __future__ import annotations

from diffcli.cli.completion import complete_override as _complete
from diffcli.commands import registry


def complete_override(name: str, incomplete: str, typed: list[str]) -> list[str]:
    return _complete(registry()[name], incomplete, typed)


def test_keys_groups_and_nested_keys():
    assert {"sampler=", "sampler.", "seed=", "seeds="} <= set(complete_override("sample", "s", []))
    assert "hydra." not in complete_override("sample", "h", [])
    nested = complete_override("sample", "sampler.", [])
    assert "sampler.steps=" in nested and not any("_target_" in w for w in nested)


def test_values_follow_the_config_being_typed():
    assert complete_override("sample", "sampler=d", []) == [
        "sampler=ddim", "sampler=ddpm", "sampler=dpmpp_2m", "sampler=dpmpp_2m_sde",
        "sampler=dpmpp_3m"]
    assert complete_override("sample", "clip_denoised=", []) == [
        "clip_denoised=true", "clip_denoised=false"]
    ddim = complete_override("sample", "sampler.", ["sampler=ddim"])
    assert "sampler.eta=" in ddim  # the node as the earlier override composes it
    assert "sampler.eta=" not in complete_override("sample", "sampler.", ["sampler=ddpm"])
    assert complete_override("train", "+dataset.n_po", ["dataset=moons"]) == [
        "+dataset.n_points="]


def test_bash_splits_at_equals_and_gets_values_alone():
    assert complete_override("sample", "e", ["sampler", "="]) == ["euler"]
    assert "moons" in complete_override("train", "", ["seed", "=", "1", "dataset", "="])


def test_completion_through_the_typer_app():
    from typer.testing import CliRunner

    from diffcli.cli import app

    env = {"_DIFFCLI_COMPLETE": "complete_bash", "COMP_WORDS": "diffcli sample sampler=e",
           "COMP_CWORD": "2"}
    result = CliRunner().invoke(app, [], env=env, prog_name="diffcli")
    assert result.exit_code == 0, result.output
    assert result.output.split() == ["sampler=euler"]

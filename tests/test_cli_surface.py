"""The command line as one surface: every verb's --help is complete and every flag is documented.

Verbs are discovered from the typer app, so verbs registered later are covered without editing
this file.
"""

from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
WIDTH = 80


def _root():
    from spatialforge.processing.cli import _register, app

    _register()
    return typer.main.get_command(app)


def _verbs() -> list[str]:
    return sorted(_root().commands)


def _help(args: list[str]) -> str:
    from spatialforge.processing.cli import app

    res = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": str(WIDTH)}, terminal_width=WIDTH)
    assert res.exit_code == 0, res.output
    return res.stdout


def _flags(command) -> list[tuple[str, object]]:
    """``(--flag, param)`` of every shown option (typer may use its own copy of click: no isinstance)."""
    out = []
    for param in command.params:
        if param.param_type_name == "option" and not param.hidden:
            out += [(name, param) for name in [*param.opts, *param.secondary_opts] if name.startswith("--") and name != "--help"]
    return out


def _in_readme(flag: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", README) is not None


def test_the_verbs_are_discovered():
    assert {"index", "check-images", "generate", "demo"} <= set(_verbs())


def _assert_complete(text: str, where: str) -> None:
    for line in text.splitlines():
        if line.startswith("Usage: "):
            continue  # "[ARGS]..." is click's notation for repeatable arguments
        assert len(line) <= WIDTH, f"{where}: line wider than the terminal: {line!r}"
        assert not line.rstrip().endswith(("...", "…")), f"{where}: cut-off line {line!r}"
        assert not re.search(r"--[a-z][a-z-]*-$", line.rstrip()), f"{where}: a flag broken across lines: {line!r}"


@pytest.mark.parametrize("verb", _verbs())
def test_every_flag_of_every_verb_is_documented_and_its_help_is_complete(verb):
    command = _root().commands[verb]
    text = _help([verb])
    _assert_complete(text, verb)
    assert command.help and command.short_help, f"{verb} needs a docstring and a short help"
    for flag, param in _flags(command):
        assert param.help, f"{verb} {flag} has no help text"
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text), f"{verb} --help does not show {flag} whole"
        assert _in_readme(flag), f"{verb} {flag} is not mentioned in README.md"
    for param in command.params:
        if param.param_type_name == "argument":
            name = param.metavar or param.name.upper()
            assert name in text and name in README, f"{verb} argument {name} is not documented"


def test_root_help_lists_every_verb_with_an_uncut_summary_and_the_exit_codes():
    text = _help([])
    _assert_complete(text, "spatialforge")
    for verb in _verbs():
        assert re.search(rf"^  {re.escape(verb)} ", text, re.M), verb
    assert "2 bad input" in " ".join(text.split()) and "1 images missing" in " ".join(text.split())
    for flag, _ in _flags(_root()):
        assert _in_readme(flag), flag


def test_the_options_the_readme_must_explain_are_there():
    for name in ("--depth-kind", "--detector-labels", "--on-bad-input", "--on-size-mismatch", "--overwrite",
                 "`revision`", "`max_image_pixels`", "`check_threads`", "`index_dir`", "SPATIALFORGE_CACHE",
                 "`on_invalid_row`", "`image_check`", "`on_missing_image`"):
        assert name in README, name
    # what the README says image_stats holds is what it holds
    from spatialforge.builders.check import ImageReport, SourceReport

    report = ImageReport(sources={"x": SourceReport("x", None)})
    keys = set(report.to_dict()) | set(report.to_dict()["sources"]["x"]) | {"dropped_rows", "dropped_rows_by_reason"}
    for key in keys:
        assert f"`{key}`" in README, key


def test_version_prints_the_installed_version():
    from spatialforge.processing.cli import app

    _root()
    res = CliRunner().invoke(app, ["--version"])
    assert res.exit_code == 0 and res.stdout.strip() == f"spatialforge {version('spatialforge')}"


def test_one_name_per_concept_across_verbs():
    root = _root()
    names = {verb: {flag for flag, _ in _flags(cmd)} for verb, cmd in root.commands.items()}
    for verb, flags in names.items():
        assert not flags & {"--images", "--root"}, f"{verb} still shows an old spelling"
    assert "--image-dir" in names["generate"] and "--image-dir" in names["index"] and "--image-dir" in names["check-images"]
    assert "--annotations" not in names["check-images"]  # a SpatialForge dataset is the positional DATASET

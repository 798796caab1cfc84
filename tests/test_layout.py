"""The package layout: every folder of the tree installs under ``spatialforge.*``, and the README's
imports and layout section match the tree."""

import ast
import re
import subprocess
import sys
import textwrap
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOPS = {"builders": "spatialforge.builders", "processing": "spatialforge.processing"}


def _packages_in_tree() -> dict[str, str]:
    """Dotted package name -> folder (relative), for every folder with an ``__init__.py``."""
    out = {}
    for top, dotted in TOPS.items():
        for init in sorted((ROOT / top).rglob("__init__.py")):
            rel = init.parent.relative_to(ROOT)
            out[".".join([dotted, *rel.parts[1:]])] = rel.as_posix()
    return out


def test_every_package_folder_is_declared_in_pyproject():
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    tree = _packages_in_tree()
    assert sorted(conf["packages"]) == sorted(tree)
    assert conf["package-dir"] == tree
    assert conf["py-modules"] == ["spatialforge_10m"]


@pytest.mark.slow
def test_a_regular_wheel_holds_every_module_under_spatialforge_and_nothing_generic(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
                   check=True, capture_output=True)  # fmt: skip
    (whl,) = tmp_path.glob("spatialforge-*.whl")
    names = set(zipfile.ZipFile(whl).namelist())
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert tops == {"spatialforge", "spatialforge_10m.py"}
    for top, dotted in TOPS.items():
        for py in (ROOT / top).rglob("*.py"):
            if "__pycache__" in py.parts:
                continue
            rel = py.relative_to(ROOT / top).as_posix()
            assert f"{dotted.replace('.', '/')}/{rel}" in names, rel


def test_the_imports_the_readme_shows_resolve():
    text = (ROOT / "README.md").read_text()
    blocks = [textwrap.dedent(b) for _, b in re.findall(r"^( *)```python\n(.*?)^\1```", text, flags=re.S | re.M)]
    assert blocks
    seen = 0
    for block in blocks:
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    __import__(alias.name)
                    seen += 1
            elif isinstance(node, ast.ImportFrom):
                module = __import__(node.module, fromlist=[a.name for a in node.names])
                for alias in node.names:
                    assert hasattr(module, alias.name), f"README: from {node.module} import {alias.name}"
                    seen += 1
    assert seen >= 2


def test_the_readme_layout_names_every_processing_folder():
    text = (ROOT / "README.md").read_text()
    layout = text[text.index("## Layout"):]
    layout = layout[: layout.index("```", layout.index("```") + 3)]
    for package, folder in _packages_in_tree().items():
        name = folder.split("/")[-1]
        if folder.count("/") == 1:  # processing/<sub>
            assert f"  {name}/" in layout, folder
    doc = (ROOT / "processing" / "__init__.py").read_text()
    for sub in ("readers/", "perception/", "tasks/", "output/", "executors/", "synth/", "cli/"):
        assert sub in doc, sub

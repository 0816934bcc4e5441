"""Install output (issue 16): the license is an SPDX string (no setuptools deprecation), `make setup` says what it installs."""
import re
import tomllib
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_license_is_an_spdx_expression_without_deprecation_warnings():
    py = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert py["project"]["license"] == "Apache-2.0"
    req = next(r for r in py["build-system"]["requires"] if r.startswith("setuptools"))
    assert int(re.search(r">=(\d+)", req).group(1)) >= 77          # SPDX strings need setuptools 77 (PEP 639)
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        apply_configuration(Distribution(), str(ROOT / "pyproject.toml"))
    assert not [w for w in caught if "license" in str(w.message).lower()], [str(w.message)[:200] for w in caught]


def test_setup_says_what_it_installs():
    mk = (ROOT / "Makefile").read_text()
    recipe = mk.split("$(STAMP): pyproject.toml", 1)[1].split("\n\n", 1)[0]
    steps = re.findall(r'echo "setup (\d)/(\d): ([^"]+)"', recipe)
    assert [s[0] for s in steps] == ["1", "2", "3", "4", "5"] and all(s[1] == "5" for s in steps)
    assert any("MB" in s[2] or "GB" in s[2] for s in steps)
    for line in recipe.splitlines():                                 # every pip install is announced by the step before it
        if "pip install" in line: assert line.strip().startswith("@")

"""pyproject.toml's lower bounds are true: the code runs on the oldest versions it declares."""

import ast
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("oneencoder", "stages", "datamodules")
# Standard-library APIs newer than some Python 3 release: how the code uses them -> the first release.
NEWER_APIS = {
    r"\bhashlib\.file_digest\(": (3, 11),
    r"^\s*(import|from) tomllib\b": (3, 11),
    r"\bitertools\.batched\(|^from itertools import .*\bbatched\b": (3, 12),
}

def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _lower_bound(spec: str) -> tuple[int, ...]:
    match = re.search(r">=\s*(\d+(?:\.\d+)*)", spec)
    assert match, f"no lower bound in {spec!r}"
    return tuple(int(part) for part in match[1].split("."))


def _sources() -> list[Path]:
    return [path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))]


def test_the_code_parses_and_uses_only_apis_of_the_oldest_declared_python():
    oldest = _lower_bound(_project()["requires-python"])
    for path in _sources():
        text = path.read_text()
        ast.parse(text, filename=str(path), feature_version=oldest[:2])
        for api, since in NEWER_APIS.items():
            if re.search(api, text, re.MULTILINE):
                assert since <= oldest, f"{path} uses {api!r} (Python {since}) but requires-python is {oldest}"


def test_torch_is_new_enough_for_safe_checkpoint_loading():
    # Lightning resumes with torch.load's default weights_only, True only from torch 2.6 on.
    bounds = {re.split(r"[<>=;\[ ]", spec)[0]: spec for spec in _project()["dependencies"]}
    assert _lower_bound(bounds["torch"]) >= (2, 6)
    assert _lower_bound(bounds["torchaudio"]) >= (2, 6)  # released together with torch


def test_every_file_the_search_page_serves_is_declared_package_data():
    # An editable install reads stages/static/ from the checkout; a wheel has only what is declared.
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["stages"]
    served = [path.relative_to(ROOT / "stages") for path in (ROOT / "stages" / "static").rglob("*") if path.is_file()]
    assert served, "stages/static/ holds the search page"
    undeclared = [str(path) for path in served if not any(path.match(pattern) for pattern in declared)]
    assert not undeclared, f"add these to [tool.setuptools.package-data] stages: {undeclared}"

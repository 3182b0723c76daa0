"""environment.yml, requirements.lock and pyproject.toml agree."""

import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def _lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", line
            pins[req.name.lower()] = spec.version
    return pins


def test_environment_yml_matches_lock():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    assert "python=3.11" in deps and "pip" in deps
    pip = next(d["pip"] for d in deps if isinstance(d, dict))
    env_pins = {}
    for item in pip:
        if item.startswith("-e"):
            continue
        req = Requirement(item)
        (spec,) = req.specifier
        env_pins[req.name.lower()] = spec.version
    assert env_pins == _lock()


def test_lock_satisfies_pyproject_and_pins_cpu_torch():
    lock = _lock()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    for r in map(Requirement, reqs):
        name = r.name.lower()
        assert name in lock, f"{name} is not pinned in requirements.lock"
        assert r.specifier.contains(lock[name], prereleases=True), f"{name}=={lock[name]} violates {r}"
    assert lock["torch"] == "2.13.0"
    assert lock["jupyter-book"].startswith("1.")

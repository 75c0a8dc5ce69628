"""Check the floors of ../shared/ARCHITECTURE.md: run import-linter's contracts (in
pyproject.toml) on the package as installed, and find every import of a `_private` name
from another file.

import-linter reads the package from disk, but `package-dir` maps `tilecraft` onto
several top-level folders; so the package is first laid out as one tree in a temporary
folder (a copy of the sources only) and linted there. Exit 0 when every contract is kept.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def package_dirs() -> dict[str, str]:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["tool"]["setuptools"]["package-dir"]


def private_imports() -> list[str]:
    """`from tilecraft.x import _name` (or `import tilecraft.x._y`) anywhere in the package."""
    found = []
    for folder in sorted(set(package_dirs().values())):
        for name in sorted(os.listdir(os.path.join(ROOT, folder))):
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            tree = ast.parse(open(os.path.join(ROOT, path)).read(), path)
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tilecraft"):
                    for alias in node.names:
                        if alias.name.startswith("_") and alias.name != "__version__":
                            found.append(f"{path}:{node.lineno}: from {node.module} import {alias.name}")
    return found


def lint(stage: str) -> int:
    for package, folder in package_dirs().items():
        dest = os.path.join(stage, *package.split("."))
        os.makedirs(dest, exist_ok=True)
        for name in os.listdir(os.path.join(ROOT, folder)):
            if name.endswith(".py"):
                shutil.copy(os.path.join(ROOT, folder, name), dest)
    config = os.path.join(stage, "contracts.toml")
    with open(config, "w") as f:
        f.write(contracts())
    env = {**os.environ, "PYTHONPATH": stage}
    lint_imports = os.path.join(os.path.dirname(sys.executable), "lint-imports")
    return subprocess.run([lint_imports, config], cwd=stage, env=env).returncode


def contracts() -> str:
    """pyproject's import-linter section, with the layer `compiler/*` spelled out as every
    module of compiler/ (siblings that may import each other)."""
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        section = tomllib.load(f)["tool"]["importlinter"]
    folder = package_dirs()["tilecraft"]
    names = os.listdir(os.path.join(ROOT, folder))
    modules = sorted(n[:-3] for n in names if n.endswith(".py") and n != "__init__.py")
    top = " : ".join(f"tilecraft.{m}" for m in modules)
    lines = ["[tool.importlinter]", f"root_packages = {json.dumps(section['root_packages'])}"]
    for contract in section["contracts"]:
        lines.append("[[tool.importlinter.contracts]]")
        for key, value in contract.items():
            if key == "layers":
                value = [top if layer == "compiler/*" else layer for layer in value]
            lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


def main() -> int:
    bad = private_imports()
    for line in bad:
        print(f"private name imported from another file: {line}")
    with tempfile.TemporaryDirectory() as stage:
        rc = lint(stage)
    return 1 if bad or rc else 0


if __name__ == "__main__":
    sys.exit(main())

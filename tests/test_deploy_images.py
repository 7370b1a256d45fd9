"""The Dockerfiles: small non-root runtime stages that copy what exists and build the whole project;
TensorFlow only in the model image."""
from __future__ import annotations

import fnmatch
import re
import shlex
import shutil
import subprocess
import sys
import tomllib

import pytest
from packaging.requirements import Requirement

from tests.conftest import ROOT
from tests.deploy_files import (
    COMPILERS, DOCKERFILES, HEAVY_PACKAGES, chain, dependency_closure,
    dockerignored, installing_stages, parse_dockerfile, pip_installs,
)


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfile_runtime_stages_are_small_and_run_as_non_root(dockerfile):
    stages = parse_dockerfile(ROOT / "deploy" / dockerfile)
    assert len(stages) >= 2, "multi-stage"
    assert list(stages)[-1] == DOCKERFILES[dockerfile][0], "the default target is the main image"
    for target in DOCKERFILES[dockerfile]:
        runtime = chain(stages, target)
        assert runtime[-1].base == "python:3.11-slim", target
        users = [rest for st in reversed(runtime) for kw, rest in st.instructions if kw == "USER"]
        assert users and users[-1].split(":")[0] not in ("root", "0"), f"{target}: USER must be non-root"
        for st in runtime:
            for kw, rest in st.instructions:
                if kw == "RUN":
                    assert not COMPILERS.search(rest), f"{target}: compilers in the runtime image: {rest}"
                if kw == "COPY" and "--from=" in rest:
                    assert re.search(r"--from=\S+\s+/opt/venv\s+/opt/venv$", rest), f"{target}: copies {rest}"
    built = [st for st in stages.values() if any(kw == "RUN" and COMPILERS.search(r) for kw, r in st.instructions)]
    assert built, "compilers belong to a build stage"


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfile_copies_only_files_that_exist_and_are_in_the_build_context(dockerfile):
    for stage in parse_dockerfile(ROOT / "deploy" / dockerfile).values():
        for kw, rest in stage.instructions:
            if kw == "COPY" and "--from=" not in rest:
                sources = [t for t in shlex.split(rest) if not t.startswith("--")][:-1]
                for src in sources:
                    assert (ROOT / src).exists(), f"{dockerfile}: COPY {src}: no such file"
                    assert not dockerignored(src), f"{dockerfile}: COPY {src} is excluded by .dockerignore"


def test_gateway_and_worker_image_installs_no_tensorflow():
    stages = parse_dockerfile(ROOT / "deploy" / "app.Dockerfile")
    for target in ("app", "flower"):
        installs = pip_installs(installing_stages(stages, target))
        assert any(re.search(r"pip install \.$", c.strip()) for c in installs), installs
        for cmd in installs:
            assert not re.search(r"tensorflow|torch|\[", cmd), f"{target}: {cmd}"
    # ...and `pip install .` pulls none: the base dependencies' closure, as installed here.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    closure = dependency_closure([Requirement(r) for r in project["dependencies"]])
    heavy = sorted(n for n in closure if HEAVY_PACKAGES.match(n))
    assert not heavy, f"the base dependencies pull {heavy}"


@pytest.mark.slow
def test_what_the_images_copy_builds_the_whole_project(tmp_path):
    """`pip install .` from exactly the files the Dockerfile copies: every package, the web assets,
    the .proto files and the `vsearch` script end up installed (a wheel built the same way)."""
    import zipfile
    src = tmp_path / "src"
    for kw, rest in parse_dockerfile(ROOT / "deploy" / "app.Dockerfile")["build"].instructions:
        if kw == "COPY":
            *sources, dest = shlex.split(rest)
            for source in sources:
                target = src / (dest if dest != "./" else source)
                if (ROOT / source).is_dir():
                    shutil.copytree(ROOT / source, target, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(ROOT / source, target)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            str(src), "-w", str(tmp_path / "dist")], cwd=tmp_path, capture_output=True, text=True,
                           timeout=120)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    packages = {n.split("/")[0] for n in names if n.endswith("/__init__.py") and n.count("/") == 1}
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    expected = {d.name for d in ROOT.iterdir() if (d / "__init__.py").is_file()
                and any(fnmatch.fnmatch(d.name, pattern) for pattern in include)}
    assert packages == expected, "the Dockerfiles must COPY every package"
    for path in ROOT.glob("gateway/*/*"):
        if path.suffix in (".html", ".js", ".css"):
            assert path.relative_to(ROOT).as_posix() in names, f"{path.name} is missing from the image"
    assert "services/protos/tfserving.proto" in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "vsearch = cli.main:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_model_image_installs_cpu_tensorflow_and_torch_pinned_like_the_project():
    stages = parse_dockerfile(ROOT / "deploy" / "model.Dockerfile")
    installs = " ; ".join(pip_installs(installing_stages(stages, "model")))
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    torch_pin = next(r for r in extras["export"] if r.startswith("torch"))
    assert re.search(r"--index-url https://download.pytorch.org/whl/cpu \"?" + re.escape(torch_pin), installs)
    assert 'pip install ".[model,export]"' in installs
    assert re.search(r'pip install --no-deps "tensorflow-serving-api==2\.21\.0"', installs)
    assert "tensorflow-cpu==2.21.0" in extras["model"]
    model = chain(stages, "model")[0]
    assert any(kw == "COPY" and "deploy/export-once.sh /usr/local/bin/export-once" in rest
               for kw, rest in model.instructions)

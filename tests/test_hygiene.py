"""Repository hygiene: notebooks clean or holding the committed outputs, environment files in step with pyproject, Binder
configuration as repo2docker sees it, the README's two commands and the CI entry point."""
from __future__ import annotations

import ast
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import nbformat
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
ENV_FILE = REPO / "environment.yml"
BINDER = REPO / "binder"

#: Extras of pyproject that users and Binder need: the notebook/test tools. (peers, bench
#: and dev are for cross-checks, benchmarks and maintenance, not for running the companion.)
ENV_EXTRAS = ("test",)


# ----------------------------------------------------------------------------- notebooks

def _nb_id(path: Path) -> str:
    return path.stem


#: The notebooks of the study, by layer: the seed paper (02-07), the follow-up (08-11), ours.
EXPECTED_NOTEBOOKS = (
    "01_data", "02_training", "03_seed_temporal", "04_seed_classes", "05_seed_similarity",
    "06_seed_conservation", "07_seed_ntk", "08_followup_dynamics_spectrum",
    "09_followup_rollout_link", "10_followup_variants", "11_followup_symmetry",
    "12_estimator_study", "13_interventions", "14_findings", "15_explorer", "16_regime_ladder",
)


def test_the_study_notebooks_exist_and_nothing_else():
    assert [p.stem for p in NOTEBOOKS] == list(EXPECTED_NOTEBOOKS)


#: A path of the machine that ran a notebook, in its stored outputs.
MACHINE_PATH = re.compile(r"(?<![\w.])/(?:home|tmp|work|root|Users|private|var|mnt)/")


def _published(nb) -> bool:
    return any(c.get("outputs") for c in nb.cells if c.cell_type == "code")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_nb_id)
def test_notebook_is_stripped_or_holds_the_committed_outputs(path):
    """A notebook holds no outputs, or those of the committed profile's run as published by
    `pipeline.publish`: recorded profile, counts 1..n over the code cells, no error, no
    machine path, no widget view, no papermill or timing trace."""
    from pdeinf.config import COMMITTED_PROFILE

    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    published = _published(nb)
    if published:
        assert nb.metadata.get("pdeinf", {}).get("outputs_profile") == COMMITTED_PROFILE, (
            f"{path.name}: outputs not recorded as the committed profile's")
        assert [c.execution_count for c in code] == list(range(1, len(code) + 1))
    for i, cell in enumerate(code):
        if not published:
            assert cell.execution_count is None, f"{path.name} cell {i}: execution_count committed"
        for output in cell.outputs:
            assert output.output_type != "error", f"{path.name} cell {i}: an error is stored"
            text = output.get("text", "") + str(output.get("data", {}).get("text/plain", ""))
            assert not MACHINE_PATH.search(text), f"{path.name} cell {i}: a machine path is stored"
            assert "application/vnd.jupyter.widget-view+json" not in output.get("data", {})
        for key in ("execution", "ExecuteTime", "collapsed", "scrolled", "papermill"):
            assert key not in cell.metadata, f"{path.name} cell {i}: metadata {key!r} committed"
    assert "widgets" not in nb.metadata, f"{path.name}: widget state committed"
    assert "papermill" not in nb.metadata, f"{path.name}: a papermill output was committed"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_nb_id)
def test_notebook_kernelspec(path):
    nb = nbformat.read(path, as_version=4)
    spec = nb.metadata.get("kernelspec", {})
    assert spec.get("name") == "python3", f"{path.name}: kernelspec name must be python3"
    assert spec.get("language", "python") == "python"


def _tags(cell) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_nb_id)
def test_notebook_parameters_cell(path):
    """Exactly one `parameters` cell, the first code cell after a title, holding only
    assignments of literals to plain names (papermill rewrites literals, nothing else);
    it defines `profile`; no committed `injected-parameters` cell."""
    nb = nbformat.read(path, as_version=4)
    assert nb.cells and nb.cells[0].cell_type == "markdown", f"{path.name}: no title cell"
    assert nb.cells[0].source.lstrip().startswith("# "), f"{path.name}: first cell is no title"
    tagged = [c for c in nb.cells if "parameters" in _tags(c)]
    assert len(tagged) == 1, f"{path.name}: {len(tagged)} cells tagged 'parameters'"
    injected = [c for c in nb.cells if "injected-parameters" in _tags(c)]
    assert not injected, f"{path.name}: an 'injected-parameters' cell is committed"
    cell = tagged[0]
    assert cell.cell_type == "code"
    first_code = next(c for c in nb.cells if c.cell_type == "code")
    assert first_code is cell, f"{path.name}: the parameters cell must be the first code cell"
    tree = ast.parse(cell.source)
    names = []
    for stmt in tree.body:
        if isinstance(stmt, ast.AnnAssign):
            targets, value = [stmt.target], stmt.value
        else:
            assert isinstance(stmt, ast.Assign), (
                f"{path.name}: parameters cell line {stmt.lineno} is not an assignment"
            )
            targets, value = stmt.targets, stmt.value
        assert len(targets) == 1 and isinstance(targets[0], ast.Name), (
            f"{path.name}: parameters cell line {stmt.lineno}: assign to one plain name"
        )
        assert value is not None
        try:
            ast.literal_eval(value)
        except ValueError:
            pytest.fail(f"{path.name}: parameter {targets[0].id!r} is not a literal")
        names.append(targets[0].id)
    assert "profile" in names, f"{path.name}: the parameters cell must define `profile`"
    assert len(names) == len(set(names)), f"{path.name}: a parameter is assigned twice"


def test_nbstripout_agrees():
    """The project's stripping tool finds nothing to strip in the notebooks without published
    outputs (dev extra; skipped without it). ``--keep-id``: the committed cell ids are stable;
    nbstripout would renumber them."""
    pytest.importorskip("nbstripout", reason="nbstripout (dev extra) is not installed")
    stripped = [p for p in NOTEBOOKS if not _published(nbformat.read(p, as_version=4))]
    if not stripped:
        pytest.skip("every notebook holds the committed profile's outputs")
    proc = subprocess.run([sys.executable, "-m", "nbstripout", "--verify", "--keep-id", *map(str, stripped)],
                          capture_output=True, text=True, check=False, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ----------------------------------------------------------------------------- environment

def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _required() -> list[Requirement]:
    project = _pyproject()["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in ENV_EXTRAS:
        reqs += [Requirement(r) for r in project["optional-dependencies"][extra]]
    return reqs


#: conda-forge names that differ from the PyPI names
CONDA_TO_PYPI = {"pytorch": "torch"}


def _env_pins(path: Path = ENV_FILE) -> dict[str, tuple[str, str | None]]:
    """``{canonical name: (operator-and-version string, where)}`` from an environment file."""
    env = yaml.safe_load(path.read_text())
    pins: dict[str, tuple[str, str | None]] = {}
    for entry in env["dependencies"]:
        if isinstance(entry, dict):
            for line in entry.get("pip", []):
                if line.startswith("-"):  # pip options (index URLs): see _pip_options
                    continue
                req = Requirement(line)
                pins[canonicalize_name(req.name)] = (str(req.specifier), "pip")
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*(==|=)?\s*([^\s=]+)?", entry.strip())
        assert match, f"environment.yml: cannot parse {entry!r}"
        name, op, version = match.groups()
        name = CONDA_TO_PYPI.get(name, name)
        pins[canonicalize_name(name)] = (f"{op}{version}" if op else "", "conda")
    return pins


def test_environment_header():
    env = yaml.safe_load(ENV_FILE.read_text())
    assert env["name"] == "pdeinf"
    assert env["channels"] == ["conda-forge"]
    assert "pdeinf" not in _env_pins(), "the package itself must not come from the env file"
    pip = [e for d in env["dependencies"] if isinstance(d, dict) for e in d.get("pip", [])]
    local = [e for e in pip if e.startswith((".", "/", "file:", "-e", "-r", "-c", "--editable",
                                             "--requirement", "--constraint")) or "file://" in e]
    assert not local, (
        f"environment.yml pip section has local references {local}: they stop repo2docker "
        "from caching the environment layer"
    )
    options = [_pip_option(e) for e in pip if e.startswith("-")]
    assert all(flag in ("--index-url", "--extra-index-url") and url.startswith("https://")
               for flag, url in options), f"environment.yml: unexpected pip options {options}"


def test_environment_python_matches_pyproject():
    pins = _env_pins()
    spec, _ = pins["python"]
    version = spec.lstrip("=")
    assert re.fullmatch(r"3\.\d+", version), f"python must be pinned as x.y, got {spec!r}"
    requires = SpecifierSet(_pyproject()["project"]["requires-python"])
    assert Version(version) in requires


def test_environment_pins_every_dependency_exactly():
    pins = _env_pins()
    for name, (spec, _) in pins.items():
        if name in ("python",):
            continue
        assert spec.startswith("=="), f"environment.yml: {name} is not pinned with == ({spec!r})"


@pytest.mark.parametrize("req", _required(), ids=lambda r: r.name)
def test_environment_satisfies_pyproject(req):
    pins = _env_pins()
    name = canonicalize_name(req.name)
    assert name in pins, f"environment.yml lacks {req.name} (pyproject: {req})"
    version = Version(pins[name][0].removeprefix("=="))
    assert req.specifier.contains(version, prereleases=True), (
        f"environment.yml pins {req.name}=={version}, outside pyproject's range {req.specifier}"
    )


def _pip_option(line: str) -> tuple[str, str]:
    """``("--extra-index-url", "https://...")`` from a pip-section option line."""
    flag, _, value = line.replace("=", " ", 1).partition(" ")
    return flag, value.strip()


#: PyTorch's CPU wheel index: the only source of the `+cpu` builds.
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
#: conda packages that pull CUDA (or are a CUDA build of torch)
CONDA_CUDA_NAMES = ("pytorch-gpu", "cudatoolkit", "cuda-version", "cuda-runtime", "cudnn", "nccl")


@pytest.mark.parametrize("path", [ENV_FILE, BINDER / "environment.yml"], ids=lambda p: str(p.relative_to(REPO)))
def test_environment_torch_is_a_cpu_build(path):
    """Binder has no GPU and PyPI's Linux torch wheel is the multi-GB CUDA build: the env
    file must not be able to resolve to it. Either pip with an exact `+cpu` version (that
    local version exists only on PyTorch's CPU index, which the pip section must name, and
    no CUDA index), or conda-forge's pytorch pinned to a `cpu_*` build string."""
    env = yaml.safe_load(path.read_text())
    conda = [e.strip() for e in env["dependencies"] if isinstance(e, str)]
    pip = [e.strip() for d in env["dependencies"] if isinstance(d, dict) for e in d.get("pip", [])]
    for entry in conda:
        name = entry.partition("=")[0].strip()
        assert name not in CONDA_CUDA_NAMES, f"{path.name}: {entry!r} brings CUDA"
    conda_torch = [e for e in conda if re.match(r"(pytorch|pytorch-cpu|torch)\b", e)]
    pip_torch = [Requirement(e) for e in pip if not e.startswith("-")
                 and canonicalize_name(Requirement(e).name) in ("torch", "pytorch")]
    assert len(conda_torch) + len(pip_torch) == 1, f"{path.name}: torch must be listed exactly once"
    for req in pip + conda:
        assert not re.match(r"(torchvision|torchaudio)\b", req), (
            f"{path.name}: {req!r} would pull its own torch build"
        )
    indexes = [url for flag, url in map(_pip_option, (e for e in pip if e.startswith("-")))]
    assert not any(re.search(r"/whl/(cu|rocm)", url) for url in indexes), f"{path.name}: GPU index {indexes}"
    if pip_torch:
        (req,) = pip_torch
        (spec,) = req.specifier
        assert spec.operator == "==" and Version(spec.version).local == "cpu", (
            f"{path.name}: pip's {req} may resolve to a CUDA build; pin torch==X.Y.Z+cpu"
        )
        assert TORCH_CPU_INDEX in [url.rstrip("/") for url in indexes], (
            f"{path.name}: torch {req.specifier} exists only on {TORCH_CPU_INDEX}; add "
            f"`--extra-index-url {TORCH_CPU_INDEX}` to the pip section"
        )
    else:
        (entry,) = conda_torch
        parts = re.split(r"\s*=+\s*", entry)
        assert parts[0] == "pytorch-cpu" or (len(parts) == 3 and parts[2].startswith("cpu_")), (
            f"{path.name}: {entry!r} may resolve to a CUDA build; pin pytorch=X.Y.Z=cpu_*"
        )


def test_environment_torch_matches_the_makefile():
    """`make` and the env file install the same torch release (the env file's is the `+cpu` build)."""
    pinned = Version(_env_pins()["torch"][0].removeprefix("=="))
    assert pinned.public == _makefile_torch_version(), (
        f"environment.yml pins torch {pinned}, the Makefile installs {_makefile_torch_version()}"
    )
    assert f"TORCH_CPU_INDEX ?= {TORCH_CPU_INDEX}" in (REPO / "Makefile").read_text()


def test_binder_environment_is_the_same_file():
    binder_env = BINDER / "environment.yml"
    assert binder_env.is_file()
    assert binder_env.read_bytes() == ENV_FILE.read_bytes(), (
        "binder/environment.yml differs from environment.yml: copy it over"
    )


def _executable(path: Path) -> bool:
    return os.access(path, os.X_OK)


def test_binder_post_build():
    post = BINDER / "postBuild"
    text = post.read_text()
    assert _executable(post)
    assert text.startswith("#!")
    commands = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert commands[0] == "set -euo pipefail", "errors must stop the Binder build"
    assert any(re.search(r"pip install .*--no-deps.* -e \.$", c) for c in commands)
    assert any("reproduce --profile smoke" in c and "--only-pipeline" in c for c in commands)
    assert "labextension" not in text, "prebuilt extensions come with the Python packages"
    proc = subprocess.run(["bash", "-n", str(post)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def test_binder_start_script():
    start = BINDER / "start"
    if not start.exists():
        pytest.skip("no binder/start")
    lines = [ln.strip() for ln in start.read_text().splitlines() if ln.strip()]
    assert _executable(start)
    assert lines[-1] == 'exec "$@"', "binder/start must end with exec \"$@\""
    proc = subprocess.run(["bash", "-n", str(start)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def test_no_files_that_override_the_conda_buildpack():
    for name in ("Dockerfile", "default.nix", "requirements.txt", "runtime.txt"):
        for where in (REPO, BINDER):
            assert not (where / name).exists(), f"{where / name} would change or be ignored by Binder"
    assert not (REPO / ".binder").exists(), "binder/ and .binder/ are exclusive"


def test_repo2docker_picks_conda_with_our_files(monkeypatch):
    """repo2docker's own buildpack detection, run on this checkout (no Docker needed)."""
    app = pytest.importorskip(
        "repo2docker.app", reason="jupyter-repo2docker not installed (pip install jupyter-repo2docker)"
    )
    from repo2docker.buildpacks import CondaBuildPack

    monkeypatch.chdir(REPO)
    r2d = app.Repo2Docker()
    picked = next(bp for bp in (BP(base_image=r2d.base_image) for BP in r2d.buildpacks)
                  if bp.detect())
    assert isinstance(picked, CondaBuildPack)
    assert picked.binder_dir == "binder"
    assert picked.environment_yaml_path == "binder/environment.yml"
    assert picked.python_version == _env_pins()["python"][0].lstrip("=")
    assert picked.get_post_build_scripts() == ["binder/postBuild"]
    assert picked.get_start_script().endswith("binder/start")
    assert picked._should_preassemble_env, "the env layer would be rebuilt on every commit"
    picked.platform = "linux/amd64"
    dockerfile = picked.render()
    assert "RUN ./binder/postBuild" in dockerfile
    assert '--file "binder/environment.yml"' in dockerfile


def test_pins_compatible_with_binder_base_environment():
    """Our env file is merged into repo2docker's base env (JupyterLab, ipywidgets, ...):
    shared packages must stay on the same major version."""
    pytest.importorskip("repo2docker", reason="jupyter-repo2docker not installed")
    import repo2docker.buildpacks.conda as conda_bp

    python = _env_pins()["python"][0].lstrip("=")
    lock = Path(conda_bp.__file__).parent / f"environment.py-{python}-linux-64.lock"
    assert lock.is_file(), f"repo2docker has no base environment for python {python}"
    base = {}
    for line in lock.read_text().splitlines():
        m = re.search(r"/([A-Za-z0-9_.\-]+?)-(\d[^-]*)-[^-/]+\.(?:conda|tar\.bz2)", line)
        if m:
            base[canonicalize_name(m.group(1))] = Version(m.group(2))
    pins = _env_pins()
    shared = [n for n in pins if n in base and n not in ("python", "pip")]
    assert {"jupyterlab", "ipywidgets", "jupyterlab-widgets"} <= set(shared)
    for name in shared:
        ours = Version(pins[name][0].removeprefix("=="))
        assert ours.major == base[name].major, (
            f"{name}: we pin {ours}, Binder's base env has {base[name]} (different major)"
        )


# ----------------------------------------------------------------------------- Makefile

#: Stand-in for the venv's python: logs each call; `import torch` fails (fresh venv); a pip
#: call naming an index fails when $INDEX_FAILS is set (index unreachable).
_STUB_PYTHON = r"""#!/usr/bin/env bash
printf '%s\n' "$*" >> "$STUB_LOG"
case "$*" in
  *"import torch"*) exit 1 ;;
  *"--index-url"*) [ -n "$INDEX_FAILS" ] && exit 1; exit 0 ;;
  *"m.version"*) echo "$TORCH_BUILT" ;;
esac
exit 0
"""


def _bootstrap(tmp_path, *, gpu: bool, index_fails: bool) -> list[str]:
    """Run `make venv` with a stub venv python; return the python calls it made."""
    if sys.platform != "linux":
        pytest.skip("the CPU-index branch is for Linux")
    if subprocess.run(["make", "--version"], capture_output=True, check=False).returncode:
        pytest.skip("no make")
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    stub = venv / "bin" / "python"
    stub.write_text(_STUB_PYTHON)
    stub.chmod(0o755)
    tools = tmp_path / "tools"
    tools.mkdir()
    probe = tools / "fake-nvidia-smi"
    probe.write_text("#!/bin/sh\nexit 0\n")
    probe.chmod(0o755)
    log = tmp_path / "calls.log"
    env = {**os.environ, "STUB_LOG": str(log), "INDEX_FAILS": "1" if index_fails else "",
           "TORCH_BUILT": "2.13.0+cpu", "PATH": f"{tools}:{os.environ['PATH']}"}
    probe_name = probe.name if gpu else "pdeinf-no-such-gpu-probe"
    proc = subprocess.run(["make", "--no-print-directory", "-C", str(REPO), "venv", f"VENV={venv}",
                           f"NVIDIA_SMI={probe_name}"],
                          capture_output=True, text=True, env=env, check=False, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (venv / ".pdeinf-installed").is_file()
    return log.read_text().splitlines()


def _torch_installs(calls: list[str]) -> list[str]:
    return [c for c in calls if c.startswith("-m pip install") and "torch==" in c]


def _makefile_torch_version() -> str:
    makefile = (REPO / "Makefile").read_text()
    match = re.search(r"^TORCH_VERSION\s*\?=\s*(\S+)\s*$", makefile, flags=re.MULTILINE)
    assert match, "Makefile: no `TORCH_VERSION ?= ...`"
    return match.group(1)


def test_makefile_without_gpu_takes_the_cpu_index(tmp_path):
    version = _makefile_torch_version()
    calls = _torch_installs(_bootstrap(tmp_path, gpu=False, index_fails=False))
    first, package = calls
    assert f"--index-url {TORCH_CPU_INDEX} torch=={version}" in first
    # one short try: a blocked index must not hang the bootstrap
    assert "--retries 0" in first
    timeout = int(re.search(r"--timeout (\d+)", first).group(1))
    assert timeout <= 10
    # the package install pins the torch just installed, so no extra brings another build
    assert "-e .[test,peers,bench,dev] torch==2.13.0+cpu" in package


def test_makefile_falls_back_when_the_cpu_index_is_unreachable(tmp_path):
    calls = _torch_installs(_bootstrap(tmp_path, gpu=False, index_fails=True))
    assert len(calls) == 3
    assert "--index-url" in calls[0]
    assert calls[1] == f"-m pip install --quiet torch=={_makefile_torch_version()}"  # pip's own configured sources
    assert "--index-url" not in calls[2] and calls[2].endswith("torch==2.13.0+cpu")


def test_makefile_with_gpu_keeps_pips_default(tmp_path):
    calls = _torch_installs(_bootstrap(tmp_path, gpu=True, index_fails=True))
    assert not any("--index-url" in c for c in calls)
    assert calls[0] == f"-m pip install --quiet torch=={_makefile_torch_version()}"


# ----------------------------------------------------------------------------- README, CI

def _shell_commands(text: str) -> list[str]:
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        tokens = shlex.split(line, comments=True)
        if tokens:
            out.append(" ".join(tokens))
    return out


def test_readme_quickstart_is_the_two_commands():
    readme = (REPO / "README.md").read_text()
    match = re.search(r"^## Quickstart\s*$(.*?)(?=^## |\Z)", readme, flags=re.MULTILINE | re.DOTALL)
    assert match, "README.md has no '## Quickstart' section"
    blocks = re.findall(r"```[a-z]*\n(.*?)```", match.group(1), flags=re.DOTALL)
    commands = [c for block in blocks for c in _shell_commands(block)]
    assert commands == ["make reproduce", "make test"]


def test_ruff_finds_nothing():
    """The package, tests, benchmarks and notebooks pass `ruff check` (the dev extra's version)."""
    pytest.importorskip("ruff", reason="ruff is in the [dev] extra")
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise",
                           "."], cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def test_ci_runs_make_test_and_nothing_else():
    ci = REPO / ".ci" / "run"
    assert _executable(ci)
    commands = _shell_commands(ci.read_text())
    work = [c for c in commands if not c.startswith(("set ", "cd "))]
    assert work == ["make test"], commands
    assert "set -euo pipefail" in commands


def test_every_method_reference_names_a_section_of_docs_method():
    """Code cites the method by `docs/method.md section N` (a numbered section that exists),
    never by files outside this repository."""
    sections = {int(n) for n in re.findall(r"^## (\d+)\. ", (REPO / "docs" / "method.md").read_text(),
                                           re.MULTILINE)}
    for path in sorted((REPO / "pdeinf").rglob("*.py")):
        text = path.read_text()
        for outside in ("paper-spec", "followup-spec", "../shared"):
            assert outside not in text, f"{path}: cites {outside}"
        for found in re.finditer(r"(\S*)method\.md(?: sections? (\d+))?", text):
            assert found.group(1).endswith("docs/"), f"{path}: {found.group(0)!r} is not docs/method.md"
            if found.group(2):
                assert int(found.group(2)) in sections, f"{path}: {found.group(0)!r}: no such section"

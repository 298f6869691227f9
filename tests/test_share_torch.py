"""docker/share_torch.py, which `make` runs before pip fills a pin set's venv: torch and the CUDA libraries it pulls
in are hard-linked from the other set's venv when that has the torch the requirements pin, and nothing else is.
The venvs here are real (``venv.create``); the distributions in them are small ones written by the test."""
from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "docker" / "share_torch.py"
PY = f"python{sys.version_info.major}.{sys.version_info.minor}"


def _dist(site: Path, bin_dir: Path, name: str, version: str, files: dict[str, str], script: str | None = None):
    """Writes an installed distribution as pip leaves one: its files, and a .dist-info with METADATA and RECORD
    (``script``: a console script in ``bin_dir`` too, recorded as pip records it)."""
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    records = []
    for rel, text in files.items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_text(text)
        records.append(rel)
    if script:
        bin_dir.mkdir(parents=True, exist_ok=True)
        (bin_dir / script).write_text(f"#!{bin_dir / 'python'}\nimport {name}\nprint({name}.WHO)\n")
        (bin_dir / script).chmod(0o755)
        records.append(f"../../../bin/{script}")
    records += [f"{info.name}/METADATA", f"{info.name}/RECORD"]
    (info / "RECORD").write_text("".join(f"{r},,\n" for r in records))


def _venvs(tmp_path: Path, torch_there: str = "2.14.1+cu130"):
    src = tmp_path / "src"
    site = src / "lib" / PY / "site-packages"
    _dist(site, src / "bin", "torch", torch_there, {"torch/__init__.py": "WHO = 'torch from src'\n"}, "torchrun")
    _dist(site, src / "bin", "nvidia-cublas", "13.1.1.3", {"nvidia/cublas/lib/libcublas.so.13": "x" * 1000})
    _dist(site, src / "bin", "numpy", "1.26.4", {"numpy/__init__.py": "WHO = 'numpy from src'\n"})
    dst = tmp_path / "dst"
    venv.create(dst, with_pip=False)
    return src, site, dst, dst / "lib" / PY / "site-packages"


def _share(src: Path, dst: Path, tmp_path: Path, pins: str):
    reqs = tmp_path / "requirements.txt"
    reqs.write_text(pins)
    return subprocess.run([dst / "bin" / "python", SCRIPT, "--from", src, "--requirements", reqs],
                          capture_output=True, text=True, timeout=60, check=True)


def test_links_torch_and_cuda_not_the_rest(tmp_path):
    src, site, dst, dst_site = _venvs(tmp_path)
    out = _share(src, dst, tmp_path, "# a pin set\nnumpy==2.4.6\ntorch==2.14.1\ntorchvision==0.29.1\n")
    assert "linked 2 distributions" in out.stderr and "nvidia-cublas==13.1.1.3, torch==2.14.1+cu130" in out.stderr
    for rel in ("torch/__init__.py", "nvidia/cublas/lib/libcublas.so.13", "torch-2.14.1+cu130.dist-info/RECORD"):
        assert (dst_site / rel).stat().st_ino == (site / rel).stat().st_ino, rel  # one file on disk, not two
    assert not (dst_site / "numpy").exists()  # pinned differently on each set: pip installs it
    # The new venv has torch, as pip would see it, and its console script runs with the new venv's Python.
    seen = subprocess.run([dst / "bin" / "python", "-c", "import importlib.metadata as m, torch; "
                           "print(m.version('torch'), torch.__file__)"], capture_output=True, text=True, check=True)
    assert seen.stdout.split() == ["2.14.1+cu130", str(dst_site / "torch" / "__init__.py")]
    torchrun = dst / "bin" / "torchrun"
    assert torchrun.read_text().splitlines()[0] == f"#!{dst / 'bin' / 'python'}"
    assert subprocess.run([torchrun], capture_output=True, text=True, check=True).stdout == "torch from src\n"
    # Run again: what the new venv has is left alone.
    assert "linked 0 distributions" in _share(src, dst, tmp_path, "torch==2.14.1\n").stderr


def test_links_nothing_for_another_torch(tmp_path):
    src, _, dst, dst_site = _venvs(tmp_path)
    out = _share(src, dst, tmp_path, "torch==2.15.0\n")
    assert f"linking nothing from {src}: " in out.stderr and "pins torch 2.15.0, it has 2.14.1+cu130" in out.stderr
    assert not (dst_site / "torch").exists() and not (dst_site / "nvidia").exists()


def test_links_nothing_without_the_other_venv(tmp_path):
    _, _, dst, dst_site = _venvs(tmp_path)
    out = _share(tmp_path / "missing", dst, tmp_path, "torch==2.14.1\n")
    assert f"it has no lib/{PY}/site-packages" in out.stderr
    assert not (dst_site / "torch").exists()

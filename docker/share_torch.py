"""Link PyTorch and the CUDA libraries it pulls in from one pin set's venv into another's, before pip installs.

Both pin sets (README: "Two pin sets") pin the same torch, and its Linux wheels bring about 5 GB of CUDA libraries
(nvidia-*, cuda-*, triton). Installed twice, the two venvs need about 14 GB of disk; with these distributions
hard-linked from the venv that has them, the second venv adds about 1.7 GB. pip then finds them installed and
satisfied, and installs the rest as usual.

    python docker/share_torch.py --from .venv --requirements requirements-current.txt

Run it with the new venv's Python (it links into that venv). It links nothing (and says why in one line) when
the other venv is missing, has another Python, has a torch other than the one the requirements pin, or lives on
another file system; a distribution the new venv already has is left alone. Files are linked, never written:
pip replaces a file by removing it, and Python writes bytecode to a new file, so neither venv can change the
other's copy.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import sysconfig
from importlib.metadata import Distribution, distributions
from pathlib import Path

# The distributions shared: torch's own builds and the CUDA stack its wheel requires.
SHARED = re.compile(r"^(torch|torchvision|triton|nvidia-.*|cuda-.*)$")


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(requirements: Path) -> dict[str, str]:
    """``name==version`` lines of a requirements file, by normalized name."""
    found = {}
    for line in requirements.read_text().splitlines():
        m = re.match(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;#]+)", line)
        if m:
            found[normalize(m.group(1))] = m.group(2)
    return found


def site_packages(venv: Path) -> Path:
    return venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"


def files(dist: Distribution, site: Path) -> list[tuple[Path, str]]:
    """Each file of ``dist`` (its RECORD) as (path, path relative to ``site``); its .dist-info folder's last,
    so that a venv left half-linked does not look as if it had the distribution."""
    rel = sorted((str(f) for f in dist.files or []), key=lambda r: r.split("/")[0].endswith(".dist-info"))
    return [(site / r, r) for r in rel]


def link(dist: Distribution, src_site: Path, dst_site: Path, src_bin: Path, dst_bin: Path) -> int:
    """Hard-links ``dist``'s files into ``dst_site``; its scripts are copied with the new venv's Python.
    Returns the bytes linked. On an error, removes what it placed and raises."""
    placed: list[Path] = []
    size = 0
    try:
        for src, rel in files(dist, src_site):
            if not src.is_file():
                continue  # a RECORD line for a file since removed (bytecode pip did not write)
            if rel.startswith("../"):
                src = src.resolve()
                if src.parent != src_bin.resolve():
                    continue  # data files outside site-packages and bin: none in these wheels
                dst = dst_bin / src.name
                text = src.read_bytes()
                if text.startswith(b"#!") and b"python" in text.split(b"\n", 1)[0]:
                    text = b"#!" + sys.executable.encode() + b"\n" + text.split(b"\n", 1)[1]
                dst.write_bytes(text)
                shutil.copymode(src, dst)
            else:
                dst = dst_site / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                os.link(src, dst)
                size += src.stat().st_size
            placed.append(dst)
    except BaseException:
        for p in reversed(placed):
            p.unlink(missing_ok=True)
        raise
    return size


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--from", dest="source", type=Path, required=True, help="the venv that has torch installed")
    ap.add_argument("--requirements", type=Path, required=True, help="the pin set the new venv installs")
    args = ap.parse_args(argv)

    def skip(why: str) -> int:
        print(f"share_torch: linking nothing from {args.source}: {why}", file=sys.stderr)
        return 0

    src_site, dst_site = site_packages(args.source), Path(sysconfig.get_paths()["purelib"])
    if not src_site.is_dir():
        return skip(f"it has no {src_site.relative_to(args.source)} (no venv, or another Python)")
    wanted = pins(args.requirements).get("torch")
    have = {normalize(d.metadata["Name"]): d for d in distributions(path=[str(src_site)])}
    # A local label (2.14.1+cu130) satisfies a pin without one, as pip has it.
    if not wanted or "torch" not in have or have["torch"].version.split("+")[0] != wanted.split("+")[0]:
        got = have["torch"].version if "torch" in have else "none"
        return skip(f"{args.requirements} pins torch {wanted or 'nothing'}, it has {got}")
    if src_site.resolve() == dst_site.resolve():
        return skip("it is this Python's own venv")
    there = {normalize(d.metadata["Name"]) for d in distributions(path=[str(dst_site)])}
    if os.stat(src_site).st_dev != os.stat(dst_site).st_dev:
        return skip("another file system (hard links cannot cross it)")
    total, names = 0, []
    for name, dist in sorted(have.items()):
        if SHARED.match(name) and name not in there:
            try:
                total += link(dist, src_site, dst_site, args.source / "bin", Path(sysconfig.get_paths()["scripts"]))
            except OSError as e:
                print(f"share_torch: stopped at {name}: {e}; pip installs the rest", file=sys.stderr)
                break
            names.append(f"{name}=={dist.version}")
    print(f"share_torch: linked {len(names)} distributions ({total / 2**30:.1f} GiB) from {args.source}: "
          f"{', '.join(names) or 'none new'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

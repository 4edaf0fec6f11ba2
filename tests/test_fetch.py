"""scripts/fetch.sh and scripts/fetch_lib.sh, offline: file:// URLs stand in for the download
servers (curl reads them like any other URL), and a copy of the scripts with a sources file of
the test's own stands in for src/data/fetch/datasets.txt."""
import hashlib
import io
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
LIB = SCRIPTS / "fetch_lib.sh"
pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


def lib(call: str, *args: str) -> subprocess.CompletedProcess:
    script = f'set -euo pipefail; FETCH_NAME=test; source "{LIB}"; {call}'
    return subprocess.run(["bash", "-c", script, "fetch", *args], capture_output=True, text=True)


def fetch_file(url: str, dest: Path, checksum: str) -> subprocess.CompletedProcess:
    return lib('fetch_file "$1" "$2" "$3"', url, str(dest), checksum)


def test_download_with_the_right_checksum_lands_and_is_reused(tmp_path):
    source = tmp_path / "archive.bin"
    source.write_bytes(b"the published bytes\n" * 100)
    md5 = hashlib.md5(source.read_bytes()).hexdigest()
    dest = tmp_path / "data" / "archive.bin"
    dest.parent.mkdir()
    first = fetch_file(source.as_uri(), dest, f"md5:{md5}")
    assert first.returncode == 0, first.stderr
    assert dest.read_bytes() == source.read_bytes()
    assert "checksum ok" in first.stdout
    source.unlink()  # a second run must not download again
    second = fetch_file(source.as_uri(), dest, f"md5:{md5}")
    assert second.returncode == 0, second.stderr
    assert "reusing" in second.stdout


def test_sha256_checksums_are_checked_too(tmp_path):
    source = tmp_path / "archive.bin"
    source.write_bytes(b"bytes")
    sha = hashlib.sha256(b"bytes").hexdigest()
    assert fetch_file(source.as_uri(), tmp_path / "ok.bin", f"sha256:{sha}").returncode == 0
    bad = fetch_file(source.as_uri(), tmp_path / "bad.bin", "sha256:" + "1" * 64)
    assert bad.returncode != 0 and "expected sha256 " + "1" * 64 in bad.stderr
    assert not (tmp_path / "bad.bin").exists()


def test_wrong_checksum_leaves_nothing_behind(tmp_path):
    source = tmp_path / "archive.bin"
    source.write_bytes(b"tampered")
    dest = tmp_path / "archive.copy"
    result = fetch_file(source.as_uri(), dest, "md5:" + "0" * 32)
    assert result.returncode != 0
    assert "checksum mismatch" in result.stderr and "expected md5 " + "0" * 32 in result.stderr
    assert not dest.exists() and not Path(str(dest) + ".part").exists()


def test_failed_download_leaves_nothing_behind(tmp_path):
    dest = tmp_path / "archive.copy"
    result = fetch_file((tmp_path / "missing.bin").as_uri(), dest, "md5:" + "0" * 32)
    assert result.returncode != 0
    assert "download failed" in result.stderr
    assert not dest.exists() and not Path(str(dest) + ".part").exists()


def test_an_interrupted_download_is_resumed(tmp_path):
    source = tmp_path / "archive.bin"
    data = bytes(range(256)) * 400
    source.write_bytes(data)
    dest = tmp_path / "archive.copy"
    Path(str(dest) + ".part").write_bytes(data[:10000])  # what a broken transfer left
    result = lib('download "$1" "$2"', source.as_uri(), str(dest))
    assert result.returncode == 0, result.stderr
    assert dest.read_bytes() == data
    assert not Path(str(dest) + ".part").exists()


# --- fetch.sh on a dataset of the test's own --------------------------------------------------


def tar_gz(members: dict) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def scripts_with_sources(tmp_path: Path, sources: str) -> Path:
    """A copy of the fetch scripts whose datasets.txt is `sources`."""
    copy = tmp_path / "scripts"
    copy.mkdir()
    for name in ["fetch.sh", "fetch_lib.sh"]:
        shutil.copy(SCRIPTS / name, copy / name)
    (tmp_path / "src" / "data" / "fetch").mkdir(parents=True)
    (tmp_path / "src" / "data" / "fetch" / "datasets.txt").write_text(sources)
    return copy


def test_fetch_sh_downloads_checks_and_moves_the_dataset_into_place(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    archive = tar_gz({"toy/a.bin": b"a" * 100, "toy/sub/b.bin": b"b" * 50, "toy/README": b"hi"})
    (site / "toy.tar.gz").write_bytes(archive)
    (site / "extra.bin").write_bytes(b"extra")
    sources = (
        "# a dataset of the test's own\n"
        "dataset toy data/toy a.bin,sub/b.bin\n"
        f"file toy toy.tar.gz {len(archive)} md5:{hashlib.md5(archive).hexdigest()} https://unreachable.invalid/toy.tar.gz\n"
        "dataset plain data/plain extra.bin\n"
        f"file plain extra.bin 5 sha256:{hashlib.sha256(b'extra').hexdigest()} https://unreachable.invalid/extra.bin\n"
    )
    scripts = scripts_with_sources(tmp_path, sources)
    work = tmp_path / "work"
    work.mkdir()
    env = {"PATH": "/usr/bin:/bin", "MTL_DATA_MIRROR": site.as_uri()}
    run = lambda *args: subprocess.run(["bash", str(scripts / "fetch.sh"), *args], cwd=work, env=env, capture_output=True, text=True)

    first = run("toy")
    assert first.returncode == 0, first.stderr
    root = work / "data" / "toy"
    assert (root / "a.bin").read_bytes() == b"a" * 100 and (root / "sub" / "b.bin").is_file()
    assert sorted(p.name for p in (work / "data").iterdir()) == ["toy"], "archives and scratch are gone"
    plain = run("plain")
    assert plain.returncode == 0, plain.stderr
    assert (work / "data" / "plain" / "extra.bin").read_bytes() == b"extra", "a file that is not an archive is kept"
    again = run("toy")
    assert again.returncode == 0 and "already in" in again.stdout

    into = run("toy", "--into", str(tmp_path / "elsewhere"))
    assert into.returncode == 0, into.stderr
    assert (tmp_path / "elsewhere" / "toy" / "a.bin").is_file()

    # A file that is not the published one: refused, nothing left that looks complete.
    (site / "toy.tar.gz").write_bytes(tar_gz({"toy/a.bin": b"x"}))
    bad = run("toy", str(tmp_path / "bad" / "toy"))
    assert bad.returncode != 0 and "checksum mismatch" in bad.stderr
    assert sorted(p.name for p in (tmp_path / "bad").iterdir()) == []

    unknown = run("nope")
    assert unknown.returncode != 0 and "unknown dataset 'nope'" in unknown.stderr and "toy" in unknown.stderr


def test_the_shipped_sources_read_the_same_in_bash_as_in_python():
    """The binary parses src/data/fetch/datasets.txt in Rust (src/data/fetch/manifest.rs, with its own
    tests); here the shell reader must see the same datasets, files, checksums and URLs."""
    expected = {}
    for line in (SCRIPTS.parent / "src" / "data" / "fetch" / "datasets.txt").read_text().splitlines():
        fields = line.split()
        if fields and fields[0] == "file":
            expected.setdefault(fields[1], []).append(" ".join(fields[2:]))
    names = lib("dataset_names").stdout.split()
    assert names == ["cifar10_seg", "multimnist", "pet", "nyuv2", "census_income"]
    for name in names:
        listed = lib('dataset_files "$1"', name).stdout.strip().splitlines()
        assert listed == expected[name], name
    cifar = lib('dataset_line "$1"', "cifar10_seg").stdout.split()
    assert cifar[0] == "data/cifar-10-batches-bin"
    assert expected["cifar10_seg"] == [
        "cifar-10-binary.tar.gz 170052171 md5:c32a1d4ab5d03f1284b67883e8d87530 https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
    ]

"""scripts/fetch_lib.sh, shared by the fetch_*.sh scripts, offline: file:// URLs stand in for
the download servers (curl reads them like any other URL)."""
import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parent.parent / "scripts" / "fetch_lib.sh"
pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


def fetch_md5(url: str, dest: Path, md5: str) -> subprocess.CompletedProcess:
    script = f'set -euo pipefail; FETCH_NAME=test; source "{LIB}"; fetch_md5 "$1" "$2" "$3"'
    return subprocess.run(["bash", "-c", script, "fetch", url, str(dest), md5], capture_output=True, text=True)


def test_download_with_the_right_checksum_lands_and_is_reused(tmp_path):
    source = tmp_path / "archive.bin"
    source.write_bytes(b"the published bytes\n" * 100)
    md5 = hashlib.md5(source.read_bytes()).hexdigest()
    dest = tmp_path / "data" / "archive.bin"
    dest.parent.mkdir()
    first = fetch_md5(source.as_uri(), dest, md5)
    assert first.returncode == 0, first.stderr
    assert dest.read_bytes() == source.read_bytes()
    assert "checksum ok" in first.stdout
    source.unlink()  # a second run must not download again
    second = fetch_md5(source.as_uri(), dest, md5)
    assert second.returncode == 0, second.stderr
    assert "reusing" in second.stdout


def test_wrong_checksum_leaves_nothing_behind(tmp_path):
    source = tmp_path / "archive.bin"
    source.write_bytes(b"tampered")
    dest = tmp_path / "archive.copy"
    result = fetch_md5(source.as_uri(), dest, "0" * 32)
    assert result.returncode != 0
    assert "checksum mismatch" in result.stderr and "expected md5 " + "0" * 32 in result.stderr
    assert not dest.exists() and not Path(str(dest) + ".part").exists()


def test_failed_download_leaves_nothing_behind(tmp_path):
    dest = tmp_path / "archive.copy"
    result = fetch_md5((tmp_path / "missing.bin").as_uri(), dest, "0" * 32)
    assert result.returncode != 0
    assert "download failed" in result.stderr
    assert not dest.exists() and not Path(str(dest) + ".part").exists()

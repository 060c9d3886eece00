"""Who may use the API socket: root and members of the socket group, nobody else."""

from __future__ import annotations

import grp
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from tests.harness import EXTERNAL, REPO, Services

pytestmark = pytest.mark.skipif(EXTERNAL or shutil.which("setpriv") is None,
                                reason="starts its own services; needs setpriv")


@pytest.fixture
def grouped():
    """Private services whose sockets belong to a throwaway group."""
    group = "berth-t" + uuid.uuid4().hex[:6]
    subprocess.run(["groupadd", group], check=True)
    base = Path(tempfile.mkdtemp(prefix="berth-access-"))
    os.chmod(base, 0o755)
    svc = Services(base, {"BERTH_SOCKET_GROUP": group})
    try:
        svc.start("image", "runtime", "api")
        os.chmod(svc.run_dir, 0o755)
        yield svc, grp.getgrnam(group).gr_gid
    finally:
        svc.close()
        subprocess.run(["groupdel", group], check=True)


def as_nobody(svc: Services, *args: str, groups: str = "") -> subprocess.CompletedProcess:
    who = ["setpriv", "--reuid=65534", "--regid=65534"]
    who += [f"--groups={groups}"] if groups else ["--clear-groups"]
    return subprocess.run([*who, sys.executable, "-m", "cli", *args], env=svc.env, cwd=REPO,
                          capture_output=True, text=True, timeout=30)


def test_socket_mode_and_group(grouped):
    svc, gid = grouped
    for name in ("api", "image", "runtime"):
        st = os.stat(svc.socket(name))
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, gid, 0o660)


def test_non_member_is_refused_member_is_served(grouped):
    svc, gid = grouped
    r = as_nobody(svc, "ps")
    assert r.returncode == 1 and "permission denied" in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = as_nobody(svc, "ps", groups=str(gid))
    assert r.returncode == 0, r.stderr
    assert "CONTAINER ID" in r.stdout

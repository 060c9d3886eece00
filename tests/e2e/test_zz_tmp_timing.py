import time, os
def test_timing(services, tmp_path):
    ctx = tmp_path / "many"
    t = time.monotonic()
    for i in range(100):
        d = ctx / f"d{i:03d}"
        d.mkdir(parents=True)
        for j in range(100):
            (d / f"f{j:03d}").write_text(f"{i}-{j}\n")
    (ctx / "Dockerfile").write_text("FROM busybox\nCOPY . /ctx\nRUN ls -R /ctx | grep -c '^f' > /count\nCMD cat /count\n")
    t1 = time.monotonic()
    r = services.berth("build", "-q", "-t", "many:1", str(ctx), timeout=300)
    assert r.returncode == 0, r.stderr
    t2 = time.monotonic()
    r = services.berth("run", "--rm", "many:1")
    t3 = time.monotonic()
    services.berth("rmi", "many:1")
    with open("/tmp/ctxprof/timing.txt", "a") as f:
        f.write(f"{os.environ.get('TAG','')} files {t1-t:.2f} build {t2-t1:.2f} run {t3-t2:.2f}\n")

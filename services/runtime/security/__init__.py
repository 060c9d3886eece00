"""Confinement of container processes beyond namespaces and cgroups (issue 7).

``policy`` turns a container's ``Security`` into what its init applies; ``seccomp``
compiles and installs syscall filters; ``userns`` allocates id ranges and makes
idmapped mounts; ``devices`` and ``apparmor`` do what their names say. The init
path that applies them in order is ``services/runtime/supervisor/spawn.py``.
"""

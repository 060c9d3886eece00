"""Docker image references: parse, normalise and print them the way Docker does.

Users type `busybox`; Docker stores `docker.io/library/busybox:latest` and shows
`busybox:latest`. Storing the normalised form makes `busybox`, `library/busybox`
and `docker.io/library/busybox:latest` the same tag; printing the familiar form
keeps our output identical to Docker's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from services.common.errors import InvalidArgument

DEFAULT_DOMAIN = "docker.io"
LEGACY_DOMAIN = "index.docker.io"
OFFICIAL_PREFIX = "library/"
DEFAULT_TAG = "latest"
NAME_MAX = 255

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[_.]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"

_REFERENCE_RE = re.compile(
    rf"^(?P<name>(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)"
    rf"(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?$"
)
_TAG_RE = re.compile(rf"^{_TAG}$")
_SHA256_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
HEX64_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Reference:
    """A parsed reference; `domain` and `path` are already normalised."""

    domain: str
    path: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """The normalised repository name, e.g. `docker.io/library/busybox`."""
        return f"{self.domain}/{self.path}"

    def __str__(self) -> str:
        out = self.name
        if self.tag:
            out += ":" + self.tag
        if self.digest:
            out += "@" + self.digest
        return out

    def with_default_tag(self) -> Reference:
        """`busybox` means `busybox:latest`, unless a digest pins it."""
        if self.tag is None and self.digest is None:
            return Reference(self.domain, self.path, DEFAULT_TAG, None)
        return self

    @property
    def familiar_name(self) -> str:
        """The repository as Docker prints it: `busybox`, `user/app`, `host:5000/x`."""
        if self.domain == DEFAULT_DOMAIN:
            return self.path.removeprefix(OFFICIAL_PREFIX)
        return self.name

    def familiar(self) -> str:
        out = self.familiar_name
        if self.tag:
            out += ":" + self.tag
        if self.digest:
            out += "@" + self.digest
        return out


def _invalid(text: str, why: str = "") -> InvalidArgument:
    return InvalidArgument(f"invalid reference format: {why or repr(text)}")


def _split_domain(name: str) -> tuple[str, str]:
    """Docker's rule: the first component is a registry only if it looks like a host."""
    first, sep, rest = name.partition("/")
    if not sep or ("." not in first and ":" not in first and first != "localhost" and first.lower() == first):
        domain, path = DEFAULT_DOMAIN, name
    else:
        domain, path = first, rest
    if domain == LEGACY_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = OFFICIAL_PREFIX + path
    return domain, path


def parse(text: str) -> Reference:
    """Parse and normalise a reference; malformed input raises InvalidArgument."""
    if not text:
        raise _invalid(text, "empty reference")
    m = _REFERENCE_RE.match(text)
    if m is None:
        # Tags and domains may hold capitals, so if lowering fixes it the path was at
        # fault; Docker names that rule explicitly so users know what to fix.
        lowered = _REFERENCE_RE.match(text.lower())
        if lowered is not None:
            name = text[: len(lowered.group("name"))]
            raise _invalid(text, f"repository name ({name}) must be lowercase")
        raise _invalid(text)
    name = m.group("name")
    if len(name) > NAME_MAX:
        raise _invalid(text, f"repository name must not be more than {NAME_MAX} characters")
    domain, path = _split_domain(name)
    digest = m.group("digest")
    if digest is not None and not _SHA256_RE.match(digest):
        raise _invalid(text, f"unsupported digest {digest!r} (only sha256 is supported)")
    return Reference(domain, path, m.group("tag"), digest)


def parse_tag_target(text: str) -> Reference:
    """A reference that names a tag to create: defaults to `latest`, no digest."""
    ref = parse(text)
    if ref.digest is not None:
        raise InvalidArgument(f"invalid reference format: refusing to create a tag with a digest reference: {text}")
    return ref.with_default_tag()


def normalize(text: str) -> str:
    """`busybox` → `docker.io/library/busybox:latest`."""
    return str(parse(text).with_default_tag())


def familiar(normalized: str) -> str:
    """`docker.io/library/busybox:latest` → `busybox:latest`."""
    return parse(normalized).familiar()


def is_valid_tag(tag: str) -> bool:
    return bool(_TAG_RE.match(tag))

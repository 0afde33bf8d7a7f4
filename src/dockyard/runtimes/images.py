"""Image references, read as the Docker distribution reference grammar reads them, so that every spelling of one
image (`busybox`, `docker.io/library/busybox:latest`) is the same `ImageReference`.

Two decisions rest on it: which repositories were pulled with credentials (services/private_images.py keys its
records by `repository`), and whether a local image really is the one a create names (runtimes/engine.py): an
engine also answers a short name (`app:1`) with an image of any registry, and an image-id prefix with that
image, which would hand one tenant an image pulled for another without the registry being asked.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_DOMAIN = "docker.io"
# Podman's name for images built or imported on the host: no registry serves them, so they are never pulled.
LOCAL_DOMAIN = "localhost"
_DOCKER_HUB_ALIASES = ("index.docker.io", "registry-1.docker.io")


@dataclass(frozen=True)
class ImageReference:
    domain: str
    path: str
    tag: str  # "latest" when neither a tag nor a digest is given; "" with a digest alone
    digest: str = ""

    @property
    def repository(self) -> str:
        return f"{self.domain}/{self.path}"

    @property
    def full(self) -> str:
        """The fully qualified spelling, which an engine looks up exactly (never by short-name search)."""
        tag = f":{self.tag}" if self.tag else ""
        digest = f"@{self.digest}" if self.digest else ""
        return f"{self.repository}{tag}{digest}"

    @property
    def pull_tag(self) -> str:
        """What to pull within `repository`: the digest when one is given (it pins the content), else the tag."""
        return self.digest or self.tag

    @property
    def is_local(self) -> bool:
        """Built or imported on the host (`localhost/...`): there is no registry to pull it from."""
        return self.domain == LOCAL_DOMAIN


def parse_reference(image: str) -> ImageReference:
    """`image` normalized: the registry's domain made explicit (Docker Hub's, with `library/` for an official
    image, when the first component is no domain), the tag `latest` when neither a tag nor a digest is given.
    Lenient: it never raises, and a malformed reference simply matches nothing else."""
    name, _, digest = image.strip().partition("@")
    slash, colon = name.rfind("/"), name.rfind(":")
    tag = ""
    if colon > slash:
        name, tag = name[:colon], name[colon + 1 :]
    first, separator, rest = name.partition("/")
    # Docker's rule: the first component is a registry when it has a dot or a port, is `localhost`, or is not
    # lower case (repository paths must be).
    if separator and ("." in first or ":" in first or first == LOCAL_DOMAIN or first != first.lower()):
        domain, path = first.lower(), rest
    else:
        domain, path = DEFAULT_DOMAIN, name
    if domain in _DOCKER_HUB_ALIASES:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = f"library/{path}"
    if not tag and not digest:
        tag = "latest"
    return ImageReference(domain, path, tag, digest)


def names_image(reference: ImageReference, repo_tags: list[str], repo_digests: list[str]) -> bool:
    """Whether `reference` is one of a local image's own names (its `RepoTags`, or with a digest its
    `RepoDigests`), as opposed to a short name or an id the engine resolved to it."""
    if reference.digest:
        return any(
            (named.repository, named.digest) == (reference.repository, reference.digest)
            for named in map(parse_reference, repo_digests)
        )
    return any(
        (named.repository, named.tag) == (reference.repository, reference.tag)
        for named in map(parse_reference, repo_tags)
    )

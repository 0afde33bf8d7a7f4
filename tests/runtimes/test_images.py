"""Image references normalized as the distribution grammar reads them, and whether a reference is one of a local
image's own names (as opposed to a spelling an engine resolves to it by itself)."""

from __future__ import annotations

import pytest

from dockyard.runtimes.images import ImageReference, names_image, parse_reference


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("busybox", ImageReference("docker.io", "library/busybox", "latest")),
        ("busybox:1.36", ImageReference("docker.io", "library/busybox", "1.36")),
        ("index.docker.io/acme/app:2", ImageReference("docker.io", "acme/app", "2")),
        ("acme/app", ImageReference("docker.io", "acme/app", "latest")),
        ("localhost/dockyard-busybox", ImageReference("localhost", "dockyard-busybox", "latest")),
        ("localhost:5000/team/app:1", ImageReference("localhost:5000", "team/app", "1")),
        ("Registry.Example/app:1", ImageReference("registry.example", "app", "1")),
        ("127.0.0.1:5000/app@sha256:abc", ImageReference("127.0.0.1:5000", "app", "", "sha256:abc")),
        ("824117f90c61", ImageReference("docker.io", "library/824117f90c61", "latest")),
    ],
)
def test_references_are_normalized(image: str, expected: ImageReference) -> None:
    assert parse_reference(image) == expected


def test_full_names_and_locality() -> None:
    assert parse_reference("busybox").full == "docker.io/library/busybox:latest"
    assert parse_reference("r.example/app@sha256:abc").full == "r.example/app@sha256:abc"
    assert parse_reference("r.example/app@sha256:abc").pull_tag == "sha256:abc"
    assert parse_reference("localhost/x:1").is_local
    assert not parse_reference("localhost:5000/x:1").is_local  # a registry on loopback is pulled from


def test_only_an_images_own_names_name_it() -> None:
    tags = ["127.0.0.1:5000/org-a/web:1", "localhost/dockyard-busybox:latest"]
    digests = ["127.0.0.1:5000/org-a/web@sha256:abc"]
    for own in ("127.0.0.1:5000/org-a/web:1", "localhost/dockyard-busybox", "127.0.0.1:5000/org-a/web@sha256:abc"):
        assert names_image(parse_reference(own), tags, digests), own
    # Podman resolves each of these to the image by itself; none is one of its names.
    for alias in ("web:1", "org-a/web:1", "824117f90c61", "127.0.0.1:5000/org-a/web:2", "org-a/web@sha256:abc"):
        assert not names_image(parse_reference(alias), tags, digests), alias
    # Docker lists Docker Hub images by their familiar names.
    assert names_image(parse_reference("docker.io/library/busybox:latest"), ["busybox:latest"], [])

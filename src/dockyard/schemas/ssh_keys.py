"""`/api/v1/ssh-keys` (ours): an organization's OpenSSH public keys, installed into containers."""

from __future__ import annotations

from pydantic import Field

from dockyard.schemas.common import CamelModel, Rfc3339, Text

MAX_PUBLIC_KEY = 16 * 1024


class CreateSshKeyRequest(CamelModel):
    name: Text = Field(min_length=1, max_length=255, examples=["laptop"])
    public_key: str = Field(
        min_length=1,
        max_length=MAX_PUBLIC_KEY,
        description="one OpenSSH public key line: `<type> <base64> [comment]`",
        examples=["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOcy1j5lW3q8wQ2p0vR1cG4mVQ5y3kT4yZxv8eFh0J2b me@laptop"],
    )


class SshKey(CamelModel):
    id: str
    name: str
    public_key: str
    fingerprint: str = Field(description="SHA256 fingerprint as `ssh-keygen -l` prints it", examples=["SHA256:..."])
    created_at: Rfc3339

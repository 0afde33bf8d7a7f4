"""Secrets at rest (Fernet: AES-128-CBC + HMAC-SHA256, the `cryptography` project's vetted recipe) and
the masks that stand for them on the wire. API keys are not encrypted but hashed: they are 192-bit random
tokens, so one SHA-256 is enough (a slow password hash buys nothing against a key that cannot be guessed).
"""

from __future__ import annotations

import hashlib

from cryptography.fernet import Fernet, InvalidToken

_PREFIX = "enc:v1:"
MASK = "******"


class SecretBox:
    """Encrypts and decrypts short secrets with the server's key; tokens carry a version prefix."""

    def __init__(self, key: str) -> None:
        self._fernet = Fernet(key.encode())

    def encrypt(self, plaintext: str) -> str:
        return _PREFIX + self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, token: str) -> str:
        if not token.startswith(_PREFIX):
            return token  # never encrypted (an empty value)
        try:
            return self._fernet.decrypt(token[len(_PREFIX) :].encode()).decode()
        except InvalidToken as exc:
            raise ValueError("a stored secret cannot be decrypted: DOCKYARD_SECRET_KEY has changed") from exc


def mask(plaintext: str) -> str:
    """The wire form of a secret: a two-character hint on long values, never the length, never the rest."""
    if len(plaintext) >= 12:
        return plaintext[:2] + MASK
    return MASK if plaintext else ""


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()

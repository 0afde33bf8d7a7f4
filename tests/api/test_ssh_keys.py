"""`/api/v1/ssh-keys`: OpenSSH format checks, fingerprints as ssh-keygen prints them, tenancy."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import Harness

# Made by ssh-keygen; the fingerprints are what `ssh-keygen -lf` printed for them.
ED25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGr7Ki93kMrGg8n91+KsP4k/+eGVNevH0DFv5iPU3DuW me@laptop"
ED25519_FINGERPRINT = "SHA256:YjB9Idvh2U5mPT9mhTS9GimBcuLoqTVBErsAII/lpjw"
ECDSA = (
    "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBFVWQWWILmorPOYMLOSgvud3PAL08dSkffzt"
    "PCwdpKrBdFKFPCfOD1qzCOmCsCS46UzVYAeKVYi2bMsvhTJpR8s= ec"
)
ECDSA_FINGERPRINT = "SHA256:TmHLHTCIQddHtiPVuNbm9IMUooH3F7z3NosaQtN9gu8"


async def test_create_get_list_delete(client: httpx.AsyncClient) -> None:
    created = await client.post("/api/v1/ssh-keys", json={"name": "laptop", "publicKey": f"  {ED25519}\n"})
    assert created.status_code == 200, created.text
    key_id = created.json()["id"]
    got = (await client.get(f"/api/v1/ssh-keys/{key_id}")).json()
    assert set(got) == {"id", "name", "publicKey", "fingerprint", "createdAt"}
    assert got["publicKey"] == ED25519
    assert got["fingerprint"] == ED25519_FINGERPRINT
    assert got["createdAt"].endswith("Z")

    second = (await client.post("/api/v1/ssh-keys", json={"name": "ci", "publicKey": ECDSA})).json()["id"]
    listed = (await client.get("/api/v1/ssh-keys")).json()
    assert {k["id"]: k["fingerprint"] for k in listed} == {key_id: ED25519_FINGERPRINT, second: ECDSA_FINGERPRINT}

    deleted = await client.delete(f"/api/v1/ssh-keys/{key_id}")
    assert (deleted.status_code, deleted.json()) == (200, {})
    assert (await client.get(f"/api/v1/ssh-keys/{key_id}")).status_code == 404
    assert (await client.delete(f"/api/v1/ssh-keys/{key_id}")).status_code == 404


@pytest.mark.parametrize(
    ("public_key", "says"),
    [
        ("ssh-ed25519", "one OpenSSH public key line"),
        ("ssh-dss AAAAB3NzaC1kc3MAAACBAP", "not supported"),
        ("ssh-ed25519 not*base64!", "not valid base64"),
        # A valid ed25519 body announced as an RSA key.
        ("ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIGr7Ki93kMrGg8n91+KsP4k/+eGVNevH0DFv5iPU3DuW", "not a ssh-rsa key"),
        ("ssh-ed25519 AAAA", "not a ssh-ed25519 key"),
        (f"{ED25519}\n{ECDSA}", "one OpenSSH public key line"),
    ],
)
async def test_malformed_keys_name_the_field(client: httpx.AsyncClient, public_key: str, says: str) -> None:
    answer = await client.post("/api/v1/ssh-keys", json={"name": "bad", "publicKey": public_key})
    assert answer.status_code == 422
    detail = answer.json()["details"][0]
    assert detail["field"] == "publicKey"
    assert says in detail["message"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "", "publicKey": ED25519}, "name"),
        ({"name": "laptop\x1b[2J", "publicKey": ED25519}, "name"),
        ({"name": "x"}, "publicKey"),
    ],
)
async def test_schema_validation(client: httpx.AsyncClient, body: dict[str, str], field: str) -> None:
    answer = await client.post("/api/v1/ssh-keys", json=body)
    assert answer.status_code == 422
    assert answer.json()["details"][0]["field"] == field


async def test_other_org_sees_nothing(harness: Harness, client: httpx.AsyncClient) -> None:
    key_id = (await client.post("/api/v1/ssh-keys", json={"name": "laptop", "publicKey": ED25519})).json()["id"]
    other = await harness.new_client("globex")
    try:
        assert (await other.get(f"/api/v1/ssh-keys/{key_id}")).status_code == 404
        assert (await other.delete(f"/api/v1/ssh-keys/{key_id}")).status_code == 404
        assert (await other.get("/api/v1/ssh-keys")).json() == []
    finally:
        await other.aclose()
    assert (await client.get(f"/api/v1/ssh-keys/{key_id}")).status_code == 200

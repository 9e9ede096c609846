"""Envelope encryption: per-row data keys under AES-256-GCM, wrapped by named master keys that
rotate without re-encrypting; tampering, a wrong AAD or a missing key are clear errors, and no
repr shows a secret. Broker credentials and TOTP secrets in a real PostgreSQL."""

from __future__ import annotations

import base64
import os
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pyotp
import pytest

from api.credentials import (
    DecryptionError,
    MasterKeys,
    Sealed,
    SecretBox,
    UnknownKeyIdError,
    load_broker_credentials,
    rotate_master_key,
    store_broker_credentials,
)
from api.security import SecurityConfig, authenticate, create_user, enable_totp, setup_totp

K1, K2 = os.urandom(32), os.urandom(32)
API_KEY, SECRET = "kite-api-key-7f3a9c", "kite-api-secret-Zq81xW0pLm"


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(database_url, autocommit=True) as c:
        yield c


def _b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def _flip(data: bytes, index: int) -> bytes:
    out = bytearray(data)
    out[index] ^= 0x01
    return bytes(out)


BOX1 = SecretBox(MasterKeys({"k1": K1}))
BOX21 = SecretBox(MasterKeys({"k2": K2, "k1": K1}))
BOX2 = SecretBox(MasterKeys({"k2": K2}))


def test_round_trip_uses_a_fresh_data_key_each_time() -> None:
    a = BOX1.encrypt(b"secret value", b"t/1/f")
    b = BOX1.encrypt(b"secret value", b"t/1/f")
    assert BOX1.decrypt(a, b"t/1/f") == BOX1.decrypt(b, b"t/1/f") == b"secret value"
    assert a.key_id == "k1"
    assert a.ciphertext != b.ciphertext and a.wrapped_data_key != b.wrapped_data_key
    assert b"secret value" not in a.ciphertext
    assert len(a.ciphertext) == 12 + len(b"secret value") + 16  # nonce + body + GCM tag
    assert Sealed.from_bytes(a.to_bytes()) == a
    assert BOX1.decrypt(BOX1.encrypt(b"", b"empty"), b"empty") == b""


def test_tampering_and_aad_mismatch_are_refused() -> None:
    sealed = BOX1.encrypt(b"secret value", b"t/1/f")
    for i in (0, 12, len(sealed.ciphertext) - 1):  # nonce, body, tag
        with pytest.raises(DecryptionError, match="ciphertext failed authentication"):
            BOX1.decrypt(Sealed(_flip(sealed.ciphertext, i), sealed.wrapped_data_key, "k1"), b"t/1/f")
    with pytest.raises(DecryptionError, match="data key wrapped by 'k1'"):
        BOX1.decrypt(Sealed(sealed.ciphertext, _flip(sealed.wrapped_data_key, 20), "k1"), b"t/1/f")
    with pytest.raises(DecryptionError):
        BOX1.decrypt(Sealed(sealed.ciphertext[:10], sealed.wrapped_data_key, "k1"), b"t/1/f")
    for aad in (b"t/2/f", b"t/1/g", b""):
        with pytest.raises(DecryptionError):
            BOX1.decrypt(sealed, aad)
    # The key id is the wrap's AAD: relabelling a wrapped key as another id does not open it.
    same_bytes = SecretBox(MasterKeys({"k1": K1, "k9": K1}))
    with pytest.raises(DecryptionError):
        same_bytes.decrypt(Sealed(sealed.ciphertext, sealed.wrapped_data_key, "k9"), b"t/1/f")
    with pytest.raises(DecryptionError, match="sealed blob"):
        Sealed.from_bytes(b"garbage")


def test_unknown_key_id_is_a_clear_error() -> None:
    sealed = BOX1.encrypt(b"secret value", b"aad")
    with pytest.raises(UnknownKeyIdError, match=r"master key 'k1', which is not configured \(have \['k2'\]\)"):
        BOX2.decrypt(sealed, b"aad")
    with pytest.raises(UnknownKeyIdError):
        BOX2.rewrap(sealed)


def test_rewrap_changes_only_the_wrapped_key() -> None:
    old = BOX1.encrypt(b"secret value", b"aad")
    new = BOX21.rewrap(old)
    assert (new.key_id, new.ciphertext) == ("k2", old.ciphertext)
    assert new.wrapped_data_key != old.wrapped_data_key
    assert BOX2.decrypt(new, b"aad") == b"secret value"
    assert BOX21.decrypt(old, b"aad") == b"secret value"  # old rows still open while k1 is configured
    assert BOX21.rewrap(new) is new


def test_master_keys_parse_and_from_env() -> None:
    keys = MasterKeys.parse(f" k2:{_b64(K2)}, k1:{base64.urlsafe_b64encode(K1).decode().rstrip('=')} ")
    assert (keys.current_id, keys.ids, keys.get("k1")) == ("k2", ["k2", "k1"], K1)
    bad = [
        ("", "at least one"),
        (f"k1{_b64(K1)}", "key_id:base64"),
        ("k1:not base64!", "not base64"),
        (f"k1:{_b64(K1[:16])}", "expected 32 bytes, got 16"),
        (f"k1:{_b64(K1)},k1:{_b64(K2)}", "appears twice"),
        (f"bad id:{_b64(K1)}", "master key id"),
    ]
    for text, message in bad:
        with pytest.raises(ValueError, match=message):
            MasterKeys.parse(text)
    with pytest.raises(ValueError, match="TICKTAPE_MASTER_KEYS is not set"):
        MasterKeys.from_env({})
    with pytest.raises(ValueError, match="TICKTAPE_MASTER_KEYS: master key 'k1': expected 32 bytes"):
        MasterKeys.from_env({"TICKTAPE_MASTER_KEYS": f"k1:{_b64(K1[:31])}"})
    zero = f"dev:{_b64(bytes(32))}"
    with pytest.raises(ValueError, match="placeholder, refused outside dev"):
        MasterKeys.from_env({"TICKTAPE_MASTER_KEYS": zero, "TICKTAPE_ENV": "live"})
    assert MasterKeys.from_env({"TICKTAPE_MASTER_KEYS": zero}).ids == ["dev"]
    assert MasterKeys.from_env({"TICKTAPE_MASTER_KEYS": f"k2:{_b64(K2)}", "TICKTAPE_ENV": "live"}).current_id == "k2"


def test_reprs_do_not_leak() -> None:
    sealed = BOX21.encrypt(SECRET.encode(), b"aad")
    jwt_secret = secrets.token_urlsafe(48)
    texts = [repr(BOX21), repr(MasterKeys({"k2": K2})), repr(sealed), str(sealed), repr(SecurityConfig(jwt_secret))]
    for text in texts:
        for needle in (_b64(K1), _b64(K2), K1.hex(), K2.hex(), repr(K1), repr(K2), SECRET, jwt_secret):
            assert needle not in text
        assert "ciphertext=b" not in text and "wrapped_data_key=b" not in text
    assert repr(BOX21) == "SecretBox(MasterKeys(current='k2', ids=['k2', 'k1']))"


def test_broker_credentials_round_trip_encrypted_at_rest(conn: psycopg.Connection) -> None:
    row_id = store_broker_credentials(conn, BOX1, "kite", API_KEY, SECRET, {"redirect_url": "http://127.0.0.1/cb"})
    creds = load_broker_credentials(conn, BOX1, row_id)
    assert (creds.broker_name, creds.api_key, creds.secret, creds.key_id) == ("kite", API_KEY, SECRET, "k1")
    assert creds.config == {"redirect_url": "http://127.0.0.1/cb"}
    assert API_KEY not in repr(creds) and SECRET not in repr(creds)
    dump = conn.execute("SELECT broker_credentials::text FROM broker_credentials").fetchone()
    assert dump is not None
    for plain in (API_KEY, SECRET, API_KEY.encode().hex(), SECRET.encode().hex()):
        assert plain not in dump[0]
    with pytest.raises(LookupError, match="id=999"):
        load_broker_credentials(conn, BOX1, 999)


def test_ciphertexts_are_bound_to_their_row_and_column(conn: psycopg.Connection) -> None:
    a = store_broker_credentials(conn, BOX1, "kite", API_KEY, SECRET)
    b = store_broker_credentials(conn, BOX1, "kite", "other-key", "other-secret")
    # Swapping the two columns of one row (they share its data key) does not decrypt.
    conn.execute(
        "UPDATE broker_credentials SET encrypted_api_key = encrypted_secret, encrypted_secret = encrypted_api_key"
        " WHERE id = %s",
        (a,),
    )
    with pytest.raises(DecryptionError):
        load_broker_credentials(conn, BOX1, a)
    # Copying another row's whole sealed payload does not decrypt either (the AAD names the row).
    conn.execute(
        "UPDATE broker_credentials d SET encrypted_api_key = s.encrypted_api_key, encrypted_secret = s.encrypted_secret,"
        " wrapped_data_key = s.wrapped_data_key FROM broker_credentials s WHERE d.id = %s AND s.id = %s",
        (a, b),
    )
    with pytest.raises(DecryptionError):
        load_broker_credentials(conn, BOX1, a)
    conn.execute("UPDATE broker_credentials SET wrapped_data_key = %s WHERE id = %s", (b"\x00" * 60, b))
    with pytest.raises(DecryptionError, match="data key"):
        load_broker_credentials(conn, BOX1, b)


def test_master_key_rotation_rewraps_rows_without_touching_ciphertext(conn: psycopg.Connection) -> None:
    ids = [store_broker_credentials(conn, BOX1, "kite", f"{API_KEY}-{i}", f"{SECRET}-{i}") for i in range(3)]
    user = create_user(conn, "alice", "correct horse battery staple")
    otp = pyotp.parse_uri(setup_totp(conn, user.id, BOX1))
    t0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
    enable_totp(conn, user.id, otp.at(t0), t0, box=BOX1)
    before = conn.execute("SELECT id, encrypted_api_key, encrypted_secret FROM broker_credentials ORDER BY id").fetchall()

    assert rotate_master_key(conn, BOX21) == 4  # three credential rows and one TOTP secret
    after = conn.execute("SELECT id, encrypted_api_key, encrypted_secret FROM broker_credentials ORDER BY id").fetchall()
    assert after == before
    assert conn.execute("SELECT DISTINCT encryption_key_id FROM broker_credentials").fetchall() == [("k2",)]
    assert rotate_master_key(conn, BOX21) == 0

    # With k1 retired everything still opens: the credentials and the TOTP login.
    for i, row_id in enumerate(ids):
        creds = load_broker_credentials(conn, BOX2, row_id)
        assert (creds.api_key, creds.secret, creds.key_id) == (f"{API_KEY}-{i}", f"{SECRET}-{i}", "k2")
    t1 = t0 + timedelta(seconds=30)
    assert authenticate(conn, "alice", "correct horse battery staple", otp.at(t1), t1, box=BOX2).id == user.id


def test_rotation_with_an_unknown_key_id_changes_nothing(conn: psycopg.Connection) -> None:
    old = SecretBox(MasterKeys({"k0": os.urandom(32)}))
    store_broker_credentials(conn, BOX1, "kite", API_KEY, SECRET)
    lost = store_broker_credentials(conn, old, "kite", API_KEY, SECRET)
    with pytest.raises(UnknownKeyIdError, match="'k0'"):
        rotate_master_key(conn, BOX21)
    keys = conn.execute("SELECT id, encryption_key_id FROM broker_credentials ORDER BY id").fetchall()
    assert keys == [(lost - 1, "k1"), (lost, "k0")]

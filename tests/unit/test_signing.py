"""Signed pickled functions: what verifies, what never gets unpickled."""

from __future__ import annotations

import base64
import hmac
import pickle
from pathlib import Path
from typing import Any

import pytest

from rainstorm import signing
from rainstorm.errors import UsageError
from rainstorm.operators.resolve import resolve
from rainstorm.signing import SignatureError

KEY = b"k" * 32
OTHER = b"o" * 32


class _Touch:
    """Unpickling this creates a file: proof that something was unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (Path(self.path),))


def _env(key: bytes | None) -> dict[str, str]:
    return {"RAINSTORM_SECRET": key.decode()} if key else {}


def test_sign_verify_round_trip() -> None:
    text = signing.sign(b"payload bytes", KEY, "main.<locals>.f")
    assert text.startswith("pickle:main.<locals>.f:")
    assert signing.verify(text, KEY, "pipeline.0.fn") == b"payload bytes"


def test_wrong_key_fails_with_a_clear_reason() -> None:
    text = signing.sign(b"payload", KEY)
    with pytest.raises(SignatureError, match=r"^operator pipeline\.0\.fn: signature check "
                       r"failed \(RAINSTORM_SECRET differs\?\)$"):
        signing.verify(text, OTHER, "pipeline.0.fn")


@pytest.mark.parametrize("tamper", ["payload", "name", "mac", "mac_case", "mac_short"])
def test_any_change_breaks_the_signature(tamper: str) -> None:
    text = signing.sign(b"some payload of a function", KEY, "f")
    head, _, mac = text.rpartition(".")
    prefix, name, b64 = head.split(":", 2)
    if tamper == "payload":
        raw = bytearray(base64.urlsafe_b64decode(b64))
        raw[3] ^= 1
        b64 = base64.urlsafe_b64encode(bytes(raw)).decode()
    elif tamper == "name":
        name = "g"
    elif tamper == "mac":
        mac = ("0" if mac[0] != "0" else "1") + mac[1:]
    elif tamper == "mac_case":
        mac = mac.upper()
    else:
        mac = mac[:-2]
    with pytest.raises(SignatureError, match="signature check failed"):
        signing.verify(f"{prefix}:{name}:{b64}.{mac}", KEY)


def test_unsigned_and_malformed_texts() -> None:
    b64 = base64.urlsafe_b64encode(pickle.dumps(len)).decode()
    with pytest.raises(SignatureError, match="not signed"):
        signing.verify(f"pickle:f:{b64}", KEY)
    with pytest.raises(SignatureError, match="not signed"):
        signing.verify(f"pickle:{b64}", KEY)
    with pytest.raises(SignatureError, match="not valid base64"):
        signing.verify("pickle:f:@@@@." + "0" * 64, KEY)
    with pytest.raises(SignatureError, match="not a pickled function"):
        signing.verify("tests.ops:wc_map", KEY)


def test_no_key_never_verifies() -> None:
    text = signing.sign(b"payload", KEY)
    with pytest.raises(SignatureError, match="no RAINSTORM_SECRET"):
        signing.verify(text, None, "pipeline.2.fn")


def test_mac_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, str]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(signing.hmac, "compare_digest", spy)
    text = signing.sign(b"payload", KEY)
    signing.verify(text, KEY)
    with pytest.raises(SignatureError):
        signing.verify(text, OTHER)
    assert len(calls) == 2


def test_secret_from_env_or_file(tmp_path: Path) -> None:
    assert signing.secret_key({}) is None
    assert signing.secret_key({"RAINSTORM_SECRET": "  "}) is None
    assert signing.secret_key({"RAINSTORM_SECRET": "x" * 20}) == b"x" * 20
    f = tmp_path / "secret"
    f.write_text("y" * 40 + "\n")
    assert signing.secret_key({"RAINSTORM_SECRET_FILE": str(f)}) == b"y" * 40
    # the variable wins over the file
    assert signing.secret_key({"RAINSTORM_SECRET": "x" * 20,
                               "RAINSTORM_SECRET_FILE": str(f)}) == b"x" * 20
    with pytest.raises(UsageError, match="too short"):
        signing.secret_key({"RAINSTORM_SECRET": "short"})
    with pytest.raises(UsageError, match="cannot read RAINSTORM_SECRET_FILE"):
        signing.secret_key({"RAINSTORM_SECRET_FILE": str(tmp_path / "missing")})


def test_load_callable_round_trip_of_a_closure() -> None:
    base = 7
    text = signing.dump_callable(lambda x: x + base, "pipeline.0.fn", key=KEY)
    fn = signing.load_callable(text, "pipeline.0.fn", env=_env(KEY))
    assert fn(1) == 8


@pytest.mark.parametrize("worker_key", [OTHER, None], ids=["wrong-key", "no-key"])
def test_nothing_is_unpickled_without_the_right_key(tmp_path: Path,
                                                    worker_key: bytes | None) -> None:
    marker = tmp_path / "unpickled"
    text = signing.sign(pickle.dumps(_Touch(marker)), KEY, "boom")
    with pytest.raises(SignatureError):
        signing.load_callable(text, "pipeline.0.fn", env=_env(worker_key))
    assert not marker.exists()
    # control: with the right key the payload really runs on unpickling
    with pytest.raises(UsageError, match="not callable"):
        signing.load_callable(text, "pipeline.0.fn", env=_env(KEY))
    assert marker.exists()


def test_short_key_on_a_worker_is_a_signature_error() -> None:
    text = signing.sign(b"payload", KEY)
    with pytest.raises(SignatureError, match="too short"):
        signing.load_callable(text, "pipeline.0.fn", env={"RAINSTORM_SECRET": "short"})


def test_dump_without_key_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAINSTORM_SECRET", raising=False)
    monkeypatch.delenv("RAINSTORM_SECRET_FILE", raising=False)
    with pytest.raises(UsageError) as info:
        signing.dump_callable(lambda x: x, "pipeline.0.fn (map)")
    msg = str(info.value)
    assert "\n" not in msg and "RAINSTORM_SECRET" in msg and "module:function" in msg


def test_resolve_pickle_branch(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RAINSTORM_SECRET", KEY.decode())
    text = signing.dump_callable(lambda s: s[::-1], key=KEY)
    assert resolve(text, {}, (), "pipeline.0.fn")("abc") == "cba"  # no allowlist needed
    monkeypatch.setenv("RAINSTORM_SECRET", OTHER.decode())
    with pytest.raises(SignatureError, match="pipeline.0.fn: signature check failed"):
        resolve(text, {}, (), "pipeline.0.fn")


def test_display_hides_the_payload() -> None:
    text = signing.sign(b"x" * 1000, KEY, "main.<locals>.add")
    assert signing.display(text) == "main.<locals>.add [pickled]"
    assert signing.display("split_words") == "split_words"

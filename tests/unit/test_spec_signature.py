"""Spec signatures (rainstorm.spec_signature), the worker's admission
checks (rainstorm.worker.admit) and the `module:function` rules of
rainstorm.operators.resolve."""

from __future__ import annotations

import shutil
import sys

import pytest

from rainstorm.apps.dataset import importable_ref
from rainstorm.errors import UsageError
from rainstorm.operators.resolve import resolve
from rainstorm.spec import parse_spec, spec_to_json
from rainstorm.spec_signature import NO_KEY, SpecRefused, sign_spec, submitter_key, verify_spec
from rainstorm.worker.admit import Admission, admit
from tests.hostile import mod

KEY = b"unit-spec-key-0123456789abcdef"
OTHER = b"another-spec-key-0123456789abcd"
SPEC = spec_to_json(parse_spec({
    "name": "wc", "source": {"type": "text"},
    "pipeline": [{"op": "flat_map", "fn": "split_words"}, {"op": "count"}]}))


def test_sign_and_verify() -> None:
    sig = sign_spec("job-1", SPEC, KEY)
    assert len(sig) == 64 and int(sig, 16) >= 0
    assert sign_spec("job-1", SPEC.encode(), KEY) == sig  # str and bytes alike
    verify_spec("job-1", SPEC.encode(), sig.encode(), KEY)  # quiet


@pytest.mark.parametrize("case, match", [
    ("another key", "signature check failed"),
    ("another job", "signature check failed"),
    ("changed spec", "signature check failed"),
    ("one byte more", "signature check failed"),
    ("unsigned", "not signed"),
    ("not hex", "signature check failed"),
    ("upper-case hex", "signature check failed"),
    ("no key here", "no RAINSTORM_SECRET"),
])
def test_verify_refuses(case: str, match: str) -> None:
    sig: bytes | None = sign_spec("job-1", SPEC, KEY).encode()
    job, spec, key = "job-1", SPEC.encode(), KEY
    if case == "another key":
        sig = sign_spec("job-1", SPEC, OTHER).encode()
    elif case == "another job":  # a signed spec copied to another job id
        job = "job-2"
    elif case == "changed spec":
        spec = spec.replace(b"split_words", b"split_wordz")
    elif case == "one byte more":
        spec += b" "
    elif case == "unsigned":
        sig = None
    elif case == "not hex":
        sig = b"z" * 64
    elif case == "upper-case hex":
        assert sig is not None
        sig = sig.upper()
    elif case == "no key here":
        key = None  # type: ignore[assignment]
    with pytest.raises(SpecRefused, match=match) as info:
        verify_spec(job, spec, sig, key)
    assert "\n" not in str(info.value)


def test_job_id_and_spec_cannot_be_shifted() -> None:
    """The job id is length-prefixed: moving bytes between id and spec changes the MAC."""
    assert sign_spec("ab", "c{}", KEY) != sign_spec("a", "bc{}", KEY)


def test_submitter_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAINSTORM_SECRET", raising=False)
    monkeypatch.delenv("RAINSTORM_SECRET_FILE", raising=False)
    with pytest.raises(UsageError) as info:
        submitter_key()
    assert str(info.value) == NO_KEY and "RAINSTORM_SECRET" in NO_KEY and "\n" not in NO_KEY
    assert submitter_key(unsigned=True) is None
    assert submitter_key(KEY) == KEY
    monkeypatch.setenv("RAINSTORM_SECRET", KEY.decode())
    assert submitter_key(unsigned=True) == KEY  # a key, when there is one, always signs


def test_admit_verifies_before_parsing() -> None:
    bad = b"{not json"
    with pytest.raises(SpecRefused, match="not signed"):
        admit("j", bad, None, Admission(KEY))
    # signed garbage (only a key holder can make it) and dev mode: refused as a bad spec
    with pytest.raises(SpecRefused, match="^job spec is not a valid spec: "):
        admit("j", bad, sign_spec("j", bad, KEY), Admission(KEY))
    with pytest.raises(SpecRefused, match="^job spec is not a valid spec: "):
        admit("j", bad, None, Admission(None, insecure=True))
    job = admit("j", SPEC.encode(), sign_spec("j", SPEC, KEY), Admission(KEY))
    assert job.id == "j" and job.spec.pipeline[0].fn == "split_words"  # type: ignore[union-attr]
    assert admit("j", SPEC, None, Admission(None, insecure=True)).id == "j"


def _pipe_spec(prog: str) -> str:
    return spec_to_json(parse_spec({
        "name": "p", "source": {"type": "text"},
        "pipeline": [{"op": "pipe", "cmd": [prog, "x"]}, {"op": "count"}]}))


def test_exec_allowlist() -> None:
    grep = shutil.which("grep")
    assert grep is not None
    policy = Admission(KEY, exec_paths=("grep",))
    for prog in ("grep", grep):  # by name or by path: the same program
        spec = _pipe_spec(prog)
        assert admit("j", spec, sign_spec("j", spec, KEY), policy).id == "j"
    for prog in ("sh", "/bin/sh", "no-such-program-here"):
        spec = _pipe_spec(prog)
        with pytest.raises(SpecRefused, match=r"^pipeline\.0: runs '[^']+'( \(/[^)]+\))?, "
                                              "which is not in this worker's "
                                              "--allow-exec-path list$"):
            admit("j", spec, sign_spec("j", spec, KEY), policy)


ALLOW = ("tests.hostile",)


@pytest.mark.parametrize("ref, match", [
    ("tests.hostile.mod:os.system", "no attribute chain"),     # the attack of issue 10
    ("tests.hostile.mod:os", "no attribute chain|defined in"),  # a module is not defined there
    ("tests.hostile.mod:system", "defined in 'posix'|defined in 'nt'"),  # re-exported
    ("tests.hostile.mod:__builtins__", "no attribute chain"),
    ("tests.hostile.mod:__class__", "no attribute chain"),
    ("tests.hostile.mod:_hidden", "no attribute chain"),
    ("tests.hostile.mod:Prefixer.__init__", "no attribute chain"),
    ("tests.hostile.mod:", "no attribute chain"),
    ("tests.hostile.__init__:shout", "is not a module name"),
    ("tests..hostile:shout", "is not a module name"),
    ("tests.ops:wc_map", "not in the worker allowlist"),
])
def test_resolve_refuses(ref: str, match: str) -> None:
    with pytest.raises(UsageError, match=match) as info:
        resolve(ref, {}, ALLOW, "pipeline.0.fn")
    assert str(info.value).startswith("pipeline.0.fn: ") and "\n" not in str(info.value)


def test_resolve_accepts_what_the_module_defines() -> None:
    assert resolve("tests.hostile.mod:shout", {}, ALLOW, "w")("a") == "A"
    assert resolve("tests.hostile.mod:Prefixer", {"prefix": ">"}, ALLOW, "w")("a") == ">a"
    # the coordinator's own spec ("*") obeys the same shape rules
    with pytest.raises(UsageError, match="no attribute chain"):
        resolve("tests.hostile.mod:os.system", {}, ("*",), "w")
    assert resolve("tests.ops:wc_map", {}, ("tests",), "w") is sys.modules["tests.ops"].wc_map


def test_dataset_sends_only_resolvable_references() -> None:
    assert importable_ref(mod.shout) == "tests.hostile.mod:shout"
    assert importable_ref(mod.Prefixer) == "tests.hostile.mod:Prefixer"
    assert importable_ref(mod._hidden) is None  # pickled and signed instead
    assert importable_ref(mod.Prefixer.__call__) is None  # a method: Prefixer.__call__

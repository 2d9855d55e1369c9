"""The native code (rainstorm.native) writes exactly the bytes the Python
code writes, or answers None: cutting deltas into partitions and folding
columnar blobs, on random deltas and keys of every kind, and on blobs
crafted or mangled the way anyone holding a Redis password could write them
(a mangled blob is folded natively only where Python folds it to the same
bytes; anything else is left to Python, which moves bad deltas aside)."""

from __future__ import annotations

import array
import importlib.util
import random
import shutil
import subprocess
import sysconfig
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import msgpack
import orjson
import pytest

from rainstorm import native
from rainstorm.operators import aggregates
from rainstorm.operators.aggregates import Additive, BadDelta
from rainstorm.protocol.entries import partition_of

pytestmark = [pytest.mark.unit,
              pytest.mark.skipif(not native.AVAILABLE,
                                 reason="rainstorm.native was not built (no C compiler at "
                                        "install) or RAINSTORM_NATIVE=0")]

SUM = Additive("sum")
WORDS = ["the", "a", "", "é", "日本語", "naïve", "x" * 40, "y" * 300, "🙂", "tab\tkey",
         "line\nkey", "quote\"", "\\", "\x7f", "\u2028"]


def python_split(delta: dict[Any, Any], n: int) -> dict[int, bytes]:
    """rainstorm.state.split_delta's Python path, with the crc32 computed
    independently here."""
    str_keys = set(map(type, delta)) == {str}
    where = [zlib.crc32(k.encode("utf-8", "surrogatepass")) % n if type(k) is str
             else partition_of(k, n) for k in delta]
    return aggregates.encode_split(delta, where, n, SUM, str_keys)


def python_fold(blobs: list[bytes]) -> bytes | None:
    """rainstorm.state.fold's Python path and encode; None if a blob is bad."""
    try:
        state = aggregates.checked(blobs[0], SUM)
        for blob in blobs[1:]:
            aggregates.merge_blob_checked(state, blob, SUM)
    except BadDelta:
        return None
    return aggregates.encode(state, SUM)


def random_key(rng: random.Random) -> str:
    pick = rng.random()
    if pick < 0.5:
        return "".join(rng.choice("abcdefghij") for _ in range(rng.randint(1, 8)))
    if pick < 0.8:
        return rng.choice(WORDS) + str(rng.randint(0, 50))
    return "".join(chr(rng.randint(1, 0x2FFF)) for _ in range(rng.randint(0, 5)))


def random_delta(rng: random.Random, size: int, floats: bool) -> dict[str, Any]:
    if floats:
        return {random_key(rng): rng.choice([rng.uniform(-1e6, 1e6), -0.0, 0.0, 1e308,
                                             float("inf"), 0.5])
                for _ in range(size)}
    return {random_key(rng): rng.choice([1, -1, rng.randint(-10**6, 10**6), 2**63 - 1,
                                         -(2**63), 0])
            for _ in range(size)}


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("n", [1, 7, 64, 1000])
def test_cut_writes_what_python_writes(seed: int, n: int) -> None:
    rng = random.Random(seed * 1000 + n)
    for size in (1, 5, 300):
        delta = random_delta(rng, size, floats=seed % 2 == 1)
        assert native.cut is not None
        assert native.cut(delta, n) == python_split(delta, n)


def test_cut_partitions_keys_of_every_length_by_zlib_crc32() -> None:
    # the native crc32 takes 8 bytes a step and the rest one at a time: keys
    # of 0..40 bytes (1- to 4-byte characters) cover both and every remainder
    rng = random.Random(5)
    alphabet = "az\x01\x7f\xe9\u0394\u65e5\U0001f642"
    delta = {"".join(rng.choice(alphabet) for _ in range(size)): size
             for size in range(41) for _ in range(20)}
    n = 1009  # a prime: nearly every key alone in its partition
    assert native.cut is not None
    parts = native.cut(delta, n)
    assert parts == python_split(delta, n)
    for key in delta:
        assert zlib.crc32(key.encode()) % n in parts


def test_cut_of_large_parts_uses_the_wide_msgpack_headers() -> None:
    # joined keys beyond 65535 bytes (str32) and values beyond 65535 (bin32)
    delta = {f"key-{i:06d}-" + "z" * 20: i for i in range(9000)}
    assert native.cut is not None
    for n in (1, 2):
        assert native.cut(delta, n) == python_split(delta, n)


@pytest.mark.parametrize("delta", [
    {"a\x00b": 1},  # a key holding NUL: a map blob in Python
    {"lone\udc80": 1},  # a lone surrogate: Python's surrogatepass
    {"big": 2**63},  # beyond int64
    {"neg": -(2**63) - 1},
    {"a": 1, "b": 2.0},  # mixed values
    {"t": True},  # bool is no int here
    {1: 1},  # not a str key
    {"a": 1, 2: 1},
    {"a": "text"},
    {},
], ids=repr)
def test_cut_leaves_to_python_what_is_not_columnar(delta: dict[Any, Any]) -> None:
    assert native.cut is not None
    assert native.cut(delta, 8) is None
    if "lone\udc80" not in delta:  # (which msgpack refuses: the batch is unencodable)
        assert python_split(delta, 8) is not None  # Python encodes it


def blob(keys: list[str], values: list[Any], code: str = "q") -> bytes:
    body = aggregates._columnar_body(keys, values, code)
    assert body is not None
    return msgpack.packb(body, use_bin_type=True)  # type: ignore[no-any-return]


@pytest.mark.parametrize("seed", range(8))
def test_fold_writes_what_python_writes(seed: int) -> None:
    rng = random.Random(seed)
    floats = seed % 2 == 1
    pool = [random_key(rng) for _ in range(400)]
    deltas = []
    for _ in range(rng.randint(1, 12)):
        d = {rng.choice(pool): (rng.uniform(-5, 5) if floats else rng.randint(-9, 9))
             for _ in range(rng.randint(0, 120))}
        deltas.append(aggregates.encode(d, SUM) if d else b"")
    base = b"" if seed % 3 == 0 else deltas.pop(0)
    assert native.fold is not None
    got = native.fold([base, *deltas])
    assert got is not None
    assert got == python_fold([base, *deltas])


@pytest.mark.parametrize("floats", [False, True])
def test_a_fold_into_a_large_table_writes_what_python_writes(floats: bool) -> None:
    # past 2^17 slots the native fold looks keys up in groups, prefetching
    rng = random.Random(7)
    pool = [f"k{i}" for i in range(120_000)]
    deltas = []
    for _ in range(3):
        keys = rng.sample(pool, 40_000)
        d = {k: (rng.uniform(-5, 5) if floats else rng.randint(-9, 9)) for k in keys}
        deltas.append(aggregates.encode(d, SUM))
    assert native.fold is not None
    got = native.fold(deltas)
    assert got is not None and got == python_fold(deltas)
    assert len(aggregates.decode(got)) > 65_536  # 2 slots a key: the large table


@pytest.mark.parametrize("code, bounds", [("b", (-128, 127)), ("B", (0, 255)),
                                         ("h", (-32768, 32767)), ("H", (0, 65535)),
                                         ("i", (-2**31, 2**31 - 1)), ("I", (0, 2**32 - 1)),
                                         ("l", (-2**63, 2**63 - 1)), ("q", (-2**63, 2**63 - 1))])
def test_json_body_writes_what_orjson_writes(code: str, bounds: tuple[int, int]) -> None:
    # --json writes a partition's columns natively: the text must be orjson's
    assert native.json_body is not None
    rng = random.Random(code)
    specials = [chr(c) for c in range(0x20)] + ['"', "\\", "/", "\x7f", "\u2028", "é", "日",
                                                  "🙂", "", " "]
    keys = list(dict.fromkeys(
        "".join(rng.choice(specials + list("abc")) for _ in range(rng.randint(0, 6)))
        for _ in range(3000)))
    values = array.array(code, [rng.choice([*bounds, 0, 1, -1 if bounds[0] else 2,
                                            rng.randint(*bounds)]) for _ in keys])
    want = orjson.dumps(dict(zip(keys, values, strict=True))).decode()[1:-1]
    assert native.json_body(keys, values) == want
    assert native.json_body([], array.array(code)) == ""


@pytest.mark.parametrize("keys, values", [
    (["a"], array.array("d", [1.5])),  # floats: orjson's float text is Python's
    (["a", "b"], array.array("q", [1])),  # not one value a key
    (["a\udc80"], array.array("q", [1])),  # a lone surrogate has no UTF-8
    ([1], array.array("q", [1])),  # not a str
    (["a"], [1]),  # not an array
], ids=["floats", "counts", "surrogate", "int-key", "list"])
def test_json_body_leaves_to_python_what_it_does_not_write(keys: list[Any], values: Any
                                                           ) -> None:
    assert native.json_body is not None
    assert native.json_body(keys, values) is None


@pytest.mark.parametrize("blobs", [
    [b""],  # nothing: encode({})
    [b"", blob([""], [5])],  # the empty key alone
    [blob(["a", "b", "a"], [1, 2, 3])],  # a crafted duplicate into an empty state: replaces
    [blob(["a"], [1]), blob(["a", "b", "a"], [1, 2, 3])],  # into a non-empty one: adds
    [blob(["x"], [-0.0], "d"), blob(["y"], [-0.0], "d")],  # 0 + -0.0 is 0.0 for a new key
    [b"", blob(["x"], [-0.0], "d")],
    [blob(["a"], [2**62]), blob(["a"], [-(2**62)]), blob(["a", "b"], [2**62, 1])],
], ids=lambda b: repr(b)[:60])
def test_fold_of_edge_cases_writes_what_python_writes(blobs: list[bytes]) -> None:
    assert native.fold is not None
    assert native.fold(blobs) == python_fold(blobs)


@pytest.mark.parametrize("blobs", [
    [blob(["a"], [2**63 - 1]), blob(["a"], [1])],  # the sum is beyond int64
    [blob(["a"], [1]), blob(["a"], [1.0], "d")],  # codes mixed
    [aggregates.encode({"a": 1, 2: 3}, SUM)],  # a map blob
    [b"", b"\x94\x01\xa1q"],  # truncated
    [b"", msgpack.packb([1, "q", "a\x00b", b"\x00" * 8])],  # 2 keys, 1 value
    [b"", msgpack.packb([1, "q", "a", b"\x00" * 7])],  # not whole values
    [b"", msgpack.packb([1, "q", b"a", b"\x00" * 8], use_bin_type=True)],  # keys as bin
    [b"", msgpack.packb([1, "q", "a", b"\x00" * 8], use_bin_type=True) + b"\x00"],  # extra
    [b"", b"\x94\x01\xa1q\xa2\xff\xfe\xc4\x08" + b"\x00" * 8],  # keys not UTF-8
    [b"", b"\x94\x01\xa1q\xa3\xed\xa0\x80\xc4\x08" + b"\x00" * 8],  # a UTF-8 surrogate
    [b"", msgpack.packb([1, "z", "a", b"\x00" * 8], use_bin_type=True)],  # unknown code
], ids=lambda b: repr(b)[:60])
def test_fold_leaves_to_python_what_is_not_plain_columnar(blobs: list[bytes]) -> None:
    assert native.fold is not None
    assert native.fold(blobs) is None


# (the smallest and largest value of a pair) -> the code both sides choose
WIDTHS = [((0, 255), "B"), ((0, 256), "H"), ((1, 65535), "H"), ((1, 65536), "I"),
          ((0, 2**32 - 1), "I"), ((0, 2**32), "q"), ((-128, 127), "b"), ((-129, 0), "h"),
          ((-1, 128), "h"), ((-32768, 32767), "h"), ((-32769, 1), "i"), ((-1, 32768), "i"),
          ((-(2**31), 2**31 - 1), "i"), ((-(2**31) - 1, 0), "q"), ((-1, 2**31), "q"),
          ((-(2**63), 2**63 - 1), "q")]


def test_the_array_module_has_the_sizes_the_native_code_writes() -> None:
    from array import array

    sizes = {code: array(code).itemsize for code in "bBhHiIqd"}
    assert sizes == {"b": 1, "B": 1, "h": 2, "H": 2, "i": 4, "I": 4, "q": 8, "d": 8}


@pytest.mark.parametrize(("bounds", "code"), WIDTHS, ids=lambda x: repr(x))
def test_ints_travel_in_the_narrowest_code_on_both_sides(bounds: tuple[int, int],
                                                         code: str) -> None:
    delta = {"lo": bounds[0], "hi": bounds[1], "mid": 0 if bounds[0] <= 0 else bounds[0]}
    enc = aggregates.encode(delta, SUM)
    msg = msgpack.unpackb(enc, raw=False)
    assert msg[1] == code and len(msg[3]) == 3 * {"b": 1, "B": 1, "h": 2, "H": 2, "i": 4,
                                                   "I": 4, "q": 8}[code]
    assert aggregates.checked(enc, SUM) == delta
    assert native.cut is not None and native.fold is not None
    assert native.cut(delta, 3) == python_split(delta, 3)
    assert native.fold([b"", enc]) == python_fold([b"", enc]) == enc


def test_blobs_of_different_int_codes_fold_together_into_a_wider_one() -> None:
    """255 + 1 no longer fits a byte: the folded base is wider than every blob."""
    blobs = [blob(["a", "b"], [255, 3]), blob(["a"], [1]), blob(["b", "c"], [-2, 70000]),
             blob(["c"], [2**40])]
    assert [msgpack.unpackb(b)[1] for b in blobs] == ["B", "B", "i", "q"]
    assert native.fold is not None
    got = native.fold(blobs)
    assert got is not None and got == python_fold(blobs)
    assert aggregates.decode(got) == {"a": 256, "b": 1, "c": 70000 + 2**40}
    small = native.fold([blob(["a"], [255]), blob(["a"], [1])])
    assert small is not None and msgpack.unpackb(small)[1] == "H"


@pytest.mark.parametrize("crafted", [
    msgpack.packb([1, "H", "a\x00b", b"\x00" * 3], use_bin_type=True),  # not whole values
    msgpack.packb([1, "I", "a", b"\x00" * 2], use_bin_type=True),
    msgpack.packb([1, "f", "a", b"\x00" * 4], use_bin_type=True),  # float32: not ours
    msgpack.packb([1, "u", "a", b"\x00" * 4], use_bin_type=True),  # unicode: not ours
    msgpack.packb([1, "B", "a\x00b", b"\x01"], use_bin_type=True),  # 2 keys, 1 value
], ids=repr)
def test_crafted_narrow_blobs_are_refused_by_both_sides(crafted: bytes) -> None:
    assert native.fold is not None
    assert native.fold([b"", crafted]) is None
    with pytest.raises(BadDelta):
        aggregates.checked(crafted, SUM)


def mangle(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        what = rng.random()
        at = rng.randrange(len(b) + 1)
        if what < 0.4 and b:
            b[min(at, len(b) - 1)] ^= 1 << rng.randrange(8)
        elif what < 0.6:
            del b[at:at + rng.randint(1, 9)]
        elif what < 0.8:
            b[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 9)))
        elif b:
            b[min(at, len(b) - 1)] = rng.choice([0x00, 0xFF, 0xC4, 0xC6, 0xDB, 0xD9, 0x94])
    return bytes(b)


def test_mangled_blobs_are_folded_natively_only_as_python_folds_them() -> None:
    rng = random.Random(11)
    good = [blob(["alpha", "beta", "é", ""], [1, 2, 3, 4]),
            blob(["k" * 300, "x"], [7, -7]),
            blob(["f", "g"], [0.5, -1.5], "d"),
            aggregates.encode({f"w{i}": i for i in range(70)}, SUM)]
    assert native.fold is not None
    native_folds = 0
    for _ in range(4000):
        base, delta = rng.choice(good), mangle(rng, rng.choice(good))
        got = native.fold([base, delta])
        if got is not None:
            native_folds += 1
            assert got == python_fold([base, delta]), delta
    assert native_folds > 100  # mangling left some blobs well formed (values changed)


TEXTS = [
    "the cat the hat\nthe end",
    "caf\xe9 na\xefve\xa0x\x85y z",  # Latin-1 text, NBSP and NEL are whitespace
    "日本 語\u3000日本\u2028語 \u2029 e\u200bf",  # ideographic space, line/para separators
    "🙂 a🙂b \U0001F642 tab\tsep\x1c\x1d\x1e\x1fv\x0b\x0c end",
    "", "   \n\t ", "one",
]


@pytest.mark.parametrize("texts", [TEXTS, TEXTS[:1] * 3, TEXTS[1:4], ["x " * 5000 + "y"]],
                         ids=["all", "ascii", "unicode", "long"])
def test_word_counts_count_what_counter_counts_and_cut_what_python_cuts(texts: list[str]
                                                                        ) -> None:
    assert native.WordCounts is not None
    wc, ref = native.WordCounts(), Counter[str]()
    for text in texts:
        assert wc.add_text(text) == len(text.split())
        ref.update(text.split())
    assert len(wc) == len(ref)
    assert list(wc.to_dict().items()) == list(ref.items())  # the same order too
    for n in (1, 7, 64):
        assert wc.cut(n) == python_split(dict(ref), n)


def test_word_counts_on_real_sized_random_text() -> None:
    rng = random.Random(3)
    vocab = [random_key(rng) for _ in range(3000)] + ["naïve", "日本語", "🙂"]
    seps = [" ", "\n", "\t", " \u3000", "\xa0", "  "]
    texts = ["".join(rng.choice(vocab) + rng.choice(seps) for _ in range(rng.randint(0, 4000)))
             for _ in range(5)]
    assert native.WordCounts is not None
    wc, ref = native.WordCounts(), Counter[str]()
    for text in texts:
        wc.add_text(text)
        ref.update(text.split())
    assert list(wc.to_dict().items()) == list(ref.items())
    assert wc.cut(16) == python_split(dict(ref), 16)


# byte sequences Python's strict UTF-8 decoder refuses, and some it accepts
NOT_UTF8 = [b"\x80", b"\xbf", b"\xc0\x80", b"\xc1\xbf", b"\xc2", b"\xe0\x80\x80",
            b"\xe0\x9f\xbf", b"\xed\xa0\x80", b"\xed\xbf\xbf", b"\xef\xbf", b"\xf0\x8f\xbf\xbf",
            b"\xf4\x90\x80\x80", b"\xf5\x80\x80\x80", b"\xff", b"\xf0\x9f\x99"]
UTF8 = [b"\xc2\x80", b"\xdf\xbf", b"\xe0\xa0\x80", b"\xed\x9f\xbf", b"\xee\x80\x80",
        b"\xef\xbf\xbf", b"\xf0\x90\x80\x80", b"\xf4\x8f\xbf\xbf", b"\xc2\x85", b"\xc2\xa0",
        b"\xe3\x80\x80", b"\xe2\x80\xa8", b"\x1c", b"\x0b", b"\n", b"\r\n"]


def lines_of(text: str) -> int:
    """rainstorm.worker.batch's records_in of a text entry."""
    return text.count("\n") + (0 if text.endswith("\n") or not text else 1)


@pytest.mark.parametrize("seed", range(8))
def test_add_utf8_counts_what_decoding_then_add_text_counts(seed: int) -> None:
    # the worker counts a split's words from its bytes, skipping the decode:
    # the same words and lines as before, and None (nothing counted) exactly
    # where the strict decoder refuses the bytes (the worker then decodes
    # with U+FFFD and counts the entry as invalid UTF-8)
    assert native.WordCounts is not None
    rng = random.Random(seed)
    pieces = [t.encode() for t in TEXTS] + [w.encode() for w in WORDS] + UTF8 + \
        [b" ", b"\n", b"\t", b"word", b"x" * 9, b"\xc3\xa9t\xc3\xa9"]
    fast, ref = native.WordCounts(), native.WordCounts()
    refused = 0
    for _ in range(300):
        data = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 40)))
        if rng.random() < 0.3:
            at = rng.randint(0, len(data))
            data = data[:at] + rng.choice(NOT_UTF8 + UTF8) + data[at:]
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        before = fast.to_dict()
        got = fast.add_utf8(data)
        if text is None:
            assert got is None and fast.to_dict() == before, data
            refused += 1
            continue
        assert got == (ref.add_text(text), lines_of(text)), data
        assert got[0] == len(text.split())
    assert 0 < refused < 300
    assert list(fast.to_dict().items()) == list(ref.to_dict().items())
    assert fast.cut(16) == ref.cut(16)


@pytest.mark.parametrize("seed", range(4))
def test_words_across_the_64_byte_blocks_are_str_split(seed: int) -> None:
    # the native scan takes 64 ASCII bytes at a time (whitespace and newline
    # masks) and goes character by character through a block with any other
    # byte: words and lines must come out as str.split() and str.count
    # whatever straddles a block's edge
    assert native.WordCounts is not None
    rng = random.Random(seed)
    ascii_space = "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f "
    alphabet = ["a", "b", "Z", "0", "-", "\x00", "\x7f", "\x08", "\x0e", "\x1b", "!", "~",
                *ascii_space, "\x85", "\xa0", "\u3000", "\u2028", "\u200b", "é", "日", "🙂"]
    ref, wc = Counter[str](), native.WordCounts()
    for _ in range(1500):
        weights = [rng.random() for _ in alphabet]
        text = "".join(rng.choices(alphabet, weights, k=rng.randint(0, 300)))
        if rng.random() < 0.3:  # long ASCII stretches: whole blocks on the fast path
            text = " ".join("w" * rng.randint(1, 90) for _ in range(rng.randint(1, 9))) + text
        got = wc.add_utf8(text.encode())
        assert got == (len(text.split()), lines_of(text)), repr(text)
        ref.update(text.split())
    assert list(wc.to_dict().items()) == list(ref.items())


def test_the_portable_scan_counts_what_the_simd_scan_counts(tmp_path: Path) -> None:
    # a machine without SSE2 (ARM) builds the run-by-run scan: built here
    # with RAINSTORM_NO_SIMD, it must count what this build counts
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build the portable scan with")
    src = Path(native.__file__).parent
    built = tmp_path / ("_words" + (sysconfig.get_config_var("EXT_SUFFIX") or ".so"))
    subprocess.run([cc, "-shared", "-fPIC", "-O2", "-DRAINSTORM_NO_SIMD",
                    f"-I{sysconfig.get_paths()['include']}", f"-I{src}", str(src / "_words.c"),
                    "-o", str(built)], check=True, capture_output=True, timeout=120)
    spec = importlib.util.spec_from_file_location("rainstorm.native._words", built)
    assert spec is not None and spec.loader is not None
    portable = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(portable)
    assert native.WordCounts is not None
    rng = random.Random(11)
    pieces = [t.encode() for t in TEXTS] + UTF8 + [b" ", b"\n", b"w" * 70, b"\xc3\xa9"]
    a, b = portable.WordCounts(), native.WordCounts()
    for _ in range(400):
        data = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 60)))
        assert a.add_utf8(data) == b.add_utf8(data), data
    assert list(a.to_dict().items()) == list(b.to_dict().items())
    assert a.cut(16) == b.cut(16)


@pytest.mark.parametrize("data", NOT_UTF8 + [b"ok " + b for b in NOT_UTF8], ids=repr)
def test_add_utf8_refuses_what_the_strict_decoder_refuses(data: bytes) -> None:
    assert native.WordCounts is not None
    with pytest.raises(UnicodeDecodeError):
        data.decode("utf-8")
    wc = native.WordCounts()
    assert wc.add_utf8(data) is None and len(wc) == 0
    assert wc.add_utf8(b"") == (0, 0) and wc.add_utf8(b"a b\nc") == (3, 2)
    with pytest.raises(TypeError, match="add_utf8: bytes"):
        wc.add_utf8("text")  # type: ignore[arg-type]


def test_a_cleared_table_counts_as_a_new_one() -> None:
    # a worker reuses one table for every batch, cleared: nothing of a batch
    # (a word, a count, the 'odd' mark of a NUL word, its size) may reach the next
    assert native.WordCounts is not None
    reused = native.WordCounts()
    rng = random.Random(9)
    vocab = [random_key(rng) for _ in range(5000)]
    for size in (3000, 40, 0, 20_000, 7):
        reused.add_text("a\x00b " + " ".join(rng.choice(vocab) for _ in range(size)))
        assert reused.cut(8) is None  # odd: a NUL word
        reused.clear()
        assert len(reused) == 0 and reused.to_dict() == {} and reused.cut(8) is None
        text = " ".join(rng.choice(vocab) for _ in range(size)) + " the the"
        fresh = native.WordCounts()
        assert reused.add_utf8(text.encode()) == fresh.add_utf8(text.encode())
        assert list(reused.to_dict().items()) == list(fresh.to_dict().items())
        assert reused.cut(16) == fresh.cut(16) == python_split(Counter(text.split()), 16)
        reused.clear()


@pytest.mark.parametrize("text", ["a\x00b c", "lone\udc80 x", "x \ud800"], ids=repr)
def test_word_counts_leave_odd_words_to_python(text: str) -> None:
    assert native.WordCounts is not None
    wc = native.WordCounts()
    wc.add_text(text)
    assert wc.cut(8) is None  # a word with NUL or a lone surrogate: Python encodes it
    assert wc.to_dict() == Counter(text.split())


@pytest.mark.parametrize("records", [
    [("a", 1), ("b", 2), ("a", 3), (("t", 1), None), (7, [1]), ("a", "x")],
    [], [("k", i % 3) for i in range(1000)],
], ids=["mixed", "empty", "many"])
def test_group_add_groups_what_python_groups(records: list[Any]) -> None:
    assert native.group_add is not None and native.all_pairs is not None
    assert native.all_pairs(records)
    got: dict[Any, Any] = {"a": [0]}
    want: dict[Any, Any] = {"a": [0]}
    assert native.group_add(got, records)
    for k, v in records:
        want.setdefault(k, []).append(v)
    assert list(got.items()) == list(want.items())


@pytest.mark.parametrize("records", [
    [("a", 1), ("b", 2, 3)], [("a", 1), ["b", 2]], [("a", 1), "ab"], [("a",)],
], ids=repr)
def test_group_add_leaves_other_records_to_python(records: list[Any]) -> None:
    assert native.group_add is not None and native.all_pairs is not None
    acc: dict[Any, Any] = {}
    assert not native.all_pairs(records)
    assert not native.group_add(acc, records)
    assert acc == {}  # untouched


def test_group_add_raises_on_an_unhashable_key_as_python_does() -> None:
    assert native.group_add is not None
    with pytest.raises(TypeError):
        native.group_add({}, [("a", 1), ([1], 2)])

"""The pure patch model and engine: parsing, matching, offsets, fuzz, reverse, sets and series."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from helpers import header, relock, write_set
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mfnpatch.errors import MfnError
from mfnpatch.source.diff import ApplyFailure, PatchSetError, parse_dep3, parse_patch, split_lines
from mfnpatch.source.hunks import apply_patch
from mfnpatch.source.patchset import Catalog, apply_series, order_sets, parse_selection

SHA = "4bc813215a4603474c840c85fa2113f5354c7180"


def real_diff(tmp: Path, path: str, old: bytes | None, new: bytes | None) -> str:
    """A unified diff made by git diff --no-index, rewritten to a/<path> b/<path>."""
    a, b = tmp / "a" / path, tmp / "b" / path
    for p, data in ((a, old), (b, new)):
        p.parent.mkdir(parents=True, exist_ok=True)
        if p.exists():
            p.unlink()
        if data is not None:
            p.write_bytes(data)
    args = ["git", "diff", "--no-index", "--no-color", "--src-prefix=a/", "--dst-prefix=b/"]
    args += [str(a) if old is not None else "/dev/null", str(b) if new is not None else "/dev/null"]
    r = subprocess.run(args, capture_output=True)
    assert r.returncode in (0, 1), r.stderr
    text = r.stdout.decode()
    text = text.replace(f"a/{a}", f"a/{path}").replace(f"b/{b}", f"b/{path}")
    text = text.replace(f"a{a}", f"a/{path}").replace(f"b{b}", f"b/{path}")
    return header(SHA) + text


def lines(*xs: str) -> bytes:
    return "".join(x + "\n" for x in xs).encode()


BASE = lines(*[f"line {i}" for i in range(1, 31)])


def edited(data: bytes, at: int, new: str) -> bytes:
    ls = split_lines(data)
    ls[at] = (new + "\n").encode()
    return b"".join(ls)


def test_split_lines_only_on_newline():
    assert split_lines(b"a\r\nb\x0cc\nd") == [b"a\r\n", b"b\x0cc\n", b"d"]
    assert split_lines(b"") == []


def test_apply_exact(tmp_path):
    new = edited(BASE, 9, "LINE TEN")
    p = parse_patch(real_diff(tmp_path, "f.txt", BASE, new), "x.patch", "s@1/x.patch")
    out, res = apply_patch(p, {"f.txt": BASE})
    assert out["f.txt"] == new
    assert [(r.offset, r.fuzz, r.applied_line) for r in res] == [(0, 0, 7)]


def test_offset_is_found_and_reported(tmp_path):
    new = edited(BASE, 19, "CHANGED")
    p = parse_patch(real_diff(tmp_path, "f.txt", BASE, new), "x.patch", "s@1/x.patch")
    shifted = lines("extra 1", "extra 2", "extra 3") + BASE
    out, res = apply_patch(p, {"f.txt": shifted})
    assert out["f.txt"] == lines("extra 1", "extra 2", "extra 3") + new
    assert res[0].offset == 3 and res[0].fuzz == 0


def test_offsets_of_later_hunks_are_relative_to_their_headers(tmp_path):
    new = edited(edited(BASE, 2, "A"), 25, "B")
    p = parse_patch(real_diff(tmp_path, "f.txt", BASE, new), "x.patch", "s@1/x.patch")
    assert len(p.files[0].hunks) == 2
    shifted = lines("x", "y") + BASE
    out, res = apply_patch(p, {"f.txt": shifted})
    assert out["f.txt"] == lines("x", "y") + new
    assert [r.offset for r in res] == [2, 2]


def test_fuzz_is_never_silent(tmp_path):
    new = edited(BASE, 14, "CHANGED")
    p = parse_patch(real_diff(tmp_path, "f.txt", BASE, new), "x.patch", "s@1/x.patch")
    drifted = edited(BASE, 11, "context changed")  # first context line of the hunk
    with pytest.raises(ApplyFailure) as e:
        apply_patch(p, {"f.txt": drifted})
    assert e.value.kind == "fuzz" and "fuzz 1" in e.value.message
    out, res = apply_patch(p, {"f.txt": drifted}, fuzz=1)
    assert out["f.txt"] == edited(new, 11, "context changed")
    assert res[0].fuzz == 1


def test_mismatch_shows_expected_and_found(tmp_path):
    new = edited(BASE, 14, "CHANGED")
    p = parse_patch(real_diff(tmp_path, "f.txt", BASE, new), "x.patch", "s@1/x.patch")
    other = edited(BASE, 14, "someone else's edit")
    with pytest.raises(ApplyFailure) as e:
        apply_patch(p, {"f.txt": other})
    f = e.value
    assert f.kind == "mismatch" and f.path == "f.txt" and f.hunk == 1
    assert "expected at line 12" in f.details[0]
    assert any(d.startswith("!    15 | line 15") for d in f.details)
    assert any(d.startswith("!    15 | someone else's edit") for d in f.details)


def test_reverse_and_already_applied_are_told_apart(tmp_path):
    new = edited(BASE, 4, "CHANGED")
    forward = parse_patch(real_diff(tmp_path, "f.txt", BASE, new), "x.patch", "s@1/x.patch")
    backward = parse_patch(real_diff(tmp_path, "f.txt", new, BASE), "y.patch", "s@1/y.patch")
    out, _ = apply_patch(forward, {"f.txt": BASE})
    back, _ = apply_patch(forward, out, reverse=True)
    assert back["f.txt"] == BASE
    with pytest.raises(ApplyFailure) as e:
        apply_series([_set(backward)], {"f.txt": BASE})
    assert e.value.kind == "reversed"
    twice = _set(forward, forward.__class__(**{**forward.__dict__, "name": "dup.patch", "label": "s@1/dup.patch"}))
    with pytest.raises(ApplyFailure) as e:
        apply_series([twice], {"f.txt": BASE})
    assert e.value.kind == "already-applied" and e.value.patch == "s@1/dup.patch"


def _set(*patches):
    from mfnpatch.source.patchset import PatchSet, SetManifest

    m = SetManifest(schema=1, name="s", version=1, applies_to=SHA, description="d")
    return PatchSet(manifest=m, directory=Path("."), patches=list(patches))


def test_new_and_deleted_files(tmp_path):
    created = parse_patch(real_diff(tmp_path, "new/f.txt", None, lines("hello")), "c.patch", "s@1/c.patch")
    assert created.files[0].is_new
    out, _ = apply_patch(created, {"new/f.txt": None})
    assert out["new/f.txt"] == lines("hello")
    with pytest.raises(ApplyFailure) as e:
        apply_patch(created, {"new/f.txt": lines("other")})
    assert e.value.kind == "file-exists"
    deleted = parse_patch(real_diff(tmp_path, "g.txt", lines("bye"), None), "d.patch", "s@1/d.patch")
    assert deleted.files[0].is_deleted
    out, _ = apply_patch(deleted, {"g.txt": lines("bye")})
    assert out["g.txt"] is None
    with pytest.raises(ApplyFailure) as e:
        apply_patch(deleted, {"g.txt": None})
    assert e.value.kind == "missing-file"


def test_no_newline_at_end_of_file(tmp_path):
    old = b"a\nb\nc"
    new = b"a\nB\nc"
    p = parse_patch(real_diff(tmp_path, "f", old, new), "x.patch", "s@1/x.patch")
    assert "No newline" in p.text
    out, _ = apply_patch(p, {"f": old})
    assert out["f"] == new
    out, _ = apply_patch(parse_patch(real_diff(tmp_path, "f", b"a\nb", b"a\nb\n"), "y", "s@1/y"), {"f": b"a\nb"})
    assert out["f"] == b"a\nb\n"


def test_crlf_patch_against_lf_file(tmp_path):
    new = edited(BASE, 9, "X")
    text = real_diff(tmp_path, "f.txt", BASE, new)
    head, body = text.split("diff --git", 1)
    crlf = head + "diff --git" + body.replace("\n", "\r\n")
    p = parse_patch(crlf, "x.patch", "s@1/x.patch")
    with pytest.raises(ApplyFailure) as e:
        apply_patch(p, {"f.txt": BASE})
    assert e.value.kind == "crlf"
    assert "the patch has CRLF lines, the file has LF" in e.value.message


@pytest.mark.parametrize(
    "minus,plus,kind,needle",
    [
        ("a/../etc/passwd", "b/../etc/passwd", "unsafe-path", "escapes the tree"),
        ("/etc/passwd", "/etc/passwd", "unsafe-path", "absolute path"),
        ("a/src/../../x", "b/src/../../x", "unsafe-path", "escapes the tree"),
        ("f.txt", "f.txt", "malformed", "-p1 form"),
        ("a/f.txt", "b/g.txt", "malformed", "renames are not supported"),
    ],
)
def test_paths_are_confined(minus, plus, kind, needle):
    text = header(SHA) + f"--- {minus}\n+++ {plus}\n@@ -1 +1 @@\n-a\n+b\n"
    with pytest.raises(ApplyFailure) as e:
        parse_patch(text, "x.patch", "s@1/x.patch")
    assert e.value.kind == kind and needle in e.value.message


def test_malformed_hunk_names_the_line():
    text = header(SHA) + "--- a/f\n+++ b/f\n@@ -1,3 +1,3 @@\n a\n-b\n?b\n c\n"
    with pytest.raises(ApplyFailure) as e:
        parse_patch(text, "x.patch", "s@1/x.patch")
    assert e.value.kind == "malformed"
    assert e.value.message.startswith("s@1/x.patch:12: malformed patch: not a hunk line: '?b'")
    short = header(SHA) + "--- a/f\n+++ b/f\n@@ -1,5 +1,3 @@\n a\n-b\n+B\n c\n"
    with pytest.raises(ApplyFailure) as e:
        parse_patch(short, "x.patch", "s@1/x.patch")
    assert "s@1/x.patch:9: malformed patch: hunk ends early" in e.value.message


def test_dep3_header():
    h = parse_dep3(header(SHA, "one\n two\n .\n three").splitlines(keepends=True), "x")
    assert h.description == "one\ntwo\n\nthree"
    assert h.lines["Applies-To"] == 6
    with pytest.raises(PatchSetError, match=r"x:1: DEP-3 header lacks 'Origin'"):
        parse_dep3(["Description: d\n", f"Applies-To: {SHA}\n", "Last-Update: 2026-01-01\n"], "x")
    bad = header(SHA).replace("2026-11-28", "2026-13-01")
    with pytest.raises(PatchSetError, match=r"x:5: Last-Update '2026-13-01' is not a date"):
        parse_dep3(bad.splitlines(keepends=True), "x")
    with pytest.raises(PatchSetError, match="appears twice"):
        parse_dep3(["Origin: a\n", "Origin: b\n"], "x")


def test_selection_and_order():
    assert parse_selection("mfn, py3@2") == [("mfn", None), ("py3", 2)]
    for bad in ("", "mfn@x", "MFN", "mfn,mfn"):
        with pytest.raises(PatchSetError):
            parse_selection(bad)
    a, b = _named("a"), _named("b", after=["a"])
    assert [s.name for s in order_sets([b, a])] == ["a", "b"]
    assert [s.name for s in order_sets([b])] == ["b"]
    with pytest.raises(PatchSetError, match="cycle"):
        order_sets([_named("x", after=["y"]), _named("y", after=["x"])])


def _named(name, after=()):
    from mfnpatch.source.patchset import PatchSet, SetManifest

    m = SetManifest(schema=1, name=name, version=1, applies_to=SHA, description="d", after=list(after))
    return PatchSet(manifest=m, directory=Path("."), patches=[])


def _one_patch_set(tmp_path) -> Path:
    text = header(SHA) + "--- a/f\n+++ b/f\n@@ -1 +1 @@\n-a\n+b\n"
    return write_set(tmp_path / "patches", "s", 1, SHA, [("0001-x.patch", text)])


def test_set_checksums_freeze_a_version(tmp_path):
    d = _one_patch_set(tmp_path)
    cat = Catalog.scan(tmp_path / "patches")
    assert cat.load("s").sha256 == cat.load("s", 1).sha256
    p = d / "0001-x.patch"
    p.write_text(p.read_text().replace("+b", "+c"))
    with pytest.raises(PatchSetError, match="does not match SHA256SUMS.*must not change") as e:
        cat.load("s")
    assert "patches/s/2/" in e.value.hint
    relock(d)
    cat.load("s")


def test_set_layout_errors(tmp_path):
    d = _one_patch_set(tmp_path)
    cat = Catalog.scan(tmp_path / "patches")
    with pytest.raises(PatchSetError, match="unknown patch set 'nope'") as e:
        cat.load("nope")
    assert "s (versions 1)" in e.value.hint
    with pytest.raises(PatchSetError, match="has no version 7"):
        cat.load("s", 7)
    (d / "0002-stray.patch").write_text("x")
    with pytest.raises(PatchSetError, match="0002-stray.patch not listed in series"):
        cat.load("s")
    (d / "0002-stray.patch").unlink()
    (d / "series").write_text("0001-x.patch -p0\n")
    with pytest.raises(PatchSetError, match=r"series:1: unsupported option\(s\) -p0"):
        cat.load("s")
    (d / "series").write_text("0001-x.patch\n")
    (d / "set.yaml").write_text((d / "set.yaml").read_text() + "colour: red\n")
    with pytest.raises(MfnError, match=r"set.yaml:6:1: unknown key 'colour'"):
        cat.load("s")


def test_applies_to_must_match_the_set(tmp_path):
    other = "1" * 40
    text = header(other) + "--- a/f\n+++ b/f\n@@ -1 +1 @@\n-a\n+b\n"
    write_set(tmp_path / "patches", "s", 1, SHA, [("0001-x.patch", text)])
    with pytest.raises(PatchSetError, match=f"Applies-To {other} differs from set.yaml applies_to {SHA}"):
        Catalog.scan(tmp_path / "patches").load("s")


# --------------------------------------------------------------------------------------------
# Property: apply(diff(a, b), a) == b and reverse(apply) == a, for real git diffs


line_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc")) | st.sampled_from(["\t", "\x0c"]), max_size=12
)
files = st.lists(line_text, min_size=0, max_size=40)


@st.composite
def edits(draw):
    old = draw(files)
    new = list(old)
    for _ in range(draw(st.integers(0, 5))):
        op = draw(st.sampled_from(["ins", "del", "rep"]))
        if op == "ins" or not new:
            new.insert(draw(st.integers(0, len(new))), draw(line_text))
        elif op == "del":
            del new[draw(st.integers(0, len(new) - 1))]
        else:
            new[draw(st.integers(0, len(new) - 1))] = draw(line_text)
    eol_old = draw(st.booleans())
    eol_new = draw(st.booleans())
    prefix = draw(st.lists(line_text, max_size=4))
    return old, new, eol_old, eol_new, prefix


def _join(ls, eol):
    text = "\n".join(ls)
    if ls and eol:
        text += "\n"
    return text.encode()


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits())
def test_roundtrip_property(tmp_path, case):
    old_l, new_l, eol_old, eol_new, prefix = case
    old, new = _join(old_l, eol_old), _join(new_l, eol_new)
    if old == new:
        return
    p = parse_patch(real_diff(tmp_path, "f.txt", old, new), "x.patch", "s@1/x.patch")
    out, _ = apply_patch(p, {"f.txt": old})
    assert out["f.txt"] == new
    back, _ = apply_patch(p, out, reverse=True)
    assert back["f.txt"] == old
    # Lines above the hunks that match none of its lines (\x01 never occurs in them) move it:
    # it applies at an offset equal to their number, to the same result.
    if prefix and old:
        pre = _join(["\x01" + t for t in prefix], True)
        out2, res = apply_patch(p, {"f.txt": pre + old})
        assert out2["f.txt"] == pre + new
        assert {r.offset for r in res} == {len(prefix)}

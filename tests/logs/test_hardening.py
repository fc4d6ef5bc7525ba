"""A very long line is parsed (and counted) like any other."""

from __future__ import annotations

from mfnpatch.logs.parser import summarize_text


def test_a_long_line_does_not_hide_the_lines_around_it():
    long = "x" * 250_000 + " something UserWarning: " + "1" * 1000
    text = f"[lfw][2000]Accuracy-Flip: 0.99+-0.01\n{long}\n[lfw][4000]Accuracy-Flip: 0.995+-0.01\n"
    s = summarize_text(text + "[lfw][6000]Accuracy-Flip: " + "9" * 250_000 + "\n")
    assert sorted(s.verifications["lfw"]) == [2000, 4000] and s.warnings == 1
    assert s.malformed_lines == 1 and s.malformed[0].startswith("line 4: [lfw] Accuracy-Flip 99999999999999999999…")

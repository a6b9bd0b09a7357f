import os

from assistant.agent.citations import check_citations, find_citations, render_markdown, render_plain


def test_both_citation_forms_are_found():
    text = "See 【F:src/a.py†L3-L7】 and 【3fa9c1†L4-L9】 and 【F:b.py†L2】, not 【xyz†L1】."
    found = [(c.kind, c.target, c.start, c.end) for c in find_citations(text)]
    assert found == [("file", "src/a.py", 3, 7), ("chunk", "3fa9c1", 4, 9), ("file", "b.py", 2, 2)]


def test_checks_ranges_paths_and_chunks(tmp_path):
    (tmp_path / "a.py").write_text("1\n2\n3\n")
    outside = tmp_path.parent / "outside.txt"
    outside.write_text("x\n" * 50)
    os.symlink(outside, tmp_path / "link.txt")
    chunks = {"abcdef": (10, "job")}
    text = ("【F:a.py†L1-L3】 【F:a.py†L2-L4】 【F:missing.py†L1】 【F:../outside.txt†L1】 【F:link.txt†L1】 "
            "【F:/etc/passwd†L1】 【abcdef†L10】 【abcdef†L11】 【123456†L1】 【F:a.py†L3-L1】")
    checked = check_citations(text, file_roots=[tmp_path], chunk_lookup=chunks.get)
    assert [c.valid for c in checked] == [True, False, False, False, False, False, True, False, False, False]
    assert "has 3 lines" in checked[1].reason and "bad line range" in checked[9].reason


def test_renderers_never_show_an_invalid_citation_as_valid(tmp_path):
    (tmp_path / "a.py").write_text("1\n2\n")
    text = "ok 【F:a.py†L1-L2】 bad 【F:a.py†L5】"
    cites = [c.as_dict() for c in check_citations(text, file_roots=[tmp_path])]
    md = render_markdown(text, cites, lambda c: f"/cite/{c['target']}?L={c['start']}-{c['end']}")
    assert "[a.py \\#L1-2](/cite/a.py?L=1-2)" in md
    assert "~~a.py \\#L5~~ *(unverified: a.py has 2 lines; L5-L5 is past its end)*" in md
    plain = render_plain(text, cites)
    assert "[a.py:L1-2 ✓]" in plain and "[a.py:L5 ✗ a.py has 2 lines" in plain
    assert "unverified" in render_markdown("【F:x.py†L1】", [], lambda c: "")   # unchecked: never a link


def test_plain_rendering_names_an_unchecked_citation_without_its_raw_marker():
    plain = render_plain("see 【F:src/a.py†L3-L7】 and 【3fa9c1†L4】", [])
    assert plain == "see [src/a.py:L3-7 unchecked] and [log 3fa9c1:L4 unchecked]"


def test_a_streamed_reply_shows_each_citation_once_it_is_whole():
    from assistant.agent.citations import PlainStream
    stream = PlainStream()
    pieces = ["`add` returns `a - b` 【F:calc", ".py†L1", "-L2】; see ", "【3fa9c1†L4-L9】", " and 【not a marker", "】 end"]
    shown = [stream.feed(piece) for piece in pieces]
    assert shown[:3] == ["`add` returns `a - b` ", "", "[calc.py:L1-2]; see "]
    assert "".join(shown) + stream.end() == ("`add` returns `a - b` [calc.py:L1-2]; see [log 3fa9c1:L4-9] and "
                                             "【not a marker】 end")
    held = PlainStream()
    assert held.feed("【" + "x" * 500) == "【" + "x" * 500  # an unclosed 【 is not held for ever

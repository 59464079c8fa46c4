"""The run's files (issue 11, item 14): rewrites of one kind are versions, other kinds never overwrite."""

from __future__ import annotations

from facilitair.server.domain import ArtifactKind
from facilitair.server.pipeline.files import FileSet
from facilitair.server.pipeline.parsing import MAX_PATH_LENGTH, ParsedFile

CODE, TEST, DOC = ArtifactKind.CODE, ArtifactKind.TEST, ArtifactKind.DOC


def test_a_rewrite_of_the_same_kind_is_the_next_version_in_place() -> None:
    files = FileSet()
    files.add([ParsedFile("a.py", "1"), ParsedFile("b.py", "1")], CODE, 2)
    (again,) = files.add([ParsedFile("a.py", "2")], CODE, 4)
    (third,) = files.add([ParsedFile("a.py", "3")], CODE, 6)
    assert [(again.version, again.stage), (third.version, third.stage)] == [(2, 4), (3, 6)]
    assert [(a.path, a.content, a.version) for a in files.final()] == [("a.py", "3", 3), ("b.py", "1", 1)]


def test_another_kind_moves_aside_under_a_free_name_each_time() -> None:
    files = FileSet()
    files.add(
        [ParsedFile("src/x.py", "code"), ParsedFile("src/x_test.py", "code too"), ParsedFile(".env", "A=1")], CODE, 2
    )
    moved = files.add([ParsedFile("src/x.py", "t1"), ParsedFile(".env", "t2")], TEST, 5)
    assert [(a.path, a.requested_path, a.version) for a in moved] == [
        ("src/x_test_2.py", "src/x.py", 1),
        (".env_test", ".env", 1),
    ]
    (doc,) = files.add([ParsedFile("src/x.py", "# docs")], DOC, 6)
    assert (doc.path, doc.kind) == ("src/x_doc.py", DOC)
    assert {a.path: a.content for a in files.final()}["src/x.py"] == "code"


def test_a_moved_name_stays_within_the_path_limit() -> None:
    files = FileSet()
    long = "d/" + "n" * (MAX_PATH_LENGTH - 5) + ".py"
    files.add([ParsedFile(long, "code")], CODE, 2)
    (moved,) = files.add([ParsedFile(long, "test")], TEST, 4)
    assert len(moved.path) <= MAX_PATH_LENGTH
    assert moved.path.endswith("_test.py")

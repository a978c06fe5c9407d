"""Rows of an XML Flex statement, read incrementally with defusedxml in bounded memory.

No tree is built: the hardened expat parser calls back for every element and each element carrying
attributes below a ``FlexStatement`` is handed on as a row, so memory holds one chunk of input and
the rows not yet written, never the statement.

A row belongs to the section it is in (the ``FlexStatement``'s child, e.g. ``Trades``) and is named by
its own element (``Trade``, ``Order``, ``Lot``); a section element with attributes of its own
(``AccountInformation``, ``ChangeInNAV``) is a row of the table named after it.
"""

from __future__ import annotations

from typing import IO, Protocol

from defusedxml.ElementTree import DefusedXMLParser

from airflow_provider_ibflex.tables.errors import FlexTablesError

READ_SIZE = 1 << 20
STATEMENT = "FlexStatement"


class RowSink(Protocol):
    """Where rows go: a statement's attributes first, then its rows."""

    def statement(self, attributes: dict[str, str]) -> None: ...

    def row(self, section: str, element: str, names: tuple[str, ...], values: list[str]) -> None:
        """A row: its attributes' names and values, in document order."""


class _NoTarget:
    """The parser's tree builder, unused: elements never become a tree."""

    def close(self) -> None:
        return None


def read_xml(source: IO[bytes], sink: RowSink, read_size: int = READ_SIZE) -> dict[str, dict[str, str]]:
    """Read an XML statement, handing statements and rows to ``sink``; return the attributes of the
    elements around the statements, by element (``FlexQueryResponse``: ``queryName``, ``type``;
    ``FlexStatements``: ``count``).

    :param source: the statement's bytes.
    :param sink: receives statements and rows.
    :param read_size: bytes read at a time.
    """
    outer: dict[str, dict[str, str]] = {}
    depth = 0
    statement_depth = -1  # depth of the open FlexStatement, -1 outside one
    section = ""
    add_row = sink.row
    # Stray text inside rows would be lost silently: no Flex statement has any, so it is refused.
    text_at: list[int] = []

    def start(tag: str, flat: list[str]) -> None:
        nonlocal depth, statement_depth, section
        depth += 1
        if "}" in tag:  # expat reports a namespaced element as "uri}name"
            _refuse_namespace(tag)
        if statement_depth > 0:
            if depth == statement_depth + 1:
                section = tag
            if flat:
                add_row(section, tag, tuple(flat[::2]), flat[1::2])
        elif tag == STATEMENT:
            statement_depth = depth
            sink.statement(dict(zip(flat[::2], flat[1::2], strict=True)))
        elif flat:
            outer.setdefault(tag, {}).update(zip(flat[::2], flat[1::2], strict=True))

    def end(tag: str) -> None:
        nonlocal depth, statement_depth
        if depth == statement_depth:
            statement_depth = -1
        depth -= 1

    def text(data: str) -> None:
        if statement_depth > 0 and not data.isspace():
            text_at.append(parser.parser.CurrentLineNumber)

    parser = DefusedXMLParser(target=_NoTarget(), forbid_dtd=True)
    expat = parser.parser
    expat.StartElementHandler = start
    expat.EndElementHandler = end
    expat.CharacterDataHandler = text
    while chunk := source.read(read_size):
        parser.feed(chunk)
        if text_at:
            raise FlexTablesError(
                f"line {text_at[0]}: text inside a Flex statement's rows, which Flex never writes; "
                "this is not a Flex statement, or it was altered. Convert the statement as downloaded."
            )
    parser.close()
    return outer


def _refuse_namespace(tag: str) -> None:
    uri, _, name = tag.rpartition("}")
    raise FlexTablesError(
        f"the statement has an element {name!r} in the XML namespace {uri!r}; Flex statements use no "
        "namespaces, and a namespaced name cannot name a table. Nothing was written: convert the "
        "statement as Flex delivered it."
    )

"""Realistic Flex statements (XML ``FlexQueryResponse`` or CSV) of any size, generated as a stream.

Rows are rendered in fixed-width blocks, so the total size is known before the first byte (for
Content-Length) and a gigabyte is produced block by block in constant memory.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

from airflow_provider_ibflex.simulator import fullstatement
from airflow_provider_ibflex.simulator.fullstatement import Dates

_SYMBOLS = (b"AAPL", b"MSFT", b"NVDA", b"AMZN", b"GOOG", b"TSLA", b"ASML", b"SAP_")
_ROWS_PER_BLOCK = 2048
_BLOCK_MARK = b"@@@@@@"  # replaced by the block number, keeping every row the same width


@dataclass(frozen=True)
class StatementShape:
    """How a generated statement looks.

    :param format: ``xml`` or ``csv``.
    :param size: target size in bytes; the statement is at most this large (within one row).
    :param account: the account id in the statement.
    :param query_name: the Flex Query's name.
    :param truncated: drop the closing ``</FlexQueryResponse>`` (a fault).
    :param content: ``basic`` (one account, a few sections, plain CSV) or ``full`` (see
        ``fullstatement``: several accounts, the common sections, sectioned CSV).
    :param accounts: accounts in a ``full`` statement (``account`` is ignored there).
    :param date_format: how a ``full`` statement writes dates (``fullstatement.DATE_FORMATS``).
    :param time_format: how it writes times (``fullstatement.TIME_FORMATS``).
    :param date_time_separator: between date and time (``;``, ``,``, space or nothing).
    :param csv_layout: a ``full`` CSV's layout: ``plain``, ``sections`` (header and trailer
        records) or ``descriptors`` (those, and a section code on every line).
    :param extras: in a ``full`` statement, what no parser knows yet: an unknown section and
        attribute, a ``MULTI`` date, a thousands separator.
    """

    format: str = "xml"
    size: int = 20_000
    account: str = "U1234567"
    query_name: str = "Daily trades"
    truncated: bool = False
    content: str = "basic"
    accounts: int = 1
    date_format: str = "yyyyMMdd"
    time_format: str = "HHmmss"
    date_time_separator: str = ";"
    csv_layout: str = "sections"
    extras: bool = True


def _xml_row(index: int, account: bytes) -> bytes:
    symbol = _SYMBOLS[index % len(_SYMBOLS)]
    side = b"BUY " if index % 3 else b"SELL"
    return (
        b'<Trade accountId="%s" currency="USD" assetCategory="STK" symbol="%s" tradeID="%s%05d" '
        b'tradeDate="20261120" quantity="%05d" tradePrice="%08.2f" ibCommission="-%06.4f" '
        b'buySell="%s" exchange="NASDAQ" />\n'
    ) % (
        account,
        symbol,
        _BLOCK_MARK,
        index,
        (index % 97 + 1) * 10,
        100 + (index % 5000) / 7,
        1 + index % 9 / 10,
        side,
    )


def _csv_row(index: int, account: bytes) -> bytes:
    symbol = _SYMBOLS[index % len(_SYMBOLS)]
    side = b"BUY " if index % 3 else b"SELL"
    return b'"%s","USD","STK","%s","%s%05d","20261120","%05d","%08.2f","-%06.4f","%s","NASDAQ"\n' % (
        account,
        symbol,
        _BLOCK_MARK,
        index,
        (index % 97 + 1) * 10,
        100 + (index % 5000) / 7,
        1 + index % 9 / 10,
        side,
    )


def _xml_frame(shape: StatementShape) -> tuple[bytes, bytes]:
    account = shape.account
    head = (
        f'<FlexQueryResponse queryName="{shape.query_name}" type="AF">\n'
        '<FlexStatements count="1">\n'
        f'<FlexStatement accountId="{account}" fromDate="20261120" toDate="20261120" '
        'period="LastBusinessDay" whenGenerated="20261123;071500">\n'
        f'<AccountInformation accountId="{account}" currency="USD" name="Demo Investor" '
        'accountType="Individual" customerType="Individual" />\n'
        "<CashReport>\n"
        f'<CashReportCurrency accountId="{account}" currency="BASE_SUMMARY" startingCash="100000.00" '
        'endingCash="98765.43" />\n'
        "</CashReport>\n"
        "<OpenPositions>\n"
        f'<OpenPosition accountId="{account}" symbol="AAPL" position="100" markPrice="231.50" />\n'
        "</OpenPositions>\n"
        "<CashTransactions>\n"
        f'<CashTransaction accountId="{account}" type="Dividends" amount="24.00" currency="USD" />\n'
        "</CashTransactions>\n"
        "<Trades>\n"
    ).encode()
    tail = b"</Trades>\n</FlexStatement>\n</FlexStatements>\n"
    tail += b"" if shape.truncated else b"</FlexQueryResponse>\n"
    return head, tail


def _csv_frame() -> tuple[bytes, bytes]:
    head = (
        b'"ClientAccountID","CurrencyPrimary","AssetClass","Symbol","TradeID","TradeDate","Quantity",'
        b'"TradePrice","IBCommission","Buy/Sell","Exchange"\n'
    )
    return head, b""


class GeneratedStatement:
    """A statement of a given shape: its exact size and a chunk iterator over its bytes.

    :param shape: the statement's shape.
    """

    def __init__(self, shape: StatementShape) -> None:
        self.shape = shape
        if shape.content == "full":
            self._mark, self._serial = fullstatement.FILL_MARK, b"%08d"
            parts = _full_parts(shape)
            self._head = parts.head
            self._block = b"".join(parts.render(i) for i in range(_ROWS_PER_BLOCK))
            # The tail may count the rows: sized for the most there could be, then written exactly.
            room = max(shape.size - len(self._head) - len(parts.tail(10**12)), 0)
            self._row_width = len(self._block) // _ROWS_PER_BLOCK
            self.rows = max(room // self._row_width, 1)
            self._tail = parts.tail(self.rows)
        else:
            self._mark, self._serial = _BLOCK_MARK, b"%06d"
            account = shape.account.encode()
            row = _csv_row if shape.format == "csv" else _xml_row
            self._head, self._tail = _csv_frame() if shape.format == "csv" else _xml_frame(shape)
            self._block = b"".join(row(i, account) for i in range(_ROWS_PER_BLOCK))
            self._row_width = len(self._block) // _ROWS_PER_BLOCK
            room = max(shape.size - len(self._head) - len(self._tail), 0)
            self.rows = max(room // self._row_width, 1)
        self.size = len(self._head) + self.rows * self._row_width + len(self._tail)

    def chunks(self) -> Iterator[bytes]:
        """Yield the statement in chunks of about one block (~0.4-0.6 MB)."""
        yield self._head
        full, rest = divmod(self.rows, _ROWS_PER_BLOCK)
        for number in range(full):
            yield self._block.replace(self._mark, self._serial % number)
        if rest:
            yield self._block[: rest * self._row_width].replace(self._mark, self._serial % full)
        if self._tail:
            yield self._tail

    def sha256(self) -> str:
        """The sha256 of the whole statement, computed by streaming it."""
        digest = hashlib.sha256()
        for chunk in self.chunks():
            digest.update(chunk)
        return digest.hexdigest()


def _full_parts(shape: StatementShape) -> fullstatement.FullParts:
    dates = Dates(shape.date_format, shape.time_format, shape.date_time_separator)
    accounts = fullstatement.account_ids(shape.accounts)
    if shape.format == "csv":
        return fullstatement.csv_parts(accounts, dates, shape.extras, shape.query_name, shape.csv_layout)
    return fullstatement.xml_parts(accounts, dates, shape.extras, shape.query_name, shape.truncated)

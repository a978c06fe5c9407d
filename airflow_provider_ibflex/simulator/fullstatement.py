"""A full Flex statement: several accounts, the common sections, every date format, XML or CSV.

What a converter must survive, in one statement: sections that are rows themselves
(``AccountInformation``, ``ChangeInNAV``) and sections of rows (``Trades`` with ``Trade``, ``Order``
and ``Lot`` rows), identifiers that look like numbers (a CUSIP with a leading zero), optional
attributes present on some rows only, and, with ``extras``, what no parser knows yet: an unknown
section, an unknown attribute, a date written ``MULTI`` and a thousands separator. The trades of the
last account fill the requested size with fixed-width rows (see ``statements``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

DATE_FORMATS = {
    "yyyyMMdd": "{y:04d}{m:02d}{d:02d}",
    "yyyy-MM-dd": "{y:04d}-{m:02d}-{d:02d}",
    "MM/dd/yyyy": "{m:02d}/{d:02d}/{y:04d}",
    "MM/dd/yy": "{m:02d}/{d:02d}/{yy:02d}",
    "dd-MMM-yy": "{d:02d}-{mon}-{yy:02d}",
}
TIME_FORMATS = {"HHmmss": "{H:02d}{M:02d}{S:02d}", "HH:mm:ss": "{H:02d}:{M:02d}:{S:02d}"}
SEPARATORS = (";", ",", " ", "")
CSV_LAYOUTS = ("plain", "sections", "descriptors")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
# XML attribute names Flex writes differently as CSV column names.
_CSV_NAMES = {"accountId": "ClientAccountID", "currency": "CurrencyPrimary", "assetCategory": "AssetClass"}
_CODES = {
    "AccountInformation": "ACCT",
    "ChangeInNAV": "CNAV",
    "CashReport": "CRTT",
    "OpenPositions": "POST",
    "CashTransactions": "CTRN",
    "Trades": "TRNT",
}
_LABELS = {"Trades": "Trades; trade date basis", "CashReport": "Cash Report; trade date basis"}
FILL_MARK = b"@@FILL@@"

Row = list[tuple[str, str]]


@dataclass(frozen=True)
class Dates:
    """How dates and times are written (the Flex Query's settings).

    :param date_format: one of ``DATE_FORMATS``.
    :param time_format: one of ``TIME_FORMATS``.
    :param separator: between a date and a time, one of ``SEPARATORS``.
    """

    date_format: str = "yyyyMMdd"
    time_format: str = "HHmmss"
    separator: str = ";"

    def date(self, y: int, m: int, d: int) -> str:
        return DATE_FORMATS[self.date_format].format(y=y, m=m, d=d, yy=y % 100, mon=_MONTHS[m - 1])

    def time(self, hour: int, minute: int, second: int) -> str:
        return TIME_FORMATS[self.time_format].format(H=hour, M=minute, S=second)

    def date_time(self, y: int, m: int, d: int, hour: int, minute: int, second: int) -> str:
        return self.date(y, m, d) + self.separator + self.time(hour, minute, second)


def account_ids(accounts: int) -> list[str]:
    """The accounts of a statement with ``accounts`` accounts."""
    return [f"U{1234567 + 1111111 * n:07d}" for n in range(accounts)]


def statement_attributes(account: str, dates: Dates) -> Row:
    return [
        ("accountId", account),
        ("fromDate", dates.date(2026, 11, 20)),
        ("toDate", dates.date(2026, 11, 20)),
        ("period", "LastBusinessDay"),
        ("whenGenerated", dates.date_time(2026, 11, 23, 7, 15, 0)),
    ]


def sections(account: str, index: int, dates: Dates, extras: bool) -> list[tuple[str, str, list[Row]]]:
    """The sections of one account's statement before its trades: (section, element, rows)."""
    day = dates.date(2026, 11, 20)
    info: Row = [
        ("accountId", account),
        ("acctAlias", ""),
        ("currency", "USD"),
        ("name", f"Demo Investor {index + 1}"),
        ("accountType", "Individual"),
        ("customerType", "Individual"),
        ("dateOpened", dates.date(2019, 3, 4)),
    ]
    if index == 0:
        info.append(("primaryEmail", "investor@example.com"))  # optional: the first account only
    nav: Row = [
        ("accountId", account),
        ("currency", "USD"),
        ("fromDate", day),
        ("toDate", day),
        ("startingValue", "1,250,000.50" if extras else "1250000.50"),
        ("mtm", "-1532.25"),
        ("realized", "0"),
        ("dividends", "24.00"),
        ("commissions", "-3.5"),
        ("endingValue", "1248489.25"),
        ("twr", "-0.120787"),
    ]
    cash = [
        [
            ("accountId", account),
            ("currency", currency),
            ("fromDate", day),
            ("toDate", day),
            ("startingCash", "100000.00"),
            ("endingCash", ending),
        ]
        for currency, ending in (("BASE_SUMMARY", "98765.43"), ("USD", "98765.43"))
    ]
    positions = [
        [
            ("accountId", account),
            ("currency", "USD"),
            ("assetCategory", "STK"),
            ("symbol", "AAPL"),
            ("description", "APPLE INC"),
            ("conid", "265598"),
            ("cusip", "037833100"),
            ("isin", "US0378331005"),
            ("reportDate", day),
            ("position", "100"),
            ("markPrice", "231.5"),
            ("positionValue", "23150"),
            ("openPrice", "150.25"),
            ("costBasisPrice", "150.25"),
            ("fifoPnlUnrealized", "8125"),
            ("side", "Long"),
            ("levelOfDetail", "SUMMARY"),
            ("openDateTime", ""),
        ],
        [
            ("accountId", account),
            ("currency", "EUR"),
            ("assetCategory", "STK"),
            ("symbol", "SAP"),
            ("description", "SAP SE"),
            ("conid", "14204"),
            ("cusip", ""),
            ("isin", "DE0007164600"),
            ("reportDate", day),
            ("position", "-10"),
            ("markPrice", "201.15"),
            ("positionValue", "-2011.5"),
            ("openPrice", "210"),
            ("costBasisPrice", "210"),
            ("fifoPnlUnrealized", "88.5"),
            ("side", "Short"),
            ("levelOfDetail", "SUMMARY"),
            ("openDateTime", dates.date_time(2026, 10, 1, 15, 59, 1)),
        ],
    ]
    transactions = [
        [
            ("accountId", account),
            ("currency", "USD"),
            ("assetCategory", "STK"),
            ("symbol", "AAPL"),
            ("conid", "265598"),
            ("dateTime", dates.date_time(2026, 11, 20, 20, 20, 0)),
            ("settleDate", day),
            ("amount", amount),
            ("type", kind),
            ("transactionID", transaction),
            ("reportDate", day),
            ("description", "AAPL(US0378331005) CASH DIVIDEND USD 0.24 PER SHARE"),
        ]
        for amount, kind, transaction in (
            ("24", "Dividends", str(5001 + 100 * index)),
            ("-3.6", "Withholding Tax", str(5002 + 100 * index)),
        )
    ]
    if extras:
        transactions[1] = [(k, "MULTI" if k == "settleDate" else v) for k, v in transactions[1]]
    order = trade_row(account, dates, "ORDER", "0", "000001", extras)
    lot = trade_row(account, dates, "CLOSED_LOT", "0", "000002", extras)
    if extras:
        # A summary row dates itself MULTI, as Flex does.
        order = [(k, "MULTI" if k == "dateTime" else v) for k, v in order]
    found = [
        ("AccountInformation", "AccountInformation", [info]),
        ("ChangeInNAV", "ChangeInNAV", [nav]),
        ("CashReport", "CashReportCurrency", cash),
        ("OpenPositions", "OpenPosition", positions),
        ("CashTransactions", "CashTransaction", transactions),
    ]
    if extras:
        found.append(
            (
                "IBFutureSection",
                "IBFutureRow",
                [[("accountId", account), ("newMetric", "1.5"), ("since", day)]],
            )
        )
    return [*found, ("Trades", "Order", [order]), ("Trades", "Lot", [lot])]


def trade_row(account: str, dates: Dates, level: str, serial: str, number: str, extras: bool) -> Row:
    """A ``Trade`` (or ``Order``/``Lot``, by ``level``) row with fixed-width values.

    :param serial: the fixed-width part that varies per block (``FILL_MARK`` in filler rows).
    :param number: the fixed-width row number in its block.
    """
    n = int(number)
    sell = n % 3 == 0
    quantity = (n % 97 + 1) * 10
    price = 100 + (n % 5000) / 7
    symbol = ("AAPL", "MSFT", "NVDA", "AMZN", "GOOG", "TSLA", "ASML", "SAP_")[n % 8]
    row: Row = [
        ("accountId", account),
        ("currency", "USD"),
        ("assetCategory", "STK"),
        ("symbol", symbol),
        ("description", f"{symbol} COMMON STOCK"),
        ("conid", f"{265598 + n % 8:06d}"),
        ("cusip", "037833100"),
        ("listingExchange", "NASDAQ"),
        ("tradeID", f"{serial}{number}"),
        # IB's unique id of an execution; orders and closed lots have none of their own.
        ("transactionID", f"9{serial}{number}" if level == "EXECUTION" else ""),
        ("reportDate", dates.date(2026, 11, 20)),
        ("tradeDate", dates.date(2026, 11, 20)),
        ("dateTime", dates.date_time(2026, 11, 20, 9, 30, 15)),
        ("settleDateTarget", dates.date(2026, 11, 23)),
        ("transactionType", "ExchTrade"),
        ("exchange", "NASDAQ"),
        ("quantity", f"{-quantity if sell else quantity:06d}"),
        ("tradePrice", f"{price:09.4f}"),
        ("tradeMoney", f"{quantity * price:012.2f}"),
        ("proceeds", f"{(quantity * price if sell else -quantity * price):013.2f}"),
        ("ibCommission", f"-{1 + n % 9 / 10:06.4f}"),
        ("ibCommissionCurrency", "USD"),
        ("netCash", f"{(quantity * price if sell else -quantity * price) - 1:013.2f}"),
        ("openCloseIndicator", "C" if sell else "O"),
        ("buySell", "SELL" if sell else "BUY"),
        ("notes", "" if sell else "P"),  # a partial execution; also keeps every row one width
        ("ibOrderID", f"{serial}{number}"),
        ("ibExecID", f"0000e1ce.{serial}{number}.01.01"),
        ("orderTime", dates.date_time(2026, 11, 20, 9, 30, 14)),
        ("levelOfDetail", level),
        ("orderType", "LMT"),
        ("isAPIOrder", "Y" if n % 2 else "N"),
    ]
    if extras:
        row.append(("ibNewField2027", f"x{number}"))
    return row


def xml_row(element: str, row: Row) -> bytes:
    return ("<" + element + "".join(f' {k}="{v}"' for k, v in row) + " />\n").encode()


def csv_name(name: str) -> str:
    return _CSV_NAMES.get(name, name[:1].upper() + name[1:])


def csv_record(values: list[str]) -> bytes:
    return (",".join(f'"{v}"' for v in values) + "\n").encode()


@dataclass(frozen=True)
class FullParts:
    """A full statement around its filler rows: the head, a row renderer, and the tail (which, in CSV,
    counts the rows)."""

    head: bytes
    render: Callable[[int], bytes]
    tail: Callable[[int], bytes]


def xml_parts(accounts: list[str], dates: Dates, extras: bool, query_name: str, truncated: bool) -> FullParts:
    response = f'<FlexQueryResponse queryName="{query_name}" type="AF">\n'
    head = [(response + f'<FlexStatements count="{len(accounts)}">\n').encode()]
    for index, account in enumerate(accounts):
        last = index == len(accounts) - 1
        head.append(xml_row("FlexStatement", statement_attributes(account, dates)).replace(b" />", b">"))
        current = None
        for section, element, rows in sections(account, index, dates, extras):
            if section != current:
                if current is not None:
                    head.append(f"</{current}>\n".encode())
                current = section
                if section != element:
                    head.append(f"<{section}>\n".encode())
            head.extend(xml_row(element, row) for row in rows)
            if section == element:
                current = None
        if not last:
            head.append(b"</Trades>\n</FlexStatement>\n")
    account = accounts[-1]

    def render(index: int) -> bytes:
        row = trade_row(account, dates, "EXECUTION", FILL_MARK.decode(), f"{index:05d}", extras)
        return xml_row("Trade", row)

    end = b"</Trades>\n</FlexStatement>\n</FlexStatements>\n"
    end += b"" if truncated else b"</FlexQueryResponse>\n"
    return FullParts(b"".join(head), render, lambda rows: end)


def csv_parts(accounts: list[str], dates: Dates, extras: bool, query_name: str, layout: str) -> FullParts:
    controlled = layout != "plain"
    described = layout == "descriptors"
    head: list[bytes] = []
    first = statement_attributes(accounts[0], dates)
    if controlled:
        period = [first[1][1], first[2][1], first[4][1]]  # from, to, when generated
        head.append(csv_record(["BOF", accounts[0], query_name, str(len(accounts)), *period]))

    def section_records(code: str, section: str, rows: list[Row]) -> list[bytes]:
        names = [csv_name(k) for k, _ in rows[0]]
        out = []
        if controlled:
            out.append(csv_record(["BOS", code, _LABELS.get(section, section)]))
        out.append(csv_record((["HEADER", code] if described else []) + names))
        out.extend(csv_record((["DATA", code] if described else []) + [v for _, v in row]) for row in rows)
        return out

    for index, account in enumerate(accounts):
        last = index == len(accounts) - 1
        if controlled:
            head.append(csv_record(["BOA", account]))
        for section, _element, rows in sections(account, index, dates, extras):
            if section == "Trades":
                continue
            # CSV rows of a section share one header: the optional attribute is written empty.
            names = list(dict.fromkeys(k for row in rows for k, _ in row))
            rows = [[(k, dict(row).get(k, "")) for k in names] for row in rows]
            code = _CODES.get(section, section[:4].upper())
            head.extend(section_records(code, section, rows))
            if controlled:
                head.append(csv_record(["EOS", code, str(len(rows))]))
        fixed = [
            trade_row(account, dates, level, "0", f"{n:06d}", extras)
            for level, n in (("ORDER", 1), ("CLOSED_LOT", 2))
        ]
        head.extend(section_records("TRNT", "Trades", fixed))
        if controlled and not last:
            head.append(csv_record(["EOS", "TRNT", str(len(fixed))]))
            head.append(csv_record(["EOA", account]))
    account = accounts[-1]

    def render(index: int) -> bytes:
        row = trade_row(account, dates, "EXECUTION", FILL_MARK.decode(), f"{index:05d}", extras)
        return csv_record((["DATA", "TRNT"] if described else []) + [v for _, v in row])

    def tail(rows: int) -> bytes:
        if not controlled:
            return b""
        return csv_record(["EOS", "TRNT", str(rows + 2)]) + csv_record(["EOA", account]) + csv_record(["EOF"])

    return FullParts(b"".join(head), render, tail)

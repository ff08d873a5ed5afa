"""Search parameters of the sandbox: what is indexed from a resource, and how a query matches it.

Three kinds of parameter are indexed into one table ``idx(type, id, param, system, value)``:
token (``system`` = code system or NULL, ``value`` = code / identifier value), reference (``system`` =
the target type, ``value`` = the target id) and date (``value`` = a UTC instant key that sorts as text).
The same predicates run as SQL (store searches) and in Python (subscription criteria on one resource).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from fhir_smartflow.refs import RESOURCE_ID_RE, parse_reference
from fhir_smartflow.sandbox.errors import BadRequest

TOKEN = "token"
REFERENCE = "reference"
DATE = "date"

ANY_TYPE = "*"
# param -> (kind, resource types it applies to)
PARAMS: dict[str, tuple[str, frozenset[str] | str]] = {
    "identifier": (TOKEN, ANY_TYPE),
    "_tag": (TOKEN, ANY_TYPE),  # meta.tag: how Provenance (no identifier element in R4) is found by business id
    "status": (TOKEN, ANY_TYPE),
    "code": (TOKEN, ANY_TYPE),
    "subject": (REFERENCE, ANY_TYPE),
    "patient": (REFERENCE, ANY_TYPE),
    "encounter": (REFERENCE, ANY_TYPE),
    "based-on": (REFERENCE, ANY_TYPE),
    "recipient": (REFERENCE, frozenset({"Communication", "CommunicationRequest"})),
    "group-identifier": (TOKEN, frozenset({"Task"})),
    "owner": (REFERENCE, frozenset({"Task"})),
    "focus": (REFERENCE, frozenset({"Task"})),
    "authored-on": (DATE, frozenset({"Task"})),
    "date": (DATE, frozenset({"Appointment", "Encounter"})),
    "actor": (REFERENCE, frozenset({"Appointment"})),
    "url": (TOKEN, frozenset({"Questionnaire", "SubscriptionTopic"})),
    "role": (TOKEN, frozenset({"PractitionerRole"})),  # PractitionerRole.code: who holds a role
    "practitioner": (REFERENCE, frozenset({"PractitionerRole"})),  # the roles a user holds (CDS prefetch)
    "active": (TOKEN, frozenset({"PractitionerRole", "Practitioner", "Patient", "Organization"})),
}
# Result-control parameters understood by every search.
CONTROL = frozenset({"_count", "_sort", "_total", "_summary", "_page", "_format", "_pretty"})
SPECIAL = frozenset({"_id", "_lastUpdated"})
SORTS = {"_lastUpdated": "ASC", "-_lastUpdated": "DESC"}
DEFAULT_COUNT = 50
MAX_COUNT = 1000


@dataclass(frozen=True)
class IndexRow:
    param: str
    system: str | None
    value: str


@dataclass(frozen=True)
class Criterion:
    """One ``name[:modifier]=v1,v2`` query parameter (values are ORed; criteria are ANDed)."""

    name: str
    kind: str  # token | reference | date | id | lastUpdated
    modifier: str | None
    values: tuple[str, ...]


@dataclass(frozen=True)
class Query:
    criteria: tuple[Criterion, ...]
    ignored: tuple[str, ...]
    count: int
    offset: int
    sort: str  # ASC | DESC
    total: str  # accurate | none
    summary_count: bool


# ---- indexing -----------------------------------------------------------------------------------


def split_reference(reference: str) -> tuple[str | None, str] | None:
    """``Patient/1``, ``http://x/fhir/Patient/1/_history/2`` → (Patient, 1); a bare id → (None, id)."""
    parsed = parse_reference(reference)
    if parsed:
        return parsed.resource_type, parsed.id
    if RESOURCE_ID_RE.match(reference):
        return None, reference
    return None


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _refs(resource: dict[str, Any], element: str) -> Iterator[tuple[str | None, str]]:
    for item in _as_list(resource.get(element)):
        if isinstance(item, dict) and isinstance(item.get("reference"), str):
            parsed = split_reference(item["reference"])
            if parsed:
                yield parsed


def _identifiers(value: Any) -> Iterator[tuple[str | None, str]]:
    for ident in _as_list(value):
        if isinstance(ident, dict) and isinstance(ident.get("value"), str):
            yield ident.get("system"), ident["value"]


def _tags(value: Any) -> Iterator[tuple[str | None, str]]:
    for coding in _as_list(value):
        if isinstance(coding, dict) and isinstance(coding.get("code"), str):
            yield coding.get("system"), coding["code"]


def _codings(value: Any) -> Iterator[tuple[str | None, str]]:
    for concept in _as_list(value):
        if isinstance(concept, dict):
            for coding in _as_list(concept.get("coding")):
                if isinstance(coding, dict) and isinstance(coding.get("code"), str):
                    yield coding.get("system"), coding["code"]


def index_rows(resource: dict[str, Any]) -> list[IndexRow]:
    """Every index row of one resource (deduplicated)."""
    rtype = resource.get("resourceType", "")
    rows: list[IndexRow] = []

    def add(param: str, pairs: Iterable[tuple[str | None, str]]) -> None:
        rows.extend(IndexRow(param, s, v) for s, v in pairs)

    add("identifier", _identifiers(resource.get("identifier")))
    add("_tag", _tags((resource.get("meta") or {}).get("tag")))
    if isinstance(resource.get("status"), str):
        rows.append(IndexRow("status", None, resource["status"]))
    add("code", _codings(resource.get("code")))
    subject = list(_refs(resource, "subject"))
    if rtype == "Task":
        subject += list(_refs(resource, "for"))
        add("group-identifier", _identifiers(resource.get("groupIdentifier")))
        add("owner", _refs(resource, "owner"))
        add("focus", _refs(resource, "focus"))
        add("authored-on", _date_rows(resource.get("authoredOn")))
    add("subject", subject)
    patients = [r for r in subject if r[0] == "Patient"] + list(_refs(resource, "patient"))
    if rtype == "Appointment":
        actors = [r for p in _as_list(resource.get("participant")) if isinstance(p, dict) for r in _refs(p, "actor")]
        add("actor", actors)
        patients += [r for r in actors if r[0] == "Patient"]
        add("date", _date_rows(resource.get("start")))
    if rtype == "Encounter":
        add("date", _date_rows((resource.get("period") or {}).get("start")))
    add("patient", patients)
    add("encounter", _refs(resource, "encounter"))
    add("based-on", _refs(resource, "basedOn"))
    if rtype in {"Communication", "CommunicationRequest"}:
        add("recipient", _refs(resource, "recipient"))
    if isinstance(resource.get("url"), str):
        rows.append(IndexRow("url", None, resource["url"]))
    if rtype == "PractitionerRole":
        add("role", _codings(resource.get("code")))
        add("practitioner", _refs(resource, "practitioner"))
    if isinstance(resource.get("active"), bool):
        rows.append(IndexRow("active", None, "true" if resource["active"] else "false"))
    return list(dict.fromkeys(rows))


def _date_rows(value: Any) -> Iterator[tuple[None, str]]:
    if isinstance(value, str):
        rng = date_range(value)
        if rng:
            yield None, rng[0]


# ---- dates ----------------------------------------------------------------------------------------

_DATE_RE = re.compile(
    r"^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(\.\d+)?)?(Z|[+-]\d{2}:\d{2})?)?)?)?$"
)


def instant_key(moment: datetime) -> str:
    """A UTC instant as fixed-width text, so text order is time order."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def date_range(value: str) -> tuple[str, str] | None:
    """The [start, end) instant keys a FHIR date / dateTime / instant covers at its precision."""
    m = _DATE_RE.match(value.strip())
    if not m:
        return None
    year, month, day, hour, minute, second, frac, zone = m.groups()
    try:
        tz = UTC
        if zone and zone != "Z":
            sign = 1 if zone[0] == "+" else -1
            tz = timezone(timedelta(minutes=sign * (int(zone[1:3]) * 60 + int(zone[4:6]))))
        start = datetime(
            int(year),
            int(month or 1),
            int(day or 1),
            int(hour or 0),
            int(minute or 0),
            int(second or 0),
            round(float(frac) * 1_000_000) if frac else 0,
            tzinfo=tz,
        )
    except ValueError:
        return None
    if month is None:
        end = start.replace(year=start.year + 1)
    elif day is None:
        end = (start.replace(day=28) + timedelta(days=4)).replace(day=1)
    elif hour is None:
        end = start + timedelta(days=1)
    elif second is None:
        end = start + timedelta(minutes=1)
    elif frac is None:
        end = start + timedelta(seconds=1)
    else:
        end = start + timedelta(microseconds=1)
    return instant_key(start), instant_key(end)


_PREFIXES = ("eq", "ne", "gt", "ge", "lt", "le", "sa", "eb")


def _split_prefix(value: str) -> tuple[str, str]:
    if len(value) > 2 and value[:2] in _PREFIXES and value[2].isdigit():
        return value[:2], value[2:]
    return "eq", value


def _date_bounds(name: str, value: str) -> tuple[str, str, str]:
    prefix, raw = _split_prefix(value)
    if prefix not in {"eq", "gt", "ge", "lt", "le"}:
        raise BadRequest(f"{name}: prefix {prefix!r} is not supported (use eq, gt, ge, lt, le)", expression=name)
    rng = date_range(raw)
    if rng is None:
        raise BadRequest(f"{name}: {raw!r} is not a FHIR date/dateTime", expression=name)
    return prefix, rng[0], rng[1]


def _date_matches(prefix: str, start: str, end: str, key: str) -> bool:
    return {
        "eq": start <= key < end,
        "gt": key >= end,
        "ge": key >= start,
        "lt": key < start,
        "le": key < end,
    }[prefix]


def _date_sql(column: str, prefix: str, start: str, end: str) -> tuple[str, list[str]]:
    return {
        "eq": (f"({column} >= ? AND {column} < ?)", [start, end]),
        "gt": (f"{column} >= ?", [end]),
        "ge": (f"{column} >= ?", [start]),
        "lt": (f"{column} < ?", [start]),
        "le": (f"{column} < ?", [end]),
    }[prefix]


# ---- parsing --------------------------------------------------------------------------------------


def parse_query(resource_type: str, params: list[tuple[str, str]]) -> Query:
    """Turn query parameters into a Query; unknown parameters are listed in ``ignored``."""
    criteria: list[Criterion] = []
    ignored: list[str] = []
    count, offset, sort, total, summary_count = DEFAULT_COUNT, 0, "ASC", "accurate", False
    for raw_name, value in params:
        name, _, modifier = raw_name.partition(":")
        if name == "_count":
            count = _int_param("_count", value, 0, MAX_COUNT)
        elif name == "_page":
            offset = decode_page(value)
        elif name == "_sort":
            if value not in SORTS:
                raise BadRequest(f"_sort: only {', '.join(SORTS)} are supported, got {value!r}", expression="_sort")
            sort = SORTS[value]
        elif name == "_total":
            if value not in {"none", "estimate", "accurate"}:
                raise BadRequest("_total must be none, estimate or accurate", expression="_total")
            total = "none" if value == "none" else "accurate"
        elif name == "_summary":
            summary_count = value == "count"
        elif name in CONTROL:
            continue
        elif name == "_id":
            criteria.append(Criterion("_id", "id", None, _values(value)))
        elif name == "_lastUpdated":
            for v in _values(value):
                _date_bounds(name, v)
            criteria.append(Criterion("_lastUpdated", "lastUpdated", None, _values(value)))
        elif name in PARAMS and _applies(name, resource_type) and _modifier_ok(PARAMS[name][0], modifier):
            kind = PARAMS[name][0]
            values = _values(value)
            if kind == DATE:
                for v in values:
                    _date_bounds(name, v)
            criteria.append(Criterion(name, kind, modifier or None, values))
        else:
            ignored.append(raw_name)
    return Query(tuple(criteria), tuple(ignored), count, offset, sort, total, summary_count)


def _applies(name: str, resource_type: str) -> bool:
    types = PARAMS[name][1]
    return types == ANY_TYPE or resource_type in types


def _modifier_ok(kind: str, modifier: str) -> bool:
    if not modifier:
        return True
    # reference params accept a type modifier (subject:Patient=1)
    return kind == REFERENCE and modifier[:1].isupper()


def _values(value: str) -> tuple[str, ...]:
    # FHIR escapes a literal comma as "\,"
    parts = re.split(r"(?<!\\),", value)
    return tuple(p.replace("\\,", ",") for p in parts if p != "")


def _int_param(name: str, value: str, low: int, high: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise BadRequest(f"{name} must be a whole number, got {value!r}", expression=name) from None
    if number < low:
        raise BadRequest(f"{name} must be at least {low}", expression=name)
    return min(number, high)


def encode_page(offset: int) -> str:
    """Opaque page token (clients must not build it; only follow `next` links)."""
    return f"o{offset:x}"


def decode_page(token: str) -> int:
    if not re.fullmatch(r"o[0-9a-f]{1,12}", token):
        raise BadRequest("_page: not a page token from a `next` link", expression="_page")
    return int(token[1:], 16)


# ---- matching -------------------------------------------------------------------------------------


def _token_match(query_value: str, row: IndexRow) -> bool:
    if "|" in query_value:
        system, _, value = query_value.partition("|")
        if system == "":
            return row.system is None and row.value == value
        if value == "":
            return row.system == system
        return row.system == system and row.value == value
    return row.value == query_value


def _token_sql(query_value: str) -> tuple[str, list[str]]:
    if "|" in query_value:
        system, _, value = query_value.partition("|")
        if system == "":
            return "(i.system IS NULL AND i.value = ?)", [value]
        if value == "":
            return "i.system = ?", [system]
        return "(i.system = ? AND i.value = ?)", [system, value]
    return "i.value = ?", [query_value]


def _reference_target(criterion: Criterion, query_value: str) -> tuple[str | None, str]:
    parsed = split_reference(query_value)
    if parsed is None:
        raise BadRequest(f"{criterion.name}: {query_value!r} is not a reference", expression=criterion.name)
    rtype, rid = parsed
    return (criterion.modifier or rtype), rid


def matches(resource_type: str, resource: dict[str, Any], last_updated: str, query: Query) -> bool:
    """Whether one resource satisfies every criterion of a query (used for subscription criteria)."""
    rows = index_rows(resource)
    for c in query.criteria:
        if c.kind == "id":
            ok = resource.get("id") in c.values
        elif c.kind == "lastUpdated":
            ok = all(_date_matches(*_date_bounds(c.name, v), last_updated) for v in c.values)
        else:
            mine = [r for r in rows if r.param == c.name]
            ok = any(_row_matches(c, v, r) for v in c.values for r in mine)
        if not ok:
            return False
    return True


def _row_matches(c: Criterion, query_value: str, row: IndexRow) -> bool:
    if c.kind == TOKEN:
        return _token_match(query_value, row)
    if c.kind == REFERENCE:
        rtype, rid = _reference_target(c, query_value)
        return row.value == rid and (rtype is None or row.system == rtype)
    prefix, start, end = _date_bounds(c.name, query_value)
    return _date_matches(prefix, start, end, row.value)


def sql_source(resource_type: str, query: Query) -> tuple[str, list[Any]]:
    """``FROM ... WHERE ...`` (without the keyword FROM) selecting live ``resources r`` that match.

    Indexed criteria become an INTERSECT of lookups on idx(type, param, value), CROSS JOINed to
    resources so SQLite drives the search from the index: cost follows the matches, not the table.
    """
    lookups: list[str] = []
    lookup_args: list[Any] = []
    clauses = ["r.type = ?", "r.deleted = 0"]
    args: list[Any] = [resource_type]
    for c in query.criteria:
        if c.kind == "id":
            clauses.append(f"r.id IN ({','.join('?' * len(c.values))})")
            args.extend(c.values)
            continue
        if c.kind == "lastUpdated":
            for v in c.values:  # _lastUpdated=ge..&_lastUpdated=lt.. are separate criteria; commas AND here too
                sql, a = _date_sql("r.last_updated", *_date_bounds(c.name, v))
                clauses.append(sql)
                args.extend(a)
            continue
        ors: list[str] = []
        this_args: list[Any] = [resource_type, c.name]
        for v in c.values:
            if c.kind == TOKEN:
                sql, a = _token_sql(v)
            elif c.kind == REFERENCE:
                rtype, rid = _reference_target(c, v)
                sql, a = ("(i.system = ? AND i.value = ?)", [rtype, rid]) if rtype else ("i.value = ?", [rid])
            else:
                sql, a = _date_sql("i.value", *_date_bounds(c.name, v))
            ors.append(sql)
            this_args.extend(a)
        lookups.append("SELECT i.id FROM idx i WHERE i.type = ? AND i.param = ? AND (" + " OR ".join(ors) + ")")
        lookup_args.extend(this_args)
    where = " AND ".join(clauses)
    if not lookups:
        return f"resources r WHERE {where}", args
    source = "(" + " INTERSECT ".join(lookups) + ") m CROSS JOIN resources r ON r.id = m.id"
    return f"{source} WHERE {where}", [*lookup_args, *args]

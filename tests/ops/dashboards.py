"""pinsd's two Grafana dashboards as data for the ops tests.

queries() lists every panel query of both dashboards as (dashboard file, panel title, refId, expr),
the file repository-relative (observability/grafana/...). The expressions use plain range selectors
and no Grafana macros or template variables, so a test can send them verbatim to Prometheus's
/api/v1/query. metric_names(expr) is the set of metric names an expression reads.

The source tree is $PINS_ROOT when set (ctest sets it), else the checkout this file is in.
"""

import collections
import json
import os
import re

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.environ.get("PINS_ROOT") or os.path.join(HERE, "..", ".."))

DASHBOARD_DIR = "observability/grafana"
DASHBOARD_FILES = (
    DASHBOARD_DIR + "/m7_memory_pins.json",
    DASHBOARD_DIR + "/m7_rbac_dashboard.json",
)

Query = collections.namedtuple("Query", "file title ref_id expr")


def path(rel):
    """Absolute path of a repository-relative path."""
    return os.path.join(ROOT, rel)


def load(rel):
    """The dashboard JSON model of one file (repository-relative)."""
    with open(path(rel), encoding="utf-8") as f:
        return json.load(f)


def panels(dashboard):
    """Every panel of a dashboard, rows included, with the panels of collapsed rows."""
    out = []
    for p in dashboard.get("panels", []):
        out.append(p)
        out.extend(p.get("panels", []) if p.get("type") == "row" else [])
    return out


def queries():
    """[(file, panel title, refId, expr)] for every target of both dashboards."""
    out = []
    for rel in DASHBOARD_FILES:
        for p in panels(load(rel)):
            for t in p.get("targets", []):
                out.append(Query(rel, p.get("title", ""), t.get("refId", ""), t.get("expr", "")))
    return out


# ---- metric names in a PromQL expression ---------------------------------------------------------

_KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "offset", "bool", "inf", "nan", "atan2", "start", "end",
}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_OFFSET = re.compile(r"\boffset\s+-?(?:\d+(?:ms|[smhdwy]))+")
_NUMBER = re.compile(r"(?<![\w:])(?:0x[0-9a-fA-F]+|\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)")
_IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def metric_names(expr):
    """The metric names a PromQL expression selects (not functions, keywords or label names)."""
    s = _STRING.sub(" ", expr)
    s = _MATCHERS.sub(" ", s)
    s = _GROUPING.sub(" ", s)
    s = _RANGE.sub(" ", s)
    s = _OFFSET.sub(" ", s)
    s = _NUMBER.sub(" ", s)
    names = set()
    for m in _IDENT.finditer(s):
        word = m.group(0)
        rest = s[m.end():].lstrip()
        if rest.startswith("("):  # a function or an aggregation
            continue
        if word.lower() in _KEYWORDS:
            continue
        names.add(word)
    # {__name__="..."} selectors
    for m in re.finditer(r'__name__\s*=\s*"([^"]+)"', expr):
        names.add(m.group(1))
    return names


# The name tests/ops/test_prometheus_pinsd.py calls.
panel_queries = queries

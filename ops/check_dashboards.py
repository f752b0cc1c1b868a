#!/usr/bin/env python3
"""ops/check_dashboards.py: the runbook's Phase 6 check, "verify panels show data", without a
Grafana in the loop.

Sends every query of every panel of pinsd's Grafana dashboards, as it stands in the dashboard JSON
(the dashboards use no Grafana macros or template variables in their expressions), to Prometheus's
/api/v1/query and prints one line per panel: how many series its queries returned. A panel shows
data when at least one of its queries returns a series. Exit status 0 when every panel shows data,
1 when one does not (or a query fails), 2 on a usage error.

    ops/check_dashboards.py --prom "$PROM"
    ops/check_dashboards.py --prom http://localhost:9090 observability/grafana/m7_memory_pins.json

Standard library only.
"""

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
DEFAULT_DASHBOARDS = (
    os.path.join(ROOT, "observability", "grafana", "m7_memory_pins.json"),
    os.path.join(ROOT, "observability", "grafana", "m7_rbac_dashboard.json"),
)


def panels(model):
    """Every panel of a dashboard model, with the panels inside (collapsed) rows."""
    out = []
    for p in model.get("panels", []):
        out.append(p)
        if p.get("type") == "row":
            out.extend(p.get("panels", []))
    return out


def query(prom, expr, timeout):
    """The result list of an instant query; raises RuntimeError with Prometheus's error."""
    url = prom.rstrip("/") + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            doc = json.load(r)
    except urllib.error.HTTPError as e:
        try:
            doc = json.load(e)
        except ValueError:
            raise RuntimeError("HTTP %d" % e.code) from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise RuntimeError(str(getattr(e, "reason", e))) from None
    if doc.get("status") != "success":
        raise RuntimeError(doc.get("error", "query failed"))
    return doc["data"]["result"]


def main(argv):
    ap = argparse.ArgumentParser(
        description="Check that every panel of pinsd's Grafana dashboards shows data: each "
                    "panel's queries are sent to Prometheus as they are.")
    ap.add_argument("dashboards", nargs="*", metavar="DASHBOARD.json",
                    help="dashboard files (default: both of observability/grafana/)")
    ap.add_argument("--prom", default=os.environ.get("PROM", "http://localhost:9090"),
                    help="Prometheus, or the reload guard in front of it (default $PROM, else "
                         "http://localhost:9090)")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds per query (default 10)")
    ap.add_argument("-q", "--quiet", action="store_true",
                    help="print only the panels without data and the summary")
    args = ap.parse_args(argv)
    files = args.dashboards or list(DEFAULT_DASHBOARDS)

    total = empty = 0
    for path in files:
        try:
            with open(path, encoding="utf-8") as f:
                model = json.load(f)
        except (OSError, ValueError) as e:
            print("check_dashboards: %s: %s" % (path, e), file=sys.stderr)
            return 2
        print("%s (%s)" % (model.get("title", os.path.basename(path)), os.path.basename(path)))
        for p in panels(model):
            targets = [t for t in p.get("targets", []) if t.get("expr")]
            if not targets:
                continue
            total += 1
            series, errors = 0, []
            for t in targets:
                try:
                    series += len(query(args.prom, t["expr"], args.timeout))
                except RuntimeError as e:
                    errors.append("%s: %s" % (t.get("refId", "?"), e))
            ok = series > 0 and not errors
            if not ok:
                empty += 1
            if ok and args.quiet:
                continue
            line = "  %-4s %-45s %d series" % ("ok" if ok else "NO", p.get("title", "?")[:45], series)
            if errors:
                line += "; query failed: " + "; ".join(errors)
            print(line)
    print("dashboards: %d of %d panels show data" % (total - empty, total))
    return 1 if empty else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Scrapes a /metrics endpoint over HTTP and parses it with the Prometheus
client's own text parser (prometheus_client.parser), for tests/stats.rs.

    python tests/prom_scrape.py URL

Prints what the parser understood, one line each:
    STATUS <http status>
    CTYPE <Content-Type>
    FAMILY <family name> <type> <number of samples>
    SAMPLE <sample name> <k=v,... sorted, or -> <value as an integer>
Any parse error, or a value that is not a whole number, exits non-zero.
"""

import sys
import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def main() -> int:
    # Straight to the server: no proxy from the environment.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(sys.argv[1], timeout=10) as r:
        status, ctype, text = r.status, r.headers.get("Content-Type"), r.read().decode("utf-8")
    print("STATUS", status)
    print("CTYPE", ctype)
    for fam in text_string_to_metric_families(text):
        print("FAMILY", fam.name, fam.type, len(fam.samples))
        for s in fam.samples:
            if s.value != int(s.value):
                print("not a whole number:", s, file=sys.stderr)
                return 1
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())) or "-"
            print("SAMPLE", s.name, labels, int(s.value))
    return 0


if __name__ == "__main__":
    sys.exit(main())

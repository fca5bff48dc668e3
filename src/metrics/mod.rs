//! What the server's statistics look like from outside: the Prometheus
//! text exposition format 0.0.4 of a [`Stats`] ([`prometheus`]), and the
//! `/metrics` HTTP endpoint that serves it on a thread of its own
//! (`http`).
//!
//! Every sample carries a `worker="N"` label (sum them with PromQL); close
//! counts carry a `reason` label too; nothing is labelled per connection.
//!
//! Uses: stats.

pub(crate) mod http;

use std::fmt::Write;

use crate::stats::{Counters, Stats};

/// Reads one number of a worker's counters.
type Value = fn(&Counters) -> u64;

/// One metric family: its name, type, help text and value per worker.
struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    value: Value,
}

/// The families in the order they are written (the closes, with their
/// `reason` label, come after `mario_connections_refused_total`).
const BEFORE_CLOSES: &[Family] = &[
    Family {
        name: "mario_connections",
        kind: "gauge",
        help: "Connections open now, including those placed on the worker and not yet taken.",
        value: |c| c.connections,
    },
    Family {
        name: "mario_connections_accepted_total",
        kind: "counter",
        help: "Connections accepted and opened.",
        value: |c| c.accepted,
    },
    Family {
        name: "mario_connections_refused_total",
        kind: "counter",
        help: "Connections reset right after accept because every worker was full (counted on the accepting \
               worker), or because they came from outside the trusted PROXY protocol sources.",
        value: |c| c.refused,
    },
];

const AFTER_CLOSES: &[Family] = &[
    Family {
        name: "mario_packets_received_total",
        kind: "counter",
        help: "Frames (packets) dispatched to a handler.",
        value: |c| c.packets_in,
    },
    Family {
        name: "mario_received_bytes_total",
        kind: "counter",
        help: "Bytes received from open connections.",
        value: |c| c.bytes_in,
    },
    Family {
        name: "mario_sent_bytes_total",
        kind: "counter",
        help: "Bytes handed to the kernel, closed connections still delivering included.",
        value: |c| c.bytes_out,
    },
    Family {
        name: "mario_output_queued_bytes",
        kind: "gauge",
        help: "Bytes of output queued in the library and not yet handed to the kernel.",
        value: |c| c.out_queued,
    },
    Family {
        name: "mario_worker_stalled",
        kind: "gauge",
        help: "1 while the worker is stalled (a handler running past the stall threshold), else 0.",
        value: |c| u64::from(c.stalled_workers),
    },
    Family {
        name: "mario_stalls_total",
        kind: "counter",
        help: "Times the worker was found stalled.",
        value: |c| c.stalls,
    },
    Family {
        name: "mario_pool_queued_packets",
        kind: "gauge",
        help: "Packets handed to the handler pool and not yet done.",
        value: |c| c.pool_queued,
    },
    Family {
        name: "mario_log_dropped_lines_total",
        kind: "counter",
        help: "Log lines dropped because the worker's log queue was full.",
        value: |c| c.log_dropped,
    },
];

/// The close counts, by the `reason` label.
const CLOSES: [(&str, Value); 3] = [
    ("closed", |c| c.closed),
    ("timeout", |c| c.timeouts),
    ("error", |c| c.errors),
];

fn family(out: &mut String, f: &Family, s: &Stats) {
    // Writing to a String cannot fail.
    let _ = writeln!(out, "# HELP {} {}\n# TYPE {} {}", f.name, f.help, f.name, f.kind);
    for (i, w) in s.workers.iter().enumerate() {
        let _ = writeln!(out, "{}{{worker=\"{i}\"}} {}", f.name, (f.value)(w));
    }
}

/// `s` in the Prometheus text exposition format 0.0.4: one family per
/// number, `# HELP` and `# TYPE` lines, a `worker` label on every sample,
/// `_total` on counters.
pub(crate) fn prometheus(s: &Stats) -> String {
    let mut out = String::with_capacity(1024 + 700 * s.workers.len());
    for f in BEFORE_CLOSES {
        family(&mut out, f, s);
    }
    let name = "mario_connections_closed_total";
    let _ = writeln!(
        out,
        "# HELP {name} Connections closed, by reason: timeout, error, or closed (any other: the peer, \
         close_conn, bad input, server stop).\n# TYPE {name} counter"
    );
    for (i, w) in s.workers.iter().enumerate() {
        for (reason, value) in CLOSES {
            let _ = writeln!(out, "{name}{{worker=\"{i}\",reason=\"{reason}\"}} {}", value(w));
        }
    }
    for f in AFTER_CLOSES {
        family(&mut out, f, s);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sample_has_a_worker_label_and_every_family_help_and_type() {
        let mut a = Counters {
            connections: 3,
            accepted: 10,
            timeouts: 2,
            bytes_out: 12345,
            workers: 1,
            ..Counters::default()
        };
        let b = Counters {
            stalled_workers: 1,
            ..a
        };
        a.errors = 4;
        let text = prometheus(&Stats::from_workers(vec![a, b]));
        let mut families = 0;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                families += 1;
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(name.starts_with("mario_"), "{line}");
                assert_eq!(name.ends_with("_total"), kind == "counter", "{line}");
            } else if !line.starts_with("# HELP ") {
                assert!(line.contains("{worker=\""), "{line}");
            }
        }
        assert_eq!(families, 12);
        for want in [
            "mario_connections{worker=\"0\"} 3",
            "mario_connections_accepted_total{worker=\"1\"} 10",
            "mario_connections_closed_total{worker=\"0\",reason=\"error\"} 4",
            "mario_connections_closed_total{worker=\"1\",reason=\"error\"} 0",
            "mario_connections_closed_total{worker=\"1\",reason=\"timeout\"} 2",
            "mario_sent_bytes_total{worker=\"1\"} 12345",
            "mario_worker_stalled{worker=\"0\"} 0",
            "mario_worker_stalled{worker=\"1\"} 1",
        ] {
            assert!(text.lines().any(|l| l == want), "no {want:?} in\n{text}");
        }
        assert!(text.ends_with('\n'));
    }
}

"""Counters, gauges and a latency histogram in the Prometheus text exposition format (0.0.4)."""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Mapping

HELP = {
    "siaga_gateway_received_total": "MQTT messages taken from the broker",
    "siaga_gateway_rejected_total": "Messages rejected, by reason (each is also in the audit log)",
    "siaga_gateway_alarms_stored_total": "New alarms committed to the store",
    "siaga_gateway_duplicates_total": "Alarms received again (MQTT redelivery or a button re-send)",
    "siaga_gateway_heartbeats_total": "Heartbeats accepted",
    "siaga_gateway_acks_published_total": "Signed acks published to buttons",
    "siaga_gateway_configs_published_total": "Signed remote configurations published to buttons (retained)",
    "siaga_gateway_ota_offers_published_total": "Signed firmware offers published to buttons (retained)",
    "siaga_gateway_ota_withdrawals_published_total": "Firmware offers withdrawn (a rollout halted or cancelled)",
    "siaga_gateway_ota_chunks_sent_total": "Pieces of firmware bundles sent to buttons in answer to their requests",
    "siaga_gateway_ota_reports_total": "Update reports taken from buttons, by state",
    "siaga_gateway_ota_refused_total": "Firmware bundles refused at upload, by reason",
    "siaga_gateway_ota_bundles_uploaded_total": "Firmware bundles accepted at upload",
    "siaga_gateway_ota_rollouts_halted_total": "Rollouts halted because too many buttons failed to update",
    "siaga_gateway_forwarded_total": "Events a destination confirmed, by destination and kind",
    "siaga_gateway_forward_failures_total": "Failed delivery attempts to be retried, by destination and kind",
    "siaga_gateway_forward_rounds_total": "Delivery rounds (requests or batches) by destination and result",
    "siaga_gateway_forward_refused_total": "Events refused for good, by destination and kind (audited, kept)",
    "siaga_gateway_quarantined_total": "Messages that could not be processed, kept in the quarantine",
    "siaga_gateway_loop_errors_total": "Unexpected errors a loop survived (logged), by loop",
    "siaga_gateway_sessions_taken_over_total": "MQTT sessions of dead instances this instance drained and ended",
    "siaga_gateway_faults_total": "Device fault changes, by fault and whether it started or cleared",
    "siaga_gateway_forward_latency_seconds": "From the gateway receiving an alarm to a destination confirming it",
    "siaga_gateway_http_auth_failures_total": "Wrong credentials at the admin API, by kind (docs/security.md)",
    "siaga_gateway_http_throttled_total": "Admin API requests answered 429 (too many wrong credentials)",
    "siaga_gateway_outbox_depth": "Events waiting to be forwarded (by destination; unlabelled: all)",
    "siaga_gateway_devices_online": "Registered devices currently online",
    "siaga_gateway_devices_registered": "Registered devices, revoked ones included",
    "siaga_gateway_circuit_open": "1 while a destination's circuit breaker is open (unlabelled: the primary's)",
    "siaga_gateway_forwarding": "1 while this instance forwards the outbox (with several instances: the one holding "
                                "the leader lock)",
    "siaga_gateway_mqtt_connected": "1 while the gateway is connected to the broker",
    "siaga_gateway_mqtt_connections": "Connections to the broker since the gateway started (1 on a healthy link)",
    "siaga_gateway_acks_dropped": "Acks to buttons dropped: over 100,000 waited for the broker (buttons re-send)",
    "siaga_gateway_sms_received_total": "SMS taken from the modem (each also counts in received_total)",
    "siaga_gateway_sms_rejected_total": "SMS rejected, by reason (each is also in rejected_total and the audit log)",
    "siaga_gateway_sms_tests_total": "Backup-path test SMS accepted",
    "siaga_gateway_sms_acks_sent_total": "Signed acks sent to buttons by SMS",
    "siaga_gateway_sms_acks_dropped_rate_total": "SMS acks replaced by a newer state while they waited for the rate "
                                                 "limit (coalesced)",
    "siaga_gateway_sms_send_failures_total": "SMS acks the modem could not send after several attempts",
    "siaga_gateway_sms_modem_up": "1 while the SMS modem answers (only with an [sms] section)",
}

LATENCY_BUCKETS_S = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

Labels = tuple[tuple[str, str], ...]


class Histogram:
    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS_S) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0.0
        self.n = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.n += 1


class Metrics:
    def __init__(self) -> None:
        self.counters: Counter[tuple[str, Labels]] = Counter()
        self._keys: dict[tuple[object, ...], tuple[str, Labels]] = {}
        self.latency = Histogram()

    def inc(self, name: str, n: int = 1, **labels: str) -> None:
        key = (name, *labels.items())
        full = self._keys.get(key)
        if full is None:  # built once per name and label set: this runs for every message
            full = self._keys[key] = (f"siaga_gateway_{name}_total", tuple(sorted(labels.items())))
        self.counters[full] += n

    def get(self, name: str, **labels: str) -> int:
        return self.counters[(f"siaga_gateway_{name}_total", tuple(sorted(labels.items())))]

    def render(self, gauges: Mapping[str, float]) -> str:
        lines: list[str] = []
        by_name: dict[str, list[tuple[Labels, int]]] = {}
        for (name, labels), value in self.counters.items():
            by_name.setdefault(name, []).append((labels, value))
        for name in sorted(by_name):
            lines += [f"# HELP {name} {HELP.get(name, name)}", f"# TYPE {name} counter"]
            lines += [f"{name}{_labels(labels)} {value}" for labels, value in sorted(by_name[name])]
        name = "siaga_gateway_forward_latency_seconds"
        lines += [f"# HELP {name} {HELP[name]}", f"# TYPE {name} histogram"]
        cumulative = 0
        for bound, count in zip(self.latency.buckets, self.latency.counts, strict=False):
            cumulative += count
            lines.append(f'{name}_bucket{{le="{bound}"}} {cumulative}')
        lines += [f'{name}_bucket{{le="+Inf"}} {self.latency.n}', f"{name}_sum {self.latency.total:.6f}",
                  f"{name}_count {self.latency.n}"]
        # A gauge's key may carry labels ('circuit_open{destination="cap"}'): one HELP and TYPE per name.
        described: set[str] = set()
        for gauge, level in sorted(gauges.items()):
            full = f"siaga_gateway_{gauge}"
            base = full.split("{", 1)[0]
            if base not in described:
                described.add(base)
                lines += [f"# HELP {base} {HELP.get(base, base)}", f"# TYPE {base} gauge"]
            lines.append(f"{full} {level:g}")
        return "\n".join(lines) + "\n"


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{v}"' for k, v in labels)
    return "{" + inner + "}"

"""Reference command center: alarm intake from gateways, incidents for operators, and state reports
back to the gateway (docs/commandcenter.md, protocol §7)."""

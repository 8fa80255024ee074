"""ML2 mechanism driver for the eBPF datapath agent (see docs/neutron.md)."""

# The agent_type the datapath agent reports in report_state, and the one this driver
# looks for when it binds a port. The Rust agent must send exactly this string.
AGENT_TYPE = "eBPF datapath agent"

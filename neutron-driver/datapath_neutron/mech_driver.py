"""Binds ports to hosts where a live eBPF datapath agent maps the segment.

Deliberately thin: which segments a host can serve is what its agent reports
(interface_mappings, tunnel_types); all datapath logic lives in the agent.
"""

from neutron_lib import constants
from neutron_lib.api.definitions import portbindings

from neutron.plugins.ml2.drivers import mech_agent

from datapath_neutron import AGENT_TYPE


class DatapathMechanismDriver(mech_agent.SimpleAgentMechanismDriverBase):
    """Agent-based driver: vif_type tap, vnic normal, port filtering by the agent."""

    def __init__(self):
        super().__init__(
            AGENT_TYPE,
            portbindings.VIF_TYPE_TAP,
            # The agent enforces anti-spoofing on the tap itself, so Nova must not
            # add its own filtering (hybrid plug) in front of it.
            {portbindings.CAP_PORT_FILTER: True},
            supported_vnic_types=[portbindings.VNIC_NORMAL],
        )

    @property
    def connectivity(self):
        return portbindings.CONNECTIVITY_L2

    def get_allowed_network_types(self, agent=None):
        types = [constants.TYPE_FLAT, constants.TYPE_VLAN]
        if agent is None:
            # Without an agent (e.g. segment filtering at network level) be permissive
            # about the overlay type the datapath supports; binding checks the agent.
            return types + [constants.TYPE_VXLAN]
        return types + list(agent["configurations"].get("tunnel_types", []))

    def get_mappings(self, agent):
        return agent["configurations"].get("interface_mappings", {})

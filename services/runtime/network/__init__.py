"""Container networking: bridges and veth pairs (pyroute2), IPAM in the runtime's DB,
NAT and published ports (nftables, in Berth's own table), name resolution."""

"""ami-rcd shared: message contracts, topics, signing, used by the coordinator and the agents."""

"""ami-rcd edge_agent."""

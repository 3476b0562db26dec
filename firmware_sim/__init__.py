"""ami-rcd firmware_sim."""

"""ami-rcd central."""

"""HTTP in, HTML or JSON out: one blueprint per concern."""
